"""Token distributions and the speculative accept/resample rule.

The target distribution p and the draft distribution q are both built by
`distribution()` from the same parameters, which is what makes speculative
sampling lossless: the output follows p exactly (Leviathan et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import SpecgenError, is_finite_number, shorten

MAX_TEMPERATURE = 10.0
"""Above this every token is about equally likely: the output is noise, not a setting."""

MIN_TEMPERATURE = 1e-3
"""Below this (and above 0, greedy) sampling is greedy in all but name, and far below it logits / T
overflow to infinity and the distribution to NaN."""

REPEAT_PENALTY_RANGE = (0.01, 100.0)
"""A penalty divides or multiplies logits by at most 100 either way: a tiny one (1e-300) would
overflow them to infinity and leave nothing to sample."""

PENALTY_RANGE = (-2.0, 2.0)
"""OpenAI's bounds for the frequency and presence penalties, which subtract from logits."""

MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def looks_back(self) -> bool:
        """Whether a penalty reads the tokens before the one being chosen (else nobody needs them)."""
        return self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    def check(self) -> "SamplingParams":
        """Refuse the first parameter out of bounds, named as `{field}` (SpecgenError.setting); the one rule for
        every front end."""
        for f in fields(self):
            rule = _RULES.get(f.name)
            value = getattr(self, f.name)
            if rule is not None and value is not None and not rule[0](value):
                raise SpecgenError(f"{{{f.name}}} must be {rule[1]}, not {shorten(value)}")
        return self


