"""Every benchmark script in tests/bench, and the accelerator check, on its smallest case: so none of them rots.

Each runs as tests/bench/README.md says, `python -m tests.bench.NAME` from the repository root, on the
tiny test pair with a short prompt, one thread and a few tokens.  What is checked is what each promises
to report: a ratio per configuration that is a number (finite, positive), every phase and table it
names, outputs that must match.  Timings are never compared.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import interleave

ROOT = Path(__file__).resolve().parents[1]
SHORT = "Copy this list exactly: apple, banana, cherry, date, elderberry, fig, grape."
SUITE = {"question_id": 1, "category": "copy", "turns": [SHORT]}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    # One calibration cache for the module (each script would otherwise calibrate afresh), not the user's.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "OMP_WAIT_POLICY": "passive",
            "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}


def script(env: dict, name: str, *args: object, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", name, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def ratio_ok(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def check_ab(ab: dict, configs: list[str], rounds: int) -> None:
    """An interleaved A/B's JSON: every configuration measured each round, between two baseline runs."""
    assert list(ab["configs"]) == configs
    assert len(ab["values"]) == rounds * len(configs) + 1
    for c in configs:
        got = ab["configs"][c]
        assert len(got["ratios"]) == rounds and all(ratio_ok(x) for x in got["ratios"]), (c, got)
        assert ratio_ok(got["ratio"]) and got["value"] > 0


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "copy.jsonl"
    path.write_text(json.dumps(SUITE) + "\n")
    return path


@pytest.fixture(scope="module")
def traces(env, target_path, draft_path, suite, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("traces") / "traces.json"
    script(env, "tests.bench.replay", "record", "--target", target_path, "--draft", draft_path, "--prompts", suite,
           "--max-tokens", 16, "--threads", 1, "--out", out)
    return out


# ---------------------------------------------------------------- the harness

def test_harness_runs_each_configuration_between_two_baselines():
    calls = []
    values = iter([1.0, 4.0, 4.0, 3.0, 9.0, 6.0, 1.0, 10.0, 25.0])

    def measure(name: str) -> tuple[float, dict]:
        calls.append(name)
        return next(values), {"call": len(calls)}

    ab = interleave(["b", "c"], 2, measure)
    assert calls == ["none", "b", "none", "c", "none", "b", "none", "c", "none"]
    # 4 / sqrt(1 * 4), 6 / sqrt(9 * 1); 3 / sqrt(4 * 9), 10 / sqrt(1 * 25)
    assert ab.ratios("b") == [2.0, 2.0] and ab.ratios("c") == [0.5, 2.0]
    assert ab.ratio("c") == 1.25 and ab.value("none") == 4.0
    assert ab.last("b") == {"call": 6}
    assert ab.ratios("b", lambda s: 1 / s.value) == [0.5, 0.5]  # a time instead of a rate: the inverse
    assert ab.to_json()["configs"]["c"]["values"] == [3.0, 10.0]


# ---------------------------------------------------------------- replay

def test_replay_records_the_target_output_and_the_draft_guess_at_every_position(traces):
    data = json.loads(traces.read_text())
    (seg,) = data["segments"]
    assert (seg["id"], seg["category"]) == ("1", "copy") and 0 < len(seg["output"]) <= 16
    assert len(seg["draft_top"]) == len(seg["draft_p"]) == len(seg["output"])
    assert all(0 < p <= 1 for p in seg["draft_p"])
    assert {str(t) for t in seg["prompt"] + seg["output"]} <= set(data["pieces"])


def test_replay_predicts_each_configuration_per_category(env, traces, tmp_path):
    out = tmp_path / "pred.json"
    script(env, "tests.bench.replay", "predict", traces, "--configs", "none/auto", "auto/auto", "ngram/auto",
           "model/4", "--json", out)
    pred = json.loads(out.read_text())["predicted"]
    assert list(pred) == ["none/auto", "auto/auto", "ngram/auto", "model/4"]
    for row in pred.values():
        assert ratio_ok(row["copy"]) and ratio_ok(row["overall"])
    # Plain decoding replayed against plain decoding: each step one token at c(1), whatever the curve.
    (seg,) = json.loads(traces.read_text())["segments"]
    assert pred["none/auto"]["overall"] == 1.0 and pred["none/auto"]["steps"] == {"none": len(seg["output"])}
    assert pred["model/4"]["steps"].get("model", 0) > 0


def test_replay_prices_steps_with_the_engines_cost_model(env, traces, tmp_path):
    # A noisy curve: c(3) measured below c(2).  The controller's cost model makes it non-decreasing
    # (c(2) = c(3) = 0.025) and never extrapolates a falling slope, so every wider batch costs 2.5 c(1).
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({"verify": {"1": 0.01, "2": 0.03, "3": 0.02}, "draft": 0.001}))
    r = script(env, "tests.bench.replay", "predict", traces, "--curve", curve, "--configs", "ngram/8",
               "--log", "1")
    assert "c(2)/c(1)=2.50, c(4)/c(1)=2.50, c(8)/c(1)=2.50, c(17)/c(1)=2.50" in r.stdout
    steps = [line for line in r.stdout.splitlines() if line.startswith("k=")]
    assert steps and steps[0].startswith("k=   0 ")


