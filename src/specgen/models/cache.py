"""What of a model is in the local Hub cache: finding, measuring and removing it.

The layout is huggingface_hub's own (`$HF_HOME/hub/models--org--name/{blobs,snapshots,refs}`), so
`hf cache ls` sees what specgen pulled and other tools reuse it.  Nothing here touches the network:
the rules for which repo files make up one model (a quant's GGUF, split shards in order) serve both
the cache look-up and the downloader.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import SpecgenError, shorten
from ..fileio import cache_home, check_env_folder, home_path, os_problem, real_path
from ..settings import shown_draft_max
from .registry import DEFAULT_QUANT, ModelEntry, Registry, safe_repo_path


# ---------------------------------------------------------------- where the cache is

def cache_dir() -> Path:
    """The Hub cache: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.

    A variable that points at a file (or below one) is named in the error, rather than
    surfacing later as "Not a directory" on some file inside it.
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):  # cache_home() checks XDG_CACHE_HOME
        value = os.environ.get(var)
        if value:
            check_env_folder(var, home_path(os.path.expandvars(value)))
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return home_path(os.path.expandvars(explicit))
    return hf_home() / "hub"


def hf_home() -> Path:
    """huggingface_hub's own folder ($HF_HOME, else ~/.cache/huggingface): the Hub cache and the saved token."""
    return home_path(os.path.expandvars(os.environ.get("HF_HOME") or str(cache_home() / "huggingface")))


