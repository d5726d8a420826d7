"""Choose how many draft tokens to verify, from costs measured on this machine.

Each prefix of n draft tokens is priced by the tokens it is expected to emit
per second, E(n) / T(n): E from the survival estimates of `AcceptanceModel`,
T from the verify cost c(n + 1) of `CostModel` and the drafting time; one
plain step that checks the draft's first token is a candidate too (`_wait`).
The rules and why they are so: DESIGN.md, "What a step costs" and "How long a
draft".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence


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
    """Seconds to verify a batch of n tokens, and to draft one token, per drafter.

    A calibrated curve (`seed`) gives the shape of c(n); every step then
    updates one speed factor, observed / calibrated, whatever its n.  So when
    the machine slows down (another job, thermal limits) every size slows
    together.  Learning each size on its own would leave the sizes not tried
    lately at their old, fast cost, and make wide drafts look cheap exactly
    when nothing is.  What a size's steps keep costing beyond that common
    factor is learned too, as its own ratio (`residual`), because a load-time
    calibration of a few repeats can be 10-15% off in shape, and on a CPU
    that is the whole margin of a short draft.
    """

    verify: dict[int, EMA] = field(default_factory=dict)
    """Observed seconds per batch size (used as the curve when none was calibrated)."""
    draft: dict[str, EMA] = field(default_factory=dict)
    slope_prior: float = 0.6
    """Marginal cost of one more verify row, as a fraction of a single-token
    step, assumed before any wide batch has been measured (a CPU-like guess:
    it errs towards short drafts until the machine shows otherwise)."""
    shape: dict[int, float] = field(default_factory=dict)
    """The calibrated curve, made non-decreasing: more rows never cost less."""
    speed: EMA = field(default_factory=EMA)
    """Observed / calibrated cost over recent steps (1: as calibrated)."""
    draft_shape: dict[str, float] = field(default_factory=dict)
    _shape_at: dict[int, float] = field(default_factory=dict, repr=False)
    """The calibrated curve at each size asked so far (every step prices a dozen sizes)."""
    residual: dict[int, EMA] = field(default_factory=dict)
    """Per batch size n >= 2: observed / (calibrated x speed factor), over that size's recent steps.
    One-token steps set the speed factor itself, so theirs is 1 by definition."""
    _residual_at: dict[int, float] = field(default_factory=dict, repr=False)
    _cost_at: dict[int, float] = field(default_factory=dict, repr=False)
    """verify_cost(n) since the last observed step (a step prices dozens of sizes, the curve moves once a step)."""
    catch_up: dict[str, EMA] = field(default_factory=dict)
    """Per model drafter: seconds per token of its catch-up batches wider than the curve (a prompt read late)."""
    _set_aside: float = field(default=0.0, repr=False)
    """Seconds of the next observed draft time that another drafter spent (`set_aside`)."""

    @classmethod
    def from_curve(cls, verify: dict[int, float], draft: dict[str, float] | None = None) -> CostModel:
        """A model priced from a measured curve alone (an offline replay prices steps as the engine would)."""
        costs = cls()
        costs.seed(verify, draft or {})
        return costs

    def seed(self, verify: dict[int, float], draft: dict[str, float]) -> None:
        """Start from a measured curve (calibrate.py); steps then keep it current."""
        sizes = sorted(verify)
        self.shape = dict(zip(sizes, _non_decreasing([verify[n] for n in sizes])))
        self._shape_at = {}
        self._cost_at = {}
        self.draft_shape = dict(draft)

    def _calibrated(self, n: int) -> float:
        got = self._shape_at.get(n)
        if got is None:
            got = self._shape_at[n] = self._interpolate(self.shape, n)
        return got

    def observe_verify(self, n: int, seconds: float) -> None:
        self._cost_at = {}
        self.verify.setdefault(n, EMA()).add(seconds)
        if self.shape:
            expected = self._calibrated(n)
            if n >= 2 and self.speed.count:
                self.residual.setdefault(n, EMA()).add(seconds / (expected * self.speed_factor()))
                self._residual_at = {}
            self.speed.add(seconds / (expected * self._residual(n)))

    def _residual(self, n: int) -> float:
        """The learned residual at n: measured sizes' own, linear between them (from 1 at n = 1), the
        nearest one's beyond; 1 before any wide step."""
        got = self._residual_at.get(n)
        if got is None:
            known = {k: e.value for k, e in self.residual.items() if e.count}
            if n <= 1 or not known:
                got = 1.0
            else:
                known[1] = 1.0
                sizes = sorted(known)
                got = known[sizes[-1]] if n >= sizes[-1] else self._interpolate(known, n)
            self._residual_at[n] = got
        return got

    def observe_draft(self, drafter: str, n_tokens: int, seconds: float, caught_up: int = 0) -> None:
        seconds, self._set_aside = seconds - self._set_aside, 0.0
        # A catch-up wider than the curve is priced by its own timing (`observe_catch_up`): split off by the
        # curve's extrapolated shape, whatever that got wrong would land on the draft tokens' price.
        if n_tokens > 0 and caught_up <= self._widest() and seconds > 0:
            # The first token came out of the catch-up batch; each further one is a one-token decode.
            self.draft.setdefault(drafter, EMA()).add(seconds / (self.batch_factor(caught_up) + n_tokens - 1))

    def observe_catch_up(self, drafter: str, tokens: int, seconds: float) -> None:
        """A model drafter decoded *tokens* in one batch to catch up, in *seconds* timed where it ran
        (0: not timed, no measurement)."""
        if tokens > self._widest() and seconds > 0:
            self.catch_up.setdefault(drafter, EMA()).add(seconds / tokens)

    def set_aside(self, seconds: float) -> None:
        """Leave *seconds* out of the next observed draft time: a drafter whose draft was not verified spent
        them, and they are not the verified drafter's price."""
        self._set_aside += seconds

    def _widest(self) -> int:
        """The widest batch measured: beyond it the curve's shape is a guess (a CPU's often ends flat)."""
        return max((*self.shape, *self.verify), default=1)

    def batch_factor(self, n: int) -> float:
        """What decoding n tokens in one batch costs, in one-token decodes (the target's curve's shape)."""
        if n <= 1:
            return 1.0
        return self.verify_cost(n) / self.verify_cost(1)

    def catch_up_cost(self, drafter: str, behind: int) -> float:
        """Seconds a model drafter spends decoding *behind* tokens before its first guess, beyond one decode.

        A few tokens cost what the target's curve says a batch that wide costs; a prompt-sized batch what
        the drafter's wide catch-ups have cost per token, or until one is timed, the widest batch's per
        token (the curve's extrapolation can run flat and price a prompt like a dozen tokens).
        """
        t_d, wide = self.draft_cost(drafter), self._widest()
        if behind <= wide:
            return t_d * (self.batch_factor(behind) - 1.0)
        learned = self.catch_up.get(drafter)
        per_token = learned.value if learned and learned.count else t_d * self.batch_factor(wide) / wide
        return max(behind * per_token - t_d, t_d * (self.batch_factor(wide) - 1.0))

    def speed_factor(self) -> float:
        return self.speed.value if self.speed.count else 1.0

    def draft_cost(self, drafter: str) -> float:
        e = self.draft.get(drafter)
        if e and e.count:
            return e.value
        # Never drafted yet: the calibrated cost, slowed or sped up as the target has been.
        return self.draft_shape.get(drafter, 0.0) * self.speed_factor()

    def verify_cost(self, n: int) -> float:
        got = self._cost_at.get(n)
        if got is None:
            got = self._cost_at[n] = self._verify_cost(n)
        return got

    def _verify_cost(self, n: int) -> float:
        if self.shape:
            return self._calibrated(n) * self.speed_factor() * self._residual(n)
        got = self.verify.get(n)
        if got and got.count:
            return got.value
        known = {k: v.value for k, v in self.verify.items() if v.count}
        if not known:
            return 1.0 + self.slope_prior * (n - 1)  # unit-free until measured
        return self._interpolate(known, n)

    def _interpolate(self, curve: dict[int, float], n: int) -> float:
        if n in curve:
            return curve[n]
        known = sorted(curve)
        lo = [k for k in known if k < n]
        hi = [k for k in known if k > n]
        if lo and hi:  # between the nearest measured sizes
            a, b = lo[-1], hi[0]
            return curve[a] + (curve[b] - curve[a]) * (n - a) / (b - a)
        base_n = lo[-1] if lo else hi[0]
        base = curve[base_n]
        one = curve[1] if 1 in curve else base / (1 + self.slope_prior * (base_n - 1))
        if len(lo) >= 2:  # beyond them, with the measured slope
            a = lo[-2]
            slope = (base - curve[a]) / (base_n - a)
            return base + max(slope, 0.0) * (n - base_n)
        return max(base + self.slope_prior * one * (n - base_n), one)


