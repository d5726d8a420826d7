"""Bind the socket and run the app under uvicorn until Ctrl+C.

The socket is bound here, before uvicorn starts, so `--port 0` can report the
port it got and a port in use is one clear line instead of a log record.
"""

from __future__ import annotations

import ipaddress
import socket
from types import FrameType
from typing import Callable

import uvicorn

from ..engine import Engine
from ..errors import SpecgenError, warning_line
from ..fileio import os_problem
from .app import ServerConfig, create_app
from .view import View

GRACE_SECONDS = 5  # after Ctrl+C, how long streams get to send their closing error chunk


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The one-line warning for a server others can reach without a key."""
    if api_key or is_loopback(host):
        return None
    return warning_line(f"listening on {host} without an API key; anyone who can reach this machine can use "
                        "the model (set --api-key or SPECGEN_API_KEY)")


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise SpecgenError(f"cannot listen on --host {host}: not an address or a known host name") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)  # connections made as soon as the address is printed wait for uvicorn
    except OSError as e:
        sock.close()
        raise SpecgenError(f"cannot listen on {host}:{port}: {os_problem(e)}; choose another --port "
                           "(0 picks a free one)") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve(engine: Engine, config: ServerConfig, host: str, port: int, view: View, about: str) -> None:
    """Serve until Ctrl+C; the interrupt is re-raised (KeyboardInterrupt) once everything has stopped."""
    app = create_app(engine, config, view)
    worker = app.state.server.worker
    sock = bind(host, port)
    server = _Uvicorn(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                     timeout_graceful_shutdown=GRACE_SECONDS), on_exit=worker.stop)
    view.started(url_of(sock), about)
    try:
        server.run(sockets=[sock])
    finally:
        view.stop()
        worker.stop()
        worker.join(GRACE_SECONDS)
        sock.close()


class _Uvicorn(uvicorn.Server):
    """uvicorn's Server, told first on Ctrl+C so the running generation ends at its next step."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


__all__ = ["bind", "exposure_warning", "is_loopback", "serve", "url_of"]
