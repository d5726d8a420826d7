"""Hugging Face downloads into the standard Hub cache, with one-line errors.

How a file arrives:
1. the repo is listed once (`model_info` with file metadata: commit, sizes, LFS sha256);
   `quant` is matched against the GGUF file names, split shards are taken together;
2. every missing file gets a HEAD (etag, size, where to GET it) before any byte moves, so a
   gated or missing file fails the whole pull up front;
3. bytes go to `blobs/<etag>.incomplete`, resuming with a Range request from what is there
   (after a dropped connection, or in a later run after Ctrl+C), hashed on the way;
4. only when size, sha256 and the GGUF header check out is it renamed to `blobs/<etag>`,
   and `hf_hub_download` links it into `snapshots/<commit>/`.  A `run` only ever looks in
   `snapshots/`, so an interrupted pull never leaves a file it could mistake for a model.

Since huggingface_hub 1.18 its own downloader writes partial files under a process-unique
name and deletes them on failure, so an interrupted `hf_hub_download` starts over from
zero; the transfer itself is therefore done here, with huggingface_hub's HTTP client,
headers and token.  Whether a downloaded pair fits together is the caller's check: this
module never loads a model.
Environment: HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE are read on
every call.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from ..errors import SpecgenError
from ..fileio import human_size, write_atomic
from .cache import _SHARD_RE, PairFiles, cache_dir, file_problem, local_files, select_files, storage_folder
from .registry import ModelEntry, Registry


DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_RETRIES = 5
CHUNK = 1 << 20
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_ETAG_RE = re.compile(r"^[0-9A-Za-z_-]{8,128}$")


# ---------------------------------------------------------------- environment (read per call)

def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def _token() -> str | None:
    from huggingface_hub import get_token

    cache_dir()  # huggingface_hub reads $HF_HOME/token: a bad HF_HOME is named before it fails there
    return os.environ.get("HF_TOKEN") or get_token()


def _httpx():
    """The HTTP library huggingface_hub's own session is built on: httpx2 from huggingface_hub 2
    on, httpx in 1.x.  Chosen by the hub's version, not by what imports: both can be installed,
    and the other one's Timeout and exception types do not fit the session."""
    from huggingface_hub import __version__ as hub_version

    if int(hub_version.split(".")[0]) >= 2:
        import httpx2 as httpx
    else:
        import httpx
    return httpx


# ---------------------------------------------------------------- errors

_OFFLINE_HINT = "HF_ENDPOINT points specgen at a mirror, HF_HUB_OFFLINE=1 uses downloaded models only"