def storage_folder(repo: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / ("models--" + repo.replace("/", "--"))


# ---------------------------------------------------------------- which files make a model

_SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


_QUANT_TOKEN_RE = re.compile(
    r"(?<![A-Za-z0-9])(I?T?Q\d+(?:_[A-Za-z0-9]+)*|BF16|FP16|F16|F32|MXFP4(?:_[A-Za-z0-9]+)*)(?![A-Za-z0-9])",
    re.IGNORECASE)


def quant_of(name: str) -> str | None:
    """`qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf` -> `Q4_K_M` (None when no quant is named)."""
    base = name.rsplit("/", 1)[-1]
    m = _SHARD_RE.match(base)
    stem = m.group("stem") if m else re.sub(r"(?i)\.gguf$", "", base)
    found = _QUANT_TOKEN_RE.findall(stem)
    return normalize_quant(found[-1]) if found else None


def normalize_quant(quant: str) -> str:
    q = quant.upper()
    return "F16" if q == "FP16" else q


def available_quants(names: Iterable[str]) -> list[str]:
    quants = {quant_of(n) for n in names if n.lower().endswith(".gguf") and "mmproj" not in n.lower()}
    return sorted(q for q in quants if q)


def _shard_set(name: str, names: set[str], repo: str) -> list[str]:
    m = _SHARD_RE.match(name)
    if not m:
        return [name]
    count = int(m.group("count"))
    head = name[: m.start("no")]
    tail = name[m.end("count"):]
    shards = [f"{head}{i:05d}-of-{m.group('count')}{tail}" for i in range(1, count + 1)]
    missing = [s for s in shards if s not in names]
    if missing:
        raise SpecgenError(f"{repo}: split GGUF {shards[0]} is incomplete, {len(missing)} of {count} "
                           f"shards missing (first: {missing[0]})")
    return shards


def select_files(names: Iterable[str], repo: str, quant: str | None = None, file: str | None = None) -> list[str]:
    """The file(s) of one model in a repo: *file* itself, or the GGUF named with *quant*;
    split shards (`-00001-of-0000N`) come as the whole set, in order."""
    names = set(names)
    if file is not None:
        if file not in names:
            raise SpecgenError(f"{file} is not in {repo}; it has {', '.join(available_quants(names)) or 'no GGUF files'}"
                               f" (give a quant instead of a file name: {repo}:QUANT)")
        first = file
    else:
        want = normalize_quant(quant or DEFAULT_QUANT)
        matches = sorted(n for n in names if n.lower().endswith(".gguf") and "mmproj" not in n.lower()
                         and quant_of(n) == want)
        if not matches:
            have = available_quants(names)
            raise SpecgenError(f"{repo} has no {want} GGUF; it has "
                               f"{', '.join(have) if have else 'no GGUF files at all'}")
        singles = [n for n in matches if not _SHARD_RE.match(n)]
        firsts = [n for n in matches if (m := _SHARD_RE.match(n)) and int(m.group("no")) == 1]
        pool = singles or firsts or matches
        first = min(pool, key=lambda n: (n.count("/"), len(n), n))  # prefer the repo root, then the plainest name
    return [safe_repo_path(n) for n in _shard_set(first, names, repo)]


# ---------------------------------------------------------------- what is already local

def _snapshot_files(folder: Path, revision: str = "main") -> Iterator[tuple[Path, dict[str, Path]]]:
    """(snapshot dir, {relative name: path}) for the revision's snapshot first, then the others, newest first."""
    snaps = folder / "snapshots"
    if not snaps.is_dir():
        return
    order: list[Path] = []
    ref = folder / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        if (snaps / commit).is_dir():
            order.append(snaps / commit)
    rest = sorted((d for d in snaps.iterdir() if d.is_dir() and d not in order),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    for snap in order + rest:
        found = {}
        for p in snap.rglob("*"):
            if p.is_file():  # follows the symlink: a dangling link is not a file
                found[p.relative_to(snap).as_posix()] = p
        yield snap, found


def local_files(model: ModelEntry, cache: Path | None = None) -> list[Path] | None:
    """The model's complete local files (shards in order), or None. Never touches the network."""
    if model.path is not None:
        return [model.path] if model.path.is_file() else None
    folder = storage_folder(model.repo, cache)
    for _, found in _snapshot_files(folder):
        try:
            names = select_files(found, model.repo, model.quant, model.file)
        except SpecgenError:
            continue
        return [found[n] for n in names]
    return None


def file_problem(path: Path) -> str | None:
    """Why a cached model file cannot be used (not a GGUF, truncated, damaged header), or None.

    Reads the header only: cheap enough for `list` and before every `run`.
    """
    from ..llama.gguf import MAGIC, GGUFError, read_gguf

    try:
        if _SHARD_RE.match(path.name):  # a later shard has no full header of its own
            with open(path, "rb") as f:
                return None if f.read(4) == MAGIC else "not a GGUF file"
        read_gguf(path)
    except GGUFError as e:
        return str(e).split(": ", 1)[-1].removesuffix("; re-download it")
    except OSError as e:
        return os_problem(e)
    return None


@dataclass
class PairFiles:
    target: list[Path]
    draft: list[Path] | None
    downloaded: int = 0


def local_pair(registry: Registry, name: str) -> PairFiles | None:
    target, draft = registry.pair_models(name)
    t, d = local_files(target), local_files(draft)
    if t is None or d is None:
        return None
    return PairFiles(t, d)


# ---------------------------------------------------------------- pair status and removal

@dataclass
class PairStatus:
    name: str
    target: ModelEntry
    draft: ModelEntry
    default: bool
    verified: bool
    user: bool
    note: str
    drafter: str | None
    draft_max: int | None
    target_files: list[Path] | None
    draft_files: list[Path] | None
    damaged: str | None = None
    """Why a downloaded file cannot be used (then `specgen pull` fetches it again)."""

    @property
    def downloaded(self) -> str:
        if self.damaged:
            return "damaged"
        have = (self.target_files is not None) + (self.draft_files is not None)
        return ("no", "partly", "yes")[have]

    @staticmethod
    def _size(model: ModelEntry, files: list[Path] | None) -> tuple[int | None, bool]:
        if files is not None:
            return sum(f.stat().st_size for f in files), True
        return model.size_bytes, False

    def sizes(self) -> tuple[int | None, int | None, bool]:
        """(target bytes, draft bytes, both exact)."""
        t, te = self._size(self.target, self.target_files)
        d, de = self._size(self.draft, self.draft_files)
        return t, d, te and de

    def as_json(self) -> dict:
        t, d, exact = self.sizes()
        return {
            "name": self.name, "default": self.default, "verified": self.verified, "user": self.user,
            "target": self.target.id, "target_spec": self.target.spec,
            "draft": self.draft.id, "draft_spec": self.draft.spec,
            "drafter": self.drafter, "draft_max": shown_draft_max(self.draft_max),
            "target_bytes": t, "draft_bytes": d, "sizes_exact": exact,
            "downloaded": self.downloaded, "damaged": self.damaged,
            "target_files": [str(f) for f in self.target_files] if self.target_files else None,
            "draft_files": [str(f) for f in self.draft_files] if self.draft_files else None,
            "note": self.note,
        }


def pair_statuses(registry: Registry) -> list[PairStatus]:
    """Every pair and what of it is downloaded; reads only the local cache."""
    cache: dict[str, list[Path] | None] = {}
    problems: dict[Path, str | None] = {}

    def files(m: ModelEntry) -> list[Path] | None:
        if m.id not in cache:
            cache[m.id] = local_files(m)
        return cache[m.id]

    def damage(found: list[Path] | None) -> str | None:
        for f in found or []:
            if f not in problems:
                problems[f] = file_problem(f)
            if problems[f]:
                return f"{f.name}: {problems[f]}"
        return None

    out = []
    for p in registry.pairs.values():
        t, d = registry.models[p.target], registry.models[p.draft]
        tf, df = files(t), files(d)
        out.append(PairStatus(p.name, t, d, p.default, registry.pair_verified(p.name), p.user, p.note,
                              p.drafter, p.draft_max, tf, df, damage(tf) or damage(df)))
    return out


# ---------------------------------------------------------------- what specgen may remove

def owns(path: Path, folder: Path) -> bool:
    """Whether the file *path* names, links followed, lies inside repo folder *folder*.

    Only such a file is the cache's own, to remove or replace.  A snapshot entry is normally a link
    into the repo's `blobs/`; one that leads elsewhere (to a GGUF of the user's, linked in by hand
    or by another tool) names a file that specgen did not make, and only the link itself may go.
    """
    return real_path(path).is_relative_to(real_path(folder))


def _entry_inside(entry: Path, folder: Path) -> None:
    """Refuse *entry* when its own folder leads out of the cache: removing or writing the entry there
    would remove or write a file of the user's."""
    if owns(entry.parent, folder):
        return
    link = next((p for p in entry.parents if p.is_symlink() and not owns(p, folder)), entry.parent)
    raise SpecgenError(f"{shorten(str(link), 200)} is a link out of the Hugging Face cache; specgen removes "
                       "and replaces files only inside the cache: remove that link yourself, then run the "
                       "command again")


def claim(path: Path, folder: Path) -> Path:
    """*path*, made a place in repo folder *folder* that a download may write: a link there that leads
    out of the cache is removed (the link only; the file it names stays)."""
    _entry_inside(path, folder)
    if path.is_symlink() and not owns(path, folder):
        path.unlink()
    return path


def hard_linked(path: Path) -> bool:
    """Whether the file *path* has another name (a hard link, made by the user or a tool that shares files):
    removing the cache's name then frees nothing, the bytes stay under the other one."""
    try:
        return os.stat(path).st_nlink > 1
    except OSError:
        return False


def remove_entry(entry: Path, folder: Path, keep_shared: bool = False) -> int:
    """Remove snapshot entry *entry* of repo folder *folder* and the blob it links to; the bytes freed
    (none while another hard link keeps them, see `hard_linked`).

    Only the cache's own files go (see `owns`): an entry that links out of the cache is removed
    as a link, and the file it names stays.  With *keep_shared*, a blob that another snapshot
    entry still links to stays too.
    """
    _entry_inside(entry, folder)
    blob = real_path(entry)
    mine = owns(entry, folder)
    linked = entry.is_symlink()
    size = blob.stat().st_size if mine and blob.is_file() and not hard_linked(blob) else 0
    entry.unlink(missing_ok=True)
    if not mine:
        return 0
    if linked:
        snaps = folder / "snapshots"
        if keep_shared and any(real_path(p) == blob for p in snaps.rglob("*") if p.is_symlink()):
            return 0
        blob.unlink(missing_ok=True)
        Path(str(blob) + ".incomplete").unlink(missing_ok=True)
    return size


@dataclass
class Removal:
    removed: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    unlinked: list[tuple[Path, Path]] = field(default_factory=list)
    """(cache entry, the file outside the cache it linked to): the link went, the file stays."""
    shared: list[Path] = field(default_factory=list)
    """Removed, but their bytes stay: another hard link to the same file still names them."""
    freed: int = 0


def remove_pair(registry: Registry, name: str) -> Removal:
    """Delete pair *name*'s cached files that no other downloaded pair uses.

    Local `path:` models are never deleted, nor a file outside the cache that a snapshot
    entry links to (the link goes).  Repos left without files are removed from the cache entirely.
    """
    target, draft = registry.pair_models(name)
    keep: set[Path] = set()
    for other in pair_statuses(registry):
        if other.name != name and other.target_files is not None and other.draft_files is not None:
            for f in other.target_files + other.draft_files:
                keep.add(real_path(f))
    entries: list[tuple[Path, Path]] = []
    touched: set[Path] = set()
    for model in (target, draft):
        if model.path is not None:
            continue
        folder = storage_folder(model.repo)
        touched.add(folder)
        for f in local_files(model) or []:
            _entry_inside(f, folder)  # refused before anything is removed
            if (f, folder) not in entries:  # a pair may use one model twice
                entries.append((f, folder))
    out = Removal()
    for f, folder in entries:
        real = real_path(f)
        if real in keep:
            out.kept.append(f)
        elif not owns(f, folder):
            remove_entry(f, folder)
            out.unlinked.append((f, real))
        else:
            shared = hard_linked(real)
            out.freed += remove_entry(f, folder, keep_shared=True)
            (out.shared if shared else out.removed).append(f)
    for folder in touched:
        _prune(folder)
    return out


def _prune(folder: Path) -> None:
    snaps = folder / "snapshots"
    if not snaps.is_dir():
        return
    for d in sorted((p for p in snaps.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()
    if not any(p.is_file() for p in snaps.rglob("*")):
        shutil.rmtree(folder, ignore_errors=True)
        lock = folder.parent / ".locks" / folder.name
        shutil.rmtree(lock, ignore_errors=True)
