"""Tool calls in the markup each model family writes.

`tool_format(template)` reads which family a GGUF's chat template belongs to;
its `ToolFormat` turns a reply into text and calls, whole (`parse`) or as the
reply streams (`stream`), and writes the grammar that makes a model call.

The families, told apart by the template's text as llama.cpp's chat parser
tells them apart:
- hermes (Hermes 2/3, Qwen 2.5 and 3): `<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>`, one after another; also read (not written) in a
  Markdown code block, and untagged where the reply opens with one;
- llama3 (Llama 3.x): a reply that opens with `{"name": ..., "parameters":
  {...}}`, and, where the template knows `<|python_tag|>`, that tag before
  such calls or before a built-in tool's `name.call(key=value, ...)`;
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, and the
  newer `[TOOL_CALLS]name[ARGS]{...}` (the grammar writes the form the
  template writes);
- generic, for any other template that takes tools: a reply that is
  `{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}` (or one
  `"tool_call": {...}`).

The parsers read a character at a time, as far as the reply has arrived:
text that cannot be the start of a call goes out at once, a call is
announced as soon as its name is known (untagged, once its arguments are
known to follow), and its arguments go out as they arrive.  A call whose
arguments turn out not to be a JSON object (or that the reply cuts off) is
no call: its text is content, as llama.cpp keeps it.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Callable, Generator, Sequence

from ..errors import SpecgenError
from .structured import JSON_OBJECT_GRAMMAR, SchemaError, schema_grammar


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str
    """JSON text of an object, as the model wrote it (control characters inside strings escaped)."""


@dataclass
class ContentDelta:
    text: str


@dataclass
class CallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


Delta = ContentDelta | CallDelta


class ToolsError(SpecgenError):
    """Tools that cannot be made into a grammar; `where` is the path of the part at fault in the
    request ("tools.0.function.parameters.properties.x", keys joined by dots)."""

    def __init__(self, message: str, where: str):
        super().__init__(message)
        self.where = where


_ID_CHARS = string.ascii_letters + string.digits
_MAX_NAME = 128
"""The longest key or function name a call may have: text that goes on longer is no call, and is not
held back waiting to see."""
_SPACE = " \t\r\n"
_NL = "\n"
_WORD = frozenset(string.ascii_letters + string.digits + "_")
_NAME = _WORD | frozenset("-.:")


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


class _Fail(Exception):
    """What arrived cannot be the call being read: its text is content after all."""


Machine = Generator[None, None, None]


@dataclass
class _Call:
    id: str = field(default_factory=new_call_id)
    name: str | None = None
    index: int | None = None  # once announced
    args: list[str] = field(default_factory=list)


class ToolStream:
    """One reply's text as it arrives -> content and call deltas; `calls` holds the complete calls.

    Reading is a generator (the family's machine) that waits, by yielding, for more text where it
    cannot decide yet; each push runs it as far as the text allows.  A call found to be no call after
    its first deltas were handed out (arguments that end up no JSON object, a reply cut off inside
    them) is missing from `calls`, and its text comes as content; its index is not used again.
    """

    def __init__(self, machine: Callable[[ToolStream], Machine]) -> None:
        self.calls: list[ToolCall] = []
        self._buf = ""       # the reply so far
        self._cur = 0        # where reading stands in it
        self._mark = 0       # where the call being read started: content from there if it fails
        self._dropped = ""   # whitespace dropped before the marker at _mark, given back if it fails
        self._ended = False
        self._out: list[Delta] = []
        self._announced = 0  # indices handed out: never reused, a client must not see two calls under one
        self._open: _Call | None = None  # the call announced and being read
        self._gen: Machine | None = machine(self)

    def push(self, text: str) -> list[Delta]:
        if text:
            self._buf += text
            self._run()
        return self._take()

    def finish(self) -> list[Delta]:
        self._ended = True
        self._run()
        return self._take()

    def _run(self) -> None:
        if self._gen is not None:
            try:
                next(self._gen)
            except StopIteration:
                self._gen = None

    def _take(self) -> list[Delta]:
        out, self._out = self._out, []
        return out

    # -- output

    def _text(self, text: str) -> None:
        if text:
            if self._out and isinstance(self._out[-1], ContentDelta):
                self._out[-1].text += text
            else:
                self._out.append(ContentDelta(text))

    def _args(self, index: int, piece: str) -> None:
        if piece:
            last = self._out[-1] if self._out else None
            if isinstance(last, CallDelta) and last.index == index and last.name is None:
                last.arguments += piece
            else:
                self._out.append(CallDelta(index, arguments=piece))

    def _named(self, call: _Call, name: str) -> None:
        """The call's name is known: announce it (with what of its arguments came before it)."""
        if not name or len(name) > _MAX_NAME or call.name is not None:
            raise _Fail
        call.name, call.index = name, self._announced
        self._announced += 1
        self._open = call
        self._out.append(CallDelta(call.index, call.id, name))
        self._args(call.index, "".join(call.args))

    def _into(self, call: _Call) -> Callable[[str], None]:
        def take(piece: str) -> None:
            call.args.append(piece)
            if call.index is not None:
                self._args(call.index, piece)
        return take

    def _done(self, call: _Call) -> None:
        assert call.name is not None
        self.calls.append(ToolCall(call.id, call.name, "".join(call.args)))
        self._open = None

    # -- reading: generators that wait (yield) until enough of the reply is there to decide

    def _peek(self) -> Generator[None, None, str]:
        """The next character, not taken; "" at the end of the reply."""
        while self._cur >= len(self._buf):
            if self._ended:
                return ""
            yield
        return self._buf[self._cur]

    def _chars(self, chars: frozenset[str] | str, take: bool = True,
             limit: int | None = None) -> Generator[None, None, str]:
        """The run of *chars* that comes next (waiting to see where it ends), taken unless not *take*;
        longer than *limit*: no call."""
        start = i = self._cur
        while True:
            while i < len(self._buf) and self._buf[i] in chars:
                i += 1
            if limit is not None and i - start > limit:
                raise _Fail
            if i < len(self._buf) or self._ended:
                if take:
                    self._cur = i
                return self._buf[start:i]
            yield

    def _spaces(self) -> Generator[None, None, str]:
        """Takes the whitespace that comes next, and returns it."""
        return (yield from self._chars(_SPACE))

    def _ahead(self) -> Generator[None, None, str]:
        """The first character past the whitespace that comes next, nothing taken; "" at the end."""
        i = self._cur + len((yield from self._chars(_SPACE, take=False)))
        return self._buf[i] if i < len(self._buf) else ""

    def _word(self, chars: frozenset[str]) -> Generator[None, None, str]:
        """Takes a run of *chars* (a name), 1 to _MAX_NAME of them."""
        word = yield from self._chars(chars, limit=_MAX_NAME)
        if not word:
            raise _Fail
        return word

    def _literal(self, literal: str, optional: bool = False) -> Generator[None, None, bool]:
        """Takes *literal* if it comes next.  Missing: False if *optional*, else no call.  A reply that
        ends part way through an optional one has that part taken (it was markup)."""
        while True:
            have = self._buf[self._cur:self._cur + len(literal)]
            if have == literal or (optional and self._ended and have and literal.startswith(have)):
                self._cur += len(have)
                return True
            if not literal.startswith(have) or self._ended:
                if optional:
                    return False
                raise _Fail
            yield

    def _value(self, into: Callable[[str], None] | None = None,
               limit: int | None = None) -> Generator[None, None, str]:
        """Takes one JSON value and returns its text (control characters in strings escaped), handing
        it to *into* a piece at a time as it arrives.  Not a whole value: no call."""
        scan = _JsonScan(limit)
        pieces: list[str] = []
        while not scan.done:
            if self._cur >= len(self._buf):
                if not self._ended:
                    yield
                    continue
                if not scan.end():
                    raise _Fail
                break
            self._cur, piece = scan.feed(self._buf, self._cur)
            pieces.append(piece)
            if into is not None:
                into(piece)
        return "".join(pieces)

    def _key(self) -> Generator[None, None, str]:
        """Takes an object's `"key":` (whitespace around it too) and returns the key."""
        yield from self._spaces()
        key = yield from self._string()
        yield from self._spaces()
        yield from self._literal(":")
        yield from self._spaces()
        return key

    def _string(self) -> Generator[None, None, str]:
        """Takes a short JSON string (a key, a name) and returns it decoded."""
        if (yield from self._peek()) != '"':
            raise _Fail
        return _loads((yield from self._value(limit=_MAX_NAME + 2)), str)

    def _arguments(self, call: _Call) -> Generator[None, None, None]:
        """Takes a call's arguments: an object, handed on as it arrives, or (as some models write
        them) a string holding one, handed on whole once it is known to hold one."""
        c = yield from self._peek()
        if c == "{":
            _loads((yield from self._value(self._into(call))), dict)
        elif c == '"':
            text = _loads((yield from self._value()), str)
            _loads(text, dict)
            self._into(call)(text)
        else:
            raise _Fail

    def _call_object(self, arg_keys: tuple[str, ...], sure: bool = True) -> Generator[None, None, None]:
        """Takes `{"name": ..., <one of arg_keys>: {...}}`: keys in any order, "type" and "id" passed
        over, arguments left out read as none.  The call is announced once its name is known, or,
        unless markup made it *sure* to be a call, once its arguments are known to follow too (an
        object that merely has a "name" is announced to nobody)."""
        if (yield from self._peek()) != "{":
            raise _Fail
        self._cur += 1
        call = _Call()
        name: str | None = None
        has_args = False
        while True:
            key = yield from self._key()
            if key == "name" and name is None:
                name = yield from self._string()
                if sure or has_args:
                    self._named(call, name)
            elif key in arg_keys and not has_args:
                has_args = True
                if name is not None and call.name is None:
                    self._named(call, name)
                yield from self._arguments(call)
            elif key in ("type", "id"):
                yield from self._value(limit=_MAX_NAME)
            else:
                raise _Fail
            yield from self._spaces()
            c = yield from self._peek()
            self._cur += 1
            if c == "}":
                break
            if c != ",":
                raise _Fail
        if name is None:
            raise _Fail
        if call.name is None:
            self._named(call, name)
        if not has_args:
            self._into(call)("{}")
        self._done(call)

    def _json_calls(self, arg_keys: tuple[str, ...], sure: bool) -> Generator[None, None, str]:
        """Call objects one after another, whitespace between; returns the whitespace after the last.
        One that fails is content from its start."""
        while True:
            try:
                yield from self._spaces()
                yield from self._call_object(arg_keys, sure)
            except _Fail:
                self._revert()
                return ""
            lead = yield from self._spaces()
            if (yield from self._peek()) != "{":
                return lead
            self._mark, self._dropped = self._cur, lead

    def _call_list(self, arg_keys: tuple[str, ...]) -> Generator[None, None, None]:
        """Takes call objects separated by commas, up to and with the closing bracket (which a reply
        may leave out: the calls before it stand).  A call that fails is content from its start."""
        while True:
            yield from self._spaces()
            yield from self._call_object(arg_keys)
            gap = yield from self._spaces()
            at = self._cur
            if not (yield from self._literal(",", optional=True)):
                break
            self._mark, self._dropped = at, gap
        yield from self._literal("]", optional=True)

    # -- content

    def _content(self, markers: Sequence[str], lead: str = "") -> Generator[None, None, bool]:
        """Hands on text as content up to the next of *markers*, holding back only what could still
        be the start of one.  True: a marker was taken (_mark is where it starts); False: the end.
        *lead* (whitespace after a call) goes out before any text, and is dropped if a marker or the
        end comes first."""
        while True:
            buf, i = self._buf, self._cur
            at, marker = _find_marker(buf, i, markers)
            if at is not None:
                self._dropped = "" if at > i else lead
                self._text(lead + buf[i:at] if at > i else "")
                self._mark, self._cur = at, at + len(marker)
                return True
            end = len(buf) if self._ended else len(buf) - len(marker)
            if end > i:
                self._text(lead + buf[i:end])
                lead = ""
            self._cur = end
            if self._ended:
                return False
            yield

    def _revert(self) -> None:
        """What was read from _mark on was no call: its first character is content, and reading goes
        on as content from the next (where another call may start).  A call announced in deltas not
        handed out yet is taken back from them; one already handed out stays announced."""
        call, self._open = self._open, None
        if call is not None and any(d.index == call.index and d.name for d in self._out
                                    if isinstance(d, CallDelta)):
            self._out = [d for d in self._out if not (isinstance(d, CallDelta) and d.index == call.index)]
            self._announced -= 1
        if self._mark < len(self._buf):
            self._text(self._dropped + self._buf[self._mark])
        self._cur, self._dropped = self._mark + 1, ""


def _find_marker(buf: str, i: int, markers: Sequence[str]) -> tuple[int | None, str]:
    """(where the first whole marker in buf[i:] starts, that marker), or (None, the tail of buf that
    is the start of a marker and must wait for more)."""
    best: tuple[int, str] | None = None
    for m in markers:
        at = buf.find(m, i)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, m)
    if best is not None:
        return best
    longest = max((len(m) for m in markers), default=1)
    for k in range(max(i, len(buf) - longest + 1), len(buf)):
        if any(m.startswith(buf[k:]) for m in markers):
            return None, buf[k:]
    return None, ""


