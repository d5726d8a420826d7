"""Prompt lookup: draft by copying what followed the same tokens earlier.

Code edits, summaries and RAG answers repeat long spans of their prompt.  The
drafter proposes what followed the longest recent match of the history's last
tokens, and reports as each token's confidence its own acceptance rate,
learned from the target's verdicts per kind of token (a fresh match's first,
or a confirmed copy's continuation; by source, match length, position and
seam) and shifted per generation.  What it rates and why: DESIGN.md, "What the
n-gram drafter learns".
"""

from __future__ import annotations

import copy
import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

from ..sampling import SamplingParams
from .base import Draft, KeepGoing

_MAX_MATCH = 32
_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24)  # match lengths that get their own statistics
_SESSION_MEMORY = 40.0  # observations a cell keeps: old evidence fades as the text being copied changes
_SHIFT_PRIOR_SD = 1.0  # how far (log-odds) a generation is expected to stray from the session's rates
_DOUBT = 0.5  # standard deviations of that shift's estimate priced in against a copy
_BINS_PER_UNIT = 2  # the shift's fit groups verdicts whose predicted log-odds lie within half a unit


def _lookup(bounds: tuple[int, ...]) -> list[int]:
    """For each length up to the last bound, the index of the last bound it reaches (0 counts as 1): a
    table, as a cell is looked up for every drafted token."""
    return [max(k for k, b in enumerate(bounds) if max(n, 1) >= b) for n in range(bounds[-1] + 1)]


_BUCKET_TABLE = _lookup(_BUCKETS)


def _bucket(m: int) -> int:
    return _BUCKET_TABLE[min(m, _BUCKETS[-1])]


class _Rates:
    """Acceptance rates per cell: the session's (fading), shifted by the current generation's record."""

    def __init__(self, prior: np.ndarray, strength: float = 3.0):
        # Plain lists: a cell is read for every drafted token, right after a verify has flushed the caches.
        self.hits = [float(p) * strength for p in prior.reshape(-1)]
        self.misses = [(1.0 - float(p)) * strength for p in prior.reshape(-1)]
        self.generation = _Shift()

    def new_generation(self) -> None:
        self.generation.reset()

    def session_mean(self, cell: int) -> float:
        return self.hits[cell] / (self.hits[cell] + self.misses[cell])

    def mean(self, cell: int) -> float:
        return self.generation.apply(self.session_mean(cell))

    def add(self, cell: int, accepted: bool) -> None:
        self.generation.add(self.session_mean(cell), accepted)
        total = self.hits[cell] + self.misses[cell]
        if total > _SESSION_MEMORY:
            self.hits[cell] *= _SESSION_MEMORY / total
            self.misses[cell] *= _SESSION_MEMORY / total
        if accepted:
            self.hits[cell] += 1.0
        else:
            self.misses[cell] += 1.0


