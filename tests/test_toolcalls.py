"""Tool calls: the GGUF's own template renders tools and tool turns, each family's markup parses (whole and
streamed in any chunking), and the grammars llama.cpp takes admit a call and nothing else."""

from __future__ import annotations

import ctypes
import json
import math
import random
import re
from pathlib import Path

import pytest

from specgen.formats.tools import (CallDelta, ContentDelta, GenericFormat, HermesFormat, Llama3Format,
                                   MistralFormat, ToolFormat, ToolsError, tool_format)
from specgen.llama.backend import Model, ModelOptions
from specgen.llama.chat_template import chat_tokens, render_chat
from specgen.llama.loader import load_llama

# A description with what Jinja's own tojson would turn into HTML entities, and a character it would escape.
READ_FILE = {"type": "function", "function": {
    "name": "read_file", "description": "Read a file's text <whole> & 'as is' (café).",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
LIST_DIR = {"type": "function", "function": {"name": "list_dir"}}  # no parameters: any object
TOOLS = [READ_FILE, LIST_DIR]


@pytest.fixture(scope="session")
def coder(coder_path: Path) -> Model:
    return Model(coder_path, ModelOptions(vocab_only=True))


@pytest.fixture(scope="session")
def coder_template(coder: Model) -> str:
    template = coder.chat_template()
    assert template
    return template


# -- templates


def test_tojson_is_hugging_faces(coder_template: str) -> None:
    value = {"b": "<a href='x'>&</a> é", "a": [1, 2]}
    for expr, want in [("x|tojson", json.dumps(value, ensure_ascii=False)),
                       ("x|tojson(indent=2)", json.dumps(value, ensure_ascii=False, indent=2)),
                       ("x|tojson(sort_keys=true)", json.dumps(value, ensure_ascii=False, sort_keys=True)),
                       ("x|tojson(separators=(',', ':'))",
                        json.dumps(value, ensure_ascii=False, separators=(",", ":"))),
                       ("x|tojson(ensure_ascii=true)", json.dumps(value))]:
        assert render_chat("{{ " + expr.replace("x", "messages[0]") + " }}", [value]) == want


def test_coder_template_renders_tools(coder_template: str) -> None:
    messages = [{"role": "user", "content": "Show me a.py"}]
    prompt = render_chat(coder_template, messages, tools=TOOLS)
    for tool in TOOLS:  # one line each, exactly as Hugging Face's renderer writes it
        assert "\n" + json.dumps(tool, ensure_ascii=False) + "\n" in prompt
    assert "<tools>" in prompt and "<tool_call>" in prompt
    # Without tools (None or none at all) the template takes its other branch.
    plain = render_chat(coder_template, messages)
    assert render_chat(coder_template, messages, tools=[]) == plain
    assert render_chat(coder_template, messages, tools=None) == plain
    assert "<tools>" not in plain and prompt.endswith("<|im_start|>assistant\n") and plain.endswith(prompt[-30:])


def test_coder_template_renders_a_tool_round_trip(coder: Model, coder_template: str) -> None:
    messages = [
        {"role": "user", "content": "Show me a.py"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": {"path": "a.py"}}},
            {"id": "call_2", "type": "function", "function": {"name": "list_dir", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "read_file", "content": "print('hi')"},
        {"role": "tool", "tool_call_id": "call_2", "name": "list_dir", "content": "a.py"},
    ]
    prompt = render_chat(coder_template, messages, tools=TOOLS)
    calls = ('<|im_start|>assistant\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'
             '\n<tool_call>\n{"name": "list_dir", "arguments": {}}\n</tool_call><|im_end|>\n')
    results = ("<|im_start|>user\n<tool_response>\nprint('hi')\n</tool_response>"
               "\n<tool_response>\na.py\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert calls + results in prompt
    # What the template writes as the model's turn is what the parser reads back.
    fmt = tool_format(coder_template)
    content, parsed = fmt.parse(calls[len("<|im_start|>assistant\n"):-len("<|im_end|>\n")])
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in parsed] == [
        ("read_file", {"path": "a.py"}), ("list_dir", {})]
    # chat_tokens hands the tools on: the prompt then holds the call marker as its one special token.
    (marker,) = coder.tokenize("<tool_call>", add_special=False)
    assert marker in chat_tokens(coder, messages[:1], tools=TOOLS)
    assert marker not in chat_tokens(coder, messages[:1])


def test_which_templates_take_tools(coder_template: str, target_path: Path) -> None:
    assert isinstance(tool_format(coder_template), HermesFormat)
    tiny = Model(target_path, ModelOptions(vocab_only=True)).chat_template()
    assert tiny and tool_format(tiny) is None
    assert tool_format(None) is None
    loop = "{% for m in messages %}{{ m.content }}{% endfor %}"
    tools = "{% if tools %}{{ tools|tojson }}{% endif %}"
    # A template that names a marker but never shows the tools does not take them (llama.cpp's probe).
    assert tool_format(loop + "{# <tool_call> #}") is None
    assert tool_format("{{ raise_exception('no') }}") is None
    for template, family in [
            (loop + tools + "<tool_call>", "hermes"),
            (loop + tools + "<|start_header_id|>ipython<|end_header_id|>", "llama3"),
            (loop + tools + "[TOOL_CALLS]", "mistral"),
            (loop + tools, "generic")]:
        assert tool_format(template).name == family
    assert tool_format(loop + tools + "<|start_header_id|>ipython<|end_header_id|><|python_tag|>").python_tag
    assert not tool_format(loop + tools + "<|start_header_id|>ipython<|end_header_id|>").python_tag
    assert tool_format(loop + tools + "[TOOL_CALLS][ARGS]").args_tag
    assert not tool_format(loop + tools + "[TOOL_CALLS]").args_tag


# -- parsers

HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS, GENERIC = (HermesFormat(), Llama3Format(python_tag=True),
                                                   MistralFormat(args_tag=False), MistralFormat(args_tag=True),
                                                   GenericFormat())
BIG = json.dumps({"path": "a.py", "text": 'def f(x):\n    return "}{" + x  # \\ "quoted"\n' * 5,
                  "n": [1, 2.5e3, None, True, {"deep": []}]}, ensure_ascii=False)

# (format, reply, content, [(name, arguments)]): arguments exactly as written.
CASES = [
    (HERMES, 'Let me look.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>',
     "Let me look.\n", [("read_file", '{"path": "a.py"}')]),
    (HERMES, f'<tool_call>\n{{"name": "write", "arguments": {BIG}}}\n</tool_call>\n<tool_call>\n'
             '{"arguments": {}, "name": "list_dir"}\n</tool_call>\n',
     "", [("write", BIG), ("list_dir", "{}")]),
    (HERMES, 'Tags look like <tool_call> or <tool_c and </tool_call>; <tool_call>{"nam": 1}</tool_call> <tool',
     'Tags look like <tool_call> or <tool_c and </tool_call>; <tool_call>{"nam": 1}</tool_call> <tool', []),
    (HERMES, '<tool_call>\n{"name": "ping"}\n</tool_call>\n\nDone.', "\n\nDone.", [("ping", "{}")]),
    (HERMES, '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', "", [("f", '{"a": 1}')]),
    # What small models write instead of the tags: a Markdown code block, tagged or not; a bare call first.
    (HERMES, '```json\n{\n  "name": "read_file",\n  "arguments": {\n    "path": "a.py"\n  }\n}\n```',
     "", [("read_file", '{\n    "path": "a.py"\n  }')]),
    (HERMES, 'Here:\n```json\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n```\nok',
     "Here:\n\nok", [("a", "{}")]),
    (HERMES, '{"name": "ls", "arguments": {"dir": "."}} {"name": "ls", "arguments": {}}',
     "", [("ls", '{"dir": "."}'), ("ls", "{}")]),
    (HERMES, 'Use:\n```python\nprint({"name": 1})\n```\n```json\n{"name": "Bob", "age": 3}\n```\n``',
     'Use:\n```python\nprint({"name": 1})\n```\n```json\n{"name": "Bob", "age": 3}\n```\n``', []),
    (LLAMA3, ' {"name": "read_file", "parameters": {"path": "a.py"}}', "", [("read_file", '{"path": "a.py"}')]),
    (LLAMA3, '{"type": "function", "name": "a", "parameters": {}}\n{"name": "b", "parameters": {"x": [1]}} ok',
     " ok", [("a", "{}"), ("b", '{"x": [1]}')]),
    (LLAMA3, 'Searching.<|python_tag|>brave_search.call(query="weather in Paris", n=3)',
     "Searching.", [("brave_search", '{"query": "weather in Paris", "n": 3}')]),
    (LLAMA3, '<|python_tag|>{"name": "f", "parameters": {"a": "<|python_tag|>"}}', "",
     [("f", '{"a": "<|python_tag|>"}')]),
    (LLAMA3, '{"answer": 42} is JSON, and so is {"name": "x", "parameters": {}}',
     '{"answer": 42} is JSON, and so is {"name": "x", "parameters": {}}', []),
    (MISTRAL, 'Sure.[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}, "id": "abc123XYZ"}, '
              '{"name": "b", "arguments": {"y": "]"}}]', "Sure.", [("a", '{"x": 1}'), ("b", '{"y": "]"}')]),
    (MISTRAL_ARGS, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]b[CALL_ID]a1B2c3D4e[ARGS]{}',
     "", [("get_weather", '{"city": "Paris"}'), ("b", "{}")]),
    (MISTRAL_ARGS, "[TOOL_CALL] is not [TOOL_CALLS]", "[TOOL_CALL] is not [TOOL_CALLS]", []),
    (GENERIC, '{"tool_calls": [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]}',
     "", [("a", '{"x": 1}'), ("b", "{}")]),
    (GENERIC, '{"tool_call": {"name": "a", "arguments": {"x": 1}}}', "", [("a", '{"x": 1}')]),
    (GENERIC, '{"response": "hi"}', '{"response": "hi"}', []),
]


def _calls(calls) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in calls]


def _streamed(fmt: ToolFormat, pieces: list[str]) -> tuple[str, list, list]:
    stream = fmt.stream()
    deltas = [d for p in pieces for d in stream.push(p)] + stream.finish()
    content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    return content, stream.calls, deltas


def _check_deltas(deltas: list, calls: list) -> None:
    """Each call: a first delta with its index, id and name, then its arguments' pieces and nothing else."""
    seen: dict[int, list[str]] = {}
    for d in deltas:
        if isinstance(d, CallDelta):
            if d.index not in seen:
                assert d.id and d.name and re.fullmatch(r"call_[A-Za-z0-9]{24}", d.id)
                seen[d.index] = [d.id, d.name, ""]
            else:
                assert d.id is None and d.name is None
            seen[d.index][2] += d.arguments
    assert [tuple(v) for v in seen.values()] == [(c.id, c.name, c.arguments) for c in calls]
    assert sorted(seen) == list(range(len(seen)))


@pytest.mark.parametrize("fmt,reply,content,calls", CASES, ids=[f"{c[0].name}-{i}" for i, c in enumerate(CASES)])
def test_parse(fmt: ToolFormat, reply: str, content: str, calls: list) -> None:
    got_content, got_calls = fmt.parse(reply)
    assert (got_content, _calls(got_calls)) == (content, calls)
    assert len({c.id for c in got_calls}) == len(got_calls)
    for c in got_calls:
        assert isinstance(json.loads(c.arguments), dict)


@pytest.mark.parametrize("fmt,reply,content,calls", CASES, ids=[f"{c[0].name}-{i}" for i, c in enumerate(CASES)])
def test_any_chunking_streams_what_parse_gives(fmt: ToolFormat, reply: str, content: str, calls: list) -> None:
    rng = random.Random(reply)
    for trial in range(25):
        if trial == 0:
            pieces = list(reply)  # a character at a time
        else:
            cuts = sorted(rng.sample(range(1, len(reply)), rng.randint(1, min(12, len(reply) - 1))))
            pieces = [reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)])]
        got_content, got_calls, deltas = _streamed(fmt, pieces)
        assert (got_content, _calls(got_calls)) == (content, calls), pieces
        _check_deltas(deltas, got_calls)