# ---------------------------------------------------------------- the A/B scripts

def test_auto_ab_sets_measured_speedups_beside_the_replay(env, target_path, draft_path, suite, traces, tmp_path):
    r = script(env, "tests.bench.auto_ab", "--target", target_path, "--draft", draft_path, "--prompts", suite,
               "--max-tokens", 8, "--configs", "auto,ngram", "--curve-sweeps", 1, "--curve-context", 64,
               "--traces", traces,
               "--out", tmp_path)
    result = json.loads((tmp_path / "auto_ab.json").read_text())
    assert result["configs"] == ["auto/auto", "ngram/auto"]
    assert list(result["categories"]) == ["copy", "overall"]
    copy = result["categories"]["copy"]
    for c in result["configs"]:
        assert ratio_ok(copy["speedup"][c]) and ratio_ok(copy["replay"][c])
    assert ratio_ok(copy["auto_vs_best_other"]) and copy["plain_tps"] > 0
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert set(curve) == {"verify", "draft", "draft_verify"} and curve["draft"] > 0
    assert "| copy |" in r.stdout


def test_cold_ab_ratios_fresh_processes_to_plain(env, target_path, tmp_path):
    out = tmp_path / "cold.json"
    r = script(env, "tests.bench.cold_ab", "--target", target_path, "--rounds", 1, "--max-tokens", 4,
               "--configs", "ngram", "--prompt", SHORT, "--threads", 1, "--json", out)
    check_ab(json.loads(out.read_text()), ["ngram"], 1)
    assert "| ngram |" in r.stdout


def test_engine_ab_against_llama_cpp_python_and_a_drafter(env, target_path, tmp_path):
    out = tmp_path / "engine.json"
    script(env, "tests.bench.engine_ab", "--target", target_path, "--only", "llama,ngram", "--rounds", 1,
           "--tokens", 8, "--prompt", SHORT, "--threads", 1, "--json", out)
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == ["llama", "ngram"]
    for row in rows:
        check_ab(row, [row["config"]], 1)
    # Greedy through the engine and through llama-cpp-python's own loop: the same tokens.
    assert rows[0]["note"] == "same tokens"


def test_rpc_ab_runs_each_link_and_matches_the_local_output(env, target_path, draft_path, tmp_path):
    out = tmp_path / "rpc.json"
    r = script(env, "tests.bench.rpc_ab", "--target", target_path, "--draft", draft_path, "--tokens", 8,
               "--rtt", 0, "--threads", 1, "--configs", "ngram", "--prompt", SHORT, "--json", out)
    links = json.loads(out.read_text())
    assert list(links) == ["local", "rpc 0 ms"]
    local = links["local"]["prompts"][SHORT]["samples"][0]["tokens"]
    for link in links.values():
        assert link["c1"] > 0 and link["c8"] > 0
        got = link["prompts"][SHORT]
        check_ab(got, ["ngram"], 1)
        assert all(s["tokens"] == local for s in got["samples"])
    assert "| rpc 0 ms |" in r.stdout


def test_server_ab_edit_session_conversation_and_overhead(env, target_path, draft_path, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.py").write_text("def area(w, h):\n    return w * h\n\n\ndef perimeter(w, h):\n"
                                  "    return 2 * (w + h)\n")
    out = tmp_path / "server.json"
    script(env, "tests.bench.server_ab", "--target", target_path, "--draft", draft_path, "--files", 1,
           "--source", src, "--lines", "1,40", "--tokens", 4, "--turn-tokens", 4, "--overhead-tokens", 4,
           "--rounds", 1, "--threads", 1, "--json", out)
    result = json.loads(out.read_text())
    (edit,) = result["edit"]["files"]
    assert edit["file"].endswith("small.py")
    assert all(ratio_ok(edit[k]) for k in ("speedup", "latency_plain_over_auto", "decode_plain_over_auto"))
    assert len(result["conversation"]["ttft_warm_over_cold"]) == 4
    assert all(ratio_ok(x) for x in result["conversation"]["ttft_warm_over_cold"])
    check_ab(result["overhead"], ["server"], 1)