def _non_decreasing(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence (pool adjacent violators): timing noise made c(4) < c(3)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(int(c))]


def expected_tokens(survival: Sequence[float], n: int) -> float:
    """1 + P_1 + ... + P_n, where P_i is the product of the first i survival probabilities."""
    return max(_running_expected(survival[:n]), default=1.0)  # the running sums never fall


def _running_expected(survival: Iterable[float]) -> Iterator[float]:
    """expected_tokens(survival, n) for n = 1, 2, ..., len(survival), in one pass."""
    e, p = 1.0, 1.0
    for c in survival:
        p *= c
        e += p
        yield e


class Beta:
    """A Beta(a, b) belief about an acceptance probability."""

    def __init__(self, mean: float, strength: float = 2.0):
        self.a, self.b = mean * strength, (1.0 - mean) * strength

    def add(self, accepted: bool) -> None:
        if accepted:
            self.a += 1.0
        else:
            self.b += 1.0

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)


# Confidence bins for calibration: a drafter's own probability is a ranking,
# not a promise (a small draft model is overconfident on hard tokens).
_CONF_EDGES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.995)


def _conf_bin(c: float) -> int:
    return sum(c >= e for e in _CONF_EDGES)


class AcceptanceModel:
    """How likely each draft token is to be accepted, learned per drafter from the session.

    Each draft token that was judged (every earlier one accepted) updates the
    bin of its own confidence; the estimate for a new token is that bin's
    posterior, which starts at the confidence itself and moves to what this
    target actually accepts.  `next_token` estimates a token not drafted yet
    from the per-position rate at that position.
    """

    def __init__(self) -> None:
        self.bins: dict[str, list[Beta]] = {}
        self.positions: dict[str, list[Beta]] = {}

    def _bins(self, drafter: str) -> list[Beta]:
        if drafter not in self.bins:
            mids = [0.15, 0.4, 0.6, 0.75, 0.85, 0.925, 0.965, 0.99, 0.998]
            self.bins[drafter] = [Beta(m, 3.0) for m in mids]
        return self.bins[drafter]

    def _positions(self, drafter: str) -> list[Beta]:
        if drafter not in self.positions:  # asked a dozen times a step: build the default once
            self.positions[drafter] = [Beta(0.6, 2.0) for _ in range(Controller.MAX_CAP)]
        return self.positions[drafter]

    def survival(self, drafter: str, confidence: Sequence[float], calibrated: bool = False) -> list[float]:
        # A drafter that already learns its own acceptance rates (per kind of match, fading, per
        # generation) knows them better than bins keyed on the value alone, which would pool its
        # doubtful first tokens with confident continuations of the same value from other texts.
        if calibrated:
            return list(confidence)
        bins = self._bins(drafter)
        return [bins[_conf_bin(c)].mean for c in confidence]

    def next_token(self, drafter: str, position: int) -> float:
        pos = self._positions(drafter)
        return pos[min(position, len(pos) - 1)].mean

    def observe(self, drafter: str, confidence: Sequence[float], accepted: int) -> None:
        bins, pos = self._bins(drafter), self._positions(drafter)
        for i, c in enumerate(confidence[: accepted + 1]):
            ok = i < accepted
            bins[_conf_bin(c)].add(ok)
            if i < len(pos):
                pos[i].add(ok)


