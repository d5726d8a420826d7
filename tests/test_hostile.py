"""Hostile but realistic input, family by family: every case ends with the documented exit code,
no traceback, one line that says what to do, and the cache and config as they were (or repaired).

Tiny real models, the loopback Hub mirror, real subprocesses.  Ctrl+C is sent at named moments
(`SPECGEN_TEST_PAUSE`: the process writes a marker file and waits there), never after a guessed sleep.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import one_line_error
from hub_fixtures import *  # noqa: F401,F403  (fixtures)
from hub_fixtures import (DRAFT_REPO, TARGET_REPO, USER_MODELS_YAML, _specgen_exe, make_gguf, run_specgen,
                          snapshot_files)

EXE = _specgen_exe()


@pytest.fixture
def home(tmp_path) -> dict[str, str]:
    """An environment with its own config and Hub cache, offline: nothing here can touch the user's."""
    config = tmp_path / "config"
    (config / "specgen").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "SPECGEN_TEST"))}
    env.update(XDG_CONFIG_HOME=str(config), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", NO_COLOR="1",
               COLUMNS="200")
    return env


def sg(*args: str | bytes, env: dict[str, str], stdin: bytes | None = b"", timeout: float = 120,
       **extra: str) -> subprocess.CompletedProcess:
    r = subprocess.run([EXE, *args], input=stdin, capture_output=True, timeout=timeout, env={**env, **extra})
    r.stdout = r.stdout.decode("utf-8", "replace")
    r.stderr = r.stderr.decode("utf-8", "replace")
    return r


