"""The Responses API and Anthropic's Messages API as coding agents speak them: the official `openai` and
`anthropic` SDKs against a real server on Qwen2.5-Coder 0.5B (its chat template takes tools)."""

from __future__ import annotations

import json

import anthropic
import openai
import pydantic
import pytest

from server_helpers import KEY, Server

WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
READ = {"name": "read_file", "description": "Read a file of the project.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}
RESPONSES_TOOLS = [{"type": "function", **WEATHER}, {"type": "function", **READ}]
ANTHROPIC_TOOLS = [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
                   for t in (WEATHER, READ)]
ASK = "What is the weather in Paris right now? Use the tool."
RESULT = '{"temperature_c": 17, "sky": "cloudy"}'
HI = [{"role": "user", "content": "hi"}]
GREEDY = {"temperature": 0}  # the anthropic SDK no longer spells temperature out; the API still takes it


class City(pydantic.BaseModel):
    name: str
    country: str


def claude(server: Server, key: str = KEY) -> anthropic.Anthropic:
    """Anthropic's client as its coding agent points it at a local server (it sends the key as x-api-key)."""
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=300)


# -- the Responses API ----------------------------------------------------------------------------

def test_responses_function_call_round_trip(coder):
    client = coder.client()
    r = client.responses.create(model="x", input=ASK, tools=RESPONSES_TOOLS, max_output_tokens=40,
                                tool_choice={"type": "function", "name": "get_weather"}, temperature=0)
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert json.loads(call.arguments)["city"].lower() == "paris"
    u = r.usage
    assert 0 < u.output_tokens <= 40 and u.total_tokens == u.input_tokens + u.output_tokens
    assert r.model_extra["timings"]["predicted_n"] == u.output_tokens
    # The agent runs the tool and sends the conversation back, the call as it came and its output after it.
    # (This small model would call the tool again if it could: tool_choice none keeps the test deterministic.)
    follow = [{"role": "user", "content": ASK}, *[item.model_dump(exclude_none=True) for item in r.output],
              {"type": "function_call_output", "call_id": call.call_id, "output": RESULT}]
    deltas = []
    with client.responses.stream(model="x", input=follow, tools=RESPONSES_TOOLS, tool_choice="none",
                                 max_output_tokens=60, temperature=0) as stream:
        for ev in stream:
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
        done = stream.get_final_response()
    assert done.status == "completed" and [o.type for o in done.output] == ["message"]
    assert done.output_text == "".join(deltas) and "17" in done.output_text
    # The follow-up shares the first request's prompt: the cache says how much of it was reused.
    assert done.usage.input_tokens_details.cached_tokens > 0


def test_responses_stream_events_as_the_sdk_types_them(coder):
    stream = coder.client().responses.create(model="x", input="Read the file setup.py.", tools=RESPONSES_TOOLS,
                                             tool_choice="required", max_output_tokens=40, temperature=0,
                                             stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added, done, final = events[2].item, events[-2].item, events[-1].response
    assert added.type == "function_call" and added.status == "in_progress" and added.arguments == ""
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert pieces == events[-3].arguments == done.arguments
    assert json.loads(done.arguments)  # the grammar that tool_choice forces keeps them JSON
    assert (done.call_id, done.id, done.status) == (added.call_id, added.id, "completed")
    assert final.status == "completed" and [o.model_dump() for o in final.output] == [done.model_dump()]


def test_responses_structured_output_and_length(coder):
    client = coder.client()
    r = client.responses.parse(model="x", input="The capital of France, as JSON.", text_format=City,
                               max_output_tokens=40, temperature=0)
    assert isinstance(r.output_parsed, City) and r.output_parsed.name
    cut = client.responses.create(model="x", input="Write a long poem about the sea.", max_output_tokens=3,
                                  temperature=0, include=["message.output_text.logprobs"], top_logprobs=2)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    (part,) = cut.output[0].content
    assert cut.usage.output_tokens == 3 and "".join(lp.token for lp in part.logprobs) == part.text
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in part.logprobs)


