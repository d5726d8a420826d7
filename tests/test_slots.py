"""Parallel slots: several requests decoded together in one batch, each reply the one it gets alone.

Alone and together, a reply at temperature 0 may differ only where the target's top two tokens nearly tie
(a batch of several slots takes other kernels than a batch of one, which round differently): the gap is read
from the reply's own top-2 logprobs where the two part (near_tie.NEAR_TIE).
"""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from near_tie import NEAR_TIE, assert_same_or_near_tie, first_difference
from server_helpers import KEY, Server, serving

from specgen.controller import Controller, CostModel
from specgen.engine import Prefill, Step, Summary
from specgen.errors import ModelFault
from specgen.llama.chat_template import chat_tokens
from specgen.slots import PromptCache, Slots

TOPICS = ["the sea", "a red bicycle", "winter mornings"]


def story(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"Write a short story about {topic}."}]


@pytest.fixture(scope="module")
def slots_server(target_path, draft_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-slots") / "server.log"
    with serving(log, "--target", str(target_path), "--draft", str(draft_path), "--ctx", "1024",
                 "--parallel", "3", env={"SPECGEN_API_KEY": KEY}) as s:
        yield s


def stream(server: Server, messages: list[dict], max_tokens: int = 40, leave_after: int | None = None) -> dict:
    """One streamed chat completion through the official SDK, greedy and past end-of-generation, with each
    token's top-2 logprobs: its text pieces and when each came, and its usage (None for a client that left
    after *leave_after* pieces)."""
    s = server.client().chat.completions.create(
        model="x", messages=messages, max_tokens=max_tokens, temperature=0, stream=True, logprobs=True,
        top_logprobs=2, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    out: dict = {"times": [], "tokens": [], "usage": None}
    for chunk in s:
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        if not chunk.choices or not chunk.choices[0].logprobs:
            continue
        out["times"].append(time.monotonic())
        out["tokens"] += chunk.choices[0].logprobs.content
        if leave_after is not None and len(out["times"]) >= leave_after:
            s.close()
            break
    return out


def agree(alone: dict, got: dict) -> bool:
    """True when the two replies are the same token for token; False when they part at a near-tie of the
    reply alone; an assertion error anywhere else."""
    k = first_difference([bytes(t.bytes) for t in alone["tokens"]], [bytes(t.bytes) for t in got["tokens"]])
    if k is None:
        return True
    top = alone["tokens"][k].top_logprobs
    gap = top[0].logprob - top[1].logprob
    assert gap < NEAR_TIE, f"replies parted at token {k} where the target was sure (top-2 gap {gap:.3f})"
    return False


def concurrently(*calls) -> list:
    """Run each call on its own thread at once; their results (an exception fails the test)."""
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as e:  # reported below, on the test's thread
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    for r in results:
        assert not isinstance(r, Exception), repr(r)
    return results


def test_concurrent_streams_are_decoded_together_and_each_gets_its_answer(slots_server):
    s = slots_server
    alone = [stream(s, story(t)) for t in TOPICS]
    together = concurrently(*[lambda t=t: stream(s, story(t)) for t in TOPICS])
    same = [agree(a, g) for a, g in zip(alone, together)]
    print(f"{same.count(False)} of {len(same)} replies parted from their answer alone, at near-ties")
    assert all(g["usage"].completion_tokens == 40 for g in together)
    # Decoded together, not in turn: every stream had its first piece before any had its last.
    assert max(g["times"][0] for g in together) < min(g["times"][-1] for g in together)


def test_a_client_that_leaves_does_not_disturb_the_others(slots_server):
    s = slots_server
    alone = [stream(s, story(t)) for t in TOPICS[::2]]
    before = s.metrics()["specgen_requests_cancelled_total"]
    first, left, last = concurrently(lambda: stream(s, story(TOPICS[0])),
                                     lambda: stream(s, story(TOPICS[1]), 200, leave_after=3),
                                     lambda: stream(s, story(TOPICS[2])))
    assert left["usage"] is None and len(left["times"]) == 3
    for a, g in ((alone[0], first), (alone[1], last)):
        assert g["usage"].completion_tokens == 40
        agree(a, g)
    deadline = time.monotonic() + 60
    while s.metrics()["specgen_requests_cancelled_total"] < before + 1:
        assert time.monotonic() < deadline, "the server never counted the cancel"
        time.sleep(0.1)


def test_slots_route_shows_each_slot(slots_server):
    status, _, body = slots_server.request("GET", "/slots")
    assert status == 200
    slots = json.loads(body)
    assert [x["id"] for x in slots] == [0, 1, 2]
    for x in slots:
        assert x["n_ctx"] == 1024 and x["is_processing"] is False and x["state"] == "idle"
    m = slots_server.metrics()
    assert m["specgen_slots"] == 3 and m["specgen_slots_busy"] == 0
    assert slots_server.request("GET", "/slots", key=None)[0] == 401


CONVERSATIONS = {
    "a": "You are a ship's cook. Talk only about food at sea, in one sentence. " * 6,
    "b": "You are a bicycle mechanic. Talk only about gears and chains, in one sentence. " * 6,
}


def alternate(server: Server) -> dict[str, list]:
    """Two conversations taking turns, a-b-a-b: each turn's usage, by conversation."""
    history = {k: [{"role": "system", "content": v}] for k, v in CONVERSATIONS.items()}
    usage: dict[str, list] = {"a": [], "b": []}
    for turn in ("Hello.", "And then?"):
        for k, msgs in history.items():
            msgs.append({"role": "user", "content": turn})
            r = server.client().chat.completions.create(model="x", messages=msgs, max_tokens=12, temperature=0)
            msgs.append({"role": "assistant", "content": r.choices[0].message.content})
            usage[k].append(r.usage)
    return usage


@pytest.mark.parametrize("layout", [("--parallel", "2"), ("--parallel", "1", "--cache-ram", "64")],
                         ids=["in-slots", "in-host-cache"])
def test_alternating_conversations_each_reuse_their_prefix(target_path, tmp_path, layout):
    with serving(tmp_path / "server.log", "--target", str(target_path), "--ctx", "1024", *layout) as s:
        usage = alternate(s)
        for k in "ab":
            first, second = usage[k]
            assert second.prompt_tokens_details.cached_tokens >= first.prompt_tokens - 1, (k, first, second)
        if "--cache-ram" in layout:
            assert s.metrics()["specgen_prompt_cache_prefixes"] >= 1


def test_alternating_conversations_without_a_host_cache_read_their_prompts_again(target_path, tmp_path):
    """The contrast: one slot and no host cache, so each turn finds the other conversation's prefix."""
    with serving(tmp_path / "server.log", "--target", str(target_path), "--ctx", "1024", "--parallel", "1",
                 "--cache-ram", "0") as s:
        usage = alternate(s)
        first, second = usage["a"]
        assert second.prompt_tokens_details.cached_tokens < first.prompt_tokens / 2


# -- the library: one batch per step over several slots -----------------------------------------------------


@pytest.fixture(scope="module")
def engine(target_path, draft_path):
    from specgen.build import EngineOptions, load_engine

    e = load_engine(EngineOptions(target_path, draft_path, drafter="auto", n_ctx=1024, parallel=3))
    yield e
    e.close()


def run_slots(slots: Slots, requests: dict[int, list[int]]) -> tuple[dict, list]:
    """Drive *slots* until every reply ends: each slot's events, and per step which slots did what."""
    events: dict[int, list] = {sid: [] for sid in requests}
    steps = []
    while any(s.gen is not None for s in slots.slots):
        did = slots.step()
        steps.append({slot.id: out for slot, out in did})
        for slot, out in did:
            assert not isinstance(out, BaseException), repr(out)
            events[slot.id] += out
    return events, steps


def test_a_long_prompt_is_read_in_chunks_while_another_reply_goes_on(engine):
    short = chat_tokens(engine.target, story("a lighthouse"))
    long = chat_tokens(engine.target, [{"role": "user", "content": "Summarize this: " + "The tide came in. " * 60}])
    alone = {}
    for name, prompt in (("short", short), ("long", long)):
        engine.reset_cache()
        alone[name] = next(e for e in engine.generate(prompt, max_tokens=30, ignore_eos=True)
                           if isinstance(e, Summary)).tokens
    slots = Slots(engine, 3, chunk=32)
    for s in slots.slots:  # every slot starts cold
        engine.ctx.rollback_to(0, s.id)
        del s.cached[:]
    a = slots.start(short, max_tokens=30, ignore_eos=True)
    slots.step()  # a reads its prompt, alone
    b = slots.start(long, max_tokens=30, ignore_eos=True)
    calls = []  # per llama_decode call: the sequences of its rows that return logits, and of those that do not
    run = engine.ctx._run

    def recording() -> None:
        batch = engine.ctx._batch
        rows = [(batch.seq_id[i][0], bool(batch.logits[i])) for i in range(batch.n_tokens)]
        calls.append(({seq for seq, out in rows if out}, {seq for seq, out in rows if not out}))
        run()

    engine.ctx._run = recording
    try:
        events, steps = run_slots(slots, {a.id: short, b.id: long})
    finally:
        del engine.ctx._run
    read_at = next(i for i, st in enumerate(steps) if any(isinstance(e, Prefill) for e in st.get(b.id, [])))
    # b's prompt took a chunk a step, and a emitted tokens in each of those steps.
    assert read_at + 1 >= math.ceil((len(long) - 1) / 32)
    assert all(any(isinstance(e, Step) for e in st.get(a.id, [])) for st in steps[:read_at])
    # Each chunk went into a call of its own, not into a's verify batch: on a CPU, one call holding both made
    # llama.cpp's flash attention go over both sequences' cells for every row.
    assert sum(b.id in reading for _, reading in calls) >= read_at
    assert not any(verifying and reading for verifying, reading in calls)
    for sid, name, prompt in ((a.id, "short", short), (b.id, "long", long)):
        got = next(e for e in events[sid] if isinstance(e, Summary))
        assert_same_or_near_tie(engine.target, prompt, alone[name], got.tokens)


def test_a_prompt_that_fails_to_read_ends_its_own_reply_only(engine):
    """The prompt chunk's call fails (made to here, as llama.cpp refusing the batch would): the reply being read
    ends with that error, and the reply generating beside it keeps the step it made and goes on to its end."""
    short = chat_tokens(engine.target, story("a lighthouse"))
    long = chat_tokens(engine.target, [{"role": "user", "content": "Summarize this: " + "The tide came in. " * 60}])
    slots = Slots(engine, 2, chunk=32)
    for s in slots.slots:
        engine.ctx.rollback_to(0, s.id)
        del s.cached[:]
    a = slots.start(short, max_tokens=12, ignore_eos=True)
    slots.step()  # a reads its prompt, alone
    b = slots.start(long, max_tokens=12, ignore_eos=True)
    decode_batch = engine.ctx.decode_batch

    def refusing(parts):
        if all(logits == "none" for _, _, logits in parts):
            raise ModelFault("llama_decode failed (code 1)")
        return decode_batch(parts)

    engine.ctx.decode_batch = refusing
    try:
        did = dict((slot.id, out) for slot, out in slots.step())
    finally:
        del engine.ctx.decode_batch
    assert isinstance(did[b.id], ModelFault) and b.gen is None
    assert any(isinstance(e, Step) for e in did[a.id])
    events, _ = run_slots(slots, {a.id: short})
    assert next(e for e in events[a.id] if isinstance(e, Summary)).generated_tokens == 12


def test_the_slots_draft_model_decodes_for_all_of_them_together(engine):
    """Three slots drafting with the draft model at once (4 tokens a step: the tiny pair would not pay for
    it): its decodes are shared, fewer llama_decode calls than decodes asked for, and each reply is the one
    it gets alone, up to near-ties."""
    prompts = {topic: chat_tokens(engine.target, story(topic)) for topic in TOPICS}
    options = dict(drafter="model", draft_max=4, max_tokens=24, ignore_eos=True, cache_prompt=False)

    def summaries(slots: Slots, started: dict) -> dict:
        events, _ = run_slots(slots, {sid: prompts[topic] for sid, topic in started.items()})
        return {topic: next(e for e in events[sid] if isinstance(e, Summary)) for sid, topic in started.items()}

    alone = {}
    for topic, prompt in prompts.items():
        slots = Slots(engine, 3)
        alone.update(summaries(slots, {slots.start(prompt, **options).id: topic}))
        assert slots.rounds is not None and slots.rounds.decodes == 0  # one reply drafts as it would alone
    slots = Slots(engine, 3)
    together = summaries(slots, {slots.start(prompt, **options).id: topic for topic, prompt in prompts.items()})
    assert 0 < slots.rounds.calls < slots.rounds.decodes
    for topic, got in together.items():
        assert got.drafted > 0 and got.accepted > 0
        assert_same_or_near_tie(engine.target, prompts[topic], alone[topic].tokens, got.tokens)


def test_a_prefix_pushed_out_of_its_slot_comes_back_from_host_memory(engine):
    slots = Slots(engine, 1, cache_bytes=64 << 20)
    one, two = (chat_tokens(engine.target, [{"role": "system", "content": text}, {"role": "user", "content": "Hi."}])
                for text in CONVERSATIONS.values())
    first, _ = run_slots(slots, {slots.start(one, max_tokens=8).id: one})
    run_slots(slots, {slots.start(two, max_tokens=8).id: two})  # one's prefix goes to host memory
    assert len(slots.cache) == 1
    slot = slots.start(one, max_tokens=8)
    assert slot.restored == len(one) - 1
    again, _ = run_slots(slots, {slot.id: one})
    got = next(e for e in again[0] if isinstance(e, Summary))
    assert got.reused_tokens == len(one) - 1
    assert got.tokens == next(e for e in first[0] if isinstance(e, Summary)).tokens


def test_the_prompt_cache_keeps_to_its_bound_and_drops_what_a_longer_prefix_holds():
    cache = PromptCache(limit=100)
    cache.put([1, 2, 3], b"x" * 40)
    cache.put([1, 2, 3, 4, 5], b"y" * 40)  # holds all of [1, 2, 3]
    assert len(cache) == 1 and cache.used == 40
    cache.put([7, 8], b"z" * 40)
    cache.put([9], b"w" * 40)  # over the bound: the least recently used goes
    assert cache.used <= 100 and cache.best([1, 2, 3, 4])[0] == 0
    assert cache.best([9, 9]) == (1, cache.best([9])[1])
    cache.put([5], b"v" * 101)  # larger than the whole cache: not kept
    assert cache.used <= 100


# -- the controller: draft lengths priced across the batch ----------------------------------------------------


def sharing(curve: dict[int, float]) -> Controller:
    return Controller(CostModel.from_curve(curve))


def test_with_one_sequence_the_batch_keeps_the_draft_it_was_given():
    ctl = sharing({1: 1.0, 2: 1.3, 4: 1.8, 8: 3.0, 16: 5.5})
    conf = [0.99] * 8
    n = ctl.best_length("ngram", conf, calibrated=True).n
    assert ctl.share_batch([("ngram", conf[:n], True)]) == [n]


def test_drafts_shrink_as_sequences_share_a_steep_batch():
    steep = {1: 1.0, 2: 1.9, 4: 3.7, 8: 7.4, 16: 14.5}
    ctl = sharing(steep)
    sure, doubtful = [0.95] * 6, [0.5] * 6
    alone = ctl.share_batch([("ngram", sure, True)])
    together = ctl.share_batch([("ngram", sure, True)] * 4)
    assert sum(together) / 4 <= alone[0]
    # A doubtful draft gives its rows up before a sure one does.
    mixed = ctl.share_batch([("ngram", sure, True), ("ngram", doubtful, True)], extra_rows=2)
    assert mixed[1] <= mixed[0]
    # Where rows are free, every draft is kept whole.
    flat = sharing({1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0, 16: 1.0})
    assert flat.share_batch([("ngram", sure, True)] * 3) == [6, 6, 6]


def test_a_draft_model_that_holds_up_the_batch_is_priced_for_every_stream_waiting():
    ctl = sharing({1: 1.0, 2: 1.3, 4: 1.8, 8: 3.0, 16: 5.5})
    ctl.costs.draft_shape = {"model": 0.2}
    alone = ctl.outlook("model")
    ctl.waiting = 4  # three other slots wait while this one drafts
    busy = ctl.outlook("model")
    assert busy.rate < alone.rate and busy.n <= alone.n