def cli(*args: str, env: dict[str, str], monkeypatch, capsys, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """The CLI in this process, for cases refused before any model or network is touched (fast)."""
    from specgen.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", ["specgen", *args])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, e.value.code, out, err)


def fails(r: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    """Exit *code*, one stderr line, no traceback, and the line names each of *needles*."""
    line = one_line_error(r)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert line.startswith("specgen: error: "), line
    for n in needles:
        assert n in line, (n, line)
    assert len(line) < 400, line  # a user value is never echoed at length
    return line


# ---------------------------------------------------------------- sampling flags, every command

SAMPLING_CASES = [
    ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-inf"), ("--temperature", "-1"),
    ("--temperature", "1e9"), ("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "nan"), ("--top-p", "-0.1"),
    ("--min-p", "-5"), ("--min-p", "2"), ("--min-p", "nan"), ("--top-k", "-3"),
    ("--repeat-penalty", "-1"), ("--repeat-penalty", "0"), ("--repeat-penalty", "nan"),
    ("--repeat-penalty", "inf"), ("--seed", "-1"),
]


@pytest.mark.parametrize("command", ["run", "chat"])
@pytest.mark.parametrize("flag, value", SAMPLING_CASES)
def test_sampling_flags_are_bounded_before_anything_loads(command, flag, value, home, tmp_path, monkeypatch,
                                                         capsys):
    # A target that does not exist: the flag must be refused before the file is even looked at.
    args = [command, "--target", str(tmp_path / "absent.gguf"), f"{flag}={value}"]
    fails(cli(*args, *(["hi"] if command == "run" else []), env=home, monkeypatch=monkeypatch, capsys=capsys),
          flag, "must be")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9", "warm"])
def test_bench_temperatures_use_the_same_bounds(value, home, tmp_path, monkeypatch, capsys):
    fails(cli("bench", "--target", str(tmp_path / "absent.gguf"), "--temperature", f"0,{value}", env=home,
              monkeypatch=monkeypatch, capsys=capsys), "--temperature")


def test_the_bounds_live_in_the_library():
    from specgen.sampling import SamplingError, SamplingParams

    SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.1, seed=0).check()
    for bad in ({"temperature": float("nan")}, {"top_p": 0.0}, {"min_p": 1.5}, {"top_k": -1},
                {"repeat_penalty": 0.0}, {"seed": -1}):
        with pytest.raises(SamplingError) as e:
            SamplingParams(**bad).check()
        assert e.value.field == next(iter(bad))


def test_chat_temp_refuses_what_run_refuses(home, target_path):
    r = sg("chat", "--target", str(target_path), "--drafter", "none", "--max-tokens", "3",
           stdin=b"/temp nan\n/temp 1e9\n/temp -1\n/temp 0.5\n/bye\n", env=home)
    assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert (r.stdout + r.stderr).count("usage: /temp T, a number from 0") == 3
    assert "temperature: 0.5" in r.stdout


# ---------------------------------------------------------------- engine numbers

NUMBER_CASES = [
    ("--ctx", "0"), ("--ctx", "-5"), ("--ctx", "10"), ("--ctx", "99999999999"), ("--max-tokens", "0"),
    ("--max-tokens", "-1"), ("--threads", "0"), ("--threads", "-1"), ("--gpu-layers", "-2"),
    ("--draft-gpu-layers", "-7"), ("--draft-p-min", "2"), ("--draft-p-min", "-0.5"), ("--draft-max", "-1"),
    ("--draft-max", "lots"),
]


@pytest.mark.parametrize("command", ["run", "chat", "bench"])
@pytest.mark.parametrize("flag, value", NUMBER_CASES)
def test_numeric_flags_are_refused_before_anything_loads(command, flag, value, home, tmp_path, monkeypatch,
                                                        capsys):
    if command == "bench" and flag in ("--draft-max",):
        value = f"3,{value}"
    args = [command, "--target", str(tmp_path / "absent.gguf"), f"{flag}={value}"]
    if command == "run":
        args.append("hi")
    r = cli(*args, env=home, monkeypatch=monkeypatch, capsys=capsys)
    if r.returncode == 2:  # typer's own refusal of a non-number: also one clear usage error
        assert "Traceback" not in r.stderr and flag in r.stderr
        return
    line = fails(r, flag)
    assert "out of memory" not in line


def test_too_many_threads_are_clamped_with_a_note(home, target_path):
    r = sg("run", "--target", str(target_path), "--drafter", "none", "--max-tokens", "2", "--threads", "999",
           "hi", env=home)
    assert r.returncode == 0, r.stderr
    assert "specgen: note: --threads 999 is more than" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [["run", "--drafter", "none", "hi"],
                                     ["bench", "--prompts", "builtin:chat", "--limit", "1", "--drafter", "ngram"]])
def test_a_context_past_the_trained_one_is_cut_with_a_note(command, home, target_path):
    r = sg(*command[:1], "--target", str(target_path), "--max-tokens", "2", "--ctx", "100000", *command[1:],
           env=home, timeout=300)
    assert r.returncode == 0, r.stderr
    from specgen.llama.gguf import read_gguf

    info = read_gguf(target_path)
    trained = info.metadata[f"{info.architecture}.context_length"]
    assert f"specgen: note: --ctx 100000 is more than {target_path.name} was trained for; using {trained}" \
        in r.stderr


def test_draft_that_is_the_target_or_larger_gets_a_note(target_path, draft_path, tmp_path):
    from specgen.build import EngineOptions

    (same,) = EngineOptions(target=target_path, draft=target_path, drafter="model").check()
    assert "the draft is the target itself" in same
    link = tmp_path / "link.gguf"
    link.symlink_to(target_path)
    assert "the draft is the target itself" in EngineOptions(target=target_path, draft=link).check()[0]
    # The Q2_K requantization is smaller than the Q4_1 original: swapped, the draft is the larger file.
    (swapped,) = EngineOptions(target=draft_path, draft=target_path).check()
    assert "is larger than the target" in swapped and "swap" in swapped
    assert EngineOptions(target=target_path, draft=draft_path).check() == []
    assert EngineOptions(target=target_path, draft=target_path, drafter="ngram").check() == []  # not loaded


# ---------------------------------------------------------------- GGUF files

def _header(version=3, n_tensors=0, n_kv=0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _kv_u32(key: str, value: int) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, value)


def _kv_f32(key: str, value: float) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<If", 6, value)


GGUF_CASES = {
    "empty": (lambda t: b"", "not a GGUF"),
    "text": (lambda t: b"hello, I am not a model\n" * 10, "not a GGUF"),
    "truncated": (lambda t: t.read_bytes()[:5_000_000], "truncated"),
    "header only": (lambda t: t.read_bytes()[:100], "re-download"),
    "version 99": (lambda t: _header(99) + b"\0" * 64, "version 99"),
    "2^24 tensors": (lambda t: _header(n_tensors=1 << 24) + b"\0" * 4096, "tensors"),
    "2^60 keys": (lambda t: _header(n_kv=1 << 60) + b"\0" * 4096, "keys"),
    "alignment is a string": (lambda t: make_gguf({"general.alignment": "32"}), "general.alignment is string"),
    "alignment is a float": (lambda t: _header(n_kv=1) + _kv_f32("general.alignment", 32.0) + b"\0" * 64,
                             "general.alignment is float32"),
    "alignment is zero": (lambda t: make_gguf({"general.alignment": 0}), "power of two"),
    "alignment is 3": (lambda t: make_gguf({"general.alignment": 3}), "power of two"),
    "architecture is a number": (lambda t: _header(n_kv=1) + _kv_u32("general.architecture", 7) + b"\0" * 64,
                                 "general.architecture is uint32"),
    "block_count is a string": (lambda t: make_gguf({"general.architecture": "llama", "llama.block_count": "x"}),
                                "llama.block_count is string"),
    "name is a number": (lambda t: make_gguf({"general.name": 5}), "general.name is uint32"),
    "unknown value type": (lambda t: _header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99)
                           + b"\0" * 64, "unknown value type"),
    "huge string": (lambda t: _header(n_kv=1) + struct.pack("<Q", 1 << 62) + b"\0" * 64, "truncated"),
}


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_damaged_gguf_files(case, home, target_path, tmp_path):
    make, needle = GGUF_CASES[case]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(make(target_path))
    line = fails(sg("run", "--target", str(bad), "--drafter", "none", "--max-tokens", "2", "hi", env=home),
                 needle)
    assert str(bad) in line or bad.name in line
    # As the draft of a good target, the same file fails the same way, before the target loads.
    fails(sg("run", "--target", str(target_path), "--draft", str(bad), "--drafter", "model", "hi", env=home),
          needle)


