"""`specgen worker`: ggml-rpc's server, serving this machine's devices to clients elsewhere.

The server is ggml-rpc's own, from the llama.cpp build llama_cpp loaded, so a
worker and its clients (`rpc.py`) speak the same protocol.  ggml-rpc counts
nothing and reports connections only with printf; the counters here come from
its stdout and from the kernel's per-connection TCP totals.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from ..errors import SpecgenError
from ..fileio import os_problem
from .devices import Device, null_terminated
from .rpc import ggml_rpc, process_sockets


def check_host(host: str) -> bool:
    """Whether *host* is a loopback address; one line if ggml-rpc cannot bind it (IPv4 literals only)."""
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        raise SpecgenError(f"--host must be an IPv4 address such as 127.0.0.1 or 0.0.0.0, not {host!r}") \
            from None
    return addr.is_loopback


@dataclass
class WorkerStats:
    connected: int = 0
    served: int = 0
    received: int = 0
    sent: int = 0
    events: list[str] = field(default_factory=list)

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.connected, self.served, self.received, self.sent


_TCP_INFO_BYTES = struct.Struct("<QQ")  # tcpi_bytes_acked, tcpi_bytes_received
_TCP_INFO_OFFSET = 120


def _connection_bytes() -> dict[str, tuple[int, int]] | None:
    """(received, sent) bytes of each established TCP connection this process holds, by socket inode.

    ggml-rpc counts nothing, and its socket calls (recv/send) escape /proc/self/io; the kernel's
    tcp_info of each connection has the totals.  Linux only (None elsewhere)."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    out: dict[str, tuple[int, int]] = {}
    for link, s in process_sockets():
        try:
            if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            if len(info) >= _TCP_INFO_OFFSET + 16 and info[0] == 1:  # TCP_ESTABLISHED
                acked, received = _TCP_INFO_BYTES.unpack_from(info, _TCP_INFO_OFFSET)
                out[link] = (received, acked)
        except OSError:
            pass
    return out


class Worker:
    """ggml-rpc's server on a background thread, its connection log read from its stdout."""

    def __init__(self, host: str, port: int, devices: list[Device], threads: int,
                 cache_dir: str | None = None):
        self.host, self.port, self.devices, self.threads = host, port, devices, threads
        self.endpoint = f"{host}:{port}"
        self.cache_dir = cache_dir
        self.stats = WorkerStats()
        self._lock = threading.Lock()
        self._live: dict[str, tuple[int, int]] = {}  # open connections' counters
        self._closed = [0, 0]  # totals of connections gone
        self._thread: threading.Thread | None = None

    def _check_port(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self.port))
        except OSError as e:
            raise SpecgenError(f"cannot listen on {self.endpoint}: {os_problem(e)} (another worker there? "
                               "pick another --port)") from None
        finally:
            s.close()

    def start(self) -> None:
        lib = ggml_rpc()
        self._check_port()
        # ggml-rpc reports connections with printf on fd 1; route fd 1 into a pipe we read, and keep
        # Python's own stdout on a copy of the real one.
        real = os.dup(1)
        sys.stdout.flush()
        sys.stdout = os.fdopen(real, "w", buffering=1)
        r, w = os.pipe()
        os.dup2(w, 1)
        os.close(w)
        threading.Thread(target=self._read_log, args=(r,), name="specgen-worker-log", daemon=True).start()
        self._devs = null_terminated([d.ptr for d in self.devices])  # alive as long as the server runs
        args = (self.endpoint.encode(), self.cache_dir.encode() if self.cache_dir else None,
                self.threads, len(self.devices), ctypes.cast(self._devs, ctypes.c_void_p))
        threading.Thread(target=self._count_bytes, name="specgen-worker-bytes", daemon=True).start()
        self._thread = threading.Thread(target=lib.ggml_backend_rpc_start_server, args=args,
                                        name="specgen-worker", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _read_log(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            for raw in f:
                line = raw.decode("utf-8", "replace").strip()
                event = None
                with self._lock:
                    if line.startswith("Accepted client connection"):
                        self.stats.connected += 1
                        self.stats.served += 1
                        event = "client connected"
                    elif line.startswith("Client connection closed"):
                        self.stats.connected = max(0, self.stats.connected - 1)
                        event = "client disconnected"
                if event:
                    self.stats.events.append(event)

    def _count_bytes(self, every: float = 0.2) -> None:
        # Sampled, so a connection's last fraction of a second may go uncounted.
        while True:
            self.refresh()
            time.sleep(every)

    def refresh(self) -> WorkerStats:
        now = _connection_bytes()
        if now is None:
            return self.stats
        with self._lock:
            for key, (rx, tx) in self._live.items():
                if key not in now:
                    self._closed[0] += rx
                    self._closed[1] += tx
            self._live = now
            self.stats.received = self._closed[0] + sum(v[0] for v in now.values())
            self.stats.sent = self._closed[1] + sum(v[1] for v in now.values())
        return self.stats