def _loads(text: str, kind: type) -> object:
    try:
        value = json.loads(text)
    except ValueError:
        raise _Fail from None
    if not isinstance(value, kind):
        raise _Fail
    return value


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_SCALAR = frozenset(string.ascii_letters + string.digits + "+-.")


class _JsonScan:
    """Where one JSON value ends, fed a piece at a time: tracks strings, escapes and depth, and leaves
    judging the text to json.loads once it is whole.  Control characters inside strings, which JSON
    forbids and small models write anyway (a file's lines), come out escaped."""

    def __init__(self, limit: int | None = None) -> None:
        self.kind = ""  # "nest" (object or array), "string" or "scalar", once the first character is in
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.done = False
        self.length = 0
        self.limit = limit

    def feed(self, buf: str, i: int) -> tuple[int, str]:
        """Scans buf from *i* (not at its end); returns (where it stopped, the text taken)."""
        start = i
        out: list[str] = []
        if not self.kind:
            c = buf[i]
            if c in "{[":
                self.kind = "nest"
            elif c == '"':
                self.kind, self.in_string = "string", True
                i += 1
            elif c in _SCALAR:
                self.kind = "scalar"
            else:
                raise _Fail
        seg = start
        n = len(buf)
        while i < n:
            c = buf[i]
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
                    if self.kind == "string":
                        i += 1
                        self.done = True
                        break
                elif c < " ":
                    out.append(buf[seg:i])
                    out.append(_ESCAPES.get(c) or f"\\u{ord(c):04x}")
                    seg = i + 1
            elif self.kind == "scalar":
                if c not in _SCALAR:
                    self.done = True
                    break
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    i += 1
                    self.done = True
                    break
            i += 1
        out.append(buf[seg:i])
        self.length += i - start
        if self.limit is not None and self.length > self.limit:
            raise _Fail
        return i, "".join(out)

    def end(self) -> bool:
        """The reply ended: whole only if a scalar was being read (it ends where anything else starts)."""
        self.done = self.done or (self.kind == "scalar")
        return self.done


