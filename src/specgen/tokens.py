"""Rules over plain token lists, shared by the engine, the drafters and the benchmark."""

from __future__ import annotations

from typing import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens *a* and *b* share: what a KV cache can keep, where two outputs part."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
