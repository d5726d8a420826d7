"""A thin, typed layer over llama-cpp-python's low-level (ctypes) API.

Only this module calls llama.cpp.  It exists so that the engine can
say "decode these tokens at these positions and give me row i of the logits"
without ctypes noise, and so that logits are read in place (no copies of
150k-float rows we never look at).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ModelFault, SpecgenError
from ..settings import check_parallel
from . import rpc
from .devices import local_gpus, null_terminated
from .gguf import GGUFInfo, read_gguf
from .loader import load_llama


class _Interrupts:
    """Ctrl+C while llama.cpp runs, held until it returns.

    Python runs signal handlers at the next bytecode, and inside a long C call
    that is one of our ctypes callbacks (the log or progress callback); a
    KeyboardInterrupt raised there is printed and dropped by ctypes, and the
    load goes on.  So while llama.cpp works, SIGINT only sets a flag: the
    progress callback turns it into "stop loading", and leaving the block
    raises the KeyboardInterrupt in plain Python.

    The handler stays installed between blocks and hands a signal outside one to
    the handler it replaced: swapping handlers around every decode call cost
    about 70 microseconds a step, most of a GPU step's own host work.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False
        self._previous = None
        self._main = threading.main_thread().ident
        self._installed = False

    def _handler(self, signum, frame) -> None:
        if self.depth:
            self.pending = True
        elif callable(self._previous):
            self._previous(signum, frame)
        else:
            raise KeyboardInterrupt

    def deferred(self) -> "_Interrupts":
        return self

    def __enter__(self) -> None:
        if threading.get_ident() != self._main:
            return  # only the main thread receives signals
        if not self.depth:
            if not self._installed:
                self._install()
            self.pending = False
        self.depth += 1

    def _install(self) -> None:
        """Once: a process started with SIGINT ignored (a background job, nohup) keeps ignoring it.  A handler
        installed later (a server's) replaces this one, and Ctrl+C is then that handler's to answer."""
        self._installed = True
        current = signal.getsignal(signal.SIGINT)
        if current is not signal.SIG_IGN:
            self._previous = current
            signal.signal(signal.SIGINT, self._handler)

    def __exit__(self, *exc: object) -> None:
        if threading.get_ident() != self._main:
            return
        self.depth -= 1
        if not self.depth and self.pending:
            self.pending = False
            raise KeyboardInterrupt


interrupts = _Interrupts()


def supports_gpu_offload() -> bool:
    return bool(load_llama().llama_supports_gpu_offload())


def system_info() -> str:
    return load_llama().llama_print_system_info().decode("utf-8", "replace").strip()


def backend_name() -> str:
    """'CUDA', 'Metal', 'Vulkan'... or 'CPU', read from llama.cpp's system info."""
    # An RPC-enabled build "supports GPU offload" (to workers) without a local GPU.
    if not local_gpus():
        return "CPU"
    info = system_info().upper()
    for name in ("CUDA", "METAL", "VULKAN", "HIP", "SYCL"):
        if f"{name} :" in info or f"{name} =" in info or name in info.split(" | ")[0]:
            return name.capitalize() if name in ("METAL", "VULKAN") else name
    return "CPU" if not supports_gpu_offload() else "GPU"


@dataclass
class ModelOptions:
    gpu_layers: int = -1
    """-1: every layer when the build supports GPU offload (ignored on CPU builds)."""
    use_mmap: bool = True
    vocab_only: bool = False
    rpc: tuple[str, ...] = ()
    """HOST:PORT of llama.cpp RPC workers that take the offloaded layers (ahead of local GPUs)."""