def test_agent_loop_reads_and_writes_through_tools_in_both_arms(env, coder_path, tmp_path):
    out = tmp_path / "agent.json"
    script(env, "tests.bench.agent_loop", "--target", coder_path, "--draft", coder_path, "--tasks", 1,
           "--max-tokens", 8, "--threads", 1, "--json", out, timeout=900)
    result = json.loads(out.read_text())
    assert result["loop"]["ratio"] and all(ratio_ok(v) for v in result["loop"]["ratio"].values())
    assert result["schema"]["ratio"] and ratio_ok(result["schema"]["ratio"])
    assert result["loop"]["tasks"][0]["same_output"]  # greedy: auto writes what none writes


PROBLEM = {"task_id": "T/0", "entry_point": "total", "canonical_solution": "    s = 0\n    for x in items:\n"
           "        s += x\n    return s\n", "prompt": "def total(items):\n    \"\"\"The sum of items.\"\"\"\n"}


def test_infill_ab_measures_each_kind_on_every_arm(env, coder_path, tmp_path):
    problems, out = tmp_path / "problems.jsonl", tmp_path / "infill.json"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    script(env, "tests.bench.infill_ab", "--target", coder_path, "--draft", coder_path, "--tasks", 1,
           "--n-predict", 6, "--threads", 1, "--problems", problems, "--json", out, timeout=900)
    summary = json.loads(out.read_text())["summary"]
    assert set(summary) == {"line", "multi", "span", "edit"}
    for kind in summary.values():
        assert set(kind) == {"none", "ngram", "auto"}
        assert all(arm["p50_s"] > 0 and ratio_ok(arm["vs_plain_specgen"]) for arm in kind.values())


def test_parallel_ab_runs_every_client_count_on_each_configuration(env, target_path, draft_path, tmp_path):
    out = tmp_path / "parallel.json"
    r = script(env, "tests.bench.parallel_ab", "--target", target_path, "--draft", draft_path, "--configs",
               "specgen-p1,specgen-p4-ngram", "--clients", "1,2", "--seconds", 4, "--max-tokens", 8, "--kinds", "chat",
               "--ctx", 1024, "--threads", 1, "--json", out, timeout=600)
    result = json.loads(out.read_text())
    assert list(result["curve"]["seconds"]) == ["1", "2", "4", "8"] and ratio_ok(result["curve"]["goal_factor"])
    assert list(result["runs"]) == ["specgen-p1", "specgen-p4-ngram"] and result["skipped"] == []
    for config, runs in result["runs"].items():
        assert list(runs) == ["1", "2"], config
        for clients, got in runs.items():
            assert got["tok_s"] > 0 and got["seconds"] == 4 and got["ttft_p50_s"] > 0, (config, got)
            assert got["ttft_p95_s"] >= got["ttft_p50_s"] and got["cut"] <= int(clients)  # one in flight a client
        assert sum(got["finished"] for got in runs.values()) >= 1
        # Two clients start from their own places in the rotation: different prompts at the same time.
        two = result["requests"][config]["2"]
        assert {q["client"] for q in two} == {0, 1}
        assert next(q for q in two if q["client"] == 0)["prompt"] != next(q for q in two if q["client"] == 1)["prompt"]
    goals = result["goals"]
    assert len(goals) == 4 and all(list(g["configs"]) == ["specgen-p4-ngram"] for g in goals.values())
    assert ratio_ok(goals["1 client: tok/s / specgen-p1's"]["configs"]["specgen-p4-ngram"]["figure"])
    assert goals["4 clients: tok/s / specgen-p1's"]["configs"]["specgen-p4-ngram"]["figure"] is None  # no 4 clients
    assert "| specgen-p4-ngram | 2 |" in r.stdout and "c(n)/c(1)" in r.stdout


def test_host_time_splits_each_step_into_its_parts(env, target_path, draft_path, tmp_path):
    out = tmp_path / "host.json"
    script(env, "tests.bench.host_time", "--target", target_path, "--draft", draft_path, "--lengths", "2",
           "--drafters", "none,ngram,model,auto", "--temperatures", "0,0.7", "--tokens", 8, "--threads", 1,
           "--json", out)
    results = json.loads(out.read_text())["results"]
    assert [(r["drafter"], r["length"], r["temperature"]) for r in results] == [
        (d, n, t) for t in (0.0, 0.7) for d, n in (("none", 0), ("ngram", 2), ("model", 2), ("auto", 2))]
    for r in results:
        assert set(r["parts_ms"]) == {"draft", "batch", "verify", "controller", "text"}
        assert r["host_ms"] > 0 and r["llama_ms"] > 0 and r["steps"] > 0
        # Every drafter but auto is replayed without decoding (the script stops if a replay parts from its run).
        again = r["replayed"]
        if r["drafter"] == "auto":
            assert again is None
        else:
            assert set(again["parts_ms"]) == set(r["parts_ms"]) and again["host_ms"] > 0


