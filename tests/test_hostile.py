"""Hostile but realistic input, family by family: every case ends with the documented exit code,
no traceback, one line that says what to do, and the cache and config as they were (or repaired).

Tiny real models, the loopback Hub mirror, real subprocesses.  Ctrl+C is sent at named moments
(tests/pause_hook: the process writes a marker file and waits there), never after a guessed sleep.
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
from hfmirror import RawServer
from hub_fixtures import *  # noqa: F401,F403  (fixtures)
from hub_fixtures import (DRAFT_REPO, TARGET_FILE, TARGET_REPO, USER_MODELS_YAML, _specgen_exe, make_gguf,
                          run_specgen, snapshot_files)

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
    from specgen.errors import SpecgenError
    from specgen.sampling import SamplingParams

    SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.1, seed=0).check()
    for bad in ({"temperature": float("nan")}, {"top_p": 0.0}, {"min_p": 1.5}, {"top_k": -1},
                {"repeat_penalty": 0.0}, {"seed": -1}):
        with pytest.raises(SpecgenError) as e:
            SamplingParams(**bad).check()
        assert e.value.setting == next(iter(bad))


def test_chat_temp_refuses_what_run_refuses(home, target_path):
    r = sg("chat", "--target", str(target_path), "--drafter", "none", "--max-tokens", "3",
           stdin=b"/temp nan\n/temp 1e9\n/temp -1\n/temp 0.5\n/bye\n", env=home)
    assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert (r.stdout + r.stderr).count("/temp must be 0 (greedy) or a number from") == 3
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
    assert "specgen: warning: --threads 999 is more than" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [["run", "--drafter", "none", "hi"],
                                     ["bench", "--prompts", "builtin:chat", "--limit", "1", "--drafter", "ngram"]])
def test_a_context_past_the_trained_one_is_cut_with_a_note(command, home, target_path):
    r = sg(*command[:1], "--target", str(target_path), "--max-tokens", "2", "--ctx", "100000", *command[1:],
           env=home, timeout=300)
    assert r.returncode == 0, r.stderr
    from specgen.llama.gguf import read_gguf

    info = read_gguf(target_path)
    trained = info.metadata[f"{info.architecture}.context_length"]
    assert f"specgen: warning: --ctx 100000 is more than {target_path.name} was trained for; using {trained}" \
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
    "not UTF-8": (b"version: 1\nmodels:\n  \xff\xfe: {}\n", ":", "not UTF-8 text"),
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


@pytest.mark.parametrize("name", ["..", "p" * 300, "\uff45vil", "\u0663x", "_x", ""],
                         ids=["dots", "300 characters", "fullwidth letter", "arabic digit", "leading _", "empty"])
def test_a_refused_pair_name_is_told_the_whole_rule(name, home, tmp_path, monkeypatch, capsys):
    # Each was told "use letters, digits and . _ + - only", which a fullwidth letter, an Arabic digit, a name
    # of 300 characters or one starting with a dot all seem to follow.
    from specgen.models.registry import ID_RULE

    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    before = user.read_bytes()
    line = fails(cli("pair", "add", name, "--target", str(tmp_path / "t.gguf"), "--draft", str(tmp_path / "d.gguf"),
                     env=home, monkeypatch=monkeypatch, capsys=capsys), "is not a pair name", ID_RULE)
    assert "starts with an ASCII letter or digit" in line and "at most 100 characters" in line
    assert user.read_bytes() == before


@pytest.mark.parametrize("flag", ["--target", "--draft", "--drafter", "--draft-max", "--note"])
def test_pair_add_with_an_empty_value_says_so(flag, home, target_path, draft_path, monkeypatch, capsys):
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    before = user.read_bytes()
    args = {"--target": str(target_path), "--draft": str(draft_path), flag: ""}
    line = fails(cli("pair", "add", "mine", *(x for kv in args.items() for x in kv), env=home,
                     monkeypatch=monkeypatch, capsys=capsys), f"{flag} is empty; give a value")
    assert "did you mean" not in line and "not a model id" not in line
    assert ("leave it out" in line) == (flag not in ("--target", "--draft"))  # those two have no default
    assert user.read_bytes() == before


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


@pytest.mark.parametrize("var", ["HF_HOME", "HF_HUB_CACHE"])
@pytest.mark.parametrize("command", [["list"], ["pull", "smol"], ["rm", "smol"]])
def test_a_cache_variable_leading_into_a_link_loop_is_named(var, command, hub_env, mirror, tmp_path):
    # pull said "<repo>: a symbolic link loop", naming neither the variable nor the folder.
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    fails(run_specgen(*command, env=hub_env, **{var: str(loop / "hf")}), f"{var}={loop / 'hf'}",
          "symbolic link loop", f"point {var} at a folder")
    assert loop.readlink() == loop and mirror.log == []


@pytest.mark.parametrize("command", [["list"], ["pair", "add", "x", "--target", "a.gguf", "--draft", "b.gguf"]])
def test_a_config_variable_pointing_at_a_file_is_named(command, home, tmp_path):
    f = tmp_path / "cfg"
    f.write_text("a file")
    fails(sg(*command, env=home, XDG_CONFIG_HOME=str(f)), "XDG_CONFIG_HOME", "not a folder")
    assert f.read_text() == "a file"


@pytest.mark.parametrize("value", ["~nosuchuser", "relative", "~/unexpanded"])
@pytest.mark.parametrize("var", ["XDG_CACHE_HOME", "XDG_CONFIG_HOME"])
def test_a_relative_xdg_variable_is_ignored_as_the_spec_says(var, value, home, target_path, draft_path, tmp_path):
    # Taken as given, `~nosuchuser` (quoted, so no shell expanded it) put the cache or models.yaml under
    # whatever folder the command ran in.  The XDG spec: a relative value is ignored, the default is used.
    work, user = tmp_path / "work", tmp_path / "user"
    work.mkdir()
    user.mkdir()
    env = {k: v for k, v in home.items() if k != var}
    env.update({"HOME": str(user), var: value})
    args = (["run", "--target", str(target_path), "--drafter", "ngram", "--max-tokens", "2", "hi"]
            if var == "XDG_CACHE_HOME" else ["pair", "add", "mine", "--target", str(target_path), "--draft",
                                              str(draft_path)])
    r = subprocess.run([EXE, *args], cwd=work, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "warning" not in r.stderr, r.stderr
    assert list(work.iterdir()) == []  # nothing under the working folder
    written = user / (".cache/specgen/costs.json" if var == "XDG_CACHE_HOME" else ".config/specgen/models.yaml")
    assert written.is_file(), sorted(map(str, user.rglob("*")))


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
    assert r.stderr.splitlines() == ["specgen: warning: stdin is not valid UTF-8: 3 bytes were replaced with \ufffd",
                                     "specgen: warning: the prompt is not valid UTF-8: 2 bytes were replaced with "
                                     "\ufffd"]


@pytest.mark.parametrize("command", ["run", "chat"])
def test_invalid_utf8_in_the_system_prompt_gets_the_prompts_note(command, home, target_path):
    # The prompt's bad bytes got a warning while --system's were replaced without a word.
    r = sg(command, "--target", str(target_path), "--drafter", "none", "--max-tokens", "2", "--system",
           b"be \xff\xfe brief", *(["hi"] if command == "run" else []),
           stdin=b"/bye\n" if command == "chat" else b"", env=home)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("specgen: ")] == [
        "specgen: warning: --system is not valid UTF-8: 2 bytes were replaced with \ufffd"], r.stderr


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

PAUSE_HOOK = Path(__file__).parent / "pause_hook"  # its sitecustomize.py stops the process at `point`


def _interrupt_at(point: str, args: list[str], env: dict[str, str], tmp_path: Path,
                  stdin: bytes = b"") -> subprocess.CompletedProcess:
    marker = tmp_path / "paused"
    marker.unlink(missing_ok=True)
    path = os.pathsep.join(filter(None, [str(PAUSE_HOOK), env.get("PYTHONPATH")]))
    p = subprocess.Popen([EXE, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**env, "PYTHONPATH": path, "SPECGEN_TEST_PAUSE": point,
                              "SPECGEN_TEST_PAUSE_FILE": str(marker)})
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
    done = subprocess.CompletedProcess(p.args, p.returncode, out.decode(), err.decode())
    done.marker = marker.read_text()  # what the pause hook reported (how an interrupted load ended)
    return done


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
    if moment != "prompt decode":
        assert r.marker.endswith(" -> stopped"), r.marker  # llama.cpp gave up the load, not finished it


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


# ---------------------------------------------------------------- the cost cache

@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"0123abcd": "fast", "4567ef": {"1": [0.1]}}', "{not json"])
def test_a_cost_cache_of_the_wrong_shape_is_measured_again_with_a_warning(content, home, target_path, tmp_path):
    cache = tmp_path / "cache"
    costs = cache / "specgen" / "costs.json"
    costs.parent.mkdir(parents=True)
    costs.write_text(content)
    args = ("run", "--target", str(target_path), "--drafter", "ngram", "--max-tokens", "2", "hi")
    r = sg(*args, env=home, XDG_CACHE_HOME=str(cache))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("specgen: warning: ")]
    assert len(warned) == 1 and str(costs) in warned[0], r.stderr
    curves = json.loads(costs.read_text())  # rewritten with what was measured instead
    (curve,) = curves.values()  # the target's verify costs, by batch size
    assert curve and all(int(n) >= 1 and s > 0 for n, s in curve.items()), curves
    again = sg(*args, env=home, XDG_CACHE_HOME=str(cache))  # the new file is read without a word
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr
    assert json.loads(costs.read_text()) == curves


@pytest.mark.parametrize("damage", ["zero seconds", "no sizes", "a size of 0"])
def test_a_cost_cache_no_measurement_gives_is_measured_again(damage, home, target_path, tmp_path):
    # Under the real key: a cost of 0 was taken as measured and divided by in every step.
    cache = tmp_path / "cache"
    costs = cache / "specgen" / "costs.json"
    args = ("run", "--target", str(target_path), "--drafter", "ngram", "--max-tokens", "2", "hi")
    assert sg(*args, env=home, XDG_CACHE_HOME=str(cache)).returncode == 0
    ((key, curve),) = json.loads(costs.read_text()).items()
    costs.write_text(json.dumps({key: {"zero seconds": {n: 0 for n in curve}, "no sizes": {},
                                       "a size of 0": {"0": 0.01, **curve}}[damage]}))
    r = sg(*args, env=home, XDG_CACHE_HOME=str(cache))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("specgen: warning: ")]
    assert len(warned) == 1 and str(costs) in warned[0], r.stderr
    ((again, measured),) = json.loads(costs.read_text()).items()
    assert again == key and measured and all(int(n) >= 1 and s > 0 for n, s in measured.items()), measured


@pytest.mark.parametrize("kind", ["fifo", "device", "loop", "directory", "socket"])
def test_a_cost_cache_that_is_not_a_file_is_named_and_left_alone(kind, home, target_path, tmp_path):
    # "It will be written anew" was said on every run and never true: a pipe or a device is never replaced nor
    # written through, a loop never followed.  The warning says what it is and what to do.
    cache = tmp_path / "cache"
    costs = cache / "specgen" / "costs.json"
    costs.parent.mkdir(parents=True)
    _special(kind, costs)
    args = ("run", "--target", str(target_path), "--drafter", "ngram", "--max-tokens", "2", "hi")
    r = sg(*args, env=home, XDG_CACHE_HOME=str(cache), timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr and r.stdout.strip(), r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("specgen: ")] == [
        f"specgen: warning: ignoring the cache file {costs}: {KIND_WORDS[kind]}; remove it, or every run "
        "measures again"], r.stderr
    assert _still(kind, costs)
    assert sorted(p.name for p in costs.parent.iterdir()) == sorted(["costs.json", *(["costs.json.twin"]
                                                                                     if kind == "loop" else [])])


# ---------------------------------------------------------------- links out of the Hub cache

def _own_file(tmp_path: Path, data: bytes, name: str = "my-model.gguf") -> Path:
    """A file of the user's, outside the cache, that a cache entry will be made to link to."""
    mine = tmp_path / "mine" / name
    mine.parent.mkdir(exist_ok=True)
    mine.write_bytes(data)
    return mine