def test_responses_errors_name_the_fields_sent(coder):
    client = coder.client()
    cases = [
        (dict(input=[{"role": "user", "content": "hi"},
                     {"type": "function_call_output", "call_id": "call_nobody", "output": "x"}]), "input[1].call_id"),
        (dict(input=[{"role": "user", "content": "hi"},
                      {"type": "function_call", "call_id": "c1", "name": "read_file", "arguments": "{no"}]),
         "input[1].arguments"),
        (dict(input="hi", tools=[{"type": "web_search"}]), "tools[0].type"),
        (dict(input="hi", tools=[{"type": "function", "name": "two words"}]), "tools[0].name"),
        (dict(input="hi", previous_response_id="resp_1"), "previous_response_id"),
        (dict(input="hi", max_output_tokens=0), "max_output_tokens"),
        (dict(input="hi", text={"format": {"type": "json_schema", "name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}}}),
         "text.format.schema.properties.a.pattern"),
    ]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="x", **kw)
        assert e.value.body["param"] == param and "\n" not in e.value.message, (kw, e.value.body)
        if not kw.get("tools"):  # the checks shared with the chat API word the caller's field, not chat's
            assert e.value.body["message"].startswith(param), e.value.body
    with pytest.raises(openai.AuthenticationError):
        coder.client(key="wrong").responses.create(model="x", input="hi")
    r = client.responses.create(model="x", input="Say yes.", max_output_tokens=1, temperature=0)
    assert r.status == "incomplete" and r.usage.output_tokens == 1


# -- Anthropic's Messages API ---------------------------------------------------------------------

def test_messages_tool_use_round_trip_and_count_tokens(coder):
    client = claude(coder)
    ask = [{"role": "user", "content": ASK}]
    m = client.messages.create(model="x", max_tokens=40, messages=ask, tools=ANTHROPIC_TOOLS,
                               tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    assert m.type == "message" and m.role == "assistant" and m.stop_reason == "tool_use"
    (use,) = m.content
    assert use.type == "tool_use" and use.id.startswith("toolu_") and use.name == "get_weather"
    assert use.input["city"].lower() == "paris"
    counted = client.messages.count_tokens(model="x", messages=ask, tools=ANTHROPIC_TOOLS).input_tokens
    assert counted == m.usage.input_tokens + m.usage.cache_read_input_tokens
    follow = [*ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": RESULT}]}]
    assert client.messages.count_tokens(model="x", messages=follow, tools=ANTHROPIC_TOOLS).input_tokens > counted
    texts = []
    with client.messages.stream(model="x", max_tokens=60, messages=follow, tools=ANTHROPIC_TOOLS,
                                tool_choice={"type": "none"}, system=[{"type": "text", "text": "You are terse."}],
                                extra_body=GREEDY) as stream:
        for ev in stream:
            if ev.type == "text":
                texts.append(ev.text)
        done = stream.get_final_message()
    assert done.stop_reason == "end_turn" and [b.type for b in done.content] == ["text"]
    assert done.content[0].text == "".join(texts) and "17" in done.content[0].text
    assert done.usage.cache_read_input_tokens > 0 and 0 < done.usage.output_tokens <= 60


def test_messages_stream_accumulates_tool_use(coder):
    with claude(coder).messages.stream(model="x", max_tokens=40, tools=ANTHROPIC_TOOLS,
                                       messages=[{"role": "user", "content": "Show me setup.py."}],
                                       tool_choice={"type": "any"}, extra_body=GREEDY) as stream:
        events = list(stream)
        m = stream.get_final_message()
    assert m.stop_reason == "tool_use" and m.content and all(b.type == "tool_use" for b in m.content)
    kinds = [ev.type for ev in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    pieces: dict[int, str] = {}
    for ev in events:
        if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
            pieces[ev.index] = pieces.get(ev.index, "") + ev.delta.partial_json
    assert sorted(pieces) == list(range(len(m.content)))
    assert [json.loads(p) for _, p in sorted(pieces.items())] == [b.input for b in m.content]
    assert len({b.id for b in m.content}) == len(m.content)


def test_messages_stop_sequence_and_structured_output(coder):
    client = claude(coder)
    m = client.messages.create(model="x", max_tokens=30, stop_sequences=["7", "5"], extra_body=GREEDY,
                               messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}])
    # Counting meets 5 first, though the request lists 7 first: the answer names what stopped the reply.
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "5"
    assert "4" in m.content[0].text and not {"5", "7"} & set(m.content[0].text)
    parsed = client.messages.parse(model="x", max_tokens=40, output_format=City, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "The capital of Spain, as JSON."}])
    assert isinstance(parsed.parsed_output, City) and parsed.stop_reason == "end_turn"


def test_messages_errors_in_anthropics_shape(coder):
    client = claude(coder)
    cases = [
        dict(max_tokens=anthropic.NOT_GIVEN, messages=[{"role": "user", "content": "hi"}]),
        dict(max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_nobody", "content": "x"}]}]),
        dict(max_tokens=5, messages=[{"role": "user", "content": "hi"}],
             tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        dict(max_tokens=5, messages=[{"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": "not an object"}]}]),
    ]
    for kw in cases:
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.create(model="x", **kw)
        body = e.value.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
        assert body["error"]["message"] and "\n" not in body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude(coder, key="wrong").messages.create(model="x", max_tokens=1, messages=HI)
    assert e.value.body["error"]["type"] == "authentication_error"
    status, _, raw = coder.request("POST", "/v1/messages/nothing", {})
    assert status == 404 and json.loads(raw)["error"]["type"] == "not_found_error"
    m = client.messages.create(model="x", max_tokens=1, messages=HI)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 1
    metrics = coder.metrics()
    assert metrics['specgen_requests_total{route="/v1/messages",status="400"}'] >= len(cases)
