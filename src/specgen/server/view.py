"""What the server shows its operator: a live screen on a terminal, one log line per request elsewhere."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..engine import Engine, Summary
from ..errors import printable
from ..statsline import stats_line

if TYPE_CHECKING:
    from .metrics import Metrics
    from .worker import Worker

RECENT = 8  # requests listed on the live screen


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int
    seconds: float
    summary: Summary | None
    drafter: str = ""
    prompt_tokens: int = 0
    error: str | None = None
    cancelled: bool = False
    at: float = field(default_factory=time.time)


def log_line(r: RequestRecord) -> str:
    """One request: route, status, and for a generation its timings and what speculation did.  The path and
    the error quote what a client sent, so their control characters are spelled out."""
    head = f"{time.strftime('%H:%M:%S', time.localtime(r.at))} {r.method} {printable(r.path)} {r.status}"
    if r.error:
        return f"{head} | {printable(r.error)}"
    if r.cancelled:
        return f"{head} {r.seconds:.2f}s | cancelled: the client left"
    s = r.summary
    if s is None:
        return head
    st = {**s.stats(), "prompt_decoded": s.prompt_tokens - s.reused_tokens}
    return f"{head} {r.seconds:.2f}s | {stats_line(st)} · {s.stop_reason} · drafter {r.drafter}"


class View:
    """Plain mode: lines on stderr, fit for logs and pipes."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.metrics: Metrics | None = None
        self.engine: Engine | None = None

    def attach(self, worker: Worker, metrics: Metrics, engine: Engine) -> None:
        self.worker, self.metrics, self.engine = worker, metrics, engine

    def line(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def started(self, url: str, about: str) -> None:
        self.line(f"specgen serve: listening on {url} ({printable(about)}); Ctrl+C stops")  # about: file names

    def request(self, r: RequestRecord) -> None:
        self.line(log_line(r))

    def stop(self) -> None:
        pass


class LiveView(View):
    """A terminal: the request being served, the queue, totals since start and the last requests."""

    def __init__(self) -> None:
        super().__init__()
        self.console = Console(stderr=True, highlight=False, markup=False, emoji=False)
        self.recent: deque[RequestRecord] = deque(maxlen=RECENT)
        self.header = Text()
        self._live: Live | None = None

    @staticmethod
    def wanted() -> bool:
        return sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"

    def started(self, url: str, about: str) -> None:
        self.header = Text("specgen serve ", style="bold")
        self.header.append(url, style="bold cyan")
        self.header.append(f"  ·  {printable(about)}  ·  Ctrl+C stops", style="dim")
        self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
        self._live.start()

    def line(self, text: str) -> None:
        self.console.print(text)

    def request(self, r: RequestRecord) -> None:
        self.recent.append(r)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __rich__(self) -> Group:
        return Group(self.header, self._now(), self._totals(), self._table())

    def _now(self) -> Group:
        """A line per slot: idle, or the request it serves and how fast; then the queue."""
        w = self.worker
        if w is None:
            return Group(Text("idle", style="dim"))
        lines = []
        for slot in w.slots.slots:
            job = w.running.get(slot.id)
            head = f"slot {slot.id} " if w.parallel > 1 else ""
            if job is None or job.meter is None:
                lines.append(Text(f"{head}idle ({len(slot.cached)} tokens cached)", style="dim"))
                continue
            m = job.meter
            s = m.summary
            t = Text(f"{head}serving #{job.id} ", style="bold")
            if slot.state == "prompt":
                t.append(f"reading the prompt ({len(slot.cached)}/{s.prompt_tokens})")
            else:
                t.append(f"{s.generated_tokens} tokens  {m.window_tps:.1f} tok/s (avg {m.avg_tps:.1f})")
            if s.drafted:
                t.append(f"  acceptance {s.acceptance_rate:.0%}")
            step = m.last_step
            if step is not None:
                t.append(f"  drafter {step.drafter_used}, draft length {step.drafted}")
            t.append(f"  prompt {s.prompt_tokens} ({s.reused_tokens} cached)", style="dim")
            lines.append(t)
        lines.append(Text(f"queue {w.waiting}/{w.queue_size}", style="dim"))
        return Group(*lines)

    def _totals(self) -> Text:
        if self.metrics is None:
            return Text()
        m = self.metrics
        tot = m.total
        n = sum(m.requests.values())
        acc = f", accepted {tot.accepted}/{tot.drafted}" if tot.drafted else ""
        return Text(f"since start: {n} requests, {tot.generated_tokens} tokens generated{acc}, "
                    f"{tot.reused_tokens}/{tot.prompt_tokens} prompt tokens reused, {m.cancelled} cancelled",
                    style="dim")

    def _table(self) -> Table:
        t = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
        for col in ("time", "route", "status", "tokens", "tok/s", "accepted", "note"):
            t.add_column(col)
        for r in self.recent:
            s = r.summary
            note = r.error or ("cancelled" if r.cancelled else s.stop_reason if s else "")
            t.add_row(time.strftime("%H:%M:%S", time.localtime(r.at)), printable(r.path), str(r.status),
                      str(s.generated_tokens) if s else "", f"{s.decode_tps:.1f}" if s else "",
                      f"{s.acceptance_rate:.0%}" if s and s.drafted else "", printable(note[:60]))
        return t


__all__ = ["LiveView", "RequestRecord", "View", "log_line"]
