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
