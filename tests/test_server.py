"""`specgen serve` as editors and agents meet it: real server processes on loopback, the official
`openai` client, raw HTTP for the SSE framing and the error shapes."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest

from cli_helpers import one_line_error

from server_helpers import EXE, KEY, Server, serving, start_server, stop_server


@pytest.fixture(scope="module")
def server(target_path, draft_path, tmp_path_factory):
    """The tiny pair with a key and a small context (so an over-long prompt is cheap to send)."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with serving(log, "--target", str(target_path), "--draft", str(draft_path), "--ctx", "1024",
                 env={"SPECGEN_API_KEY": KEY}) as s:
        yield s


def ask(client: openai.OpenAI, prompt: str, **kw) -> str:
    r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": prompt}],
                                       temperature=kw.pop("temperature", 0), **kw)
    return r.choices[0].message.content


# -- the official client ------------------------------------------------------------------------

def test_chat_completion_carries_usage_timings_and_specgen_stats(server):
    t0 = time.perf_counter()
    r = server.client().chat.completions.create(
        model="anything", max_tokens=24, temperature=0,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": [{"type": "text", "text": "Name three "}, {"type": "text",
                                                                                     "text": "fruits."}]}])
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.completion_tokens <= 24 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    extra = r.model_extra
    t = extra["timings"]
    assert t["predicted_n"] == u.completion_tokens
    assert t["prompt_n"] + t["cache_n"] == u.prompt_tokens
    assert 0 <= t["draft_n_accepted"] <= t["draft_n"]
    # Milliseconds spent inside this request: together no more than the client waited for it, and the
    # rates beside them follow from them (a unit slip, seconds for milliseconds, breaks one or the other).
    assert 0 < t["prompt_ms"] and 0 < t["predicted_ms"] and t["prompt_ms"] + t["predicted_ms"] <= wall_ms
    assert t["predicted_per_second"] == pytest.approx(t["predicted_n"] / t["predicted_ms"] * 1e3, rel=1e-2)
    assert t["predicted_per_token_ms"] == pytest.approx(t["predicted_ms"] / t["predicted_n"], rel=1e-2)
    assert t["prompt_per_second"] == pytest.approx(t["prompt_n"] / t["prompt_ms"] * 1e3, rel=1e-2)
    sg = extra["specgen"]
    assert sg["drafter"] == "auto"
    lengths = {int(k): v for k, v in sg["draft_lengths"].items()}
    assert sum(k * v for k, v in lengths.items()) == t["draft_n"]
    assert sg["drafter_steps"].get("none", 0) == lengths.get(0, 0)  # the steps that verified no draft


def test_streaming_chat_equals_the_whole_reply_and_ends_with_usage(server):
    client = server.client()
    # Past end-of-generation: exactly 32 tokens, every step emitting text, most steps several tokens.
    kw = dict(model="x", messages=[{"role": "user", "content": "Count to ten."}], max_tokens=32, temperature=0,
              extra_body={"ignore_eos": True, "drafter": "model", "draft_max": 3})
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # A second identical request reuses the whole cached prompt but its last token.
    assert last.model_extra["timings"]["cache_n"] == last.usage.prompt_tokens - 1
    # The stream sends each verify step's text as one chunk (ASCII is never held back): a count of the
    # steps made apart from the summary, which the reported figures must agree with.
    assert text.isascii(), text
    steps = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    sg = last.model_extra["specgen"]
    assert last.usage.completion_tokens == 32 and sg["steps"] == steps < 32  # < 32: drafts were accepted
    assert sum(sg["drafter_steps"].values()) == sum(sg["draft_lengths"].values()) == steps
    assert sg["mean_accepted"] == pytest.approx(32 / steps, abs=1e-3)


