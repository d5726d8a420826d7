"""A small Hugging Face Hub compatible mirror on 127.0.0.1 for tests.

It answers what huggingface_hub (2.x) and specgen call:

- `GET /api/models/{repo}[/revision/{rev}]` (model_info, `?blobs=true` adds sizes and LFS sha256)
- `GET /api/models/{repo}/tree/{rev}[/{path}]` (list_repo_tree)
- `HEAD|GET /{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag` / `X-Linked-Etag`
  (the sha256, as the Hub does for LFS files), `X-Linked-Size`, `Content-Length`,
  `Accept-Ranges: bytes`, and `Range` requests answered 206 (416 past the end).

Errors carry the Hub's `X-Error-Code` header (RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo) so huggingface_hub raises its own exception types.  It never sends Xet headers,
so hf_xet is never used.

Faults to simulate, per file: drop the connection after N bytes (then optionally answer an
HTTP status for the next requests), serve corrupted bytes (same size, wrong sha256), advertise
a wrong size, ignore Range (send the whole file), send slowly or a byte at a time, or stall (a
HEAD that gets no answer, a GET that stops sending at byte N) until the faults are cleared.
Every request is logged in `mirror.log`.

`RawServer` is what answers instead of a Hub: nothing at all (it accepts connections and never
sends a byte), or the same raw bytes to every request.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from specgen.fileio import file_sha256

_sha_cache: dict[tuple[str, int, float], str] = {}


def sha256_of(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    if key not in _sha_cache:
        _sha_cache[key] = file_sha256(path)
    return _sha_cache[key]


@dataclass
class MirrorFile:
    name: str
    source: Path | bytes
    size: int = 0
    sha256: str = ""
    lfs: bool = True

    def __post_init__(self):
        if isinstance(self.source, bytes):
            self.size = len(self.source)
            self.sha256 = hashlib.sha256(self.source).hexdigest()
        else:
            self.size = self.source.stat().st_size
            self.sha256 = sha256_of(self.source)

    @property
    def git_oid(self) -> str:
        if self.lfs:  # the oid of the LFS pointer file; any stable sha1 does here
            return hashlib.sha1(f"pointer {self.sha256}".encode()).hexdigest()
        data = self.source if isinstance(self.source, bytes) else self.source.read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def read(self, start: int, end: int) -> "iter[bytes]":
        """Bytes [start, end) in chunks."""
        if isinstance(self.source, bytes):
            for i in range(start, end, 1 << 20):
                yield self.source[i:min(end, i + (1 << 20))]
            return
        with open(self.source, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                block = f.read(min(1 << 20, left))
                if not block:
                    return
                left -= len(block)
                yield block


@dataclass
class MirrorRepo:
    repo_id: str
    files: dict[str, MirrorFile]
    commit: str
    gated: bool = False
    tokens: set[str] = field(default_factory=set)


@dataclass
class Fault:
    drop_at: int | None = None
    drops: int = 0
    then_status: int | None = None
    status_times: int = 0
    corrupt: bool = False
    size_delta: int = 0
    rate: float | None = None
    """Bytes per second when trickling."""
    stall_at: int | None = None
    stalls: int = 0
    """How many GETs stop sending at byte `stall_at` (right after the headers when they start past it)."""
    stall_head: bool = False
    ignore_range: bool = False
    """Answer a Range request with the whole file (200), as some servers and proxies do."""
    trickle: float | None = None
    """Seconds between single bytes: a connection kept alive by a byte now and then."""
    redirect_loop: bool = False
    """Answer every request for the file with a redirect to itself."""
    released: threading.Event = field(default_factory=threading.Event)
    """Set by `HFMirror.clear`: a stalled answer then ends (its connection closed)."""


class HFMirror:
    def __init__(self):
        self.repos: dict[str, MirrorRepo] = {}
        self.faults: dict[tuple[str, str], Fault] = {}
        self.log: list[dict] = []
        self._lock = threading.Lock()
        mirror = self

        class Handler(_Handler):
            pass

        Handler.mirror = mirror
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo_id: str, files: dict[str, Path | bytes], gated: bool = False,
                 tokens: set[str] | None = None, lfs: bool = True) -> MirrorRepo:
        commit = hashlib.sha1(f"{repo_id}:{sorted(files)}".encode()).hexdigest()
        repo = MirrorRepo(repo_id, {n: MirrorFile(n, src, lfs=lfs) for n, src in files.items()}, commit,
                          gated, set(tokens or ()))
        self.repos[repo_id] = repo
        return repo

    def fault(self, repo_id: str, name: str) -> Fault:
        return self.faults.setdefault((repo_id, name), Fault())

    def clear(self) -> None:
        for fault in self.faults.values():
            fault.released.set()
        self.faults.clear()
        self.log.clear()

    def requests(self, method: str | None = None, kind: str | None = None) -> list[dict]:
        with self._lock:
            return [r for r in self.log if (method is None or r["method"] == method)
                    and (kind is None or r["kind"] == kind)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_API_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
_TREE_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    mirror: HFMirror
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    # -------------------------------------------------------------- plumbing
    def _record(self, kind: str, **extra) -> None:
        with self.mirror._lock:
            self.mirror.log.append({"method": self.command, "path": self.path, "kind": kind,
                                    "range": self.headers.get("Range"),
                                    "auth": self.headers.get("Authorization"), **extra})

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _stall(self, fault: Fault) -> None:
        """Send nothing more until the faults are cleared, then hang up."""
        try:
            self.wfile.flush()
        except OSError:
            pass
        fault.released.wait(120)
        self.close_connection = True

    def _trickle(self, f: MirrorFile, start: int, end: int, fault: Fault) -> None:
        """Send one byte every `fault.trickle` seconds until the faults are cleared, then hang up."""
        self.close_connection = True
        for pos in range(start, end):
            try:
                self.wfile.write(next(f.read(pos, pos + 1)))
                self.wfile.flush()
            except OSError:
                return
            if fault.released.wait(fault.trickle):
                return

    def _error(self, status: int, code: str | None, message: str, extra: dict | None = None) -> None:
        headers = {"Content-Type": "application/json", **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        headers["X-Error-Message"] = message
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _repo(self, repo_id: str) -> MirrorRepo | None:
        repo = self.mirror.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _rev_ok(self, repo: MirrorRepo, rev: str) -> bool:
        if unquote(rev) in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return False

    # -------------------------------------------------------------- routes
    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def _route(self):
        path = urlsplit(self.path).path
        query = parse_qs(urlsplit(self.path).query)
        if m := _TREE_RE.match(path):
            self._record("tree")
            return self._tree(m, query)
        if m := _API_RE.match(path):
            self._record("info")
            return self._info(m, query)
        if m := _RESOLVE_RE.match(path):
            return self._resolve(m)
        self._record("other")
        self._error(404, None, "Not found")

    def _siblings(self, repo: MirrorRepo, blobs: bool) -> list[dict]:
        out = []
        for f in repo.files.values():
            fault = self.mirror.faults.get((repo.repo_id, f.name))
            size = f.size + (fault.size_delta if fault else 0)
            entry = {"rfilename": f.name}
            if blobs:
                entry.update(size=size, blobId=f.git_oid)
                if f.lfs:
                    entry["lfs"] = {"size": size, "sha256": f.sha256, "pointerSize": 134}
            out.append(entry)
        return out

    def _info(self, m, query):
        repo = self._repo(m["repo"])
        if repo is None or (m["rev"] and not self._rev_ok(repo, m["rev"])):
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        body = {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": repo.commit,
                "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
                "tags": ["gguf"], "library_name": "gguf", "siblings": self._siblings(repo, blobs)}
        self._send(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def _tree(self, m, query):
        repo = self._repo(m["repo"])
        if repo is None or not self._rev_ok(repo, m["rev"]):
            return
        prefix = (m["path"] or "").strip("/")
        entries = []
        for s in self._siblings(repo, True):
            name = s["rfilename"]
            if prefix and not name.startswith(prefix + "/"):
                continue
            e = {"type": "file", "oid": s["blobId"], "size": s["size"], "path": name}
            if "lfs" in s:
                e["lfs"] = {"oid": s["lfs"]["sha256"], "size": s["size"], "pointerSize": 134}
            entries.append(e)
        self._send(200, {"Content-Type": "application/json"}, json.dumps(entries).encode())

    def _resolve(self, m):
        repo_id, name = m["repo"], unquote(m["path"])
        self._record("resolve", file=name)
        repo = self._repo(repo_id)
        if repo is None or not self._rev_ok(repo, m["rev"]):
            return
        if repo.gated:
            auth = self.headers.get("Authorization") or ""
            token = auth[7:] if auth.startswith("Bearer ") else None
            if token is None:
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                   "access to it and be authenticated to access it. Please log in.")
            if token not in repo.tokens:
                return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not "
                                   "in the authorized list. Visit https://huggingface.co/" + repo_id + " to ask "
                                   "for access.")
        f = repo.files.get(name)
        if f is None:
            return self._error(404, "EntryNotFound", f"{name} does not exist on \"main\"",
                               {"X-Repo-Commit": repo.commit})
        fault = self.mirror.faults.get((repo_id, name)) or Fault()
        if self.command == "HEAD" and fault.stall_head:
            return self._stall(fault)
        if fault.redirect_loop:
            return self._send(302, {"Location": self.path})
        size = f.size + fault.size_delta
        etag = f'"{f.sha256}"' if f.lfs else f'"{f.git_oid}"'
        headers = {"X-Repo-Commit": repo.commit, "ETag": etag, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "Vary": "Origin"}
        if f.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(size)})
        if self.command == "GET" and fault.then_status and fault.status_times > 0 and fault.drops == 0:
            fault.status_times -= 1
            return self._error(fault.then_status, None, "Service unavailable")
        start, end = 0, f.size
        status = 200
        rng = None if fault.ignore_range else self.headers.get("Range")
        if rng:
            mr = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if mr:
                start = int(mr[1])
                end = min(int(mr[2]) + 1, f.size) if mr[2] else f.size
                if start >= f.size:
                    return self._send(416, {**headers, "Content-Range": f"bytes */{size}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        drop = fault.drop_at if (fault.drops > 0 and fault.drop_at is not None and start < fault.drop_at) else None
        if fault.stalls > 0 and fault.stall_at is not None:
            fault.stalls -= 1
            try:
                for block in f.read(start, max(start, min(fault.stall_at, end))):
                    self.wfile.write(block)
            except OSError:
                pass
            return self._stall(fault)
        if fault.trickle:
            return self._trickle(f, start, end, fault)
        pos = start
        t0 = time.monotonic()
        for block in f.read(start, end):
            if fault.corrupt and pos <= f.size // 2 < pos + len(block):
                i = f.size // 2 - pos
                block = block[:i] + bytes([block[i] ^ 0xFF]) + block[i + 1:]
            if drop is not None and pos + len(block) >= drop:
                block = block[:drop - pos]
                try:
                    self.wfile.write(block)
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                fault.drops -= 1
                self.close_connection = True
                return
            if fault.rate:
                for i in range(0, len(block), 1 << 16):
                    piece = block[i:i + (1 << 16)]
                    try:
                        self.wfile.write(piece)
                    except OSError:
                        self.close_connection = True
                        return
                    pos += len(piece)
                    ahead = pos - start - fault.rate * (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead / fault.rate)
                continue
            try:
                self.wfile.write(block)
            except OSError:
                self.close_connection = True
                return
            pos += len(block)


class RawServer:
    """A server on 127.0.0.1 that accepts every connection and never sends a byte, or with *answer*
    reads each request, sends *answer* (a whole HTTP response, or anything) and hangs up; with *trickle*
    seconds it sends the answer a byte at a time, that far apart."""

    def __init__(self, answer: bytes | None = None, trickle: float = 0.0):
        self.answer, self.trickle = answer, trickle
        self.closed = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)
            if self.answer is not None:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    got = conn.recv(65536)
                    if not got:
                        return
                    request += got
                if not self.trickle:
                    conn.sendall(self.answer)
                for i in range(len(self.answer) if self.trickle else 0):
                    conn.sendall(self.answer[i:i + 1])
                    if self.closed.wait(self.trickle):
                        return
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone would leave waiting
        except OSError:
            pass
        self.sock.close()
        for conn in self.accepted:
            conn.close()
