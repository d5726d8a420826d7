"""The Hugging Face Hub as specgen talks to it: where (HF_ENDPOINT), as whom (HF_TOKEN), whether at all
(HF_HUB_OFFLINE), how long to wait for it (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT), a repo's file
listing, and every Hub, network or disk error as one line.

The environment is read on every call, so a test (or a long-lived process) can change it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

from ..errors import SpecgenError, printable, shorten, unsendable
from ..fileio import absent, home_path, os_problem, read_regular
from .cache import cache_dir, hf_home

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")


WAITS = {"HF_HUB_ETAG_TIMEOUT": 10, "HF_HUB_DOWNLOAD_TIMEOUT": 10}
"""huggingface_hub's own settings and defaults, in seconds: how long a file's metadata request (HEAD) may
take, and how long every other request, a download stream included, may go without a byte."""
_MAX_WAIT = 86_400


def endpoint() -> str:
    """HF_ENDPOINT (a mirror), else the Hub; an address that is not http(s)://HOST[:PORT][/PATH] is named
    here, before the HTTP client fails on it in its own words."""
    raw = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    try:
        parts = urlsplit(raw)
        usable = (parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
                  and not parts.query and not parts.fragment and raw.isprintable() and " " not in raw)
    except ValueError:  # an unclosed "[", or a port that is not a number up to 65535 (.port raises)
        usable = False
    if not usable:
        raise SpecgenError(f"HF_ENDPOINT='{printable(shorten(shown_address(raw), 60))}' is not a web address: set "
                           f"it to a mirror's http(s)://HOST[:PORT], or unset it to use {DEFAULT_ENDPOINT}")
    return raw.rstrip("/")


def shown_address(url: str | None = None) -> str:
    """*url* (by default the Hub's address, `endpoint()`) as a message shows it: a `user:password@` in it
    is shown as `***@`, so an error line never hands the password to a log or a bug report."""
    return _USERINFO_RE.sub(r"\1***@", endpoint() if url is None else url, count=1)


def wait(variable: str) -> int:
    """The seconds *variable* (one of WAITS) allows: a whole number, as huggingface_hub reads it."""
    raw = os.environ.get(variable)
    if raw is None:
        return WAITS[variable]
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= _MAX_WAIT:
        raise SpecgenError(f"{variable} must be a whole number of seconds from 1 to {_MAX_WAIT} (it is "
                           f"'{printable(shorten(raw, 40))}'); fix it or unset it for {WAITS[variable]} s")
    return seconds


def library() -> ModuleType:
    """huggingface_hub, imported only once the settings it reads at import are known to be good: it
    parses HF_ENDPOINT and reads the WAITS with int() there, and a value it cannot read is a traceback."""
    endpoint()
    for variable in WAITS:
        wait(variable)
    import huggingface_hub

    return huggingface_hub


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` saved, without the blanks around it (as huggingface_hub
    reads it).  One that could not go into an HTTP header is named, never shown."""
    library()
    from huggingface_hub import get_token

    cache_dir()  # huggingface_hub reads $HF_HOME/token: a bad HF_HOME is named before it fails there
    given = (os.environ.get("HF_TOKEN") or "").strip()
    if not given:
        _check_token_file()
    value = given or (get_token() or "").strip()
    kind = unsendable(value, spaces=False)
    if kind is not None:
        where, again = ("HF_TOKEN", "set it again") if given else ("the token `hf auth login` saved",
                                                                   "run `hf auth login` again")
        raise SpecgenError(f"{where} holds {kind}, which no token has: copy your token from "
                           f"{shown_address()}/settings/tokens and {again}")
    return value or None


TOKEN_FILE_LIMIT = 1 << 16
"""Far more than a token: huggingface_hub reads the saved token's file whole."""


def _check_token_file() -> None:
    """The file huggingface_hub will read the saved token from, refused when it is not a small regular file:
    a named pipe there would wait forever, /dev/zero fill the memory."""
    named = os.environ.get("HF_TOKEN_PATH")
    path = home_path(named) if named else hf_home() / "token"
    if absent(path):
        return
    try:
        read_regular(path, "a file holding only your token", limit=TOKEN_FILE_LIMIT)
    except SpecgenError as e:
        raise SpecgenError(f"{'HF_TOKEN_PATH' if named else 'the saved token'}: {e}") from None


def httpx_module() -> ModuleType:
    """The HTTP library huggingface_hub's own session is built on: httpx2 from huggingface_hub 2
    on, httpx in 1.x.  Chosen by the hub's version, not by what imports: both can be installed,
    and the other one's Timeout and exception types do not fit the session."""
    if int(library().__version__.split(".")[0]) >= 2:
        import httpx2 as httpx
    else:
        import httpx
    return httpx


def not_a_hub() -> str:
    """The end of a message about an answer no Hub gives."""
    return f"is HF_ENDPOINT ({shown_address()}) a Hugging Face compatible server?"


_OFFLINE_HINT = "HF_ENDPOINT points specgen at a mirror, HF_HUB_OFFLINE=1 uses downloaded models only"


@contextlib.contextmanager
def hub_errors(repo: str, file: str | None = None, waited: str = "HF_HUB_DOWNLOAD_TIMEOUT") -> Iterator[None]:
    """Turn huggingface_hub / network / disk errors into one-line SpecgenErrors; *waited* is the setting
    (one of WAITS) the requests inside ran under."""
    httpx = httpx_module()
    from huggingface_hub import errors as hf

    ep = shown_address()
    what = f"{repo}/{file}" if file else repo
    try:
        yield
    except SpecgenError:
        raise
    except hf.GatedRepoError:
        page = f"{ep}/{repo}"
        if token():
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
    except httpx.TimeoutException:
        raise SpecgenError(f"the Hub at {ep} did not answer within {wait(waited)} s ({what}); check HF_ENDPOINT "
                           f"and your connection, or set {waited} to wait longer") from None
    except httpx.TooManyRedirects:
        raise SpecgenError(f"the Hub at {ep} sends {what} round a redirect loop (it redirects again and again, "
                           "never to the file); check HF_ENDPOINT, or try again later") from None
    except (httpx.ConnectError, httpx.NetworkError, httpx.RemoteProtocolError) as e:
        detail = printable(shorten(str(e) or "no answer", 120))  # may quote what the server sent
        raise SpecgenError(f"cannot reach {ep} ({type(e).__name__}: {detail}); check your "
                           f"network ({_OFFLINE_HINT})") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SpecgenError(f"disk full while downloading {what} into {cache_dir()}; free some space or set "
                               "HF_HOME to a bigger disk, then run the command again (it resumes)") from None
        where = f" ({shorten(str(e.filename), 200)})" if e.filename else ""  # which file, in which cache
        raise SpecgenError(f"{what}: {os_problem(e)}{where}") from None


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


LISTING_WAITS = 6
"""A listing is a few kilobytes: the HTTP client's wait bounds each read, this many of them the whole answer (a
server that sends a byte now and then would otherwise keep a pull waiting for ever)."""


def _within(seconds: float, late: str, call: Callable[[], T]) -> T:
    """*call*'s result, or a SpecgenError saying *late* when it has not returned after *seconds*.  It runs in a
    daemon thread, which the process leaves behind when it exits with that error."""
    done: list = []
    worker = threading.Thread(target=lambda: done.append(_outcome(call)), daemon=True)
    worker.start()
    worker.join(seconds)
    if not done:
        raise SpecgenError(late)
    ok, value = done[0]
    if not ok:
        raise value
    return value


def _outcome(call: Callable[[], T]) -> tuple[bool, Any]:
    try:
        return True, call()
    except BaseException as e:  # handed to the waiting thread, which raises it there
        return False, e


def list_repo(repo: str, revision: str = "main") -> RepoListing:
    """The repo's files at *revision* with sizes and LFS sha256 (one request)."""
    library()
    from huggingface_hub import HfApi

    api, auth, waited = HfApi(endpoint=endpoint()), token(), wait("HF_HUB_DOWNLOAD_TIMEOUT")
    with hub_errors(repo):
        try:
            info = _within(LISTING_WAITS * waited, f"the Hub at {shown_address()} sent the listing of {repo} too "
                           f"slowly (not whole after {LISTING_WAITS * waited} s); check HF_ENDPOINT and your "
                           "connection, or set HF_HUB_DOWNLOAD_TIMEOUT to wait longer",
                           lambda: api.model_info(repo, revision=revision, files_metadata=True, token=auth,
                                                  timeout=waited))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):  # not JSON, or not a Hub's
            raise SpecgenError(f"the listing of {repo} is not a Hub's model info; {not_a_hub()}") from None
    commit = info.sha if isinstance(info.sha, str) else ""
    if not _COMMIT_RE.fullmatch(commit):  # `$` alone would let a trailing newline through
        raise SpecgenError(f"no valid commit in the listing of {repo} (got '{printable(shorten(commit, 60))}'); "
                           f"{not_a_hub()}")
    files = {}
    for s in info.siblings or []:
        size = s.size if s.size is not None else (s.lfs.size if s.lfs else None)
        sha256 = s.lfs.sha256 if s.lfs else None
        if not (isinstance(s.rfilename, str) and (size is None or type(size) is int and size >= 0)
                and all(v is None or isinstance(v, str) for v in (sha256, s.blob_id))):
            raise SpecgenError(f"the listing of {repo} has a file entry no Hub sends; {not_a_hub()}")
        files[s.rfilename] = RemoteFile(s.rfilename, size, sha256, s.blob_id)
    return RepoListing(repo, commit, files)
