"""Which GGUF files a command should load, from --target/--draft or --pair.

`--target` without `--pair`: the paths as given.  Otherwise the pair named (or
the default pair), pulled with progress first when it is not downloaded yet;
an explicit `--target` / `--draft` replaces that side of the pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecgenError


@dataclass
class Resolved:
    target: Path
    draft: Path | None = None
    drafter: str | None = None
    """The pair's recommended drafter (a local default saved by bench wins), or None."""
    draft_max: int | None = None
    pair: str | None = None


def resolve_models(pair: str | None, target: Path | None, draft: Path | None,
                   download: bool = True) -> Resolved:
    if target is not None and pair is None:
        return Resolved(target, draft)
    if pair is not None and not pair.strip():  # not the default pair: that may be a 5 GB download
        raise SpecgenError("{pair} is empty; name a pair (`specgen list` shows them), or leave {pair} out "
                           "for the default pair")

    from ..llama.vocab import check_pair_files
    from ..fileio import unreadable
    from .cache import file_problem, local_files
    from .download import pull_models
    from .progress import Progress
    from .registry import load_registry

    registry = load_registry()
    name = pair or registry.default
    entry = registry.pair(name)
    t_model, d_model = registry.pair_models(name)
    need = [m for m, given in ((t_model, target), (d_model, draft)) if given is None]
    for m in need:
        problem = unreadable(m.path) if m.path is not None else None  # gone, a folder, a pipe, a link loop
        if problem:
            raise SpecgenError(f"pair {name}: model {m.id} is the local file {m.path}: {problem}; "
                               f"fix its `path:` ({m.source}) or make the pair again with `specgen pair add --force`")
    local = {m.id: local_files(m) for m in need}
    for m in need:
        for f in (local[m.id] or []) if m.path is None else []:
            problem = file_problem(f)
            if problem is not None:
                raise SpecgenError(f"{f}: the downloaded copy of {m.id} is damaged ({problem}); "
                                   f"run `specgen pull {name}` to fetch it again")
    missing = [m for m in need if local[m.id] is None]
    if missing:
        if not download:
            raise SpecgenError(f"pair {name!r} is not downloaded ({', '.join(m.id for m in missing)} missing); "
                               f"run `specgen pull {name}` first (or drop --no-download)")
        Progress().message(f"pair {name} is not downloaded yet; pulling it "
                           f"({', '.join(m.spec for m in missing)})")
        for got in pull_models(missing):
            local[got.model.id] = got.files
        if target is None and draft is None:
            check_pair_files(local[t_model.id][0], local[d_model.id][0])
    target_path = target if target is not None else local[t_model.id][0]
    draft_path = draft if draft is not None else local[d_model.id][0]
    return Resolved(target=Path(target_path), draft=Path(draft_path), drafter=entry.drafter,
                    draft_max=entry.draft_max, pair=name)