class _Shift:
    """How far this generation's verdicts run above or below the session's rates, in log-odds.

    One offset, fitted (maximum a posteriori, a normal prior around 0) to the
    generation's verdicts, each against the rate the session predicted for it.
    A ratio of hits to expected hits pushes a middling rate to certainty after
    two lucky guesses; a shift in log-odds does not, and it weighs a miss where
    a hit was near certain more than misses where misses were expected.

    Rates are given _DOUBT standard deviations of the fit below it, a doubt
    that each verdict narrows: a session mixes kinds of text, and a reply's own
    kind shows only as its verdicts come in.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.groups: dict[int, list[float]] = {}  # verdicts by predicted log-odds, in bins: [count, sum]
        self.n = 0
        self.hits = 0
        self.value = 0.0
        self.sd = _SHIFT_PRIOR_SD
        self._fitted = 0

    def add(self, rate: float, accepted: bool) -> None:
        x = _logit(rate)
        group = self.groups.get(round(x * _BINS_PER_UNIT))
        if group is None:
            group = self.groups[round(x * _BINS_PER_UNIT)] = [0.0, 0.0]
        group[0] += 1.0
        group[1] += x
        self.n += 1
        self.hits += accepted

    def _fit(self) -> None:
        # Verdicts grouped by their predicted log-odds, each group at its mean: the fit's sums then cost a
        # few dozen terms however long the reply, in plain Python (an array operation costs tens of
        # microseconds right after a verify has flushed the caches), and the sigmoid is so nearly straight
        # across a group that the fitted rate moves by about a thousandth.
        groups = [(c, s / c) for c, s in self.groups.values()]
        d, precision, exp = self.value, 1.0 / _SHIFT_PRIOR_SD ** 2, math.exp
        # Newton from the last fit: the objective is concave, and verdicts few against those already fitted
        # move it so little that one iteration lands within a few thousandths of a rate of where three would.
        for _ in range(1 if 8 * (self.n - self._fitted) <= self._fitted else 3):
            expected = spread = 0.0
            for c, x in groups:
                p = 1.0 / (1.0 + exp(-(x + d)))
                expected += c * p
                spread += c * p * (1.0 - p)
            h = spread + precision
            d += (self.hits - expected - precision * d) / h
        self.value, self.sd, self._fitted = d, h ** -0.5, self.n

    def apply(self, rate: float) -> float:
        if self._fitted != self.n:  # refit once per step, when first asked
            self._fit()
        return 1.0 / (1.0 + math.exp(-(_logit(rate) + self.value - _DOUBT * self.sd)))


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


_APART = -1
"""Ends each copy source: no token equals it, so no match or copy runs from one source into the next."""

_START = (1, 2, 4, 8, 16)  # match lengths at the draft, for continuations
_AHEAD = (1, 2, 4, 8)  # positions in the draft
_START_TABLE, _AHEAD_TABLE = _lookup(_START), _lookup(_AHEAD)


def _cont_cell(in_reply: int, m: int, i: int, seam: int) -> int:
    """Token i > 0 of a copy that began at an m-token match."""
    start, ahead = _START_TABLE[min(m, _START[-1])], _AHEAD_TABLE[min(i, _AHEAD[-1])]
    return ((in_reply * len(_START) + start) * len(_AHEAD) + ahead) * 2 + seam


def _first_cell(in_reply: int, split: int, match_len: int, seam: int) -> int:
    return ((in_reply * 2 + split) * 2 + seam) * len(_BUCKETS) + _bucket(match_len)


# Where a copied token sits in the text.  A reply that copies from its source parts from it mostly at
# punctuation: it ends the sentence where the source went on, or starts a new line.  In prose copies a
# token at such a seam was taken about 0.7 of the time against 0.94 inside a phrase; in code the two
# hardly differ (0.98 against 0.99), so the rates are learned apart, not fixed.  The word after a number
# is a seam too: a reply that quotes a date, a price or a score mostly takes the value and not the words
# around it (0.88 against 0.95 in prose).
_WORD, _STOP, _QUOTE, _NUMBER = 0, 1, 2, 3
_STOPS, _QUOTES = frozenset(b".,;:!?"), frozenset(b"\"'`()[]{}<>")


def text_kind(piece: bytes) -> int:
    """_STOP for a line break or sentence punctuation, _QUOTE for quotes and brackets, _NUMBER for
    digits, else _WORD."""
    if b"\n" in piece:
        return _STOP
    text = piece.strip()
    if text.isdigit():
        return _NUMBER
    if not text or not all(c in _STOPS or c in _QUOTES for c in text):
        return _WORD
    return _STOP if any(c in _STOPS for c in text) else _QUOTE


class _Positions:
    """Where each token occurs in a history, all but its last token, kept as the history grows.

    The lookup runs every step, drafted or not, right after a verify has flushed the CPU's caches:
    rescanning a 700-token prompt there took about 0.1 ms, as much as the rest of the drafter.  A history
    that is not a continuation of the last one is indexed anew.
    """

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.at: dict[int, list[int]] = {}

    def of(self, history: Sequence[int]) -> list[int]:
        """The positions j < len(history) - 1 that hold the history's last token, in order."""
        done, end = len(self.tokens), len(history) - 1
        # Within a generation the history only grows (a new prompt starts a new index): a few positions
        # tell a continuation from another text, where comparing the whole prefix cost a pass per step.
        if done > end or any(history[j] != self.tokens[j] for j in {0, done // 2, done - 1} if 0 <= j < done):
            self.tokens, self.at, done = [], {}, 0
        for j in range(done, end):
            t = int(history[j])
            self.tokens.append(t)
            self.at.setdefault(t, []).append(j)
        return self.at.get(int(history[-1]), [])


class _Offer(NamedTuple):
    at: int  # history length when it was offered
    tokens: list[int]
    seams: list[int]
    match: int  # match length when the copy began
    source: int  # where in the history the copied tokens start
    first_cell: int  # the fresh match's first-token cell (-1: a copy already confirmed)
    done: int  # tokens of the copy confirmed before this offer


class _Run(NamedTuple):
    at: int  # where the copy goes on in the source
    match: int  # match length when the copy began
    done: int  # tokens of the copy confirmed


class NgramDrafter:
    name = "ngram"

    def __init__(self, min_match: int = 1, max_span: int = 64,
                 piece: Callable[[int], bytes] | None = None):
        """*piece* gives a token's text, to tell seams from words; without it every token is a word."""
        self.min_match = min_match
        self.max_span = max_span
        self._piece = piece
        self._kinds: dict[int, int] = {}
        # Sceptical start: in prose and fresh code short matches rarely continue,
        # and on a CPU a rejected row costs nearly a whole step.
        first = np.array([0.2, 0.3, 0.45, 0.6, 0.75, 0.8, 0.85, 0.9, 0.92])
        first = np.stack([first, first * 0.7])  # [seam][bucket]
        self._first = _Rates(np.stack([first, first * 0.3] * 2))  # [source in reply][split][seam][bucket]
        cont = np.array([0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92])
        # Before any verdicts, a copy is rated by the match it has grown to (m + i tokens).
        prior = np.array([[[cont[_bucket(m + i)], 0.8 * cont[_bucket(m + i)]] for i in _AHEAD] for m in _START])
        self._cont = _Rates(np.stack([prior, prior]))  # [source in reply][match length][position][seam]
        self._prompt_len = 0
        self._sources: list[int] = []  # texts to copy from besides the history, each ended by _APART
        self._joined: list[int] = []  # the sources, then the history as far as the last draft saw it
        self._positions = _Positions()
        self._last: _Offer | None = None  # the last draft, to score once the target has spoken
        # The copy the target is following, so that a copy confirmed by a plain step is not rated as a
        # fresh gamble again.
        self._run: _Run | None = None

    def prefill(self, history: Sequence[int], sources: Sequence[Sequence[int]] = ()) -> None:
        """A new prompt, and *sources*: other token sequences the reply may copy, priced as the prompt is."""
        self._last = self._run = None
        self._positions = _Positions()
        self._sources = [t for src in sources for t in (*src, _APART)]
        self._joined = list(self._sources)
        self._prompt_len = len(self._sources) + len(history)
        self._first.new_generation()
        self._cont.new_generation()

    def close(self) -> None:
        pass

    def learned(self) -> object:
        return copy.deepcopy((self._first, self._cont))

    def restore(self, learned: object) -> None:
        self._first, self._cont = copy.deepcopy(learned)

    def _joined_with(self, history: Sequence[int]) -> list[int]:
        """The sources, then *history*: looked up as text before the prompt, one sequence, so every rule of
        the lookup holds for them alike.  Extended, not rebuilt: within a generation the history only grows,
        and copying both each step cost a pass over them."""
        seen = len(self._joined) - len(self._sources)
        if seen > len(history) or seen and self._joined[-1] != history[seen - 1]:
            self._joined = self._sources + list(history)
        else:
            self._joined += history[seen:]
        return self._joined

    def _seams(self, before: int, tokens: list[int]) -> list[int]:
        """For each token, whether it sits at a seam: it is punctuation, follows a stop, or is the word
        after a number."""
        seams, prev = [], self._kind(before)
        for t in tokens:
            kind = self._kind(t)
            seams.append(int(kind in (_STOP, _QUOTE) or prev == _STOP or (kind == _WORD and prev == _NUMBER)))
            prev = kind
        return seams

    def _kind(self, token: int) -> int:
        kind = self._kinds.get(token)
        if kind is None:
            kind = self._kinds[token] = text_kind(self._piece(token)) if self._piece else _WORD
        return kind

    def _learn(self, history: Sequence[int]) -> int | None:
        """Score the previous draft against what the target actually emitted.

        Returns where the copy should resume in the source, if known.
        """
        self._run = None
        if self._last is None:
            return None
        n0, drafted, seams, m, src, first, done = self._last
        self._last = None
        if len(history) < n0 or not drafted:
            return None
        emitted = history[n0:]
        accepted = 0
        while accepted < min(len(drafted), len(emitted)) and drafted[accepted] == emitted[accepted]:
            accepted += 1
        # Every token up to the first rejection was judged: a fresh copy's first as a match m long, the
        # rest (and all of a copy already confirmed) as the continuation of a confirmed copy.
        in_reply = int(src > self._prompt_len)
        for i in range(min(accepted + 1, len(drafted), len(emitted))):
            if done + i == 0:
                self._first.add(first, accepted > 0)
            else:
                self._cont.add(_cont_cell(in_reply, m, done + i, seams[i]), i < accepted)
        # How far the target followed the copy: its own token after the last accepted one may go on too.
        held = accepted
        while held < len(emitted) and src + held < n0 and history[src + held] == emitted[held]:
            held += 1
        self._run = _Run(src + held, m, done + held) if held else None
        return src + accepted

    def draft(self, history: Sequence[int], n_max: int, params: SamplingParams,
              rng: np.random.Generator, keep_going: KeepGoing | None = None) -> Draft:
        if self._sources:
            history = self._joined_with(history)
        resume = self._learn(history)
        if n_max <= 0 or len(history) < 2:
            return Draft()
        n = len(history)
        # The longest matches of the history's last tokens: each earlier occurrence of its last token
        # (an end j < n - 1), and how far back from there the two agree.
        best_len, cands = 0, []
        for j in self._positions.of(history):
            k = 1
            while k < _MAX_MATCH and k <= j and history[j - k] == history[n - 1 - k]:
                k += 1
            if k > best_len:
                best_len, cands = k, [j]
            elif k == best_len:
                cands.append(j)
        if best_len < max(self.min_match, 1):
            return Draft()
        start = cands[-1] + 1
        if resume is not None:
            # Prefer the copy position nearest after where the last copy stopped.
            near = next((j for j in cands if j + 1 >= resume), None)
            if near is not None and near + 1 - resume < self.max_span:
                start = near + 1
        tokens = [int(t) for t in history[start:min(start + n_max, n)]]
        if _APART in tokens:
            tokens = tokens[:tokens.index(_APART)]
        if not tokens:
            return Draft()
        in_reply = int(start > self._prompt_len)
        seams = self._seams(history[-1], tokens)
        split = int(any(history[j + 1] != history[start] for j in cands))  # the source forks here
        if self._run is not None and self._run.at == start and not split:  # the copy the target has been following
            _, m, done = self._run
            first = -1
            confidence = [self._cont.mean(_cont_cell(in_reply, m, done + i, seams[i])) for i in range(len(tokens))]
        else:
            m, done = best_len, 0
            first = _first_cell(in_reply, split, best_len, seams[0])
            confidence = [min(self._first.mean(first), 0.99)]
            confidence += [self._cont.mean(_cont_cell(in_reply, m, i, seams[i])) for i in range(1, len(tokens))]
        self._last = _Offer(n, tokens, seams, m, start, first, done)
        return Draft(tokens=tokens, q=None, confidence=confidence, calibrated=True)
