"""llama.cpp's RPC backend: serve this machine's devices (`specgen worker`) and
offload a model's layers to workers elsewhere (`--rpc HOST:PORT,...`).

Both ends are ggml-rpc from the llama.cpp build llama_cpp loaded, called
through ctypes, so a worker and its client are the same code and protocol.

ggml-rpc has no error path on the client: an unreachable worker, a failed
handshake or a connection lost mid-computation all end in GGML_ABORT.  So
every worker is probed (TCP connect plus the protocol's HELLO) before
llama.cpp sees it, and an abort callback turns a worker lost later into one
line naming it and a non-zero exit, instead of a core dump.  A worker whose
machine vanishes sends no reset, so its connections get TCP keepalive.
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
from functools import lru_cache
from typing import Sequence

from ..errors import SpecgenError
from .devices import Device, device, load_lib, null_terminated

DEFAULT_PORT = 50052
MAX_WORKERS = 16  # GGML_RPC_MAX_SERVERS
HELLO = 14  # RPC_CMD_HELLO, fixed across protocol versions
CAPS = 24  # RPC_CONN_CAPS_SIZE: the HELLO request's body
PROBE_TIMEOUT = 5.0
REBUILD = ('CMAKE_ARGS="-DGGML_RPC=ON" pip install --force-reinstall --no-cache-dir llama-cpp-python'
           " (add your GPU flag, e.g. -DGGML_CUDA=on, inside the quotes)")


# -- endpoints -------------------------------------------------------------------------------------

def parse_endpoints(spec: str | None, flag: str = "--rpc") -> tuple[str, ...]:
    """'host:port,host:port' -> ('host:port', ...), or one line saying what is wrong."""
    if not spec:
        return ()
    out: list[str] = []
    for raw in spec.split(","):
        item = raw.strip()
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SpecgenError(f"{flag}: {item!r} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT})")
        ep = f"{host}:{int(port)}"
        if ep in out:
            raise SpecgenError(f"{flag}: {ep} is listed twice")
        out.append(ep)
    if len(out) > MAX_WORKERS:
        raise SpecgenError(f"{flag}: at most {MAX_WORKERS} workers, not {len(out)}")
    return tuple(out)


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


# -- the library -----------------------------------------------------------------------------------

def supported() -> bool:
    from .backend import _llama

    return bool(_llama().llama_supports_rpc())


@lru_cache(maxsize=1)
def _rpc() -> ctypes.CDLL:
    lib = load_lib("ggml-rpc") if supported() else None
    if lib is None:
        raise SpecgenError(f"this llama-cpp-python was built without RPC support; rebuild it: {REBUILD}")
    P = ctypes.c_void_p
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_add_server.restype = P
    lib.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                                  ctypes.c_size_t, P]
    lib.ggml_backend_rpc_start_server.restype = None
    return lib


# -- client side -----------------------------------------------------------------------------------

class WorkerBusy(SpecgenError):
    """The worker took the connection but is serving another client (one at a time)."""


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT) -> tuple[int, int, int]:
    """Connect and shake hands as llama.cpp will; the worker's protocol version, or one clear line."""
    host, port = _split(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise SpecgenError(f"RPC worker {endpoint}: cannot resolve host {host!r}") from None
    except ConnectionRefusedError:
        raise SpecgenError(f"RPC worker {endpoint} refused the connection: start `specgen worker --port {port}` "
                           "there (or open its SSH tunnel) and check the address") from None
    except (socket.timeout, TimeoutError):
        raise SpecgenError(f"RPC worker {endpoint} did not answer within {timeout:.0f}s: check the address, "
                           "the firewall or the SSH tunnel") from None
    except OSError as e:
        raise SpecgenError(f"cannot reach RPC worker {endpoint}: {e.strerror or e}") from None
    with sock:
        try:
            sock.sendall(bytes([HELLO]) + struct.pack("<Q", CAPS) + bytes(CAPS))
            head = _recv_exactly(sock, 8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            body = _recv_exactly(sock, size) if 4 <= size <= 4096 else b""
        except (socket.timeout, TimeoutError):
            raise WorkerBusy(f"RPC worker {endpoint} accepted the connection but did not answer within "
                             f"{timeout:.0f}s: a worker serves one client at a time; is another program "
                             "using it?") from None
        except OSError as e:
            body, size = b"", 0
            if not isinstance(e, ConnectionError):
                raise SpecgenError(f"RPC worker {endpoint}: {e.strerror or e}") from None
    if len(body) < 4 or len(body) != size:
        raise SpecgenError(f"RPC worker {endpoint} broke off the handshake: it runs an incompatible llama.cpp "
                           "build; install the same llama-cpp-python version on both machines")
    return body[0], body[1], body[2]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


_workers: dict[str, tuple[int, int, int]] = {}  # endpoint -> protocol version, for every worker in use
_abort_cb = None  # must outlive every llama.cpp call


def _answers(endpoint: str) -> bool:
    # A handshake, not a bare connect: a dying worker's listening socket can outlive its client
    # connection for a moment.  A live worker answers, or keeps the connection waiting while it
    # serves our other connection.
    try:
        probe(endpoint, timeout=2.0)
        return True
    except WorkerBusy:
        return True
    except SpecgenError:
        return False


def _lost_message(endpoints: Sequence[str]) -> str:
    dead = [ep for ep in endpoints if not _answers(ep)]
    if dead:
        return (f"RPC worker {', '.join(dead)} stopped responding (its process ended or the network "
                "dropped); restart it and run again")
    return (f"the connection to RPC worker {' or '.join(endpoints)} was lost (the worker still accepts "
            "connections: it may have restarted); run again")


def _die(line: str, code: int = 1) -> None:
    try:
        sys.stderr.write(f"specgen: error: {line}\n")
        sys.stderr.flush()
    finally:
        os._exit(code)


def _on_abort(raw: bytes | None) -> None:
    msg = (raw or b"").decode("utf-8", "replace").strip()
    eps = list(_workers)
    for ep in eps:
        if f"handshake failed for {ep}" in msg:
            v = ".".join(map(str, _workers[ep]))
            _die(f"RPC worker {ep} speaks protocol v{v}, which this llama.cpp build does not: install the same "
                 "llama-cpp-python version on both machines")
        if f"connect to {ep}" in msg:
            _die(f"cannot connect to RPC worker {ep} any more: {_lost_message([ep])}")
    if "RPC" in msg:
        _die(_lost_message(eps))
    _die(f"llama.cpp aborted: {msg.splitlines()[0] if msg else 'no message'}", 70)


def _install_abort_handler() -> None:
    global _abort_cb
    if _abort_cb is not None:
        return
    g = load_lib("ggml-base")
    if g is None:
        return
    proto = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    _abort_cb = proto(_on_abort)
    g.ggml_set_abort_callback.argtypes = [proto]
    g.ggml_set_abort_callback.restype = ctypes.c_void_p
    g.ggml_set_abort_callback(_abort_cb)


def connect(endpoints: Sequence[str]) -> list[Device]:
    """The devices the workers at *endpoints* serve, each worker probed first."""
    lib = _rpc()
    for ep in endpoints:
        if ep not in _workers:
            _workers[ep] = probe(ep)
    _install_abort_handler()
    _keepalive.watch(endpoints)
    from .devices import ggml

    g = ggml()
    out: list[Device] = []
    for ep in endpoints:
        reg = lib.ggml_backend_rpc_add_server(ep.encode())
        if not reg:
            raise SpecgenError(f"RPC worker {ep} serves no devices")
        out += [device(g.ggml_backend_reg_dev_get(reg, i)) for i in range(g.ggml_backend_reg_dev_count(reg))]
    return out


class KeepAlive:
    """Turns on TCP keepalive for llama.cpp's connections to the workers.

    ggml-rpc waits on its sockets with no timeout: a worker whose machine vanishes (power, cable)
    sends no reset and would leave us waiting for ever.  With keepalive the kernel probes an idle
    connection and breaks it after IDLE + INTERVAL * COUNT seconds, and TCP_USER_TIMEOUT breaks one
    whose sent data goes unacknowledged for USER_TIMEOUT ms (instead of ~15 minutes of
    retransmissions); llama.cpp then aborts, and the abort callback names the worker.  llama.cpp opens its connections on its own threads, so a
    thread looks for new ones (sockets whose peer is a worker) every second."""

    IDLE, INTERVAL, COUNT = 5, 2, 3
    USER_TIMEOUT = 15_000

    def __init__(self) -> None:
        self.peers: set[tuple[str, int]] = set()
        self._done: set[str] = set()
        self._thread: threading.Thread | None = None

    def watch(self, endpoints: Sequence[str]) -> None:
        for ep in endpoints:
            host, port = _split(ep)
            try:
                self.peers |= {(ai[4][0], port) for ai in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
            except OSError:
                pass
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="specgen-rpc-keepalive", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self.scan()
            time.sleep(1.0)

    def scan(self) -> None:
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return
        for fd in fds:
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
                if not link.startswith("socket:") or link in self._done:
                    continue
                s = socket.socket(fileno=os.dup(int(fd)))  # options set on a dup apply to the socket
            except OSError:
                continue
            try:
                if s.type == socket.SOCK_STREAM and s.getpeername()[:2] in self.peers:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    for opt, value in (("TCP_KEEPIDLE", self.IDLE), ("TCP_KEEPINTVL", self.INTERVAL),
                                       ("TCP_KEEPCNT", self.COUNT), ("TCP_USER_TIMEOUT", self.USER_TIMEOUT)):
                        if hasattr(socket, opt):
                            s.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
                    self._done.add(link)
            except OSError:
                pass
            finally:
                s.close()


_keepalive = KeepAlive()


def describe(endpoints: Sequence[str]) -> str:
    return "RPC " + ", ".join(endpoints)


# -- server side -----------------------------------------------------------------------------------

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
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
            if not link.startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            if len(info) >= _TCP_INFO_OFFSET + 16 and info[0] == 1:  # TCP_ESTABLISHED
                acked, received = _TCP_INFO_BYTES.unpack_from(info, _TCP_INFO_OFFSET)
                out[link] = (received, acked)
        except OSError:
            pass
        finally:
            s.close()
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
            raise SpecgenError(f"cannot listen on {self.endpoint}: {e.strerror or e} (another worker there? "
                               "pick another --port)") from None
        finally:
            s.close()

    def start(self) -> None:
        lib = _rpc()
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
