"""--exact: greedy output that does not depend on the drafter, the batch shape or the cached prefix.

No near-tie allowance here: every reply must equal plain decoding's token for token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from specgen.bench.workload import load_questions
from specgen.build import EngineOptions, load_engine
from specgen.errors import SpecgenError
from specgen.llama.backend import EXACT_CHUNK
from specgen.llama.chat_template import chat_tokens, messages_for

from engine_helpers import run
from server_helpers import KEY, serving

N_TOKENS = 48
MODULE = (Path(__file__).parent / "bench" / "inventory.py").read_text().splitlines()
LONG = ("Add a docstring to every function of this module and output it whole.\n\n```python\n"
        + "\n".join(MODULE[:30]) + "\n```")
"""A prompt of a few hundred tokens: several EXACT_CHUNKs, so that a cache holds whole chunks of it to reuse."""


@pytest.fixture(scope="module")
def exact_engine(target_path, draft_path):
    """One engine with every drafter: each prompt is decoded once, and the drafters after plain decoding
    reuse its cached prefix (which is part of what must not change a reply)."""
    engine = load_engine(EngineOptions(target_path, draft_path, drafter="auto", n_ctx=2048, exact=True))
    yield engine
    engine.close()


def use(engine, drafter: str) -> None:
    engine.set_drafter(drafter)
    engine.set_draft_max(DRAFT_MAX[drafter])


DRAFT_MAX = {"none": None, "model": 6, "ngram": 8, "auto": None}


def bench_prompts() -> list[str]:
    """Every turn of every built-in bench question that a chat model answers (infill needs FIM tokens)."""
    return [turn for q in load_questions("builtin:all") for turn in q.turns]


def test_exact_greedy_output_equals_plain_on_every_builtin_bench_prompt(exact_engine):
    eng = exact_engine
    assert eng.ctx.exact_rows >= 1
    drafted = {d: 0 for d in ("model", "ngram", "auto")}
    try:
        for text in bench_prompts():
            prompt = chat_tokens(eng.target, messages_for(text))
            use(eng, "none")
            plain, _ = run(eng, prompt, max_tokens=N_TOKENS)
            for d in drafted:
                use(eng, d)
                spec, _ = run(eng, prompt, max_tokens=N_TOKENS)
                assert spec.tokens == plain.tokens, f"{d} parted from plain decoding on {text[:60]!r}"
                drafted[d] += spec.drafted
    finally:
        use(eng, "auto")
    # Verify batches of several rows were what got compared, not one-token steps.
    assert all(n > 0 for n in drafted.values()), drafted


def test_exact_verify_cut_into_calls_gives_the_plain_reply(exact_engine):
    """Where a model's kernels change path within a draft's width (3 rows for the 1.5B coder here), verify
    batches are decoded in several calls and their rows gathered; the tiny model needs no cut, so force one."""
    eng = exact_engine
    measured = eng.ctx.exact_rows
    prompt = chat_tokens(eng.target, messages_for(LONG))
    try:
        use(eng, "none")
        plain, _ = run(eng, prompt, max_tokens=N_TOKENS)
        eng.ctx.exact_rows = 2
        use(eng, "ngram")
        spec, _ = run(eng, prompt, max_tokens=N_TOKENS)
    finally:
        eng.ctx.exact_rows = measured
        use(eng, "auto")
    assert max(spec.draft_lengths, default=0) >= 2, "no verify batch needed a second call"
    assert spec.tokens == plain.tokens


def test_exact_reply_does_not_depend_on_the_cached_prefix(exact_engine):
    """The same prompt after caches holding other prefixes of it (a shorter one, one that parts mid-chunk,
    the prompt itself with its reply) gives the same reply as from an empty cache."""
    eng = exact_engine
    text = LONG
    prompt = chat_tokens(eng.target, messages_for(text))
    assert len(prompt) > 3 * EXACT_CHUNK
    eng.reset_cache()
    cold, _ = run(eng, prompt, max_tokens=N_TOKENS)
    before = [
        chat_tokens(eng.target, messages_for(text[:len(text) // 3])),
        prompt[:len(prompt) // 2] + chat_tokens(eng.target, messages_for("Name five animals."))[5:],
        prompt,
    ]
    reused = 0
    for other in before:
        run(eng, other, max_tokens=N_TOKENS // 2)
        again, _ = run(eng, prompt, max_tokens=N_TOKENS)
        assert again.tokens == cold.tokens
        assert again.reused_tokens % EXACT_CHUNK == 0
        reused += again.reused_tokens
    assert reused > 0, "no prefix was reused: the comparison proves nothing"


def test_exact_prompt_chunks_and_reuse_rule(target_path):
    """Prompt passes decode in EXACT_CHUNK-aligned chunks; only their whole chunks may be reused, and nothing
    a fast (not exact) pass wrote."""
    eng = load_engine(EngineOptions(target_path, drafter="none", n_ctx=2048, exact=True))
    try:
        ctx = eng.ctx
        tokens = eng.tokenize("The quick brown fox jumps over the lazy dog. " * 20, add_special=False)[:150]
        assert ctx._calls(150, "none") == [64, 64, 22]
        ctx.decode(tokens[:10], logits="none")
        assert ctx._calls(140, "none") == [54, 64, 22]
        ctx.decode(tokens[10:150], logits="none")
        assert ctx.aligned == 0 and ctx.reusable(150) == 0  # its first chunk was decoded in two calls
        ctx.rollback_to(0)
        ctx.decode(tokens, logits="none")
        assert ctx.aligned == 128 and ctx.reusable(150) == 128 and ctx.reusable(100) == 64
        ctx.rollback_to(70)
        assert ctx.aligned == 64 and ctx.reusable(70) == 64
        ctx.decode(tokens[70:150], logits="none")
        assert ctx.aligned == 64  # the chunk from 64 now came from two passes
        ctx.set_exact(False)
        ctx.rollback_to(0)
        ctx.decode(tokens, logits="none")
        assert ctx.aligned == 0 and ctx.reusable(150) == 150  # the fast way reuses anything, as before
        ctx.set_exact(True)
        assert ctx.reusable(150) == 0
        assert ctx._calls(10, "all") == [ctx.exact_rows] * (10 // ctx.exact_rows) + (
            [10 % ctx.exact_rows] if 10 % ctx.exact_rows else [])
    finally:
        eng.close()


def test_exact_needs_an_exact_engine(exact_engine, target_path):
    prompt = chat_tokens(exact_engine.target, messages_for("Hi"))
    fast = load_engine(EngineOptions(target_path, drafter="none", n_ctx=512))
    try:
        with pytest.raises(SpecgenError, match="--exact"):
            run(fast, prompt, max_tokens=4, exact=True)
    finally:
        fast.close()
    # An exact engine may still decode one request the fast way.
    s, _ = run(exact_engine, prompt, max_tokens=4, exact=False)
    assert s.generated_tokens > 0


@pytest.fixture(scope="module")
def exact_server(target_path, draft_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-exact") / "server.log"
    with serving(log, "--target", str(target_path), "--draft", str(draft_path), "--ctx", "1024", "--exact",
                 env={"SPECGEN_API_KEY": KEY}) as s:
        yield s


def test_exact_server_reply_is_the_same_whatever_the_cache_held(exact_server):
    """The user's report: after an unrelated request sharing the chat template's opening, a reply came out
    different.  With --exact it is the same after any earlier request, and it is plain decoding's."""
    client = exact_server.client()

    def ask(text: str, **extra) -> tuple[str, int]:
        r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": text}],
                                           max_tokens=N_TOKENS, temperature=0, extra_body=extra)
        return r.choices[0].message.content, r.usage.prompt_tokens_details.cached_tokens

    question = LONG
    first, _ = ask(question, cache_prompt=False)
    plain, _ = ask(question, cache_prompt=False, drafter="none")
    assert first == plain
    cached = 0
    for other in ("Explain what a linked list is.", LONG[:len(LONG) // 2], question):
        ask(other)
        again, n = ask(question)
        assert again == first
        cached += n
    assert cached > 0, "no prefix was reused: the comparison proves nothing"


def test_exact_asked_of_a_server_started_without_it(server_without_exact):
    status, _, body = server_without_exact.request("POST", "/v1/chat/completions", {
        "model": "x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "exact": True})
    assert status == 400
    assert b"--exact" in body and b'"param":"exact"' in body.replace(b" ", b"")


@pytest.fixture(scope="module")
def server_without_exact(target_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-fast") / "server.log"
    with serving(log, "--target", str(target_path), "--ctx", "1024", "--drafter", "ngram",
                 env={"SPECGEN_API_KEY": KEY}) as s:
        yield s
