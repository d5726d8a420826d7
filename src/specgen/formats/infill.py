"""Fill in the middle: an editor's code before and after the cursor, as the prompt a code model was trained on.

A FIM model reads `<PRE>prefix<SUF>suffix<MID>` and writes what goes between,
ending with an end-of-generation token.  Code from other files (an editor's
open buffers, its recent edits) goes before it in the repository-level layout
the Qwen2.5-Coder family was trained on, and llama-server sends:

    <REP>myproject\\n<SEP>path/a.py\\ncode of a<SEP>path/b.py\\ncode of b<SEP>filename\\n<PRE>...

The tokens come from the GGUF (llama.cpp's `llama_vocab_fim_*`); a model that
names none cannot fill in the middle.  An editor's text is tokenized with
special tokens as plain text: code that spells `<|fim_prefix|>` must not
restructure the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import SpecgenError
from ..llama.backend import Model

REPO_NAME = "myproject"
"""The repository's name in the layout: llama-server's, so a prompt cached for it reads the same here."""
CURRENT_FILE = "filename"
"""The name the file being edited is given after the other files (llama-server's placeholder)."""


class NoInfill(SpecgenError):
    """The model's vocabulary has no fill-in-the-middle tokens."""


@dataclass(frozen=True)
class Chunk:
    """Code from another file, shown to the model before the file being edited."""
    filename: str
    text: str


@dataclass(frozen=True)
class Infill:
    prefix: str
    """The code before the cursor."""
    suffix: str
    """The code after the cursor."""
    extra: tuple[Chunk, ...] = ()
    typed: str = ""
    """Text after the prefix that the model is to continue (llama-server's `prompt`), read with its special
    tokens."""


def fim_tokens(model: Model) -> tuple[int, int, int]:
    """The model's (prefix, suffix, middle) tokens, or NoInfill naming what it lacks."""
    roles = {"prefix": model.fim_token("pre"), "suffix": model.fim_token("suf"), "middle": model.fim_token("mid")}
    missing = [name for name, token in roles.items() if token is None]
    if missing:
        raise NoInfill(f"{model.path.name} cannot fill in the middle: its vocabulary has no "
                       f"{', '.join(missing)} token{'s' if len(missing) > 1 else ''} (FIM); serve a code model "
                       "trained for infill, such as Qwen2.5-Coder")
    return roles["prefix"], roles["suffix"], roles["middle"]


def infill_tokens(model: Model, request: Infill, budget: int | None = None) -> list[int]:
    """The prompt for *request*, at most *budget* tokens where it can be cut to that.

    What goes first when a prompt is too long: the other files' code, oldest first (the start of the
    chunks), then the prefix's start and the suffix's end, which are furthest from the cursor.
    """
    pre, suf, mid = fim_tokens(model)

    def plain(text: str) -> list[int]:
        return model.tokenize(text, add_special=False, parse_special=False)

    extra: list[int] = []
    rep, sep = model.fim_token("rep"), model.fim_token("sep")
    if request.extra:
        if rep is not None:
            extra += [rep, *plain(f"{REPO_NAME}\n")]
        for chunk in request.extra:
            extra += [sep, *plain(f"{chunk.filename}\n")] if sep is not None else plain("\n\n--- snippet ---\n\n")
            extra += plain(chunk.text)
        if sep is not None:
            extra += [sep, *plain(f"{CURRENT_FILE}\n")]
    prefix = plain(request.prefix)
    suffix = plain(request.suffix)
    typed = model.tokenize(request.typed, add_special=False, parse_special=True) if request.typed else []
    head = [model.bos] if model.add_bos else []
    if budget is not None:
        room = budget - (len(head) + 3 + len(typed))
        if len(extra) + len(prefix) + len(suffix) > room:
            extra = extra[max(0, len(extra) - max(0, room - len(prefix) - len(suffix))):]
        if len(prefix) + len(suffix) > room:
            # Three parts before the cursor to one after it (llama-server's split), unless one side needs less.
            keep_suffix = max(0, min(len(suffix), max(room // 4, room - len(prefix))))
            keep_prefix = max(0, room - keep_suffix)
            prefix, suffix = prefix[max(0, len(prefix) - keep_prefix):], suffix[:keep_suffix]
    return [*head, *extra, pre, *prefix, *typed, suf, *suffix, mid]


def parse_extra(value: object, where: str) -> tuple[Chunk, ...]:
    """llama-server's `input_extra`: a list of {"filename": str (optional), "text": str}."""
    if value is None:
        return ()
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise SpecgenError(f'{where} must be a list of {{"filename": string, "text": string}} objects')
    chunks = []
    for i, chunk in enumerate(value):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise SpecgenError(f'{where}[{i}] must be an object with a "text" string (and a "filename" string)')
        name = chunk.get("filename", "tmp")
        if not isinstance(name, str):
            raise SpecgenError(f'{where}[{i}].filename must be a string')
        chunks.append(Chunk(name, chunk["text"]))
    return tuple(chunks)


__all__ = ["Chunk", "Infill", "NoInfill", "fim_tokens", "infill_tokens", "parse_extra"]
