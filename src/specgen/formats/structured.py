"""JSON output by grammar: any JSON object, or JSON that a JSON Schema describes, as GBNF for the engine.

The schema is converted by the converter that ships with llama-cpp-python; what it cannot convert, or
would convert into a grammar llama.cpp cannot take, is refused here with the part of the schema at fault.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Iterable

from ..errors import SpecgenError, kind_of, shorten

MAX_REPEAT = 1000
"""The largest count a schema may set (minLength, maxItems, a pattern's {m,n}...): the converter spells a
count out as that many nested rules, and llama.cpp refuses (or crashes on) a few thousand of them."""

# A grammar whose top rule ends in the converter's one optional space: nothing unbounded follows the closing
# brace, so once the object is complete the model can only end the reply.  It is what `schema_grammar`
# makes of {"type": "object"} (a test holds the two equal); written out so that importing this module
# does not load llama.cpp.
JSON_OBJECT_GRAMMAR = r'''array ::= "[" space ( value ("," space value)* )? "]" space
boolean ::= ("true" | "false") space
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])
decimal-part ::= [0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9])?)?)?)?)?)?)?)?)?)?)?)?)?)?)?
integral-part ::= [0-9] | [1-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9] ([0-9])?)?)?)?)?)?)?)?)?)?)?)?)?)?)?
null ::= "null" space
number ::= ("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space
object ::= "{" space ( string ":" space value ("," space string ":" space value)* )? "}" space
root ::= object
space ::= " "?
string ::= "\"" char* "\"" space
value ::= object | array | string | number | boolean | null'''

# JSON strings may not hold control characters unescaped; the converter's own rules let them through (a
# newline inside a string, and the reply no longer parses), so these replace its rules of the same names.
_STRICT_RULES = {
    "char": r'''[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])''',
    "dot": r'''[^"\\\x7F\x00-\x1F]''',
}

_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
# Where the converter looks for subschemas.
_ONE_SCHEMA = ("items", "additionalProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_DEFINITIONS = ("$defs", "definitions")


class SchemaError(SpecgenError):
    """A JSON Schema that cannot become a grammar; `where` is the path of the part at fault inside it
    (keys joined by dots, "" for the schema itself)."""

    def __init__(self, why: str, where: str):
        super().__init__(f"the JSON schema cannot be used{f' at {where}' if where else ''}: {why}")
        self.where = where


def schema_grammar(schema: object) -> str:
    """GBNF for JSON that *schema* describes; SchemaError naming the part that cannot be converted."""
    if not isinstance(schema, dict):
        raise SchemaError(f"a schema must be an object, not {kind_of(schema)}", "")
    try:
        # A copy of its own: the converter writes into the schema it reads (its $refs).
        schema = json.loads(json.dumps(schema, allow_nan=False))
    except RecursionError:
        raise SchemaError("it is nested too deeply", "") from None
    except (TypeError, ValueError) as e:
        raise SchemaError(f"it is not JSON ({shorten(e)})", "") from None
    paths: dict[int, str] = {}
    try:
        _check(schema, "", schema, paths)
    except RecursionError:
        raise SchemaError("it is nested too deeply", "") from None
    converter = _converter_class()(paths)
    try:
        converter.visit(converter.resolve_refs(schema, ""), "")
    except RecursionError:
        raise SchemaError("it is nested too deeply", "") from None
    except Exception as e:  # the converter's own complaints are asserts, KeyErrors, ValueErrors...
        why = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise SchemaError(f"the converter cannot handle it ({shorten(why)})", converter.where) from None
    converter.make_strict()
    return converter.format_grammar()


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _check(node: dict, path: str, root: dict, paths: dict[int, str]) -> None:
    """Refuse, with its path, what the converter would misread or choke on; note every subschema's path."""
    paths[id(node)] = path
    for key in _COUNTS:
        if key in node and not _count_ok(node[key]):
            raise SchemaError(f"{key} must be a whole number from 0 to {MAX_REPEAT}, not {shorten(node[key])}",
                              _join(path, key))
    if "pattern" in node:
        pattern = node["pattern"]
        if not isinstance(pattern, str):
            raise SchemaError(f"a pattern must be a string, not {kind_of(pattern)}", _join(path, "pattern"))
        for m in _QUANTIFIER.finditer(pattern):
            if not all(_count_ok(int(n)) for n in m.groups() if n):
                raise SchemaError(f"a repeat count above {MAX_REPEAT} ({m.group()}) is not supported",
                                  _join(path, "pattern"))
    if "required" in node and not (isinstance(node["required"], list)
                                   and all(isinstance(k, str) for k in node["required"])):
        raise SchemaError("required must be an array of property names", _join(path, "required"))
    if "enum" in node and not isinstance(node["enum"], list):
        raise SchemaError(f"enum must be an array, not {kind_of(node['enum'])}", _join(path, "enum"))
    if "$ref" in node:
        _check_ref(node["$ref"], root, _join(path, "$ref"))
    for key in _ONE_SCHEMA:
        if isinstance(node.get(key), dict):
            _check(node[key], _join(path, key), root, paths)
        elif key in node and not (key == "additionalProperties" and isinstance(node[key], bool)) \
                and not (key == "items" and isinstance(node[key], list)):
            raise SchemaError(f"a schema must be an object, not {kind_of(node[key])}", _join(path, key))
    for key in _SCHEMA_LISTS:
        if key in node and key != "items" and not isinstance(node[key], list):
            raise SchemaError(f"{key} must be an array of schemas, not {kind_of(node[key])}", _join(path, key))
        for i, sub in enumerate(node[key] if isinstance(node.get(key), list) else ()):
            _check_sub(sub, _join(_join(path, key), i), root, paths)
    if "properties" in node and not isinstance(node["properties"], dict):
        raise SchemaError(f"properties must be an object, not {kind_of(node['properties'])}",
                          _join(path, "properties"))
    for name, sub in node.get("properties", {}).items():
        _check_sub(sub, _join(_join(path, "properties"), name), root, paths)
    for key in _DEFINITIONS:  # read only through a $ref, which says so if it meets a definition that is no schema
        for name, sub in node[key].items() if isinstance(node.get(key), dict) else ():
            if isinstance(sub, dict):
                _check(sub, _join(_join(path, key), name), root, paths)


def _check_sub(sub: object, path: str, root: dict, paths: dict[int, str]) -> None:
    if not isinstance(sub, dict):
        raise SchemaError(f"a schema must be an object, not {kind_of(sub)}", path)
    _check(sub, path, root, paths)


def _count_ok(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_REPEAT


def _check_ref(ref: object, root: dict, where: str) -> None:
    """A $ref the converter can follow: a pointer into this schema (it fetches nothing), to a subschema."""
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise SchemaError(f"only references inside the schema ('#/...') are supported, not {shorten(ref)!r}",
                          where)
    target: object = root
    for part in ref[2:].split("/"):
        if not isinstance(target, dict) or part not in target:
            raise SchemaError(f"{shorten(ref)!r} points at nothing in the schema", where)
        target = target[part]
    if not isinstance(target, dict):
        raise SchemaError(f"{shorten(ref)!r} points at {kind_of(target)}, not a schema", where)


@functools.cache
def _converter_class() -> type:
    # Imported when first needed: llama_cpp loads llama.cpp's library on import.
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        """The converter, keeping the path of the subschema it is in, so that a failure can name it."""

        def __init__(self, paths: dict[int, str]):
            super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
            self._paths = paths
            self._at: list[str] = []

        @property
        def where(self) -> str:
            """The innermost part being converted (left in place by a failure, which skips the pops)."""
            return self._at[-1] if self._at else ""

        def visit(self, schema, name):
            self._at.append(self._paths.get(id(schema), self.where))
            out = super().visit(schema, name)
            self._at.pop()
            return out

        def _visit_pattern(self, pattern, name):
            self._at.append(_join(self.where, "pattern"))
            out = super()._visit_pattern(pattern, name)
            self._at.pop()
            return out

        def make_strict(self) -> None:
            for name, rule in _STRICT_RULES.items():
                if name in self._rules:
                    self._rules[name] = rule

    return Converter



def in_json_strings(texts: Iterable[str]) -> list[str]:
    """Each text that JSON writes otherwise, as it reads inside a JSON string.

    A reply that hands a file back as a tool call's argument (or a JSON field) writes every line break as
    `\\n` and every quote as `\\"`, so it shares no token with the file at any line end; the n-gram drafter
    copies such a reply from these instead.
    """
    out = []
    for text in texts:
        escaped = json.dumps(text, ensure_ascii=False)[1:-1]
        if escaped != text and escaped not in out:
            out.append(escaped)
    return out