# -- the families


class ToolFormat:
    """A model family's tool-call markup."""

    name = ""
    separator = "\n"
    """What the grammar puts between two calls."""
    _args_key = "arguments"
    """The key the grammar writes a call's arguments under."""

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """A whole reply -> (its content without call markup, its calls)."""
        stream = self.stream()
        deltas = stream.push(text) + stream.finish()
        return "".join(d.text for d in deltas if isinstance(d, ContentDelta)), stream.calls

    def stream(self) -> ToolStream:
        return ToolStream(self._machine)

    def grammar(self, tools: Sequence[dict], only: str | None = None, many: bool = True) -> str:
        """GBNF (root rule "root") for one or more calls (exactly one unless *many*) in this family's
        markup, of the function named *only* when given, each call's arguments as its tool's `parameters`
        schema says (any object when it has none).  ToolsError for a schema that cannot be converted."""
        calls = []
        rules = []
        for i, (name, params) in enumerate(_functions(tools, only)):
            args = f"t{i}-root"
            rules.append(_prefixed(_args_grammar(params, i, name), f"t{i}-"))
            calls.append(self._call_rule(name, args))
        head = [f"root ::= {self._root_rule('tool-call', many)}", f"tool-call ::= {' | '.join(calls)}"]
        return "\n".join(head + rules)

    def _call_rule(self, name: str, args: str) -> str:
        head = '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "' + self._args_key + '": '
        return f'{_gbnf(head)} {args} "}}"'

    def _root_rule(self, call: str, many: bool) -> str:
        return f"{call} ({_gbnf(self.separator)} {call})*" if many else call

    def _machine(self, s: ToolStream) -> Machine:
        raise NotImplementedError

    @staticmethod
    def _marked(s: ToolStream, markers: Sequence[str], block: Callable[[ToolStream], Generator[None, None, str]],
                lead: str = "") -> Machine:
        """Content, and after each of *markers* the calls that *block* reads (returning the whitespace
        after them); text that *block* finds is no call is content after all."""
        while (yield from s._content(markers, lead)):
            try:
                lead = yield from block(s)
            except _Fail:
                s._revert()
                lead = ""

    def __repr__(self) -> str:
        return f"<ToolFormat {self.name}>"


