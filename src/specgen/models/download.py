"""Hugging Face downloads into the standard Hub cache, checked before a file counts as there.

How a file arrives:
1. the repo is listed once (`model_info` with file metadata: commit, sizes, LFS sha256);
   `quant` is matched against the GGUF file names, split shards are taken together;
2. every missing file gets a HEAD (etag, size, where to GET it) before any byte moves, so a
   gated or missing file fails the whole pull up front;
3. bytes go to `blobs/<etag>.incomplete`, resuming with a Range request from what is there
   (after a dropped connection, or in a later run after Ctrl+C; from a server that ignores Range,
   what is there is passed over as it comes again), hashed on the way; a stream that stalls or
   trickles is retried, and given up on after MAX_RETRIES tries in a row that bring nothing new;
4. only when size, sha256 and the GGUF header check out is it renamed to `blobs/<etag>`,
   and linked into `snapshots/<commit>/` as huggingface_hub links it.  A `run` only ever looks in
   `snapshots/`, so an interrupted pull never leaves a file it could mistake for a model.

Since huggingface_hub 1.18 its own downloader writes partial files under a process-unique
name and deletes them on failure, so an interrupted `hf_hub_download` starts over from
zero; the transfer itself is therefore done here, with huggingface_hub's HTTP client,
headers and token.  Whether a downloaded pair fits together is the caller's check: this
module never loads a model; where the Hub is and every error's wording are `models.hub`'s,
and only files inside the cache are ever removed or replaced (`models.cache.owns`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import SpecgenError, printable, shorten
from ..fileio import human_size, real_path, write_atomic
from .cache import (_SHARD_RE, PairFiles, cache_dir, claim, file_problem, local_files, owns, remove_entry,
                    select_files, storage_folder)
from .hub import endpoint, httpx_module, hub_errors, library, list_repo, not_a_hub, offline, shown_address, wait
from .hub import token as hub_token
from .progress import Progress
from .registry import ModelEntry, Registry

MAX_RETRIES = 5
"""Tries in a row that may bring no new data before a download gives up (it resumes on the next pull)."""
MIN_PROGRESS = 16 << 10
"""The fewest bytes a download stream must bring in each HF_HUB_DOWNLOAD_TIMEOUT window (fewer is a stall,
however often a byte comes), and the fewest new bytes, past the most any earlier try had written, that make
a try count as progress.  Without a floor a server that trickles a byte at a time, or that resends the start
of the file and stalls, keeps a pull going for ever."""
CHUNK = 1 << 20
_ETAG_RE = re.compile(r"[0-9A-Za-z_-]{8,128}")
_CACHEDIR_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                 "# The Hugging Face Hub cache: backup tools that honour this tag skip it (bford.info/cachedir).\n")


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
    with hub_errors(plan.repo, plan.name, "HF_HUB_ETAG_TIMEOUT"):
        meta = get_hf_file_metadata(url, token=token, endpoint=ep, timeout=wait("HF_HUB_ETAG_TIMEOUT"))
    etag = meta.etag or ""
    if not _ETAG_RE.fullmatch(etag):
        raise SpecgenError(f"{plan.key}: the server gave no usable ETag ('{printable(shorten(etag, 60))}'); "
                           f"{not_a_hub()}")
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


class _Trickle(Exception):
    """A stream that brought fewer than MIN_PROGRESS bytes in a whole timeout window."""


def _transfer(plan: _Plan, headers: dict[str, str], progress: Progress) -> int:
    """Bring plan.partial to plan.size bytes, resuming; returns bytes received."""
    httpx = httpx_module()
    from huggingface_hub.utils import get_session, hf_raise_for_status

    session = get_session()
    timeout = wait("HF_HUB_DOWNLOAD_TIMEOUT")  # for the connection, and for each read of the stream
    hasher = _Hasher(plan)
    received, tries, ranged = 0, 0, True
    plan.partial.parent.mkdir(parents=True, exist_ok=True)
    claim(plan.partial, plan.folder).touch()  # a resumed file is appended to and truncated: it must be ours
    reached = plan.partial.stat().st_size  # the most the file has held: only bytes past it are progress
    while True:
        have = plan.partial.stat().st_size
        if plan.size is not None and have > plan.size:
            os.truncate(plan.partial, 0)
            have = reached = 0
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
                skip = 0
                if have and r.status_code != 206:  # the server ignored Range: what is here comes again
                    skip, ranged = have, False
                total = _response_total(r, have)
                if plan.size is not None and total is not None and total != plan.size:
                    plan.partial.unlink(missing_ok=True)
                    raise SpecgenError(f"{plan.key}: size mismatch, the server sends {total} bytes but the Hub "
                                       f"listing says {plan.size}; refusing it")
                hasher.catch_up(plan.partial, have)
                with open(plan.partial, "ab") as f:
                    window, came = time.monotonic(), 0
                    for chunk in r.iter_bytes():
                        came += len(chunk)
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                        f.write(chunk)
                        hasher.update(chunk)
                        received += len(chunk)
                        progress.advance(plan.key, len(chunk))
                        if time.monotonic() - window >= timeout:
                            if came < MIN_PROGRESS:
                                raise _Trickle()
                            window, came = time.monotonic(), 0
            if plan.size is None:
                break
            if plan.partial.stat().st_size < plan.size:
                raise httpx.RemoteProtocolError("the server closed the connection early")
        except (httpx.TransportError, _Trickle) as e:
            now = plan.partial.stat().st_size
            tries = 1 if now >= reached + MIN_PROGRESS else tries + 1  # resent bytes are no progress
            reached = max(reached, now)
            stalled = isinstance(e, (httpx.TimeoutException, _Trickle))
            if tries > MAX_RETRIES:
                why = (f"less than {MIN_PROGRESS >> 10} KiB in {timeout} s" if isinstance(e, _Trickle)
                       else f"no data for {timeout} s" if stalled
                       else f"{type(e).__name__}: {printable(shorten(str(e), 120))}")
                if stalled:
                    why += ", HF_HUB_DOWNLOAD_TIMEOUT sets the wait"
                if not ranged:
                    why += "; the server ignores Range requests and resends the file from its start"
                host = urlparse(shown_address(plan.url)).netloc
                raise SpecgenError(f"download of {plan.key} from {host} failed after {MAX_RETRIES} retries without "
                                   f"new data ({why}); check your connection and run the command again, it resumes "
                                   "where it stopped") from None
            if not stalled:  # a timeout has already waited its turn
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
    """Link the blob into the snapshot as huggingface_hub lays it out, and point the ref at the commit.

    Its own `hf_hub_download` would ask the Hub for the file's metadata once more, and when that times
    out, retry it for minutes at a fixed 60 s wait: it runs only where no link can be made (it copies).
    """
    from huggingface_hub import hf_hub_download

    pointer = claim(plan.pointer, plan.folder)
    if not _symlink(plan.blob, pointer):
        ep = endpoint()
        with hub_errors(plan.repo, plan.name, "HF_HUB_ETAG_TIMEOUT"):
            pointer = Path(hf_hub_download(plan.repo, plan.name, revision=plan.commit, cache_dir=str(cache_dir()),
                                           endpoint=ep, token=token, etag_timeout=wait("HF_HUB_ETAG_TIMEOUT")))
    ref = plan.folder / "refs" / plan.revision
    if plan.revision != plan.commit and (not ref.is_file() or ref.read_text().strip() != plan.commit):
        write_atomic(claim(ref, plan.folder), plan.commit)
    tag = plan.folder.parent / "CACHEDIR.TAG"  # as hf_hub_download leaves it
    if not tag.exists():
        with contextlib.suppress(OSError):
            tag.write_text(_CACHEDIR_TAG)
    return pointer


def _symlink(blob: Path, pointer: Path) -> bool:
    """Make *pointer* a relative link to *blob*, as huggingface_hub does; False where links are off
    (HF_HUB_DISABLE_SYMLINKS) or the file system has none."""
    from huggingface_hub import constants

    if constants.HF_HUB_DISABLE_SYMLINKS:
        return False
    pointer.parent.mkdir(parents=True, exist_ok=True)
    try:
        pointer.unlink(missing_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except FileExistsError:  # another pull linked it meanwhile
        return real_path(pointer) == real_path(blob)
    except OSError:
        return False
    return True


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


def pull_models(models: list[ModelEntry], progress: Progress | None = None,
                revision: str = "main", check: bool = False) -> list[PulledModel]:
    """Make every model local (downloading what is missing or damaged) and return their files.

    A cached file is checked against the Hub's listing (size, GGUF header; with
    *check* also its sha256) and fetched again when it does not match.  With
    HF_HUB_OFFLINE set only the cache is used, and a missing model is an error.
    """
    library()
    from huggingface_hub.utils import WeakFileLock, build_hf_headers, disable_progress_bars

    disable_progress_bars()
    progress = progress or Progress()
    results: list[PulledModel] = []
    plans_by_model: list[tuple[ModelEntry, list[_Plan]]] = []
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
                outside = None if owns(p.pointer, p.folder) else real_path(p.pointer)
                remove_entry(p.pointer, p.folder)
                if outside is None:
                    progress.message(f"{p.key}: the cached copy is damaged ({problem}); downloading it again")
                else:
                    progress.message(f"{p.key}: the cache linked to {outside}, which is not the Hub's file "
                                     f"({problem}); removed the link (that file stays) and downloading it")
            pending.append(p)
    token = hub_token() if pending else None  # only what is fetched needs it: a run from the cache never does
    for p in pending:  # every HEAD before any byte: a gated or missing file fails the whole pull
        _head(p, token)
        claim(p.blob, p.folder)  # a blob that links out of the cache is not the Hub's file: fetched anew
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


def pull_pair(registry: Registry, name: str, progress: Progress | None = None, check: bool = False) -> PairFiles:
    """Download pair *name*'s target and draft (what is missing or damaged).  Whether they fit together
    is the caller's check (`llama.vocab.check_pair_files`): downloading never loads a model."""
    target, draft = registry.pair_models(name)
    got = pull_models([target, draft], progress, check=check)
    return PairFiles(got[0].files, got[1].files, got[0].downloaded + got[1].downloaded)

