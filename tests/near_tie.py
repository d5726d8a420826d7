"""Greedy speculative output must be the target's own; the one allowed exception.

llama.cpp's batched and single-token kernels round differently, so where the
target's top two logits nearly tie, a verify batch may pick the other token
than plain one-token decoding.  A divergence is accepted only there: the gap
is measured, with one-token decoding, in the plain run's own context.
"""

from __future__ import annotations

import numpy as np

from specgen.llama.backend import Context, Model
from specgen.tokens import common_prefix

NEAR_TIE = 0.3  # logits


def top2_gap(model: Model, tokens: list[int], n_ctx: int = 2048) -> float:
    """The target's top-2 logit gap after *tokens*, the last one decoded on its own."""
    ctx = Context(model, n_ctx)
    try:
        ctx.decode(tokens[:-1], logits="none")
        ctx.decode(tokens[-1:], logits="last")
        row = np.sort(np.array(ctx.logits_row(-1), dtype=np.float64))
        return float(row[-1] - row[-2])
    finally:
        ctx.close()


def first_difference(a: list[int], b: list[int]) -> int | None:
    return None if a == b else common_prefix(a, b)


def assert_same_or_near_tie(model: Model, prompt: list[int], plain: list[int], spec: list[int]) -> bool:
    """True when equal; a divergence passes only at a measured near-tie of the plain run."""
    k = first_difference(plain, spec)
    if k is None:
        return True
    gap = top2_gap(model, prompt + plain[:k])
    assert gap < NEAR_TIE, (f"speculative output diverged at token {k} where the target was sure "
                            f"(top-2 gap {gap:.3f}): plain {plain[k:k + 5]} vs spec {spec[k:k + 5]}")
    return False