class HermesFormat(ToolFormat):
    """Reads, besides the tagged calls, what small models write instead (llama.cpp reads them too): a
    call in a Markdown code block (```json), tagged or not, and a reply that opens with one untagged."""

    name = "hermes"
    OPEN, CLOSE, FENCE = "<tool_call>", "</tool_call>", "```"
    ARG_KEYS = ("arguments", "parameters")
    FENCE_LANGUAGES = ("", "json", "xml")

    def _call_rule(self, name: str, args: str) -> str:
        return f"{_gbnf(self.OPEN + _NL)} {super()._call_rule(name, args)} {_gbnf(_NL + self.CLOSE)}"

    def _machine(self, s: ToolStream) -> Machine:
        lead = ""
        if (yield from s._ahead()) == "{":
            lead = yield from s._json_calls(self.ARG_KEYS, sure=False)
        yield from self._marked(s, (self.OPEN, self.FENCE), self._block, lead)

    def _block(self, s: ToolStream) -> Generator[None, None, str]:
        fenced = s._buf.startswith(self.FENCE, s._mark)
        tagged = not fenced
        if fenced:
            if (yield from s._chars(_WORD, limit=len("json"))) not in self.FENCE_LANGUAGES:
                raise _Fail
            yield from s._spaces()
            tagged = yield from s._literal(self.OPEN, optional=True)
        yield from s._spaces()
        yield from s._call_object(self.ARG_KEYS, sure=tagged)
        yield from s._spaces()
        if tagged:
            yield from s._literal(self.CLOSE, optional=True)
        if fenced:
            yield from s._spaces()
            yield from s._literal(self.FENCE, optional=True)
        return (yield from s._spaces())


