"""Workers, relays and fake workers on 127.0.0.1 for the RPC tests and the RPC benchmark.

Every process started here listens on a free loopback port and is stopped by
its PID (SIGTERM, then SIGKILL), also when the test fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECGEN = [sys.executable, "-m", "specgen"]
# A worker and its client share the CPU here; OpenMP threads spinning between graph computations
# would starve each other.
ENV = {**os.environ, "OMP_WAIT_POLICY": "passive"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout)
    return proc.returncode


class Worker:
    """`specgen worker` in a subprocess; its stderr lines are collected as they come."""

    def __init__(self, threads: int = 1, host: str = "127.0.0.1", port: int | None = None,
                 extra: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen([*SPECGEN, "worker", "--host", host, "--port", str(self.port),
                                      "--threads", str(threads), *extra],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=ENV)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for("serving", timeout=60)

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines:
                if text in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"worker never printed {text!r}; it printed: {self.lines}")

    def moved(self) -> tuple[float, float]:
        """(received, sent) MB from the worker's latest status line."""
        for line in reversed(self.lines):
            m = re.search(r"received ([\d,.]+) MB, sent ([\d,.]+) MB", line)
            if m:
                return float(m[1].replace(",", "")), float(m[2].replace(",", ""))
        return 0.0, 0.0

    def stop(self, sig: int = signal.SIGTERM) -> int:
        rc = stop(self.proc, sig)
        self._reader.join(5)
        return rc


class Relay:
    """latency_relay.py in a subprocess, between clients and *upstream*."""

    def __init__(self, upstream: str, rtt_ms: float):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "latency_relay.py"), "--upstream", upstream,
                                      "--rtt-ms", str(rtt_ms)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            stop(self.proc)
            raise AssertionError(f"relay did not start: {line!r}")
        self.endpoint = f"127.0.0.1:{int(line.split()[1])}"

    def stop(self) -> int:
        return stop(self.proc)


class FakeWorker:
    """A peer that speaks just enough of ggml-rpc to play a worker from another build, or one with
    little memory: HELLO (with *version*), DEVICE_COUNT, GET_DEVICE_MEMORY.  With *answer*, a peer that
    is no worker at all: it answers whatever comes first with those bytes."""

    HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY = 14, 15, 11

    def __init__(self, version: tuple[int, int, int] = (7, 0, 0), free_bytes: int = 1 << 20,
                 hang_up: bool = False, answer: bytes | None = None):
        self.version, self.free_bytes, self.hang_up, self.answer = version, free_bytes, hang_up, answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _recv(c: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = c.recv(n - len(buf))
            if not chunk:
                raise ConnectionError
            buf += chunk
        return buf

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                if self.hang_up:
                    continue
                try:
                    if self.answer is not None:
                        c.recv(64)
                        c.sendall(self.answer)
                        continue
                    while True:
                        cmd = self._recv(c, 1)[0]
                        size = struct.unpack("<Q", self._recv(c, 8))[0]
                        self._recv(c, size)
                        if cmd == self.HELLO:
                            body = bytes(self.version) + bytes(1) + bytes(24)
                        elif cmd == self.DEVICE_COUNT:
                            body = struct.pack("<I", 1)
                        elif cmd == self.GET_DEVICE_MEMORY:
                            body = struct.pack("<QQ", self.free_bytes, self.free_bytes)
                        else:
                            break
                        c.sendall(struct.pack("<Q", len(body)) + body)
                except (ConnectionError, OSError):
                    pass

    def close(self) -> None:
        self.sock.close()
