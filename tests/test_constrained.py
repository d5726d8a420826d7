"""Constrained decoding, logprobs and the OpenAI penalties, on real weights.

A grammar decides every verified row in its state after the rows before it, so greedy constrained output
with any drafter is plain constrained decoding's own; logprobs come from the target's own rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from specgen.engine import MAX_LOGPROBS, Step, choose_draft
from specgen.errors import SpecgenError
from specgen.formats.structured import JSON_OBJECT_GRAMMAR, MAX_REPEAT, SchemaError, schema_grammar
from specgen.llama.backend import Context
from specgen.llama.chat_template import chat_tokens, messages_for
from specgen.llama.grammar import MAX_NESTING, Grammar, GrammarError
from specgen.sampling import SamplingParams, best_allowed, distribution, log_softmax_top, only, penalized

from engine_helpers import run
from near_tie import NEAR_TIE, first_difference

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "colours": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "colours"],
}
"""Every part bounded, so the grammar completes within a bounded number of tokens and the reply must end."""

PROMPTS = [
    "Describe a person as JSON with their name, age and favourite colours.",
    'Repeat this JSON exactly: {"name": "Ann Lee", "age": 31, "colours": ["red", "blue"]} '
    'and again: {"name": "Ann Lee", "age": 31, "colours": ["red", "blue"]}',
    "Write JSON for a book: its title, year and genres.",
]
MAX_TOKENS = 200  # more than PERSON's grammar can take before it must end


def masked_top2_gap(engine, gbnf: str, prompt: list[int], done: list[int]) -> float:
    """The gap between the two best tokens the grammar allows after *done*, decoding the last token alone
    (as plain decoding does); infinite when only one is allowed."""
    ctx = Context(engine.target, 2048)
    state = Grammar(engine.target, gbnf)
    try:
        tokens = prompt + done
        ctx.decode(tokens[:-1], logits="none")
        ctx.decode(tokens[-1:], logits="last")
        row = np.array(ctx.logits_row(-1))
        for t in done:
            state.accept(t)
        best = best_allowed(row, state.allowed, 2)
        return float(row[best[0]] - row[best[1]]) if len(best) == 2 else float("inf")
    finally:
        state.close()
        ctx.close()


@pytest.fixture(scope="module")
def plain_runs(engines) -> dict:
    out = {}
    for grammar in (schema_grammar(PERSON), JSON_OBJECT_GRAMMAR):
        for text in PROMPTS:
            prompt = chat_tokens(engines["none"].target, messages_for(text))
            out[grammar, text] = prompt, run(engines["none"], prompt, max_tokens=MAX_TOKENS, grammar=grammar)[0]
    return out


def check_person(value: object) -> None:
    assert isinstance(value, dict) and set(value) == {"name", "age", "colours"}, value
    assert isinstance(value["name"], str) and len(value["name"]) <= 24
    assert isinstance(value["age"], int) and not isinstance(value["age"], bool)
    assert isinstance(value["colours"], list) and len(value["colours"]) <= 3
    assert all(isinstance(c, str) and len(c) <= 12 for c in value["colours"])


@pytest.mark.parametrize("drafter", ["ngram", "model", "auto"])
def test_greedy_constrained_output_equals_plain_constrained(engines, plain_runs, drafter):
    drafted, ended, diverged = 0, 0, 0
    for (grammar, text), (prompt, plain) in plain_runs.items():
        spec, _ = run(engines[drafter], prompt, max_tokens=MAX_TOKENS, grammar=grammar)
        drafted += spec.drafted
        k = first_difference(plain.tokens, spec.tokens)
        if k is not None:  # only where the two best allowed tokens nearly tie, measured as plain decoding does
            gap = masked_top2_gap(engines["none"], grammar, prompt, plain.tokens[:k])
            assert gap < NEAR_TIE, f"{drafter} diverged at token {k} where the target was sure ({gap:.3f})"
            diverged += 1
            continue
        if grammar == JSON_OBJECT_GRAMMAR:
            if spec.stop_reason == "eos":
                assert isinstance(json.loads(spec.text), dict)
        else:
            # A grammar that must complete ends the reply: the model is not left writing whitespace.
            assert spec.stop_reason == "eos", (spec.stop_reason, spec.text)
            check_person(json.loads(spec.text))
            ended += 1
    assert drafted > 0, "the drafter never drafted: the comparison proves nothing"
    assert ended > 0
    print(f"{drafter}: {diverged}/{len(plain_runs)} runs diverged, each at a near-tie; {ended} ended the grammar")


def test_a_finished_grammar_ends_the_reply_even_when_end_of_generation_is_banned(engines):
    e = engines["model"]
    prompt = chat_tokens(e.target, messages_for("Is water wet? Answer yes or no."))
    for ignore_eos in (False, True):
        s, _ = run(e, prompt, max_tokens=50, grammar='root ::= "yes" | "no"', ignore_eos=ignore_eos)
        assert s.text in ("yes", "no") and s.stop_reason == "eos"


def test_sampling_under_a_grammar_writes_only_what_it_allows(engines):
    grammar = schema_grammar(PERSON)
    for drafter in ("model", "ngram"):
        prompt = chat_tokens(engines[drafter].target, messages_for(PROMPTS[1]))
        for seed in range(3):
            s, _ = run(engines[drafter], prompt, max_tokens=MAX_TOKENS, grammar=grammar,
                       sampling=SamplingParams(temperature=0.8, seed=seed))
            assert s.stop_reason == "eos"
            check_person(json.loads(s.text))


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=0),
                                    SamplingParams(temperature=1.0, top_k=5, top_p=0.5, min_p=0.0)])
def test_the_best_allowed_candidates_give_the_masked_rows_distribution(engines, params):
    """What the engine samples from under a grammar is exactly the distribution of the row with every
    forbidden token masked, though it asks the grammar about only a few candidates."""
    e = engines["none"]
    prompt = chat_tokens(e.target, messages_for(PROMPTS[0]))
    gbnf = schema_grammar(PERSON)
    done = e.tokenize('{ "name": "Ann", "age": 3', add_special=False)
    ctx = Context(e.target, 2048)
    state = Grammar(e.target, gbnf)
    try:
        ctx.decode(prompt[:-1], logits="none")
        for i, tok in enumerate([prompt[-1], *done]):
            ctx.decode([tok], logits="last")
            row = np.array(ctx.logits_row(-1))
            everything = state.allowed(np.arange(len(row)))
            masked = np.where(everything, row, -np.inf)
            keep = best_allowed(row, state.allowed, params.top_k or len(row))
            got = distribution(only(row, keep), (), params).dense()
            assert got == pytest.approx(distribution(masked, (), params).dense(), abs=1e-12)
            assert everything[np.flatnonzero(got)].all()
            if i < len(done):
                state.accept(done[i])
    finally:
        state.close()
        ctx.close()


def test_a_draft_is_cut_at_its_first_forbidden_token(engines):
    e = engines["ngram"]
    history = e.tokenize('{"a": 1, "b": 2} then {"a": 1, "b": 2} then {"a', add_special=False)
    e.drafter.prefill(history)
    rng = np.random.default_rng(0)
    free, _ = choose_draft(e.drafter, e.controller, history, 20, SamplingParams(), rng, e.target.is_eog)
    literal = b'": 1}'
    grammar = Grammar(e.target, 'root ::= "\\": 1}"')
    cut, _ = choose_draft(e.drafter, e.controller, history, 20, SamplingParams(), rng, e.target.is_eog, grammar)
    text = b"".join(e.target.piece(t) for t in cut.tokens)
    assert len(free.tokens) > len(cut.tokens) > 0, "the copy should run past what the grammar allows"
    assert cut.tokens == free.tokens[:len(cut.tokens)] and literal.startswith(text)
    nxt = b"".join(e.target.piece(t) for t in free.tokens[:len(cut.tokens) + 1])
    assert not literal.startswith(nxt)
    assert grammar.valid_prefix(free.tokens) == len(cut.tokens)  # the grammar itself did not move


def test_bad_grammars_fail_before_any_event_with_one_quiet_line(engines, capfd):
    e = engines["none"]
    prompt = e.tokenize("Hi")
    for gbnf, says in [('root ::= "a" undefined', "undefined"), ('main ::= "a"', "no rule named 'root'"),
                       ("", "empty"), ("root ::= [a-", "not valid GBNF"),
                       ("root ::= " + "(" * (MAX_NESTING + 1) + '"a"' + ")" * (MAX_NESTING + 1), "nests"),
                       ('root ::= "\x00"', "NUL"), ('root ::= "\ud800"', "not a character")]:
        events = e.generate(prompt, max_tokens=4, grammar=gbnf)
        with pytest.raises(GrammarError) as err:
            next(events)
        assert isinstance(err.value, SpecgenError)
        assert says.lower() in str(err.value).lower() and "\n" not in str(err.value), str(err.value)
    out, errs = capfd.readouterr()
    assert out == errs == "", "llama.cpp's own complaint reached the terminal"
    s, _ = run(e, prompt, max_tokens=4, grammar='root ::= "ok"')  # the engine goes on
    assert s.text == "ok"


def test_logprobs_are_the_targets_own(engines):
    """Every emitted token's logprob, accepted draft token or not, is the log-softmax of the target's row at
    that place, as plain one-token decoding gives it."""
    e = engines["model"]
    prompt = chat_tokens(e.target, messages_for("Write a haiku about autumn."))
    s, events = run(e, prompt, max_tokens=24, logprobs=3)
    steps = [ev for ev in events if isinstance(ev, Step)]
    got = [lp for st in steps for lp in st.logprobs]
    assert s.accepted > 0, "no accepted draft token: the batch rows were never read"
    assert [lp.token for lp in got] == s.tokens
    ctx = Context(e.target, 2048)
    try:
        ctx.decode(prompt[:-1], logits="none")
        for tok, lp in zip([prompt[-1], *s.tokens], got):
            ctx.decode([tok], logits="last")
            row = np.array(ctx.logits_row(-1), dtype=np.float64)
            want = row[lp.token] - (row.max() + np.log(np.exp(row - row.max()).sum()))
            # Batched and one-token kernels may round differently (not by this much).
            assert lp.logprob == pytest.approx(want, abs=0.02)
            assert lp.text == e.target.piece(lp.token)
            assert len(lp.top) == 3 and [t[2] for t in lp.top] == sorted((t[2] for t in lp.top), reverse=True)
            assert all(v <= 0 for _, _, v in lp.top) and lp.logprob <= 0
            assert lp.top[0][0] == lp.token  # greedy: the emitted token is the row's best
            assert all(text == e.target.piece(t) for t, text, _ in lp.top)
    finally:
        ctx.close()


def test_logprobs_are_only_computed_when_asked(engines):
    e = engines["ngram"]
    prompt = chat_tokens(e.target, messages_for("Say hello."))
    _, events = run(e, prompt, max_tokens=6)
    assert all(st.logprobs is None for st in events if isinstance(st, Step))
    _, events = run(e, prompt, max_tokens=6, logprobs=0)
    steps = [st for st in events if isinstance(st, Step)]
    assert all(len(st.logprobs) == st.emitted and all(lp.top == [] for lp in st.logprobs) for st in steps)
    for bad in (-1, MAX_LOGPROBS + 1, 2.0, True):
        with pytest.raises(SpecgenError, match="logprobs"):
            next(e.generate(prompt, max_tokens=4, logprobs=bad))


def test_best_allowed_is_the_masked_rows_best_ties_and_all():
    rng = np.random.default_rng(5)
    for _ in range(500):
        n = int(rng.integers(1, 300))
        # Whole and quarter logits spread over 80: many ties, and candidates past every look-ahead floor.
        row = (rng.integers(-40, 40, size=n) * rng.choice([0.25, 1.0])).astype(np.float32)
        row[rng.integers(0, n, n // 10)] = -np.inf
        every = int(rng.integers(1, 7))
        k = int(rng.integers(1, n + 3))
        masked = np.where(np.arange(n) % every == 0, row, -np.inf)
        order = np.lexsort((np.arange(n), -masked))  # best first, equal logits lower id first
        want = order[np.isfinite(masked[order])][:k]
        assert list(best_allowed(row, lambda ids: ids % every == 0, k)) == list(want)


def test_log_softmax_top_is_sorted_and_cut():
    row = np.array([1.0, 3.0, 3.0, -np.inf, 2.0], dtype=np.float32)
    lp, ids, lps = log_softmax_top(row, 4, 3)
    z = np.log(np.exp(row.astype(np.float64)).sum())
    assert lp == pytest.approx(2.0 - z) and list(ids) == [1, 2, 4]  # equal logits: lower id first
    assert list(lps) == pytest.approx([3.0 - z, 3.0 - z, 2.0 - z])
    assert len(log_softmax_top(row, 0, 0)[1]) == 0 and len(log_softmax_top(row, 0, 99)[1]) == 4


def test_frequency_and_presence_penalties_follow_llama_cpp():
    logits = np.array([2.0, -1.0, 0.5, 4.0, 1.0], dtype=np.float32)
    history = [0, 0, 1, 3, 0, 2]
    params = SamplingParams(repeat_penalty=2.0, repeat_last_n=5, frequency_penalty=0.5, presence_penalty=0.25)
    # The last 5 tokens: 0 twice, 1, 3, 2 once each; token 4 unseen.
    want = [2.0 / 2 - 2 * 0.5 - 0.25, -1.0 * 2 - 0.5 - 0.25, 0.5 / 2 - 0.5 - 0.25, 4.0 / 2 - 0.5 - 0.25, 1.0]
    assert penalized(logits, history, params) == pytest.approx(want)
    only_freq = SamplingParams(frequency_penalty=-1.0)
    assert penalized(logits, [4, 4], only_freq) == pytest.approx([2.0, -1.0, 0.5, 4.0, 3.0])
    assert penalized(logits, history, SamplingParams()) is logits  # off: no copy
    assert not SamplingParams().looks_back and SamplingParams(presence_penalty=0.1).looks_back
    for name in ("frequency_penalty", "presence_penalty"):
        SamplingParams(**{name: 2.0}).check()
        for bad in (2.5, -2.01, float("nan"), "1"):
            with pytest.raises(SpecgenError, match=f"{name} must be from -2 to 2"):
                SamplingParams(**{name: bad}).check()


def test_greedy_speculation_with_penalties_equals_plain(engines):
    params = SamplingParams(frequency_penalty=0.8, presence_penalty=0.4)
    prompt = chat_tokens(engines["none"].target, messages_for(PROMPTS[1]))
    plain, _ = run(engines["none"], prompt, max_tokens=40, sampling=params)
    unpenalized, _ = run(engines["none"], prompt, max_tokens=40)
    assert plain.tokens != unpenalized.tokens, "the penalties changed nothing: the comparison proves nothing"
    for drafter in ("ngram", "model"):
        spec, _ = run(engines[drafter], prompt, max_tokens=40, sampling=params)
        assert spec.drafted > 0
        k = first_difference(plain.tokens, spec.tokens)
        if k is not None:
            ctx = Context(engines["none"].target, 2048)
            tokens = prompt + plain.tokens[:k]
            ctx.decode(tokens, logits="last")
            row = np.sort(penalized(np.array(ctx.logits_row(-1)), tokens, params))
            ctx.close()
            assert row[-1] - row[-2] < NEAR_TIE, f"{drafter} diverged at token {k} where the target was sure"


def test_json_object_grammar_is_the_converters_object():
    assert schema_grammar({"type": "object"}) == JSON_OBJECT_GRAMMAR


def test_schema_grammars_keep_strings_json(engines):
    """A control character inside a string is not JSON: the grammar refuses a raw newline there."""
    e = engines["none"]
    state = Grammar(e.target, schema_grammar({"type": "object", "properties": {"a": {"type": "string"}}}))
    for tok in e.tokenize('{ "a": "x', add_special=False):
        state.accept(tok)
    newline = e.tokenize("\n", add_special=False)
    assert len(newline) == 1 and not state.allows(newline[0])
    assert state.allows(e.tokenize('"', add_special=False)[0])
    state.close()


@pytest.mark.parametrize("schema, where, says", [
    ([{"type": "object"}], "", "must be an object, not an array"),
    ("object", "", "not a string"),
    ({"properties": {"x": {"$ref": "#/$defs/Missing"}}}, "properties.x.$ref", "points at nothing"),
    ({"properties": {"x": {"$ref": "https://example.com/s.json"}}}, "properties.x.$ref", "only references"),
    ({"properties": {"x": {"type": "string", "pattern": "[a-z]+"}}}, "properties.x.pattern", "converter"),
    ({"properties": {"x": {"anyOf": [{"type": "integer"}, {"type": "decimal"}]}}}, "properties.x.anyOf.1",
     "Unrecognized"),
    ({"properties": {"x": {"type": "array", "maxItems": MAX_REPEAT + 1}}}, "properties.x.maxItems", "whole number"),
    ({"properties": {"x": True}}, "properties.x", "must be an object, not a boolean"),
    ({"properties": {"x": {"type": "number", "const": float("nan")}}}, "", "not JSON"),
])
def test_a_schema_that_cannot_be_converted_names_its_part(schema, where, says):
    with pytest.raises(SchemaError) as err:
        schema_grammar(schema)
    assert isinstance(err.value, SpecgenError)
    assert err.value.where == where and says in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_schema_is_not_changed_by_converting_it():
    schema = {"$defs": {"P": PERSON}, "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}},
              "required": ["p"]}
    before = json.dumps(schema)
    assert "root ::=" in schema_grammar(schema)
    assert json.dumps(schema) == before
