"""Model pairs: the built-in models.yaml merged with the user's, validated with file:line errors.

The built-in file ships inside the package.  A user file at
`$XDG_CONFIG_HOME/specgen/models.yaml` (default `~/.config/specgen/models.yaml`)
is merged over it: a model there replaces the built-in model of the same id, a
pair there is merged field by field (so `drafter:` alone tunes a built-in pair
and `default: true` picks another default).  `specgen pair add` and
`specgen bench --save` write the user file (`models.userfile`); the YAML is read
with the line of every node (`models.yamldoc`).

This module knows nothing about downloads; see `models.download`.
"""

from __future__ import annotations

import difflib
import errno
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import SpecgenError, is_finite_number, kind_of, shorten
from ..fileio import absent, home_path, real_path, xdg_dir
from ..settings import check_drafter, parse_draft_max
from .yamldoc import YamlDoc, read_doc

DEFAULT_QUANT = "Q4_K_M"

# Matched whole (`fullmatch`): with `match`, a `$` would let a trailing newline through.
ID_MAX = 100
ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+-]{{0,{ID_MAX - 1}}}")
ID_RULE = (f"starts with an ASCII letter or digit and holds only ASCII letters, digits and . _ + -, "
           f"at most {ID_MAX} characters")
"""ID_RE in words, for the messages that refuse a model or pair name."""
REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
QUANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")

MAX_SIZE_GB = 1_000_000
"""The largest `size_gb` a model may state: far past any model, and small enough that its size in bytes stays finite."""

_MODEL_FIELDS = {"repo", "quant", "file", "path", "family", "params", "size_gb", "license", "gated", "verified"}
_PAIR_FIELDS = {"target", "draft", "drafter", "draft_max", "note", "default", "verified"}
_TOP_FIELDS = {"version", "models", "pairs"}


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
    return xdg_dir("XDG_CONFIG_HOME", ".config") / "specgen" / "models.yaml"


# ---------------------------------------------------------------- schema

def safe_repo_path(name: str) -> str:
    """A repo file name that stays inside the cache folder, or a SpecgenError."""
    p = PurePosixPath(name)
    if (not name or "\\" in name or "\x00" in name or p.is_absolute() or name.startswith("~")
            or any(part in ("", ".", "..") for part in name.split("/")) or re.match(r"^[A-Za-z]:", name)):
        raise SpecgenError(f"refusing repo file name {shorten(name)!r}: it would escape the download folder")
    return name