class Llama3Format(ToolFormat):
    name = "llama3"
    PYTHON_TAG = "<|python_tag|>"
    ARG_KEYS = ("parameters", "arguments")
    _args_key = "parameters"

    def __init__(self, python_tag: bool) -> None:
        self.python_tag = python_tag

    def _machine(self, s: ToolStream) -> Machine:
        # llama.cpp looks for a JSON call only where the reply starts; the tag anywhere.
        lead = ""
        if (yield from s._ahead()) == "{":
            lead = yield from s._json_calls(self.ARG_KEYS, sure=False)
        yield from self._marked(s, (self.PYTHON_TAG,) if self.python_tag else (), self._tagged, lead)

    def _tagged(self, s: ToolStream) -> Generator[None, None, str]:
        if (yield from s._ahead()) == "{":
            return (yield from s._json_calls(self.ARG_KEYS, sure=True))
        yield from self._builtin(s)
        return (yield from s._spaces())

    def _builtin(self, s: ToolStream) -> Machine:
        """A built-in tool's `name.call(key=value, ...)`: its arguments go out whole at the `)`."""
        yield from s._spaces()
        name = yield from s._word(_WORD)
        yield from s._literal(".call(")
        call = _Call()
        s._named(call, name)
        args = {}
        yield from s._spaces()
        if not (yield from s._literal(")", optional=True)):
            while True:
                yield from s._spaces()
                key = yield from s._word(_WORD)
                yield from s._spaces()
                yield from s._literal("=")
                yield from s._spaces()
                args[key] = _loads((yield from s._value()), object)
                yield from s._spaces()
                if (yield from s._literal(")", optional=True)):
                    break
                yield from s._literal(",")
        s._into(call)(json.dumps(args, ensure_ascii=False))
        s._done(call)


class MistralFormat(ToolFormat):
    name = "mistral"
    TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
    separator = ", "

    def __init__(self, args_tag: bool) -> None:
        self.args_tag = args_tag
        """The template writes `[TOOL_CALLS]name[ARGS]{...}`: the grammar makes the model write that."""

    def _call_rule(self, name: str, args: str) -> str:
        if self.args_tag:
            return f"{_gbnf(self.TOOL_CALLS + name + self.ARGS)} {args}"
        return super()._call_rule(name, args)

    def _root_rule(self, call: str, many: bool) -> str:
        if self.args_tag:
            return f"{call}+" if many else call
        return f'{_gbnf(self.TOOL_CALLS + "[")} {super()._root_rule(call, many)} "]"'

    def _machine(self, s: ToolStream) -> Machine:
        return self._marked(s, (self.TOOL_CALLS,), self._block)

    def _block(self, s: ToolStream) -> Generator[None, None, str]:
        yield from s._spaces()
        if (yield from s._literal("[", optional=True)):
            yield from s._call_list(("arguments",))
        else:
            yield from self._tagged(s)
        return (yield from s._spaces())

    def _tagged(self, s: ToolStream) -> Machine:
        """`name[ARGS]{...}`, or `name[CALL_ID]id[ARGS]{...}` as some templates write it."""
        name = yield from s._word(_NAME)
        if (yield from s._literal(self.CALL_ID, optional=True)):
            yield from s._word(_WORD)
        yield from s._literal(self.ARGS)
        call = _Call()
        s._named(call, name)
        yield from s._spaces()
        yield from s._arguments(call)
        s._done(call)


