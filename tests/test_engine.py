"""The engine on real weights: speculative output is the target's own.

Target: SmolLM2-135M-Instruct Q4_1.  Draft: the same model requantized to Q2_K,
so it agrees often but not always and every rejection path runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from specgen.llama.backend import Context
from specgen.engine import ContextOverflow, Piece, Prefill, Step, Summary
from specgen.build import EngineOptions, load_engine
from specgen.llama.chat_template import chat_tokens, messages_for
from specgen.sampling import SamplingParams

from engine_helpers import run
from near_tie import assert_same_or_near_tie

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List three primary colours.",
    "Explain what a hash table is in two sentences.",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about autumn.",
    "What is 12 times 12?",
    "Give me a short recipe for pancakes.",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "Write a SQL query that selects all users older than 30.",
    "Why is the sky blue?",
    "Name five animals that live in the ocean.",
    "Write a JavaScript function that reverses a string.",
    "What does HTTP stand for?",
    "Describe the water cycle.",
    "Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.",
    "Write a bash one-liner that counts lines in all .py files.",
    "What are the benefits of exercise?",
    "Convert 100 degrees Fahrenheit to Celsius.",
    "Write a Python class for a stack with push and pop.",
    "Tell me a fun fact about octopuses.",
    "Copy this list exactly: apple, banana, cherry, date, elderberry, fig, grape.",
]
N_TOKENS = 48


@pytest.fixture(scope="module")
def plain_runs(engines) -> dict[str, tuple[list[int], Summary]]:
    out = {}
    for text in PROMPTS:
        prompt = chat_tokens(engines["none"].target, messages_for(text))
        out[text] = prompt, run(engines["none"], prompt, max_tokens=N_TOKENS)[0]
    return out


@pytest.mark.parametrize("drafter", ["model", "ngram", "auto"])
def test_greedy_output_equals_plain(engines, plain_runs, drafter):
    spec_engine, plain_engine = engines[drafter], engines["none"]
    diverged, drafted = 0, 0
    for text in PROMPTS:
        prompt, plain = plain_runs[text]
        spec, _ = run(spec_engine, prompt, max_tokens=N_TOKENS)
        drafted += spec.drafted
        # Every divergence must be at a measured near-tie; there is no other allowance.
        diverged += not assert_same_or_near_tie(plain_engine.target, prompt, plain.tokens, spec.tokens)
    assert drafted > 0, "the drafter never drafted: the comparison proves nothing"
    print(f"{drafter}: {diverged}/{len(PROMPTS)} prompts diverged, each at a near-tie")


def test_draft_model_gets_rejections_and_acceptances(engines):
    prompt = chat_tokens(engines["model"].target, messages_for(PROMPTS[1]))
    s, _ = run(engines["model"], prompt, max_tokens=64)
    assert 0 < s.accepted < s.drafted


def test_a_greedy_draft_rates_each_token_among_its_ten_likeliest(engines):
    """The draft model proposes its argmax and rates it as llama.cpp rates a draft token: the softmax over the
    row's 10 likeliest tokens.  --draft-p-min stops a draft at the first token rated below it."""
    drafter = engines["model"].drafters["model"]
    prompt = chat_tokens(engines["model"].target, messages_for(PROMPTS[1]))
    greedy, rng = SamplingParams(), np.random.default_rng(0)
    history, rates = list(prompt), []
    for _ in range(6):  # a token at a time, to read the row each came from
        draft = drafter.draft(history, 1, greedy, rng)
        row = np.array(drafter.ctx.logits_row(-1)[:drafter.n_vocab], dtype=np.float64)
        ten = np.lexsort((np.arange(len(row)), -row))[:10]  # a full sort: best first, equals by id
        assert draft.tokens == [int(ten[0])] == [int(np.argmax(row))]
        assert draft.confidence == [pytest.approx(1.0 / np.exp(row[ten] - row[ten[0]]).sum(), rel=1e-6)]
        rates.append(draft.confidence[0])
        history += draft.tokens
    assert len(set(rates)) > 1 and all(0.1 <= r < 1.0 for r in rates)  # each at least 1/10 of its ten's mass
    weakest = rates.index(min(rates))
    p_min = drafter.p_min
    try:
        drafter.p_min = rates[weakest] + 1e-9
        assert drafter.draft(prompt, 6, greedy, rng).tokens == history[len(prompt):][:weakest]
    finally:
        drafter.p_min = p_min
    engines["model"].reset_cache()