FRAGMENTS = ["<tool_call>", "</tool_call>", "```", "```json\n", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>",
             ".call(", "q=1)", '{"tool_calls": [', "]}", "[", "]", "{", "}", '"name": ', '"f"', '"arguments": ',
             '"parameters": ', "{}", '{"a": "x\\"y"}', ", ", "\n", " ", "text", '"', "\\", "<tool", "é"]


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS, GENERIC], ids=lambda f: repr(f))
def test_any_text_streams_what_parse_gives(fmt: ToolFormat) -> None:
    """Replies strung together from the families' markup at random: whatever they are, content and calls do
    not depend on how the text arrived, and every call's arguments are a JSON object."""
    rng = random.Random(fmt.name)
    args = ["{}", '{"path": "a.py"}', '{"t": "}{\\"\\n", "n": [1, {}]}']
    found = 0
    for _ in range(400):
        parts = [rng.choice(FRAGMENTS) if rng.random() < 0.7 else
                 _call_text(fmt, [(rng.choice(["f", "read_file"]), rng.choice(args))])
                 for _ in range(rng.randint(1, 8))]
        reply = "".join(parts)
        if rng.random() < 0.3:  # cut off anywhere, as max_tokens does
            reply = reply[:rng.randint(1, len(reply))]
        content, calls = fmt.parse(reply)
        found += len(calls)
        assert all(isinstance(json.loads(c.arguments), dict) for c in calls)
        cuts = sorted(rng.sample(range(1, len(reply)), min(len(reply) - 1, rng.randint(0, 8))))
        pieces = [reply[a:b] for a, b in zip([0, *cuts], [*cuts, len(reply)])]
        for chunks in (pieces, list(reply)):
            got, got_calls, deltas = _streamed(fmt, chunks)
            assert (got, _calls(got_calls)) == (content, _calls(calls)), chunks
    assert found > 100  # the replies did hold calls to find