def test_completions_whole_and_streamed(server):
    client = server.client()
    whole = client.completions.create(model="x", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.usage.completion_tokens <= 12
    streamed = list(client.completions.create(model="x", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_strings_cut_the_reply(server):
    client = server.client()
    full = ask(client, "Write the days of the week, one per line.", max_tokens=40)
    words = re.findall(r"[A-Za-z]{4,}", full)
    assert len(words) >= 2, full
    stop = words[1]
    r = client.chat.completions.create(model="x", messages=[{"role": "user", "content":
                                                             "Write the days of the week, one per line."}],
                                       max_tokens=40, temperature=0, stop=[stop, "@@@"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:full.index(stop)]


def test_a_seed_reproduces_a_sampled_reply_whatever_was_drafted(server):
    client = server.client()
    kw = dict(max_tokens=24, temperature=1.0, top_p=1.0)
    prompt = "List some colours: red, green, blue, red, green, blue,"
    plain = ask(client, prompt, seed=7, extra_body={"drafter": "none"}, **kw)
    copied = ask(client, prompt, seed=7, extra_body={"drafter": "ngram"}, **kw)
    again = ask(client, prompt, seed=7, extra_body={"drafter": "ngram"}, **kw)
    assert plain == copied == again
    others = {ask(client, prompt, seed=s, extra_body={"drafter": "none"}, **kw) for s in (1, 2, 3)}
    assert len(others | {plain}) > 1  # the seed matters: this really samples


def test_models_health_and_metrics(server):
    models = server.client().models.list().data
    assert [m.id for m in models] == [Path(models[0].model_extra["meta"]["target"]).stem]
    assert models[0].model_extra["meta"]["drafters"] == ["auto", "model", "ngram", "none"]
    status, _, body = server.request("GET", "/health", key=None)
    assert status == 200 and json.loads(body)["status"] == "ok"
    before = server.metrics()
    r = server.client().chat.completions.create(model="x", messages=[{"role": "user", "content": "Say yes."}],
                                                max_tokens=4, temperature=0)
    after = server.metrics()
    assert after['specgen_requests_total{route="/v1/chat/completions",status="200"}'] == \
        before.get('specgen_requests_total{route="/v1/chat/completions",status="200"}', 0) + 1
    # The counters moved by exactly what the response reported for itself.
    sg = r.model_extra["specgen"]
    moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert moved.get("specgen_generated_tokens_total", 0) == r.usage.completion_tokens
    assert moved.get("specgen_verify_steps_total", 0) == sg["steps"]
    assert {k: v for k, v in moved.items() if k.startswith("specgen_drafter_steps_total")} == \
        {f'specgen_drafter_steps_total{{drafter="{d}"}}': n for d, n in sg["drafter_steps"].items()}
    assert after["specgen_request_seconds_count"] == before["specgen_request_seconds_count"] + 1
    assert after['specgen_request_seconds_bucket{le="+Inf"}'] == after["specgen_request_seconds_count"]
    server.request("GET", "/scanner/probe-123")
    labels = server.metrics()
    assert labels['specgen_requests_total{route="other",status="404"}'] >= 1
    assert not any("probe" in k for k in labels)  # unknown paths do not grow the label set


def test_one_log_line_per_request_with_timings(server):
    ask(server.client(), "Say no.", max_tokens=4)
    line = server.log_lines()[-1]
    assert re.search(r"POST /v1/chat/completions 200 [\d.]+s \| \d+ tokens · [\d.]+ tok/s .*"
                     r"prompt \d+ new \+ \d+ reused", line), line


# -- raw HTTP -----------------------------------------------------------------------------------

def test_sse_framing_is_byte_for_byte_openai(server):
    status, headers, body = server.request("POST", "/v1/chat/completions", {
        "model": "x", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    events = body.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    objs = []
    for ev in events[:-2]:
        assert ev.startswith(b"data: {") and b"\n" not in ev, ev
        objs.append(json.loads(ev[len(b"data: "):]))
    rebuilt = b"".join(b"data: " + json.dumps(o, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
                       for o in objs) + b"data: [DONE]\n\n"
    assert rebuilt == body
    assert {o["object"] for o in objs} == {"chat.completion.chunk"} and len({o["id"] for o in objs}) == 1
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] <= 8
    assert objs[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_greedy_output_equals_specgen_run(server, target_path, draft_path):
    prompt = "Explain what a linked list is in two sentences."
    r = subprocess.run([EXE, "run", "--target", str(target_path), "--draft", str(draft_path), "--max-tokens", "40",
                        "--system", "Be brief.", "--json", prompt], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)
    got = server.client().chat.completions.create(
        model="x", max_tokens=40, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}])
    assert got.choices[0].message.content == want["text"]
    assert got.usage.prompt_tokens == want["stats"]["prompt_tokens"]
    assert got.usage.completion_tokens == want["stats"]["generated_tokens"]


def test_a_growing_conversation_reuses_the_cached_prefix(server):
    client = server.client()
    msgs = [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]
    first = client.chat.completions.create(model="x", messages=msgs, max_tokens=16, temperature=0)
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And of Italy?"}]
    second = client.chat.completions.create(model="x", messages=msgs, max_tokens=16, temperature=0)
    t = second.model_extra["timings"]
    assert t["cache_n"] >= first.usage.prompt_tokens
    assert t["prompt_n"] + t["cache_n"] == second.usage.prompt_tokens
    cold = client.chat.completions.create(model="x", messages=msgs, max_tokens=16, temperature=0,
                                          extra_body={"cache_prompt": False})
    assert cold.model_extra["timings"]["cache_n"] == 0


def test_per_request_drafter_and_draft_max(server):
    r = server.client().chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Repeat: red green blue red green blue"}],
        max_tokens=16, temperature=0, extra_body={"drafter": "model", "draft_max": 3})
    sg = r.model_extra["specgen"]
    assert sg["drafter"] == "model"
    assert set(sg["drafter_steps"]) <= {"model", "none"} and max(map(int, sg["draft_lengths"])) <= 3
    after = server.client().chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Say ok."}], max_tokens=4, temperature=0)
    assert after.model_extra["specgen"]["drafter"] == "auto"  # the server's own setting is back


# -- errors -------------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
OK_MSGS = [{"role": "user", "content": "hi"}]

BAD = [
    ("malformed JSON", CHAT, b'{"messages": [', 400, None),
    ("not an object", CHAT, b"[1, 2]", 400, None),
    ("no messages", CHAT, {"model": "x"}, 400, "messages"),
    ("empty messages", CHAT, {"messages": []}, 400, "messages"),
    ("messages of the wrong type", CHAT, {"messages": "hi"}, 400, "messages"),
    ("a bad role", CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ("content of the wrong type", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content"),
    ("temperature as a string", CHAT, {"messages": OK_MSGS, "temperature": "hot"}, 400, "temperature"),
    ("negative temperature", CHAT, {"messages": OK_MSGS, "temperature": -1}, 400, "temperature"),
    ("top_p above 1", CHAT, {"messages": OK_MSGS, "top_p": 1.5}, 400, "top_p"),
    ("max_tokens 0", CHAT, {"messages": OK_MSGS, "max_tokens": 0}, 400, "max_tokens"),
    ("max_completion_tokens as a string", CHAT, {"messages": OK_MSGS, "max_completion_tokens": "9"}, 400,
     "max_completion_tokens"),
    ("stream as a string", CHAT, {"messages": OK_MSGS, "stream": "yes"}, 400, "stream"),
    ("stop of the wrong type", CHAT, {"messages": OK_MSGS, "stop": [1]}, 400, "stop"),
    ("n > 1", CHAT, {"messages": OK_MSGS, "n": 2}, 400, "n"),
    ("tools", CHAT, {"messages": OK_MSGS, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400,
     "tools"),
    ("a response_format of no known type", CHAT, {"messages": OK_MSGS, "response_format": {"type": "yaml"}}, 400,
     "response_format.type"),
    ("a schema that cannot be converted", CHAT, {"messages": OK_MSGS, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}}, 400,
     "response_format.json_schema.schema.$ref"),
    ("a tool of the wrong shape", CHAT, {"messages": OK_MSGS, "tools": [{"type": "function", "name": "f"}]}, 400,
     "tools[0].function"),
    ("a tool with a bad name", CHAT, {"messages": OK_MSGS, "tools": [
        {"type": "function", "function": {"name": "read file"}}]}, 400, "tools[0].function.name"),
    ("a tool_choice naming no tool", CHAT, {"messages": OK_MSGS, "tool_choice": {
        "type": "function", "function": {"name": "g"}}, "tools": [{"type": "function", "function": {"name": "f"}}]},
     400, "tool_choice"),
    ("a tool result answering no call", CHAT, {"messages": [*OK_MSGS, {"role": "tool", "tool_call_id": "call_x",
                                                                     "content": "42"}]}, 400,
     "messages[1].tool_call_id"),
    ("call arguments that are not JSON", CHAT, {"messages": [*OK_MSGS, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{path: x"}}]}]}, 400,
     "messages[1].tool_calls[0].function.arguments"),
    ("top_logprobs above 20", CHAT, {"messages": OK_MSGS, "logprobs": True, "top_logprobs": 21}, 400,
     "top_logprobs"),
    ("a frequency_penalty above 2", CHAT, {"messages": OK_MSGS, "frequency_penalty": 2.5}, 400,
     "frequency_penalty"),
    ("an image", CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "messages[0].content[0]"),
    ("an unknown drafter", CHAT, {"messages": OK_MSGS, "drafter": "magic"}, 400, "drafter"),
    ("a bad draft_max", CHAT, {"messages": OK_MSGS, "draft_max": -2}, 400, "draft_max"),
    ("a prompt of token ids", "/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt"),
    ("an empty prompt", "/v1/completions", {"prompt": ""}, 400, "prompt"),
    # The tiny model has no fill-in-the-middle tokens.
    ("an infill on a model without FIM tokens", "/infill", {"input_prefix": "a", "input_suffix": "b"}, 400, None),
    ("a suffix on a model without FIM tokens", "/v1/completions", {"prompt": "a", "suffix": "b"}, 400, None),
    ("an unknown route", "/v1/embeddings", {"input": "hi"}, 404, None),
]


@pytest.mark.parametrize("what,path,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_an_openai_error(server, what, path, body, status, param):
    got, headers, raw = server.request("POST", path, body)
    assert got == status, raw
    assert headers["content-type"].startswith("application/json")
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"] and "Traceback" not in err["message"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    if err["code"] == "unsupported_parameter":
        assert "not supported" in err["message"]


def test_unsupported_features_are_refused_through_the_client(server):
    with pytest.raises(openai.BadRequestError, match="not supported"):
        server.client().chat.completions.create(model="x", messages=OK_MSGS, n=2)


def test_unknown_fields_are_ignored(server):
    status, _, raw = server.request("POST", CHAT, {"messages": OK_MSGS, "max_tokens": 2, "user": "me",
                                                   "metadata": {"a": 1}, "some_future_field": [1]})
    assert status == 200, raw


def test_prompt_longer_than_the_context_says_both_numbers(server):
    status, _, raw = server.request("POST", CHAT, {"messages": [{"role": "user", "content": "word " * 1500}]})
    assert status == 400
    err = json.loads(raw)["error"]
    assert err["code"] == "context_length_exceeded"
    numbers = [int(n) for n in re.findall(r"\d+", err["message"])]
    assert 1024 in numbers and any(n > 1024 for n in numbers), err["message"]


def test_a_body_over_the_cap_is_413(server):
    status, _, raw = server.request("POST", CHAT, b'{"messages": "' + b"x" * (9 << 20) + b'"}')
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"


def test_wrong_method_and_missing_or_wrong_key(server):
    status, _, raw = server.request("GET", CHAT)
    assert status == 405 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    for key in (None, "sk-wrong"):
        status, _, raw = server.request("POST", CHAT, {"messages": OK_MSGS}, key=key)
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        ask(server.client("sk-wrong"), "hi", max_tokens=2)
    status, _, _ = server.request("GET", "/metrics", key=None)
    assert status == 401


def test_the_server_still_answers_after_all_that(server):
    r = server.client().chat.completions.create(model="x", messages=OK_MSGS, max_tokens=4, temperature=0)
    assert r.choices[0].message.content
    assert server.proc.poll() is None
    assert "Traceback" not in server.log.read_text()


# -- one slot, a bounded queue, disconnects, Ctrl+C ------------------------------------------------

LONG = {"model": "x", "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 3000, "temperature": 0, "stream": True, "ignore_eos": True, "drafter": "none"}


def open_stream(server: Server, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Start a streamed request and read until its first content chunk (so the engine is on it)."""
    c = server.conn()
    c.request("POST", CHAT, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200
    while b'"content":"' not in r.readline().replace(b'"content":""', b""):
        pass
    return c, r


def wait_for(pred, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def queue_server(target_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "queue.log"
    with serving(log, "--target", str(target_path), "--queue", "1", "--parallel", "1") as s:
        yield s


def health(server: Server) -> dict:
    return json.loads(server.request("GET", "/health")[2])


def test_queue_full_is_503_and_a_disconnect_frees_the_engine(queue_server):
    s = queue_server
    conn, _ = open_stream(s, LONG)  # A: busy for thousands of tokens
    waiting: dict = {}
    b = threading.Thread(target=lambda: waiting.update(r=ask(s.client(), "Say hi.", max_tokens=8)))
    b.start()  # B waits in the queue
    wait_for(lambda: health(s)["waiting"] == 1, "B to queue")
    status, headers, raw = s.request("POST", CHAT, {"messages": OK_MSGS, "max_tokens": 2})  # C: no room
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert json.loads(raw)["error"]["code"] == "queue_full"
    conn.close()  # A hangs up: its generation stops at the next step and B runs
    b.join(300)
    assert waiting.get("r"), "B never got its answer"
    m = s.metrics()
    assert m["specgen_requests_cancelled_total"] == 1
    assert m["specgen_generated_tokens_total"] < 3000  # A's tokens were never all generated
    wait_for(lambda: not health(s)["busy"], "the engine to go idle")


def test_a_client_that_leaves_a_plain_request_cancels_it(queue_server):
    s = queue_server
    before = s.metrics()["specgen_requests_cancelled_total"]
    c = s.conn()
    c.request("POST", CHAT, body=json.dumps({**LONG, "stream": False}), headers={"Content-Type": "application/json"})
    wait_for(lambda: health(s)["busy"], "the request to start")
    c.close()
    wait_for(lambda: s.metrics()["specgen_requests_cancelled_total"] == before + 1, "the cancel")
    assert ask(s.client(), "Say hi.", max_tokens=4)


def test_ctrl_c_ends_streams_with_an_error_chunk_and_exits_130(target_path, tmp_path):
    s = start_server(tmp_path / "server.log", "--target", str(target_path))
    try:
        conn, r = open_stream(s, LONG)
        s.proc.send_signal(signal.SIGINT)
        rest = r.read()
        conn.close()
        events = [e.strip(b"\n") for e in rest.split(b"\n\n") if e.strip()]  # open_stream read by lines
        assert events[-1].startswith(b"data: {\"error\"") and b"[DONE]" not in rest
        assert json.loads(events[-1][len(b"data: "):])["error"]["code"] == "shutting_down"
        assert s.proc.wait(30) == 130
    finally:
        stop_server(s.proc)
    assert "Traceback" not in s.log.read_text()


# -- the command line ---------------------------------------------------------------------------

def serve_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "serve", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL)


def test_bad_flags_are_one_line(target_path):
    assert "--port" in one_line_error(serve_cli("--target", str(target_path), "--port", "70000"))
    assert "--queue" in one_line_error(serve_cli("--target", str(target_path), "--queue", "-1"))
    assert "--parallel" in one_line_error(serve_cli("--target", str(target_path), "--parallel", "0"))
    assert "--cache-ram" in one_line_error(serve_cli("--target", str(target_path), "--cache-ram", "-1"))
    line = one_line_error(serve_cli("--target", str(target_path), "--exact", "--parallel", "2"))
    assert "--exact" in line and "--parallel" in line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert port in one_line_error(serve_cli("--target", str(target_path), "--port", port))


def test_a_public_host_without_a_key_is_warned_about():
    from specgen.server.listen import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("::1", None) is None and exposure_warning("0.0.0.0", "k") is None
    warning = exposure_warning("0.0.0.0", None)
    assert warning and "\n" not in warning and "--api-key" in warning


def test_on_a_terminal_the_live_screen_shows_requests_and_ctrl_c_exits_130(target_path):
    import pexpect
    import pyte

    screen = pyte.Screen(140, 30)
    stream = pyte.ByteStream(screen)
    child = pexpect.spawn(EXE, ["serve", "--target", str(target_path), "--port", "0", "--threads", "1"],
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm-256color"},
                          dimensions=(30, 140), timeout=120)

    def expect(pattern: str) -> None:
        try:
            child.expect(pattern)
        finally:
            stream.feed((child.before or b"") + (child.after if isinstance(child.after, bytes) else b""))

    try:
        expect(r"http://127\.0\.0\.1:(\d+)")
        port = int(child.match.group(1))
        expect("idle")
        got: dict = {}
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        t = threading.Thread(target=lambda: got.update(r=ask(client, "Say hi.", max_tokens=6)))
        t.start()
        expect(r"chat/completions\s+200\s+\d+\s+[\d.]+\s")
        t.join(120)
        assert got.get("r")
        shown = "\n".join(screen.display)
        assert "since start: 1 requests" in shown and "tok/s" in shown and "idle" in shown, shown
        child.kill(signal.SIGINT)
        expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 130
    finally:
        if child.isalive():
            child.kill(signal.SIGKILL)


# -- what real clients trip over: the overflow's wording, models.retrieve, Retry-After, the context -------

def test_an_overflow_reads_as_openai_words_it_through_the_client(server):
    """Client libraries tell an overflow by OpenAI's code or its wording ("This model's maximum context
    length is"), and then trim the conversation."""
    client = server.client()
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "word " * 1500}])
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model="x", prompt="word " * 1500)
    for e, what in ((chat.value, "messages"), (completion.value, "prompt")):
        assert e.code == "context_length_exceeded" and e.param == what and e.type == "invalid_request_error"
        m = re.search(rf"This model's maximum context length is (\d+) tokens\. However, your {what} resulted in "
                      rf"(\d+) tokens\. Please reduce the length of the {what}", e.message)
        assert m and int(m[1]) == 1024 and int(m[2]) > 1024, e.message


def test_a_max_tokens_past_the_room_left_fills_the_context_and_ends_with_length(server):
    r = server.client().chat.completions.create(
        model="x", messages=OK_MSGS, max_tokens=5000, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == 1024  # the whole context, and not one token more


def test_models_retrieve_names_the_served_model_and_404s_any_other(server):
    client = server.client()
    served = client.models.list().data[0]
    got = client.models.retrieve(served.id)
    assert (got.id, got.object, got.model_extra["meta"]) == (served.id, "model", served.model_extra["meta"])
    status, _, raw = server.request("GET", f"/models/{served.id}")
    assert status == 200 and json.loads(raw)["id"] == served.id
    label = 'specgen_requests_total{route="/v1/models/{model:path}",status="404"}'
    before = server.metrics().get(label, 0)
    for other in ("gpt-4o", "org/some-model"):
        with pytest.raises(openai.NotFoundError) as e:
            client.models.retrieve(other)
        assert e.value.code == "model_not_found" and other in e.value.message
    after = server.metrics()
    assert after[label] == before + 2
    assert not any("gpt-4o" in k or "some-model" in k for k in after)  # model ids stay out of the labels


def test_retry_after_is_the_running_reply_s_tokens_to_come_at_its_rate():
    from specgen.engine import Prefill, Summary
    from specgen.meter import TurnMeter
    from specgen.sampling import SamplingParams
    from specgen.server.schema import parse_chat
    from specgen.server.worker import Job, retry_after

    def job(prompt: int, generated: int = 0, seconds: float = 0.0, **body) -> Job:
        j = Job(parse_chat({"messages": OK_MSGS, **body}, SamplingParams()), loop=None)
        j.started, j.prompt_tokens = time.perf_counter(), prompt
        if generated:  # past its prompt and decoding, at seconds / generated a token
            j.meter = TurnMeter(4096, prompt)
            j.meter.on(Prefill(prompt, 0, 0.1))
            j.meter.summary.generated_tokens, j.meter.summary.decode_seconds = generated, seconds
        return j

    # 4 finished replies of 100 tokens on average, decoded at 0.125 s a token; 2,000 prompt tokens read in 4 s.
    done = Summary(generated_tokens=400, decode_seconds=50.0, prompt_tokens=2000, prompt_seconds=4.0)
    assert retry_after(None, 4096, done, 4) == 1  # nothing runs: a place is about to open
    # A reply that cannot end early runs to its max_tokens: 800 tokens to come at its own 0.25 s a token.
    assert retry_after(job(10, 200, 50.0, max_tokens=1000, ignore_eos=True), 4096, done, 4) == 200
    # Otherwise as long as a typical reply: 60 to come; past that, half a typical reply (50).
    assert retry_after(job(10, 40, 10.0, max_tokens=4000), 4096, done, 4) == 15
    assert retry_after(job(10, 150, 37.5, max_tokens=4000), 4096, done, 4) == 13
    # Never more than its max_tokens or the context leave (5 and 6 tokens, at 1 s a token).
    assert retry_after(job(10, 90, 90.0, max_tokens=95), 4096, done, 4) == 5
    assert retry_after(job(4030, 60, 60.0), 4096, done, 4) == 6
    # Its prompt still being read: 2 s at the finished requests' rate, then a typical reply at theirs (12.5 s).
    assert retry_after(job(1000), 4096, done, 4) == 15
    # No reply finished and this one not decoding yet: no rate to go by.
    assert retry_after(job(1000), 4096, Summary(), 0) == 1


def test_queue_0_serves_one_and_refuses_the_next_with_a_retry_after(target_path, tmp_path):
    s = start_server(tmp_path / "q0.log", "--target", str(target_path), "--queue", "0", "--ctx", "4096",
                     "--parallel", "1")
    try:
        assert ask(s.client(), "Say hi.", max_tokens=4)  # an idle server with no queue still serves
        conn, _ = open_stream(s, LONG)
        status, headers, raw = s.request("POST", CHAT, {"messages": OK_MSGS, "max_tokens": 2})
        assert status == 503 and json.loads(raw)["error"]["code"] == "queue_full"
        retry = int(headers["retry-after"])
        assert retry >= 1 and f"retry in {retry} s" in json.loads(raw)["error"]["message"]
        conn.close()
        wait_for(lambda: not health(s)["busy"], "the engine to go idle")
        assert ask(s.client(), "Say hi.", max_tokens=4)
    finally:
        stop_server(s.proc)


def test_serve_sizes_its_context_from_the_target_and_says_why(queue_server, server, target_path):
    from specgen.llama.gguf import read_gguf

    info = read_gguf(target_path)
    trained = info.metadata[f"{info.architecture}.context_length"]
    line = next(x for x in queue_server.log_lines() if "listening on" in x)
    m = re.search(r"ctx (\d+) \(([^)]+)\)", line)
    assert m, line
    n_ctx = int(m[1])
    assert queue_server.client().models.list().data[0].model_extra["meta"]["n_ctx"] == n_ctx
    if "trained" in m[2]:
        assert n_ctx == trained
    else:  # memory is short on this machine: what fits, and more than the other commands' default
        assert 4096 <= n_ctx < trained and "free" in m[2], line
    # An explicit --ctx wins, with no reason given.
    assert server.client().models.list().data[0].model_extra["meta"]["n_ctx"] == 1024
    assert re.search(r"ctx 1024, ", next(x for x in server.log_lines() if "listening on" in x))
