"""A TCP relay on loopback that holds every chunk for the one-way delay, in both directions.

This kernel has no netem qdisc, so network latency is added in user space:
`python latency_relay.py --upstream 127.0.0.1:50052 --rtt-ms 2` listens on a free
127.0.0.1 port (printed as `PORT n` on stdout) and forwards to the upstream
worker, each chunk leaving rtt/2 after it arrived.  Chunks keep their order
and are pipelined (a burst costs one delay, not one per chunk), as on a link.

Threads, not asyncio: asyncio waits in epoll, whose timeout rounds up to a
whole millisecond, too coarse for a 0.25 ms one-way delay; time.sleep uses a
nanosecond timer.
"""

from __future__ import annotations

import argparse
import queue
import socket
import sys
import threading
import time


def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
    q: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            while data := src.recv(1 << 20):
                q.put((time.perf_counter() + delay, data))
        except OSError:
            pass
        q.put(None)

    def write() -> None:
        try:
            while (item := q.get()) is not None:
                due, data = item
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # the other side is gone: drop this connection both ways, as a dead link would
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=write, daemon=True).start()


def serve(upstream: tuple[str, int], rtt: float, port: int = 0) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    print(f"PORT {srv.getsockname()[1]}", flush=True)
    while True:
        client, _ = srv.accept()
        try:
            up = socket.create_connection(upstream, timeout=5)
            up.settimeout(None)
        except OSError:
            client.close()  # the worker is gone: refuse as it would
            continue
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pipe(client, up, rtt / 2)
        _pipe(up, client, rtt / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--rtt-ms", type=float, default=0.0, help="added round-trip time in milliseconds")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    a = ap.parse_args()
    host, _, port = a.upstream.rpartition(":")
    try:
        serve((host, int(port)), a.rtt_ms / 1000.0, a.port)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
