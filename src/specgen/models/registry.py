"""Model pairs: the built-in models.yaml merged with the user's, validated with file:line errors.

The built-in file ships inside the package.  A user file at
`$XDG_CONFIG_HOME/specgen/models.yaml` (default `~/.config/specgen/models.yaml`)
is merged over it: a model there replaces the built-in model of the same id, a
pair there is merged field by field (so `drafter:` alone tunes a built-in pair
and `default: true` picks another default).  `specgen pair add` and
`specgen bench --save` write the user file, atomically.

This module knows nothing about downloads; see `models.download`.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import yaml

from ..errors import SpecgenError, shorten
from ..fileio import write_atomic
from ..settings import DRAFTERS, check_drafter, parse_draft_max

DEFAULT_QUANT = "Q4_K_M"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_QUANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")

_MODEL_FIELDS = {"repo", "quant", "file", "path", "family", "params", "size_gb", "license", "gated", "verified"}
_PAIR_FIELDS = {"target", "draft", "drafter", "draft_max", "note", "default", "verified"}
_TOP_FIELDS = {"version", "models", "pairs"}

USER_HEADER = ("# specgen user models and pairs, merged over the built-in models.yaml.\n"
               "# Written by `specgen pair add` and `specgen bench --save`; hand edits are kept,\n"
               "# comments are not.\n")


class RegistryError(SpecgenError):
    """models.yaml is not valid YAML or does not follow the schema."""


@dataclass(frozen=True)
class ModelEntry:
    id: str
    repo: str | None = None
    quant: str | None = None
    file: str | None = None
    path: Path | None = None
    family: str | None = None
    params: str | None = None
    size_gb: float | None = None
    license: str | None = None
    gated: bool = False
    verified: bool = True
    source: str = ""
    """`file:line` where the entry is defined."""

    @property
    def spec(self) -> str:
        """What a user would type: `REPO:QUANT`, `REPO/FILE` or a path."""
        if self.path is not None:
            return str(self.path)
        if self.file and not self.quant:
            return f"{self.repo}/{self.file}"
        return f"{self.repo}:{self.quant}"

    @property
    def size_bytes(self) -> int | None:
        return int(self.size_gb * 1e9) if self.size_gb is not None else None


@dataclass(frozen=True)
class PairEntry:
    name: str
    target: str
    draft: str
    drafter: str | None = None
    draft_max: int | None = None
    """None: auto (the controller sizes each draft)."""
    note: str = ""
    default: bool = False
    verified: bool = True
    user: bool = False
    """True when the user file defines or tunes this pair."""
    source: str = ""


@dataclass
class Registry:
    models: dict[str, ModelEntry]
    pairs: dict[str, PairEntry]
    default: str
    files: list[Path] = field(default_factory=list)

    def pair(self, name: str) -> PairEntry:
        if name in self.pairs:
            return self.pairs[name]
        raise SpecgenError(f"unknown pair {shorten(name)!r}{_did_you_mean(name, self.pairs)}; "
                           "`specgen list` shows the pairs, `specgen pair add` makes one")

    def model(self, model_id: str) -> ModelEntry:
        if model_id in self.models:
            return self.models[model_id]
        raise SpecgenError(f"unknown model {shorten(model_id)!r}{_did_you_mean(model_id, self.models)}")

    def pair_models(self, name: str) -> tuple[ModelEntry, ModelEntry]:
        p = self.pair(name)
        return self.models[p.target], self.models[p.draft]

    def pair_verified(self, name: str) -> bool:
        p = self.pair(name)
        t, d = self.pair_models(name)
        return p.verified and t.verified and d.verified

    def find_model(self, repo: str, quant: str | None = None, file: str | None = None) -> ModelEntry | None:
        """A model already in the registry for this repo (and quant / file), if any."""
        for m in self.models.values():
            if m.repo is None or m.repo.lower() != repo.lower():
                continue
            if file is not None and m.file == file:
                return m
            if file is None and quant is not None and (m.quant or "").lower() == quant.lower():
                return m
        return None


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    if not close:
        lowered = [k for k in known if name.lower() in k.lower()]
        close = lowered[:3]
    return f" (did you mean {', '.join(close)}?)" if close else ""


# ---------------------------------------------------------------- paths

def builtin_path() -> Path:
    """The models.yaml shipped in the package (a symlink to the repo root's in a checkout)."""
    return Path(str(resources.files("specgen.models").joinpath("models.yaml")))


def user_path() -> Path:
    if os.environ.get("XDG_CONFIG_HOME"):
        check_env_folder("XDG_CONFIG_HOME", Path(os.environ["XDG_CONFIG_HOME"]).expanduser())
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "specgen" / "models.yaml"


def check_env_folder(var: str, path: Path) -> None:
    """Name the environment variable when it points at a file (or below one), not a folder.

    Otherwise the failure surfaces later as "Not a directory" on some file inside it.
    """
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "" if probe == path else f" ({probe} is a file)"
        raise SpecgenError(f"{var}={shorten(str(path))} is not a folder{where}; point {var} at a folder, "
                           "or unset it")


# ---------------------------------------------------------------- YAML with line numbers

class _Doc:
    """A parsed YAML document as plain Python data, plus the line of every node."""

    MAX_NODES = 20_000
    """A models.yaml has tens of entries; more nodes than this means aliases multiplying (a "YAML bomb")."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines: dict[tuple, int] = {}
        self._nodes = 0
        self._open: set[int] = set()  # nodes being converted: meeting one again is an alias cycle
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.data = {} if node is None else self._plain(loader, node, ())
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            what = e.problem or e.context or "invalid YAML"
            raise RegistryError(f"{path}:{line}: invalid YAML: {what}") from None
        except yaml.YAMLError as e:
            raise RegistryError(f"{path}: invalid YAML: {e}") from None
        finally:
            loader.dispose()

    def _plain(self, loader: yaml.SafeLoader, node: yaml.Node, at: tuple) -> Any:
        # The composer shares one node among its aliases; converting to plain data copies it each
        # time, so nested aliases can multiply a small file into gigabytes.  Count and stop early.
        self._nodes += 1
        if self._nodes > self.MAX_NODES or id(node) in self._open:
            what = "refers to itself" if id(node) in self._open else \
                f"expands to more than {self.MAX_NODES} entries"
            raise RegistryError(f"{self.path}:{node.start_mark.line + 1}: the YAML anchor here {what} "
                                "through aliases (*name); write the entries out instead of aliasing them")
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            self._open.add(id(node))
            try:
                return self._plain_inner(loader, node, at)
            finally:
                self._open.discard(id(node))
        return self._plain_inner(loader, node, at)

    def _plain_inner(self, loader: yaml.SafeLoader, node: yaml.Node, at: tuple) -> Any:
        self.lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True) \
                    if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, (str, int, float)) or isinstance(key, bool):
                    raise RegistryError(f"{self.path}:{key_node.start_mark.line + 1}: "
                                        f"{self.where(at)}keys must be plain names")
                key = str(key)
                if key in out:
                    raise RegistryError(f"{self.path}:{key_node.start_mark.line + 1}: "
                                        f"{self.where(at)}duplicate key {key!r}")
                out[key] = self._plain(loader, value_node, at + (key,))
                self.lines[at + (key,)] = key_node.start_mark.line + 1  # errors point at the key
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._plain(loader, v, at + (i,)) for i, v in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    @staticmethod
    def where(at: tuple) -> str:
        return ".".join(str(a) for a in at) + ": " if at else ""

    def line(self, at: tuple) -> int:
        while at and at not in self.lines:
            at = at[:-1]
        return self.lines.get(at, 1)

    def loc(self, at: tuple) -> str:
        return f"{self.path}:{self.line(at)}"

    def error(self, at: tuple, msg: str) -> RegistryError:
        return RegistryError(f"{self.loc(at)}: {self.where(at)}{msg}")


def _read_doc(path: Path) -> _Doc:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    return _Doc(path, text)


# ---------------------------------------------------------------- schema

def safe_repo_path(name: str) -> str:
    """A repo file name that stays inside the cache folder, or a SpecgenError."""
    p = PurePosixPath(name)
    if (not name or "\\" in name or "\x00" in name or p.is_absolute() or name.startswith("~")
            or any(part in ("", ".", "..") for part in name.split("/")) or re.match(r"^[A-Za-z]:", name)):
        raise SpecgenError(f"refusing repo file name {shorten(name)!r}: it would escape the download folder")
    return name


def _check_str(doc: _Doc, at: tuple, value: Any, pattern: re.Pattern | None = None, what: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise doc.error(at, f"expected a string, got {_kind(value)}")
    value = str(value)
    if pattern is not None and not pattern.match(value):
        raise doc.error(at, f"{shorten(value)!r} is not {what}")
    return value


def _check_bool(doc: _Doc, at: tuple, value: Any) -> bool:
    if not isinstance(value, bool):
        raise doc.error(at, f"expected true or false, got {value!r}")
    return value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), repr(value))


def _unknown_keys(doc: _Doc, at: tuple, got: dict, allowed: set[str]) -> None:
    for key in got:
        if key not in allowed:
            raise doc.error(at + (key,), f"unknown field{_did_you_mean(key, allowed)}; "
                                         f"allowed: {', '.join(sorted(allowed))}")


def _model(doc: _Doc, model_id: str, raw: Any) -> ModelEntry:
    at = ("models", model_id)
    if not _ID_RE.match(model_id):
        raise doc.error(at, "model ids use letters, digits and . _ + - only")
    if not isinstance(raw, dict):
        raise doc.error(at, f"expected a mapping of fields, got {_kind(raw)}")
    _unknown_keys(doc, at, raw, _MODEL_FIELDS)
    kw: dict[str, Any] = {}
    for key in ("family", "params", "license"):
        if key in raw:
            kw[key] = _check_str(doc, at + (key,), raw[key])
    for key in ("gated", "verified"):
        if key in raw:
            kw[key] = _check_bool(doc, at + (key,), raw[key])
    if "size_gb" in raw:
        v = raw["size_gb"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise doc.error(at + ("size_gb",), f"expected a size in GB (a number), got {v!r}")
        kw["size_gb"] = float(v)
    if ("repo" in raw) == ("path" in raw):
        raise doc.error(at, "give either `repo` (a Hugging Face repo) or `path` (a local GGUF file)")
    if "path" in raw:
        for key in ("quant", "file", "gated"):
            if key in raw:
                raise doc.error(at + (key,), f"`{key}` goes with `repo`, not with `path`")
        p = Path(_check_str(doc, at + ("path",), raw["path"])).expanduser()
        if not p.is_absolute():
            p = (doc.path.parent / p).resolve()
        return ModelEntry(id=model_id, path=p, source=doc.loc(at), **kw)
    repo = _check_str(doc, at + ("repo",), raw["repo"], _REPO_RE, "a Hugging Face repo id (owner/name)")
    quant = _check_str(doc, at + ("quant",), raw["quant"], _QUANT_RE, "a quantization name like Q4_K_M") \
        if "quant" in raw else None
    file = None
    if "file" in raw:
        file = _check_str(doc, at + ("file",), raw["file"])
        try:
            safe_repo_path(file)
        except SpecgenError as e:
            raise doc.error(at + ("file",), str(e)) from None
        if not file.lower().endswith(".gguf"):
            raise doc.error(at + ("file",), f"{file!r} is not a .gguf file")
    if quant is None and file is None:
        raise doc.error(at, "give `quant` (like Q4_K_M) or `file` (a .gguf in the repo)")
    return ModelEntry(id=model_id, repo=repo, quant=quant, file=file, source=doc.loc(at), **kw)


def _pair_fields(doc: _Doc, name: str, raw: Any) -> dict[str, Any]:
    at = ("pairs", name)
    if not _ID_RE.match(name):
        raise doc.error(at, "pair names use letters, digits and . _ + - only")
    if not isinstance(raw, dict):
        raise doc.error(at, f"expected a mapping of fields, got {_kind(raw)}")
    _unknown_keys(doc, at, raw, _PAIR_FIELDS)
    out: dict[str, Any] = {}
    for key in ("target", "draft"):
        if key in raw:
            out[key] = _check_str(doc, at + (key,), raw[key], _ID_RE, "a model id")
    if "drafter" in raw:
        v = raw["drafter"]
        if v not in DRAFTERS:
            raise doc.error(at + ("drafter",), f"{v!r} is not a drafter; choose one of {', '.join(DRAFTERS)}")
        out["drafter"] = v
    if "draft_max" in raw:
        try:
            out["draft_max"] = parse_draft_max(raw["draft_max"])
        except SpecgenError:
            raise doc.error(at + ("draft_max",), f"expected a number of tokens (0 or more) or auto, "
                                                 f"got {raw['draft_max']!r}") from None
    if "note" in raw:
        out["note"] = _check_str(doc, at + ("note",), raw["note"])
    for key in ("default", "verified"):
        if key in raw:
            out[key] = _check_bool(doc, at + (key,), raw[key])
    return out


def _top(doc: _Doc) -> tuple[dict, dict]:
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), f"expected a mapping with `models:` and `pairs:`, got {_kind(data)}")
    _unknown_keys(doc, (), data, _TOP_FIELDS)
    if "version" in data and data["version"] != 1:
        raise doc.error(("version",), f"unsupported version {data['version']!r} (this specgen reads version 1)")
    models = data.get("models") or {}
    pairs = data.get("pairs") or {}
    for key, value in (("models", models), ("pairs", pairs)):
        if not isinstance(value, dict):
            raise doc.error((key,), f"expected a mapping, got {_kind(value)}")
    return models, pairs


def load_registry(user_file: Path | None = None, builtin_file: Path | None = None) -> Registry:
    """The built-in models.yaml merged with the user's (which may be absent)."""
    builtin_file = builtin_file or builtin_path()
    user_file = user_file or user_path()
    docs = [_read_doc(builtin_file)]
    if user_file.exists():
        docs.append(_read_doc(user_file))
    return _merge(docs)


def _merge(docs: list[_Doc]) -> Registry:
    models: dict[str, ModelEntry] = {}
    pair_raw: dict[str, dict[str, Any]] = {}
    pair_src: dict[str, tuple[_Doc, dict[str, tuple]]] = {}
    user_pairs: set[str] = set()
    for n, doc in enumerate(docs):
        raw_models, raw_pairs = _top(doc)
        for model_id, raw in raw_models.items():
            models[str(model_id)] = _model(doc, str(model_id), raw)
        defaults_here = []
        for name, raw in raw_pairs.items():
            name = str(name)
            got = _pair_fields(doc, name, raw)
            merged = pair_raw.setdefault(name, {})
            merged.update(got)
            src = pair_src.setdefault(name, (doc, {}))[1]
            for key in got:
                src[key] = (doc, ("pairs", name, key))
            pair_src[name] = (doc, src)
            if n > 0:
                user_pairs.add(name)
            if got.get("default"):
                defaults_here.append(name)
        if len(defaults_here) > 1:
            raise docs[n].error(("pairs", defaults_here[1], "default"),
                                f"more than one default pair ({', '.join(defaults_here)}); mark one")
        if defaults_here:
            for other in pair_raw:  # a later file's default replaces an earlier one
                if other != defaults_here[0]:
                    pair_raw[other]["default"] = False

    pairs: dict[str, PairEntry] = {}
    for name, raw in pair_raw.items():
        doc, src = pair_src[name]
        for key in ("target", "draft"):
            if key not in raw:
                raise doc.error(("pairs", name), f"missing `{key}` (a model id)")
            if raw[key] not in models:
                fdoc, at = src[key]
                raise fdoc.error(at, f"{raw[key]!r} is not a model in models.yaml"
                                     f"{_did_you_mean(raw[key], models)}")
        pairs[name] = PairEntry(name=name, user=name in user_pairs, source=doc.loc(("pairs", name)), **raw)
    defaults = [p.name for p in pairs.values() if p.default]
    if len(defaults) != 1:
        raise docs[-1].error(("pairs",), "exactly one pair must say `default: true`"
                                      f" (found {len(defaults)}{': ' + ', '.join(defaults) if defaults else ''})")
    return Registry(models=models, pairs=pairs, default=defaults[0], files=[d.path for d in docs])


# ---------------------------------------------------------------- writing the user file

def _load_user_raw(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"version": 1}
    doc = _read_doc(path)
    _top(doc)
    return dict(doc.data or {"version": 1})


def _render_user(path: Path, raw: dict[str, Any], builtin_file: Path | None = None) -> tuple[str, Registry]:
    """The user file's text for *raw*, and the registry it would give (validated, nothing written)."""
    text = USER_HEADER + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text, _merge([_read_doc(builtin_file or builtin_path()), _Doc(path, text)])


def _write_user_raw(path: Path, raw: dict[str, Any], builtin_file: Path | None = None) -> Path:
    """Validate *raw* merged over the built-in file, then replace *path* atomically."""
    raw = {"version": 1, **{k: v for k, v in raw.items() if k != "version"}}
    for key in ("models", "pairs"):
        if key in raw and not raw[key]:
            del raw[key]
    text, _ = _render_user(path, raw, builtin_file)  # raises before anything is written
    return write_atomic(path, text)


def save_local_default(pair: str, drafter: str, draft_max: int | None) -> Path:
    """Record *pair*'s preferred drafter and draft_max (None: auto) in the user models.yaml.

    Used by `specgen bench --save`; `run`/`chat` then use these over the pair's
    built-in recommendation.  Returns the file written.
    """
    check_drafter(drafter)
    parse_draft_max(draft_max)
    path = user_path()
    load_registry(path).pair(pair)  # unknown pair -> error with close matches
    raw = _load_user_raw(path)
    pairs = raw.setdefault("pairs", {}) or {}
    raw["pairs"] = pairs
    entry = pairs.setdefault(pair, {}) or {}
    pairs[pair] = entry
    entry["drafter"] = drafter
    entry["draft_max"] = "auto" if draft_max is None else draft_max
    return _write_user_raw(path, raw)


@dataclass(frozen=True)
class ModelSpec:
    """A model as given on the command line: a registry id, REPO[:QUANT], or a local path."""
    repo: str | None = None
    quant: str | None = None
    path: Path | None = None
    model_id: str | None = None


def parse_model_spec(spec: str, registry: Registry | None = None) -> ModelSpec:
    """`qwen2.5-coder-0.5b` (a model id), `Qwen/X-GGUF[:Q4_K_M]`, or `./model.gguf`."""
    spec = spec.strip()
    p = Path(spec).expanduser()
    if p.is_file() or spec.lower().endswith(".gguf") or spec.startswith((".", "/", "~")):
        return ModelSpec(path=p.resolve())
    if registry is not None and spec in registry.models:
        return ModelSpec(model_id=spec)
    repo, _, quant = spec.partition(":")
    if _REPO_RE.match(repo) and (not quant or _QUANT_RE.match(quant)):
        return ModelSpec(repo=repo, quant=quant or None)
    known = _did_you_mean(spec, registry.models) if registry is not None else ""
    raise SpecgenError(f"{shorten(spec)!r} is not a model id{known}, a Hugging Face REPO[:QUANT] "
                       "(like Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:Q4_K_M), or a .gguf file")


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
    if not _ID_RE.match(name):
        raise SpecgenError(f"pair name {shorten(name)!r}: use letters, digits and . _ + - only")
    path = user_path()
    registry = load_registry(path)
    if name in registry.pairs and not force:
        where = "your models.yaml" if registry.pairs[name].user else "the built-in models.yaml"
        raise SpecgenError(f"pair {shorten(name)!r} already exists in {where}; choose another name or pass --force")
    if drafter is not None:
        check_drafter(drafter)
    new_models: dict[str, Any] = {}
    ids = []
    for spec_text in (target, draft):
        spec = parse_model_spec(spec_text, registry)
        if spec.path is not None and not spec.path.is_file():
            raise SpecgenError(f"{spec.path}: no such file")
        ids.append(_model_id_for(spec, registry, new_models))
    raw = _load_user_raw(path)
    models = raw.get("models") or {}
    models.update(new_models)
    raw["models"] = models
    pairs = raw.get("pairs") or {}
    entry: dict[str, Any] = {"target": ids[0], "draft": ids[1], "drafter": drafter or "auto",
                             "draft_max": "auto" if draft_max is None else draft_max}
    if note:
        entry["note"] = note
    if default:
        entry["default"] = True
        for other in pairs.values():
            if isinstance(other, dict):
                other.pop("default", None)
    pairs[name] = entry
    raw["pairs"] = pairs
    if check is not None:
        check(_render_user(path, {"version": 1, **{k: v for k, v in raw.items() if k != "version"}})[1])
    written = _write_user_raw(path, raw)
    return written, load_registry(path)