@contextlib.contextmanager
def hub_errors(repo: str, file: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub / network / disk errors into one-line SpecgenErrors."""
    from huggingface_hub import errors as hf

    httpx = _httpx()
    ep = endpoint()
    what = f"{repo}/{file}" if file else repo
    try:
        yield
    except SpecgenError:
        raise
    except hf.GatedRepoError:
        page = f"{ep}/{repo}"
        if _token():
            raise SpecgenError(f"{repo} is gated and your token has no access to it: accept its terms at "
                               f"{page} with the account that owns HF_TOKEN, then run the command again") from None
        raise SpecgenError(f"{repo} is gated: accept its terms at {page} while logged in, then set HF_TOKEN to a "
                           f"read token from {ep}/settings/tokens (or run `hf auth login`)") from None
    except hf.RevisionNotFoundError:
        raise SpecgenError(f"{repo}: revision not found on {ep}") from None
    except hf.RepositoryNotFoundError:
        raise SpecgenError(f"repo {repo} not found on {ep}: check the name "
                           "(a private repo also needs HF_TOKEN)") from None
    except hf.LocalEntryNotFoundError:
        raise SpecgenError(f"cannot reach {ep} and {what} is not in the cache ({cache_dir()}); "
                           f"check your connection ({_OFFLINE_HINT})") from None
    except hf.EntryNotFoundError:
        raise SpecgenError(f"{what} not found on {ep}: the repo no longer has this file; "
                           "run `specgen pull` again to re-list it") from None
    except hf.OfflineModeIsEnabled:
        raise SpecgenError(f"{what} is not downloaded and HF_HUB_OFFLINE is set; unset it to download") from None
    except hf.HfHubHTTPError as e:
        status = e.response.status_code if getattr(e, "response", None) is not None else "?"
        if status == 401:
            raise SpecgenError(f"{ep} rejected the token for {repo} (HTTP 401); check HF_TOKEN or "
                               "run `hf auth login`") from None
        if status == 429:
            raise SpecgenError(f"{ep} is rate-limiting downloads (HTTP 429); wait a minute and run the command "
                               "again (it resumes)") from None
        raise SpecgenError(f"{ep} answered HTTP {status} for {what}; try again later ({_OFFLINE_HINT})") from None
    except (httpx.ConnectError, httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
        raise SpecgenError(f"cannot reach {ep} ({type(e).__name__}: {str(e) or 'no answer'}); check your "
                           f"network ({_OFFLINE_HINT})") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SpecgenError(f"disk full while downloading {what} into {cache_dir()}; free some space or set "
                               "HF_HOME to a bigger disk, then run the command again (it resumes)") from None
        raise SpecgenError(f"{what}: {e.strerror or e}") from None


# ---------------------------------------------------------------- listing and choosing files

@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None
    sha256: str | None = None
    blob_id: str | None = None


@dataclass(frozen=True)
class RepoListing:
    repo: str
    commit: str
    files: dict[str, RemoteFile]


def list_repo(repo: str, revision: str = "main") -> RepoListing:
    """The repo's files at *revision* with sizes and LFS sha256 (one request)."""
    from huggingface_hub import HfApi

    with hub_errors(repo):
        info = HfApi(endpoint=endpoint()).model_info(repo, revision=revision, files_metadata=True, token=_token())
    commit = info.sha or ""
    if not _COMMIT_RE.match(commit):
        raise SpecgenError(f"{endpoint()} gave no valid commit for {repo} (got {commit!r}); "
                           "is HF_ENDPOINT a Hugging Face compatible server?")
    files = {}
    for s in info.siblings or []:
        files[s.rfilename] = RemoteFile(s.rfilename, s.size if s.size is not None else (s.lfs.size if s.lfs else None),
                                        s.lfs.sha256 if s.lfs else None, s.blob_id)
    return RepoListing(repo, commit, files)


# ---------------------------------------------------------------- what is already local

# ---------------------------------------------------------------- progress

class Progress:
    """Download progress on stderr: a rich bar per file plus a total on a terminal,
    one plain line per file otherwise."""

    def __init__(self, enabled: bool | None = None):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal if enabled is None else enabled
        self._progress = None
        self._tasks: dict[str, int] = {}
        self._total = None

    def __enter__(self) -> "Progress":
        if self.live:
            from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self._progress = RichProgress(
                TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def plan(self, files: list[tuple[str, str, int | None, int]]) -> None:
        """[(key, label, total bytes, bytes already there)] for the files about to download."""
        if not files:
            return
        if self._progress is None:
            return
        for key, label, total, done in files:
            self._tasks[key] = self._progress.add_task(label, total=total, completed=done)
        if len(files) > 1:
            totals = [t for _, _, t, _ in files]
            self._total = self._progress.add_task(
                "[bold]total", total=sum(totals) if None not in totals else None,
                completed=sum(d for _, _, _, d in files))

    def start(self, key: str, label: str, total: int | None, done: int) -> None:
        if self._progress is None:
            resumed = f", resuming at {human_size(done)}" if done else ""
            self.console.print(f"downloading {label} ({human_size(total)}{resumed})")

    def advance(self, key: str, n: int) -> None:
        if self._progress is not None:
            if key in self._tasks:
                self._progress.advance(self._tasks[key], n)
            if self._total is not None:
                self._progress.advance(self._total, n)

    def message(self, text: str) -> None:
        self.console.print(text)


# ---------------------------------------------------------------- downloading

@dataclass
class _Plan:
    repo: str
    name: str
    commit: str
    revision: str
    folder: Path
    size: int | None
    sha256: str | None
    blob_id: str | None
    etag: str = ""
    url: str = ""

    @property
    def key(self) -> str:
        return f"{self.repo}/{self.name}"

    @property
    def pointer(self) -> Path:
        return self.folder / "snapshots" / self.commit / self.name

    @property
    def blob(self) -> Path:
        return self.folder / "blobs" / self.etag

    @property
    def partial(self) -> Path:
        return self.folder / "blobs" / (self.etag + ".incomplete")


@dataclass
class PulledModel:
    model: ModelEntry
    files: list[Path]
    downloaded: int = 0
    """Bytes transferred by this pull (0: everything was already there)."""


def _same_host(a: str, b: str) -> bool:
    pa, pb = urlparse(a), urlparse(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _head(plan: _Plan, token: str | None) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    ep = endpoint()
    url = hf_hub_url(plan.repo, plan.name, revision=plan.commit, endpoint=ep)
    with hub_errors(plan.repo, plan.name):
        meta = get_hf_file_metadata(url, token=token, endpoint=ep,
                                    timeout=float(os.environ.get("HF_HUB_ETAG_TIMEOUT", 10)))
    etag = meta.etag or ""
    if not _ETAG_RE.match(etag):
        raise SpecgenError(f"{plan.key}: the server gave no usable ETag ({etag!r}); is HF_ENDPOINT a "
                           "Hugging Face compatible server?")
    if plan.size is not None and meta.size is not None and meta.size != plan.size:
        raise SpecgenError(f"{plan.key}: size mismatch, the listing says {plan.size} bytes and the file "
                           f"{meta.size}; refusing it (run the command again later)")
    plan.size = plan.size if plan.size is not None else meta.size
    if plan.sha256 is None and re.fullmatch(r"[0-9a-f]{64}", etag):
        plan.sha256 = etag  # an LFS file's ETag is its sha256
    plan.etag = etag
    plan.url = meta.location or url


class _Hasher:
    """sha256 of the content, or git's blob sha1 for small non-LFS files."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        if plan.sha256:
            self.h, self.expected, self.kind = hashlib.sha256(), plan.sha256.lower(), "sha256"
        elif plan.blob_id and plan.size is not None and re.fullmatch(r"[0-9a-f]{40}", plan.blob_id):
            self.h, self.expected, self.kind = hashlib.sha1(), plan.blob_id, "git sha1"
            self.h.update(b"blob %d\0" % plan.size)
        else:
            self.h, self.expected, self.kind = None, None, None
        self.fed = 0

    def update(self, data: bytes) -> None:
        if self.h is not None:
            self.h.update(data)
        self.fed += len(data)

    def catch_up(self, path: Path, upto: int) -> None:
        """Hash the first *upto* bytes already on disk (after a resume)."""
        if self.fed == upto:
            return
        self.__init__(self.plan)
        with open(path, "rb") as f:
            left = upto
            while left > 0:
                block = f.read(min(CHUNK * 4, left))
                if not block:
                    break
                self.update(block)
                left -= len(block)

    def check(self) -> str | None:
        if self.h is None:
            return None
        got = self.h.hexdigest()
        return None if got == self.expected else f"{self.kind} {got[:12]}..., expected {self.expected[:12]}..."


def _transfer(plan: _Plan, headers: dict[str, str], progress: Progress) -> int:
    """Bring plan.partial to plan.size bytes, resuming; returns bytes received."""
    httpx = _httpx()
    from huggingface_hub.utils import get_session, hf_raise_for_status

    session = get_session()
    timeout = float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT", 10))
    hasher = _Hasher(plan)
    received, tries, attempts = 0, 0, 0
    plan.partial.parent.mkdir(parents=True, exist_ok=True)
    plan.partial.touch()
    while True:
        have = plan.partial.stat().st_size
        if plan.size is not None and have > plan.size:
            os.truncate(plan.partial, 0)
            have = 0
        if plan.size is not None and have == plan.size:
            hasher.catch_up(plan.partial, have)
            break
        req = dict(headers)
        if have:
            req["Range"] = f"bytes={have}-"
        try:
            with session.stream("GET", plan.url, headers=req, follow_redirects=True,
                                timeout=httpx.Timeout(timeout, connect=timeout)) as r:
                if r.status_code == 416:
                    plan.partial.unlink(missing_ok=True)
                    raise SpecgenError(f"{plan.key}: size mismatch, the server has fewer than the {plan.size} "
                                       "bytes the Hub listing says; refusing it")
                hf_raise_for_status(r)
                if have and r.status_code != 206:
                    os.truncate(plan.partial, 0)  # the server ignored Range: start over
                    progress.advance(plan.key, -have)
                    have = 0
                total = _response_total(r, have)
                if plan.size is not None and total is not None and total != plan.size:
                    plan.partial.unlink(missing_ok=True)
                    raise SpecgenError(f"{plan.key}: size mismatch, the server sends {total} bytes but the Hub "
                                       f"listing says {plan.size}; refusing it")
                hasher.catch_up(plan.partial, have)
                with open(plan.partial, "ab") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
                        hasher.update(chunk)
                        received += len(chunk)
                        progress.advance(plan.key, len(chunk))
                        tries = 0  # progress resets the retry budget, like huggingface_hub
            if plan.size is None:
                break
            if plan.partial.stat().st_size < plan.size:
                raise httpx.RemoteProtocolError("the server closed the connection early")
        except httpx.TransportError as e:
            tries += 1
            attempts += 1
            if tries > MAX_RETRIES or attempts > 20 * MAX_RETRIES:
                raise SpecgenError(f"download of {plan.key} from {urlparse(plan.url).netloc} failed after "
                                   f"{MAX_RETRIES} retries ({type(e).__name__}: {e}); run the command again, "
                                   "it resumes where it stopped") from None
            time.sleep(min(0.5 * 2 ** (tries - 1), 8))
    size = plan.partial.stat().st_size
    if plan.size is not None and size != plan.size:
        raise SpecgenError(f"{plan.key}: size mismatch, got {size} bytes, expected {plan.size}")
    bad = hasher.check()
    if bad:
        plan.partial.unlink(missing_ok=True)
        raise SpecgenError(f"{plan.key}: downloaded bytes do not match the Hub's checksum ({bad}); "
                           "the file was discarded, run the command again")
    return received


def _response_total(r, have: int) -> int | None:
    if r.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    cr = r.headers.get("Content-Range")
    if cr and "/" in cr and cr.rsplit("/", 1)[1].strip().isdigit():
        return int(cr.rsplit("/", 1)[1])
    cl = r.headers.get("Content-Length")
    if cl and cl.isdigit():
        return int(cl) + (have if r.status_code == 206 else 0)
    return None


def _complete(plan: _Plan) -> None:
    """Check the finished partial file and make it the blob."""
    if plan.name.lower().endswith(".gguf"):
        _check_gguf(plan)
    os.replace(plan.partial, plan.blob)


def _link(plan: _Plan, token: str | None) -> Path:
    """Link the blob into the snapshot (huggingface_hub's own code) and point the ref at the commit."""
    from huggingface_hub import hf_hub_download

    ep = endpoint()
    with hub_errors(plan.repo, plan.name):
        pointer = Path(hf_hub_download(plan.repo, plan.name, revision=plan.commit, cache_dir=str(cache_dir()),
                                       endpoint=ep, token=token))
    ref = plan.folder / "refs" / plan.revision
    if plan.revision != plan.commit and (not ref.is_file() or ref.read_text().strip() != plan.commit):
        write_atomic(ref, plan.commit)
    return pointer


def _check_gguf(plan: _Plan) -> None:
    """GGUF magic of every file; the whole header and tensor extent of a single-file model."""
    from ..llama.gguf import MAGIC, GGUFError, read_gguf

    with open(plan.partial, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        plan.partial.unlink(missing_ok=True)
        raise SpecgenError(f"{plan.key}: not a GGUF file (bad magic {head!r}); the file was discarded")
    if not _SHARD_RE.match(plan.name.rsplit("/", 1)[-1]):
        try:
            read_gguf(plan.partial)
        except GGUFError as e:
            plan.partial.unlink(missing_ok=True)
            detail = str(e).split(": ", 1)[-1]
            raise SpecgenError(f"{plan.key}: {detail}; the file was discarded") from None


def _disk_check(plans: list[_Plan]) -> None:
    need = sum(max((p.size or 0) - (p.partial.stat().st_size if p.partial.exists() else 0), 0)
               for p in plans if not p.blob.exists())
    if not need:
        return
    where = plans[0].folder
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise SpecgenError(f"disk full: this pull needs {human_size(need)} more in {cache_dir()} but only "
                           f"{human_size(free)} is free; free some space or set HF_HOME to a bigger disk")


def _cached_problem(plan: _Plan, full: bool) -> str | None:
    """What is wrong with the cached copy of *plan*'s file: size, GGUF header, and with *full* its hash."""
    size = plan.pointer.stat().st_size
    if plan.size is not None and size != plan.size:
        return f"{size} bytes, the Hub says {plan.size}"
    problem = file_problem(plan.pointer)
    if problem is None and full:
        hasher = _Hasher(plan)
        if hasher.h is not None:
            hasher.catch_up(plan.pointer, size)
            problem = hasher.check()
    return problem


def _discard_cached(plan: _Plan) -> None:
    blob = plan.pointer.resolve()
    plan.pointer.unlink(missing_ok=True)
    if blob != plan.pointer:
        blob.unlink(missing_ok=True)


def pull_models(models: list[ModelEntry], progress: Progress | None = None,
                revision: str = "main", check: bool = False) -> list[PulledModel]:
    """Make every model local (downloading what is missing or damaged) and return their files.

    A cached file is checked against the Hub's listing (size, GGUF header; with
    *check* also its sha256) and fetched again when it does not match.  With
    HF_HUB_OFFLINE set only the cache is used, and a missing model is an error.
    """
    from huggingface_hub.utils import WeakFileLock, build_hf_headers, disable_progress_bars

    disable_progress_bars()
    progress = progress or Progress()
    results: list[PulledModel] = []
    plans_by_model: list[tuple[ModelEntry, list[_Plan]]] = []
    token = _token()
    for model in models:
        if model.path is not None:
            if not model.path.is_file():
                raise SpecgenError(f"{model.id}: {model.path}: no such file (it is a local model in "
                                   f"{model.source.rsplit(':', 1)[0]})")
            results.append(PulledModel(model, [model.path]))
            plans_by_model.append((model, []))
            continue
        if offline():
            files = local_files(model)
            if files is None:
                raise SpecgenError(f"{model.id} ({model.spec}) is not downloaded and HF_HUB_OFFLINE is set; "
                                   f"{_missing_hint(model)} is missing from {cache_dir()}")
            for f in files:
                problem = file_problem(f)
                if problem is not None:
                    raise SpecgenError(f"{f}: the cached copy is damaged ({problem}) and HF_HUB_OFFLINE is set; "
                                       "unset it and run `specgen pull` again to fetch it")
            results.append(PulledModel(model, files))
            plans_by_model.append((model, []))
            continue
        listing = list_repo(model.repo, revision)
        names = select_files(listing.files, model.repo, model.quant, model.file)
        folder = storage_folder(model.repo)
        plans = []
        for name in names:
            rf = listing.files[name]
            plans.append(_Plan(model.repo, name, listing.commit, revision, folder, rf.size, rf.sha256, rf.blob_id))
        plans_by_model.append((model, plans))
        results.append(PulledModel(model, [p.pointer for p in plans]))

    pending: list[_Plan] = []
    for _, plans in plans_by_model:
        for p in plans:  # a pair may use one model twice: fetch each file once
            if any(q.key == p.key for q in pending):
                continue
            if p.pointer.is_file():
                problem = _cached_problem(p, check)
                if problem is None:
                    continue
                progress.message(f"{p.key}: the cached copy is damaged ({problem}); downloading it again")
                _discard_cached(p)
            pending.append(p)
    for p in pending:  # every HEAD before any byte: a gated or missing file fails the whole pull
        _head(p, token)
    if pending:
        _disk_check(pending)
    headers_hub = build_hf_headers(token=token)
    headers_hub["Accept-Encoding"] = "identity"
    headers_cdn = {k: v for k, v in headers_hub.items() if k.lower() != "authorization"}

    with progress:
        todo = [p for p in pending if not p.blob.exists()]
        progress.plan([(p.key, p.name.rsplit("/", 1)[-1], p.size,
                        p.partial.stat().st_size if p.partial.exists() else 0) for p in todo])
        transferred: dict[str, int] = {}
        for p in pending:
            # The lock huggingface_hub takes for this blob: a second specgen (or hf) waits, then finds it done.
            lock = p.folder.parent / ".locks" / p.folder.name / f"{p.etag}.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            with WeakFileLock(lock):
                if not p.blob.exists():
                    progress.start(p.key, p.key, p.size, p.partial.stat().st_size if p.partial.exists() else 0)
                    headers = headers_hub if _same_host(p.url, endpoint()) else headers_cdn
                    with hub_errors(p.repo, p.name):
                        transferred[p.key] = _transfer(p, headers, progress)
                        _complete(p)
            _link(p, token)
    for (model, plans), result in zip(plans_by_model, results):
        result.downloaded = sum(transferred.get(p.key, 0) for p in plans)
    return results


def _missing_hint(model: ModelEntry) -> str:
    if model.file:
        return f"{model.repo}/{model.file}"
    return f"a {model.quant} GGUF of {model.repo}"


# ---------------------------------------------------------------- pairs

def pull_pair(registry: Registry, name: str, progress: Progress | None = None, check: bool = False) -> PairFiles:
    """Download pair *name*'s target and draft (what is missing or damaged).  Whether they fit together
    is the caller's check (`llama.vocab.check_pair_files`): downloading never loads a model."""
    target, draft = registry.pair_models(name)
    got = pull_models([target, draft], progress, check=check)
    return PairFiles(got[0].files, got[1].files, got[0].downloaded + got[1].downloaded)

