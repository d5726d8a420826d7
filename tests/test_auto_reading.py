"""auto reads a prompt into the draft model only when that pays: a copy needs no draft model, a chat does."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specgen.build import EngineOptions, load_engine
from specgen.controller import Controller, CostModel
from specgen.drafters import AutoDrafter, NgramDrafter
from specgen.drafters.base import Draft
from specgen.engine import Summary
from specgen.llama.chat_template import chat_tokens, messages_for
from specgen.sampling import SamplingParams

from near_tie import assert_same_or_near_tie

C1 = 0.025  # seconds for a one-token target step

COPY = ("Return this function unchanged:\n\ndef mean(values):\n    total = 0\n    for v in values:\n"
        "        total += v\n    return total / len(values)\n\ndef spread(values):\n    low = min(values)\n"
        "    high = max(values)\n    return high - low\n")
CHAT = "Explain what a hash table is in two sentences."


def flat_controller() -> Controller:
    """GPU-like costs: a verify of any width costs a step, a draft token a twelfth of one; the session's
    draft model is right nine times in ten, so it beats plain decoding by far."""
    costs = CostModel()
    costs.seed({n: C1 for n in range(1, 18)}, {"model": C1 / 12})
    ctl = Controller(costs)
    for _ in range(50):
        ctl.observe("model", 8, 8, 8 * C1 / 12, C1, [0.9] * 8)
    return ctl


class Behind:
    """A draft model *gap* tokens behind the history until it drafts (stands in for one that has not read a
    prompt); its catch-up is timed at *per_token* seconds a token."""

    name = "model"

    def __init__(self, gap: int, per_token: float):
        self.gap, self.per_token, self.calls = gap, per_token, 0

    def behind(self, history):
        return self.gap

    def defer(self, history):
        pass

    def draft(self, history, n_max, params, rng, keep_going=None):
        self.calls += 1
        caught, self.gap = self.gap, 1
        return Draft(list(range(900, 908)), confidence=[0.9] * 8, caught_up=caught,
                     catch_up_seconds=caught * self.per_token)


def test_a_costly_reading_is_bought_once_the_missed_savings_cover_it():
    """Nothing repeats, so every step the draft model would save time; its 2000-token reading costs about 5.5
    steps' savings, so it is asked on the sixth step, not at once and not never, and at once after."""
    ctl = flat_controller()
    caught_up, plain = ctl.outlook("model"), ctl.plain()
    gain = caught_up.expected_tokens / plain.rate - caught_up.expected_seconds
    per_token = (5.5 * gain + ctl.costs.draft_cost("model")) / 2000
    ctl.costs.observe_catch_up("model", 2000, 2000 * per_token)  # a reading timed before
    model = Behind(2000, per_token)
    auto = AutoDrafter(ctl, NgramDrafter(), model)
    history, params, rng = list(range(200, 260)), SamplingParams(), np.random.default_rng(0)
    steps = math.ceil(ctl.costs.catch_up_cost("model", 2000) / gain)
    assert steps == 6
    for _ in range(steps - 1):
        assert auto.draft(history, 16, params, rng).tokens == [] and model.calls == 0
    assert auto.draft(history, 16, params, rng).source == "model" and model.calls == 1
    assert auto.missed == 0.0  # caught up: the tally starts again
    assert auto.draft(history, 16, params, rng).source == "model" and model.calls == 2  # one behind: asked


def test_a_copy_that_beats_the_draft_model_leaves_it_unread():
    """Where the copy prices better than the caught-up draft model would, nothing is missed: no step brings
    the reading nearer, however many there are."""
    ctl = flat_controller()
    model = Behind(2000, 1e-4)
    auto = AutoDrafter(ctl, NgramDrafter(), model)
    span = list(range(100, 400))
    history = span + [7, 8] + span[:40]  # a long echo: the copy runs on
    auto.prefill(history[: len(span) + 2])
    params, rng = SamplingParams(), np.random.default_rng(0)
    for _ in range(50):
        assert auto.draft(history, 16, params, rng).source == "ngram"
    assert model.calls == 0 and auto.missed == 0.0
    auto.prefill(list(range(500, 560)))  # nothing repeats now: the same reading soon pays
    for _ in range(50):
        if auto.draft(list(range(500, 560)), 16, params, rng).source == "model":
            break
    assert model.calls == 1