@dataclass
class Choice:
    n: int
    expected_tokens: float
    expected_seconds: float

    @property
    def rate(self) -> float:
        return self.expected_tokens / self.expected_seconds


class Controller:
    """Sizes each draft from measured costs and learned acceptance.

    `fixed` turns it into a plain --draft-max N: every draft is cut to N and
    nothing is second-guessed.
    """

    MAX_CAP = 32

    def __init__(self, costs: CostModel | None = None, fixed: int | None = None, cap: int = 16):
        self.costs = costs or CostModel()
        self.acceptance = AcceptanceModel()
        self.auto_cap = cap
        self.set_fixed(fixed)
        self.waiting = 1
        """Sequences whose step waits on this one's drafting: 1, or the slots generating in the same batch."""
        # Per-position acceptance over the session (for display): drafted[i]
        # counts drafts that reached position i, accepted[i] those accepted there.
        self.position_drafted = [0] * self.MAX_CAP
        self.position_accepted = [0] * self.MAX_CAP

    def learned(self) -> AcceptanceModel:
        """A copy of what the session has taught the acceptance model (not the costs: those are the machine's)."""
        return copy.deepcopy(self.acceptance)

    def restore(self, learned: AcceptanceModel) -> None:
        self.acceptance = copy.deepcopy(learned)

    def set_fixed(self, fixed: int | None) -> None:
        self.fixed = None if fixed is None else min(fixed, self.MAX_CAP)
        self.cap = self.fixed if self.fixed is not None else self.auto_cap

    def draft_cost(self, drafter: str) -> float:
        """Seconds a draft token of *drafter* costs the streams that wait for it: the sequences decoded in the
        same batch (`waiting`) all wait while this one's drafter runs."""
        return self.costs.draft_cost(drafter) * self.waiting

    def catch_up_cost(self, drafter: str, behind: int) -> float:
        """What a model drafter's catch-up costs the streams that wait for it (see draft_cost)."""
        return self.costs.catch_up_cost(drafter, behind) * self.waiting

    def plain(self, spent: float = 0.0) -> Choice:
        return Choice(0, 1.0, spent + self.costs.verify_cost(1))

    def best_length(self, drafter: str, confidence: Sequence[float], spent: float | None = None,
                    calibrated: bool = False) -> Choice:
        """The prefix of a draft worth verifying (0: decode plainly this step).

        The draft is already made, so its time (*spent*; by default its
        tokens at the drafter's cost) counts against every prefix alike:
        cutting a costly draft short refunds nothing.  *calibrated*: the
        confidences are already acceptance estimates (`Draft.calibrated`).
        """
        if spent is None:
            spent = len(confidence) * self.draft_cost(drafter)
        if self.fixed is not None:
            n = min(self.fixed, len(confidence))
            return Choice(n, expected_tokens(confidence, n), spent + self.costs.verify_cost(n + 1))
        survival = self.acceptance.survival(drafter, confidence, calibrated)
        best = self._wait(drafter, survival, spent)
        for n, e in enumerate(_running_expected(survival[: self.cap]), start=1):
            c = Choice(n, e, spent + self.costs.verify_cost(n + 1))
            if c.rate > best.rate:
                best = c
        return best

    def _wait(self, drafter: str, survival: Sequence[float], spent: float) -> Choice:
        """Plain decoding now, and the rest of the draft next step if the target's token confirms its first.

        A plain step is the cheapest look at whether a copy holds: on a CPU, betting a 16-row verify
        (about six plain steps) on a first token that holds half the time loses even when the rest of
        the copy would run on; one plain step first keeps most of that run and none of that risk.
        The choice (n = 0) counts the tokens and seconds of both steps.
        """
        best = self.plain(spent)
        if len(survival) < 2:
            return best
        first, one, t_d = survival[0], self.costs.verify_cost(1), self.draft_cost(drafter)
        for n, e in enumerate(_running_expected(survival[1: self.cap + 1]), start=1):
            c = Choice(0, 1.0 + first * e, spent + one + first * (self.costs.verify_cost(n + 1) + n * t_d))
            if c.rate > best.rate:
                best = c
        return best

    def share_batch(self, drafts: Sequence[tuple[str, Sequence[float], bool]], extra_rows: int = 0,
                    spent: float = 0.0) -> list[int]:
        """How many tokens of each draft to verify when several sequences share one batch (a server's slots).

        Each draft is (drafter, confidences, calibrated), already cut to what pays for its sequence alone, and each
        sequence's own row is in the batch whatever happens, as are *extra_rows* rows of sequences whose draft
        lengths are not chosen here (fixed by the user).  The lengths maximise the batch's expected tokens per
        second, the sum of every sequence's expected tokens over c(all rows) (+ *spent*, the drafting already
        done): the goodput rule.  A draft row competes with other sequences' plain rows for the same batch, so
        where a wide batch costs nearly its rows (a CPU) drafts shrink as sequences join.  Lengths grow
        greedily, each time by the run of tokens that raises the rate most.
        """
        survival = [self.acceptance.survival(name, conf, calibrated) for name, conf, calibrated in drafts]
        gains = [[1.0, *_running_expected(s)] for s in survival]  # expected tokens at each length
        n = [0] * len(drafts)
        rows, tokens = len(drafts) + extra_rows, float(len(drafts))
        rate = tokens / (spent + self.costs.verify_cost(rows))
        while True:
            best = None
            for i, g in enumerate(gains):
                for m in range(n[i] + 1, len(g)):
                    r = (tokens + g[m] - g[n[i]]) / (spent + self.costs.verify_cost(rows + m - n[i]))
                    if r > rate and (best is None or r > best[2]):
                        best = (i, m, r)
            if best is None:
                return n
            i, m, rate = best
            tokens += gains[i][m] - gains[i][n[i]]
            rows += m - n[i]
            n[i] = m

    def outlook(self, drafter: str, behind: int = 1) -> Choice:
        """The best draft a costly drafter is expected to offer before it drafts anything (n >= 1).

        Each position is expected to survive as often as this drafter's tokens
        at that position have this session, so the estimate needs no draft.
        A drafter *behind* the history (the text was copied meanwhile) first
        decodes what it missed, which is charged here too.
        """
        spent = self.catch_up_cost(drafter, behind)
        t_d = self.draft_cost(drafter)
        if self.fixed is not None:
            n = max(self.fixed, 1)
            return Choice(n, 1.0 + n, spent + self.costs.verify_cost(n + 1) + n * t_d)
        best = None
        survival = (self.acceptance.next_token(drafter, i) for i in range(max(self.cap, 1)))
        for n, e in enumerate(_running_expected(survival), start=1):
            c = Choice(n, e, spent + self.costs.verify_cost(n + 1) + n * t_d)
            if best is None or c.rate > best.rate:
                best = c
        return best

    def explain(self) -> dict:
        """The costs behind the choices, for --json: a step's cost now, what wider verifies and a draft-model
        token cost relative to it, how much slower (>1) or faster than calibrated the machine runs, and the
        sizes whose steps cost other than the calibrated curve's shape."""
        one = self.costs.verify_cost(1)
        out = {"step_ms": round(one * 1e3, 2),
               "verify_vs_step": {str(n): round(self.costs.verify_cost(n) / one, 3) for n in (2, 4, 8, 16)},
               "speed_vs_calibration": round(self.costs.speed_factor(), 3) if self.costs.shape else None}
        learned = {str(n): round(e.value, 3) for n, e in sorted(self.costs.residual.items()) if e.count}
        if learned:  # sizes whose steps cost other than the calibrated shape says, beyond the speed factor
            out["verify_vs_calibrated_shape"] = learned
        drafts = {d: round(self.costs.draft_cost(d) / one, 3) for d in {*self.costs.draft, *self.costs.draft_shape}}
        if drafts:
            out["draft_token_vs_step"] = drafts
        return out

    def worth_drafting_more(self, drafter: str, confidence: Sequence[float]) -> bool:
        """Whether one more token from a costly drafter could raise the rate.

        The next token is expected to survive as often as this drafter's
        tokens at that position have; it costs a draft step plus one more
        verify row.  Also true when drafting further might pay later (the
        verify cost curve can flatten), by looking a few tokens ahead.
        """
        n = len(confidence)
        if self.fixed is not None:
            return n < self.fixed
        if n >= self.cap:
            return False
        survival = self.acceptance.survival(drafter, confidence)
        best = self.best_length(drafter, confidence)
        t_d = self.draft_cost(drafter)
        p_n = 1.0
        for c in survival:
            p_n *= c
        e = expected_tokens(survival, n)
        for extra in range(1, min(4, self.cap - n) + 1):
            p_n *= self.acceptance.next_token(drafter, n + extra - 1)
            e += p_n
            t = self.costs.verify_cost(n + extra + 1) + (n + extra) * t_d
            if e / t > best.rate:
                return True
        return False

    def observe(self, drafter: str, drafted: int, accepted: int, draft_seconds: float,
                verify_seconds: float, confidence: Sequence[float] = (), caught_up: int = 0,
                calibrated: bool = False, priced: bool = True) -> None:
        """One step's verdict.  *priced*: its verify time is the cost of its own batch (not of a batch shared
        with other sequences, which `CostModel.observe_verify` is then told of once)."""
        if priced:
            self.costs.observe_verify(drafted + 1, verify_seconds)
        self.costs.observe_draft(drafter, drafted, draft_seconds, caught_up)
        if drafted and not calibrated:  # a calibrated drafter's confidence is never re-binned: nothing to learn
            self.acceptance.observe(drafter, confidence[:drafted], accepted)
        for i in range(min(drafted, self.MAX_CAP)):
            self.position_drafted[i] += 1
            self.position_accepted[i] += i < accepted