class GenericFormat(ToolFormat):
    name = "generic"
    separator = ", "
    OPEN, CLOSE = '{"tool_calls": [', "]}"

    def _root_rule(self, call: str, many: bool) -> str:
        return f"{_gbnf(self.OPEN)} {super()._root_rule(call, many)} {_gbnf(self.CLOSE)}"

    def _machine(self, s: ToolStream) -> Machine:
        lead = ""
        if (yield from s._ahead()) == "{":
            try:
                yield from s._spaces()
                yield from s._literal("{")
                key = yield from s._key()
                if key == "tool_calls":
                    yield from s._literal("[")
                    yield from s._call_list(("arguments",))
                elif key == "tool_call":
                    yield from s._call_object(("arguments",))
                else:
                    raise _Fail
                yield from s._spaces()
                yield from s._literal("}", optional=True)
                lead = yield from s._spaces()
            except _Fail:
                s._revert()
        yield from s._content((), lead)


# -- grammar helpers


def _functions(tools: Sequence[dict], only: str | None) -> list[tuple[str, object]]:
    """(name, parameters) of each function tool, or of the one named *only*."""
    found = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ToolsError(f"tools[{i}] is not a function tool with a name", f"tools.{i}")
        if only is None or fn["name"] == only:
            found.append((fn["name"], fn.get("parameters")))
    if not found:
        raise ToolsError(f"no tool is named {only!r}" if only is not None else "no tools to call",
                         "tool_choice" if only is not None else "tools")
    return found


def _args_grammar(params: object, i: int, name: str) -> str:
    if params is None or params == {}:
        return JSON_OBJECT_GRAMMAR
    try:
        return schema_grammar(params)
    except SchemaError as e:
        where = f"tools.{i}.function.parameters" + (f".{e.where}" if e.where else "")
        raise ToolsError(f"tool {name!r}: {e}", where) from None


# A rule body's parts: literals, character classes and repeat counts are left alone, names are renamed.
_GBNF_PART = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[^}]*\}|([a-zA-Z0-9-]+)|.', re.S)


def _prefixed(grammar: str, prefix: str) -> str:
    """*grammar* with every rule renamed to prefix + name, so that several can stand in one."""
    out = []
    for line in grammar.splitlines():
        name, _, body = line.partition(" ::= ")
        body = _GBNF_PART.sub(lambda m: prefix + m.group() if m.group(1) else m.group(), body)
        out.append(f"{prefix}{name} ::= {body}")
    return "\n".join(out)


def _gbnf(text: str) -> str:
    """*text* as a GBNF literal."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c in "\n\r\t":
            out.append(_ESCAPES[c])
        elif c < " " or c == "\x7f":
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


# -- which family

_PROBE_NAME = "specgen_probe_function"
_PROBE = [{"type": "function", "function": {
    "name": _PROBE_NAME, "description": "Looks something up.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]


@functools.lru_cache(maxsize=8)
def tool_format(template: str | None) -> ToolFormat | None:
    """The tool-call markup of the model whose chat template this is; None when the template does not
    take tools (rendered with one, the tool is nowhere in the prompt: llama.cpp's test)."""
    from ..llama.chat_template import TemplateError, render_chat

    if not template:
        return None
    try:
        prompt = render_chat(template, [{"role": "user", "content": "What is the weather?"}], tools=_PROBE)
    except TemplateError:
        return None
    if _PROBE_NAME not in prompt:
        return None
    if "<tool_call>" in template:
        return HermesFormat()
    if "<|start_header_id|>ipython<|end_header_id|>" in template:
        return Llama3Format(python_tag="<|python_tag|>" in template)
    if "[TOOL_CALLS]" in template:
        return MistralFormat(args_tag="[ARGS]" in template)
    return GenericFormat()