def test_a_prompt_is_priced_per_token_not_by_a_curve_that_ends_flat():
    """A CPU's calibrated curve often ends flat (c(14) = c(17)); extrapolated, a 3000-token reading would
    cost what 17 tokens do.  It costs the widest batch's per-token price, then what readings were timed at."""
    costs = CostModel.from_curve({1: 0.03, 2: 0.07, 4: 0.09, 8: 0.2, 14: 0.29, 17: 0.29}, {"model": 0.02})
    wide = costs.catch_up_cost("model", 17)
    assert costs.catch_up_cost("model", 3000) == pytest.approx(3000 * 0.02 * (0.29 / 0.03) / 17 - 0.02)
    assert costs.catch_up_cost("model", 3000) > 100 * wide
    costs.observe_catch_up("model", 3000, 21.0)  # 7 ms a token, timed
    assert costs.catch_up_cost("model", 3000) == pytest.approx(21.0 - 0.02)
    costs.observe_catch_up("model", 10, 5.0)  # a batch the curve prices: not a reading's price
    assert costs.catch_up_cost("model", 3000) == pytest.approx(21.0 - 0.02)


def test_a_copy_is_not_charged_the_time_the_draft_model_took():
    """auto asked the draft model (it read a prompt), then verified the copy: the copy's price stays its own."""
    ctl = flat_controller()
    ctl.observe("ngram", 8, 8, 0.0004, C1, [0.9] * 8, calibrated=True)
    before = ctl.costs.draft_cost("ngram")
    ctl.costs.set_aside(20.0)
    ctl.observe("ngram", 8, 8, 20.0004, C1, [0.9] * 8, calibrated=True)
    assert ctl.costs.draft_cost("ngram") == pytest.approx(before)
    # A step whose draft model read thousands of tokens teaches nothing about its per-token price.
    model_before = ctl.costs.draft_cost("model")
    ctl.observe("model", 4, 4, 20.0, C1, [0.9] * 4, caught_up=3000)
    assert ctl.costs.draft_cost("model") == pytest.approx(model_before)


@pytest.fixture(scope="module")
def engines(target_path, draft_path):
    made = {"none": load_engine(EngineOptions(target_path, drafter="none", n_ctx=2048)),
            "auto": load_engine(EngineOptions(target_path, draft_path, drafter="auto", n_ctx=2048))}
    yield made
    for e in made.values():
        e.close()


def generate(engine, prompt: list[int], max_tokens: int) -> Summary:
    engine.reset_cache()
    *_, summary = engine.generate(prompt, max_tokens=max_tokens)
    return summary


def test_auto_copying_never_reads_the_prompt_into_the_draft_model(engines):
    """This machine's costs: the copy pays, the draft model does not; it never decodes the prompt (the reply
    is the target's own all the same)."""
    auto, model = engines["auto"], engines["auto"].drafters["model"]
    prompt = chat_tokens(auto.target, messages_for(COPY))
    plain = generate(engines["none"], prompt, 64)
    s = generate(auto, prompt, 64)
    assert s.drafter_steps.get("ngram", 0) > 0, "no copy was verified: the test proves nothing"
    assert model.ctx.n_past == 0 and model.cached == []
    assert_same_or_near_tie(auto.target, prompt, plain.tokens, s.tokens)


def test_auto_reads_the_prompt_when_the_draft_model_pays(engines, target_path, draft_path):
    """GPU-like costs on a prompt with nothing to copy: the draft model reads the prompt in one batch and
    drafts, and the reply is the target's own."""
    engine = load_engine(EngineOptions(target_path, draft_path, drafter="auto", n_ctx=2048))
    try:
        engine.controller.costs.seed({n: C1 for n in range(1, 18)}, {"model": C1 / 12})
        model = engine.drafters["model"]
        prompt = chat_tokens(engine.target, messages_for(CHAT))
        plain = generate(engines["none"], prompt, 48)
        s = generate(engine, prompt, 48)
        assert s.by_drafter.get("model", {}).get("steps", 0) > 0
        assert model.cached[: len(prompt)] == prompt
        assert_same_or_near_tie(engine.target, prompt, plain.tokens, s.tokens)
    finally:
        engine.close()