def _whole(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_RULES = {
    "temperature": (lambda x: is_finite_number(x) and (x == 0 or MIN_TEMPERATURE <= x <= MAX_TEMPERATURE),
                    f"0 (greedy) or a number from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}"),
    "top_k": (lambda x: _whole(x) and x >= 0, "a whole number 0 or more (0: off)"),
    "top_p": (lambda x: is_finite_number(x) and 0 < x <= 1, "more than 0 and at most 1 (1: off)"),
    "min_p": (lambda x: is_finite_number(x) and 0 <= x <= 1, "from 0 to 1 (0: off)"),
    "repeat_penalty": (lambda x: is_finite_number(x) and REPEAT_PENALTY_RANGE[0] <= x <= REPEAT_PENALTY_RANGE[1],
                       "from {:g} to {:g} (1: off)".format(*REPEAT_PENALTY_RANGE)),
    "repeat_last_n": (lambda x: _whole(x) and x >= 0, "a whole number 0 or more"),
    **{name: (lambda x: is_finite_number(x) and PENALTY_RANGE[0] <= x <= PENALTY_RANGE[1],
              "from {:g} to {:g} (0: off)".format(*PENALTY_RANGE))
       for name in ("frequency_penalty", "presence_penalty")},
    "seed": (lambda x: _whole(x) and 0 <= x <= MAX_SEED, f"a whole number from 0 to {MAX_SEED}"),
}


def allowed(field: str) -> str:
    """What a sampling setting may be, in the words its error uses (a usage line quotes them)."""
    return _RULES[field][1]


def penalized(logits: np.ndarray, history: Sequence[int], params: SamplingParams) -> np.ndarray:
    """llama.cpp's penalties over the last `repeat_last_n` tokens (a copy if applied): each token seen there
    has its logit divided by the repeat penalty (multiplied when negative), then lowered by the frequency
    penalty per time seen and by the presence penalty once."""
    if not params.looks_back or not history:
        return logits
    recent, counts = np.unique(np.asarray(history[-params.repeat_last_n:], dtype=np.int64), return_counts=True)
    inside = recent < logits.shape[0]
    recent, counts = recent[inside], counts[inside]
    out = np.array(logits, dtype=np.float32)
    vals = out[recent]
    if params.repeat_penalty != 1.0:
        vals = np.where(vals > 0, vals / params.repeat_penalty, vals * params.repeat_penalty)
    out[recent] = vals - (counts * params.frequency_penalty + params.presence_penalty)
    return out


Allowed = Callable[[np.ndarray], np.ndarray]
"""A constraint's verdict on candidate token ids: a bool per id, True where the token may come next."""

_GAPS = (2.0, 4.0, 8.0, 16.0, 32.0, np.inf)
"""Widening distances below a row's best logit within which candidates are looked for: the few that matter
usually lie within a few logits of the top, found by one cheap comparison each, where sorting or asking a
grammar about a 150k-token row costs milliseconds."""


def _by_gap(logits: np.ndarray) -> Iterator[tuple[float, np.ndarray]]:
    """(floor, ids of every finite logit at or above it), for floors ever further below the best logit."""
    top = float(logits.max())
    for gap in _GAPS:
        floor = top - gap
        yield floor, np.flatnonzero(logits >= floor) if np.isfinite(floor) else np.flatnonzero(np.isfinite(logits))


def best_allowed(logits: np.ndarray, allowed: Allowed, k: int) -> np.ndarray:
    """The ids of the *k* highest finite logits that *allowed* passes, best first (equal logits: lower id
    first, as argmax breaks ties); fewer when fewer are allowed.

    Exactly the k best of the row with every forbidden token masked, asking only about the tokens above a
    floor that k allowed ones clear: whatever lies below it cannot be among the best.
    """
    found: list[np.ndarray] = []
    asked_down_to = np.inf
    for floor, ids in _by_gap(logits):
        new = ids[logits[ids] < asked_down_to]
        if len(new):
            found.append(new[allowed(new)])
        asked_down_to = floor
        if sum(map(len, found)) >= k:
            break
    ok = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    return ok[np.lexsort((ok, -logits[ok]))][:k]


_STRIDE = 64
"""Every 64th logit of a row estimates where its top-k begins: one pass over the row then finds them all."""


def top_ids(logits: np.ndarray, m: int) -> np.ndarray:
    """The ids of the *m* highest finite logits, best first (equal logits: lower id first)."""
    if m <= 0:
        return np.zeros(0, dtype=np.int64)
    ids = np.zeros(0, dtype=np.int64)
    if len(logits) >= 16 * _STRIDE:
        # A floor that about m + 2 strides of tokens clear, else one that about m + 23 do: a peaked row
        # (code) leaves fewer than m above the first now and then, and the widening gaps then found
        # thousands, a millisecond to sort out.  When even the second is too high, the gaps decide.
        sample = logits[::_STRIDE]
        near = max(len(sample) - m // _STRIDE - 3, 0)
        far = max(near - 21, 0)
        sample = np.partition(sample, [far, near])
        for floor in (sample[near], sample[far]):
            if not np.isfinite(floor):
                break
            ids = np.flatnonzero(logits >= floor)
            if len(ids) >= m:
                break
    if len(ids) < m:
        for _, ids in _by_gap(logits):
            if len(ids) >= m:
                break
    if len(ids) > m:
        vals = logits[ids]
        ids = ids[vals >= np.partition(vals, len(vals) - m)[len(vals) - m]]
    return ids[np.lexsort((ids, -logits[ids]))][:m]


def only(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """A copy of *logits* where every token but *ids* is impossible."""
    out = np.full(logits.shape, -np.inf, dtype=np.float32)
    out[ids] = logits[ids]
    return out


def log_softmax_top(logits: np.ndarray, token: int, n: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The log-probability of *token* under the softmax of *logits*, and the *n* likeliest tokens with theirs,
    best first: (logprob, ids, logprobs)."""
    top = float(logits.max())
    lse = top + float(np.log(np.exp(logits - top).sum(dtype=np.float64)))
    ids = top_ids(logits, n)
    return float(logits[token]) - lse, ids, logits[ids].astype(np.float64) - lse


@dataclass(frozen=True)
class Dist:
    """A token distribution by its support: the ids with a probability (ascending) and those probabilities.

    Top-k leaves tens of tokens of a 150k-token vocabulary, and a full row per draft token and per verified
    row costs a millisecond or more: on a GPU, whose steps take about ten, that is not hidden.  Sums run in
    id order, so sampling from it draws exactly the token a full row would.
    """
    ids: np.ndarray
    probs: np.ndarray
    n: int
    """The vocabulary's size."""

    @classmethod
    def of(cls, p: np.ndarray) -> "Dist":
        """The distribution a full row of probabilities gives."""
        p = np.asarray(p, dtype=np.float64)
        ids = np.flatnonzero(p > 0)
        return cls(ids, p[ids], len(p))

    def __getitem__(self, x: int) -> float:
        i = int(np.searchsorted(self.ids, x))
        return float(self.probs[i]) if i < len(self.ids) and self.ids[i] == x else 0.0

    def at(self, ids: np.ndarray) -> np.ndarray:
        """The probabilities of *ids* (0 outside the support)."""
        i = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        return np.where(self.ids[i] == ids, self.probs[i], 0.0) if len(self.ids) else np.zeros(len(ids))

    def max(self) -> float:
        return float(self.probs.max())

    def dense(self) -> np.ndarray:
        """The full row: a probability for every id of the vocabulary."""
        p = np.zeros(self.n)
        p[self.ids] = self.probs
        return p


def distribution(logits: np.ndarray, history: Sequence[int], params: SamplingParams,
                 n_vocab: int | None = None) -> Dist:
    """The probabilities after penalty, temperature, top-k, min-p, top-p.

    `n_vocab` truncates the row so that a draft and a target whose vocabularies
    differ by padding compare over the same ids.
    """
    row = penalized(logits, history, params)
    if n_vocab is not None:
        row = row[:n_vocab]
    return distributions(row[None], params)[0]


def distributions(rows: np.ndarray, params: SamplingParams) -> list[Dist]:
    """`distribution` of each row of a (rows, vocabulary) array, without penalties: a verify batch's rows at
    once, so that the pass finding each row's support and the numpy calls after it are shared.

    Top-k keeps the k highest logits (equal logits: lower id first); the softmax at the temperature is taken
    over them; min-p keeps those at least min_p times as likely as the best, top-p the shortest run (best
    first) whose share of the top-k's mass reaches top_p; what is kept is renormalized.
    """
    n = rows.shape[1]
    if params.greedy:
        return [Dist(np.array([int(row.argmax())]), np.ones(1), n) for row in rows]
    k = params.top_k if 0 < params.top_k < n else n
    near = _near_top(rows, params, k)
    out = []
    for i, row in enumerate(rows):
        got = _dist(*near[i], params, n) if near is not None else None
        if got is None:  # the whole top-k is needed: min-p off, a flat row, a top-p cut the bound leaves open
            ids = top_ids(row, k) if k < n else np.argsort(-row, kind="stable")
            got = _dist(ids, row[ids], 0, params, n)
        out.append(got)
    return out


_GROUP = 64
"""A row is read as this many strides of its vocabulary, and each id's group is its place in the stride: one
pass of elementwise maxima gives every group's best logit."""

_IN_GROUP = np.arange(_GROUP)


def _near_top(rows: np.ndarray, params: SamplingParams, k: int) -> list[tuple[np.ndarray, np.ndarray, int]] | None:
    """For each row, the tokens min-p could keep, best first: (ids, logits, how many more of the top-k lie
    below them).

    Min-p keeps nothing below the best logit + temperature x ln(min_p), so those above it, found from the
    groups whose best logit clears it, are all that any row keeps: a pass over the rows and a look at a few
    groups, where finding a 150k-token row's whole top-k took several passes.  The rest of the top-k, whose
    mass only the top-p cut weighs, is counted.  None where that does not hold (min-p off, a row not
    finite at its top) or does not pay (rows so flat that many groups clear the cut).
    """
    n_rows, n = rows.shape
    groups = n // _GROUP
    if params.min_p <= 0 or groups < 2 or not rows.flags.c_contiguous:
        return None
    stride = groups * _GROUP
    best = rows[:, :stride].reshape(n_rows, _GROUP, groups).max(axis=1)  # (rows, groups)
    tail = rows[:, stride:]
    top = best.max(axis=1)
    if tail.shape[1]:
        top = np.maximum(top, tail.max(axis=1))
    if not np.isfinite(top).all():
        return None
    # Below the min-p cut by a margin that float32 logits' rounding cannot cross.
    floor = top + (params.temperature * float(np.log(params.min_p)) - 1e-3)
    clear = (best >= floor[:, None]).ravel().nonzero()[0]
    if len(clear) > 4 * k * n_rows:
        return None
    r, g = np.divmod(clear, groups)
    flat = ((r * n + g)[:, None] + groups * _IN_GROUP).ravel()
    if tail.shape[1]:
        r, c = np.divmod((tail >= floor[:, None]).ravel().nonzero()[0], tail.shape[1])
        flat = np.concatenate([flat, r * n + stride + c])
    vals = rows.reshape(-1)[flat]
    row = flat // n
    ok = vals >= floor[row]
    flat, vals, row = flat[ok], vals[ok], row[ok]
    order = np.lexsort((flat, -vals, row))
    ids, vals = flat[order] - row[order] * n, vals[order]
    starts = row[order].searchsorted(np.arange(n_rows + 1)).tolist()
    out = []
    for i in range(n_rows):
        a, b = starts[i], min(starts[i + 1], starts[i] + k)
        out.append((ids[a:b], vals[a:b], k - (b - a)))
    return out


def _dist(ids: np.ndarray, logits: np.ndarray, rest: int, params: SamplingParams, n: int) -> Dist | None:
    """The distribution from the top-k's best tokens *ids* (best first) with their *logits*, and *rest* more
    of the top-k left out below min-p's cut; None when the top-p cut depends on the mass of those left out.

    The same numbers for a token whatever was left out, so a row gives the same distribution both ways: the
    sums run in order, and each kept token's probability is its likelihood over the kept ones' running sum.
    """
    z = logits.astype(np.float64) / params.temperature
    e = np.exp(z - z[0])  # likelihood relative to the best, whose is 1
    keep = len(e)
    if params.min_p > 0:
        keep = int(np.count_nonzero(e >= params.min_p))  # e falls: these are the first ones
    mass = e.cumsum()
    if params.top_p < 1.0:
        # Each token left out is less likely than min_p (relative): the top-k's mass lies between these two.
        lo, hi = (min(keep, int(mass.searchsorted(params.top_p * total)) + 1)
                  for total in (mass[-1], mass[-1] + rest * params.min_p))
        if lo != hi:
            return None
        keep = lo
    keep = max(keep, 1)
    ids = ids[:keep]
    order = ids.argsort()
    return Dist(ids[order].astype(np.int64), e[:keep][order] / mass[keep - 1], n)


def sample(p: Dist, rng: np.random.Generator) -> int:
    # Inverse-CDF sampling: one uniform per token, so a seed reproduces a run.
    c = np.cumsum(p.probs)
    return int(p.ids[min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(c) - 1)])


def accept_probability(p: Dist, q: Dist | None, x: int) -> float:
    """min(1, p(x)/q(x)): the chance speculative sampling keeps draft token x (q=None: a point mass)."""
    qx = 1.0 if q is None else q[x]
    return min(1.0, p[x] / qx) if qx > 0 else 0.0


def accept_or_resample(p: Dist, q: Dist | None, x: int, rng: np.random.Generator) -> tuple[bool, int]:
    """Speculative sampling for one draft token x drawn from q.

    Accept x with probability min(1, p(x)/q(x)); otherwise return a token drawn
    from norm(max(0, p - q)).  q=None means a deterministic drafter (q is a
    point mass on x), so x is kept with probability p(x).
    Returns (accepted, token).
    """
    if q is None:
        # Draw the token exactly as plain sampling would and keep x if that is what came out: x is
        # accepted with probability p(x) and a rejection is distributed as p without x (the rule
        # above), while each emitted token costs one uniform, so a seed gives the same text
        # whatever a deterministic drafter proposed, or whether it drafted at all.
        tok = sample(p, rng)
        return tok == x, tok
    if rng.random() < accept_probability(p, q, x):
        return True, x
    # Ids the target's vocabulary lacks (a draft's padding) have p = 0, so no residual either.
    ids = np.union1d(p.ids, q.ids[q.ids < p.n])
    residual = np.maximum(p.at(ids) - q.at(ids), 0.0)
    if residual.sum() <= 0:  # p == q: rejection has probability zero, numerically possible only
        return False, sample(p, rng)
    return False, sample(Dist(ids, residual, p.n), rng)
