"""Build a ready Engine from options: load models, check the pair, pick the drafter."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .llama.backend import Model, ModelOptions, backend_name, supports_gpu_offload
from .controller import Controller
from .llama.calibrate import cached_costs, cached_exact_rows
from .drafters import ModelDrafter, drafter_set
from .engine import Engine
from .errors import SpecgenError
from .llama.gguf import read_gguf
from .llama.kvcache import ContextFit, fit_context, fit_slots, free_memory
from .llama.vocab import check_compatible
from .fileio import human_size
from .settings import (check_draft, check_drafter, check_parallel, check_threads, parse_draft_max,
                       uses_draft_model)

DEFAULT_CTX = 4096
"""The context run, chat and bench get unless told; serve sizes its own (`serve_layout`)."""


@dataclass
class EngineOptions:
    target: str | Path
    draft: str | Path | None = None
    drafter: str | None = None
    """auto | model | ngram | none; None: auto (n-gram copies, the draft model when it pays)."""
    draft_max: int | None = None
    """A fixed cap on draft length; None lets the controller size each draft."""
    draft_p_min: float = 0.0
    n_ctx: int = DEFAULT_CTX
    threads: int | None = None
    gpu_layers: int = -1
    draft_gpu_layers: int = -1
    use_mmap: bool = True
    calibrate: bool = True
    """Seed the controller with measured verify/draft costs (cached per model and machine)."""
    rpc: tuple[str, ...] = ()
    """llama.cpp RPC workers (HOST:PORT) that hold the target's offloaded layers."""
    draft_rpc: tuple[str, ...] = ()
    """Workers for the draft model; by default it stays on this machine."""
    exact: bool = False
    """Decode so that greedy output does not depend on batch shape or cache reuse (Context)."""
    parallel: int = 1
    """Sequences the contexts hold, each up to n_ctx tokens: the server's slots."""

    def check(self) -> list[str]:
        """Refuse what makes no sense before anything loads; clamp what is merely too large.

        Returns warnings for the user (a clamped value, an odd pair of files); raises
        SpecgenError for a value no run could use.  The one home of these bounds.
        """
        notes = self.check_numbers()
        if self.draft is not None and uses_draft_model(self.drafter_name()):
            notes += _pair_warnings(Path(self.target), Path(self.draft))
        return notes

    def check_numbers(self) -> list[str]:
        """`check` without the files: what can be judged before a pair is resolved or downloaded."""
        self.drafter_name()
        parse_draft_max(self.draft_max)
        if not (isinstance(self.draft_p_min, (int, float)) and 0.0 <= self.draft_p_min <= 1.0):
            raise SpecgenError(f"{{draft_p_min}} must be from 0 to 1, not {self.draft_p_min}")
        if not MIN_CTX <= self.n_ctx <= MAX_CTX:
            raise SpecgenError(f"{{n_ctx}} must be from {MIN_CTX} to {MAX_CTX} tokens, not {self.n_ctx}")
        for field, layers in (("gpu_layers", self.gpu_layers), ("draft_gpu_layers", self.draft_gpu_layers)):
            if layers < -1:
                raise SpecgenError(f"{{{field}}} must be -1 (all) or 0 or more, not {layers}")
        self.threads, notes = check_threads(self.threads)
        check_parallel(self.parallel, self.exact)
        return notes

    def drafter_name(self) -> str:
        return check_drafter("auto" if self.drafter is None else self.drafter)  # '' is no drafter, not auto


MIN_CTX, MAX_CTX = 64, 1 << 24


def _pair_warnings(target: Path, draft: Path) -> list[str]:
    """Warnings for a draft that cannot pay: the target itself, or a bigger file than the target."""
    try:
        ts, ds = target.stat(), draft.stat()
    except OSError:
        return []  # a missing file is reported by the loader, with its own message
    if not (stat.S_ISREG(ts.st_mode) and stat.S_ISREG(ds.st_mode)):
        return []  # a directory, FIFO or device (or '', the current directory): the loader says which
    if os.path.samestat(ts, ds):
        return [f"the draft is the target itself ({target.name}): every draft is accepted but costs as much "
                "as decoding it; use a smaller draft or {drafter} ngram"]
    t, d = ts.st_size, ds.st_size
    if d > t:
        return [f"the draft {draft.name} ({human_size(d)}) is larger than the target {target.name} "
                f"({human_size(t)}): drafting will cost more than it saves; did you swap {target} and {draft}?"]
    return []


DEFAULT_PARALLEL = 4
"""Slots `serve` opens unless told, as far as they fit: on a CPU, 4 rows cost 1.6-2.9 single rows, so four
clients decoded together get far more tokens per second than four in turn; beyond that a batch's rows cost
nearly their number."""