class _Owned:
    """Holds a llama.cpp object at `ptr`: `close()` frees it once, and collection frees what nobody closed."""

    ptr = None  # until __init__ gets it, or when that failed part way

    def _free(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.ptr:
            self._free()
            self.ptr = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass  # at interpreter exit llama_cpp may be torn down first, and __del__ has no one to tell


class Model(_Owned):
    """A loaded GGUF model and its vocabulary."""

    def __init__(self, path: str | os.PathLike[str], options: ModelOptions | None = None,
                 info: GGUFInfo | None = None):
        options = options or ModelOptions()
        self.info = info or read_gguf(path)  # fail with one clear line before llama.cpp
        self.path = self.info.path
        lib = load_llama()
        mp = lib.llama_model_default_params()
        n_layer = int(self.info.metadata.get(f"{self.info.architecture}.block_count", 999))
        mp.n_gpu_layers = (n_layer + 1 if options.gpu_layers < 0 else options.gpu_layers) \
            if lib.llama_supports_gpu_offload() else 0
        self.gpu_layers = min(mp.n_gpu_layers, n_layer + 1)
        self.n_layer = n_layer
        if "load_mode" in dict(type(mp)._fields_):  # llama.cpp 2026: an enum replaced the flags
            mp.load_mode = lib.LLAMA_LOAD_MODE_MMAP if options.use_mmap else lib.LLAMA_LOAD_MODE_NONE
        else:
            mp.use_mmap = options.use_mmap
        mp.vocab_only = options.vocab_only
        self._lib = lib
        self.rpc = tuple(options.rpc)
        self.devices: list[str] = []
        devs = None
        if self.rpc and not options.vocab_only:
            devs = self._rpc_devices(options, n_layer)
            mp.devices = ctypes.cast(devs, ctypes.c_void_p)
            mp.n_gpu_layers = n_layer + 1 if options.gpu_layers < 0 else options.gpu_layers
            self.gpu_layers = min(mp.n_gpu_layers, n_layer + 1)

        def progress(fraction: float, user_data) -> bool:
            return not interrupts.pending

        # Kept on self: llama.cpp holds the pointer for as long as the load runs.
        self._progress = lib.llama_progress_callback(progress)
        mp.progress_callback = self._progress
        with interrupts.deferred():
            self.ptr = lib.llama_model_load_from_file(str(self.path).encode(), mp)
            if interrupts.pending:
                self.close()
        del devs  # llama.cpp copied the list
        if not self.ptr:
            if self.rpc:
                raise SpecgenError(f"{self.path}: llama.cpp could not load this model across "
                                   f"{', '.join(self.devices)} (out of memory on a worker?)")
            raise SpecgenError(f"{self.path}: llama.cpp could not load this GGUF "
                               "(corrupt, or an architecture this llama.cpp build does not know)")
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.bos = int(lib.llama_vocab_bos(self.vocab))
        self.eos = int(lib.llama_vocab_eos(self.vocab))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self.vocab))
        self.vocab_type = int(lib.llama_vocab_type(self.vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self.ptr))
        # Asked per token as tokens appear: the whole table costs 150k calls into llama.cpp at load.
        self._eog: dict[int, bool] = {}
        self._eog_all: np.ndarray | None = None
        self._pieces: dict[int, bytes] = {}

    def _rpc_devices(self, options: ModelOptions, n_layer: int):
        """RPC workers first (as llama.cpp orders them), then this machine's GPUs; refuses a model that
        cannot fit in what the workers report free."""
        remote = rpc.connect(self.rpc)
        local = local_gpus()
        self.devices = [f"{d.name} ({d.description})" for d in remote + local]
        if options.gpu_layers < 0 or options.gpu_layers > n_layer:
            free = {d.description: d.memory()[0] for d in remote + local}
            need = self.path.stat().st_size
            if need > sum(free.values()):
                have = ", ".join(f"{k} {v / 2**30:.1f} GiB" for k, v in free.items())
                raise SpecgenError(f"not enough memory for {self.path.name} ({need / 2**30:.1f} GiB) across the "
                                   f"workers ({have} free): add a worker, or keep layers here with {{gpu_layers}} N")
        return null_terminated([d.ptr for d in remote + local])

    @property
    def name(self) -> str:
        return self.info.name

    def _free(self) -> None:
        self._lib.llama_model_free(self.ptr)

    @property
    def eog_tokens(self) -> np.ndarray:
        """Every end-of-generation token (for --ignore-eos), looked up once."""
        if self._eog_all is None:
            self._eog_all = np.array([t for t in range(self.n_vocab) if self.is_eog(t)], dtype=np.int64)
        return self._eog_all

    def is_eog(self, token: int) -> bool:
        got = self._eog.get(token)
        if got is None:
            got = self._eog[token] = 0 <= token < self.n_vocab and bool(self._lib.llama_vocab_is_eog(self.vocab, token))
        return got

    def token_text(self, token: int) -> str:
        return self._lib.llama_vocab_get_text(self.vocab, token).decode("utf-8", "replace")

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        raw = text.encode("utf-8", "replace")  # lone surrogates: front ends decide input bytes (user_text)
        cap = len(raw) + 16
        buf = (ctypes.c_int32 * cap)()
        n = self._lib.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = self._lib.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token contributes to the text (special tokens render empty)."""
        got = self._pieces.get(token)
        if got is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            got = self._pieces[token] = buf.raw[:n]
        return got

    def fim_token(self, role: str) -> int | None:
        """The vocabulary's fill-in-the-middle token for *role* (pre, suf, mid, pad, rep, sep), None where the
        GGUF names none."""
        token = int(getattr(self._lib, f"llama_vocab_fim_{role}")(self.vocab))
        return token if 0 <= token < self.n_vocab else None

    def chat_template(self) -> str | None:
        raw = self._lib.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", "replace") if raw else None


class DecodeClock:
    """Seconds spent inside llama.cpp's decode calls, by every context of this process.  What a step takes
    beyond them is specgen's own work on the host, which a GPU's short steps would wait for."""

    def __init__(self) -> None:
        self.seconds = 0.0


decode_clock = DecodeClock()


EXACT_CHUNK = 64
"""In exact mode a prompt is decoded in chunks aligned to multiples of this many positions, and a cached
prefix is reused only up to such a multiple: a token's KV entries are then computed in a batch of the same
shape whatever the cache held before (64-token chunks cost 2-8% of prompt speed against 512 on a 2-core CPU,
and each reuse recomputes at most 63 tokens)."""


class Context(_Owned):
    """One llama.cpp context (KV cache) for a model: *n_seq* sequences (the server's slots), each up to *n_ctx*
    tokens; the methods' `seq` defaults to the only one a plain context has.

    *exact* makes decoding independent of batch shape, as far as this build allows: llama.cpp's CPU kernels
    pick a path by the number of rows in a call (repacked weights take a 4-row GEMM from 4 rows up and a GEMV
    below; K-quant weights without repacking a tiled kernel from 8 rows up; flash attention over an f16 cache
    a KV-split path for one row past 512 cells and a tiled one from 64 rows), and each path rounds its sums
    in its own order.  So an exact context keeps its cache in q8_0 (flash attention then computes every row
    alone, the same way), cuts every batch that returns logits into calls of at most `exact_rows` rows (the
    most that this model's kernels compute exactly as a lone row: `calibrate.cached_exact_rows` measures it)
    and decodes prompts in EXACT_CHUNK-aligned chunks.
    """

    def __init__(self, model: Model, n_ctx: int, n_threads: int | None = None, n_batch: int = 512,
                 exact: bool = False, n_seq: int = 1):
        lib = self._lib = model._lib
        self.model = model
        cp = lib.llama_context_default_params()
        # Sequences share one pool of cells (a unified cache): llama.cpp splits a batch over separate ones
        # into a call per sequence, and a batch is worth having only as one call.
        cp.n_ctx = n_ctx * n_seq
        cp.n_batch = cp.n_ubatch = self.n_batch = min(n_batch, n_ctx)
        cp.n_seq_max = self.n_seq = n_seq
        cp.kv_unified = n_seq > 1
        threads = n_threads or default_threads()
        cp.n_threads = cp.n_threads_batch = threads
        self.n_threads = threads
        cp.no_perf = True
        self.exact_capable = exact
        check_parallel(n_seq, exact)
        if exact:
            cp.type_k = cp.type_v = lib.GGML_TYPE_Q8_0
            cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        with interrupts.deferred():
            self.ptr = lib.llama_init_from_model(model.ptr, cp)
        if not self.ptr:
            raise SpecgenError(f"{model.path}: could not create a llama.cpp context of {n_ctx} tokens "
                               "(out of memory? try a smaller {n_ctx})")
        self.n_ctx = int(lib.llama_n_ctx(self.ptr)) // n_seq
        """The most tokens one sequence may hold."""
        self._mem = lib.llama_get_memory(self.ptr)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._n_vocab = model.n_vocab
        self.past = [0] * n_seq
        """Per sequence: tokens whose KV entries are in the cache (positions 0..past-1)."""
        self._rows_offset = 0
        self.exact = exact
        """Decode exactly now (an exact-capable context may decode a request the fast way)."""
        self.exact_rows = 1
        """The most rows an exact call may hold; 1 (always safe) until measured."""
        self.aligned = 0
        """Positions below this (a multiple of EXACT_CHUNK) were decoded by exact prompt passes in whole
        aligned chunks: the only cached entries an exact prefill may reuse."""
        self._gathered: np.ndarray | None = None  # an exact verify's rows, gathered from its calls
        self._gathered_rows = 0
        self._outputs = 0  # rows of logits the last llama_decode call returned
        self._logits_at = _address_binding(lib, "llama_get_logits")
        self._view_at, self._view = 0, np.zeros((0, self._n_vocab), dtype=np.float32)

    def _free(self) -> None:
        if hasattr(self, "_batch"):
            self._lib.llama_batch_free(self._batch)
        self._lib.llama_free(self.ptr)

    def check_exact(self, exact: bool) -> None:
        """Refuse exact decoding on a context not created for it."""
        if exact and not self.exact_capable:
            raise SpecgenError("exact decoding needs a context created for it (its KV cache in q8_0): start "
                               "with --exact")

    def set_exact(self, exact: bool) -> None:
        self.check_exact(exact)
        self.exact = exact

    @property
    def n_past(self) -> int:
        """Tokens of sequence 0 in the cache (a context of one sequence has no other)."""
        return self.past[0]

    def view(self, seq: int) -> "SeqView":
        """Sequence *seq* alone, with a one-sequence context's methods (a slot's draft model)."""
        return SeqView(self, seq)

    def reusable(self, n: int, seq: int = 0) -> int:
        """How much of a cached prefix of *n* matching tokens the next prompt pass may keep."""
        n = min(n, self.past[seq])
        return min(n, self.aligned) // EXACT_CHUNK * EXACT_CHUNK if self.exact else n

    def _calls(self, n: int, logits: str, seq: int = 0) -> list[int]:
        """Sizes of the llama_decode calls that decode *n* tokens from the sequence's end."""
        start, end = self.past[seq], self.past[seq] + n
        if self.exact and logits != "all":  # a prompt pass: cut at multiples of EXACT_CHUNK
            cuts = range(start // EXACT_CHUNK * EXACT_CHUNK + EXACT_CHUNK, end, EXACT_CHUNK)
        else:
            step = self.exact_rows if self.exact else self.n_batch
            cuts = range(start + step, end, step)
        edges = [start, *cuts, end] if n > 0 else []
        return [b - a for a, b in zip(edges, edges[1:])]

    def _room(self, seq: int, n: int) -> None:
        if self.past[seq] + n > self.n_ctx:
            raise SpecgenError(f"context full ({self.n_ctx} tokens); use a larger {{n_ctx}}")

    def _fill(self, at: int, seq: int, tokens: Sequence[int], logits: str) -> int:
        """Put *tokens* of *seq* into the batch from index *at*, with logits as `decode` takes them; returns how
        many rows of logits they will give."""
        b, pos = self._batch, self.past[seq]
        rows, last = logits == "all", logits == "last"
        for i, tok in enumerate(tokens):
            b.token[at + i] = tok
            b.pos[at + i] = pos + i
            b.n_seq_id[at + i] = 1
            b.seq_id[at + i][0] = seq
            b.logits[at + i] = rows or (last and i == len(tokens) - 1)
        return len(tokens) if rows else int(last and len(tokens) > 0)

    def _run(self) -> None:
        with interrupts.deferred():
            t0 = time.perf_counter()
            rc = self._lib.llama_decode(self.ptr, self._batch)
            if rc == 0:
                # A GPU or RPC backend is still computing when llama_decode returns, and the next call that
                # reads its results waits for it: wait here, so that time is the decode's on the clock and
                # not host work (reading the logits) by the step's count.
                self._lib.llama_synchronize(self.ptr)
            decode_clock.seconds += time.perf_counter() - t0
        if rc != 0:
            raise ModelFault(f"llama_decode failed (code {rc})")

    def decode(self, tokens: Sequence[int], logits: str = "last", seq: int = 0) -> None:
        """Append *tokens* to sequence *seq* in the KV cache, at positions past[seq]...

        logits: "all" (one row per token, for verification), "last" or "none".
        Rows are then read with `logits_row(i)`, i counted within this call.
        All or nothing: on any error or interrupt the cache is rolled back to
        where it was, so callers' token bookkeeping stays true.
        """
        self._room(seq, len(tokens))
        start_past = self.past[seq]
        calls = self._calls(len(tokens), logits, seq)
        gather = logits == "all" and len(calls) > 1
        if gather and (self._gathered is None or len(self._gathered) < len(tokens)):
            self._gathered = np.empty((len(tokens), self._n_vocab), dtype=np.float32)
        self._gathered_rows = 0
        try:
            start = 0
            for size in calls:
                last_chunk = start + size == len(tokens)
                # A prompt's "last" row is the last chunk's.
                self._outputs = self._fill(0, seq, tokens[start:start + size],
                                           logits if last_chunk or logits == "all" else "none")
                self._batch.n_tokens = size
                self._run()
                if gather:
                    self._gathered[start:start + size] = self._logits()
                self.past[seq] += size
                self._rows_offset = start
                start += size
        except BaseException:
            self.rollback_to(start_past, seq)
            raise
        self._gathered_rows = len(tokens) if gather else 0
        if self.exact and logits != "all" and start_past == self.aligned:
            self.aligned = self.past[0] // EXACT_CHUNK * EXACT_CHUNK

    def decode_batch(self, parts: Sequence[tuple[int, Sequence[int], str]]) -> list[np.ndarray | None]:
        """Several sequences' tokens in one llama_decode call: (seq, tokens, logits) each, *logits* as
        `decode` takes it, at most n_batch tokens in all (one part may hold more: it is decoded as `decode`
        would).  Returns, per part, its rows of logits ("all": one per token, "last": one), a view into
        llama.cpp's buffer valid until the next decode, or None ("none").  All or nothing, as `decode`."""
        if len(parts) == 1:  # one sequence decodes as it would alone (an exact context cuts its calls)
            seq, tokens, logits = parts[0]
            self.decode(tokens, logits, seq)
            return [self.logits_rows(len(tokens)) if logits == "all" else self._logits() if logits == "last"
                    else None]
        total = sum(len(t) for _, t, _ in parts)
        assert total <= self.n_batch and not self.exact, (total, self.n_batch)
        at, counts = 0, []
        for seq, tokens, logits in parts:
            self._room(seq, len(tokens))
            counts.append(self._fill(at, seq, tokens, logits))
            at += len(tokens)
        self._batch.n_tokens = total
        self._outputs = sum(counts)
        before = list(self.past)
        self._gathered_rows = self._rows_offset = 0
        try:
            self._run()
        except BaseException:
            for seq, n in enumerate(before):
                self.rollback_to(n, seq)
            raise
        buf = self._logits() if self._outputs else None
        out: list[np.ndarray | None] = []
        row = 0
        for (seq, tokens, _), count in zip(parts, counts):
            self.past[seq] += len(tokens)
            out.append(buf[row:row + count] if count else None)
            row += count
        return out

    def _logits(self) -> np.ndarray:
        """The last llama_decode call's rows of logits, a (rows, vocabulary) view into llama.cpp's buffer.

        The view is kept while the buffer stays where it was (llama.cpp moves it only to grow it): building
        one through ctypes took 60 microseconds right after a decode, a GPU step's whole budget for host work
        many times over."""
        at, n = self._logits_at(self.ptr), self._outputs
        if at != self._view_at or len(self._view) < n:
            self._view_at = at
            self._view = np.ctypeslib.as_array((ctypes.c_float * (n * self._n_vocab)).from_address(at)) \
                .reshape(n, self._n_vocab)
        return self._view[:n]

    def logits_row(self, i: int) -> np.ndarray:
        """Row i of the last decode's logits (-1: its last row), as a view into llama.cpp's buffer."""
        if self._gathered_rows:
            return self._gathered[i if i >= 0 else self._gathered_rows + i]
        return self._logits()[i if i < 0 else i - self._rows_offset]

    def logits_rows(self, n: int) -> np.ndarray:
        """The rows of a decode of at most n_batch tokens, all with logits: one (n, vocabulary) view into
        llama.cpp's buffer (or the copy an exact decode gathered from its calls)."""
        if self._gathered_rows:
            return self._gathered[:n]
        assert self._rows_offset == 0 and n == self._outputs, (n, self._outputs)
        return self._logits()

    def rollback_to(self, n: int, seq: int = 0) -> None:
        """Drop sequence *seq*'s KV entries at positions >= n (rejected draft tokens, an edited history)."""
        self._lib.llama_memory_seq_rm(self._mem, seq, n, -1)
        self.past[seq] = min(self.past[seq], n)
        if seq == 0:
            self.aligned = min(self.aligned, n // EXACT_CHUNK * EXACT_CHUNK)

    def save(self, seq: int) -> bytes:
        """Sequence *seq*'s KV entries as bytes, for `load` into any sequence of this context later."""
        lib = self._lib
        size = lib.llama_state_seq_get_size(self.ptr, seq)
        buf = (ctypes.c_uint8 * size)()
        got = lib.llama_state_seq_get_data(self.ptr, buf, size, seq)
        return bytes(memoryview(buf)[:got])

    def load(self, seq: int, data: bytes, n_tokens: int) -> bool:
        """Replace sequence *seq*'s entries with what `save` returned for *n_tokens* tokens; False when llama.cpp
        refused them (no room), the sequence then empty."""
        self.rollback_to(0, seq)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if not self._lib.llama_state_seq_set_data(self.ptr, buf, len(data), seq):
            self.rollback_to(0, seq)
            return False
        self.past[seq] = n_tokens
        return True


class SeqView:
    """One sequence of a context, with the methods a one-sequence context offers (a slot's draft model)."""

    def __init__(self, ctx: Context, seq: int):
        self.ctx, self.seq = ctx, seq
        self.n_ctx = ctx.n_ctx

    @property
    def n_past(self) -> int:
        return self.ctx.past[self.seq]

    def decode(self, tokens: Sequence[int], logits: str = "last") -> None:
        self.ctx.decode(tokens, logits, self.seq)

    def logits_row(self, i: int) -> np.ndarray:
        return self.ctx.logits_row(i)

    def rollback_to(self, n: int) -> None:
        self.ctx.rollback_to(n, self.seq)

    def close(self) -> None:
        pass  # the context's owner frees it


def _address_binding(lib, name: str):
    """llama.cpp's *name* (one context argument, a pointer back) bound a second time to return the bare
    address: the shared binding wraps it in a ctypes pointer, which costs more than the call."""
    dll = lib.llama_cpp._lib
    fn = dll._FuncPtr((name, dll))
    fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_void_p
    return fn


def default_threads() -> int:
    # llama.cpp's own default: physical cores, which os.cpu_count() overstates
    # on SMT machines; half the logical count, at least 1, is closer.
    n = os.cpu_count() or 2
    return max(1, n // 2) if n > 4 else n
