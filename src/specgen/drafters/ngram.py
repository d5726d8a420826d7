"""Prompt lookup: draft by copying what followed the same tokens earlier.

Code edits, summaries and RAG answers repeat long spans of their prompt.  The
drafter finds the longest recent match of the history's last tokens and
proposes what followed it.  Two things make it pay off on hardware where a
wide verify batch costs several single-token steps:

* locality: after a mismatch (a renamed identifier) the copy usually resumes
  just past where it left off, so among equally long matches the one nearest
  the previous copy position wins over the most recent one;
* calibrated confidence: it learns from the target's verdicts how often a copy
  goes on, and reports that as the per-token confidence the controller uses to
  size the draft.

The confidence is shaped like copies behave.  The first token of a fresh
match is the gamble: it survives about half the time after a short match into
a document, rarely when earlier occurrences of the same context went on
differently ("split"), rarely when the source is the reply itself, and hardly
ever when the reply only echoes a short question.  So its rate is learned per
kind of match over the session and scaled by how this generation's first
tokens fared against that rate (scored on every step, drafted or not).  Once
it is accepted the match is one token longer, so token i of a draft gets the
continuation rate of a match `m + i` long: a confirmed copy earns a long draft.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..sampling import SamplingParams
from .base import Draft, KeepGoing

_MAX_MATCH = 32
_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24)  # match lengths that get their own statistics
_SESSION_MEMORY = 40.0  # observations a cell keeps: old evidence fades as the text being copied changes
_PRIOR_WEIGHT = 4.0  # how many of this generation's own verdicts outweigh the session's
_FIRST_PSEUDO = 1.0  # expected first-token acceptances before this generation's own record counts


def _bucket_of(m: int) -> int:
    return max(i for i, b in enumerate(_BUCKETS) if m >= b)


_BUCKET_TABLE = [_bucket_of(max(m, 1)) for m in range(_BUCKETS[-1] + 1)]  # looked up for every drafted token


def _bucket(m: int) -> int:
    return _BUCKET_TABLE[min(m, _BUCKETS[-1])]


class _Rates:
    """Acceptance rates per cell, over the session (fading) and over the current generation.

    The session's rate is the prior for the generation's own record, so a
    copy that keeps failing in this reply is trusted less within a few tokens.
    """

    def __init__(self, prior: np.ndarray, strength: float = 3.0):
        prior = prior.reshape(-1)
        self.session = np.stack([prior * strength, (1.0 - prior) * strength])  # [accepted, rejected] x cell
        self.generation = np.zeros_like(self.session)

    def new_generation(self) -> None:
        self.generation[:] = 0.0

    def session_mean(self, cell: int) -> float:
        s = self.session[:, cell]
        return float(s[0] / s.sum())

    def mean(self, cell: int) -> float:
        g = self.generation[:, cell]
        return float((g[0] + _PRIOR_WEIGHT * self.session_mean(cell)) / (g.sum() + _PRIOR_WEIGHT))

    def add(self, cell: int, accepted: bool) -> None:
        total = self.session[:, cell].sum()
        if total > _SESSION_MEMORY:
            self.session[:, cell] *= _SESSION_MEMORY / total
        row = 0 if accepted else 1
        self.session[row, cell] += 1.0
        self.generation[row, cell] += 1.0


def _first_cell(in_reply: int, split: int, match_len: int) -> int:
    return (in_reply * 2 + split) * len(_BUCKETS) + _bucket(match_len)


class NgramDrafter:
    name = "ngram"

    def __init__(self, min_match: int = 1, max_span: int = 64):
        self.min_match = min_match
        self.max_span = max_span
        # Sceptical start: in prose and fresh code short matches rarely continue,
        # and on a CPU a rejected row costs nearly a whole step.
        first = np.array([0.2, 0.3, 0.45, 0.6, 0.75, 0.8, 0.85, 0.9, 0.92])
        self._first = _Rates(np.stack([first, first * 0.3] * 2))  # [source in reply][split][bucket]
        self._cont = _Rates(np.array([0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92]))
        self._prompt_len = 0
        # How many of this generation's first tokens the session expected to be accepted
        # (how many were is in self._first.generation).
        self._first_expected = 0.0
        # The last draft, to score it once the target has spoken:
        # (history length, tokens, match length, source start, first-token cell).
        self._last: tuple[int, list[int], int, int, int] | None = None

    def prefill(self, history: Sequence[int]) -> None:
        self._last = None
        self._prompt_len = len(history)
        self._first_expected = 0.0
        self._first.new_generation()
        self._cont.new_generation()

    def close(self) -> None:
        pass

    def _learn(self, history: Sequence[int]) -> int | None:
        """Score the previous draft against what the target actually emitted.

        Returns where the copy should resume in the source, if known.
        """
        if self._last is None:
            return None
        n0, drafted, m, src, first = self._last
        self._last = None
        if len(history) < n0 or not drafted:
            return None
        emitted = history[n0:]
        accepted = 0
        while accepted < min(len(drafted), len(emitted)) and drafted[accepted] == emitted[accepted]:
            accepted += 1
        # Every token up to the first rejection was judged; token i as part of a match m + i long.
        for i in range(min(accepted + 1, len(drafted), len(emitted))):
            if i == 0:
                self._first_expected += self._first.session_mean(first)
                self._first.add(first, accepted > 0)
            else:
                self._cont.add(_bucket(m + i), i < accepted)
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
        split = int(np.any(arr[cands + 1] != arr[start]))
        first = _first_cell(int(start > self._prompt_len), split, best_len)
        self._last = (n, tokens, best_len, start, first)
        # One pooled factor: a generation sees too few first tokens to judge each kind of match.
        seen = float(self._first.generation[0].sum())
        this_generation = (seen + _FIRST_PSEUDO) / (self._first_expected + _FIRST_PSEUDO)
        confidence = [min(self._first.session_mean(first) * this_generation, 0.99)]
        confidence += [self._cont.mean(_bucket(best_len + i)) for i in range(1, len(tokens))]
        return Draft(tokens=tokens, q=None, confidence=confidence, calibrated=True)