def serve_layout(opts: EngineOptions, n_ctx: int | None, parallel: int | None) -> tuple[ContextFit | None, int]:
    """The context per slot (None: *n_ctx* as given) and the slots `serve` takes, each as given or sized.

    Left out, the context is the target's trained one as far as the KV caches fit in the memory they will
    live in (the local GPUs' when the layers go there) beside the weights, never less than DEFAULT_CTX: a
    server's clients (coding agents) send whole files and long conversations.  The slots are then as many
    of that context as fit, at most DEFAULT_PARALLEL (one for --exact, which keeps one sequence)."""
    target = read_gguf(opts.target)
    drafts = [read_gguf(opts.draft)] if opts.draft is not None and uses_draft_model(opts.drafter_name()) else []
    on_gpu = not opts.rpc and opts.gpu_layers != 0 and supports_gpu_offload()
    memory = free_memory(on_gpu)
    sized = fit_context(target, drafts, memory, DEFAULT_CTX, parallel or 1) if n_ctx is None else None
    if parallel is None:
        per_slot = sized.n_ctx if sized is not None else n_ctx
        parallel = 1 if opts.exact else fit_slots(target, drafts, memory, per_slot, DEFAULT_PARALLEL)
    return sized, parallel


def load_engine(opts: EngineOptions) -> Engine:
    """Load the models and build the engine; call `opts.check()` first to show its warnings."""
    opts.check()
    drafter_name = opts.drafter_name()
    check_draft(drafter_name, opts.draft)
    # Validate both files before loading either: a bad draft should not cost a target load.
    use_draft = opts.draft is not None and uses_draft_model(drafter_name)
    target_info = read_gguf(opts.target)
    draft_info = read_gguf(opts.draft) if use_draft else None

    target = Model(opts.target, ModelOptions(opts.gpu_layers, opts.use_mmap, rpc=opts.rpc), info=target_info)
    n_ctx = min(opts.n_ctx, target.n_ctx_train) if target.n_ctx_train > 0 else opts.n_ctx
    controller = Controller(fixed=opts.draft_max)
    draft_model = model_drafter = None
    if use_draft:
        draft_model = Model(opts.draft, ModelOptions(opts.draft_gpu_layers, opts.use_mmap,
                                                        rpc=opts.draft_rpc), info=draft_info)
        check_compatible(target, draft_model)
        model_drafter = ModelDrafter(draft_model, n_ctx, opts.threads, p_min=opts.draft_p_min,
                                     n_vocab=min(target.n_vocab, draft_model.n_vocab), n_seq=opts.parallel)
    drafters = drafter_set(target.piece, controller, model_drafter)
    engine = Engine(target, drafters[drafter_name], n_ctx=n_ctx, n_threads=opts.threads, controller=controller,
                    draft_model=draft_model, drafters=drafters, exact=opts.exact, n_seq=opts.parallel)
    engine.slot_drafters = lambda seq, ctl: drafter_set(target.piece, ctl,
                                                        model_drafter.for_seq(seq) if model_drafter else None)
    if opts.exact:
        engine.ctx.exact_rows = cached_exact_rows(engine.ctx)
    if opts.calibrate and drafter_name != "none":
        model = drafters.get("model")
        verify, per_token = cached_costs(engine.ctx, model.ctx if model else None)
        controller.costs.seed(verify, {"model": per_token} if per_token is not None else {})
    return engine


def topology(engine: Engine) -> dict:
    """Where each model's layers live: this machine's backend and the RPC workers, for --json and bench."""
    out = {"local": backend_name()}
    for role, model in (("target", engine.target), ("draft", engine.draft_model)):
        if model is not None:
            out[role] = {"rpc": list(model.rpc), "devices": model.devices,
                         "offloaded_layers": model.gpu_layers, "layers": model.n_layer + 1}
    return out


def describe_backend(engine: Engine) -> str:
    """'CPU' or e.g. 'CUDA, target 29/29 layers, draft 25/25 layers' (+ ', target over RPC host:port')."""
    name = backend_name()
    rpc = [f"{role} over RPC {', '.join(m.rpc)}" for role, m in (("target", engine.target),
                                                              ("draft", engine.draft_model)) if m and m.rpc]
    if name == "CPU":
        return ", ".join([name] + rpc)
    parts = [f"target {engine.target.gpu_layers}/{engine.target.n_layer + 1} layers"]
    if engine.draft_model is not None:
        parts.append(f"draft {engine.draft_model.gpu_layers}/{engine.draft_model.n_layer + 1} layers")
    return f"{name}, " + ", ".join(parts + rpc)
