"""Can this draft model draft for this target?  llama.cpp's rules, clearer errors.

Mirrors `common_speculative_are_compatible`: same vocabulary type, same BOS/EOS
handling, vocabulary sizes within 128 (Qwen pads some sizes), and identical
token texts from id 5 on.  The error names the first token that differs.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecgenError
from .backend import Model, ModelOptions

VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START_TOKEN_ID = 5


class IncompatiblePair(SpecgenError):
    pass


# llama.cpp's enum llama_vocab_type
_VOCAB_KINDS = {0: "no vocabulary", 1: "SentencePiece (SPM)", 2: "byte-level BPE", 3: "WordPiece",
                4: "Unigram (T5)", 5: "RWKV", 6: "PLaMo-2"}


def _vocab_kind(code: int) -> str:
    return _VOCAB_KINDS.get(code, f"vocabulary type {code}")


def check_compatible(target: Model, draft: Model) -> None:
    def fail(what: str) -> None:
        raise IncompatiblePair(f"draft {draft.path.name} cannot draft for target {target.path.name}: {what}; "
                               "pick a draft of the target's model family, or use --drafter ngram (no draft model)")

    if target.vocab_type != draft.vocab_type:
        fail(f"their vocabularies differ (target {_vocab_kind(target.vocab_type)}, "
             f"draft {_vocab_kind(draft.vocab_type)})")
    if (target.add_bos, target.bos) != (draft.add_bos, draft.bos):
        fail(f"BOS handling differs (target add_bos={target.add_bos} bos={target.bos}, "
             f"draft add_bos={draft.add_bos} bos={draft.bos})")
    if target.eos != draft.eos:
        fail(f"EOS token differs (target {target.eos}, draft {draft.eos})")
    if abs(target.n_vocab - draft.n_vocab) > VOCAB_MAX_SIZE_DIFFERENCE:
        fail(f"vocabulary sizes differ by more than {VOCAB_MAX_SIZE_DIFFERENCE} "
             f"(target {target.n_vocab}, draft {draft.n_vocab})")
    if target.info.tokens_digest and target.info.tokens_digest == draft.info.tokens_digest:
        return  # byte-identical token lists (the usual case): skip 150k lookups through llama.cpp
    for i in range(VOCAB_CHECK_START_TOKEN_ID, min(target.n_vocab, draft.n_vocab)):
        t, d = target.token_text(i), draft.token_text(i)
        if t != d:
            fail(f"token {i} differs (target {t!r}, draft {d!r})")


def check_pair_files(target: Path, draft: Path) -> None:
    """Raise IncompatiblePair unless *draft* can draft for *target* (vocabularies only: fast)."""
    t = Model(target, ModelOptions(vocab_only=True))
    try:
        d = Model(draft, ModelOptions(vocab_only=True))
        try:
            check_compatible(t, d)
        finally:
            d.close()
    finally:
        t.close()
