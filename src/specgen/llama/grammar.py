"""A GBNF grammar's state over a model's vocabulary: llama.cpp's grammar sampler, asked about tokens.

The engine never lets the sampler pick a token: it asks which candidates the grammar allows (one token,
or a batch of them), decides itself, and then tells the grammar what was emitted.  Asking about one token
costs microseconds; about the whole vocabulary, milliseconds, which is why nothing here does that unless
asked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
import threading
from typing import Iterator, Sequence

import numpy as np

from ..errors import ModelFault, SpecgenError, shorten
from .backend import Model, _Owned
from .loader import load_llama

ROOT = "root"
"""The rule a grammar's text starts from."""

MAX_NESTING = 1000
"""Parentheses nested deeper than this are refused: llama.cpp parses them recursively and, some ten
thousand deep, overflows its stack and takes the process down."""


class GrammarError(SpecgenError):
    """Grammar text llama.cpp cannot use."""


# The layout of llama_token_data, so that a batch of candidates is filled and read as one numpy array.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])

# llama.cpp prints a grammar's syntax error straight to stderr (not through its quietened log), followed by
# the whole grammar text; the reason is taken from it for our own one-line error.
_PARSE_ERROR = re.compile(r"[^\n]*error parsing grammar: ([^\n]*)\n\n")
_stderr_lock = threading.Lock()


class Grammar(_Owned):
    """Where generation stands in a grammar: which tokens may come next, and the tokens so far."""

    def __init__(self, model: Model, gbnf: str):
        """Parse *gbnf* (it starts from its rule `root`) for *model*'s vocabulary; GrammarError when llama.cpp
        cannot."""
        self._setup(model, [np.zeros(0, _TOKEN_DATA)])
        # llama.cpp takes empty text for "no grammar", which would allow everything.
        if not gbnf.strip():
            raise GrammarError("the grammar is empty")
        try:
            text = gbnf.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, from a JSON "\ud800" escape
            raise GrammarError(f"the grammar holds {gbnf[e.start]!r}, which is not a character") from None
        if b"\0" in text:  # C reads the text only up to it
            raise GrammarError("the grammar holds a NUL character")
        if _nesting(gbnf) > MAX_NESTING:
            raise GrammarError(f"the grammar nests parentheses more than {MAX_NESTING} deep")
        with _stderr_caught() as said:
            self.ptr = self._lib.llama_sampler_init_grammar(model.vocab, text, ROOT.encode())
        reason, rest = _parse_error(said[0] if said else "", gbnf)
        if rest.strip():  # not ours to swallow: another thread's message, written meanwhile
            sys.stderr.write(rest)
        if not self.ptr:
            raise GrammarError(f"the grammar is not valid GBNF: {reason or _guess(gbnf)}")

    def _setup(self, model: Model, scratch: list) -> None:
        self._lib = load_llama()
        if ctypes.sizeof(self._lib.llama_token_data) != _TOKEN_DATA.itemsize:  # llama.cpp would write past it
            raise ModelFault("this llama-cpp-python lays out llama_token_data in a way specgen does not know")
        self.model = model
        # One buffer of candidates shared by a grammar and its clones, which the engine uses in turn on
        # one thread: a clone per step must not allocate a vocabulary's worth of memory.
        self._scratch = scratch
        self._one = np.zeros(1, _TOKEN_DATA)
        self._one_array = self._array(self._one, 1)

    def _free(self) -> None:
        self._lib.llama_sampler_free(self.ptr)

    def _array(self, buf: np.ndarray, n: int):
        return self._lib.llama_token_data_array(
            data=buf.ctypes.data_as(ctypes.POINTER(self._lib.llama_token_data)), size=n, selected=-1, sorted=False)

    def clone(self) -> Grammar:
        """An independent copy of this state (to walk ahead of it)."""
        twin = Grammar.__new__(Grammar)
        twin._setup(self.model, self._scratch)
        twin.ptr = self._lib.llama_sampler_clone(self.ptr)
        return twin

    def allows(self, token: int) -> bool:
        """Whether *token* may come next; end-of-generation only once the grammar is complete."""
        if not 0 <= token < self.model.n_vocab:  # a draft model's padding id: llama.cpp would abort on it
            return False
        self._one[0] = (token, 0.0, 0.0)
        self._lib.llama_sampler_apply(self.ptr, ctypes.byref(self._one_array))
        return bool(np.isfinite(self._one[0]["logit"]))

    def allowed(self, tokens: np.ndarray) -> np.ndarray:
        """Which of *tokens* may come next, a bool each, asked in one pass."""
        n = len(tokens)
        if n == 1:
            return np.array([self.allows(int(tokens[0]))])
        if len(self._scratch[0]) < n:
            self._scratch[0] = np.zeros(max(n, self.model.n_vocab), _TOKEN_DATA)
        buf = self._scratch[0]
        buf["id"][:n] = tokens
        buf["logit"][:n] = 0.0
        self._lib.llama_sampler_apply(self.ptr, ctypes.byref(self._array(buf, n)))
        return np.isfinite(buf["logit"][:n])

    def accept(self, token: int) -> None:
        """Move past *token*, which must be allowed: llama.cpp aborts the process on one that is not."""
        if not self.allows(token):
            raise GrammarError(f"token {token} ({shorten(self.model.piece(token))}) is not allowed here")
        self._lib.llama_sampler_accept(self.ptr, token)

    def advance(self, tokens: Sequence[int]) -> None:
        """Move past *tokens*, as emitted; the reply ends at an end-of-generation token, so it is not checked
        (the grammar may have had nothing else to allow)."""
        for tok in tokens:
            if not self.model.is_eog(tok):
                self.accept(tok)

    def valid_prefix(self, tokens: Sequence[int]) -> int:
        """How many of *tokens*, from the first, the grammar allows in turn from here (this state unchanged)."""
        if not tokens:
            return 0
        walker = self.clone()
        try:
            for i, tok in enumerate(tokens):
                if not walker.allows(tok):
                    return i
                self._lib.llama_sampler_accept(walker.ptr, tok)
            return len(tokens)
        finally:
            walker.close()


