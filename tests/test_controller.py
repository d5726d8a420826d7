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
    assert ctl.outlook("model").rate < ctl.plain().rate
    assert ctl.best_length("model", [0.999] * 16, spent=0.0).n == 0


def test_a_made_draft_is_priced_without_its_drafting_time():
    """Cutting a draft refunds none of its time: a sure 4-token draft is verified even where drafting it did not pay."""
    ctl = controller(lambda n: C1 * (1 + 0.3 * (n - 1)), draft_cost=0.02)
    assert not ctl.worth_drafting_more("model", [])
    assert ctl.best_length("model", [0.999] * 4).n == 4


def test_cpu_like_costs_keep_free_copies_only_when_sure():
    """A verify curve measured on a 2-core x86 VM (1.5B target): 26 ms for 1 token, 131 ms for 8, flat 12-16."""
    measured = {1: .026, 2: .048, 4: .079, 8: .131, 12: .167, 16: .165, 17: .170}
    costs = CostModel()
    costs.seed(measured, {})
    ctl = Controller(costs)
    assert ctl.best_length("ngram", [0.5] * 16).n == 0
    sure = ctl.best_length("ngram", [0.995] * 16)
    assert sure.n >= 11 and sure.rate > 1 / measured[1]


def test_a_doubtful_first_token_is_confirmed_by_a_plain_step_before_a_wide_bet():
    """A copy that holds half the time but runs on once it holds.  On a CPU the bet on it beats plain decoding
    on average, yet one plain step shows for the price of a token whether it holds, where a 16-row verify
    (5.5 steps) stakes everything on the first one; on a GPU the bet costs little and is made."""
    doubtful = [0.5] + [0.95] * 15
    cpu = controller(lambda n: C1 * (1 + 0.3 * (n - 1)))
    bet = max((1 + sum(np.prod(doubtful[:k]) for k in range(1, n + 1))) / cpu.costs.verify_cost(n + 1)
              for n in range(1, 17))
    assert bet > 1.1 / C1
    wait = cpu.best_length("ngram", doubtful, calibrated=True)
    assert wait.n == 0 and wait.rate > bet
    assert cpu.best_length("ngram", [0.97] * 16, calibrated=True).n >= 8  # a sure copy is still bet on
    gpu = controller(lambda n: C1 * (1 + 0.01 * (n - 1)))
    assert gpu.best_length("ngram", doubtful, calibrated=True).n >= 8


def test_a_calibrated_confidence_is_taken_as_is():
    """The session accepted every 0.45-confidence token so far; the bins learn that for raw probabilities,
    but a drafter that states its own acceptance estimate (n-gram copies) is not second-guessed by them."""
    ctl = controller(lambda n: C1 * (1 + 0.6 * (n - 1)))  # CPU-like: a row costs 0.6 of a step
    for _ in range(60):
        ctl.observe("ngram", 1, 1, 0.0, C1 * 1.6, confidence=[0.45])
    assert ctl.best_length("ngram", [0.45] * 8).n > 0
    assert ctl.best_length("ngram", [0.45] * 8, calibrated=True).n == 0
    assert ctl.best_length("ngram", [0.97] * 8, calibrated=True).n >= 4


def test_a_slower_machine_slows_every_batch_size_alike():
    """Only plain steps observed, 10x slower than calibrated: wide drafts must not look cheap by comparison."""
    measured = {1: .026, 2: .048, 4: .079, 8: .131, 16: .165}
    costs = CostModel()
    costs.seed(measured, {"model": .014})
    ctl = Controller(costs)
    for _ in range(30):
        ctl.observe("none", 0, 0, 0.0, 0.26)
    assert abs(costs.verify_cost(8) / costs.verify_cost(1) - measured[8] / measured[1]) < 1e-6
    assert abs(costs.draft_cost("model") - 0.14) < 1e-6
    assert ctl.best_length("ngram", [0.5] * 16).n == 0