def test_exact_ab_times_both_modes_and_counts_parting_replies(env, target_path, draft_path, suite, tmp_path):
    out = tmp_path / "exact.json"
    script(env, "tests.bench.exact_ab", "--target", target_path, "--draft", draft_path, "--prompts", suite,
           "--category", "copy", "--drafters", "none,ngram", "--tokens", 8, "--rounds", 1, "--heldout", 2,
           "--heldout-tokens", 8, "--threads", 1, "--json", out)
    result = json.loads(out.read_text())
    assert list(result["speed"]) == [f"{p}/{d}" for p in ("code-write", "code-edit", "copy-1") for d in ("none", "ngram")]
    for ab in result["speed"].values():
        check_ab(ab, ["exact"], 1)
    assert result["exact_rows"] >= 1
    assert result["parting"] == {"prompts": 2, "default": {"ngram": result["parting"]["default"]["ngram"]},
                                 "exact": {"ngram": 0}}


def test_startup_times_every_phase_and_process(env, target_path, draft_path, tmp_path):
    out = tmp_path / "startup.json"
    script(env, "tests.bench.startup", "--target", target_path, "--draft", draft_path, "--rounds", 1,
           "--json", out)
    result = json.loads(out.read_text())
    check_ab(result["wall"], ["python -c pass", "specgen run, target (--drafter none)",
                              "specgen run, target, --raw (no chat template, as llama-completion)",
                              "specgen run, pair (auto)"], 1)
    # Each phase is timed by wrapping the function that does it: a phase missing here is one whose
    # function specgen no longer calls by that name.
    assert set(result["phases"]) == {
        "import specgen.cli (run command)", "import llama_cpp + backend init", "GGUF header checks",
        "model loads (target + draft)", "pair compatibility check", "target context", "draft context",
        "calibration (cached)", "chat template + tokenize", "prefill + 1 token", "total in process"}
    memory = result["memory_mib"]
    assert memory["peak RSS, specgen run, pair (auto)"] > memory["peak RSS, python + imports only"] > 0


def test_gpu_check_on_models_at_hand(env, target_path, draft_path, traces, tmp_path):
    out = tmp_path / "check.json"
    script(env, "tests.device.gpu_check", "--out", out, "--models", target_path, draft_path, "--tokens", 8,
           "--rounds", 1, "--max-verify", 4, "--traces", traces)
    report = json.loads(out.read_text())
    assert list(report["verify_seconds"]) == ["1", "2", "3", "4"]
    assert report["draft_token_seconds"] > 0
    assert ratio_ok(report["plain_tok_s"]["ratio_median"])
    assert set(report["replay"]) == {"auto/auto", "ngram/auto", "model/auto", "model/4", "model/8", "ngram/8"}
    assert all(ratio_ok(row["overall"]) for row in report["replay"].values())
    assert [(r["drafter"], r["length"]) for r in report["host_ms_per_step"]] == [
        ("none", 0), ("model", 1), ("model", 4), ("model", 8), ("model", 16)] * 2
    assert all(r["host_ms"] > 0 for r in report["host_ms_per_step"])
    assert len(report["predicted_speedup"]) == 8
    assert all(ratio_ok(v["vs_plain"]) for v in report["predicted_speedup"].values())


# ---------------------------------------------------------------- arguments

@pytest.mark.parametrize("name, args, says", [
    ("tests.bench.engine_ab", ["--target", "t.gguf", "--only", "llama,bogus"], "unknown configuration 'bogus'"),
    ("tests.bench.engine_ab", ["--target", "t.gguf", "--only", "auto"], "need --draft"),
    ("tests.bench.rpc_ab", ["--target", "t", "--draft", "d", "--configs", "model/3"], "unknown configuration"),
    ("tests.bench.server_ab", ["--target", "t", "--lines", "80"], "--lines takes MIN,MAX"),
    ("tests.bench.server_ab", ["--target", "t", "--sections", "edit,typo"], "unknown section 'typo'"),
    ("tests.bench.parallel_ab", ["--configs", "specgen-p1,bogus"], "unknown configuration 'bogus'"),
    ("tests.bench.parallel_ab", ["--clients", "1,x"], "--clients takes counts"),
    ("tests.device.gpu_check", ["--out", "x.json"], "--tokenizer is required"),
])
def test_bad_arguments_fail_before_any_work(env, name, args, says):
    r = script(env, name, *args, ok=False, timeout=60)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_every_script_documents_its_arguments(env):
    for name in ("agent_loop", "auto_ab", "cold_ab", "engine_ab", "exact_ab", "host_time", "infill_ab",
                 "parallel_ab", "replay", "rpc_ab", "server_ab", "startup"):
        r = script(env, f"tests.bench.{name}", "--help", timeout=60)
        assert r.stdout.startswith("usage:"), name
        assert f"python -m tests.bench.{name}" in (ROOT / "tests" / "bench" / "README.md").read_text(), name
