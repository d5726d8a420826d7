"""Bad files are caught before llama.cpp sees them, each with one clear line."""

import shutil

import pytest

from specgen.llama.gguf import GGUFError, read_gguf


def test_reads_real_header(target_path):
    info = read_gguf(target_path)
    assert info.architecture == "llama"
    assert info.metadata["tokenizer.ggml.tokens"] == 49152  # arrays are kept as lengths
    assert info.n_tensors > 0


def test_missing(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")


def test_directory(tmp_path):
    with pytest.raises(GGUFError, match="is a directory"):
        read_gguf(tmp_path)


def test_not_gguf(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(f)


def test_empty(tmp_path):
    f = tmp_path / "empty.gguf"
    f.write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(f)


@pytest.mark.parametrize("keep", [100, 2_000_000, -1000])
def test_truncated(tmp_path, target_path, keep):
    f = tmp_path / "cut.gguf"
    size = target_path.stat().st_size
    n = keep if keep > 0 else size + keep
    with open(target_path, "rb") as src, open(f, "wb") as dst:
        dst.write(src.read(n))
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(f)


def test_bad_version(tmp_path, target_path):
    f = tmp_path / "v9.gguf"
    shutil.copy(target_path, f)
    with open(f, "r+b") as h:
        h.seek(4)
        h.write((9).to_bytes(4, "little"))
    with pytest.raises(GGUFError, match="unsupported GGUF version 9"):
        read_gguf(f)


def _first_tensor_type_offset(path) -> int:
    """Byte offset of the first tensor's ggml type field in the header."""
    import mmap
    import struct

    from specgen.llama.gguf import _Reader

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        r = _Reader(buf, path)
        r.pos = 8
        r.take("<Q")
        for _ in range(r.take("<Q")):
            r.string()
            r.value(r.take("<I"))
        r.string()
        n_dims = r.take("<I")
        r.pos += 8 * n_dims
        assert struct.unpack_from("<I", buf, r.pos)[0] < 64
        return r.pos


def test_unknown_tensor_type_is_refused(tmp_path, target_path):
    f = tmp_path / "future.gguf"
    shutil.copy(target_path, f)
    with open(f, "r+b") as h:
        h.seek(_first_tensor_type_offset(f))
        h.write((99).to_bytes(4, "little"))
    with pytest.raises(GGUFError, match="ggml type 99, which this specgen does not know"):
        read_gguf(f)
