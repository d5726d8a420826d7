"""Measure, once per model file and machine, what a verify batch and a draft token cost.

The controller learns costs from every step, but only for the batch sizes it
tries; without a starting curve it could never discover that wide batches
are cheap on a GPU.  So at load we time one decode of n tokens for a few n
(a few seconds for a 1.5B model on a CPU, far less on a GPU) and cache the
result under the user's cache directory, keyed by the model file, the
llama.cpp build, the settings that change speed and the RPC workers the
model's layers live on.  For --exact, likewise, how many rows one decode call may hold and still compute
each row to the bit as it is computed alone.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import is_finite_number
from ..fileio import cache_dir, read_json_cache, write_json_cache
from .backend import Context, system_info

SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 17)
PREFIX = 64  # verify costs are taken at a realistic, not empty, context
REPEATS = 3
METHOD = 3
"""How curves are measured: a change re-measures the ones cached by an older way (3: a decode waits for a GPU or
RPC backend to finish; 2 timed only the launch there)."""
EXACT_PROBE_ROWS = 16  # the widest exact call tried


def cache_file() -> Path:
    return cache_dir() / "costs.json"


def _key(ctx: Context, what: str) -> str:
    st = ctx.model.path.stat()
    ident = [what, METHOD, str(ctx.model.path.resolve()), st.st_size, st.st_mtime_ns, ctx.model.gpu_layers,
             ctx.n_threads, system_info(), __version__]
    if ctx.model.rpc:  # a curve measured over the network is never a local one, nor the other way round
        ident.append(list(ctx.model.rpc))
    if ctx.exact:  # an exact context splits its batches: a curve of its own
        ident.append(["exact", ctx.exact_rows if what != "exact-rows" else EXACT_PROBE_ROWS])
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]


def _filler(ctx: Context, n: int) -> list[int]:
    # Ordinary text tokens; their identity doesn't change the cost.
    toks = ctx.model.tokenize("The quick brown fox jumps over the lazy dog. " * 16, add_special=False)
    return (toks * (n // max(len(toks), 1) + 1))[:n]


def measure_verify(ctx: Context, sizes: tuple[int, ...] = SIZES, logits: str = "all", *, prefix: int = PREFIX,
                   repeats: int = REPEATS) -> dict[int, float]:
    """Seconds for one decode of n tokens with logits for every row, as the engine verifies
    (*logits* "last": as a draft model catches up on tokens it did not draft), after *prefix* tokens
    of context, the fastest of *repeats* sweeps."""
    sizes = tuple(n for n in sizes if prefix + n < ctx.n_ctx)
    ctx.rollback_to(0)
    ctx.decode(_filler(ctx, prefix), logits="none")
    batch = _filler(ctx, max(sizes))
    ctx.decode(batch[:4], logits="all")  # warm-up: first calls allocate
    ctx.rollback_to(prefix)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    # The controller takes the curve's shape from here and learns the machine's speed as it runs, so
    # what must not happen is a shape bent by a burst of other work.  Timing each size in a row let a
    # busy second inflate one or two sizes (c(8) read at 3x its neighbours, c(1) at 1.4x, and the
    # cached curve kept it); sweeping all sizes several times and keeping each size's fastest leaves
    # a burst one sample of many.  Sweeps alternate direction so that every decode follows one of a
    # like size: a one-token decode right after a wide batch runs on cold caches and reads ~3% slow.
    for sweep in range(repeats):
        for n in sizes if sweep % 2 == 0 else sizes[::-1]:
            t0 = time.perf_counter()
            ctx.decode(batch[:n], logits=logits)
            times[n].append(time.perf_counter() - t0)
            ctx.rollback_to(prefix)
    ctx.rollback_to(0)
    return {n: min(t) for n, t in times.items()}


def measure_draft(ctx: Context, *, prefix: int = PREFIX) -> float:
    """Seconds per drafted token: a one-token decode and reading its logits, after *prefix* tokens."""
    ctx.rollback_to(0)
    toks = _filler(ctx, prefix + 6)
    ctx.decode(toks[:prefix], logits="last")
    times = []
    for t in toks[prefix:]:
        t0 = time.perf_counter()
        ctx.decode([t], logits="last")
        ctx.logits_row(-1).max()
        times.append(time.perf_counter() - t0)
    ctx.rollback_to(0)
    return statistics.median(times[1:])


def measure_exact_rows(ctx: Context, *, most: int = EXACT_PROBE_ROWS, prefix: int = 32) -> int:
    """The most rows a decode call may hold on this exact context and still give each row the logits, to the
    bit, that it gets decoded alone: which kernels llama.cpp picks depends on the row count, so this is
    measured, not known.  1 where even two rows part (every call then decodes one row: exact, but a draft
    costs as much as the tokens it saves)."""
    assert ctx.exact
    toks = _filler(ctx, prefix + most)
    ctx.rollback_to(0)
    ctx.decode(toks[:prefix], logits="none")
    alone = []
    for t in toks[prefix:]:
        ctx.decode([t], logits="all")
        alone.append(ctx.logits_row(0).copy())
    best, saved = 1, ctx.exact_rows
    try:
        for rows in range(2, most + 1):
            ctx.exact_rows = rows  # the calls a verify of `most` rows makes: full ones and the rest
            ctx.rollback_to(prefix)
            ctx.decode(toks[prefix:], logits="all")
            if not np.array_equal(ctx.logits_rows(most), np.stack(alone)):
                break
            best = rows
    finally:
        ctx.exact_rows = saved
        ctx.rollback_to(0)
    return best


def cached_exact_rows(ctx: Context) -> int:
    """`measure_exact_rows`, measured once per model file, build and machine."""
    path = cache_file()
    cache = read_json_cache(path, _valid) or {}
    key = _key(ctx, "exact-rows")
    got = cache.get(key)
    if not (isinstance(got, int) and not isinstance(got, bool) and 1 <= got <= EXACT_PROBE_ROWS):
        got = cache[key] = measure_exact_rows(ctx)
        write_json_cache(path, cache)
    return got


def _seconds(x: Any) -> bool:
    return is_finite_number(x) and x > 0  # the controller divides by costs: a 0 is no measurement


def _curve(x: Any) -> bool:
    """{"size": seconds}, at least one size, each a batch of 1 token or more."""
    return (isinstance(x, dict) and bool(x)
            and all(k.isascii() and k.isdigit() and int(k) >= 1 and _seconds(s) for k, s in x.items()))


def _valid(cache: Any) -> bool:
    """The layout `cached_costs` writes: per key, a verify curve {"size": seconds} or a draft token's seconds."""
    return isinstance(cache, dict) and all(_curve(v) or _seconds(v) for v in cache.values())


def cached_costs(target: Context, draft: Context | None) -> tuple[dict[int, float], float | None]:
    """(verify seconds by batch size, draft seconds per token or None), measured or from the cache."""
    path = cache_file()
    cache = read_json_cache(path, _valid) or {}
    changed = False
    tk = _key(target, "verify")
    if not _curve(cache.get(tk)):
        cache[tk] = {str(n): s for n, s in measure_verify(target).items()}
        changed = True
    verify = {int(n): float(s) for n, s in cache[tk].items()}
    draft_cost = None
    if draft is not None:
        dk = _key(draft, "draft")
        if not _seconds(cache.get(dk)):
            cache[dk] = measure_draft(draft)
            changed = True
        draft_cost = float(cache[dk])
    if changed:
        write_json_cache(path, cache)
    return verify, draft_cost
