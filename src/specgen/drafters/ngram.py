"""Prompt lookup: draft by copying what followed the same tokens earlier.

Code edits, summaries and RAG answers repeat long spans of their prompt.  The
drafter finds the longest recent match of the history's last tokens and
proposes what followed it.  Two things make it pay off on hardware where a
wide verify batch costs several single-token steps:

* locality: after a mismatch (a renamed identifier) the copy usually resumes
  just past where it left off, so among equally long matches the one nearest
  the previous copy position wins over the most recent one;
* calibrated confidence: it learns, from the history itself, how often a copy
  continued after a match of each length, and reports that as the per-token
  confidence the engine's controller uses to size the draft.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..sampling import SamplingParams
from .base import Draft, KeepGoing

_MAX_MATCH = 8
_BUCKETS = (1, 2, 3, 4, 6)  # match lengths that get their own statistics


def _bucket(m: int) -> int:
    return max(i for i, b in enumerate(_BUCKETS) if m >= b)


class NgramDrafter:
    name = "ngram"

    def __init__(self, min_match: int = 1, max_span: int = 64):
        self.min_match = min_match
        self.max_span = max_span
        # Beta(accepted + a, rejected + b) per match-length bucket; longer
        # matches start out more trusted.
        # Sceptical start: in prose and fresh code short matches rarely continue,
        # and on a CPU a rejected row costs nearly a whole step.
        prior = np.array([0.2, 0.3, 0.45, 0.6, 0.75])
        self._acc, self._rej = prior * 3.0, (1.0 - prior) * 3.0
        self._last: tuple[int, list[int], int, int] | None = None  # (history len, draft, bucket, src end)

    def prefill(self, history: Sequence[int]) -> None:
        self._last = None

    def close(self) -> None:
        pass

    def survival(self, match_len: int) -> float:
        b = _bucket(match_len)
        return float(self._acc[b] / (self._acc[b] + self._rej[b]))

    def _learn(self, history: Sequence[int]) -> int | None:
        """Score the previous draft against what the target actually emitted.

        Returns where the copy should resume in the source, if known.
        """
        if self._last is None:
            return None
        n0, drafted, bucket, src = self._last
        self._last = None
        if len(history) < n0 or not drafted:
            return None
        emitted = history[n0:]
        accepted = 0
        while accepted < min(len(drafted), len(emitted)) and drafted[accepted] == emitted[accepted]:
            accepted += 1
        self._acc[bucket] += accepted
        if accepted < len(drafted):
            self._rej[bucket] += 1
        return src + accepted

    def draft(self, history: Sequence[int], n_max: int, params: SamplingParams,
              rng: np.random.Generator, keep_going: KeepGoing | None = None) -> Draft:
        resume = self._learn(history)
        if n_max <= 0 or len(history) < 2:
            return Draft()
        arr = np.asarray(history, dtype=np.int64)
        n = len(arr)
        # Candidate match ends j (arr[j] == last token, j < n-1) and how far back they match.
        ends = np.flatnonzero(arr[:-1] == arr[-1])
        if ends.size == 0:
            return Draft()
        lengths = np.ones(ends.size, dtype=np.int64)
        alive = np.ones(ends.size, dtype=bool)
        for k in range(1, _MAX_MATCH):
            idx = ends - k
            ok = alive & (idx >= 0) & (arr[np.maximum(idx, 0)] == arr[n - 1 - k])
            lengths += ok
            alive = ok
            if not alive.any():
                break
        best_len = int(lengths.max())
        if best_len < self.min_match:
            return Draft()
        cands = ends[lengths == best_len]
        if resume is not None:
            # Prefer the copy position nearest after where the last copy stopped.
            dist = np.where(cands + 1 >= resume, cands + 1 - resume, 1 << 30)
            start = int(cands[np.argmin(dist)]) + 1 if dist.min() < self.max_span else int(cands[-1]) + 1
        else:
            start = int(cands[-1]) + 1
        tokens = [int(t) for t in arr[start:min(start + n_max, n)]]
        if not tokens:
            return Draft()
        s = self.survival(best_len)
        self._last = (n, tokens, _bucket(best_len), start)
        return Draft(tokens=tokens, q=None, confidence=[s] * len(tokens))
