"""llama.cpp's RPC backend, client side: offload a model's layers to workers elsewhere
(`--rpc HOST:PORT,...`); the worker itself is `rpc_worker.py`.

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
import os
import socket
import struct
import sys
import threading
import time
from functools import lru_cache
from typing import Callable, Container, Iterator, Sequence

from ..errors import SpecgenError, error_line
from ..fileio import os_problem
from .devices import Device, device, ggml, load_lib
from .loader import load_llama

DEFAULT_PORT = 50052
MAX_WORKERS = 16  # GGML_RPC_MAX_SERVERS
HELLO = 14  # RPC_CMD_HELLO, fixed across protocol versions
CAPS = 24  # RPC_CONN_CAPS_SIZE: the HELLO request's body
PROBE_TIMEOUT = 5.0
NUDGE_SECONDS = 1.0
IPV4_ONLY = (f"llama.cpp's RPC connects over IPv4 only: give an IPv4 address or a host name that has one "
             f"(e.g. 127.0.0.1:{DEFAULT_PORT})")
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
        if ":" in host or host.startswith("["):  # only an IPv6 address has a colon in its host part
            raise SpecgenError(f"{flag}: {item!r} is an IPv6 address; {IPV4_ONLY}")
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
    return bool(load_llama().llama_supports_rpc())


@lru_cache(maxsize=1)
def ggml_rpc() -> ctypes.CDLL:
    """libggml-rpc with the calls both ends use bound, or one line saying how to get a build that has it."""
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


# -- reaching workers ------------------------------------------------------------------------------

class WorkerBusy(SpecgenError):
    """The worker took the connection but is serving another client (one at a time)."""


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT) -> tuple[int, int, int]:
    """Connect and shake hands as llama.cpp will; the worker's protocol version, or one clear line."""
    port = _split(endpoint)[1]
    address = _ipv4(endpoint)
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except ConnectionRefusedError:
        raise SpecgenError(f"RPC worker {endpoint} refused the connection: start `specgen worker --port {port}` "
                           "there (or open its SSH tunnel) and check the address") from None
    except (socket.timeout, TimeoutError):
        raise SpecgenError(f"RPC worker {endpoint} did not answer within {timeout:.0f}s: check the address, "
                           "the firewall or the SSH tunnel") from None
    except OSError as e:
        raise SpecgenError(f"cannot reach RPC worker {endpoint}: {os_problem(e)}") from None
    got = bytearray()  # what the peer sent, kept when a timeout or a reset cuts the reading short
    size = 0
    with sock:
        try:
            sock.sendall(bytes([HELLO]) + struct.pack("<Q", CAPS) + bytes(CAPS))
            _recv_into(sock, got, 8)
            size = struct.unpack("<Q", got[:8])[0] if len(got) == 8 else 0
            if 4 <= size <= 4096:
                _recv_into(sock, got, 8 + size)
        except (socket.timeout, TimeoutError):
            reply = bytes(got) or _nudge(sock)
            if reply:
                raise SpecgenError(_not_a_worker(endpoint, port, reply)) from None
            raise WorkerBusy(f"RPC worker {endpoint} accepted the connection but did not answer within "
                             f"{timeout:.0f}s: a worker serves one client at a time; is another program "
                             "using it?") from None
        except OSError as e:
            if not isinstance(e, ConnectionError):
                raise SpecgenError(f"RPC worker {endpoint}: {os_problem(e)}") from None
    if not got:  # what a llama.cpp build that does not know this handshake does
        raise SpecgenError(f"RPC worker {endpoint} hung up on the handshake: it runs an incompatible llama.cpp "
                           "build (install the same llama-cpp-python version on both machines), or it is not a "
                           "llama.cpp RPC worker at all")
    body = bytes(got[8:])
    if not 4 <= size <= 4096 or len(body) != size:
        raise SpecgenError(_not_a_worker(endpoint, port, bytes(got)))
    return body[0], body[1], body[2]


def _ipv4(endpoint: str) -> tuple[str, int]:
    """The IPv4 address llama.cpp will connect to (it resolves names with gethostbyname, IPv4 only)."""
    host, port = _split(endpoint)
    try:
        return socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][:2]
    except (socket.gaierror, UnicodeError):
        pass
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise SpecgenError(f"RPC worker {endpoint}: cannot resolve host {host!r}") from None
    raise SpecgenError(f"RPC worker {endpoint}: {host} has only IPv6 addresses; {IPV4_ONLY}")


def _recv_into(sock: socket.socket, buf: bytearray, n: int) -> None:
    """Read until *buf* holds *n* bytes or the peer closes."""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk


def _nudge(sock: socket.socket) -> bytes:
    """Send the end of a line to a peer that has not answered the handshake.  A busy worker has not
    accepted the connection yet and stays silent; an HTTP server, or anything else that reads lines,
    answers.  What it answered, or nothing."""
    try:
        sock.settimeout(NUDGE_SECONDS)
        sock.sendall(b"\r\n\r\n")
        return sock.recv(64)
    except OSError:
        return b""


def _not_a_worker(endpoint: str, port: int, reply: bytes) -> str:
    head = reply[:256].lower()
    what = "an HTTP server" if head.startswith(b"http/") or b"<html" in head or b"<!doctype" in head else \
        "something that does not speak llama.cpp's RPC protocol"
    return (f"{endpoint} is not a llama.cpp RPC worker: {what} answered there; check the port, and start "
            f"`specgen worker --port {port}` on that machine")


_workers: dict[str, tuple[int, int, int]] = {}  # endpoint -> protocol version, for every worker in use
_abort_cb = None  # must outlive every llama.cpp call
_last_words: list[Callable[[str], None]] = []


def on_abort(hook: Callable[[str], None]) -> Callable[[], None]:
    """Have *hook(line)* run just before an abort ends the process, with the line about to be printed (a
    server answers its clients with it); returns the call that removes the hook."""
    _last_words.append(hook)
    return lambda: _last_words.remove(hook) if hook in _last_words else None


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
        for hook in list(_last_words):
            try:
                hook(line)
            except Exception:  # the process ends either way; its one line must still be printed
                pass
        sys.stderr.write(error_line(line) + "\n")
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
    lib = ggml_rpc()
    for ep in endpoints:
        if ep not in _workers:
            _workers[ep] = probe(ep)
    _install_abort_handler()
    _keepalive.watch(endpoints)
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
        for link, s in process_sockets(skip=self._done):
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


def process_sockets(skip: Container[str] = ()) -> Iterator[tuple[str, socket.socket]]:
    """Each socket this process holds, llama.cpp's included: its name in /proc ('socket:[inode]') and a
    duplicate, closed when the caller moves on.  Options set on the duplicate apply to the socket itself.
    Linux only (nothing elsewhere)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    for fd in fds:
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
            if not link.startswith("socket:") or link in skip:
                continue
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        with s:
            yield link, s


_keepalive = KeepAlive()
