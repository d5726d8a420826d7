"""A turn's live figures (tokens/s, acceptance, context used) for the front ends that show a
generation as it runs: the chat's status area and the server's stream."""

from __future__ import annotations

import time
from collections import deque

from .engine import Prefill, Step, Summary


class TurnMeter:
    """Live figures for the status area, fed one event at a time."""

    WINDOW = 2.0  # seconds of recent steps behind the sliding tokens/s

    def __init__(self, n_ctx: int, prompt_tokens: int, session_drafted: int = 0, session_accepted: int = 0):
        self.n_ctx = n_ctx
        self.summary = Summary(prompt_tokens=prompt_tokens)
        self.session_drafted, self.session_accepted = session_drafted, session_accepted
        self.prefill: Prefill | None = None
        self.last_step: Step | None = None
        self.started = time.perf_counter()
        self._points: deque[tuple[float, int]] = deque()

    def on(self, ev: object) -> None:
        """Take one engine event; others (a chat's Prompt) pass by."""
        now = time.perf_counter()
        if isinstance(ev, Prefill):
            self.prefill = ev
            self.summary.reused_tokens, self.summary.prompt_seconds = ev.reused, ev.seconds
            self.started = now
            self._points.append((now, 0))
        elif isinstance(ev, Step):
            self.summary.add(ev)
            self.summary.decode_seconds = now - self.started
            self.last_step = ev
            self._points.append((now, self.summary.generated_tokens))
            while len(self._points) > 2 and self._points[1][0] <= now - self.WINDOW:
                self._points.popleft()
        elif isinstance(ev, Summary):
            self.summary = ev

    @property
    def window_tps(self) -> float:
        if len(self._points) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._points[0], self._points[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def avg_tps(self) -> float:
        return self.summary.decode_tps

    @property
    def session_acceptance(self) -> float:
        drafted = self.session_drafted + self.summary.drafted
        return (self.session_accepted + self.summary.accepted) / drafted if drafted else 0.0

    @property
    def context_used(self) -> int:
        return self.summary.prompt_tokens + self.summary.generated_tokens
