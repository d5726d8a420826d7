"""The controller's choices on synthetic costs and acceptance (no model needed)."""

import numpy as np

from specgen.controller import Controller, CostModel
from specgen.drafters import AutoDrafter, NgramDrafter
from specgen.sampling import SamplingParams

C1 = 0.025  # seconds for a one-token target step


def controller(verify, draft_cost=0.005) -> Controller:
    costs = CostModel()
    costs.seed({n: verify(n) for n in range(1, 18)}, {"model": draft_cost})
    return Controller(costs)


def test_flat_verify_cost_gives_long_drafts():
    """GPU-like: a batch of n costs what one token costs, so long drafts pay."""
    ctl = controller(lambda n: C1, draft_cost=0.002)
    assert ctl.best_length("model", [0.9] * 16).n >= 8
    assert ctl.worth_drafting_more("model", [])
    assert ctl.worth_drafting_more("model", [0.9] * 6)


def test_linear_verify_cost_means_no_draft_model():
    """Verify cost linear in n: a costly drafter can never beat plain decoding."""
    ctl = controller(lambda n: C1 * n, draft_cost=0.005)
    assert not ctl.worth_drafting_more("model", [])
    assert ctl.best_length("model", [0.999] * 16).n == 0


def test_cpu_like_costs_keep_free_copies_only_when_sure():
    """A verify curve measured on a 2-core x86 VM (1.5B target): 26 ms for 1 token, 131 ms for 8, flat 12-16."""
    measured = {1: .026, 2: .048, 4: .079, 8: .131, 12: .167, 16: .165, 17: .170}
    costs = CostModel()
    costs.seed(measured, {})
    ctl = Controller(costs)
    assert ctl.best_length("ngram", [0.5] * 16).n == 0
    sure = ctl.best_length("ngram", [0.995] * 16)
    assert sure.n >= 11 and sure.rate > 1 / measured[1]


def test_acceptance_model_learns_overconfidence():
    ctl = controller(lambda n: C1 * (1 + 0.1 * (n - 1)), draft_cost=0.001)
    before = ctl.best_length("model", [0.99] * 16).n
    for _ in range(200):  # the draft says 0.99 but its first token is always wrong
        ctl.observe("model", 4, 0, 0.004, C1, [0.99] * 4)
    after = ctl.best_length("model", [0.99] * 16).n
    assert before >= 8 and after == 0
    assert not ctl.worth_drafting_more("model", [])


def test_fixed_draft_max_is_obeyed():
    ctl = controller(lambda n: C1 * n)
    ctl.set_fixed(3)
    assert ctl.best_length("model", [0.1] * 10).n == 3
    assert ctl.worth_drafting_more("model", [0.1, 0.1]) and not ctl.worth_drafting_more("model", [0.1] * 3)


def test_hybrid_copies_when_the_text_repeats_and_stays_plain_otherwise():
    ctl = controller(lambda n: C1 * (1 + 0.05 * (n - 1)))
    auto = AutoDrafter(ctl, NgramDrafter(), model=None)
    rng = np.random.default_rng(0)
    params = SamplingParams()
    span = list(range(100, 160))
    history = span + [7, 8] + span[:10]  # the tail repeats the start: copy the rest
    d = auto.draft(history, 16, params, rng)
    assert d.source == "ngram" and d.tokens[:5] == span[10:15]
    assert auto.draft(list(range(200, 260)), 16, params, rng).tokens == []  # nothing repeats, no model