@contextlib.contextmanager
def _stderr_caught() -> Iterator[list[str]]:
    """What is written to file descriptor 2 inside the block, kept from the terminal (the one list item, on
    exit); SPECGEN_LLAMA_LOG=1 lets it through, as it does llama.cpp's log."""
    said: list[str] = []
    if os.environ.get("SPECGEN_LLAMA_LOG"):
        yield said
        return
    with _stderr_lock:  # two threads swapping descriptor 2 at once could each restore the other's
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no stderr to quieten
            yield said
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield said
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                said.append(tmp.read().decode("utf-8", "replace"))


def _nesting(gbnf: str) -> int:
    """How deep *gbnf*'s parentheses nest, those in literals, character classes and comments aside."""
    deepest = depth = 0
    quote = None  # the character that closes the literal or class we are in
    i = 0
    while i < len(gbnf):
        c = gbnf[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"[":
            quote = "]" if c == "[" else c
        elif c == "#":
            i = gbnf.find("\n", i)
            if i < 0:
                break
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def _parse_error(said: str, gbnf: str) -> tuple[str | None, str]:
    """llama.cpp's reason for refusing *gbnf*, if it printed one in *said*, and the rest of *said*."""
    m = _PARSE_ERROR.search(said)
    if not m:
        return None, said
    return shorten(m.group(1), 160), said[:m.start()] + said[m.end():].replace(gbnf + "\n", "", 1)


def _guess(gbnf: str) -> str:
    """Why llama.cpp refused *gbnf* without printing why (it logs these, and its log is quiet)."""
    if not re.search(rf"^\s*{ROOT}\s*::=", gbnf, re.MULTILINE):
        return f"it has no rule named '{ROOT}'"
    return "llama.cpp refused it (a left-recursive rule?)"
