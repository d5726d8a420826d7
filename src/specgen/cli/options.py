"""Engine and sampling flags shared by run, chat and bench, declared once.

`engine_command` appends these parameters to a command's signature and hands
the command one `EngineFlags` object, so each command lists only its own flags.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ..build import DEFAULT_CTX, EngineOptions, load_engine
from ..engine import Engine
from ..models.resolve import Resolved
from ..sampling import SamplingParams, allowed
from ..settings import DRAFTERS, check_given, parse_draft_max
from .messages import warn

M, D, S = "Models", "Drafting", "Sampling"


def path_flag(name: str) -> Callable[[str], Path]:
    """The parser of a file flag *name* (a `{setting}` or the flag itself), which sees the text typed: typer
    itself reads an empty value (an unset shell variable) as '.', the current folder, and the message would
    then be about a directory."""
    def parse(value: str) -> Path:
        return Path(check_given(name, value))
    return parse


@dataclass
class EngineFlags:
    target: Annotated[Optional[Path], typer.Option(
        help="Target GGUF.", parser=path_flag("{target}"), metavar="<path>", rich_help_panel=M)] = None
    draft: Annotated[Optional[Path], typer.Option(
        help="Draft GGUF (same vocabulary).", parser=path_flag("{draft}"), metavar="<path>", rich_help_panel=M)] = None
    pair: Annotated[Optional[str], typer.Option(
        help="A pair from models.yaml (see `specgen list`); default: the default pair.", rich_help_panel=M)] = None
    no_download: Annotated[bool, typer.Option(
        "--no-download", help="Fail instead of pulling a pair that is not downloaded yet.", rich_help_panel=M)] = False
    drafter: Annotated[Optional[str], typer.Option(
        help=f"{' | '.join(DRAFTERS)}. auto (the default) copies with n-gram lookup when the text "
             "repeats, drafts with the model when that pays on this machine, else decodes plainly.",
        rich_help_panel=D)] = None
    draft_max: Annotated[Optional[str], typer.Option(
        help="Most draft tokens per step, or 'auto' to size each draft from measured costs "
             "(default: the pair's setting, else auto).", rich_help_panel=D)] = None
    draft_p_min: Annotated[float, typer.Option(
        help="Stop drafting when the draft model's best token has less than this probability among its 10 "
             "likeliest (as llama.cpp's --draft-p-min).",
        rich_help_panel=D)] = 0.0
    ctx: Annotated[Optional[int], typer.Option(
        help=f"Context size in tokens (default: {DEFAULT_CTX}; for serve, the target's trained context as far as "
             "memory allows).", show_default=False, rich_help_panel=M)] = None
    threads: Annotated[Optional[int], typer.Option(help="CPU threads.", rich_help_panel=M)] = None
    gpu_layers: Annotated[int, typer.Option(
        help="Target layers to offload (-1: all, when the build supports a GPU).", rich_help_panel=M)] = -1
    draft_gpu_layers: Annotated[int, typer.Option(
        help="Draft layers to offload (-1: all). A draft left on the CPU loses the speedup.",
        rich_help_panel=M)] = -1
    rpc: Annotated[Optional[str], typer.Option(
        help="Spread the target's layers over llama.cpp RPC workers: HOST:PORT[,HOST:PORT...] "
             "(see `specgen worker`).", rich_help_panel=M)] = None
    draft_rpc: Annotated[Optional[str], typer.Option(
        help="RPC workers for the draft model (default: it stays on this machine).", rich_help_panel=M)] = None
    no_mmap: Annotated[bool, typer.Option("--no-mmap", help="Read weights into memory instead of mapping them.",
                                          rich_help_panel=M)] = False
    exact: Annotated[bool, typer.Option(
        "--exact", help="At temperature 0, the same output token for token whatever the drafter, batch shape or "
                        "cached prefix (KV cache in q8_0, batches cut to the rows this model's kernels compute as "
                        "a lone row; see README).", rich_help_panel=D)] = False
    temperature: Annotated[float, typer.Option(help="0 is greedy (exactly the target's argmax).",
                                               rich_help_panel=S)] = 0.0
    top_k: Annotated[int, typer.Option(rich_help_panel=S)] = 40
    top_p: Annotated[float, typer.Option(rich_help_panel=S)] = 0.95
    min_p: Annotated[float, typer.Option(rich_help_panel=S)] = 0.05
    repeat_penalty: Annotated[float, typer.Option(rich_help_panel=S)] = 1.0
    frequency_penalty: Annotated[float, typer.Option(
        help=f"Lower a token's logit by this for each time it is among the last {SamplingParams.repeat_last_n} "
             f"tokens; {allowed('frequency_penalty')}.", rich_help_panel=S)] = 0.0
    presence_penalty: Annotated[float, typer.Option(
        help=f"Lower a token's logit by this once if it is among the last {SamplingParams.repeat_last_n} tokens; "
             f"{allowed('presence_penalty')}.", rich_help_panel=S)] = 0.0
    seed: Annotated[Optional[int], typer.Option(help="Makes sampling reproducible.", rich_help_panel=S)] = None

    def engine_options(self) -> EngineOptions:
        """Check every number first, then resolve (maybe download) the pair; warnings go to stderr."""
        self.check_numbers()
        self.rpc_workers()  # a malformed --rpc fails before any download
        r = self.resolve(self.pair)
        draft_max = parse_draft_max(self.draft_max) if self.draft_max is not None else r.draft_max
        opts = self.options_for(r.target, r.draft, self.drafter or r.drafter, draft_max)
        for line in opts.check():
            warn(line)
        return opts

    def check_numbers(self) -> None:
        """Refuse a bad number flag, or an empty one, before any pair is resolved or downloaded; clamp with a
        warning."""
        for name, value in (("{drafter}", self.drafter), ("{draft_max}", self.draft_max), ("--rpc", self.rpc),
                            ("--draft-rpc", self.draft_rpc)):
            check_given(name, value)
        opts = self.options_for(Path(), self.draft, self.drafter, parse_draft_max(self.draft_max))
        for line in opts.check_numbers():
            warn(line)
        self.threads = opts.threads

    def resolve(self, pair: str | None) -> Resolved:
        """The files to load: *pair* (or the default pair), with --target/--draft replacing its sides."""
        from ..models.resolve import resolve_models  # models.yaml and downloads

        return resolve_models(pair, self.target, self.draft, download=not self.no_download)

    def rpc_workers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """--rpc and --draft-rpc as endpoint lists, or one line saying which is malformed."""
        from ..llama.rpc import parse_endpoints

        return parse_endpoints(self.rpc, "--rpc"), parse_endpoints(self.draft_rpc, "--draft-rpc")

    def options_for(self, target: Path, draft: Path | None, drafter: str | None,
                    draft_max: int | None) -> EngineOptions:
        """EngineOptions for these files and drafting choices, with the rest of the flags."""
        rpc, draft_rpc = self.rpc_workers()
        return EngineOptions(
            target=target, draft=draft, drafter=drafter, draft_max=draft_max,
            draft_p_min=self.draft_p_min, n_ctx=DEFAULT_CTX if self.ctx is None else self.ctx, threads=self.threads,
            gpu_layers=self.gpu_layers, draft_gpu_layers=self.draft_gpu_layers, use_mmap=not self.no_mmap,
            rpc=rpc, draft_rpc=draft_rpc, exact=self.exact)

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              min_p=self.min_p, repeat_penalty=self.repeat_penalty,
                              frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                              seed=self.seed).check()


def load(opts: EngineOptions) -> Engine:
    """Load the models; a setting the target could not take as given gets a warning."""
    engine = load_engine(opts)
    warn_context(opts, engine.n_ctx)
    return engine


def warn_context(opts: EngineOptions, n_ctx: int) -> None:
    """Say so when the engine loaded with *n_ctx* got less context than asked: the loader cuts it to what the
    target was trained for."""
    if n_ctx < opts.n_ctx:
        warn(f"{{n_ctx}} {opts.n_ctx} is more than {Path(opts.target).name} was trained for; using {n_ctx}")


def _panel(hint: Any) -> str | None:
    return next((getattr(m, "rich_help_panel", None) for m in getattr(hint, "__metadata__", ())), None)


def engine_command(fn: Callable | None = None, *, sampling: bool = True) -> Callable:
    """Give *fn* (which takes `flags: EngineFlags`) the shared engine flags.

    A flag *fn* declares itself is its own (bench takes lists for --pair, --drafter and
    --draft-max) and keeps its default in `flags`; `sampling=False` leaves out the
    sampling flags, for a command that sets sampling itself.
    """
    if fn is None:
        return functools.partial(engine_command, sampling=sampling)
    # Resolve string annotations (from __future__ import annotations) so typer sees
    # the real Annotated[...] metadata of both the command's own and the shared flags.
    own_hints = typing.get_type_hints(fn, include_extras=True)
    flag_hints = typing.get_type_hints(EngineFlags, include_extras=True)
    sig = inspect.signature(fn)
    own = [p.replace(annotation=own_hints.get(p.name, p.annotation))
           for p in sig.parameters.values() if p.name != "flags"]
    taken = {p.name for p in own}
    names = [f.name for f in fields(EngineFlags)
             if f.name not in taken and (sampling or _panel(flag_hints[f.name]) != S)]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=getattr(EngineFlags, n),
                               annotation=flag_hints[n]) for n in names]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        flags = EngineFlags(**{n: kwargs.pop(n) for n in names})
        return fn(flags=flags, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + extra, return_annotation=inspect.Signature.empty)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    del wrapper.__wrapped__  # typer must read __signature__, not the original function
    return wrapper


__all__ = ["EngineFlags", "engine_command", "load", "path_flag", "warn_context"]
