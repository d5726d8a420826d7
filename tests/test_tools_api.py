"""What coding agents send through OpenAI's chat API: tools, structured output, logprobs, penalties.

A real server on Qwen2.5-Coder 0.5B (its chat template takes tools) and the official `openai` SDK.
"""

from __future__ import annotations

import json

import openai
import pydantic
import pytest

from server_helpers import Server, start_server, stop_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
READ = {"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the project.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
ASK = [{"role": "system", "content": "You are a helpful assistant. Call a tool when you need data; once you have "
                                    "the tool's result, answer the user in one sentence."},
       {"role": "user", "content": "What is the weather in Paris right now?"}]


def chat(server: Server, messages: list, **kw):
    return server.client().chat.completions.create(model="x", messages=messages, temperature=0, **kw)


def round_trip(server: Server, **kw) -> tuple[object, str]:
    """The model asks for the weather tool, the test answers, the model finishes: (the call, the last reply).

    The last turn says tool_choice none, as an agent asking for the answer does: a 0.5B model left to choose
    calls the tool again."""
    r = chat(server, ASK, tools=[WEATHER, READ], max_tokens=80, **kw)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments)["city"].lower() == "paris"
    assert "<tool_call>" not in (choice.message.content or "")
    follow = [*ASK, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 17, "sky": "cloudy"}'}]
    done = chat(server, follow, tools=[WEATHER, READ], tool_choice="none", max_tokens=60)
    assert done.choices[0].finish_reason == "stop" and not done.choices[0].message.tool_calls
    return call, done.choices[0].message.content


def test_a_tool_call_round_trip(coder):
    call, text = round_trip(coder)
    assert "17" in text


def test_a_named_tool_choice_is_enforced(coder):
    # The question is about the weather, the choice forces read_file: the grammar decides, not the model.
    r = chat(coder, ASK, tools=[WEATHER, READ], max_tokens=60,
             tool_choice={"type": "function", "function": {"name": "read_file"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["read_file"]
    assert isinstance(json.loads(choice.message.tool_calls[0].function.arguments)["path"], str)


def test_required_makes_a_chatty_question_call_a_tool(coder):
    r = chat(coder, [{"role": "user", "content": "Say hello."}], tools=[WEATHER], tool_choice="required",
             max_tokens=60)
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_streamed_tool_calls_arrive_as_openai_sends_them(coder):
    stream = chat(coder, ASK, tools=[WEATHER, READ], max_tokens=80, stream=True)
    content, calls, finish = [], {}, None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content.append(delta.content or "")
        for tc in delta.tool_calls or []:
            if tc.index not in calls:  # its first delta: id and name, before any arguments
                assert tc.id and tc.function.name
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            else:
                assert tc.id is None and tc.function.name is None
            calls[tc.index]["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert "tool_call" not in "".join(content)
    (call,) = calls.values()
    whole = chat(coder, ASK, tools=[WEATHER, READ], max_tokens=80).choices[0].message.tool_calls[0]
    assert (call["name"], json.loads(call["arguments"])) == (whole.function.name,
                                                             json.loads(whole.function.arguments))


def test_the_sdks_stream_helper_accumulates_the_call(coder):
    with coder.client().chat.completions.stream(model="x", messages=ASK, tools=[WEATHER], temperature=0,
                                                max_tokens=80) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_tool_choice_none_and_no_tools_keep_text_as_text(coder):
    r = chat(coder, [{"role": "user", "content": "Write the literal text <tool_call> and nothing else."}],
             max_tokens=20)
    assert r.choices[0].finish_reason in ("stop", "length") and not r.choices[0].message.tool_calls
    r = chat(coder, ASK, tools=[WEATHER], tool_choice="none", max_tokens=40)
    assert not r.choices[0].message.tool_calls and r.choices[0].message.content


class Person(pydantic.BaseModel):
    name: str
    age: int
    languages: list[str]


def test_structured_output_through_parse(coder):
    r = coder.client().chat.completions.parse(
        model="x", temperature=0, max_tokens=120, response_format=Person,
        messages=[{"role": "user", "content": "Ada is 36 and writes Python and C. Give her as JSON."}])
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.age >= 0


@pytest.mark.parametrize("fmt", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "p", "schema": Person.model_json_schema()}}])
def test_greedy_constrained_output_with_auto_equals_none(coder, fmt):
    msgs = [{"role": "user", "content": "Describe a programmer called Linus, 55, as JSON."}]
    got = {d: chat(coder, msgs, response_format=fmt, max_tokens=60, extra_body={"drafter": d})
           for d in ("auto", "none")}
    texts = {d: r.choices[0].message.content for d, r in got.items()}
    assert texts["auto"] == texts["none"]
    if got["none"].choices[0].finish_reason == "stop":
        assert isinstance(json.loads(texts["none"]), dict)


COLORS = ("red", "#ff0000"), ("green", "#00ff00"), ("blue", "#0000ff"), ("white", "#ffffff"), ("black", "#000000"), \
    ("orange", "#ffa500"), ("purple", "#800080"), ("silver", "#c0c0c0"), ("maroon", "#800000"), ("olive", "#808000")
FILE = "COLORS = {\n" + "".join(f'    "{name}": "{code}",\n' for name, code in COLORS) + "}\n"


def test_a_file_written_back_as_call_arguments_is_copied_from_its_escaped_form(coder):
    """The arguments are JSON: every line break of the file reads `\\n` there, every quote `\\"`.  The n-gram
    drafter copies them from the tool result as it reads escaped, not only between line ends."""
    def call(i: int, name: str, **args) -> dict:
        return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

    small = 'NAME = "rows"\nVERSION = 2\n'
    # An earlier turn shows the 0.5B model what writing a file back means; alone, it writes one line.
    msgs = [{"role": "user", "content": "Read init.py, then write it back unchanged with write_file."},
            {"role": "assistant", "content": None, "tool_calls": [call(1, "read_file", path="init.py")]},
            {"role": "tool", "tool_call_id": "call_1", "content": small},
            {"role": "assistant", "content": None,
             "tool_calls": [call(2, "write_file", path="init.py", content=small)]},
            {"role": "tool", "tool_call_id": "call_2", "content": "ok"},
            {"role": "user", "content": "Now the same for rows.py."},
            {"role": "assistant", "content": None, "tool_calls": [call(3, "read_file", path="rows.py")]},
            {"role": "tool", "tool_call_id": "call_3", "content": FILE}]
    write = {"type": "function", "function": {
        "name": "write_file", "description": "Replace a file.", "parameters": {
            "type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"]}}}
    got = {d: chat(coder, msgs, tools=[READ, write], max_tokens=400, extra_body={"drafter": d},
                   tool_choice={"type": "function", "function": {"name": "write_file"}}) for d in ("ngram", "none")}
    calls = {d: r.choices[0].message.tool_calls for d, r in got.items()}
    assert calls["ngram"][0].function.arguments == calls["none"][0].function.arguments
    written = json.loads(calls["ngram"][0].function.arguments)["content"]
    assert written.count("\n") > 8  # the model did write the file back
    t = got["ngram"].model_extra["timings"]
    assert t["draft_n_accepted"] > 0.6 * t["predicted_n"], t