def test_bookkeeping_adds_up(engines):
    for name in ("model", "ngram", "none"):
        prompt = chat_tokens(engines[name].target, messages_for(PROMPTS[15]))
        s, events = run(engines[name], prompt, max_tokens=40)
        steps = [e for e in events if isinstance(e, Step)]
        pieces = [e for e in events if isinstance(e, Piece)]
        # Counted apart from the summary: in ASCII text every token but an end-of-generation one became
        # exactly one piece, flagged when it was an accepted draft token.
        assert s.text.isascii(), s.text
        eos = s.stop_reason == "eos"
        assert s.generated_tokens == len(s.tokens) == len(pieces) + eos
        assert s.accepted == sum(p.from_draft for p in pieces)
        # Every verify step adds exactly one token of the target's own.
        assert s.steps == len(steps) == sum(not p.from_draft for p in pieces) + eos
        assert s.drafted == sum(st.drafted for st in steps)
        assert s.accepted == sum(st.accepted for st in steps)
        assert all(0 <= st.accepted <= st.drafted for st in steps)
        assert s.verify_seconds == pytest.approx(sum(st.verify_seconds for st in steps))
        assert "".join(e.text for e in events if isinstance(e, Piece)) == s.text
        assert sum(1 for e in events if isinstance(e, Prefill)) == 1
        if name == "none":
            assert s.drafted == 0 and s.mean_accepted == 1.0
        stats = s.stats()
        assert stats["steps"] == s.steps and stats["generated_tokens"] == s.generated_tokens


def test_draft_pieces_are_flagged(engines):
    prompt = chat_tokens(engines["model"].target, messages_for(PROMPTS[15]))
    s, events = run(engines["model"], prompt, max_tokens=40)
    flags = {e.from_draft for e in events if isinstance(e, Piece) and e.text}
    assert s.accepted > 0 and flags == {True, False}


def test_500_tokens_keep_the_kv_caches_consistent(engines):
    """Long enough for many rollbacks in both contexts; the output must still be the target's."""
    prompt = chat_tokens(engines["none"].target, messages_for("Write a long story about a lighthouse keeper."))
    plain, _ = run(engines["none"], prompt, max_tokens=500, ignore_eos=True)
    spec, _ = run(engines["model"], prompt, max_tokens=500, ignore_eos=True)
    assert plain.generated_tokens == spec.generated_tokens == 500
    assert spec.accepted < spec.drafted  # rollbacks happened
    assert_same_or_near_tie(engines["none"].target, prompt, plain.tokens, spec.tokens)


def test_second_generation_reuses_the_prompt_cache(engines):
    e = engines["model"]
    prompt = chat_tokens(e.target, messages_for(PROMPTS[0]))
    first, _ = run(e, prompt, max_tokens=8)
    longer = prompt + first.tokens + e.tokenize(" More please.", add_special=False)
    second, events = run(e, longer, max_tokens=8)
    prefill = next(ev for ev in events if isinstance(ev, Prefill))
    assert prefill.reused >= len(prompt) - 1
    assert prefill.tokens <= len(longer) - len(prompt) + 1


def test_max_tokens_is_never_exceeded(engines):
    prompt = chat_tokens(engines["model"].target, messages_for(PROMPTS[15]))
    for n in (1, 2, 3, 7):
        s, _ = run(engines["model"], prompt, max_tokens=n, ignore_eos=True)
        assert s.generated_tokens == n and s.stop_reason == "max_tokens"


def test_stop_string_ends_generation_and_is_not_emitted(engines):
    prompt = chat_tokens(engines["ngram"].target, messages_for(PROMPTS[21]))
    full, _ = run(engines["none"], prompt, max_tokens=48)
    assert "banana" in full.text
    s, _ = run(engines["ngram"], prompt, max_tokens=48, stop=["banana"])
    assert s.stop_reason == "stop"
    assert "banana" not in s.text and full.text.startswith(s.text)


def test_end_of_generation_stops(engines):
    prompt = chat_tokens(engines["model"].target, messages_for("Say just the word yes."))
    s, _ = run(engines["model"], prompt, max_tokens=200)
    assert s.stop_reason == "eos" and s.generated_tokens < 200
    assert not any(engines["model"].target.is_eog(t) for t in s.tokens[:-1])


def test_prompt_longer_than_the_context(target_path):
    e = load_engine(EngineOptions(target_path, drafter="none", n_ctx=64))
    try:
        with pytest.raises(ContextOverflow, match=f"context holds {e.n_ctx}"):
            list(e.generate(e.tokenize("word " * 1000), max_tokens=4))
    finally:
        e.close()


def test_generation_stops_cleanly_when_the_context_fills(target_path, draft_path):
    e = load_engine(EngineOptions(target_path, draft_path, n_ctx=256))
    try:
        prompt = e.tokenize("Once upon a time " * 10)
        s, _ = run(e, prompt, max_tokens=1000, ignore_eos=True)
        assert s.stop_reason == "context" and len(prompt) + s.generated_tokens == e.n_ctx
    finally:
        e.close()