def test_stream_holds_back_only_what_could_be_a_marker() -> None:
    s = HERMES.stream()
    assert s.push("I would use <tool") == [ContentDelta("I would use ")]
    assert s.push("s> here") == [ContentDelta("<tools> here")]
    assert s.push(" <tool_call>") == [ContentDelta(" ")]
    assert s.push('\n{"name": "read_') == []
    (head,) = s.push('file", ')
    assert (head.index, head.name, head.arguments) == (0, "read_file", "") and head.id
    assert s.push('"arguments": {"path": "a') == [CallDelta(0, arguments='{"path": "a')]
    assert s.push('.py"}}\n</tool_call>') == [CallDelta(0, arguments='.py"}')]
    assert s.calls and s.calls[0].arguments == '{"path": "a.py"}'
    assert s.finish() == []
    # Llama 3: only a reply that opens with "{" is held back, and only until it cannot be a call.
    s = LLAMA3.stream()
    assert s.push(" Hi {") == [ContentDelta(" Hi {")]
    s = LLAMA3.stream()
    assert s.push(' {"nam') == []
    assert s.push('ing": 1}') == [ContentDelta(' {"naming": 1}')]


def test_an_object_with_a_name_is_announced_only_once_arguments_follow() -> None:
    """Untagged, `{"name": ...}` may be any JSON (a package.json in a code block): no delta until the
    arguments' key shows it is a call."""
    for fmt, reply in [(HERMES, '```json\n{"name": "pkg", "version": "1.0"}\n```'),
                       (HERMES, '{"name": "Bob", "age": 3}'), (LLAMA3, '{"name": "Bob", "age": 3}')]:
        content, calls, deltas = _streamed(fmt, list(reply))
        assert (content, calls) == (reply, []) and all(isinstance(d, ContentDelta) for d in deltas)
    s = HERMES.stream()
    assert s.push('```json\n{"name": "read_file", ') == []
    head, piece = s.push('"arguments": {')
    assert (head.name, piece) == ("read_file", CallDelta(0, arguments="{"))
    # Tagged, the name is enough.
    s = HERMES.stream()
    assert s.push('<tool_call>{"name": "read_file", ')[0].name == "read_file"


