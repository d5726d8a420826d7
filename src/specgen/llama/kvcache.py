"""How much memory a context costs, read from GGUF headers, and how long a context fits.

llama.cpp's KV cache holds, for every token and layer, one key and one value
vector per KV head, in f16 by default: a cost fixed by the model's shape, so it
can be known before any weights load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..fileio import human_size
from .gguf import GGUFInfo

CACHE_BYTES = 2
"""Bytes per cached number: llama.cpp's default KV cache type is f16."""

KV_SHARE = 0.5
"""The share of the memory left beside the weights that the KV caches may take: the rest is llama.cpp's
compute buffers, the operating system and whatever else runs."""

CTX_STEP = 256
"""A sized context is a multiple of this (llama.cpp pads a context to it)."""


def kv_bytes_per_token(info: GGUFInfo) -> int | None:
    """Bytes one token takes in this model's KV cache, or None when the header does not say its shape.

    n_layer * n_head_kv * (key_length + value_length) * 2: the head lengths default to embedding_length /
    head_count, as llama.cpp reads them.  A per-layer head count (an array, kept as its length) counts
    high, which only makes a sized context shorter."""
    arch, md = info.architecture, info.metadata

    def count(key: str, default: object = None) -> int | None:
        v = md.get(f"{arch}.{key}", default)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    n_layer, n_head, n_embd = count("block_count"), count("attention.head_count"), count("embedding_length")
    if n_layer is None or n_head is None:
        return None
    n_head_kv = count("attention.head_count_kv", n_head)
    head = n_embd // n_head if n_embd else None
    k_len, v_len = count("attention.key_length", head), count("attention.value_length", head)
    if n_head_kv is None or k_len is None or v_len is None:
        return None
    return n_layer * n_head_kv * (k_len + v_len) * CACHE_BYTES


@dataclass(frozen=True)
class Memory:
    free: int
    """Bytes free where the KV caches will live."""
    where: str
    """What that memory is, for a person: "RAM" or the GPUs' names."""


def free_memory(on_gpu: bool) -> Memory | None:
    """The memory the KV caches will take from: the local GPUs' free memory when the layers go there, else
    the RAM the kernel could hand out now (Linux's MemAvailable, which counts reclaimable page cache; the
    machine's whole RAM where no such figure exists).  None when neither can be read."""
    if on_gpu:
        from .devices import local_gpus

        gpus = local_gpus()
        if gpus:
            return Memory(sum(d.memory()[0] for d in gpus), " + ".join(d.name for d in gpus))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return Memory(int(line.split()[1]) * 1024, "RAM")
    except (OSError, ValueError, IndexError):
        pass
    try:
        return Memory(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class ContextFit:
    n_ctx: int
    why: str
    """Why this length, in a few words for the start-up line."""


def _kv_budget(target: GGUFInfo, drafts: Sequence[GGUFInfo], memory: Memory) -> tuple[int, int] | None:
    """(bytes the KV caches may take, bytes a token takes in all of them), None when a shape is unknown."""
    costs = [kv_bytes_per_token(m) for m in (target, *drafts)]
    if None in costs:
        return None
    spare = memory.free - sum(m.size for m in (target, *drafts))
    return int(max(spare, 0) * KV_SHARE), sum(c for c in costs if c is not None)


def fit_slots(target: GGUFInfo, drafts: Sequence[GGUFInfo], memory: Memory | None, n_ctx: int, most: int) -> int:
    """How many sequences of *n_ctx* tokens fit in *memory* beside the weights (each model keeps a KV cache
    for each), from 1 to *most*; 1 when that cannot be known."""
    budget = _kv_budget(target, drafts, memory) if memory is not None else None
    if budget is None:
        return 1
    room, per_token = budget
    return max(1, min(most, room // (per_token * n_ctx)))


def fit_context(target: GGUFInfo, drafts: Sequence[GGUFInfo], memory: Memory | None, floor: int,
                n_seq: int = 1) -> ContextFit:
    """The longest context worth giving by default: the target's trained length, cut to what fits in
    *memory* beside the weights of *target* and *drafts* (every model keeps its own KV cache of that
    length for each of *n_seq* sequences), never below *floor* (the length the other commands use) nor
    above the trained length."""
    trained = target.metadata.get(f"{target.architecture}.context_length")
    if not isinstance(trained, int) or trained <= 0:
        return ContextFit(floor, f"{target.path.name} does not say its trained context")
    if trained <= floor:
        return ContextFit(trained, "the target's trained context")
    if memory is None:
        return ContextFit(floor, "free memory is unknown")
    budget = _kv_budget(target, drafts, memory)
    if budget is None:
        return ContextFit(floor, "the KV cache size of this architecture is unknown")
    room, per_token = budget
    fits = room // (per_token * n_seq) // CTX_STEP * CTX_STEP
    if fits >= trained:
        return ContextFit(trained, "the target's trained context")
    room = f"{human_size(memory.free)} free {memory.where}, trained for {trained}"
    if fits <= floor:
        return ContextFit(floor, f"the default: {room} fits no more")
    return ContextFit(fits, f"what fits in {room}")


__all__ = ["ContextFit", "Memory", "fit_context", "fit_slots", "free_memory", "kv_bytes_per_token"]
