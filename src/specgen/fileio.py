"""Files and streams: where specgen's cache lives, whole-file replacement, cache files, content hashes, and
reading what a user gives (regular files only, files and streams within a size limit, OS errors in words)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable

from .errors import SpecgenError, shorten

log = logging.getLogger("specgen")
"""Where the library reports what a user may want to know but that stops nothing (the CLI shows it as a
warning)."""


def xdg_dir(var: str, default: str) -> Path:
    """The folder an XDG base-directory variable names (XDG_CACHE_HOME, XDG_CONFIG_HOME), else ~/*default*.

    As the XDG spec says, a value that is not an absolute path is ignored: `relcache`, or a `~nosuchuser`
    no shell expanded, would otherwise put files under whatever folder a command runs in.  An absolute
    one that is a file (or lies below one) is refused naming the variable (see `check_env_folder`)."""
    value = os.environ.get(var, "")
    if not os.path.isabs(value):
        return home_path("~") / default
    check_env_folder(var, Path(value))
    return Path(value)


def check_env_folder(var: str, path: Path) -> None:
    """Name the environment variable when it points at a file (or below one), or into a symbolic link loop,
    not a folder.

    Otherwise the failure surfaces later as "Not a directory" or "a symbolic link loop" on some file inside it.
    """
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SpecgenError(f"{var}={shorten(str(path))} leads into a symbolic link loop (a link that leads "
                               f"back to itself); point {var} at a folder, or unset it") from None
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "" if probe == path else f" ({probe} is a file)"
        raise SpecgenError(f"{var}={shorten(str(path))} is not a folder{where}; point {var} at a folder, "
                           "or unset it")


def cache_home() -> Path:
    """$XDG_CACHE_HOME, else ~/.cache: the base of specgen's own cache and of the Hugging Face one."""
    return xdg_dir("XDG_CACHE_HOME", ".cache")


def cache_dir() -> Path:
    """specgen's cache (measured costs, model hashes); read per call so tests can move it."""
    return cache_home() / "specgen"


def home_path(path: str | os.PathLike[str]) -> Path:
    """*path* with a leading `~` or `~user` replaced by that home folder; a user the system does not
    know is a SpecgenError that names them, not Python's "Could not determine home directory"."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = str(path).split(os.sep, 1)[0]
        raise SpecgenError(f"{shorten(str(path))}: this system has no user {shorten(user[1:])!r}, so "
                           f"{shorten(user)} names no home folder; give the full path") from None


def real_path(path: str | os.PathLike[str]) -> Path:
    """Where *path* really is, every link followed.  Unlike Path.resolve(), a link loop is not an error here
    (the path ends at the loop): whoever reads the file then says what is wrong with it."""
    return Path(os.path.realpath(path))


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Replace *path* with *data* in one step: a reader, or a crash, sees the old file or the new
    one, never half of either.  The temporary file is removed when anything fails.

    A symbolic link keeps pointing where it did (the file it names is replaced).  A path that is not a
    file (/dev/stdout, a pipe) is written to as it is: replacing it would put a file where a device was.
    An OSError names *path* as given, never the hidden temporary file beside it (see `os_problem`).
    """
    asked = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        return _replace(asked, raw)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(asked)) from None


def replaces(path: Path) -> bool:
    """Whether `write_atomic` puts a new file at *path* (a file, or none yet), rather than writing through
    it (a device, a pipe)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True
    return not _writes_through(Path(path), mode)


def _writes_through(path: Path, mode: int) -> bool:
    # /dev/stdout and the like are written through (appended, as the shell's `>` writes) even when they
    # lead to a file: replacing that file would lose what the program printed to it.
    return not stat.S_ISREG(mode) or str(path).startswith(("/dev/", "/proc/"))


def _replace(path: Path, raw: bytes) -> Path:
    try:
        old: os.stat_result | None = os.stat(path)  # a link loop or a path through a file fails here
    except FileNotFoundError:
        old = None
    mode = old.st_mode if old is not None else None
    if mode is not None and _writes_through(path, mode):
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        # Non-blocking only to open: a named pipe that no program reads fails (ENXIO) instead of waiting
        # forever; a reader that is slow to drain it is then waited for.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        return path
    if path.is_symlink():
        path = real_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _keep_mode(f.fileno(), old)
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


def _keep_mode(fd: int, old: os.stat_result | None) -> None:
    """Give the new file *fd* the mode (and, where the system allows, the owner) of the file it replaces, so a
    private file stays private; a file made anew gets the mode a plain open() would (mkstemp's is 0600)."""
    if old is None:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        return
    if hasattr(os, "fchown") and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
        try:
            os.fchown(fd, old.st_uid, old.st_gid)
        except OSError:  # only root may give a file away: it then belongs to whoever wrote it
            pass
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


STREAM_LIMIT = 64 << 20
"""The most bytes read from a stream (stdin, a chat line) or read whole from a file: four a token over the
largest context specgen accepts (2**24 tokens).  More could never be a prompt, and /dev/zero (or a model file
given where a text file goes) would otherwise fill the memory."""

_PROBLEMS = {
    errno.ENOENT: "no such file",
    errno.ELOOP: "a symbolic link loop (a link that leads back to itself)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a directory, not a file",
    errno.ENAMETOOLONG: "the name is too long for this system",
    errno.ENOSPC: "no space left on the device; free some space",
    errno.EDQUOT: "over the disk quota; free some space",
    errno.EFBIG: "larger than the system lets a file grow (the file system's or `ulimit -f`'s limit)",
    errno.EROFS: "a read-only file system; give a path on a writable one",
    errno.EIO: "input/output error (a failing disk or a lost network mount); check the device",
}


def os_problem(e: OSError) -> str:
    """What an OSError means for the file it names, in words that say what to do (never "[Errno N]")."""
    if e.errno == errno.ENXIO and e.filename is not None:
        return _no_such_address(e.filename)
    return _PROBLEMS.get(e.errno) or (e.strerror or str(e)).lower()


def _no_such_address(path: str | os.PathLike[str]) -> str:
    # ENXIO, "no such device or address", is what opening three kinds of things fails with: a named pipe
    # with no reader (opened to write without waiting), a socket, and a device with nothing behind it.
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFIFO  # gone since: most likely the pipe it was
    if stat.S_ISFIFO(mode):
        return "a named pipe that no program is reading; start the reader first"
    if stat.S_ISSOCK(mode):
        return _not_regular(mode, None)
    return "a device with nothing behind it (no such device or address)"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"


def absent(path: str | os.PathLike[str]) -> bool:
    """Whether nothing is at *path* (or only a link to a file still to be made).  Unlike Path.exists(),
    a link loop is not absent: reading it says what is wrong."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def not_a_folder(folder: str | os.PathLike[str]) -> str | None:
    """Why a file cannot be made in *folder* because of what it is (missing, a file, a link loop), in
    words, or None when it is a folder."""
    try:
        mode = os.stat(folder).st_mode
    except FileNotFoundError:
        return f"no folder {_shown(folder)}"
    except OSError as e:
        return f"{_shown(folder)}: {os_problem(e)}"
    if stat.S_ISDIR(mode):
        return None
    return f"{_shown(folder)} is {'a file' if stat.S_ISREG(mode) else _kind(mode)}, not a folder"


def _shown(path: str | os.PathLike[str]) -> str:
    return shorten(str(path), 200)  # a name too long for the system is not echoed whole


def _not_regular(mode: int, what: str | None) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return f"is {_kind(mode)}, not a regular file" + (f"; give {what}" if what else "")


def _cannot_open(e: OSError, what: str | None) -> str:
    # ENXIO here, opening to read, is a socket or a device: not a file, as ENOENT is none
    return os_problem(e) + (f"; give {what}" if what and e.errno in (errno.ENOENT, errno.ENXIO) else "")


def unreadable(path: str | os.PathLike[str], what: str | None = None) -> str | None:
    """Why *path* cannot be read as a file, or None when it is a regular one (through any links); with
    *what*, a thing that is not a file says what to give instead."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return _cannot_open(e, what)
    return _not_regular(mode, what)


def open_regular(path: str | os.PathLike[str], what: str | None = None,
                 error: type[SpecgenError] = SpecgenError) -> BinaryIO:
    """*path* opened for reading, when it is a regular file (through any links).

    Anything else is refused with an *error* naming the path, what it is and, when *what* is given, what
    to give instead: a named pipe would wait for a writer forever, a device (/dev/zero) would never end,
    a link loop never resolves.
    """
    try:
        # Non-blocking: opening a named pipe with no writer returns at once, to be refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"{_shown(path)}: {_cannot_open(e, what)}") from None
    problem = _not_regular(os.fstat(fd).st_mode, what)
    if problem:
        os.close(fd)
        raise error(f"{_shown(path)}: {problem}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: str | os.PathLike[str], what: str | None = None,
                 error: type[SpecgenError] = SpecgenError, limit: int = STREAM_LIMIT) -> bytes:
    """The whole content of a regular file, refused as `open_regular` says; a read error is an *error* too, and
    so is more than *limit* bytes (a file that says it is larger is refused before any of it is read)."""
    with open_regular(path, what, error) as f:
        try:
            data = f.read(limit + 1) if os.fstat(f.fileno()).st_size <= limit else None
        except OSError as e:
            raise error(f"{_shown(path)}: {os_problem(e)}") from None
    if data is None or len(data) > limit:  # or it grew while it was read
        raise error(_too_long(_shown(path), limit, "far more than such a file holds; check that it is the right file"))
    return data


def read_stream(stream: IO[Any] | None, what: str, limit: int = STREAM_LIMIT) -> bytes:
    """What a stream (stdin) holds, to its end; nothing for a closed one.  More than *limit* bytes is
    refused after reading only that much."""
    if stream is None:
        return b""
    try:
        data = getattr(stream, "buffer", stream).read(limit + 1)
    except OSError as e:  # a failing disk, a tty that hung up
        raise SpecgenError(f"{what}: cannot read it: {os_problem(e)}") from None
    if len(data) > limit:
        raise SpecgenError(_too_long(what, limit))
    return data


def read_line(stream: IO[str], what: str, limit: int = STREAM_LIMIT) -> str | None:
    """One line of a text stream, without its line end; None at the end.  A line of more than *limit*
    characters is refused as `read_stream` refuses a stream."""
    line = stream.readline(limit + 1)  # room for the line end after a line of *limit* characters
    if not line:
        return None
    text = line.removesuffix("\n")
    if len(text) > limit:
        raise SpecgenError(_too_long(what, limit))
    return text


def _too_long(what: str, limit: int, why: str = "more text than any context takes; give a shorter prompt") -> str:
    return f"{what} holds more than {human_size(limit)}, {why}"


def parse_json(text: str | bytes) -> Any:
    """json.loads, with nesting deeper than the parser can follow and an integer longer than Python converts
    refused as invalid JSON (a JSONDecodeError, like any other) instead of a RecursionError or a bare
    ValueError.  Bytes that are not UTF-8 stay a UnicodeDecodeError, for the caller to name as such."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text if isinstance(text, str) else "", 0) from None
    except (json.JSONDecodeError, UnicodeDecodeError):  # UnicodeDecodeError is a ValueError too: not UTF-8
        raise
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise json.JSONDecodeError(f"a number of more than {sys.get_int_max_str_digits()} digits",
                                   text if isinstance(text, str) else "", 0) from None


def read_json_cache(path: Path, valid: Callable[[Any], bool]) -> Any | None:
    """A cache file's content, or None when there is none yet.

    A file that cannot be read, does not parse or that *valid* refuses (an older layout, a hand edit) is
    ignored with a warning: the caller measures again and `write_json_cache` replaces it.  Something that is
    not a file (a named pipe, a device, a folder, a link loop) is never replaced or written through: the
    warning says to remove it.
    """
    if absent(path):
        return None
    problem = unreadable(path)
    if problem is not None:
        log.warning(f"ignoring the cache file {path}: {problem}; remove it, or every run measures again")
        return None
    try:
        text = read_regular(path).decode("utf-8")  # refused past the size limit, or a read that failed
    except SpecgenError as e:
        problem = f"unreadable ({e})"
    except UnicodeDecodeError:
        problem = "not text"
    else:
        try:
            data = parse_json(text)
        except ValueError:
            problem = "not valid JSON"
        else:
            if valid(data):
                return data
            problem = "not laid out as this version writes it"
    log.warning(f"ignoring the cache file {path}: {problem}; it will be written anew")
    return None


def write_json_cache(path: Path, data: Any) -> None:
    """Replace the cache file at *path* with *data*; one that cannot be written (a read-only cache) only costs
    measuring again next time.  Only a file is replaced (see `read_json_cache`)."""
    if not absent(path) and unreadable(path) is not None:
        return
    try:
        write_atomic(path, json.dumps(data))
    except OSError:
        pass


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
