"""`specgen worker`: serve this machine's CPU or GPU to another machine's `--rpc`."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Annotated, Optional

import typer

from ..errors import SpecgenError
from ..llama.rpc import DEFAULT_PORT
from ..settings import check_given, check_threads
from . import app
from .messages import warn


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@app.command()
def worker(
    host: Annotated[str, typer.Option(help="Address to listen on. The protocol has no authentication or "
                                           "encryption: keep 127.0.0.1 and reach it through an SSH tunnel.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = DEFAULT_PORT,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for the CPU device.")] = None,
    device: Annotated[Optional[str], typer.Option(
        help="Devices to serve, comma-separated (e.g. CUDA0,CUDA1); default: the GPUs, else the CPU.")] = None,
) -> None:
    """Serve this machine's CPU or GPU to `specgen run/chat/bench/serve --rpc HOST:PORT` elsewhere."""
    from ..llama import rpc_worker
    from ..llama.backend import default_threads
    from ..llama.devices import CPU, by_names, local_devices, local_gpus

    loopback = rpc_worker.check_host(host)
    check_given("--device", device)
    threads, notes = check_threads(threads)
    for line in notes:
        warn(line)
    if device:
        devices = by_names(device.split(","))
    else:
        devices = local_gpus() or [d for d in local_devices() if d.type == CPU][:1]
    if not devices:
        raise SpecgenError("this llama.cpp build has no device to serve")
    w = rpc_worker.Worker(host, port, devices, threads or default_threads())
    err = sys.stderr
    tty = err.isatty()
    if not loopback:
        warn(f"listening on {host}: llama.cpp's RPC protocol has no authentication or encryption, anyone who "
             "can reach this port can run code on these devices; prefer 127.0.0.1 and an SSH tunnel (see README)")

    def line(event: str = "") -> str:
        s = w.refresh()
        return (f"worker {w.endpoint}: {event + ' | ' if event else ''}{s.connected} connected, "
                f"{s.served} connections served | received {_mb(s.received)}, sent {_mb(s.sent)}")

    w.start()
    names = ", ".join(f"{d.name} ({d.description}, {d.memory()[0] / 2**30:.1f} GiB free)" for d in devices)
    print(f"specgen worker: serving {names} on {w.endpoint} with {w.threads} threads; "
          f"use --rpc {w.endpoint if loopback or host != '0.0.0.0' else 'THIS_HOST:' + str(port)}; "
          "Ctrl+C stops", file=err, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    logged, logged_at = w.stats.snapshot(), 0.0
    try:
        while w.alive():
            if tty:
                err.write("\r\x1b[2K" + line())
                err.flush()
            elif w.stats.snapshot() != logged and time.monotonic() - logged_at > 2:
                # a log, not a screen: a line when something changed, at most every 2 s
                print(line(), file=err, flush=True)
                logged, logged_at = w.stats.snapshot(), time.monotonic()
            time.sleep(0.5)
        raise SpecgenError(f"the RPC server on {w.endpoint} stopped (could not listen?)")
    except KeyboardInterrupt:
        if tty:
            err.write("\r\x1b[2K")
        print(f"{line('stopped')}", file=err, flush=True)
        # ggml-rpc's server thread never returns (it blocks in accept or in a client's request); skip
        # interpreter teardown, which would run C++ destructors under it.
        os._exit(0)
