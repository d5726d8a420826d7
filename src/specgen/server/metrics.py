"""Counters since start, written as Prometheus text (exposition format 0.0.4).

Updated from the engine thread (tokens) and the event loop (requests), so
every change happens under one lock.
"""

from __future__ import annotations

import threading
from collections import Counter

from ..engine import Summary
from ..slots import PromptCache

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.total = Summary()
        """Every finished generation's figures, added up as a chat's turns are."""
        self.finished = 0
        """Generations in `total`."""
        self.cancelled = 0
        self._buckets = [0] * len(LATENCY_BUCKETS)
        self._latency_sum = 0.0
        self._latency_count = 0

    def request(self, route: str, status: int, seconds: float | None = None) -> None:
        """One finished HTTP request; *seconds* (generation requests only) goes into the histogram."""
        with self._lock:
            self.requests[(route, status)] += 1
            if seconds is not None:
                self._latency_sum += seconds
                self._latency_count += 1
                for i, le in enumerate(LATENCY_BUCKETS):
                    if seconds <= le:
                        self._buckets[i] += 1

    def generation(self, s: Summary | None, cancelled: bool) -> None:
        with self._lock:
            self.cancelled += cancelled
            if s is not None:
                self.total.merge(s)
                self.finished += 1

    def render(self, waiting: int, busy: int, slots: int = 1, cache: PromptCache | None = None) -> str:
        """The text /metrics serves: *busy* of *slots* slots generating, *waiting* requests queued, and the host
        prompt cache's size."""
        with self._lock:
            out: list[str] = []

            def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
                out.append(f"# HELP specgen_{name} {help}")
                out.append(f"# TYPE specgen_{name} {kind}")
                out.extend(f"specgen_{name}{labels} {value:g}" for labels, value in samples)

            metric("requests_total", "counter", "HTTP requests answered, by route and status.",
                   [(f'{{route="{r}",status="{s}"}}', n) for (r, s), n in sorted(self.requests.items())])
            for key, name, help in (
                    ("prompt_tokens", "prompt_tokens_total", "Prompt tokens, reused ones included."),
                    ("reused_tokens", "prompt_tokens_cached_total", "Prompt tokens reused from the KV cache."),
                    ("generated_tokens", "generated_tokens_total", "Tokens generated."),
                    ("drafted", "draft_tokens_total", "Draft tokens proposed for verification."),
                    ("accepted", "draft_tokens_accepted_total", "Draft tokens the target accepted."),
                    ("steps", "verify_steps_total", "Target verify passes.")):
                metric(name, "counter", help, [("", getattr(self.total, key))])
            metric("drafter_steps_total", "counter", "Verify passes by the drafter that proposed them.",
                   [(f'{{drafter="{d}"}}', n) for d, n in sorted(self.total.drafter_steps.items())])
            metric("requests_cancelled_total", "counter", "Generations stopped because the client left.",
                   [("", self.cancelled)])
            metric("queue_waiting", "gauge", "Requests waiting for the engine.", [("", waiting)])
            metric("busy", "gauge", "1 while a request is being generated.", [("", int(busy > 0))])
            metric("slots_busy", "gauge", "Slots generating a reply.", [("", busy)])
            metric("slots", "gauge", "Slots: requests decoded together.", [("", slots)])
            if cache is not None:
                metric("prompt_cache_bytes", "gauge", "Host memory held by prefixes saved from the slots.",
                       [("", cache.used)])
                metric("prompt_cache_prefixes", "gauge", "Prefixes saved from the slots.", [("", len(cache))])
            out.append("# HELP specgen_request_seconds Generation request latency, arrival to last byte.")
            out.append("# TYPE specgen_request_seconds histogram")
            for le, n in zip(LATENCY_BUCKETS, self._buckets):
                out.append(f'specgen_request_seconds_bucket{{le="{le:g}"}} {n}')
            out.append(f'specgen_request_seconds_bucket{{le="+Inf"}} {self._latency_count}')
            out.append(f"specgen_request_seconds_sum {self._latency_sum:.6f}")
            out.append(f"specgen_request_seconds_count {self._latency_count}")
            return "\n".join(out) + "\n"


__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics"]