def test_logprobs_follow_the_reply_whole_and_streamed(coder):
    msgs = [{"role": "user", "content": "Count from 1 to 5."}]
    r = chat(coder, msgs, max_tokens=12, logprobs=True, top_logprobs=3)
    lps = r.choices[0].logprobs.content
    assert "".join(t.token for t in lps) == r.choices[0].message.content
    for t in lps:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and bytes(t.bytes).decode() == t.token
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True) and t.logprob <= tops[0] + 1e-6
    streamed = [x for c in chat(coder, msgs, max_tokens=12, logprobs=True, top_logprobs=3, stream=True)
                if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in lps]


def test_completions_logprobs_in_the_legacy_shape(coder):
    r = coder.client().completions.create(model="x", prompt="def add(a, b):", max_tokens=8, temperature=0,
                                          logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(t) <= 2 for t in lp.top_logprobs)


def test_penalties_change_a_repetitive_reply(coder):
    msgs = [{"role": "user", "content": "Write the word 'go' twenty times, separated by spaces."}]
    plain = chat(coder, msgs, max_tokens=16).choices[0].message.content
    penalized = chat(coder, msgs, max_tokens=16, frequency_penalty=2.0, presence_penalty=2.0)
    assert penalized.choices[0].message.content != plain


BAD_TOOLS = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "an object"}}]},
     "tools[0].function.parameters"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
]


@pytest.mark.parametrize("extra,param", BAD_TOOLS, ids=[p for _, p in BAD_TOOLS])
def test_bad_tool_requests_are_400s_and_the_server_goes_on(coder, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat(coder, ASK, max_tokens=4, **extra)
    assert e.value.body["param"] == param
    assert chat(coder, ASK, max_tokens=2).choices[0].finish_reason == "length"


def test_a_model_without_tool_support_says_so(target_path, tmp_path):
    s = start_server(tmp_path / "server.log", "--target", str(target_path), "--ctx", "512")
    try:
        with pytest.raises(openai.BadRequestError, match="no tool support") as e:
            chat(s, ASK, tools=[WEATHER], max_tokens=4)
        assert e.value.code == "tools_unsupported"
        assert chat(s, ASK, max_tokens=2).choices[0].message.content is not None
    finally:
        stop_server(s.proc)
