"""Fixtures for the Hub tests: a loopback mirror serving the test models under real-looking
repo ids, a fresh HF_HOME and config dir per test, and a way to run the `specgen` CLI.

Import the fixtures into a test module with `from hub_fixtures import *`.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hfmirror import HFMirror

TARGET_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
TARGET_FILE = "smollm2-135m-instruct-q4_1.gguf"
DRAFT_REPO = "specgen-test/SmolLM2-135M-Instruct-Q2_K-GGUF"
DRAFT_FILE = "smollm2-135m-instruct-q2_k.gguf"
OTHER_REPO = "specgen-test/OtherVocab-135M-GGUF"
OTHER_FILE = "othervocab-135m-q2_k.gguf"
SHARD_REPO = "specgen-test/Sharded-7B-Instruct-GGUF"
GATED_REPO = "google/gemma-3-test-it-qat-q4_0-gguf"
GATED_FILE = "gemma-3-test-it-q4_0.gguf"
GATED_TOKEN = "hf_granted_test_token"

USER_MODELS_YAML = f"""\
version: 1
models:
  smol-q4_1:
    repo: {TARGET_REPO}
    quant: Q4_1
    family: smollm2
    size_gb: 0.098
  smol-q2_k:
    repo: {DRAFT_REPO}
    quant: Q2_K
    family: smollm2
    size_gb: 0.088
  other-vocab:
    repo: {OTHER_REPO}
    quant: Q2_K
  sharded-q8:
    repo: {SHARD_REPO}
    quant: Q8_0
  gated-tiny:
    repo: {GATED_REPO}
    quant: Q4_0
    gated: true
pairs:
  smol:
    target: smol-q4_1
    draft: smol-q2_k
    drafter: model
    draft_max: 4
    default: true
    note: test pair
  smol-self:
    target: smol-q4_1
    draft: smol-q4_1
  smol-bad:
    target: smol-q4_1
    draft: other-vocab
  gated:
    target: gated-tiny
    draft: gated-tiny
