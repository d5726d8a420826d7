"""Choose how many draft tokens to verify, from costs measured on this machine.

A verify pass of n tokens costs c(n) seconds on the target; drafting costs
t_d seconds a token (zero for n-gram lookup).  If token i of a draft survives
with probability P_i (the product of per-token confidences), a step that
verifies n drafts emits E(n) = 1 + P_1 + ... + P_n tokens in
T(n) = c(n + 1) + n * t_d seconds.  The controller picks the n that maximises
E(n) / T(n), and n = 0 (plain decoding) whenever nothing beats 1 / c(1):
speculation that never loses on average.

On a GPU c(n) is nearly flat and long drafts win; on a CPU it grows almost
linearly (NOTES: 26 ms for 1 token, 131 ms for 8 here) and only near-certain
drafts pay.  Nothing here assumes which: c(n) is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


class EMA:
    def __init__(self, alpha: float = 0.2):
        self.alpha, self.value, self.count = alpha, 0.0, 0

    def add(self, x: float) -> None:
        self.count += 1
        # Plain mean for the first samples, then exponential forgetting.
        a = max(self.alpha, 1.0 / self.count)
        self.value += a * (x - self.value)


@dataclass
class CostModel:
    """Seconds to verify a batch of n tokens, and to draft one token, per drafter."""

    verify: dict[int, EMA] = field(default_factory=dict)
    draft: dict[str, EMA] = field(default_factory=dict)
    slope_prior: float = 0.6
    """Marginal cost of one more verify row, as a fraction of a single-token
    step, assumed before any wide batch has been measured (a CPU-like guess:
    it errs towards short drafts until the machine shows otherwise)."""

    def observe_verify(self, n: int, seconds: float) -> None:
        self.verify.setdefault(n, EMA()).add(seconds)

    def observe_draft(self, drafter: str, n_tokens: int, seconds: float) -> None:
        if n_tokens > 0:
            self.draft.setdefault(drafter, EMA()).add(seconds / n_tokens)

    def draft_cost(self, drafter: str) -> float:
        e = self.draft.get(drafter)
        return e.value if e and e.count else 0.0

    def verify_cost(self, n: int) -> float:
        got = self.verify.get(n)
        if got and got.count:
            return got.value
        known = sorted(k for k, v in self.verify.items() if v.count)
        if not known:
            return 1.0 + self.slope_prior * (n - 1)  # unit-free until measured
        lo = [k for k in known if k < n]
        hi = [k for k in known if k > n]
        if lo and hi:  # interpolate between the nearest measured sizes
            a, b = lo[-1], hi[0]
            ca, cb = self.verify[a].value, self.verify[b].value
            return ca + (cb - ca) * (n - a) / (b - a)
        base_n = lo[-1] if lo else hi[0]
        base = self.verify[base_n].value
        one = self.verify[1].value if 1 in self.verify and self.verify[1].count else base / (
            1 + self.slope_prior * (base_n - 1))
        if lo and len(lo) >= 2:  # extrapolate with the measured slope
            a = lo[-2]
            slope = (base - self.verify[a].value) / (base_n - a)
            return base + max(slope, 0.0) * (n - base_n)
        return max(base + self.slope_prior * one * (n - base_n), one)

    def needs_probe(self, n: int) -> bool:
        """True while batch size n has not been measured a few times."""
        got = self.verify.get(n)
        return not got or got.count < 2


def expected_tokens(confidence: Sequence[float], n: int) -> float:
    e, p = 1.0, 1.0
    for c in confidence[:n]:
        p *= c
        e += p
    return e


@dataclass
class Choice:
    n: int
    expected_tokens: float
    expected_seconds: float


class Controller:
    """Sizes each draft; `fixed` turns it into a plain --draft-max N cap."""

    MAX_CAP = 32

    def __init__(self, costs: CostModel | None = None, fixed: int | None = None, cap: int = 16):
        self.costs = costs or CostModel()
        self.auto_cap = cap
        self.set_fixed(fixed)
        # Per-position acceptance over the session: drafted[i] counts drafts that
        # reached position i, accepted[i] those accepted there.
        self.position_drafted = [0] * self.MAX_CAP
        self.position_accepted = [0] * self.MAX_CAP

    def set_fixed(self, fixed: int | None) -> None:
        self.fixed = None if fixed is None else min(fixed, self.MAX_CAP)
        self.cap = self.fixed if self.fixed is not None else self.auto_cap

    def best_length(self, drafter: str, confidence: Sequence[float]) -> Choice:
        """The prefix of a draft worth verifying (0: decode plainly this step)."""
        t_d = self.costs.draft_cost(drafter)
        best = Choice(0, 1.0, self.costs.verify_cost(1))
        if self.fixed is not None:
            n = min(self.fixed, len(confidence))
            return Choice(n, expected_tokens(confidence, n), self.costs.verify_cost(n + 1) + n * t_d)
        for n in range(1, min(len(confidence), self.cap) + 1):
            e = expected_tokens(confidence, n)
            t = self.costs.verify_cost(n + 1) + n * t_d
            if e / t > best.expected_tokens / best.expected_seconds:
                best = Choice(n, e, t)
        return best

    def worth_drafting_more(self, drafter: str, confidence: Sequence[float]) -> bool:
        """Whether one more token from a costly drafter could raise the rate.

        The next token can add at most P_n (if it were certain); it costs a
        draft step plus one more verify row.  Stop as soon as that cannot beat
        the best rate reachable with the tokens already drafted.
        """
        n = len(confidence)
        if self.fixed is not None:
            return n < self.fixed
        if n >= self.cap:
            return False
        best = self.best_length(drafter, confidence)
        rate = best.expected_tokens / best.expected_seconds
        p_n = 1.0
        for c in confidence:
            p_n *= c
        t_d = self.costs.draft_cost(drafter)
        e_more = expected_tokens(confidence, n) + p_n
        t_more = self.costs.verify_cost(n + 2) + (n + 1) * t_d
        return e_more / t_more > rate

    def observe(self, drafter: str, drafted: int, accepted: int, draft_seconds: float,
                verify_seconds: float) -> None:
        self.costs.observe_verify(drafted + 1, verify_seconds)
        self.costs.observe_draft(drafter, drafted, draft_seconds)
        for i in range(min(drafted, self.MAX_CAP)):
            self.position_drafted[i] += 1
            self.position_accepted[i] += i < accepted