def test_a_size_that_keeps_costing_more_than_calibrated_is_learned():
    """Calibrated: 4 rows cost 2.6 steps.  They keep costing 3.0 while plain steps cost as calibrated: a short
    draft must be priced at what it costs, not at what a few load-time repeats said."""
    measured = {1: .026, 2: .045, 4: .068, 8: .110, 16: .170}
    costs = CostModel()
    costs.seed(measured, {})
    ctl = Controller(costs)
    for _ in range(20):
        ctl.observe("none", 0, 0, 0.0, .026)
        ctl.observe("ngram", 3, 3, 0.0, .078, confidence=[0.9] * 3)
    assert abs(costs.verify_cost(1) - .026) < 1e-3
    assert abs(costs.verify_cost(4) - .078) < 2e-3
    assert costs.verify_cost(8) > .110 * 1.1  # untried wider sizes: the nearest learned size's ratio
    assert costs.verify_cost(2) > .045  # and between 1 and 4 on the way there


def test_a_noisy_calibration_is_made_non_decreasing():
    costs = CostModel()
    costs.seed({1: .010, 2: .030, 3: .020, 4: .040}, {})
    assert [round(costs.verify_cost(n), 6) for n in (1, 2, 3, 4)] == [.010, .025, .025, .040]


def test_acceptance_model_learns_overconfidence():
    ctl = controller(lambda n: C1 * (1 + 0.1 * (n - 1)), draft_cost=0.001)
    before = ctl.best_length("model", [0.99] * 16).n
    for _ in range(200):  # the draft says 0.99 but its first token is always wrong
        ctl.observe("model", 4, 0, 0.004, C1 * 1.4, [0.99] * 4)
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


class Scripted:
    """A drafter that proposes fixed tokens with a fixed confidence (stands in for a draft model's guesses)."""

    name = "model"

    def __init__(self, tokens, confidence):
        self.tokens, self.confidence, self.calls = tokens, confidence, 0

    def draft(self, history, n_max, params, rng, keep_going=None):
        from specgen.drafters.base import Draft

        self.calls += 1
        out = Draft()
        for t in self.tokens[:n_max]:
            if keep_going and not keep_going(out.confidence):
                break
            out.tokens.append(t)
            out.confidence.append(self.confidence)
        return out

    def behind(self, history):
        return 1

    def prefill(self, history, sources=()):
        pass

    def close(self):
        pass


def test_hybrid_prefers_a_good_draft_model_to_a_doubtful_copy_where_verifying_is_flat():
    span = list(range(100, 160))
    history = span + [7, 8] + span[:2]  # a two-token echo: a doubtful copy
    rng, params = np.random.default_rng(0), SamplingParams()
    flat = controller(lambda n: C1, draft_cost=0.002)
    for _ in range(50):  # this session's draft model is right nine times in ten
        flat.observe("model", 8, 8, 0.016, C1, [0.9] * 8)
    model = Scripted(list(range(300, 316)), 0.9)
    d = AutoDrafter(flat, NgramDrafter(), model).draft(history, 16, params, rng)
    assert d.source == "model" and len(d.tokens) >= 8
    # Where a wide verify costs as much as several steps, the same model is never asked.
    steep = controller(lambda n: C1 * n, draft_cost=0.01)
    model = Scripted(list(range(300, 316)), 0.9)
    d = AutoDrafter(steep, NgramDrafter(), model).draft(history, 16, params, rng)
    assert model.calls == 0 and d.source != "model"


def test_a_cost_model_from_a_curve_prices_between_and_beyond_its_sizes():
    costs = CostModel.from_curve({1: 0.010, 2: 0.020, 4: 0.030}, {"model": 0.004})
    assert costs.verify_cost(3) == 0.025  # halfway between the measured 2 and 4
    assert abs(costs.verify_cost(8) - 0.050) < 1e-12  # beyond them: the last measured slope, 5 ms a row
    assert costs.draft_cost("model") == 0.004 and costs.draft_cost("ngram") == 0.0