"""

__all__ = ["mirror", "mirror_server", "pulled_home", "pulled_smol", "hub_env", "hub_models", "run_specgen", "make_gguf", "snapshot_files",
           "TARGET_REPO", "TARGET_FILE", "DRAFT_REPO", "DRAFT_FILE", "OTHER_REPO", "SHARD_REPO",
           "GATED_REPO", "GATED_FILE", "GATED_TOKEN", "USER_MODELS_YAML"]


# ---------------------------------------------------------------- tiny GGUFs

def _gguf_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def make_gguf(kv: dict[str, object], pad_to: int = 0) -> bytes:
    """A valid GGUF v3 with no tensors and the given string / uint32 metadata."""
    items = []
    for key, value in kv.items():
        if isinstance(value, str):
            items.append(_gguf_str(key) + struct.pack("<I", 8) + _gguf_str(value))
        else:
            items.append(_gguf_str(key) + struct.pack("<I", 4) + struct.pack("<I", int(value)))
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, len(items)) + b"".join(items)
    size = max(pad_to, len(body))
    size = (size + 31) // 32 * 32
    return body + b"\0" * (size - len(body))


def _patch_token(src: Path, dst: Path, token_id: int = 1000) -> str:
    """Copy *src* with token *token_id*'s text changed (same length): a different vocabulary."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        data = f.read(64 << 20)
        pos = 4 + 4
        _, n_kv = struct.unpack_from("<QQ", data, pos)
        pos += 16

        def read_str(p):
            (n,) = struct.unpack_from("<Q", data, p)
            return data[p + 8:p + 8 + n], p + 8 + n

        scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        for _ in range(n_kv):
            key, pos = read_str(pos)
            (vtype,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if vtype == 8:
                _, pos = read_str(pos)
            elif vtype == 9:
                itype, count = struct.unpack_from("<IQ", data, pos)
                pos += 12
                if key == b"tokenizer.ggml.tokens":
                    texts, offsets = [], []
                    for _ in range(count):
                        t, end = read_str(pos)
                        texts.append(t)
                        offsets.append(pos + 8)
                        pos = end
                    vocab = set(texts)
                    old = texts[token_id]
                    new = bytes(b"Zq"[i % 2] for i in range(len(old)))
                    assert new not in vocab
                    f.seek(offsets[token_id])
                    f.write(new)
                    return old.decode("utf-8", "replace")
                if itype in scalar:
                    pos += scalar[itype] * count
                else:
                    for _ in range(count):
                        _, pos = read_str(pos)
            else:
                pos += scalar[vtype]
    raise AssertionError("no tokenizer.ggml.tokens in the test model")


@pytest.fixture(scope="session")
def hub_models(target_path: Path, draft_path: Path, tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("hubmodels")
    other = root / OTHER_FILE
    _patch_token(draft_path, other)
    shards8 = {f"sharded-7b-instruct-q8_0-{i:05d}-of-00003.gguf":
               make_gguf({"general.architecture": "llama", "split.no": i - 1, "split.count": 3,
                          "general.name": f"shard {i}"}, pad_to=300_000 + i)
               for i in range(1, 4)}
    shards4 = {f"sharded-7b-instruct-q4_k_m-{i:05d}-of-00002.gguf":
               make_gguf({"split.no": i - 1, "split.count": 2}, pad_to=1000) for i in range(1, 3)}
    single4 = {"sharded-7b-instruct-q4_k_m.gguf": make_gguf({"general.name": "single"}, pad_to=2000)}
    return {"target": target_path, "draft": draft_path, "other": other, "shards_q8": shards8,
            "shards_q4": shards4, "single_q4": single4,
            "gated": make_gguf({"general.name": "gated tiny"}, pad_to=50_000)}


@pytest.fixture(scope="session")
def mirror_server(hub_models):
    m = HFMirror()
    m.add_repo(TARGET_REPO, {TARGET_FILE: hub_models["target"],
                             "README.md": b"---\nlicense: apache-2.0\n---\n# SmolLM2 test mirror\n"})
    m.add_repo(DRAFT_REPO, {DRAFT_FILE: hub_models["draft"]})
    m.add_repo(OTHER_REPO, {OTHER_FILE: hub_models["other"]})
    m.add_repo(SHARD_REPO, {**hub_models["shards_q8"], **hub_models["shards_q4"], **hub_models["single_q4"],
                            "mmproj-sharded-7b-q8_0.gguf": make_gguf({"general.name": "mmproj"})})
    m.add_repo(GATED_REPO, {GATED_FILE: hub_models["gated"]}, gated=True, tokens={GATED_TOKEN})
    yield m
    m.close()


@pytest.fixture
def mirror(mirror_server):
    mirror_server.clear()
    yield mirror_server
    mirror_server.clear()


@pytest.fixture
def hub_env(mirror, tmp_path, monkeypatch) -> dict[str, str]:
    """Environment for one test: the mirror as HF_ENDPOINT, a fresh HF_HOME and config dir
    holding the test pairs.  Also applied to os.environ for in-process calls."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) and k.lower() not in ("http_proxy", "https_proxy",
                                                                             "all_proxy")}
    config = tmp_path / "config"
    (config / "specgen").mkdir(parents=True)
    (config / "specgen" / "models.yaml").write_text(USER_MODELS_YAML)
    env.update(HF_ENDPOINT=mirror.url, HF_HOME=str(tmp_path / "hf"), XDG_CONFIG_HOME=str(config),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               HF_HUB_DISABLE_TELEMETRY="1", COLUMNS="200")
    for k in list(os.environ):
        if k.startswith(("HF_", "HUGGINGFACE_")):
            monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        if os.environ.get(k) != v:
            monkeypatch.setenv(k, v)
    return env


def _specgen_exe() -> str:
    exe = Path(sys.executable).parent / "specgen"
    return str(exe) if exe.exists() else (shutil.which("specgen") or "specgen")


def run_specgen(*args: str, env: dict[str, str], timeout: float = 120, **extra_env: str | None):
    """Run the CLI in a subprocess (huggingface_hub reads some settings at import)."""
    e = dict(env)
    for k, v in extra_env.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return subprocess.run([_specgen_exe(), *args], env=e, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def snapshot_files(hf_home: Path, repo: str) -> list[Path]:
    snaps = hf_home / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots"
    return sorted(p for p in snaps.rglob("*") if p.is_file()) if snaps.exists() else []


@pytest.fixture(scope="session")
def pulled_home(mirror_server, tmp_path_factory) -> Path:
    """An HF_HOME where `specgen pull smol` has run (made once, copied by `pulled_smol`)."""
    root = tmp_path_factory.mktemp("pulled")
    config = root / "config"
    (config / "specgen").mkdir(parents=True)
    (config / "specgen" / "models.yaml").write_text(USER_MODELS_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=mirror_server.url, HF_HOME=str(root / "hf"), XDG_CONFIG_HOME=str(config),
               NO_PROXY="127.0.0.1,localhost")
    r = run_specgen("pull", "smol", env=env)
    assert r.returncode == 0, r.stderr
    return root / "hf"


@pytest.fixture
def pulled_smol(pulled_home, hub_env, mirror) -> Path:
    """This test's HF_HOME, holding the `smol` pair as `specgen pull` left it."""
    home = Path(hub_env["HF_HOME"])
    shutil.copytree(pulled_home, home, symlinks=True)
    mirror.clear()
    return home
