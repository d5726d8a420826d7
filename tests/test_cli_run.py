"""`specgen run` as scripts use it: pipes, --json, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import one_line_error
from hub_fixtures import _patch_token

EXE = str(Path(sys.executable).parent / "specgen")


def specgen(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    return subprocess.run([EXE, *args], input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_json_has_the_documented_schema(target_path, draft_path):
    r = specgen("run", "--target", str(target_path), "--draft", str(draft_path), "--drafter", "model",
                "--draft-max", "4", "--max-tokens", "24", "--ignore-eos", "--json", "Name three fruits.")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"text", "target", "draft", "drafter", "stats"}
    assert out["drafter"] == "model" and out["target"] == str(target_path) and out["draft"] == str(draft_path)
    st = out["stats"]
    for key in ("prompt_tokens", "generated_tokens", "steps", "drafted", "accepted"):
        assert isinstance(st[key], int), key
    for key in ("prompt_seconds", "decode_seconds", "decode_tps", "acceptance_rate", "mean_accepted"):
        assert isinstance(st[key], (int, float)), key
    # Known answers, not the summary's own sums: with end-of-generation banned the reply is the 24 tokens
    # asked for, and each verify step emits one token of the target's after at most 4 accepted ones.
    assert st["generated_tokens"] == 24 == st["accepted"] + st["steps"]
    assert 24 / (4 + 1) <= st["steps"] <= 24
    assert st["mean_accepted"] == pytest.approx(st["generated_tokens"] / st["steps"], abs=1e-3)
    assert st["acceptance_rate"] == pytest.approx(st["accepted"] / st["drafted"], abs=1e-3)
    assert out["text"]
    # A step counts under the drafter when it verified a draft, under "none" when the draft was empty.
    lengths = {int(k): v for k, v in st["draft_lengths"].items()}
    assert sum(lengths.values()) == st["steps"] and sum(k * v for k, v in lengths.items()) == st["drafted"]
    assert st["drafter_steps"] == {k: v for k, v in (("model", st["steps"] - lengths.get(0, 0)),
                                                      ("none", lengths.get(0, 0))) if v}


def test_plain_decoding_is_one_step_per_token(target_path):
    r = specgen("run", "--target", str(target_path), "--drafter", "none", "--max-tokens", "16", "--ignore-eos",
                "--json", "Name three fruits.")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)["stats"]
    # Nothing drafted: every count is known beforehand.
    assert (st["generated_tokens"], st["steps"], st["drafted"], st["accepted"]) == (16, 16, 0, 0)
    assert st["drafter_steps"] == {"none": 16} and st["draft_lengths"] == {"0": 16}


def test_auto_is_the_default_and_reports_its_choices(target_path, draft_path):
    r = specgen("run", "--target", str(target_path), "--draft", str(draft_path), "--max-tokens", "48", "--json",
                "Copy this list exactly: apple, banana, cherry, date, elderberry, fig, grape.")
    out = json.loads(r.stdout)
    assert out["drafter"] == "auto"
    st = out["stats"]
    assert set(st["drafter_steps"]) <= {"none", "ngram", "model"}
    # The histogram of draft lengths accounts for every step and every drafted token; no step emits more
    # than its draft plus one; and the steps counted under "none" are exactly those that verified no draft.
    lengths = {int(k): v for k, v in st["draft_lengths"].items()}
    assert sum(lengths.values()) == st["steps"] and sum(k * v for k, v in lengths.items()) == st["drafted"]
    assert st["generated_tokens"] / (max(lengths) + 1) <= st["steps"] <= st["generated_tokens"]
    assert st["drafter_steps"].get("none", 0) == lengths.get(0, 0)
    assert sum(v for k, v in st["drafter_steps"].items() if k != "none") == sum(v for k, v in lengths.items() if k)
    # Why: what each drafter offered, what the controller verified of it, and the costs it priced with.
    for name, d in st["by_drafter"].items():
        assert name in {"ngram", "model"} and d["offered"] >= d["verified"] >= d["accepted"] >= 0
        assert d["steps"] >= st["drafter_steps"].get(name, 0)
    assert sum(d["verified"] for d in st["by_drafter"].values()) == st["drafted"]
    assert sum(d["accepted"] for d in st["by_drafter"].values()) == st["accepted"]
    costs = st["costs"]
    assert costs["step_ms"] > 0 and set(costs["verify_vs_step"]) == {"2", "4", "8", "16"}
    assert costs["speed_vs_calibration"] > 0 and costs["draft_token_vs_step"]["model"] > 0


def test_piped_stdin_goes_before_the_argument(target_path):
    # Raw text: the model continues whichever sequence comes last.
    numbers, letters = "1, 2, 3, 4, 5, 6,", "a, b, c, d, e, f,"
    common = ("run", "--target", str(target_path), "--drafter", "none", "--raw", "--max-tokens", "8", "--json")
    piped = json.loads(specgen(*common, letters, stdin=numbers + "\n").stdout)
    inline = json.loads(specgen(*common, f"{numbers}\n\n{letters}").stdout)
    assert piped["text"].split(",")[0].strip() == "g", piped["text"]
    assert piped["stats"]["prompt_tokens"] == inline["stats"]["prompt_tokens"]
    assert piped["text"] == inline["text"]


def test_piped_stdout_is_only_the_text_and_stats_go_to_stderr(target_path):
    args = ("run", "--target", str(target_path), "--drafter", "ngram", "--max-tokens", "16", "Say hello.")
    plain = specgen(*args)
    assert plain.returncode == 0 and plain.stderr == ""
    assert plain.stdout.strip() and "tok/s" not in plain.stdout
    with_stats = specgen(*args, "--stats")
    assert with_stats.stdout == plain.stdout  # greedy: same text
    assert "tok/s" in with_stats.stderr and len(with_stats.stderr.strip().splitlines()) == 1


def test_no_prompt(target_path):
    assert "no prompt" in one_line_error(specgen("run", "--target", str(target_path)))


def test_missing_file(tmp_path):
    line = one_line_error(specgen("run", "--target", str(tmp_path / "nope.gguf"), "hi"))
    assert "no such file" in line


def test_not_a_gguf(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_text("<html>rate limited</html>")
    assert "not a GGUF" in one_line_error(specgen("run", "--target", str(f), "hi"))


def test_truncated_gguf(target_path, tmp_path):
    f = tmp_path / "half.gguf"
    with open(target_path, "rb") as src:
        f.write_bytes(src.read(target_path.stat().st_size // 2))
    assert "truncated" in one_line_error(specgen("run", "--target", str(f), "hi"))


def test_corrupt_gguf_header(target_path, tmp_path):
    f = tmp_path / "corrupt.gguf"
    with open(target_path, "rb") as src:
        head = bytearray(src.read(4096))
    head[8:24] = b"\xff" * 16  # absurd tensor and key counts
    f.write_bytes(bytes(head))
    assert "corrupt" in one_line_error(specgen("run", "--target", str(f), "hi"))


def test_unreadable_file(target_path, tmp_path):
    if os.geteuid() == 0:
        f = tmp_path / "dir.gguf"  # root reads everything; a directory is still unreadable as a model
        f.mkdir()
        expect = "directory"
    else:
        f = tmp_path / "secret.gguf"
        shutil.copyfile(target_path, f)
        f.chmod(0)
        expect = "permission denied"
    assert expect in one_line_error(specgen("run", "--target", str(f), "hi"))


def test_incompatible_pair_names_the_token(target_path, tmp_path):
    other = tmp_path / "other.gguf"
    old = _patch_token(target_path, other, token_id=1000)
    line = one_line_error(specgen("run", "--target", str(target_path), "--draft", str(other), "hi"))
    assert "1000" in line and repr(old)[1:-1] in line


def test_prompt_longer_than_the_context(target_path):
    line = one_line_error(specgen("run", "--target", str(target_path), "--drafter", "none", "--ctx", "256",
                                  "--raw", "word " * 1000))
    assert "context" in line and "--ctx" in line


def test_bad_flag_values(target_path):
    assert "--draft-max" in one_line_error(specgen("run", "--target", str(target_path), "--draft-max", "lots", "x"))
    assert "drafter" in one_line_error(specgen("run", "--target", str(target_path), "--drafter", "magic", "x"))
    assert "--drafter model" in one_line_error(specgen("run", "--target", str(target_path), "--drafter", "model",
                                                       "x"))


def test_ctrl_c_stops_with_130_and_one_line(target_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen([EXE, "run", "--target", str(target_path), "--drafter", "none", "--ignore-eos",
                          "--max-tokens", "100000", "--ctx", "8192", "Tell me a long story."],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.set_blocking(p.stdout.fileno(), False)
    deadline, got = time.monotonic() + 60, b""
    while time.monotonic() < deadline and len(got) < 20:
        got += p.stdout.read() or b""
        time.sleep(0.05)
    assert got, "no output before the interrupt"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130
    err = err.decode()
    assert "Traceback" not in err and err.strip() == "specgen: interrupted"


def test_a_pipe_loads_only_what_run_needs(target_path):
    """Start-up: `run` in a script imports neither the other commands nor the Hub, YAML or the bench tables."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "PYTHONPROFILEIMPORTTIME": "1"}
    r = subprocess.run([EXE, "run", "--target", str(target_path), "--max-tokens", "2", "--threads", "1", "hi"],
                       input="", capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "specgen.engine" in imported and "specgen.cli.options" in imported
    for heavy in ["specgen.cli.bench", "specgen.cli.chat", "specgen.cli.models", "specgen.models.registry",
                  "yaml", "huggingface_hub", "rich.progress", "rich.table"]:
        assert heavy not in imported, heavy