@pytest.mark.parametrize("what", ["directory", "missing", "fifo"])
def test_paths_that_are_not_files(what, home, tmp_path):
    p = tmp_path / "m.gguf"
    if what == "directory":
        p.mkdir()
    elif what == "fifo":
        os.mkfifo(p)
    fails(sg("run", "--target", str(p), "hi", env=home, timeout=30), str(p))


def test_random_tensor_data_is_caught_on_the_first_step(home, target_path, tmp_path):
    bad = tmp_path / "random.gguf"
    shutil.copyfile(target_path, bad)
    size = bad.stat().st_size
    with open(bad, "r+b") as f:  # keep the header (the first ~2 MB), replace the weights
        f.seek(8 << 20)
        f.write(random.Random(7).randbytes(size - (8 << 20)))
    fails(sg("run", "--target", str(bad), "--drafter", "none", "--max-tokens", "4", "hi", env=home),
          "invalid numbers", "corrupt")


# ---------------------------------------------------------------- the user's models.yaml

BOMB = "version: 1\nmodels:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))

YAML_CASES = {
    "alias bomb": (BOMB, ":", "aliases"),
    "alias cycle": ("version: 1\nmodels: &m\n  x: *m\n", ":2:", "refers to itself"),
    "not YAML": ("version: 1\nmodels: [\n", ":", "invalid YAML"),
    "tab indent": ("version: 1\nmodels:\n\tx: 1\n", ":3:", "invalid YAML"),
    "duplicate key": ("version: 1\npairs: {}\npairs: {}\n", ":3:", "duplicate key"),
    "unknown field": ("version: 1\nmodles: {}\n", ":2:", "unknown field"),
    "a list": ("- 1\n- 2\n", ":1:", "expected a mapping"),
    "version 2": ("version: 2\n", ":1:", "unsupported version"),
    "bad draft_max": (USER_MODELS_YAML.replace("draft_max: 4", "draft_max: -4"), ":", "draft_max"),
    "missing model": (USER_MODELS_YAML.replace("draft: smol-q2_k", "draft: nope"), ":", "not a model"),
    "not UTF-8": (b"version: 1\nmodels:\n  \xff\xfe: {}\n", ":", "cannot read"),
}


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["run", "--pair", "smol", "hi"],
                                     ["pull", "smol"], ["rm", "smol"]])