@pytest.mark.parametrize("reply", [
    '<tool_call>\n{"name": "f", "arguments": {"a": tru}}\n</tool_call>',    # not JSON after all
    '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>',        # JSON, not an object
    '<tool_call>\n{"name": "f", "arguments": "{not json"}\n</tool_call>',   # a string, but not of an object
    '<tool_call>\n{"name": "f", "arguments": {"a": "cut off by max_tokens',  # the reply ends inside
])
def test_arguments_that_are_no_object_are_content(reply: str) -> None:
    """The call was announced while its arguments were arriving; it is no call, and its text is content."""
    content, calls, deltas = _streamed(HERMES, list(reply))
    assert content == reply and calls == []
    assert [(d.index, d.name) for d in deltas if isinstance(d, CallDelta) and d.name] == [(0, "f")]
    assert HERMES.parse(reply) == (reply, [])
    if reply.endswith("max_tokens"):
        return
    # In one piece, the call is taken back before anything of it is handed out.
    assert _streamed(HERMES, [reply]) == (reply, [], [ContentDelta(reply)])
    # A good call after a bad one is still a call: streamed, under an index of its own.
    both = reply + "\n" + '<tool_call>{"name": "g", "arguments": {}}</tool_call>'
    for pieces, index in ((list(both), 1), ([both], 0)):
        content, calls, deltas = _streamed(HERMES, pieces)
        assert content == reply + "\n" and _calls(calls) == [("g", "{}")]
        assert [d.index for d in deltas if isinstance(d, CallDelta) and d.name == "g"] == [index]