def _check_str(doc: YamlDoc, at: tuple, value: Any, pattern: re.Pattern | None = None, what: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise doc.error(at, f"expected a string, got {_kind(value)}")
    value = str(value)
    if pattern is not None and not pattern.fullmatch(value):
        raise doc.error(at, f"{shorten(value)!r} is not {what}")
    return value


def _check_bool(doc: YamlDoc, at: tuple, value: Any) -> bool:
    if not isinstance(value, bool):
        raise doc.error(at, f"expected true or false, got {_kind(value)}")
    return value


def _plain_fields(doc: YamlDoc, at: tuple, raw: dict, texts: tuple[str, ...], flags: tuple[str, ...]) -> dict:
    """The entry's optional text fields and true/false fields that are there, checked."""
    out = {key: _check_str(doc, at + (key,), raw[key]) for key in texts if key in raw}
    out.update({key: _check_bool(doc, at + (key,), raw[key]) for key in flags if key in raw})
    return out


def _check_path(doc: YamlDoc, at: tuple, value: Any) -> Path:
    """A local model's `path:`, made absolute (a relative one is relative to the file that says it)."""
    text = _check_str(doc, at, value)
    if "\x00" in text:
        raise doc.error(at, "a path cannot hold a NUL character")
    try:
        p = home_path(text)
    except SpecgenError as e:
        raise doc.error(at, str(e)) from None
    p = p if p.is_absolute() else real_path(doc.path.parent / p)
    try:
        p.stat()  # the file may well be missing (said when it is needed); a path no system takes is not
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise doc.error(at, f"a path of {len(text)} characters is longer than the file system allows") from None
    return p


def _kind(value: Any) -> str:
    """A YAML value as a message shows it: a mapping, a list or null by its kind, anything else as written."""
    return kind_of(value) if isinstance(value, (dict, list)) or value is None else shorten(repr(value))


def _unknown_keys(doc: YamlDoc, at: tuple, got: dict, allowed: set[str]) -> None:
    for key in got:
        if key not in allowed:
            raise doc.error(at + (key,), f"unknown field{_did_you_mean(key, allowed)}; "
                                         f"allowed: {', '.join(sorted(allowed))}")


def _check_entry(doc: YamlDoc, at: tuple, raw: Any, allowed: set[str]) -> None:
    """An entry of `models:` or `pairs:`: a plain name, and a mapping of known fields."""
    if not ID_RE.fullmatch(at[-1]):
        raise doc.error(at, f"not a {at[0][:-1]} name: a name {ID_RULE}")
    if not isinstance(raw, dict):
        raise doc.error(at, f"expected a mapping of fields, got {_kind(raw)}")
    _unknown_keys(doc, at, raw, allowed)


def _model(doc: YamlDoc, model_id: str, raw: Any) -> ModelEntry:
    at = ("models", model_id)
    _check_entry(doc, at, raw, _MODEL_FIELDS)
    kw = _plain_fields(doc, at, raw, ("family", "params", "license"), ("gated", "verified"))
    if "size_gb" in raw:
        v = raw["size_gb"]
        if not is_finite_number(v) or not 0 <= v <= MAX_SIZE_GB:
            raise doc.error(at + ("size_gb",), f"expected a size in GB (a number from 0 to {MAX_SIZE_GB:,}), "
                                               f"got {_kind(v)}")
        kw["size_gb"] = float(v)
    if ("repo" in raw) == ("path" in raw):
        raise doc.error(at, "give either `repo` (a Hugging Face repo) or `path` (a local GGUF file)")
    if "path" in raw:
        for key in ("quant", "file", "gated"):
            if key in raw:
                raise doc.error(at + (key,), f"`{key}` goes with `repo`, not with `path`")
        return ModelEntry(id=model_id, path=_check_path(doc, at + ("path",), raw["path"]), source=doc.loc(at), **kw)
    repo = _check_str(doc, at + ("repo",), raw["repo"], REPO_RE, "a Hugging Face repo id (owner/name)")
    quant = _check_str(doc, at + ("quant",), raw["quant"], QUANT_RE, "a quantization name like Q4_K_M") \
        if "quant" in raw else None
    file = None
    if "file" in raw:
        file = _check_str(doc, at + ("file",), raw["file"])
        try:
            safe_repo_path(file)
        except SpecgenError as e:
            raise doc.error(at + ("file",), str(e)) from None
        if not file.lower().endswith(".gguf"):
            raise doc.error(at + ("file",), f"{shorten(file)!r} is not a .gguf file")
    if quant is None and file is None:
        raise doc.error(at, "give `quant` (like Q4_K_M) or `file` (a .gguf in the repo)")
    return ModelEntry(id=model_id, repo=repo, quant=quant, file=file, source=doc.loc(at), **kw)


def _pair_fields(doc: YamlDoc, name: str, raw: Any) -> dict[str, Any]:
    at = ("pairs", name)
    _check_entry(doc, at, raw, _PAIR_FIELDS)
    out: dict[str, Any] = {}
    for key in ("target", "draft"):
        if key in raw:
            out[key] = _check_str(doc, at + (key,), raw[key], ID_RE, "a model id")
    if "drafter" in raw:
        try:
            out["drafter"] = check_drafter(raw["drafter"])
        except SpecgenError as e:
            raise doc.error(at + ("drafter",), str(e)) from None
    if "draft_max" in raw:
        try:
            out["draft_max"] = parse_draft_max(raw["draft_max"])
        except SpecgenError:
            raise doc.error(at + ("draft_max",), f"expected a number of tokens (0 or more) or auto, "
                                                 f"got {_kind(raw['draft_max'])}") from None
    out.update(_plain_fields(doc, at, raw, ("note",), ("default", "verified")))
    return out


def _check_top(doc: YamlDoc) -> tuple[dict, dict]:
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), f"expected a mapping with `models:` and `pairs:`, got {_kind(data)}")
    _unknown_keys(doc, (), data, _TOP_FIELDS)
    if "version" in data and data["version"] != 1:
        raise doc.error(("version",), f"unsupported version {_kind(data['version'])} (this specgen reads version 1)")
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
    docs = [read_doc(builtin_file)]
    if not absent(user_file):  # unlike exists(), a link loop is read, to be reported
        docs.append(read_doc(user_file))
    return merge_docs(docs)


def merge_docs(docs: list[YamlDoc]) -> Registry:
    models: dict[str, ModelEntry] = {}
    pair_raw: dict[str, dict[str, Any]] = {}
    pair_src: dict[str, tuple[YamlDoc, dict[str, tuple]]] = {}
    user_pairs: set[str] = set()
    for n, doc in enumerate(docs):
        raw_models, raw_pairs = _check_top(doc)
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
    p = home_path(spec)
    if p.is_file() or spec.lower().endswith(".gguf") or spec.startswith((".", "/", "~")):
        return ModelSpec(path=real_path(p))
    if registry is not None and spec in registry.models:
        return ModelSpec(model_id=spec)
    repo, _, quant = spec.partition(":")
    if REPO_RE.fullmatch(repo) and (not quant or QUANT_RE.fullmatch(quant)):
        return ModelSpec(repo=repo, quant=quant or None)
    known = _did_you_mean(spec, registry.models) if registry is not None else ""
    raise SpecgenError(f"{shorten(spec)!r} is not a model id{known}, a Hugging Face REPO[:QUANT] "
                       "(like Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:Q4_K_M), or a .gguf file")
