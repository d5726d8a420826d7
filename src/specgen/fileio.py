"""Files specgen keeps for the user: where its cache lives, whole-file replacement, content hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_home() -> Path:
    """$XDG_CACHE_HOME, else ~/.cache: the base of specgen's own cache and of the Hugging Face one."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def cache_dir() -> Path:
    """specgen's cache (measured costs, model hashes); read per call so tests can move it."""
    return cache_home() / "specgen"


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Replace *path* with *data* in one step: a reader, or a crash, sees the old file or the new
    one, never half of either.  The temporary file is removed when anything fails.

    A symbolic link keeps pointing where it did (the file it names is replaced).  A path that is not a
    file (/dev/stdout, a pipe) is written to as it is: replacing it would put a file where a device was.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file():
        with open(path, "wb") as f:
            f.write(raw)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); give it the mode a plain open() would.
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(f.fileno(), 0o666 & ~mask)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's content, read in blocks (model files are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def human_size(n: float | None) -> str:
    """A byte count as people read file sizes (decimal units, as the Hub shows them)."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