def test_control_characters_in_arguments_are_escaped() -> None:
    content, calls = HERMES.parse('<tool_call>{"name": "w", "arguments": {"text": "a\nb\tc"}}</tool_call>')
    assert calls[0].arguments == '{"text": "a\\nb\\tc"}' and json.loads(calls[0].arguments) == {"text": "a\nb\tc"}


# -- grammars


def _sampler(model: Model, gbnf: str):
    lib = load_llama()
    ptr = lib.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
    assert ptr, gbnf
    return lib, ptr


def _admits(model: Model, gbnf: str, text: str, special: bool = True) -> bool:
    """Whether the grammar takes *text*'s tokens one by one and then lets the reply end."""
    lib, ptr = _sampler(model, gbnf)
    one = (lib.llama_token_data * 1)()
    arr = lib.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)

    def allows(token: int) -> bool:
        one[0].id, one[0].logit = token, 0.0
        lib.llama_sampler_apply(ptr, ctypes.byref(arr))
        return math.isfinite(one[0].logit)

    try:
        for token in model.tokenize(text, add_special=False, parse_special=special):
            if not allows(token):
                return False
            lib.llama_sampler_accept(ptr, token)
        return allows(model.eos)
    finally:
        lib.llama_sampler_free(ptr)


def _call_text(fmt: ToolFormat, calls: list[tuple[str, str]]) -> str:
    """Calls written the way each family's grammar writes them."""
    if isinstance(fmt, MistralFormat) and fmt.args_tag:
        return "".join(f"[TOOL_CALLS]{n}[ARGS]{a}" for n, a in calls)
    one = [f'{{"name": "{n}", "{fmt._args_key}": {a}}}' for n, a in calls]
    if isinstance(fmt, HermesFormat):
        return "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in one)
    if isinstance(fmt, MistralFormat):
        return "[TOOL_CALLS][" + ", ".join(one) + "]"
    if isinstance(fmt, GenericFormat):
        return '{"tool_calls": [' + ", ".join(one) + "]}"
    return "\n".join(one)


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL, MISTRAL_ARGS, GENERIC], ids=lambda f: repr(f))
def test_grammar_admits_calls_and_nothing_else(coder: Model, fmt: ToolFormat) -> None:
    gbnf = fmt.grammar(TOOLS, None)
    good = [("read_file", '{"path": "a.py"}'), ("list_dir", '{"deep": [1, {"x": null}]}')]
    for calls in (good[:1], good):
        text = _call_text(fmt, calls)
        assert _admits(coder, gbnf, text), text
        assert _calls(fmt.parse(text)[1]) == calls  # what the grammar makes, the parser reads
    assert not _admits(coder, gbnf, _call_text(fmt, [("read_files", '{"path": "a.py"}')]))  # no such tool
    assert not _admits(coder, gbnf, _call_text(fmt, [("read_file", '{"file": "a.py"}')]))   # not its schema
    assert not _admits(coder, gbnf, "Sure, " + _call_text(fmt, good[:1]))                  # a call, not text
    assert not _admits(coder, gbnf, "")                                                     # at least one
    only = fmt.grammar(TOOLS, "list_dir")
    assert _admits(coder, only, _call_text(fmt, good[1:]))
    assert not _admits(coder, only, _call_text(fmt, good[:1]))


def test_hermes_grammar_takes_the_marker_as_the_model_writes_it(coder: Model) -> None:
    gbnf = HERMES.grammar(TOOLS, None)
    text = _call_text(HERMES, [("read_file", '{"path": "a.py"}')])
    assert _admits(coder, gbnf, text, special=True)   # <tool_call> as its one token
    assert _admits(coder, gbnf, text, special=False)  # or spelled out


def test_grammar_refuses_tools_it_cannot_convert() -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": 5}}}}}
    with pytest.raises(ToolsError) as e:
        HERMES.grammar([READ_FILE, bad], None)
    assert e.value.where == "tools.1.function.parameters.properties.x.pattern" and "'f'" in str(e.value)
    with pytest.raises(ToolsError) as e:
        HERMES.grammar(TOOLS, "nope")
    assert e.value.where == "tool_choice"