@pytest.mark.parametrize("case", list(YAML_CASES))
def test_a_broken_models_yaml_is_named_with_its_line(case, command, home, monkeypatch, capsys):
    text, where, needle = YAML_CASES[case]
    user = Path(home["XDG_CONFIG_HOME"]) / "specgen" / "models.yaml"
    user.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = user.read_bytes()
    if case == "alias bomb":  # in a subprocess: should the guard ever break, a timeout ends the hang
        r = sg(*command, env=home, timeout=60)
    else:
        r = cli(*command, env=home, monkeypatch=monkeypatch, capsys=capsys)
    line = fails(r, needle)
    assert str(user) + where in line
    assert user.read_bytes() == before


def test_a_models_yaml_that_is_a_directory(home):
    user = Path(home["XDG_CONFIG_HOME"]) / "specgen" / "models.yaml"
    user.mkdir()
    fails(sg("list", env=home), str(user))


# ---------------------------------------------------------------- pair add: validate, then write

def _user_yaml(env) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "specgen" / "models.yaml"


@pytest.mark.parametrize("case", ["other vocabulary", "not a GGUF target", "truncated draft", "missing draft",
                                  "long name", "bad name", "bad drafter", "bad draft-max", "same name"])
def test_pair_add_writes_nothing_it_rejects(case, home, target_path, draft_path, hub_models, tmp_path):
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    before = user.read_bytes()
    name, t, d, extra, needle = "mine", str(target_path), str(draft_path), [], ""
    if case == "other vocabulary":
        d, needle = str(hub_models["other"]), "--drafter ngram"
    elif case == "not a GGUF target":
        t = str(tmp_path / "notes.gguf")
        Path(t).write_text("not a model")
        needle = "not a GGUF"
    elif case == "truncated draft":
        d = str(tmp_path / "cut.gguf")
        Path(d).write_bytes(draft_path.read_bytes()[:3_000_000])
        needle = "truncated"
    elif case == "missing draft":
        d, needle = str(tmp_path / "gone.gguf"), "no such file"
    elif case == "long name":
        name, needle = "p" * 5000, "5000 characters"
    elif case == "bad name":
        name, needle = "../../etc", "letters, digits"
    elif case == "bad drafter":
        extra, needle = ["--drafter", "magic"], "drafter"
    elif case == "bad draft-max":
        extra, needle = ["--draft-max", "-3"], "--draft-max"
    elif case == "same name":
        name, needle = "smol", "already exists"
    fails(sg("pair", "add", name, "--target", t, "--draft", d, *extra, env=home), needle)
    assert user.read_bytes() == before
    assert [p for p in user.parent.iterdir() if p.name != "models.yaml"] == []  # no temp files left
    if case != "same name":
        listed = json.loads(sg("list", "--json", env=home).stdout)
        assert name not in [p["name"] for p in listed]


def test_pair_add_of_a_good_pair_still_works(home, target_path, draft_path):
    r = sg("pair", "add", "mine", "--target", str(target_path), "--draft", str(draft_path), env=home)
    assert r.returncode == 0, r.stderr
    assert "mine" in [p["name"] for p in json.loads(sg("list", "--json", env=home).stdout)]


# ---------------------------------------------------------------- the download cache

def _blob(hf_home: Path, repo: str) -> Path:
    (pointer,) = snapshot_files(hf_home, repo)
    return pointer.resolve()


