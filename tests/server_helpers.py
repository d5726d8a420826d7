"""A real `specgen serve` process on loopback, for the tests that talk to it as clients do."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import openai

EXE = str(Path(sys.executable).parent / "specgen")
KEY = "sk-specgen-test"


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    @property
    def port(self) -> int:
        return urlsplit(self.url).port

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=300)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def request(self, method: str, path: str, body: bytes | dict | None = None, key: str | None = KEY,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        c = self.conn()
        try:
            h = {"Content-Type": "application/json", **(headers or {})}
            if key is not None:
                h["Authorization"] = f"Bearer {key}"
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def metrics(self) -> dict[str, float]:
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def start_server(log: Path, *args: str, env: dict | None = None) -> Server:
    """`specgen serve --port 0` (the OS picks a free loopback port; the server reports it)."""
    f = open(log, "w")
    proc = subprocess.Popen([EXE, "serve", "--port", "0", *args], stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    f.close()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
        if m:
            return Server(proc, m.group(1), log)
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        time.sleep(0.1)
    stop_server(proc)
    raise AssertionError(f"server did not start: {log.read_text()}")


@contextmanager
def serving(log: Path, *args: str, env: dict | None = None) -> Iterator[Server]:
    """A server for the block (a fixture's yield): `start_server`, stopped however the block ends."""
    s = start_server(log, *args, env=env)
    try:
        yield s
    finally:
        stop_server(s.proc)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