def test_seed_makes_sampling_reproducible(engines):
    prompt = chat_tokens(engines["model"].target, messages_for(PROMPTS[5]))
    params = SamplingParams(temperature=0.9, seed=1234)
    a, _ = run(engines["model"], prompt, max_tokens=32, sampling=params)
    b, _ = run(engines["model"], prompt, max_tokens=32, sampling=params)
    c, _ = run(engines["model"], prompt, max_tokens=32, sampling=SamplingParams(temperature=0.9, seed=99))
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_rows_read_through_the_kept_view_are_llama_cpps_rows(engines):
    """Logits are read through a view kept across decodes: after calls of every shape (a verify, one row, a
    wider verify that grows llama.cpp's buffer, a prompt pass that returns its last row) each row read is the
    one llama.cpp gives for that token."""
    target = engines["ngram"].target
    lib, ctx = target._lib, Context(target, 256)
    try:
        prompt = target.tokenize("The quick brown fox jumps over the lazy dog, again and again and again. " * 3)
        assert len(prompt) >= 4 + 14
        ctx.decode(prompt[:4], logits="none")
        for n, logits in ((9, "all"), (1, "all"), (14, "all"), (5, "last")):
            ctx.decode(prompt[4:4 + n], logits=logits)
            mine = ctx.logits_rows(n) if logits == "all" else ctx.logits_row(-1)[None]
            theirs = [np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx.ptr, i), shape=(target.n_vocab,))
                      for i in (range(n) if logits == "all" else [n - 1])]
            assert np.array_equal(mine, np.stack(theirs))
            ctx.rollback_to(4)
    finally:
        ctx.close()


@pytest.mark.parametrize("drafter", ["model", "ngram"])
def test_first_token_frequencies_follow_the_target_softmax(engines, target_path, drafter):
    """End to end at temperature 1: the first emitted token (an accepted draft token or
    a resampled one) is distributed as the target's own softmax."""
    engine = engines[drafter]
    # A raw prompt whose next token is uncertain, and (for ngram) that ends on a
    # repeated bigram so the lookup always drafts.
    text = "My favourite colours are red and blue. My favourite colours are"
    prompt = engine.tokenize(text)
    ctx = Context(engine.target, 256)
    ctx.decode(prompt, logits="last")
    logits = np.array(ctx.logits_row(-1), dtype=np.float64)
    ctx.close()
    p = np.exp(logits - logits.max())
    p /= p.sum()

    draws, n, drafted, accepted = {}, 1000, 0, 0
    rng_seeds = np.random.default_rng(0).integers(0, 2**31, n)
    for seed in rng_seeds:
        s, _ = run(engine, prompt, max_tokens=2, sampling=SamplingParams(
            temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=int(seed)), ignore_eos=True)
        draws[s.tokens[0]] = draws.get(s.tokens[0], 0) + 1
        first = min(1, s.drafted)
        drafted += first
        accepted += first and s.accepted > 0
    assert drafted > n * 0.9, "the first step should be speculative"
    assert 0 < accepted < drafted, "both accept and reject paths must run"
    # Bins: every token with expected count >= 5, the rest pooled.
    order = np.argsort(-p)
    big = [int(t) for t in order if p[t] * n >= 5]
    exp = [p[t] * n for t in big] + [n * (1 - sum(p[t] for t in big))]
    obs = [draws.get(t, 0) for t in big] + [n - sum(draws.get(t, 0) for t in big)]
    if exp[-1] < 5:  # merge a tiny tail into the last big bin
        exp[-2] += exp.pop()
        obs[-2] += obs.pop()
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    assert len(exp) >= 3, "the prompt should give a spread-out first token"
    assert stat < chi2_999(len(exp) - 1), (stat, list(zip(obs, [round(e) for e in exp])))


def chi2_999(df: int) -> float:
    """Upper 0.1% point of chi-square (Wilson-Hilferty; within 1% for df >= 3)."""
    z = 3.0902
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_a_restored_session_drafts_as_it_did_before(engines):
    """bench --repeat starts every repeat from the same session: what the drafters and the controller learned
    after `learned()` is undone by `restore`, however often it is restored."""
    engine = engines["auto"]
    auto = engine.drafters["auto"]
    prompts = [chat_tokens(engine.target, messages_for(PROMPTS[i])) for i in (15, 21)]
    replies = [run(engine, prompt, max_tokens=40)[0].tokens for prompt in prompts]

    def probe() -> list[list[float]]:
        """The confidence of every copy offered along the replies, and of a draft model's guesses."""
        got = [engine.controller.acceptance.survival("model", [0.5, 0.8, 0.95])]
        rng = np.random.default_rng(0)
        for prompt, reply in zip(prompts, replies):
            auto.ngram.prefill(prompt)  # a fresh generation each time: nothing pending to learn from
            for k in range(len(reply)):
                got.append(auto.ngram.draft(prompt + reply[:k], 16, SamplingParams(), rng).confidence)
                auto.ngram.prefill(prompt)
        return got

    session = engine.learned()
    before = probe()
    for _ in range(2):
        for prompt in prompts:
            run(engine, prompt, max_tokens=40)
        assert probe() != before, "nothing was learned since: the test proves nothing"
        engine.restore(session)
        assert probe() == before
