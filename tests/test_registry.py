"""models.yaml: the built-in pairs, the user file merged over them, file:line errors,
atomic writes, and choosing a model's files from a repo listing (no network here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from specgen.models import cache
from specgen.errors import SpecgenError
from specgen.models.registry import builtin_path, load_registry, parse_model_spec, user_path
from specgen.models.userfile import add_pair, save_local_default
from specgen.models.yamldoc import RegistryError

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    path = tmp_path / "config" / "specgen" / "models.yaml"
    path.parent.mkdir(parents=True)
    return path


def error_of(path: Path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(RegistryError) as e:
        load_registry(path)
    return str(e.value)


# ---------------------------------------------------------------- the built-in file

def test_builtin_file_is_the_repo_root_one():
    assert builtin_path().resolve() == (REPO_ROOT / "models.yaml").resolve()


def test_builtin_pairs_cover_the_curated_set(config):
    reg = load_registry(config)
    assert reg.default == "qwen2.5-coder-7b"
    expect = {
        "qwen2.5-coder-1.5b": "qwen2.5-coder-0.5b", "qwen2.5-coder-7b": "qwen2.5-coder-0.5b",
        "qwen2.5-coder-14b": "qwen2.5-coder-0.5b", "qwen2.5-coder-32b": "qwen2.5-coder-0.5b",
        "qwen2.5-7b": "qwen2.5-0.5b", "qwen2.5-14b": "qwen2.5-0.5b", "qwen2.5-32b": "qwen2.5-0.5b",
        "qwen3-8b": "qwen3-0.6b", "qwen3-14b": "qwen3-0.6b", "qwen3-32b": "qwen3-0.6b",
        "llama-3.1-8b": "llama-3.2-1b", "llama-3.1-70b": "llama-3.2-1b",
        "gemma-3-4b": "gemma-3-1b", "gemma-3-12b": "gemma-3-1b", "gemma-3-27b": "gemma-3-1b",
        "gemma-3-4b-270m": "gemma-3-270m", "gemma-3-12b-270m": "gemma-3-270m", "gemma-3-27b-270m": "gemma-3-270m",
        "deepseek-r1-qwen-32b": "deepseek-r1-qwen-1.5b",
    }
    for name, draft in expect.items():
        assert reg.pairs[name].draft == draft, name
    for p in reg.pairs.values():
        t, d = reg.pair_models(p.name)
        assert t.family == d.family, p.name  # a draft from another tokenizer family can never work
        assert (t.size_gb or 0) > (d.size_gb or 0), p.name
    # Qwen2.5 7B and up are sharded: the first shard is named, the rest follow.
    assert reg.models["qwen2.5-14b"].file.endswith("-00001-of-00003.gguf")
    assert any(m.gated for m in reg.models.values())
    assert not reg.pair_verified("gemma-3-27b") and reg.pair_verified("qwen2.5-coder-7b")


def test_list_json_shows_verified_and_sizes(config, tmp_path):
    exe = Path(__import__("sys").executable).parent / "specgen"
    env = {"XDG_CONFIG_HOME": str(config.parent.parent), "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(exe), "list", "--json"], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in yaml.safe_load(r.stdout)}
    assert rows["gemma-3-27b"]["verified"] is False and rows["qwen2.5-coder-7b"]["verified"] is True
    default = rows["qwen2.5-coder-7b"]
    assert default["default"] and default["downloaded"] == "no" and not default["sizes_exact"]
    assert 5.0e9 < default["target_bytes"] + default["draft_bytes"] < 5.4e9


def test_packaging_ships_real_models_yaml(tmp_path):
    """setuptools follows the src/specgen/models/models.yaml symlink: the sdist (and so the wheel built from
    it) holds the file's content, not a link.  Built offline from a copy of the tree."""
    import shutil
    import tarfile

    pytest.importorskip("setuptools.build_meta")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "models.yaml"):
        shutil.copy(REPO_ROOT / name, tree / name)
    shutil.copytree(REPO_ROOT / "src", tree / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    readme = REPO_ROOT / "README.md"
    (tree / "README.md").write_text(readme.read_text() if readme.exists() else "# specgen\n")
    assert (tree / "src" / "specgen" / "models" / "models.yaml").is_symlink()
    r = subprocess.run([__import__("sys").executable, "-c",
                        "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))",
                        str(tmp_path / "dist")], cwd=tree, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    with tarfile.open(tmp_path / "dist" / r.stdout.split()[-1]) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith("/src/specgen/models/models.yaml")]
        assert member.isfile()
        assert tar.extractfile(member).read() == (REPO_ROOT / "models.yaml").read_bytes()


# ---------------------------------------------------------------- errors with file and line

def test_invalid_yaml_names_file_and_line(config):
    msg = error_of(config, "pairs:\n  mine:\n    target: a\n   draft: b\n")
    assert msg.startswith(f"{config}:4: invalid YAML")


@pytest.mark.parametrize("text,line,needle", [
    ("pairs:\n  x:\n    target: qwen2.5-coder-7b\n    draft: qwen2.5-coder-0.5b\n    draftmax: 4\n",
     5, "pairs.x.draftmax: unknown field (did you mean draft_max"),
    ("pairs:\n  x:\n    target: qwen2.5-coder-7b\n    draft: nope\n", 4, "pairs.x.draft: 'nope' is not a model"),
    ("pairs:\n  x:\n    target: qwen2.5-coder-7b\n    draft: qwen2.5-coder-0.5b\n    draft_max: -2\n",
     5, "draft_max: expected a number of tokens"),
    ("pairs:\n  x:\n    target: qwen2.5-coder-7b\n    drafter: eagle\n", 4, "unknown drafter 'eagle'"),
    ("models:\n  m:\n    repo: a/b\n    file: ../../etc/passwd.gguf\n", 4, "escape"),
    ("models:\n  m:\n    repo: a/b\n", 2, "give `quant`"),
    ("models:\n  m:\n    repo: not a repo\n    quant: Q4_K_M\n", 3, "is not a Hugging Face repo id"),
    ("models:\n  m:\n    repo: a/b\n    quant: Q4_K_M\n    quant: Q8_0\n", 5, "duplicate key 'quant'"),
    ("pairs:\n  x:\n    target: qwen2.5-coder-7b\n", 2, "pairs.x: missing `draft`"),
    ("pairs:\n  a:\n    default: true\n  b:\n    default: true\n", 5, "more than one default pair"),
    ("version: 2\n", 1, "unsupported version"),
    ("- just\n- a list\n", 1, "expected a mapping"),
])
def test_schema_errors_name_file_line_and_what(config, text, line, needle):
    msg = error_of(config, text)
    assert msg.startswith(f"{config}:{line}: "), msg
    assert needle in msg, msg


def test_cli_reports_a_broken_user_file_in_one_line(config, tmp_path):
    config.write_text("pairs:\n  x: [1, 2\n")
    exe = Path(__import__("sys").executable).parent / "specgen"
    env = {"XDG_CONFIG_HOME": str(config.parent.parent), "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(exe), "list"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().startswith(f"specgen: error: {config}:3: invalid YAML")
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- merging and writing

def test_user_file_merges_over_builtin(config):
    config.write_text(
        "models:\n"
        "  qwen2.5-coder-0.5b:\n    repo: Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF\n    quant: Q8_0\n"
        "    family: qwen2.5\n"
        "pairs:\n"
        "  qwen2.5-coder-14b:\n    drafter: ngram\n    draft_max: 12\n    default: true\n")
    reg = load_registry(config)
    assert reg.models["qwen2.5-coder-0.5b"].quant == "Q8_0"  # model entries are replaced
    assert reg.models["qwen2.5-coder-0.5b"].file is None
    p = reg.pairs["qwen2.5-coder-14b"]  # pair entries are merged field by field
    assert (p.target, p.draft, p.drafter, p.draft_max, p.user) == (
        "qwen2.5-coder-14b", "qwen2.5-coder-0.5b", "ngram", 12, True)
    assert reg.default == "qwen2.5-coder-14b" and not reg.pairs["qwen2.5-coder-7b"].default


def test_save_local_default_round_trips_and_keeps_the_rest(config):
    config.write_text("# mine\npairs:\n  qwen3-8b:\n    note: keep me\n")
    assert save_local_default("qwen2.5-coder-7b", "model", 6) == config
    assert save_local_default("qwen3-8b", "ngram", None) == config
    reg = load_registry(config)
    assert (reg.pairs["qwen2.5-coder-7b"].drafter, reg.pairs["qwen2.5-coder-7b"].draft_max) == ("model", 6)
    assert (reg.pairs["qwen3-8b"].drafter, reg.pairs["qwen3-8b"].draft_max) == ("ngram", None)
    assert reg.pairs["qwen3-8b"].note == "keep me" and reg.pairs["qwen3-8b"].target == "qwen3-8b"
    raw = yaml.safe_load(config.read_text())
    assert raw["pairs"]["qwen3-8b"]["draft_max"] == "auto"
    assert sorted(p.name for p in config.parent.iterdir()) == ["models.yaml"]  # no temp files left
    with pytest.raises(SpecgenError, match="unknown pair 'qwen3-80b'"):
        save_local_default("qwen3-80b", "model", 4)


def test_a_write_that_would_break_the_file_is_refused(config):
    before = "pairs:\n  qwen3-8b:\n    note: fine\n"
    config.write_text(before)
    with pytest.raises(SpecgenError):
        save_local_default("qwen3-8b", "eagle", 4)
    with pytest.raises(SpecgenError, match="'nope' is not a model id"):
        add_pair("x", "nope", "qwen3-0.6b")
    assert config.read_text() == before


def test_add_pair_writes_models_and_pair(config, tmp_path):
    gguf = tmp_path / "my-draft.gguf"
    gguf.write_bytes(b"GGUF")
    path, reg = add_pair("mine", "bartowski/Qwen2.5-7B-Instruct-GGUF:Q5_K_M", str(gguf), draft_max=5)
    assert path == config == user_path()
    p = reg.pairs["mine"]
    t, d = reg.pair_models("mine")
    assert (t.repo, t.quant, d.path, p.draft_max, p.drafter) == (
        "bartowski/Qwen2.5-7B-Instruct-GGUF", "Q5_K_M", gguf.resolve(), 5, "auto")
    again = load_registry(config)
    assert again.pairs["mine"] == p and again.models[t.id] == t
    # An existing model is reused rather than duplicated.
    _, reg = add_pair("mine2", "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF", "qwen2.5-coder-0.5b")
    assert reg.pairs["mine2"].target == "qwen2.5-coder-7b"
    with pytest.raises(SpecgenError, match="already exists"):
        add_pair("mine", "qwen3-8b", "qwen3-0.6b")
    with pytest.raises(SpecgenError, match="no such file"):
        add_pair("mine3", "qwen3-8b", str(tmp_path / "missing.gguf"))


def test_parse_model_spec(config):
    reg = load_registry(config)
    assert parse_model_spec("qwen3-0.6b", reg).model_id == "qwen3-0.6b"
    assert parse_model_spec("Qwen/Qwen3-8B-GGUF:Q8_0", reg) == parse_model_spec("Qwen/Qwen3-8B-GGUF:Q8_0")
    s = parse_model_spec("Qwen/Qwen3-8B-GGUF")
    assert (s.repo, s.quant) == ("Qwen/Qwen3-8B-GGUF", None)
    assert parse_model_spec("./x.gguf").path == Path("x.gguf").resolve()
    with pytest.raises(SpecgenError, match="is not a model id"):
        parse_model_spec("what is this", reg)


# ---------------------------------------------------------------- choosing files in a repo

QWEN_CODER_7B = ["qwen2.5-coder-7b-instruct-q4_k_m.gguf", "qwen2.5-coder-7b-instruct-q4_k_m-00001-of-00002.gguf",
                 "qwen2.5-coder-7b-instruct-q4_k_m-00002-of-00002.gguf", "qwen2.5-coder-7b-instruct-q8_0.gguf",
                 "qwen2.5-coder-7b-instruct-fp16-00001-of-00004.gguf", "README.md", ".gitattributes"]


def test_quant_names_are_read_from_file_names():
    cases = {
        "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf": "Q4_K_M",
        "Qwen3-0.6B-Q8_0.gguf": "Q8_0",
        "gemma-3-1b-it-qat-q4_0.gguf": "Q4_0",
        "Meta-Llama-3.1-70B-Instruct-Q5_K_M/Meta-Llama-3.1-70B-Instruct-Q5_K_M-00001-of-00002.gguf": "Q5_K_M",
        "DeepSeek-R1-Distill-Qwen-1.5B-IQ4_XS.gguf": "IQ4_XS",
        "Qwen3-8B-UD-Q4_K_XL.gguf": "Q4_K_XL",
        "model-BF16.gguf": "BF16",
        "gemma-3-270m-it.gguf": None,
    }
    for name, quant in cases.items():
        assert cache.quant_of(name) == quant, name


def test_select_prefers_the_single_file_and_takes_shards_together():
    assert cache.select_files(QWEN_CODER_7B, "q", "Q4_K_M") == ["qwen2.5-coder-7b-instruct-q4_k_m.gguf"]
    assert cache.select_files(QWEN_CODER_7B, "q", "q8_0") == ["qwen2.5-coder-7b-instruct-q8_0.gguf"]
    assert cache.select_files(QWEN_CODER_7B, "q", file="qwen2.5-coder-7b-instruct-q4_k_m-00001-of-00002.gguf") == [
        "qwen2.5-coder-7b-instruct-q4_k_m-00001-of-00002.gguf",
        "qwen2.5-coder-7b-instruct-q4_k_m-00002-of-00002.gguf"]
    shards = [f"qwen2.5-14b-instruct-q4_k_m-0000{i}-of-00003.gguf" for i in (3, 1, 2)]
    assert cache.select_files(shards, "q", "Q4_K_M") == sorted(shards)
    with pytest.raises(SpecgenError, match="split GGUF .* incomplete, 3 of 4 shards missing"):
        cache.select_files(QWEN_CODER_7B, "q", "F16")
    with pytest.raises(SpecgenError, match="q has no Q6_K GGUF; it has F16, Q4_K_M, Q8_0"):
        cache.select_files(QWEN_CODER_7B, "q", "Q6_K")
    assert cache.select_files(["mmproj-model-Q4_K_M.gguf", "m-Q4_K_M.gguf"], "q", "Q4_K_M") == ["m-Q4_K_M.gguf"]


@pytest.mark.parametrize("name", ["../evil-Q4_K_M.gguf", "/etc/evil-Q4_K_M.gguf", "a/../../evil-Q4_K_M.gguf",
                                  "a\\..\\evil-Q4_K_M.gguf", "C:/evil-Q4_K_M.gguf", "./x-Q4_K_M.gguf"])
def test_repo_file_names_cannot_escape_the_cache(name):
    with pytest.raises(SpecgenError, match="escape"):
        cache.select_files([name], "q", "Q4_K_M")


def test_local_files_reads_only_the_cache(config, tmp_path):
    reg = load_registry(config)
    model = reg.models["qwen2.5-7b"]
    assert cache.local_files(model) is None
    folder = cache.storage_folder(model.repo)
    commit = "a" * 40
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    (folder / "blobs").mkdir()
    (folder / "blobs" / "b1").write_bytes(b"GGUF1")
    (snap / "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf").symlink_to("../../blobs/b1")
    assert cache.local_files(model) is None  # one shard of two: not downloaded
    (snap / "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf").symlink_to("../../blobs/b2")
    assert cache.local_files(model) is None  # a link whose blob is missing does not count
    (folder / "blobs" / "b2").write_bytes(b"GGUF2")
    got = cache.local_files(model)
    assert [p.name for p in got] == ["qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
                                     "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf"]
    assert cache.local_pair(reg, "qwen2.5-7b") is None  # the draft is not there


def test_only_files_inside_the_cache_are_removed_or_written(config, tmp_path):
    folder = cache.storage_folder("a/b")
    blob = folder / "blobs" / "etag"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"blob")
    snap = folder / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    inside = snap / "in.gguf"
    inside.symlink_to(blob)
    mine = tmp_path / "mine" / "mine.gguf"
    mine.parent.mkdir()
    mine.write_bytes(b"mine")
    outside = snap / "out.gguf"
    outside.symlink_to(mine)
    assert cache.owns(inside, folder) and not cache.owns(outside, folder)

    assert cache.remove_entry(outside, folder) == 0  # the link goes, the user's file stays
    assert not outside.is_symlink() and mine.read_bytes() == b"mine"
    assert cache.remove_entry(inside, folder) == 4 and not blob.exists()

    partial = folder / "blobs" / "etag.incomplete"
    partial.symlink_to(mine)
    assert cache.claim(partial, folder) == partial and not partial.exists()  # a fresh start, not an append
    linked = folder / "snapshots" / ("d" * 40)  # a snapshot folder that is a link to the user's folder
    linked.symlink_to(mine.parent, target_is_directory=True)
    for act in (cache.remove_entry, cache.claim):
        with pytest.raises(SpecgenError, match=f"{linked} is a link out of the Hugging Face cache"):
            act(linked / "mine.gguf", folder)
    assert mine.read_bytes() == b"mine"