def test_rm_removes_a_link_out_of_the_cache_never_its_file(pulled_smol, hub_env, hub_models, tmp_path):
    (pointer,) = snapshot_files(pulled_smol, DRAFT_REPO)  # the draft: no other pair uses it
    data = hub_models["draft"].read_bytes()
    mine = _own_file(tmp_path, data)
    pointer.unlink()
    pointer.symlink_to(mine)
    r = run_specgen("rm", "smol", env=hub_env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"removed the link {pointer}; {mine} is outside the cache and stays" in r.stdout.splitlines()
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("pair smol: freed")
    assert mine.read_bytes() == data
    assert not pointer.is_symlink()  # the cache entry is gone


def test_pull_replaces_a_link_out_of_the_cache_never_its_file(pulled_smol, hub_env, hub_models, tmp_path):
    (pointer,) = snapshot_files(pulled_smol, DRAFT_REPO)
    data = hub_models["target"].read_bytes()  # a good GGUF, but not the draft the Hub lists: "damaged"
    mine = _own_file(tmp_path, data)
    pointer.unlink()
    pointer.symlink_to(mine)
    r = run_specgen("pull", "smol", env=hub_env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"the cache linked to {mine}, which is not the Hub's file" in r.stderr
    assert "removed the link (that file stays)" in r.stderr
    assert mine.read_bytes() == data
    assert pointer.resolve().parent.name == "blobs"
    assert pointer.read_bytes() == hub_models["draft"].read_bytes()


@pytest.mark.parametrize("check", [[], ["--check"]], ids=["pull", "pull --check"])
def test_pull_replaces_a_blob_linked_out_of_the_cache_never_its_file(check, pulled_smol, hub_env, hub_models,
                                                                     tmp_path):
    # The snapshot entry links to its blob as huggingface_hub made it; the blob links to a file of the user's.
    # The entry was dropped and linked back to that blob, so every pull failed on the same file.
    (pointer,) = snapshot_files(pulled_smol, DRAFT_REPO)
    blob = pointer.resolve()
    data = b"GGUF" + struct.pack("<I", 99) + bytes(56)  # a GGUF version no reader takes
    mine = _own_file(tmp_path, data)
    blob.unlink()
    blob.symlink_to(mine)
    r = run_specgen("pull", "smol", *check, env=hub_env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"the cache linked to {mine}, which is not the Hub's file" in r.stderr
    assert "removed the link (that file stays)" in r.stderr
    assert mine.read_bytes() == data
    assert not blob.is_symlink() and blob.read_bytes() == hub_models["draft"].read_bytes()
    assert pointer.resolve() == blob
    again = run_specgen("pull", "smol", *check, env=hub_env)
    assert again.returncode == 0 and "already downloaded" in again.stderr, again.stderr


def test_rm_of_a_hard_linked_file_does_not_count_it_freed(pulled_smol, hub_env, hub_models, tmp_path):
    # Removing the cache's name of a file that has another one frees nothing: the bytes stay under that name.
    (pointer,) = snapshot_files(pulled_smol, DRAFT_REPO)  # the draft: no other pair uses it
    blob = pointer.resolve()
    mine = tmp_path / "mine" / "draft.gguf"
    mine.parent.mkdir()
    os.link(blob, mine)
    r = run_specgen("rm", "smol", env=hub_env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (f"removed {pointer}; its data stays on disk, another name (a hard link) still holds it"
            in r.stdout.splitlines()), r.stdout
    assert r.stderr.strip() == "pair smol: freed 0 B"  # the target stays too: pair smol-self uses it
    assert mine.read_bytes() == hub_models["draft"].read_bytes()
    assert not pointer.exists() and not blob.exists()


@pytest.mark.parametrize("command", ["rm", "pull"])
def test_a_snapshot_folder_linked_out_of_the_cache_is_refused(command, pulled_smol, hub_env, hub_models, tmp_path):
    (pointer,) = snapshot_files(pulled_smol, DRAFT_REPO)
    (target,) = snapshot_files(pulled_smol, TARGET_REPO)
    snap = pointer.parent
    data = hub_models["draft"].read_bytes()[:1_000_000]  # short of the Hub's size: pull wants it replaced
    mine = _own_file(tmp_path, data, pointer.name)
    shutil.rmtree(snap)
    snap.symlink_to(mine.parent, target_is_directory=True)
    line = fails(run_specgen(command, "smol", env=hub_env), f"{snap} is a link out of the Hugging Face cache",
                 "remove that link yourself")
    assert mine.read_bytes() == data
    assert snap.is_symlink() and target.is_file()  # refused before anything was removed
    assert str(mine) not in line


def test_a_download_never_writes_through_a_link_out_of_the_cache(pulled_smol, hub_env, hub_models, tmp_path):
    (pointer,) = snapshot_files(pulled_smol, DRAFT_REPO)
    blob = pointer.resolve()
    folder = blob.parent.parent
    commit = pointer.parent.name
    half = hub_models["draft"].read_bytes()[: blob.stat().st_size // 2]
    mine = _own_file(tmp_path, half)  # would be resumed (appended to) through the link
    notes = _own_file(tmp_path, b"my notes\n", "notes.txt")  # would be replaced by the commit id
    pointer.unlink()
    blob.unlink()
    Path(str(blob) + ".incomplete").symlink_to(mine)
    ref = folder / "refs" / "main"
    ref.unlink()
    ref.symlink_to(notes)
    r = run_specgen("pull", "smol", env=hub_env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert mine.read_bytes() == half and notes.read_bytes() == b"my notes\n"
    assert pointer.read_bytes() == hub_models["draft"].read_bytes()
    assert not ref.is_symlink() and ref.read_text().strip() == commit


# ---------------------------------------------------------------- models.yaml writers at once

def test_pair_adds_at_once_all_keep_their_pair(home, target_path, draft_path):
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    names = [f"mine{i}" for i in range(5)]
    procs = [subprocess.Popen([EXE, "pair", "add", n, "--target", str(target_path), "--draft", str(draft_path),
                               "--note", f"note of {n}"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=home) for n in names]
    for n, p in zip(names, procs):
        _, err = p.communicate(timeout=120)
        err = err.decode()
        assert p.returncode == 0 and err.startswith(f"pair {n}: target ") and "written to" in err, err
    listed = {p["name"]: p for p in json.loads(sg("list", "--json", env=home).stdout)}
    assert {n: listed[n]["note"] for n in names if n in listed} == {n: f"note of {n}" for n in names}
    assert {"smol", "smol-self", "gated"} <= set(listed)  # what was there before stays
    table = sg("list", env=home).stdout
    assert all(f"\n{n} " in table for n in names), table
    assert sorted(p.name for p in user.parent.iterdir()) == ["models.yaml"]  # no lock or temp file left


def test_pair_adds_through_a_linked_models_yaml_all_keep_their_pair(home, target_path, draft_path, tmp_path):
    # A second config folder whose models.yaml links to the first: the writers locked the two folders they were
    # given, not the one folder whose file is replaced, and pairs were lost.
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    other = tmp_path / "config2" / "specgen" / "models.yaml"
    other.parent.mkdir(parents=True)
    other.symlink_to(user)
    names = [f"mine{i}" for i in range(6)]
    procs = [subprocess.Popen([EXE, "pair", "add", n, "--target", str(target_path), "--draft", str(draft_path)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**home, "XDG_CONFIG_HOME": str(tmp_path / ("config2" if i % 2 else "config"))})
             for i, n in enumerate(names)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "written to" in err.decode(), err
    assert other.is_symlink() and other.resolve() == user.resolve()  # still one file, reached two ways
    listed = {p["name"] for p in json.loads(sg("list", "--json", env=home).stdout)}
    assert set(names) | {"smol", "smol-self", "gated"} <= listed


def test_pair_add_keeps_a_private_models_yaml_private(home, target_path, draft_path):
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    user.chmod(0o600)
    # Under the usual umask, where a file made anew is readable by everyone.
    r = subprocess.run(["sh", "-c", 'umask 022 && exec "$0" "$@"', EXE, "pair", "add", "mine", "--target",
                        str(target_path), "--draft", str(draft_path)], env=home, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert (user.stat().st_mode & 0o777) == 0o600
    assert "mine" in [p["name"] for p in json.loads(sg("list", "--json", env=home).stdout)]


def test_a_pair_name_with_a_trailing_newline_is_refused(home, target_path, draft_path):
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    before = user.read_bytes()
    fails(sg("pair", "add", "evil\n", "--target", str(target_path), "--draft", str(draft_path), env=home),
          "letters, digits")
    assert user.read_bytes() == before
    from specgen.models.registry import ID_RE, QUANT_RE, REPO_RE  # every name pattern is matched whole

    assert not any(p.fullmatch(v) for p, v in ((ID_RE, "x\n"), (REPO_RE, "a/b\n"), (QUANT_RE, "Q4_K_M\n")))


# ---------------------------------------------------------------- models.yaml values no system takes

def _with_model(fields: str) -> str:
    """The test models.yaml with a model `mine` whose fields start on line 4."""
    return USER_MODELS_YAML.replace("models:\n", "models:\n  mine:\n" + fields, 1)


_NOTE_LINE = USER_MODELS_YAML[:USER_MODELS_YAML.index("note: test pair")].count("\n") + 1

YAML_VALUE_CASES = {
    "size_gb .inf": (_with_model("    repo: a/b\n    quant: Q4_K_M\n    size_gb: .inf\n"), ":6:", "size in GB"),
    "size_gb .nan": (_with_model("    repo: a/b\n    quant: Q4_K_M\n    size_gb: .nan\n"), ":6:", "size in GB"),
    "size_gb 1e300": (_with_model("    repo: a/b\n    quant: Q4_K_M\n    size_gb: 1.0e+300\n"), ":6:",
                      "a number from 0 to 1,000,000"),
    "a NUL byte": (USER_MODELS_YAML.replace("note: test pair", "note: test\0pair").encode(), f":{_NOTE_LINE}:",
                   "U+0000"),
    "a NUL in a path": (_with_model('    path: "/tmp/a\\0b.gguf"\n'), ":4:", "NUL"),
    "a 5000-character path": (_with_model(f"    path: /{'x' * 5000}.gguf\n"), ":4:", "5006 characters"),
    "an unknown user's home": (_with_model("    path: ~nosuchuser/x.gguf\n"), ":4:", "no user 'nosuchuser'"),
}


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["run", "--pair", "smol", "hi"]])
@pytest.mark.parametrize("case", list(YAML_VALUE_CASES))
def test_a_models_yaml_value_no_system_takes_is_named_with_its_line(case, command, home, monkeypatch, capsys):
    text, where, needle = YAML_VALUE_CASES[case]
    user = _user_yaml(home)
    user.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = user.read_bytes()
    line = fails(cli(*command, env=home, monkeypatch=monkeypatch, capsys=capsys), needle)
    assert line.startswith(f"specgen: error: {user}{where}"), line
    assert user.read_bytes() == before


@pytest.mark.parametrize("command", [["run", "--target", "~nosuchuser/x.gguf", "hi"],
                                     ["pair", "add", "mine", "--target", "~nosuchuser/x.gguf", "--draft", "d.gguf"]])
def test_an_unknown_users_home_as_a_flag(command, home):
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    before = user.read_bytes()
    fails(sg(*command, env=home), "~nosuchuser/x.gguf", "no user 'nosuchuser'")
    assert user.read_bytes() == before


@pytest.mark.parametrize("args", [["bench", "--prompts", "~nosuchuser/q.jsonl"],
                                  ["bench", "--json", "~nosuchuser/r.json"],
                                  ["bench", "compare", "~nosuchuser/a.json", "~nosuchuser/b.json"]],
                         ids=["--prompts", "--json", "compare"])
def test_an_unknown_users_home_in_a_bench_path(args, home, tmp_path, monkeypatch, capsys):
    target = [] if args[1] == "compare" else ["--target", str(tmp_path / "absent.gguf")]
    line = fails(cli(args[0], *target, *args[1:], env=home, monkeypatch=monkeypatch, capsys=capsys),
                 "~nosuchuser/", "no user 'nosuchuser'")
    assert "absent.gguf" not in line  # refused before the target was looked at


def test_chat_save_to_an_unknown_users_home_keeps_the_chat(home, target_path):
    r = sg("chat", "--target", str(target_path), "--drafter", "none", stdin=b"/save ~nosuchuser/t.md\n/clear\n/bye\n",
           env=home)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out and "internal error" not in out, out
    assert "~nosuchuser/t.md" in out and "no user 'nosuchuser'" in out
    assert "conversation cleared" in out  # the session went on


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_pair_is_an_error_not_the_default_pair(value, hub_env, mirror):
    line = fails(run_specgen("run", "--pair", value, "hi", env=hub_env), "--pair is empty")
    assert "pulling" not in line
    assert mirror.requests() == []  # nothing was listed or downloaded


# ---------------------------------------------------------- server faults, nesting, tiny values, misleading messages

DEEP = 100_000  # far past any recursion limit


def _serve(log: Path, target: Path, *args: str):
    from test_server import start_server  # the same `specgen serve --port 0` start as the server tests

    return start_server(log, "--target", str(target), "--drafter", "none", "--ctx", "512", *args,
                        env={"XDG_CACHE_HOME": str(log.parent / "cache"), "NO_COLOR": "1",
                             "OMP_WAIT_POLICY": "passive"})


def _error(status_body: tuple[int, dict, bytes], status: int, *needles: str) -> dict:
    """The response is *status* with OpenAI's error shape, its message naming each of *needles*."""
    code, _, body = status_body
    err = json.loads(body)["error"]
    assert code == status, (code, body)
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error"), err
    for n in needles:
        assert n in err["message"], (n, err)
    return err


def _answers_next(server) -> None:
    """The server still serves: a short real generation succeeds."""
    code, _, body = server.request("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    assert code == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1, body


@pytest.fixture(scope="module")
def hostile_server(target_path, tmp_path_factory):
    from test_server import stop_server

    s = _serve(tmp_path_factory.mktemp("hostile-serve") / "server.log", target_path)
    try:
        yield s
    finally:
        stop_server(s.proc)


@pytest.mark.parametrize("body, needle", [
    (b'{"prompt": "hi", "temperature": NaN}', "temperature must be a finite number, not NaN"),
    (b'{"prompt": "hi", "top_p": Infinity}', "top_p must be a finite number, not Infinity"),
    (b'{"prompt": "hi", "min_p": -Infinity}', "min_p must be a finite number, not -Infinity"),
    (b'{"prompt": "hi", "repeat_penalty": 1e999}', "repeat_penalty must be a finite number, not Infinity"),
    (b'{"prompt": "hi", "max_tokens": NaN}', "max_tokens must be an integer, not NaN"),
])
def test_server_names_non_finite_numbers(body, needle, hostile_server):
    _error(hostile_server.request("POST", "/v1/completions", body), 400, needle)
    _answers_next(hostile_server)


@pytest.mark.parametrize("field, value", [("temperature", 5e-324), ("temperature", 1e-4),
                                          ("repeat_penalty", 1e-300), ("repeat_penalty", 0.001)])
def test_server_refuses_tiny_sampling_values(field, value, hostile_server):
    err = _error(hostile_server.request("POST", "/v1/completions", {"prompt": "hi", field: value}), 400,
                 f"{field} must be", str(value))
    assert err["param"] == field
    _answers_next(hostile_server)


def test_server_takes_the_smallest_allowed_values(hostile_server):
    code, _, body = hostile_server.request("POST", "/v1/completions", {
        "prompt": "Once upon a time", "max_tokens": 6, "ignore_eos": True, "temperature": 0.001,
        "repeat_penalty": 0.01, "seed": 1})
    assert code == 200, body
    assert json.loads(body)["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize("body", [b'{"prompt": ' + b"[" * DEEP + b"]" * DEEP + b"}",
                                  b'{"messages": [{"role": "user", "content": ' + b'{"a": ' * DEEP + b"1"
                                  + b"}" * DEEP + b"}]}"])
def test_server_refuses_deeply_nested_json_as_a_client_error(body, hostile_server):
    path = "/v1/completions" if body.startswith(b'{"prompt"') else "/v1/chat/completions"
    err = _error(hostile_server.request("POST", path, body), 400, "not valid JSON", "nested too deeply")
    assert err["code"] == "invalid_json"
    _answers_next(hostile_server)


def test_server_names_a_body_that_is_not_utf8(hostile_server):
    body = b'{"prompt": "caf\xe9"}'  # Latin-1, as an old client might send it
    at = body.index(b"\xe9")
    err = _error(hostile_server.request("POST", "/v1/completions", body), 400, "not UTF-8", f"byte {at}")
    assert "digits" not in err["message"] and err["code"] == "invalid_json", err
    _answers_next(hostile_server)


@pytest.mark.parametrize("key, kind", [("SECRETключ", "holds a non-ASCII character"),
                                       ("SECRET\n", "holds a line break"),
                                       ("SECRET\x1b[31m", "holds a control character"),
                                       ("SECRET\udcff", "holds a non-ASCII character"),  # a byte that is not UTF-8
                                       (" SECRET", "starts or ends with a space")])
@pytest.mark.parametrize("given", ["--api-key", "SPECGEN_API_KEY"])
def test_an_api_key_no_client_can_send_is_refused_at_start(given, key, kind, home, tmp_path, monkeypatch, capsys):
    # The server started, then answered every request 401, the right key included: no header can carry it.
    from specgen.errors import SpecgenError
    from specgen.server.app import ServerConfig

    before = _files(tmp_path)
    flag = ["--api-key", key] if given == "--api-key" else []
    env = {**home, **({"SPECGEN_API_KEY": key} if given != "--api-key" else {})}
    r = cli("serve", "--target", str(tmp_path / "absent.gguf"), *flag, env=env, monkeypatch=monkeypatch,
            capsys=capsys)
    line = fails(r, f"{given} {kind}")
    assert "SECRET" not in r.stdout + r.stderr and "absent.gguf" not in line  # never shown; refused before loading
    assert _files(tmp_path) == before
    with pytest.raises(SpecgenError, match=f"api_key {kind}"):  # the library's rule, not only the command's
        ServerConfig(model_id="m", target=Path("t.gguf"), api_key=key)
    assert ServerConfig(model_id="m", target=Path("t.gguf"), api_key="two words").api_key == "two words"


def test_a_client_that_hangs_up_mid_body_is_one_log_line(hostile_server):
    import socket

    with socket.create_connection(("127.0.0.1", hostile_server.port)) as c:
        c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n" + b'{"prompt": "cut')
        time.sleep(0.3)  # let the server start reading the body before the hang-up
    _answers_next(hostile_server)  # after the hang-up was handled: requests are served in order
    log = hostile_server.log.read_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log
    assert any(" 499 | the client hung up" in line for line in log.splitlines()), log


def test_a_model_that_computes_nan_is_a_server_error(target_path, tmp_path):
    from test_server import stop_server

    bad = tmp_path / "random.gguf"
    shutil.copyfile(target_path, bad)
    with open(bad, "r+b") as f:  # the header (the first ~2 MB) stays; the weights become noise
        f.seek(8 << 20)
        f.write(random.Random(7).randbytes(bad.stat().st_size - (8 << 20)))
    s = _serve(tmp_path / "server.log", bad)
    try:
        for stream in (False, True, False):  # and again: the fault is the model's, every time
            status, _, body = s.request("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 4,
                                                                    "stream": stream})
            if stream:  # the stream has begun (200); its last event is the error
                assert status == 200, body
                err = json.loads(body.decode().split("data: ")[-1])["error"]
            else:
                err = _error((status, {}, body), 500, "invalid numbers")
            assert err["type"] == "server_error" and "corrupt" in err["message"], err
        assert s.request("GET", "/health")[0] == 200
    finally:
        stop_server(s.proc)
    assert "Traceback" not in s.log.read_text()


@pytest.mark.parametrize("stream", [False, True])
def test_a_lost_rpc_worker_is_named_to_the_client_before_the_server_stops(stream, target_path, tmp_path):
    from rpc_helpers import Worker
    from test_server import stop_server

    worker = Worker()
    s = None
    try:
        s = _serve(tmp_path / "server.log", target_path, "--rpc", worker.endpoint)
        c = s.conn()
        c.request("POST", "/v1/completions", json.dumps({"prompt": "Tell a long story.", "max_tokens": 4000,
                                                         "ignore_eos": True, "stream": stream}),
                  {"Content-Type": "application/json"})
        if stream:
            r = c.getresponse()
            assert r.status == 200 and r.readline().startswith(b"data: ")  # generating
        else:
            deadline = time.monotonic() + 60
            while not json.loads(s.request("GET", "/health")[2])["busy"]:
                assert time.monotonic() < deadline, "the generation never started"
                time.sleep(0.05)
        worker.stop(signal.SIGKILL)
        if not stream:
            r = c.getresponse()
        body = r.read()
        if stream:
            err = json.loads(body.decode().strip().split("data: ")[-1])["error"]
        else:
            err = _error((r.status, {}, body), 502)
        assert err["type"] == "server_error" and worker.endpoint in err["message"], err
        assert s.proc.wait(60) == 1  # llama.cpp cannot go on without the worker: the server ends
        lines = [ln for ln in s.log.read_text().splitlines() if ln.strip()]
        assert "Traceback" not in "\n".join(lines)
        assert [ln for ln in lines if ln.startswith("specgen: error: ")] == [lines[-1]], lines
        assert worker.endpoint in lines[-1]
    finally:
        if s is not None:
            stop_server(s.proc)
        worker.stop()


def _nested_arrays(key: str, depth: int) -> bytes:
    k = key.encode()
    return (struct.pack("<Q", len(k)) + k + struct.pack("<I", 9)
            + struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 4, 0))


@pytest.mark.parametrize("depth", [1, DEEP])
def test_gguf_arrays_of_arrays_are_refused(depth, home, tmp_path):
    bad = tmp_path / "nested.gguf"
    bad.write_bytes(_header(n_kv=1) + _nested_arrays("general.tags", depth) + b"\0" * 64)
    fails(sg("run", "--target", str(bad), "--drafter", "none", "hi", env=home), str(bad), "array of arrays")


@pytest.mark.parametrize("shape", ["flow", "block"])
def test_a_deeply_nested_models_yaml(shape, home, monkeypatch, capsys):
    user = _user_yaml(home)
    if shape == "flow":
        user.write_text("pairs:\n  x: " + "[" * DEEP + "]" * DEEP + "\n")
    else:
        user.write_text("pairs:\n  x:\n" + "".join("  " * (i + 2) + "-\n" for i in range(3000)))
    before = user.read_bytes()
    fails(cli("list", env=home, monkeypatch=monkeypatch, capsys=capsys), str(user), "nested too deeply")
    assert user.read_bytes() == before


@pytest.mark.parametrize("command", ["--prompts", "compare"])
def test_deeply_nested_json_files(command, home, target_path, tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"category": "chat", "turns": ' + "[" * DEEP + "]" * DEEP + "}\n")
    if command == "compare":
        args = ["bench", "compare", str(deep), str(deep)]
    else:
        args = ["bench", "--target", str(target_path), "--prompts", str(deep), "--drafter", "ngram"]
    fails(sg(*args, env=home), str(deep), "nested too deeply")


TINY_CASES = [("--temperature", "5e-324"), ("--temperature", "0.0001"), ("--repeat-penalty", "1e-300"),
              ("--repeat-penalty", "0.001")]


@pytest.mark.parametrize("command, flag, value", [(c, f, v) for c in ("run", "chat", "bench") for f, v in TINY_CASES
                                                  if c != "bench" or f == "--temperature"])  # bench: no penalty
def test_tiny_sampling_values_are_refused(command, flag, value, home, tmp_path, monkeypatch, capsys):
    args = [command, "--target", str(tmp_path / "absent.gguf"), f"{flag}={value}"]
    line = fails(cli(*args, *(["hi"] if command == "run" else []), env=home, monkeypatch=monkeypatch,
                     capsys=capsys), flag, "must be", value)
    assert ("0.001 to 10" if flag == "--temperature" else "0.01 to 100") in line  # the bound is stated


def test_the_sampling_bounds_keep_the_arithmetic_finite():
    import numpy as np

    from specgen.sampling import MIN_TEMPERATURE, REPEAT_PENALTY_RANGE, SamplingParams, distribution, penalized

    logits = np.linspace(-60.0, 60.0, 4096).astype(np.float32)  # wider than a real model's spread
    history = list(range(0, 4096, 7))
    for penalty in REPEAT_PENALTY_RANGE:
        params = SamplingParams(temperature=MIN_TEMPERATURE, top_k=0, top_p=1.0, min_p=0.0,
                                repeat_penalty=penalty, repeat_last_n=4096)
        p = distribution(logits, history, params).dense()
        assert np.isfinite(p).all() and abs(p.sum() - 1.0) < 1e-9
        assert int(np.argmax(p)) == int(np.argmax(penalized(logits, history, params)))  # near-greedy, not noise


@pytest.mark.parametrize("spec", ["[::1]:50052", "::1:50052", "[fe80::1%eth0]:50052"])
def test_an_ipv6_rpc_worker_is_named_as_unsupported(spec, home, tmp_path, monkeypatch, capsys):
    line = fails(cli("run", "--target", str(tmp_path / "absent.gguf"), "--rpc", spec, "hi", env=home,
                     monkeypatch=monkeypatch, capsys=capsys), "--rpc", "IPv6", "IPv4 only")
    assert "resolve" not in line


@pytest.mark.parametrize("kind", ["http server", "http answering", "garbage"])
def test_a_peer_that_is_not_an_rpc_worker_is_named_so(kind, home, target_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from rpc_helpers import FakeWorker

    if kind == "http server":  # reads a whole line before it answers: the handshake alone gets nothing
        http = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        endpoint, close = f"127.0.0.1:{http.server_address[1]}", lambda: (http.shutdown(), http.server_close())
    else:
        peer = FakeWorker(answer=b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" if kind == "http answering"
                          else bytes(range(256)) * 4)
        endpoint, close = peer.endpoint, peer.close
    try:
        line = fails(sg("run", "--target", str(target_path), "--rpc", endpoint, "hi", env=home, timeout=60),
                     endpoint, "is not a llama.cpp RPC worker")
    finally:
        close()
    assert "incompatible" not in line and "another program" not in line
    assert ("an HTTP server" in line) == kind.startswith("http")


def test_pair_add_of_a_fifo_says_what_it_is(home, draft_path, tmp_path):
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    before = user.read_bytes()
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    line = fails(sg("pair", "add", "mine", "--target", str(fifo), "--draft", str(draft_path), env=home,
                    timeout=30), str(fifo), "not a regular file")
    assert "no such file" not in line
    assert user.read_bytes() == before


@pytest.mark.parametrize("what", ["directory", "fifo", "device", "empty string"])
def test_no_swap_note_for_a_target_that_is_not_a_file(what, home, draft_path, tmp_path):
    target = {"directory": tmp_path / "models", "fifo": tmp_path / "pipe.gguf", "device": "/dev/zero",
              "empty string": ""}[what]
    if what == "directory":
        target.mkdir()
    elif what == "fifo":
        os.mkfifo(target)
    r = sg("run", "--target", str(target), "--draft", str(draft_path), "--drafter", "model", "hi", env=home,
           timeout=30)
    assert "did you swap" not in r.stderr, r.stderr
    fails(r)  # one line: the loader's, saying what the target is


# ------------------------------------------------ special files, loops, closed stdin, write errors, encodings

def _special(kind: str, at: Path) -> Path:
    """*at* made a named pipe, a link to /dev/zero, a folder, a UNIX socket or a symbolic-link loop
    (at -> twin -> at)."""
    if kind == "fifo":
        os.mkfifo(at)
    elif kind == "socket":
        import socket

        here = os.getcwd()
        os.chdir(at.parent)  # a socket's path must be short; its name alone is
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(at.name)  # the file stays after the socket closes, as a server's stale one does
        finally:
            os.chdir(here)
    elif kind == "device":
        at.symlink_to("/dev/zero")
    elif kind == "directory":
        at.mkdir()
    else:
        twin = at.with_name(at.name + ".twin")
        at.symlink_to(twin)
        twin.symlink_to(at)
    return at


def _still(kind: str, at: Path) -> bool:
    """*at* is what `_special` made of it: nothing was written there or put in its place."""
    if kind in ("device", "loop"):
        return at.is_symlink()
    if kind == "socket":
        return at.is_socket()
    return at.is_fifo() if kind == "fifo" else at.is_dir() and not any(at.iterdir())


KIND_WORDS = {"fifo": "is a named pipe, not a regular file", "device": "is a device, not a regular file",
              "directory": "is a directory, not a regular file", "socket": "is a socket, not a regular file",
              "loop": "a symbolic link loop (a link that leads back to itself)"}

READ_SITES = {  # where a file is read, and the command that reads it from PATH (models.yaml: from its place)
    "--prompts": lambda p, t, absent: ["bench", "--target", absent, "--prompts", p],
    "bench compare": lambda p, t, absent: ["bench", "compare", p, p],
    "--target": lambda p, t, absent: ["run", "--target", p, "hi"],
    "--draft": lambda p, t, absent: ["run", "--target", t, "--draft", p, "--drafter", "model", "hi"],
    "models.yaml, list": lambda p, t, absent: ["list"],
    "models.yaml, pair add": lambda p, t, absent: ["pair", "add", "mine", "--target", t, "--draft", t],
    "pair add --target": lambda p, t, absent: ["pair", "add", "mine", "--target", p, "--draft", t],
    "a pair's path:": lambda p, t, absent: ["run", "--pair", "mine", "hi"],
}


@pytest.mark.parametrize("kind", list(KIND_WORDS))
@pytest.mark.parametrize("site", list(READ_SITES))
def test_what_is_not_a_file_is_refused_where_a_file_is_read(site, kind, home, target_path, tmp_path):
    # A pipe would wait for a writer forever and /dev/zero never ends: in a subprocess, a timeout ends a hang.
    path = _user_yaml(home) if site.startswith("models.yaml") else tmp_path / "input.jsonl"
    _special(kind, path)
    if site == "a pair's path:":
        _user_yaml(home).write_text(f"version: 1\nmodels:\n  m: {{path: {path}}}\n  n: {{path: {target_path}}}\n"
                                    "pairs:\n  mine: {target: m, draft: n}\n")
    config = {p: p.read_bytes() if p.is_file() else None for p in _user_yaml(home).parent.iterdir()}
    r = sg(*READ_SITES[site](str(path), str(target_path), str(tmp_path / "absent.gguf")), env=home, timeout=60)
    line = fails(r, KIND_WORDS[kind])
    assert f"{path}: " in line or f"{os.path.realpath(path)}: " in line, line  # as given, or where links lead
    assert _still(kind, path)
    assert {p: p.read_bytes() if p.is_file() else None for p in _user_yaml(home).parent.iterdir()} == config


@pytest.mark.parametrize("site", ["--prompts", "bench compare", "models.yaml, list"])
def test_a_file_far_larger_than_its_kind_is_refused_unread(site, home, target_path, tmp_path, monkeypatch, capsys):
    # A model file given where a text file goes: read whole, it would fill the memory before failing.
    path = _user_yaml(home) if site.startswith("models.yaml") else tmp_path / "model.gguf"
    with open(path, "wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GB on no disk
    args = READ_SITES[site](str(path), str(target_path), str(tmp_path / "absent.gguf"))
    fails(cli(*args, env=home, monkeypatch=monkeypatch, capsys=capsys), f"{path} holds more than", "MB",
          "check that it is the right file")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_stdin_is_read_only_as_far_as_a_context_could_hold(device, home, tmp_path):
    with open(device, "rb") as endless:
        r = subprocess.run([EXE, "run", "--target", str(tmp_path / "absent.gguf")], stdin=endless,
                           capture_output=True, text=True, env=home, timeout=120)
    fails(r, "stdin holds more than", "MB", "give a shorter prompt")


def test_a_chat_line_is_read_only_as_far_as_a_context_could_hold(home, target_path):
    with open("/dev/zero", "rb") as endless:
        r = subprocess.run([EXE, "chat", "--target", str(target_path), "--drafter", "none"], stdin=endless,
                           capture_output=True, text=True, env=home, timeout=120)
    fails(r, "a line of stdin holds more than", "give a shorter prompt")


def _file_size_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))  # as a full disk: a write past 16 bytes fails


def test_chat_save_errors_leave_the_session_going(home, target_path, tmp_path):
    saves = tmp_path / "saves"
    saves.mkdir()
    fifo, loop, big = _special("fifo", saves / "pipe.md"), _special("loop", saves / "loop.md"), saves / "big.md"
    lines = [f"/save {fifo}", f"/save {loop}", f"/save {big}", "/clear", "/bye"]
    r = subprocess.run([EXE, "chat", "--target", str(target_path), "--drafter", "none"],
                       input="\n".join(lines).encode(), capture_output=True, env=home, timeout=120,
                       preexec_fn=_file_size_limit)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in out and "internal error" not in out, out
    assert f"cannot write {fifo}: a named pipe that no program is reading; start the reader first" in out
    assert f"cannot write {loop}: a symbolic link loop" in out
    assert f"cannot write {big}: larger than the system lets a file grow" in out  # not its temporary file
    assert "conversation cleared" in out  # the session went on after each
    assert _still("fifo", fifo) and _still("loop", loop) and not big.exists()
    assert sorted(p.name for p in saves.iterdir()) == ["loop.md", "loop.md.twin", "pipe.md"]  # no temporary


def test_chat_save_names_a_socket_and_a_looping_folder_as_such(home, target_path, tmp_path):
    # Both were misnamed: the socket as "a named pipe that no program is reading", the loop as "no folder".
    saves = tmp_path / "saves"
    saves.mkdir()
    sock, loop = _special("socket", saves / "s.json"), _special("loop", saves / "l1.md")
    r = sg("chat", "--target", str(target_path), "--drafter", "none", env=home,
           stdin=f"/save {sock}\n/save {loop}/x.md\n/clear\n/bye\n".encode())
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out and "internal error" not in out, out
    assert f"cannot write {sock}: is a socket, not a regular file" in out
    assert f"cannot write {loop}/x.md: {loop}: a symbolic link loop (a link that leads back to itself)" in out
    assert "named pipe" not in out and "no folder" not in out
    assert "conversation cleared" in out  # the session went on after each
    assert _still("socket", sock) and _still("loop", loop)
    assert sorted(p.name for p in saves.iterdir()) == ["l1.md", "l1.md.twin", "s.json"]


BENCH_QUICK = ["--prompts", "builtin:chat", "--limit", "1", "--drafter", "ngram", "--max-tokens", "4",
               "--threads", "1"]


def test_bench_output_to_a_pipe_no_one_reads_goes_to_a_spare_file(home, target_path, tmp_path):
    fifo, good = _special("fifo", tmp_path / "r.json"), tmp_path / "r.csv"
    r = sg("bench", "--target", str(target_path), *BENCH_QUICK, "--json", str(fifo), "--csv", str(good),
           env=home, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]  # less the progress lines
    assert len(lines) == 2 and lines[0] == f"wrote {good}", r.stderr
    assert lines[1].startswith(f"specgen: error: could not write {fifo} (a named pipe that no program is reading; "
                               "start the reader first); saved it to "), lines[1]
    saved = Path(lines[1].rsplit("saved it to ", 1)[1].strip())
    try:
        assert json.loads(saved.read_text())["summary"]
    finally:
        saved.unlink(missing_ok=True)
    assert good.read_text().startswith("pair,")
    assert _still("fifo", fifo)


NO_SPACE = "specgen: error: cannot write the output: no space left on the device; free some space"


def _to(stdout: str, args: list[str], env: dict[str, str], limit: bool = False) -> subprocess.CompletedProcess:
    with open(stdout, "wb") as out:
        return subprocess.run([EXE, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=300, preexec_fn=_file_size_limit if limit else None)


@pytest.mark.parametrize("args", [["run", "--drafter", "none", "--max-tokens", "8", "hi"],
                                  ["run", "--drafter", "none", "--max-tokens", "8", "--json", "hi"],
                                  ["list"], ["list", "--json"], ["--help"], ["pair", "--help"]])
def test_a_full_disk_under_stdout_is_one_line(args, home, target_path):
    if args[0] == "run":
        args = [args[0], "--target", str(target_path), *args[1:]]
    r = _to("/dev/full", args, home)
    # One line, exit 1: no "Exception ignored" from the interpreter's own last flush (status 120).
    assert (r.returncode, r.stderr) == (1, NO_SPACE + "\n"), (r.returncode, r.stderr)


def test_a_file_at_its_size_limit_under_stdout_is_one_line(home, target_path, tmp_path):
    out = tmp_path / "out.txt"
    r = _to(str(out), ["run", "--target", str(target_path), "--drafter", "none", "--ignore-eos",
                       "--max-tokens", "40", "Write a poem"], home, limit=True)
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == ["specgen: error: cannot write the output: larger than the system lets a "
                                     "file grow (the file system's or `ulimit -f`'s limit)"]
    assert out.stat().st_size == 16  # what fit was written


def test_bench_results_survive_a_stdout_that_cannot_be_written(home, target_path, tmp_path):
    result = tmp_path / "r.json"
    r = _to("/dev/full", ["bench", "--target", str(target_path), *BENCH_QUICK, "--json", str(result)], home)
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("[")]
    assert r.returncode == 1 and lines == [f"wrote {result}", NO_SPACE], r.stderr
    assert json.loads(result.read_text())["summary"]


def test_a_failed_write_names_the_file_not_its_temporary(home, target_path, draft_path, tmp_path):
    user = _user_yaml(home)
    user.write_text(USER_MODELS_YAML)
    before = user.read_bytes()
    r = subprocess.run([EXE, "pair", "add", "mine", "--target", str(target_path), "--draft", str(draft_path)],
                       capture_output=True, text=True, env=home, timeout=120, preexec_fn=_file_size_limit)
    fails(r, f"{user}: larger than the system lets a file grow")
    assert user.read_bytes() == before
    assert [p.name for p in user.parent.iterdir()] == ["models.yaml"]  # no temporary file left behind


@pytest.mark.parametrize("args, code, out", [
    (["run", "--drafter", "none", "--max-tokens", "2", "hi"], 0, "reply"),
    (["run", "--drafter", "none", "--max-tokens", "2"], 1, "specgen: error: no prompt"),
    (["chat", "--drafter", "none"], 0, "banner"),
])
def test_a_closed_stdin_reads_as_empty(args, code, out, home, target_path):
    r = subprocess.run(["bash", "-c", 'exec "$0" "$@" <&-', EXE, args[0], "--target", str(target_path), *args[1:]],
                       capture_output=True, text=True, env=home, timeout=120)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    if out == "reply":
        assert r.stdout.strip() and r.stderr == "", r.stderr
    elif out == "banner":
        assert "specgen chat" in r.stdout and r.stderr.count("\n") <= 1, r.stderr  # at most the loading line
    else:
        assert r.stderr.startswith(out) and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("args", [["run", "--drafter", "none", "--max-tokens", "2", "hi"],
                                  ["run", "--drafter", "none", "--max-tokens", "2", "--json", "hi"],
                                  ["list"], ["list", "--json"], ["--help"]])
def test_a_closed_stdout_fails_the_first_output_as_cat_does(args, home, target_path):
    # Output written to a closed stdout was lost with exit 0.
    if args[0] == "run":
        args = [args[0], "--target", str(target_path), *args[1:]]
    r = subprocess.run(["bash", "-c", 'exec "$0" "$@" >&-', EXE, *args], capture_output=True, text=True,
                       env=home, timeout=120)
    assert (r.returncode, r.stderr) == (1, "specgen: error: cannot write the output: stdout is closed\n"), r.stderr


def test_a_closed_stdout_is_no_error_for_a_command_that_prints_nothing_there(home, target_path, draft_path):
    r = subprocess.run(["bash", "-c", 'exec "$0" "$@" >&-', EXE, "pair", "add", "mine", "--target",
                        str(target_path), "--draft", str(draft_path)], capture_output=True, text=True, env=home,
                       timeout=120)
    assert r.returncode == 0 and "error" not in r.stderr, r.stderr
    assert "mine:" in _user_yaml(home).read_text()


@pytest.mark.parametrize("encoding, shown", [("ascii", "caf\\xe9 \\u2713"), ("latin-1", "café \\u2713"),
                                             ("C", "caf\\xe9 \\u2713")])
def test_output_the_encoding_cannot_show_is_escaped(encoding, shown, home, target_path, draft_path):
    r = sg("pair", "add", "mine", "--target", str(target_path), "--draft", str(draft_path), "--note", "café ✓",
           env=home, timeout=120)
    assert r.returncode == 0, r.stderr
    if encoding == "C":  # a POSIX locale without UTF-8 mode: stdout is ASCII with "surrogateescape"
        env = {k: v for k, v in home.items() if k != "PYTHONIOENCODING"} | {"LC_ALL": "C", "PYTHONUTF8": "0"}
        encoding = "ascii"
    else:
        env = {**home, "PYTHONIOENCODING": encoding}
    r = subprocess.run([EXE, "list"], capture_output=True, env=env, timeout=120)
    assert r.returncode == 0 and b"Error" not in r.stderr, r.stderr
    assert shown.encode(encoding) in r.stdout


@pytest.mark.parametrize("flags", [("--json", "same", "--csv", "same"), ("--json", "same", "--markdown", "./same"),
                                   ("--csv", "same", "--plot", "alias")])
def test_two_outputs_naming_one_file_are_refused_before_loading(flags, home, tmp_path, monkeypatch, capsys):
    here = tmp_path / "out"
    here.mkdir()
    monkeypatch.chdir(here)
    same = here / "same"
    same.write_text("kept")
    (here / "alias").symlink_to(same)
    line = fails(cli("bench", "--target", str(tmp_path / "absent.gguf"), *flags, env=home,
                     monkeypatch=monkeypatch, capsys=capsys), f"{flags[0]} and {flags[2]} name the same file")
    assert "absent.gguf" not in line  # refused before the target was looked at
    assert same.read_text() == "kept" and sorted(p.name for p in here.iterdir()) == ["alias", "same"]


@pytest.mark.parametrize("flag, name", [("--json", "q.jsonl"), ("--csv", "./q.jsonl"), ("--markdown", "hard.jsonl"),
                                        ("--plot", "alias.jsonl")])
def test_an_output_that_is_an_input_is_refused_before_loading(flag, name, home, tmp_path, monkeypatch, capsys):
    # `--prompts q.jsonl --json q.jsonl` ran and replaced the user's prompt suite with the result: by name, through
    # a link or as another name of the same file (a hard link).
    here = tmp_path / "out"
    here.mkdir()
    monkeypatch.chdir(here)
    suite = here / "q.jsonl"
    suite.write_text(json.dumps({"question_id": 1, "category": "chat", "turns": ["Say hi"]}) + "\n")
    os.link(suite, here / "hard.jsonl")
    (here / "alias.jsonl").symlink_to(suite)
    before = _files(tmp_path)
    line = fails(cli("bench", "--target", str(tmp_path / "absent.gguf"), "--prompts", "q.jsonl", flag, name,
                     env=home, monkeypatch=monkeypatch, capsys=capsys),
                 f"{flag} names the --prompts file {Path(name)}: the result would replace it",
                 "give the output its own name")
    assert "absent.gguf" not in line  # refused before the target was looked at
    assert _files(tmp_path) == before and sorted(p.name for p in here.iterdir()) == ["alias.jsonl", "hard.jsonl",
                                                                                     "q.jsonl"]


@pytest.mark.parametrize("flag, model", [("--json", "--target"), ("--csv", "--draft")])
def test_an_output_that_is_a_model_being_measured_is_refused(flag, model, home, tmp_path, monkeypatch, capsys):
    # `--target T.gguf --json T.gguf` replaced the model with the result.
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    others = ["--target", str(tmp_path / "absent.gguf")] if model == "--draft" else []
    before = _files(tmp_path)
    fails(cli("bench", *others, model, str(gguf), flag, str(gguf), env=home, monkeypatch=monkeypatch,
              capsys=capsys), f"{flag} names the {model} file", "give the output its own name")
    assert _files(tmp_path) == before


def test_devices_may_take_several_outputs(home, tmp_path, monkeypatch, capsys):
    # /dev/null (and /dev/stdout) are written through in turn, so naming one twice replaces nothing.
    fails(cli("bench", "--target", str(tmp_path / "absent.gguf"), "--json", "/dev/null", "--csv", "/dev/null",
              env=home, monkeypatch=monkeypatch, capsys=capsys), "absent.gguf", "no such file")


# ---- compare inputs, late refusals, terminal escapes, empty values

def _files(root: Path) -> dict[str, bytes]:
    """Every file under *root* and its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _result(**change) -> dict:
    """A small well-formed `bench --json` result, with top-level fields or summary-row fields changed."""
    row = {"pair": "p", "config": "ngram/auto", "drafter": "ngram", "temperature": 0, "category": "chat",
           "speedup": 1.5, "decode_tps": 30.0, "mean_accepted": 2.0}
    rows = [dict(row, config="none", drafter="none", category=c, speedup=1.0) for c in ("chat", "overall")]
    rows += [dict(row, category=c) for c in ("chat", "overall")]
    result = {"specgen_bench": 1, "machine": {"cpu": "Test CPU", "threads": 2, "backend": "CPU"}, "settings": {},
              "runs": [], "summary": rows}
    for key, value in change.items():
        if key.startswith("row_"):
            rows[-1][key[4:]] = value
        else:
            result[key] = value
    return result


COMPARE_CASES = [  # (what to change, the words the line must hold)
    ({"machine": [1, 2]}, "`machine` must be an object, not an array"),
    ({"machine": "fast"}, "`machine` must be an object, not a string"),
    ({"summary": {"a": 1}}, "`summary` must be an array, not an object"),
    ({"summary": None}, "`summary` must be an array, not null"),
    ({"summary": [7]}, "summary row 0 must be an object, not a number"),
    ({"specgen_bench": "2"}, '`specgen_bench` (the format) must be a whole number from 1, not "2"'),
    ({"specgen_bench": None}, "`specgen_bench` (the format) must be a whole number from 1, not null"),
    ({"specgen_bench": True}, "`specgen_bench` (the format) must be a whole number from 1, not true"),
    ({"specgen_bench": 0.5}, "`specgen_bench` (the format) must be a whole number from 1, not 0.5"),
    ({"specgen_bench": 99}, "written by a newer specgen (format 99)"),
    ({"row_pair": ["p"]}, "summary row 3: `pair` must be a string, not an array"),
    ({"row_config": None}, "summary row 3: `config` must be a string, not null"),
    ({"row_category": {}}, "summary row 3: `category` must be a string, not an object"),
    ({"row_temperature": "hot"}, "summary row 3: `temperature` must be a number, not a string"),
    ({"row_speedup": "fast"}, "summary row 3: `speedup` must be a number, not a string"),
    ({"row_speedup": True}, "summary row 3: `speedup` must be a number, not a boolean"),
    ({"row_speedup": float("nan")}, "summary row 3: `speedup` must be a number, not NaN"),
    ({"row_decode_tps": [1]}, "summary row 3: `decode_tps` must be a number, not an array"),
    ({"row_mean_accepted": None}, "summary row 3: `mean_accepted` must be a number, not null"),
    ({"row_speedup": -10**400}, "summary row 3: `speedup` is a number too large to show (401 digits)"),
    ({"machine": {"cpu": "x", "threads": None}}, "machine: `threads` must be a number, not null"),
    ({"machine": {"cpu": {"model": "x"}}}, "machine: `cpu` must be a string, not an object"),
    ({"machine": {"backend": ["CPU"]}}, "machine: `backend` must be a string, not an array"),
    ({"machine": {"backend_detail": 3}}, "machine: `backend_detail` must be a string, not a number"),
    ({"machine": {"started": False}}, "machine: `started` must be a string, not a boolean"),
]


@pytest.mark.parametrize("change, words", COMPARE_CASES, ids=[w for _, w in COMPARE_CASES])
@pytest.mark.parametrize("side", ["A", "B"])
def test_compare_refuses_a_result_of_the_wrong_shape_in_one_line(change, words, side, home, tmp_path, monkeypatch,
                                                                 capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_result()))
    bad.write_text(json.dumps(_result(**change)))
    before = _files(tmp_path)
    args = [str(good), str(bad)] if side == "B" else [str(bad), str(good)]
    fails(cli("bench", "compare", *args, env=home, monkeypatch=monkeypatch, capsys=capsys), str(bad), words)
    assert _files(tmp_path) == before


def test_compare_refuses_a_number_longer_than_python_reads(home, tmp_path, monkeypatch, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_result()))
    bad.write_text(json.dumps(_result(specgen_bench=1)).replace('"specgen_bench": 1', '"specgen_bench": ' + "9" * 5000))
    before = _files(tmp_path)
    fails(cli("bench", "compare", str(good), str(bad), env=home, monkeypatch=monkeypatch, capsys=capsys), str(bad),
          "not a JSON file (a number of more than")
    assert _files(tmp_path) == before


def test_compare_shows_names_from_a_result_without_obeying_them(home, tmp_path, monkeypatch, capsys):
    # Text from the file (a cpu, a category, a configuration) with escape sequences and rich markup.
    odd = _result(machine={"cpu": "\x1b]0;owned\x07CPU"})
    for row in odd["summary"]:
        if row["category"] == "chat":
            row["category"] = "[/x]\x1b[31mred"
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_result()))
    b.write_text(json.dumps(odd))
    r = cli("bench", "compare", str(a), str(b), env=home, monkeypatch=monkeypatch, capsys=capsys)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout + r.stderr
    assert "\\x1b]0;owned\\x07CPU" in r.stdout and "[/x]\\x1b[31mred" in r.stdout


def test_compare_reads_only_what_it_shows(home, tmp_path, monkeypatch, capsys):
    # Runs and settings are for other tools: a result without them (or with odd ones) still compares.
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_result()))
    lean = _result()
    del lean["settings"], lean["runs"]
    for other in (_result(settings=[1], runs=5), lean):
        b.write_text(json.dumps(other))
        r = cli("bench", "compare", str(a), str(b), env=home, monkeypatch=monkeypatch, capsys=capsys)
        assert r.returncode == 0, r.stderr
        assert "1.50x → 1.50x" in r.stdout, r.stdout


@pytest.mark.parametrize("value", ["model/x", "ngram/-1", "model/"])
def test_a_bad_length_after_a_drafter_is_named_as_typed(value, home, tmp_path, monkeypatch, capsys):
    line = fails(cli("bench", "--target", str(tmp_path / "absent.gguf"), "--drafter", value, env=home,
                     monkeypatch=monkeypatch, capsys=capsys),
                 f"--drafter '{value}': the draft length after '/' must be a number of tokens")
    assert "--draft-max" not in line  # a flag the user did not type

@pytest.mark.parametrize("seed", ["-5", str(2**64)])
def test_bench_refuses_a_bad_seed_before_anything_loads(seed, home, tmp_path, monkeypatch, capsys):
    before = _files(tmp_path)
    line = fails(cli("bench", "--target", str(tmp_path / "absent.gguf"), "--seed", seed, env=home,
                     monkeypatch=monkeypatch, capsys=capsys), "--seed must be a whole number", seed)
    assert "{" not in line and "absent.gguf" not in line  # the flag by its name, before the target is read
    assert _files(tmp_path) == before


def test_bench_with_the_largest_seed_runs_every_question(home, target_path, tmp_path):
    # Each question's seed is derived from --seed; one near the top of the range still gives valid seeds.
    out = tmp_path / "r.json"
    r = sg("bench", "--target", str(target_path), "--prompts", "builtin:chat", "--limit", "2", "--drafter", "ngram",
           "--max-tokens", "2", "--temperature", "0.5", "--seed", str(2**64 - 1), "--json", str(out), env=home,
           timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    result = json.loads(out.read_text())
    assert result["settings"]["seed"] == 2**64 - 1
    assert len({run["question_id"] for run in result["runs"]}) == 2


def test_printable_spells_out_control_characters():
    from specgen.errors import printable

    assert printable("a\x1b[31mb\x07\x9b\x7f\u202e\r\t\n") == "a\\x1b[31mb\\x07\\x9b\\x7f\\u202e\\r\\t\\n"
    assert printable("café ✓ 中 [/x]") == "café ✓ 中 [/x]"  # printable text, markup-like or not, is kept
    assert printable("two\nlines\x1b", lines=True) == "two\nlines\\x1b"


def test_list_shows_notes_without_obeying_them(home, target_path, draft_path):
    evil = "\x1b]0;owned\x07\x1b[2J[/bold] cleared"
    r = sg("pair", "add", "mine", "--target", str(target_path), "--draft", str(draft_path), "--note", evil, env=home)
    assert r.returncode == 0, r.stderr
    yaml = _user_yaml(home)
    for shown in ("\\x1b]0;owned\\x07\\x1b[2J[/bold] cleared", "\\x1b[31mred\\x07"):
        written = yaml.read_bytes()
        r = sg("list", env=home)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout
        assert shown in r.stdout
        assert yaml.read_bytes() == written  # listing writes nothing
        # Then a note written by hand, in YAML's own escapes (\e is ESC, \a the bell).
        lines = [ln for ln in yaml.read_text().splitlines() if not ln.strip().startswith("note:")]
        at = next(i for i, ln in enumerate(lines) if ln.strip() == "mine:")
        yaml.write_text("\n".join([*lines[:at + 1], '    note: "\\e[31mred\\a"', *lines[at + 1:]]) + "\n")


def test_bench_shows_categories_and_ids_without_obeying_them(home, target_path, tmp_path):
    prompts = tmp_path / "q.jsonl"
    prompts.write_text(json.dumps({"question_id": "\x1b]0;id\x07", "category": "[/x]\x1b[31mred",
                                   "turns": ["Say hi"]}) + "\n")
    out = tmp_path / "r.json"
    r = sg("bench", "--target", str(target_path), "--prompts", str(prompts), "--drafter", "ngram", "--max-tokens",
           "4", "--json", str(out), env=home, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "\x1b" not in r.stdout + r.stderr
    assert "[/x]\\x1b[31mred" in r.stdout  # the table
    assert "[/x]\\x1b[31mred #\\x1b]0;id\\x07" in r.stderr  # one progress line per run
    assert json.loads(out.read_text())["settings"]["categories"] == ["[/x]\x1b[31mred"]  # the data as it was


def test_chat_shows_file_names_without_obeying_them(home, target_path, tmp_path):
    odd = tmp_path / "ev\x1b[2Jil.gguf"
    odd.symlink_to(target_path)
    r = sg("chat", "--target", str(odd), "--drafter", "ngram", "--max-tokens", "2", stdin=b"/stats\n/bye\n", env=home)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "\x1b" not in r.stdout + r.stderr
    assert "ev\\x1b[2Jil" in r.stdout  # the banner and /stats name it, spelled out


def test_error_lines_spell_out_what_they_quote(home, tmp_path, monkeypatch, capsys):
    absent = tmp_path / "q\x1b[2J\nx.jsonl"
    line = fails(cli("bench", "--target", str(tmp_path / "absent.gguf"), "--prompts", str(absent), env=home,
                     monkeypatch=monkeypatch, capsys=capsys), "q\\x1b[2J\\nx.jsonl")
    assert "\x1b" not in line


def test_the_server_log_spells_out_what_a_client_sent():
    from specgen.server.view import RequestRecord, log_line

    sent = "/\x1b[31mred\x1b]0;x\x07"
    line = log_line(RequestRecord("GET", sent, 404, 0.0, None, error=f"no such route: GET {sent}"))
    assert "\x1b" not in line and "\x07" not in line
    assert line.count("/\\x1b[31mred\\x1b]0;x\\x07") == 2


EMPTY_CASES = [  # (command and arguments, with "" where a value is empty; the flag named)
    (["run", "--drafter", "", "hi"], "--drafter"),
    (["run", "--draft-max", "", "hi"], "--draft-max"),
    (["run", "--rpc", "", "hi"], "--rpc"),
    (["run", "--draft-rpc", "", "hi"], "--draft-rpc"),
    (["run", "--target", "", "hi"], "--target"),
    (["run", "--draft", "", "hi"], "--draft"),
    (["run", "--system", "", "hi"], "--system"),
    (["run", "--stop", "x", "--stop", "", "hi"], "--stop"),
    (["chat", "--drafter", ""], "--drafter"),
    (["chat", "--system", ""], "--system"),
    (["bench", "--pair", ""], "--pair"),
    (["bench", "--drafter", ""], "--drafter"),
    (["bench", "--draft-max", ""], "--draft-max"),
    (["bench", "--temperature", ""], "--temperature"),
    (["bench", "--prompts", ""], "--prompts"),
    (["bench", "--categories", ""], "--categories"),
    (["bench", "--target", ""], "--target"),
    (["bench", "--json", ""], "--json"),
    (["bench", "--csv", ""], "--csv"),
    (["bench", "--markdown", ""], "--markdown"),
    (["bench", "--plot", ""], "--plot"),
    (["serve", "--host", ""], "--host"),
    (["serve", "--api-key", ""], "--api-key"),
    (["worker", "--device", ""], "--device"),
]


@pytest.mark.parametrize("args, flag", EMPTY_CASES, ids=[" ".join(a[:2]) for a, _ in EMPTY_CASES])
def test_an_empty_value_is_refused_not_taken_for_the_default(args, flag, home, tmp_path, monkeypatch, capsys):
    # What `--drafter "$UNSET"` passes.  Only a flag left out means its default; an empty one would have run
    # auto, downloaded the default pair, served every interface or dropped the API key.
    before = _files(tmp_path)
    target = [] if "--target" in args or args[0] == "worker" else ["--target", str(tmp_path / "absent.gguf")]
    line = fails(cli(*args[:1], *target, *args[1:], env=home, monkeypatch=monkeypatch, capsys=capsys),
                 f"{flag} is empty", "leave it out")
    assert "absent.gguf" not in line  # refused before the target was looked at
    assert _files(tmp_path) == before


def test_pull_of_an_empty_name_says_so(home, monkeypatch, capsys):
    # It answered "unknown pair '' (did you mean ...)".
    fails(cli("pull", "", env=home, monkeypatch=monkeypatch, capsys=capsys), "PAIR|REPO is empty; give a value")


def test_the_library_takes_an_empty_drafter_for_no_drafter():
    from specgen.build import EngineOptions
    from specgen.errors import SpecgenError

    with pytest.raises(SpecgenError, match="unknown drafter ''"):
        EngineOptions(target=Path("t.gguf"), drafter="").check_numbers()


# ---- a Hub that never answers, malformed hub settings

def _cache_files(env: dict[str, str]) -> list[Path]:
    hf_home = Path(env["HF_HOME"])
    return sorted(p for p in hf_home.rglob("*") if p.is_file()) if hf_home.exists() else []


def _fails_after_notes(r: subprocess.CompletedProcess, *needles: str) -> str:
    """`fails`, for a command that may say what it is about to do (pull a pair, download) before it fails."""
    line = one_line_error(r, progress=True)
    for n in needles:
        assert n in line, (n, line)
    assert len(line) < 400, line
    return line


@pytest.fixture
def silent_hub():
    server = RawServer()
    yield server
    server.close()


@pytest.mark.parametrize("args", [["pull", "smol"], ["pull", f"{TARGET_REPO}:Q4_1"], ["run", "--pair", "smol", "hi"]],
                         ids=["pull pair", "pull repo", "run"])
def test_a_hub_that_never_answers_is_given_up_on(args, silent_hub, hub_env):
    # It accepts the connection and sends nothing: without a read timeout every command that lists a repo
    # would wait there forever.
    _fails_after_notes(sg(*args, env=hub_env, timeout=60, HF_ENDPOINT=silent_hub.url, HF_HUB_DOWNLOAD_TIMEOUT="1"),
                       f"the Hub at {silent_hub.url} did not answer within 1 s", "check HF_ENDPOINT",
                       "set HF_HUB_DOWNLOAD_TIMEOUT to wait longer")
    assert silent_hub.accepted  # it was asked
    assert _cache_files(hub_env) == []


def test_a_hub_that_trickles_its_listing_is_given_up_on(hub_env):
    # A byte every half second keeps each read inside its timeout: only a bound on the whole answer ends it.
    listing = _http(json.dumps({"id": TARGET_REPO, "sha": "0" * 40, "siblings": []}).encode() + b" " * 4000)
    server = RawServer(listing, trickle=0.5)
    url = server.url
    try:
        r = sg("pull", f"{TARGET_REPO}:Q4_1", env=hub_env, timeout=60, HF_ENDPOINT=url, HF_HUB_DOWNLOAD_TIMEOUT="1")
    finally:
        server.close()
    _fails_after_notes(r, f"the Hub at {url} sent the listing of {TARGET_REPO} too slowly",
                       "set HF_HUB_DOWNLOAD_TIMEOUT to wait longer")
    assert _cache_files(hub_env) == []


def _http(body: bytes, kind: str = "application/json") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            "\r\n").encode() + body


def _listing(**change) -> bytes:
    return _http(json.dumps({"id": TARGET_REPO, "sha": "0" * 40, "siblings": [{"rfilename": TARGET_FILE}],
                             **change}).encode())


NOT_A_HUB = {
    "a web page": (_http(b"<html>welcome</html>", "text/html"), "the listing of", "is not a Hub's model info"),
    "a JSON list": (_http(b"[]"), "the listing of", "is not a Hub's model info"),
    "no commit": (_listing(sha=7), "no valid commit in the listing of"),
    "a commit with a line end": (_listing(sha="0" * 40 + "\n"), "no valid commit in the listing of"),
    "a file named by a number": (_listing(siblings=[{"rfilename": 5}]), "a file entry no Hub sends"),
    "a negative size": (_listing(siblings=[{"rfilename": TARGET_FILE, "size": -5}]), "a file entry no Hub sends"),
    "not HTTP": (b"\x00\xff\x1b[2J" + b"x" * 3000 + b"\r\n\r\n", "cannot reach", "RemoteProtocolError"),
}


@pytest.mark.parametrize("case", NOT_A_HUB)
def test_a_server_that_is_not_a_hub_is_named(case, hub_env):
    answer, *needles = NOT_A_HUB[case]
    server = RawServer(answer)
    try:
        line = fails(sg("pull", "smol", env=hub_env, timeout=60, HF_ENDPOINT=server.url), *needles, server.url)
    finally:
        server.close()
    assert "\x1b" not in line
    assert _cache_files(hub_env) == []


def test_a_file_whose_metadata_never_comes_is_given_up_on(hub_env, mirror):
    mirror.fault(TARGET_REPO, TARGET_FILE).stall_head = True
    fails(sg("pull", "smol-q4_1", env=hub_env, timeout=60, HF_HUB_ETAG_TIMEOUT="1"),
          f"the Hub at {mirror.url} did not answer within 1 s ({TARGET_REPO}/{TARGET_FILE})", "HF_HUB_ETAG_TIMEOUT")
    assert mirror.requests("GET", "resolve") == []  # no byte is asked for before every file's metadata
    assert not [f for f in _cache_files(hub_env) if f.name.endswith(".incomplete")]


def test_a_download_that_stalls_leaves_a_partial_file_the_next_pull_resumes(hub_env, mirror, hub_models):
    from specgen.fileio import file_sha256
    from specgen.models.download import MAX_RETRIES

    hf_home = Path(hub_env["HF_HOME"])
    stall_at = 1_000_000
    fault = mirror.fault(TARGET_REPO, TARGET_FILE)
    fault.stall_at, fault.stalls = stall_at, 100  # headers, a megabyte, then silence: every time
    _fails_after_notes(sg("pull", "smol-q4_1", env=hub_env, timeout=90, HF_HUB_DOWNLOAD_TIMEOUT="1"),
                       f"download of {TARGET_REPO}/{TARGET_FILE} from 127.0.0.1", f"failed after {MAX_RETRIES} retries",
                       "no data for 1 s", "HF_HUB_DOWNLOAD_TIMEOUT", "it resumes where it stopped")
    # Each retry asked for the rest only, and nothing counts as downloaded.
    assert [q["range"] for q in mirror.requests("GET", "resolve")] == [None] + [f"bytes={stall_at}-"] * MAX_RETRIES
    (part,) = [f for f in _cache_files(hub_env) if f.name.endswith(".incomplete")]
    assert part.stat().st_size == stall_at
    assert snapshot_files(hf_home, TARGET_REPO) == []

    mirror.clear()  # the Hub answers again
    r = sg("pull", "smol-q4_1", env=hub_env, timeout=90)
    assert r.returncode == 0, r.stderr
    assert [q["range"] for q in mirror.requests("GET", "resolve")] == [f"bytes={stall_at}-"]
    assert len(mirror.requests("HEAD", "resolve")) == 1  # linked into the snapshot without asking the Hub again
    assert not part.exists()
    (got,) = snapshot_files(hf_home, TARGET_REPO)
    assert file_sha256(got) == file_sha256(hub_models["target"])


@pytest.mark.parametrize("how", ["resends the start", "trickles"])
def test_a_download_that_brings_nothing_new_is_given_up_on(how, hub_env, mirror, hub_models):
    # Resent bytes reset the retry count, and a byte now and then never let the read timeout fire: both kept
    # a pull going for minutes, or for ever.
    from specgen.fileio import file_sha256
    from specgen.models.download import MAX_RETRIES, MIN_PROGRESS

    hf_home = Path(hub_env["HF_HOME"])
    fault = mirror.fault(TARGET_REPO, TARGET_FILE)
    if how == "resends the start":
        fault.ignore_range, fault.stall_at, fault.stalls = True, 1000, 100  # the first 1000 bytes, then silence
        why = ["no data for 1 s", "the server ignores Range requests"]
    else:
        fault.trickle = 0.2
        why = [f"less than {MIN_PROGRESS >> 10} KiB in 1 s"]
    _fails_after_notes(sg("pull", "smol-q4_1", env=hub_env, timeout=90, HF_HUB_DOWNLOAD_TIMEOUT="1"),
                       f"download of {TARGET_REPO}/{TARGET_FILE} from 127.0.0.1",
                       f"failed after {MAX_RETRIES} retries without new data", *why, "HF_HUB_DOWNLOAD_TIMEOUT",
                       "it resumes where it stopped")
    assert len(mirror.requests("GET", "resolve")) == 1 + MAX_RETRIES
    (part,) = [f for f in _cache_files(hub_env) if f.name.endswith(".incomplete")]
    kept = part.read_bytes()
    assert 0 < len(kept) <= 1000 and hub_models["target"].read_bytes().startswith(kept)  # nothing was written twice
    assert snapshot_files(hf_home, TARGET_REPO) == []

    mirror.clear()
    r = sg("pull", "smol-q4_1", env=hub_env, timeout=90)
    assert r.returncode == 0, r.stderr
    assert [q["range"] for q in mirror.requests("GET", "resolve")] == [f"bytes={len(kept)}-"]
    (got,) = snapshot_files(hf_home, TARGET_REPO)
    assert file_sha256(got) == file_sha256(hub_models["target"])


def test_a_redirect_loop_is_named(hub_env, mirror):
    mirror.fault(TARGET_REPO, TARGET_FILE).redirect_loop = True  # the file's address redirects to itself
    fails(sg("pull", "smol-q4_1", env=hub_env, timeout=60), f"the Hub at {mirror.url}",
          f"{TARGET_REPO}/{TARGET_FILE}", "redirect loop", "check HF_ENDPOINT")
    assert mirror.requests("GET", "resolve") == []  # the metadata request met the loop; no byte was asked for
    assert snapshot_files(Path(hub_env["HF_HOME"]), TARGET_REPO) == []


def _with_password(url: str) -> str:
    return url.replace("://", "://me:s3cret@", 1)


@pytest.mark.parametrize("case", ["not a web address", "no such repo", "not a hub", "download stalls"])
def test_a_password_in_the_hub_address_is_never_shown(case, hub_env, mirror):
    if case == "not a web address":
        address, args, needles = _with_password(mirror.url) + "/a b", ["pull", "smol"], ["is not a web address"]
    elif case == "no such repo":
        address, args, needles = _with_password(mirror.url), ["pull", "nobody/nothing-GGUF:Q4_0"], ["not found on"]
    elif case == "not a hub":
        server = RawServer(_http(b"[]"))
        address, args, needles = _with_password(server.url), ["pull", "smol"], ["is not a Hub's model info"]
    else:
        fault = mirror.fault(TARGET_REPO, TARGET_FILE)
        fault.stall_at, fault.stalls = 1000, 100
        address, args, needles = _with_password(mirror.url), ["pull", "smol-q4_1"], ["failed after"]
    try:
        r = sg(*args, env=hub_env, timeout=90, HF_ENDPOINT=address, HF_HUB_DOWNLOAD_TIMEOUT="1")
    finally:
        if case == "not a hub":
            server.close()
    host = address.split("@", 1)[1].split("/", 1)[0]
    _fails_after_notes(r, *needles, f"***@{host}")
    assert "s3cret" not in r.stdout + r.stderr


@pytest.mark.parametrize("value", ["not a url", "ftp://mirror.example", "localhost:8080", "http://", "http://[::1",
                                   "http://mirror.example:99999", "http://exa mple.com", "http://mirror.example\n",
                                   "http://\x1b[2J" + "x" * 5000])
@pytest.mark.parametrize("command", [["pull", "smol"], ["run", "--pair", "smol", "hi"]], ids=["pull", "run"])
def test_a_malformed_hub_address_is_named(command, value, hub_env):
    line = _fails_after_notes(sg(*command, env=hub_env, HF_ENDPOINT=value), "HF_ENDPOINT=", "is not a web address",
                              "unset it to use https://huggingface.co")
    assert "\x1b" not in line and "\n" not in line
    assert _cache_files(hub_env) == []


@pytest.mark.parametrize("value", ["abc", "1.5", "", "0", "-3", "100000"])
@pytest.mark.parametrize("variable", ["HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"])
def test_a_malformed_hub_timeout_is_named(variable, value, hub_env, mirror):
    # huggingface_hub reads these with int() when it is imported: a value it cannot read was a traceback there.
    fails(sg("pull", "smol", env=hub_env, **{variable: value}), f"{variable} must be a whole number of seconds",
          f"(it is '{value}')")
    assert mirror.log == [] and _cache_files(hub_env) == []


@pytest.mark.parametrize("value, kind", [
    ("hf_SECRET\nmore", "a line break"), ("hf_SECRET\u00e9", "a non-ASCII character"),
    ("hf_SECRET\udcff", "a non-ASCII character"),  # a byte that is not UTF-8
    ("hf_SECRET\x1b[31m", "a control character"), ("hf_SECRET more", "a space")])
def test_a_token_no_header_can_carry_is_named_never_shown(value, kind, hub_env, mirror):
    r = sg("pull", "smol", env=hub_env, HF_TOKEN=value)
    fails(r, f"HF_TOKEN holds {kind}", f"{mirror.url}/settings/tokens")
    assert "SECRET" not in r.stderr + r.stdout
    assert mirror.log == [] and _cache_files(hub_env) == []


def test_a_saved_token_no_header_can_carry_is_named(hub_env, mirror):
    token = Path(hub_env["HF_HOME"]) / "token"
    token.parent.mkdir(parents=True)
    token.write_text("hf_SECRET\u00e9\n")  # what `hf auth login` left, or a hand edit
    r = sg("pull", "smol", env=hub_env)
    fails(r, "the token `hf auth login` saved holds a non-ASCII character", "run `hf auth login` again")
    assert "SECRET" not in r.stderr + r.stdout
    assert token.read_text() == "hf_SECRET\u00e9\n" and mirror.log == []


@pytest.mark.parametrize("kind", ["device", "named pipe", "directory", "large"])
def test_a_token_file_that_is_not_a_small_file_is_refused_unread(kind, hub_env, mirror, tmp_path):
    # huggingface_hub reads the token file whole: /dev/zero filled the memory, a named pipe waited forever.
    path = {"device": Path("/dev/zero"), "named pipe": tmp_path / "fifo", "directory": tmp_path}.get(kind)
    if kind == "named pipe":
        os.mkfifo(path)
    elif kind == "large":
        path = tmp_path / "token"
        with open(path, "wb") as f:
            f.truncate(1 << 33)  # sparse: 8 GB said, nothing stored
    r = sg("pull", "smol", env=hub_env, HF_TOKEN_PATH=str(path), timeout=60)
    fails(r, "HF_TOKEN_PATH", str(path), "a file holding only your token" if kind != "large" else "")
    assert mirror.log == [] and _cache_files(hub_env) == []


def test_blanks_around_a_token_are_dropped_as_huggingface_hub_does(hub_env, mirror):
    from hub_fixtures import GATED_TOKEN

    r = sg("pull", "gated-tiny", env=hub_env, HF_TOKEN=f" {GATED_TOKEN}\n")  # pasted with its line end
    assert r.returncode == 0, r.stderr
    assert {q["auth"] for q in mirror.requests(kind="resolve")} == {f"Bearer {GATED_TOKEN}"}


def test_a_broken_token_does_not_stop_a_run_from_the_cache(pulled_smol, hub_env, mirror):
    # Offline, nothing is sent: the token is not needed, so it is not looked at.
    r = sg("pull", "smol", env=hub_env, HF_HUB_OFFLINE="1", HF_TOKEN="hf_\u00e9")
    assert r.returncode == 0, r.stderr
    assert mirror.log == []