def _damage(blob: Path, how: str) -> None:
    data = bytearray(blob.read_bytes())
    blob.chmod(0o644)
    if how == "truncated":
        blob.write_bytes(data[: len(data) // 2])
    elif how == "not a GGUF":
        blob.write_bytes(b"<html>rate limited</html>" + bytes(data[25:]))
    elif how == "one byte flipped":
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    elif how == "grown":
        blob.write_bytes(bytes(data) + b"\0" * 100)


@pytest.mark.parametrize("how", ["truncated", "not a GGUF"])
def test_pull_repairs_a_damaged_cached_model(how, pulled_smol, hub_env, hub_models):
    blob = _blob(pulled_smol, TARGET_REPO)
    _damage(blob, how)
    env = {**hub_env, "HF_HUB_OFFLINE": "1"}
    line = fails(run_specgen("run", "--pair", "smol", "--no-download", "--max-tokens", "2", "hi", env=env),
                 "specgen pull smol")
    assert "damaged" in line
    listed = {p["name"]: p for p in json.loads(run_specgen("list", "--json", env=hub_env).stdout)}
    assert listed["smol"]["downloaded"] == "damaged"
    r = run_specgen("pull", "smol", env=hub_env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "damaged" in r.stderr
    assert _blob(pulled_smol, TARGET_REPO).read_bytes() == hub_models["target"].read_bytes()
    listed = {p["name"]: p for p in json.loads(run_specgen("list", "--json", env=hub_env).stdout)}
    assert listed["smol"]["downloaded"] == "yes"


def test_pull_compares_the_size_with_the_hub(pulled_smol, hub_env, hub_models):
    blob = _blob(pulled_smol, TARGET_REPO)
    _damage(blob, "grown")  # still a loadable GGUF: only the Hub's size tells
    r = run_specgen("pull", "smol", env=hub_env)
    assert r.returncode == 0 and "damaged" in r.stderr and "the Hub says" in r.stderr, r.stderr
    assert _blob(pulled_smol, TARGET_REPO).read_bytes() == hub_models["target"].read_bytes()


def test_pull_check_finds_a_flipped_byte_that_size_and_header_miss(pulled_smol, hub_env, hub_models):
    blob = _blob(pulled_smol, DRAFT_REPO)
    _damage(blob, "one byte flipped")
    r = run_specgen("pull", "smol", env=hub_env)
    assert r.returncode == 0 and "already downloaded" in r.stderr  # cheap checks pass: same size, good header
    r = run_specgen("pull", "--check", "smol", env=hub_env)
    assert r.returncode == 0 and "damaged" in r.stderr and "sha256" in r.stderr, r.stderr
    assert _blob(pulled_smol, DRAFT_REPO).read_bytes() == hub_models["draft"].read_bytes()


def test_offline_pull_of_a_damaged_model_says_what_to_do(pulled_smol, hub_env):
    _damage(_blob(pulled_smol, TARGET_REPO), "truncated")
    fails(run_specgen("pull", "smol", env=hub_env, HF_HUB_OFFLINE="1"), "HF_HUB_OFFLINE", "damaged")


@pytest.mark.parametrize("var", ["HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"])
@pytest.mark.parametrize("command", [["list"], ["pull", "smol"], ["run", "--pair", "smol", "hi"], ["rm", "smol"]])
def test_cache_variables_pointing_at_a_file_are_named(var, command, hub_env, tmp_path):
    f = tmp_path / "token"
    f.write_text("not a folder")
    env = {k: v for k, v in hub_env.items() if k not in ("HF_HOME", "HF_HUB_CACHE")}
    env[var] = str(f if var != "XDG_CACHE_HOME" else f / "below")
    line = fails(run_specgen(*command, env=env), var, "not a folder")
    assert f.read_text() == "not a folder"
    assert "Errno" not in line


@pytest.mark.parametrize("command", [["list"], ["pair", "add", "x", "--target", "a.gguf", "--draft", "b.gguf"]])
def test_a_config_variable_pointing_at_a_file_is_named(command, home, tmp_path):
    f = tmp_path / "cfg"
    f.write_text("a file")
    fails(sg(*command, env=home, XDG_CONFIG_HOME=str(f)), "XDG_CONFIG_HOME", "not a folder")
    assert f.read_text() == "a file"


# ---------------------------------------------------------------- unclear messages

def test_pull_of_a_path_that_does_not_exist(hub_env):
    line = fails(run_specgen("pull", "../etc:Q4_K_M", env=hub_env), "not a pair")
    assert "local file" not in line


def test_a_very_long_pair_name_is_not_echoed_in_full(hub_env):
    for command in (["pull"], ["rm"], ["run", "--pair"]):
        fails(run_specgen(*command, "x" * 5000, *(["hi"] if command[0] == "run" else []), env=hub_env),
              "5000 characters")


def test_run_of_a_pair_whose_local_file_is_gone(hub_env, target_path, draft_path, tmp_path):
    t = tmp_path / "t.gguf"
    shutil.copyfile(target_path, t)
    r = run_specgen("pair", "add", "local", "--target", str(t), "--draft", str(draft_path), env=hub_env)
    assert r.returncode == 0, r.stderr
    t.unlink()
    line = fails(run_specgen("run", "--pair", "local", "hi", env=hub_env), str(t), "path:")
    assert "pulling" not in line


def test_vocabulary_mismatch_suggests_ngram(home, target_path, hub_models):
    line = fails(sg("run", "--target", str(target_path), "--draft", str(hub_models["other"]), "--drafter", "model",
                    "hi", env=home), "token 1000 differs", "--drafter ngram")
    assert "vocabulary types differ (target 2" not in line


# ---------------------------------------------------------------- stdin and prompt bytes

def test_invalid_utf8_on_stdin_and_in_the_argument_is_replaced_with_a_note(home, target_path):
    r = sg("run", "--target", str(target_path), "--drafter", "none", "--max-tokens", "2", b"caf\xe9 \xff",
           stdin=b"hello \xff\xfe\xc3\x28 world", env=home)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stdout.strip()
    assert r.stderr.splitlines() == ["specgen: note: stdin is not valid UTF-8: 3 bytes were replaced with \ufffd",
                                     "specgen: note: the prompt is not valid UTF-8: 2 bytes were replaced with "
                                     "\ufffd"]


def test_user_text_decides_bytes_once():
    from specgen.errors import SpecgenError
    from specgen.textstream import user_text

    assert user_text(b"caf\xc3\xa9", "x") == ("café", 0)
    assert user_text("already \ufffd text", "x") == ("already \ufffd text", 0)
    assert user_text(b"\xff\xfe ok", "x") == ("\ufffd\ufffd ok", 2)
    assert user_text("argv \udcff", "x") == ("argv \ufffd", 1)  # how Python hands over undecodable argv bytes
    with pytest.raises(SpecgenError, match="binary"):
        user_text(b"\x7fELF\x00\x01", "stdin")


@pytest.mark.parametrize("data", [b"\x00\x01\x02\x03" * 100, b"text then a NUL\x00"])
def test_binary_stdin_is_refused_before_loading(data, home, tmp_path, monkeypatch, capsys):
    fails(cli("run", "--target", str(tmp_path / "absent.gguf"), stdin=data, env=home, monkeypatch=monkeypatch,
              capsys=capsys), "binary")


def test_chat_survives_bad_bytes_and_binary_lines(home, target_path):
    r = sg("chat", "--target", str(target_path), "--drafter", "none", "--max-tokens", "3",
           stdin=b"hello \xff\xfe there\na\x00b\nstill here?\n/bye\n", env=home)
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr, r.stderr
    out = r.stdout + r.stderr
    assert "binary data" in out and "not UTF-8" in out
    assert out.count("tokens/step") == 2  # both text lines got replies


# ---------------------------------------------------------------- closed pipes

BROKEN_PIPE = 141


def _closed_reader(args: list[str], env: dict[str, str], read_first: int) -> subprocess.Popen:
    p = subprocess.Popen([EXE, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env)
    if read_first:
        p.stdout.read(read_first)  # as `head -c N`: read some, then go away
    p.stdout.close()
    try:
        p.err = p.stderr.read().decode()
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    return p


@pytest.mark.parametrize("args, read_first", [
    (["run", "--drafter", "none", "--ignore-eos", "--max-tokens", "300", "Write a long poem"], 10),
    (["list", "--json"], 0),
    (["list"], 0),
    (["--help"], 0),
])
def test_a_closed_pipe_ends_quietly_with_141(args, read_first, home, target_path):
    if args[0] == "run":
        args = [args[0], "--target", str(target_path), *args[1:]]
    p = _closed_reader(args, home, read_first)
    assert p.returncode == BROKEN_PIPE, p.err
    assert p.err == "", p.err


# ---------------------------------------------------------------- bench output paths

@pytest.mark.parametrize("flag", ["--json", "--csv", "--markdown"])
@pytest.mark.parametrize("where", ["missing folder", "a directory", "under a file"])
def test_bench_outputs_are_checked_before_loading(flag, where, home, tmp_path, monkeypatch, capsys):
    f = tmp_path / "plain.txt"
    f.write_text("x")
    path = {"missing folder": tmp_path / "nope" / "r.out", "a directory": tmp_path,
            "under a file": f / "r.out"}[where]
    # The target does not exist: an output refused first proves no model was loaded before.
    fails(cli("bench", "--target", str(tmp_path / "absent.gguf"), flag, str(path), env=home,
              monkeypatch=monkeypatch, capsys=capsys), flag)
    assert f.read_text() == "x"


def test_whole_file_writes_keep_links_and_write_through_pipes(tmp_path):
    from specgen.fileio import write_atomic

    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    link.symlink_to(real)
    write_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    # A pipe (or /dev/stdout, /dev/full) is written to, never replaced by a file.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_atomic(pipe, "through")
        assert os.read(reader, 100) == b"through"
    finally:
        os.close(reader)
    assert not pipe.is_file() and pipe.exists()


def test_bench_keeps_results_when_the_final_write_fails(home, target_path, tmp_path):
    good = tmp_path / "r.csv"
    r = sg("bench", "--target", str(target_path), "--prompts", "builtin:chat", "--limit", "1", "--drafter",
           "ngram", "--max-tokens", "4", "--threads", "1", "--json", "/dev/full", "--csv", str(good), env=home,
           timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    # Off a terminal bench prints one progress line per run, then what it wrote, then the error.
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]
    assert lines[0] == f"wrote {good}"  # what could be written was
    line = lines[-1]
    assert line.startswith("specgen: error: could not write /dev/full") and len(lines) == 2, r.stderr
    saved = Path(line.rsplit("saved it to ", 1)[1].split(";")[0].strip())
    try:
        assert json.loads(saved.read_text())["summary"]
    finally:
        saved.unlink(missing_ok=True)
    assert good.read_text().startswith("pair,")


# ---------------------------------------------------------------- Ctrl+C at named moments

def _interrupt_at(point: str, args: list[str], env: dict[str, str], tmp_path: Path,
                  stdin: bytes = b"") -> subprocess.CompletedProcess:
    marker = tmp_path / "paused"
    marker.unlink(missing_ok=True)
    p = subprocess.Popen([EXE, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**env, "SPECGEN_TEST_PAUSE": point, "SPECGEN_TEST_PAUSE_FILE": str(marker)})
    try:
        if stdin:
            p.stdin.write(stdin)
        p.stdin.close()
        p.stdin = None  # communicate() must not flush it again
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert p.poll() is None, p.stderr.read().decode()
            assert time.monotonic() < deadline, "the process never reached " + point
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return subprocess.CompletedProcess(p.args, p.returncode, out.decode(), err.decode())


def _interrupted(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines()[-1] == "specgen: interrupted", r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr


@pytest.mark.parametrize("moment", ["target load", "draft load", "prompt decode"])
@pytest.mark.parametrize("command", ["run", "chat", "bench"])
def test_ctrl_c_while_loading_or_decoding_stops_cleanly(moment, command, home, target_path, draft_path, tmp_path):
    point = {"target load": f"load:{target_path.name}", "draft load": f"load:{draft_path.name}",
             "prompt decode": "decode"}[moment]
    # For the decode moment no draft model: its calibration would decode first (or not, when cached).
    models = ["--target", str(target_path)] + (["--draft", str(draft_path), "--drafter", "model"]
                                               if moment != "prompt decode" else ["--drafter", "none"])
    args = [command, *models, "--max-tokens", "50", "--threads", "1"]
    if command == "run":
        args.append("Write a long poem")
    if command == "bench":
        models[-1] = "ngram" if moment == "prompt decode" else "model"
        args = [command, *models, "--prompts", "builtin:chat", "--limit", "1", "--max-tokens", "4",
                "--threads", "1", "--json", str(tmp_path / "r.json")]
    r = _interrupt_at(point, args, home, tmp_path, stdin=b"hello\n" if command == "chat" else b"")
    if command == "chat" and moment == "prompt decode":
        # Chat's Ctrl+C stops the reply, not the session: the reply ends and the chat goes on to EOF.
        assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout, r.stderr
        return
    _interrupted(r)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("command", [["run", "hi"], ["list"], ["pull", "smol"]])
def test_ctrl_c_while_the_program_starts(command, home, tmp_path):
    _interrupted(_interrupt_at("startup", command, home, tmp_path))


def test_ctrl_c_during_the_pair_check_of_pull(pulled_smol, hub_env, tmp_path):
    before = sorted(p.name for p in (pulled_smol / "hub").rglob("*"))
    r = _interrupt_at("load", ["pull", "smol"], hub_env, tmp_path)
    _interrupted(r)
    assert sorted(p.name for p in (pulled_smol / "hub").rglob("*")) == before


def test_ctrl_c_during_the_check_of_pair_add_writes_nothing(home, target_path, draft_path, tmp_path):
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    before = user.read_bytes()
    r = _interrupt_at("load", ["pair", "add", "mine", "--target", str(target_path), "--draft", str(draft_path)],
                      home, tmp_path)
    _interrupted(r)
    assert user.read_bytes() == before
