"""Writing the user's models.yaml: `specgen pair add` and `specgen bench --save`.

Every change is made under a lock and to the file as it reads at that moment, checked merged
over the built-in file, then written in one step: a refused change writes nothing, and two
writers at once both keep their change.  Hand edits are kept, comments are not.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from ..errors import SpecgenError, shorten
from ..fileio import absent, os_problem, real_path, unreadable, write_atomic
from ..llama.gguf import WHAT_TO_GIVE
from ..settings import check_drafter, parse_draft_max, shown_draft_max
from .registry import (DEFAULT_QUANT, ID_RE, ID_RULE, ModelSpec, Registry, builtin_path, merge_docs,
                       parse_model_spec, user_path)
from .yamldoc import YamlDoc, read_doc

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; writers are not serialised there
    fcntl = None  # type: ignore[assignment]

USER_HEADER = ("# specgen user models and pairs, merged over the built-in models.yaml.\n"
               "# Written by `specgen pair add` and `specgen bench --save`; hand edits are kept,\n"
               "# comments are not.\n")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold *folder* (the one holding the user file) locked while the file is read, changed and replaced.

    Without it two writers at once each replace the file with their own change, and one change
    is lost.  The folder itself is locked, not a lock file beside models.yaml, so nothing is left
    behind in the user's config folder; the lock goes with the process, however it ends.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise SpecgenError(f"{shorten(str(folder), 200)}: cannot write there ({os_problem(e)})") from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_user_file(change: Callable[[dict[str, Any], Registry], None],
                     check: Callable[[Registry], None] | None = None) -> tuple[Path, Registry]:
    """Apply *change* to the user models.yaml and write it; the file written and the registry it gives.

    *change* edits the file's plain data in place, seeing the registry as it reads now (under the
    lock, so no other writer's change is lost).  *check* sees the registry as it would read after
    the change and may raise: then, as when the result does not validate, nothing is written.
    """
    path = user_path()
    # The folder of the file that is really replaced (write_atomic follows a link): writers that reach it
    # through different links to it must take the same lock.
    with _locked(real_path(path).parent):
        builtin = read_doc(builtin_path())
        user = None if absent(path) else read_doc(path)
        registry = merge_docs([builtin] if user is None else [builtin, user])  # validates the user file
        raw = dict(user.data or {}) if user is not None else {}
        change(raw, registry)
        raw = {"version": 1, **{k: v for k, v in raw.items()
                                if k != "version" and (v or k not in ("models", "pairs"))}}  # no empty sections
        text = USER_HEADER + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, default_flow_style=False)
        after = merge_docs([builtin, YamlDoc(path, text)])  # raises before anything is written
        if check is not None:
            check(after)
        return write_atomic(path, text), after


def save_local_default(pair: str, drafter: str, draft_max: int | None) -> Path:
    """Record *pair*'s preferred drafter and draft_max (None: auto) in the user models.yaml.

    Used by `specgen bench --save`; `run`/`chat` then use these over the pair's
    built-in recommendation.  Returns the file written.
    """
    check_drafter(drafter)
    parse_draft_max(draft_max)

    def change(raw: dict[str, Any], registry: Registry) -> None:
        registry.pair(pair)  # unknown pair -> error with close matches
        pairs = raw["pairs"] = raw.get("pairs") or {}
        entry = pairs[pair] = pairs.get(pair) or {}
        entry["drafter"] = drafter
        entry["draft_max"] = shown_draft_max(draft_max)

    return update_user_file(change)[0]


def _model_id_for(spec: ModelSpec, registry: Registry, new_models: dict[str, Any]) -> str:
    if spec.model_id:
        return spec.model_id
    if spec.path is not None:
        for m in registry.models.values():
            if m.path is not None and m.path == spec.path:
                return m.id
        base = re.sub(r"[^A-Za-z0-9._+-]", "-", spec.path.stem).strip("-._").lower() or "model"
        entry: dict[str, Any] = {"path": str(spec.path)}
    else:
        quant = spec.quant or DEFAULT_QUANT
        found = registry.find_model(spec.repo, quant=quant)
        if found is not None:
            return found.id
        name = spec.repo.split("/", 1)[1]
        name = re.sub(r"(?i)[-_.]gguf$", "", name)
        base = re.sub(r"[^A-Za-z0-9._+-]", "-", f"{name}-{quant}").lower()
        entry = {"repo": spec.repo, "quant": quant}
    model_id, n = base, 2
    while model_id in registry.models or (model_id in new_models and new_models[model_id] != entry):
        model_id, n = f"{base}-{n}", n + 1
    new_models[model_id] = entry
    return model_id


def add_pair(name: str, target: str, draft: str, *, drafter: str | None = None,
             draft_max: int | None = None, note: str | None = None, default: bool = False,
             force: bool = False, check: Callable[[Registry], None] | None = None) -> tuple[Path, Registry]:
    """Write pair *name* (and any new model entries) to the user models.yaml.

    *target* and *draft* are model ids, `REPO[:QUANT]` or local .gguf paths.
    *check* sees the registry as it would read with the pair and may raise: then
    nothing is written.  Returns the file written and the registry as it now reads.
    """
    if not ID_RE.fullmatch(name):
        raise SpecgenError(f"{shorten(name)!r} is not a pair name: a name {ID_RULE}")
    if drafter is not None:
        check_drafter(drafter)

    def change(raw: dict[str, Any], registry: Registry) -> None:
        if name in registry.pairs and not force:
            where = "your models.yaml" if registry.pairs[name].user else "the built-in models.yaml"
            raise SpecgenError(f"pair {shorten(name)!r} already exists in {where}; choose another name or "
                               "pass --force")
        new_models: dict[str, Any] = {}
        ids = []
        for spec_text in (target, draft):
            spec = parse_model_spec(spec_text, registry)
            problem = unreadable(spec.path, WHAT_TO_GIVE) if spec.path is not None else None
            if problem:
                raise SpecgenError(f"{shorten(str(spec.path), 200)}: {problem}")
            ids.append(_model_id_for(spec, registry, new_models))
        models = raw["models"] = raw.get("models") or {}
        models.update(new_models)
        pairs = raw["pairs"] = raw.get("pairs") or {}
        entry: dict[str, Any] = {"target": ids[0], "draft": ids[1], "drafter": drafter or "auto",
                                 "draft_max": shown_draft_max(draft_max)}
        if note:
            entry["note"] = note
        if default:
            entry["default"] = True
            for other in pairs.values():
                if isinstance(other, dict):
                    other.pop("default", None)
        pairs[name] = entry

    return update_user_file(change, check)
