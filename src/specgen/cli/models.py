"""`specgen pull / list / rm / pair add`: model pairs from models.yaml and the Hugging Face Hub."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..llama.vocab import check_pair_files
from ..models import cache, download
from ..errors import SpecgenError, printable, shorten
from ..fileio import human_size
from ..models.registry import ModelEntry, load_registry, parse_model_spec, user_path
from ..models.userfile import add_pair
from ..settings import DRAFTERS, check_given, parse_draft_max
from . import app

pair_app = typer.Typer(help="Manage your own model pairs (written to your models.yaml).", no_args_is_help=True)
app.add_typer(pair_app, name="pair")

# No markup: the lines quote names and paths from models.yaml, where "[/x]" is text, not a style.
_err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


@app.command()
def pull(
    name: Annotated[str, typer.Argument(
        metavar="PAIR|REPO[:QUANT]",
        help="A pair from `specgen list`, a model id, or a Hugging Face repo with an optional quant (default Q4_K_M).")],
    check: Annotated[bool, typer.Option("--check", help="Also hash what is already downloaded (sha256) and "
                                                       "fetch again what does not match.")] = False,
) -> None:
    """Download a pair (or one model) into the Hugging Face cache, check it, print the local paths."""
    check_given("PAIR|REPO", name, required=True)
    registry = load_registry()
    if name in registry.pairs:
        got = download.pull_pair(registry, name, check=check)
        check_pair_files(got.target[0], got.draft[0])
        files = got.target + (got.draft or [])
        what = f"pair {name}"
        downloaded = got.downloaded
    else:
        if name in registry.models:
            model = registry.models[name]
        elif "/" in name:
            spec = parse_model_spec(name, registry)
            if spec.path is not None:
                if not spec.path.exists():
                    raise SpecgenError(f"{shorten(name)} is not a pair, a model id or a Hugging Face REPO[:QUANT] "
                                       "(`specgen list` shows the pairs)")
                raise SpecgenError(f"{shorten(name)} is a local file; nothing to pull (use it with --target/--draft)")
            model = registry.find_model(spec.repo, quant=spec.quant or "Q4_K_M") or \
                ModelEntry(id=name, repo=spec.repo, quant=spec.quant or "Q4_K_M")
        else:
            registry.pair(name)  # unknown pair, with close matches
            return
        pulled = download.pull_models([model], check=check)[0]
        files, what, downloaded = pulled.files, model.spec, pulled.downloaded
    status = f"downloaded {human_size(downloaded)}" if downloaded else "already downloaded"
    _err.print(f"{printable(what)}: {status}, checked ({'sha256, ' if check else ''}size and GGUF header)")
    for f in files:
        print(printable(f))


@app.command("list")
def list_pairs(
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """Show the model pairs: sizes, whether downloaded, whether verified."""
    registry = load_registry()
    statuses = cache.pair_statuses(registry)
    if json_out:
        print(json.dumps([s.as_json() for s in statuses], indent=2))
        return
    out = Console(highlight=False, markup=False)  # a note "[/x]" is text, not a style
    if not out.is_terminal:
        out = Console(highlight=False, markup=False, width=200)  # piped: no wrapping
    cols = ["pair", "target", "draft", "quant", "size", "downloaded", "verified"]
    if out.width < 110:
        cols.remove("quant")
    if out.width >= 150:
        cols.append("note")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in cols:
        table.add_column(col, no_wrap=col in ("quant", "size", "downloaded", "verified"),
                         overflow="fold")
    for s in statuses:
        t, d, exact = s.sizes()
        size = human_size((t or 0) + (d or 0)) if t is not None and d is not None else "?"
        quants = {s.target.quant or "-", s.draft.quant or "-"}
        row = [s.name + (" *" if s.default else "") + (" (yours)" if s.user else ""),
               _model_label(s.target), _model_label(s.draft),
               "/".join(sorted(quants)) if len(quants) > 1 else quants.pop(),
               size if exact or size == "?" else "~" + size, s.downloaded, "yes" if s.verified else "no", s.note]
        if "quant" not in cols:
            del row[3]
        table.add_row(*(printable(c) for c in row[:len(cols)]))  # notes and paths come from models.yaml
    out.print(table)
    out.print(f"* default pair; ~ approximate size until downloaded; cache {cache.cache_dir()}; "
              f"your pairs: {user_path()}", style="dim")


def _model_label(m: ModelEntry) -> str:
    if m.path is not None:
        return m.path.name
    return m.id + (" (gated)" if m.gated else "")


@app.command()
def rm(
    name: Annotated[str, typer.Argument(metavar="PAIR", help="A pair from `specgen list`.")],
) -> None:
    """Delete a pair's downloaded files that no other downloaded pair uses."""
    registry = load_registry()
    registry.pair(name)
    done = cache.remove_pair(registry, name)
    if not done.removed and not done.kept and not done.unlinked and not done.shared:
        _err.print(f"pair {name}: nothing downloaded, nothing removed")
        return
    for f in done.removed:
        print(printable(f"removed {f}"))
    for f in done.shared:
        print(printable(f"removed {f}; its data stays on disk, another name (a hard link) still holds it"))
    for f, outside in done.unlinked:
        print(printable(f"removed the link {f}; {outside} is outside the cache and stays"))
    for f in done.kept:
        print(printable(f"kept {f} (used by another downloaded pair)"))
    _err.print(f"pair {name}: freed {human_size(done.freed)}")


@pair_app.command("add")
def pair_add(
    name: Annotated[str, typer.Argument(help="Name for the pair.")],
    target: Annotated[str, typer.Option(help="REPO[:QUANT], a model id, or a .gguf path.")],
    draft: Annotated[str, typer.Option(help="REPO[:QUANT], a model id, or a .gguf path (same vocabulary).")],
    drafter: Annotated[Optional[str], typer.Option(help=f"{' | '.join(DRAFTERS)} (default auto).")] = None,
    draft_max: Annotated[str, typer.Option(help="Most draft tokens per step, or auto.")] = "auto",
    note: Annotated[Optional[str], typer.Option(help="One line shown by `specgen list`.")] = None,
    default: Annotated[bool, typer.Option("--default", help="Make it the default pair.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a pair of the same name.")] = False,
) -> None:
    """Add a pair to your models.yaml; `specgen pull NAME` then downloads it."""
    for flag, value in (("--target", target.strip()), ("--draft", draft.strip())):  # a model is named stripped
        check_given(flag, value, required=True)
    for flag, value in (("--drafter", drafter), ("--draft-max", draft_max), ("--note", note)):
        check_given(flag, value)

    def check(preview) -> None:  # before anything is written: a pair that is refused is never saved
        local = cache.local_pair(preview, name)
        if local is not None:
            check_pair_files(local.target[0], local.draft[0])

    path, registry = add_pair(name, target, draft, drafter=drafter, draft_max=parse_draft_max(draft_max), note=note,
                              default=default, force=force, check=check)
    have = cache.local_pair(registry, name)
    t, d = registry.pair_models(name)
    _err.print(printable(f"pair {name}: target {t.spec}, draft {d.spec}; written to {path}"))
    if have is None:
        _err.print(f"run `specgen pull {name}` to download it")
