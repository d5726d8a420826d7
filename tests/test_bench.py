"""`specgen bench` end to end on the tiny real models: outputs, summary maths, flags, compare, bad input.

Timings are never asserted (the machines are shared and noisy); what is
checked is that every reported number follows from the measured runs.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_helpers import one_line_error
from near_tie import NEAR_TIE, top2_gap
from specgen.bench.runner import compare_tokens, recommend
from specgen.bench.workload import builtin_suites, load_questions
from specgen.errors import SpecgenError
from specgen.llama.backend import Model
from specgen.llama.chat_template import chat_tokens

EXE = str(Path(sys.executable).parent / "specgen")

SUITE = [
    {"question_id": 1, "category": "copy",
     "turns": ["Copy this list exactly: apple, banana, cherry, date, elderberry, fig, grape."]},
    {"question_id": "two", "category": "chat", "turns": ["Name three fruits.", "Now name three vegetables."]},
]
CONFIGS = {"ngram/3", "model/3"}
TEMPERATURES = [0.0, 0.7]
REPEAT = 2
MAX_TOKENS = 8
SUMMARY_KEYS = {"pair", "drafter", "draft_max", "temperature", "category", "speedup", "decode_tps", "baseline_tps",
                "acceptance_rate", "mean_accepted", "n_prompts"}


def specgen(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **(env or {})}
    return subprocess.run([EXE, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=full)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


@pytest.fixture(scope="module")
def bench(target_path, draft_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    suite = write_jsonl(out / "questions.jsonl", SUITE)
    r = specgen("bench", "--target", str(target_path), "--draft", str(draft_path), "--prompts", str(suite),
                "--drafter", "ngram/3,model/3", "--temperature", "0,0.7",
                "--repeat", str(REPEAT), "--max-tokens", str(MAX_TOKENS), "--threads", "1",
                "--json", str(out / "r.json"), "--csv", str(out / "r.csv"), "--markdown", str(out / "r.md"))
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "r.json").read_text())
    return {"dir": out, "proc": r, "result": result, "runs": sorted(result["runs"], key=lambda x: x["seq"]),
            "summary": result["summary"]}


def test_json_has_the_documented_keys(bench, target_path, draft_path):
    result = bench["result"]
    assert {"machine", "runs", "summary"} <= set(result)
    m = result["machine"]
    for key in ("cpu", "cores_logical", "threads", "backend", "gpu_layers", "llama_cpp_system_info", "specgen",
                "command"):
        assert key in m, key
    assert m["threads"] == 1
    assert m["command"].startswith("specgen bench --target")
    (pair,) = m["pairs"]
    for side, path in (("target", target_path), ("draft", draft_path)):
        assert pair[side]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for s in bench["summary"]:
        assert SUMMARY_KEYS <= set(s)
    cats = {(s["config"], s["temperature"]): set() for s in bench["summary"]}
    for s in bench["summary"]:
        cats[(s["config"], s["temperature"])].add(s["category"])
    assert set(cats) == {(c, t) for c in CONFIGS | {"none"} for t in TEMPERATURES}
    assert all(v == {"copy", "chat", "overall"} for v in cats.values())
    # One run row per prompt x configuration x temperature x repeat (plus the interleaved baselines).
    config_rows = [r for r in bench["runs"] if r["role"] == "config"]
    assert len(config_rows) == len(SUITE) * len(CONFIGS) * len(TEMPERATURES) * REPEAT
    turns = {q["question_id"]: len(q["turns"]) for q in SUITE}
    assert all(r["turns"] == turns[r["question_id"]] for r in bench["runs"])
    # The counts against the tokens each run emitted: a plain run takes one verify step per token, the
    # others at least one per draft (3 at most) plus the target's token; a step that verified no draft
    # counts under "none", the others under the configuration's drafter.
    for r in bench["runs"]:
        n = len(r["tokens"])
        lengths = {int(k): v for k, v in r["draft_lengths"].items()}
        assert r["generated_tokens"] == n and max(lengths) <= 3 and sum(lengths.values()) == r["steps"]
        if r["role"] == "baseline":
            assert r["steps"] == n and r["drafter_steps"] == {"none": n}, r
        else:
            assert n / (3 + 1) <= r["steps"] <= n, r
            assert r["drafter_steps"] == {k: v for k, v in ((r["drafter"], r["steps"] - lengths.get(0, 0)),
                                                            ("none", lengths.get(0, 0))) if v}, r


def test_runs_are_interleaved_and_speedup_is_the_ratio_of_rates(bench):
    runs = bench["runs"]
    assert [r["seq"] for r in runs] == list(range(len(runs)))
    for i, r in enumerate(runs):
        assert r["decode_tps"] == pytest.approx(r["generated_tokens"] / r["decode_seconds"], rel=2e-3)
        if r["role"] == "baseline":
            assert r["drafter"] == "none" and r["drafted"] == 0 and r["speedup"] == 1.0
            continue
        before, after = runs[i - 1], runs[i + 1]  # A B A: a plain run on each side
        for b in (before, after):
            assert b["role"] == "baseline"
            assert (b["question_id"], b["temperature"], b["repeat"]) == (r["question_id"], r["temperature"],
                                                                         r["repeat"])
        assert r["baseline_tps"] == pytest.approx(geomean([before["decode_tps"], after["decode_tps"]]), rel=1e-3)
        assert r["speedup"] == pytest.approx(r["decode_tps"] / r["baseline_tps"], rel=1e-3)


def test_summary_rows_follow_from_the_run_rows(bench):
    runs, summary = bench["runs"], bench["summary"]
    for s in summary:
        rows = [r for r in runs if r["pair"] == s["pair"] and r["config"] == s["config"]
                and r["temperature"] == s["temperature"] and s["category"] in ("overall", r["category"])]
        by_q: dict = {}
        for r in rows:
            by_q.setdefault(str(r["question_id"]), []).append(r)
        assert s["n_prompts"] == len(by_q) == (len(SUITE) if s["category"] == "overall" else 1)

        def per_question(key):
            return geomean(statistics.median(r[key] for r in qr) for qr in by_q.values())

        assert s["speedup"] == pytest.approx(per_question("speedup"), rel=1e-3)
        assert s["decode_tps"] == pytest.approx(per_question("decode_tps"), rel=1e-3)
        assert s["baseline_tps"] == pytest.approx(per_question("baseline_tps"), rel=1e-3)
        drafted = sum(r["drafted"] for r in rows)
        assert s["acceptance_rate"] == pytest.approx(sum(r["accepted"] for r in rows) / drafted if drafted else 0,
                                                     abs=1e-4)
        assert s["mean_accepted"] == pytest.approx(sum(r["generated_tokens"] for r in rows)
                                                   / sum(r["steps"] for r in rows), abs=1e-4)
        if s["drafter"] == "none":
            assert s["speedup"] == 1.0 and s["mean_accepted"] == 1.0
    # The model drafter's tokens are partly accepted: more than one token per verify step.
    model = [s for s in summary if s["drafter"] == "model" and s["category"] == "overall"]
    assert all(s["mean_accepted"] > 1.0 for s in model)


def _context_at(model: Model, question: dict, tokens: list[int], k: int) -> list[int]:
    """What the target had read when a run of *question* emitted its token *k*: the prompt of
    that turn (earlier replies as the bench sent them back) and the turn's tokens before k."""
    messages, offset = [], 0
    for turn in question["turns"]:
        messages.append({"role": "user", "content": turn})
        rest = tokens[offset:]
        # Each turn ends after MAX_TOKENS tokens or on end-of-generation, which it includes.
        n = next((i + 1 for i, t in enumerate(rest[:MAX_TOKENS]) if model.is_eog(t)), min(MAX_TOKENS, len(rest)))
        if k < offset + n:
            return chat_tokens(model, messages) + rest[:k - offset]
        reply = b"".join(model.piece(t) for t in rest[:n] if not model.is_eog(t)).decode("utf-8", "replace")
        messages.append({"role": "assistant", "content": reply})
        offset += n
    raise AssertionError(f"token {k} is past the end of the conversation ({offset} tokens)")


def test_greedy_output_equals_the_baseline_except_at_near_ties(bench, target_path):
    runs = bench["runs"]
    greedy = [r for r in runs if r["role"] == "config" and r["temperature"] == 0]
    questions = {str(q["question_id"]): q for q in SUITE}
    model = Model(target_path)
    try:
        for r in greedy:
            base = runs[r["seq"] - 1]
            same, at = r["same_as_baseline"], r["diverged_at"]
            # The flag and the place of divergence, checked on the tokens themselves: equal before it, not at it.
            assert same == (r["tokens"] == base["tokens"]) == (at is None), r
            if not same:  # speculative decoding is lossless at temperature 0: only a near-tie may differ
                mine, theirs = r["tokens"], base["tokens"]
                assert mine[:at] == theirs[:at] and mine[at:at + 1] != theirs[at:at + 1], r
                gap = top2_gap(model, _context_at(model, questions[str(r["question_id"])], base["tokens"], at))
                assert gap < NEAR_TIE, (f"{r['config']} on question {r['question_id']} diverged at token {at} "
                                        f"where the target was sure (top-2 gap {gap:.3f})")
    finally:
        model.close()
    assert all(r["same_as_baseline"] is None for r in runs if r["temperature"] > 0 or r["role"] == "baseline")
    for s in bench["summary"]:
        if s["drafter"] != "none" and s["temperature"] == 0:
            rows = [r for r in greedy if r["config"] == s["config"] and s["category"] in ("overall", r["category"])]
            assert s["n_diverged"] == sum(not r["same_as_baseline"] for r in rows)
        else:
            assert s["n_diverged"] is None


def _overall(config: str, speedup: float, temperature: float = 0.0) -> dict:
    drafter, _, draft_max = config.partition("/")
    return {"pair": "p", "category": "overall", "drafter": drafter, "temperature": temperature,
            "draft_max": draft_max or 0, "speedup": speedup}


def test_recommendation_is_the_best_overall_speedup_and_only_when_it_pays():
    summary = [_overall("none", 1.0), _overall("ngram/3", 1.31), _overall("model/auto", 1.12),
               _overall("model/3", 2.5, temperature=0.7)]  # not greedy: not what greedy runs are told
    rec = recommend(summary, "p")
    assert (rec.config.drafter, rec.config.draft_max, rec.speedup) == ("ngram", 3, 1.31)
    assert rec.line() == "on this machine use --drafter ngram --draft-max 3: 1.31x overall (greedy)"

    slower = [_overall("none", 1.0), _overall("ngram/3", 0.93), _overall("model/auto", 0.71)]
    rec = recommend(slower, "p")
    assert rec.config.baseline and rec.speedup == 1.0 and (rec.best.drafter, rec.best_speedup) == ("ngram", 0.93)
    assert rec.line() == ("on this machine speculation does not pay: use --drafter none "
                          "(best was --drafter ngram --draft-max 3 at 0.93x overall, greedy)")


def test_compare_tokens_reports_the_first_difference():
    assert compare_tokens([1, 2, 3], [1, 2, 3]) == (True, None)
    assert compare_tokens([1, 2, 3], [1, 5, 3]) == (False, 1)
    assert compare_tokens([1, 2, 3], [1, 2]) == (False, 2)


def test_csv_markdown_and_terminal_agree_with_the_json(bench):
    summary = bench["summary"]
    with open(bench["dir"] / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(summary)
    for row, s in zip(rows, summary):
        assert (row["config"], row["category"], float(row["temperature"])) == (s["config"], s["category"],
                                                                                s["temperature"])
        assert float(row["speedup"]) == s["speedup"] and float(row["mean_accepted"]) == s["mean_accepted"]

    (rec,) = bench["result"]["recommendations"]
    assert rec["line"].startswith("on this machine")
    # Which way it goes depends on the measured speed, so the answer is worked out here from the summary:
    # the greedy configuration with the best overall speedup, recommended only when it beats plain decoding.
    best = max((s for s in summary if s["category"] == "overall" and s["temperature"] == 0
                and s["drafter"] != "none"), key=lambda s: s["speedup"])
    assert (rec["best_drafter"], rec["best_draft_max"], rec["best_speedup"]) == (best["drafter"], best["draft_max"],
                                                                                 best["speedup"])
    assert f"--drafter {best['drafter']} --draft-max {best['draft_max']}" in rec["line"]
    if best["speedup"] > 1.0:
        assert (rec["drafter"], rec["draft_max"], rec["speedup"]) == (best["drafter"], best["draft_max"],
                                                                      best["speedup"])
    else:
        assert (rec["drafter"], rec["speedup"]) == ("none", 1.0) and "does not pay" in rec["line"]

    md = (bench["dir"] / "r.md").read_text()
    headers = [line for line in md.splitlines() if line.startswith("| config |")]
    assert len(headers) == len(TEMPERATURES)
    assert all(h.startswith("| config | copy | chat | overall | #mean accepted |") for h in headers)
    highlighted = [line for line in md.splitlines() if line.startswith("| **")]
    assert len(highlighted) == len(TEMPERATURES)
    assert rec["line"] in md and "sha256" in md

    out = bench["proc"].stdout
    assert rec["line"] in out
    assert "speedup over plain decoding" in out  # the terminal bar chart, as --plot was not given
    greedy_overall = next(s for s in summary if s["config"] == "ngram/3" and s["temperature"] == 0
                          and s["category"] == "overall")
    assert f"{greedy_overall['speedup']:.2f}x" in out
    # Piped at the default 80 columns: the table fits, no header cut to an ellipsis, every label whole.
    assert "…" not in out
    assert max(len(line) for line in out.splitlines() if line != rec["line"]) <= 80
    for name in ["copy", "chat", "overall", "#mean accepted", "ngram/3", "model/3"]:
        assert name in out


def test_piped_progress_is_one_plain_line_per_run(bench):
    """Off a terminal there is no bar: each run gets a line with its rate and its configuration's running speedup."""
    lines = bench["proc"].stderr.strip().splitlines()
    progress = [ln for ln in lines if ln.startswith("[")]
    assert all(ln.startswith("wrote ") for ln in lines if not ln.startswith("["))
    runs = bench["runs"]
    assert len(progress) == len(runs)
    seen: dict[tuple, list[float]] = {}
    for i, (line, run) in enumerate(zip(progress, runs)):
        mode = "greedy" if run["temperature"] == 0 else f"T={run['temperature']:g}"
        head = (f"[{i + 1}/{len(runs)}] {run['category']} #{run['question_id']} {run['config']} {mode}: "
                f"{run['decode_tps']:.1f} tok/s")
        if run["role"] == "baseline":
            assert line == head
        else:
            sp = seen.setdefault((run["temperature"], run["config"]), [])
            sp.append(run["speedup"])
            assert line == f"{head}, {run['speedup']:.2f}x (running {geomean(sp):.2f}x over {len(sp)})"


def test_a_wide_table_is_transposed_to_fit(bench):
    """Many categories: categories go down and configurations across, in groups that fit the width."""
    from rich.console import Console

    from specgen.bench.report import tables

    result = copy.deepcopy(bench["result"])
    extra = []
    for s in result["summary"]:
        if s["category"] == "chat":
            for name in ["extraction", "summarization", "translation", "math_reasoning", "code-editing"]:
                extra.append({**s, "category": name})
    result["summary"] += extra
    console = Console(width=80, record=True, color_system=None)
    console.print(tables(result, 80))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    # Transposed: a line starts with each category, and the configurations head the columns.
    for name in ["extraction", "math_reasoning", "code-editing", "overall", "decode tok/s"]:
        assert any(line.startswith(name) for line in text.splitlines()), name
    assert any("ngram/3" in line and "model/3" in line for line in text.splitlines())
    wide = Console(width=300, record=True, color_system=None)
    wide.print(tables(result, 300))
    assert any(line.startswith("config") and "math_reasoning" in line for line in wide.export_text().splitlines())


def test_seed_repeats_a_sampling_run(target_path, tmp_path):
    suite = write_jsonl(tmp_path / "q.jsonl", [SUITE[0]])

    def tokens(seed: str) -> list:
        out = tmp_path / f"r{seed}-{len(list(tmp_path.iterdir()))}.json"
        r = specgen("bench", "--target", str(target_path), "--prompts", str(suite), "--drafter", "ngram",
                    "--temperature", "1.0", "--max-tokens", "16", "--threads", "1", "--seed", seed,
                    "--json", str(out))
        assert r.returncode == 0, r.stderr
        result = json.loads(out.read_text())
        assert result["settings"]["seed"] == int(seed)
        return [run["tokens"] for run in sorted(result["runs"], key=lambda x: x["seq"])]

    first = tokens("5")
    assert tokens("5") == first
    assert tokens("6") != first


def test_compare_puts_two_results_side_by_side(bench, tmp_path):
    a = bench["dir"] / "r.json"
    other = copy.deepcopy(bench["result"])
    other["machine"]["cpu"] = "Imaginary CPU 9000"
    row = next(s for s in other["summary"] if s["config"] == "model/3" and s["category"] == "overall"
               and s["temperature"] == 0)
    row["speedup"] = 9.87
    b = tmp_path / "b.json"
    b.write_text(json.dumps(other))
    r = specgen("bench", "compare", str(a), str(b))
    assert r.returncode == 0, r.stderr
    assert "Imaginary CPU 9000" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("model/3") and "9.87x" in ln)
    old = next(s for s in bench["summary"] if s["config"] == "model/3" and s["category"] == "overall"
               and s["temperature"] == 0)
    assert f"{old['speedup']:.2f}x → 9.87x" in line

    not_result = tmp_path / "x.json"
    not_result.write_text('{"hello": 1}')
    assert "not a `specgen bench --json` result" in one_line_error(specgen("bench", "compare", str(a),
                                                                            str(not_result)))
    assert "no such file" in one_line_error(specgen("bench", "compare", str(a), str(tmp_path / "missing.json")))


def test_plot_draws_a_png(bench, tmp_path):
    from specgen.bench.report import write_plot  # matplotlib is in the test extra

    out = tmp_path / "speedup.png"
    write_plot(bench["result"], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_output_that_fails_midway_leaves_the_old_file_whole(bench, tmp_path):
    from specgen.bench.report import write_csv, write_plot

    broken = copy.deepcopy(bench["result"])
    del broken["summary"][-1]["drafter_steps"]  # the last row cannot be written
    out = tmp_path / "r.csv"
    out.write_text("an earlier run\n")
    with pytest.raises(KeyError):
        write_csv(broken, out)
    assert out.read_text() == "an earlier run\n"
    svg = tmp_path / "speedup.svg"  # a plot takes the format its name asks for
    write_plot(bench["result"], svg)
    assert b"<svg" in svg.read_bytes()[:400]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_builtin_suites_run_and_save_stores_the_recommendation(target_path, draft_path, tmp_path):
    config = tmp_path / "config" / "specgen" / "models.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"version": 1, "models": {
        "tiny-t": {"path": str(target_path), "family": "smollm2"},
        "tiny-d": {"path": str(draft_path), "family": "smollm2"}},
        "pairs": {"tiny": {"target": "tiny-t", "draft": "tiny-d"}}}))
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "r.json"
    r = specgen("bench", "--pair", "tiny", "--prompts", "builtin:all", "--limit", "1", "--drafter", "ngram",
                "--max-tokens", "8", "--threads", "1", "--save", "--json", str(out), env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    cats = {s["category"] for s in result["summary"]}
    assert cats == {"code-writing", "code-editing", "chat", "summarization", "overall"}
    (rec,) = result["recommendations"]
    assert rec["pair"] == "tiny"
    saved = yaml.safe_load(config.read_text())["pairs"]["tiny"]
    assert (saved["drafter"], saved["draft_max"]) == (rec["drafter"], rec["draft_max"])
    assert "saved for tiny" in r.stderr


def test_builtin_suites_are_well_formed():
    suites = builtin_suites()
    assert {"code-writing", "code-editing", "chat", "summarization"} <= set(suites)
    for name in suites:
        qs = load_questions(f"builtin:{name}")
        assert 5 <= len(qs) <= 8, name
        assert {q.category for q in qs} == {name}
    for q in load_questions("builtin:code-editing"):
        # The model rewrites code it was given: the prompt carries a whole module.
        (code,) = re.findall(r"```\w*\n(.*?)```", q.turns[0], re.S)
        assert 60 <= len(code.splitlines()) <= 100, q.question_id
    everything = load_questions("builtin:all")
    assert len({(q.category, q.question_id) for q in everything}) == len(everything)
    assert any(len(q.turns) > 1 for q in everything)


def test_prompt_sources_combine_in_order(tmp_path):
    qs = load_questions(["builtin:chat", "builtin:code-editing"])
    assert [q.category for q in qs] == sorted([q.category for q in qs], key=["chat", "code-editing"].index)
    f = write_jsonl(tmp_path / "q.jsonl", SUITE)
    with pytest.raises(SpecgenError, match="appears twice"):
        load_questions([str(f), str(f)])


def test_a_conversation_that_cannot_fit_fails_before_running(target_path):
    line = one_line_error(specgen("bench", "--target", str(target_path), "--prompts", "builtin:code-editing",
                                  "--drafter", "ngram", "--ctx", "512", "--threads", "1"))
    assert "--ctx" in line and "code-editing" in line


@pytest.mark.parametrize("lines, expect", [
    (['{"question_id": 1, "category": "a", "turns": ["hi"]}', "", '{"question_id": 2, "category": "a", "turns"'],
     ":3: not valid JSON"),
    (['{"question_id": 1, "category": "a", "turns": ["hi"]}', '{"question_id": 2, "category": "a"}'],
     ":2: `turns` must be"),
    (['["not", "an", "object"]'], ":1: expected a JSON object"),
    (['{"question_id": 1, "category": "a", "turns": ["hi"]}', '{"question_id": 1, "category": "a", "turns": ["x"]}'],
     ":2: question_id 1 appears twice"),
    ([], "no questions"),
])
def test_malformed_prompt_files_name_the_line(tmp_path, target_path, lines, expect):
    f = write_jsonl(tmp_path / "q.jsonl", lines)
    line = one_line_error(specgen("bench", "--target", str(target_path), "--prompts", str(f)))
    assert expect in line and str(f) in line


def test_bad_inputs_fail_in_one_line_before_loading(tmp_path, target_path, draft_path):
    good = write_jsonl(tmp_path / "q.jsonl", SUITE)
    base = ("bench", "--target", str(target_path), "--draft", str(draft_path))
    cases = [
        (("--prompts", str(tmp_path / "missing.jsonl")), "no such file"),
        (("--prompts", "builtin:poetry"), "code-editing"),
        (("--prompts", str(good), "--categories", "copy,poetry"), "unknown category 'poetry'"),
        (("--drafter", "magic"), "unknown drafter 'magic'"),
        (("--draft-max", "lots"), "--draft-max"),
        (("--drafter", "ngram/lots"), "--drafter 'ngram/lots'"),
        (("--drafter", "magic/4"), "unknown drafter 'magic'"),
        (("--temperature", "-1"), "--temperature"),
        (("--repeat", "0"), "--repeat"),
        (("--json", str(tmp_path / "no" / "such" / "dir" / "r.json")), "does not exist"),
        (("--save",), "--pair"),
    ]
    for args, expect in cases:
        line = one_line_error(specgen(*base, *args))
        assert expect in line, (args, line)
    line = one_line_error(specgen(*base, "--prompts", str(good), "--categories", "poetry"))
    assert "copy" in line and "chat" in line  # the categories there are
    assert "--drafter model" in one_line_error(specgen("bench", "--target", str(target_path), "--drafter", "model",
                                                       "--prompts", str(good)))


def test_plot_without_matplotlib_is_a_one_line_error(tmp_path, target_path, monkeypatch):
    # Hide the installed matplotlib from the child, as on a machine without the extra.
    blocker = tmp_path / "block" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(blocker.parent),
                                                                  os.environ.get("PYTHONPATH")])))
    line = one_line_error(specgen("bench", "--target", str(target_path), "--plot", str(tmp_path / "p.png")))
    assert "matplotlib" in line and "plot" in line


def test_drafter_items_fix_their_own_draft_length():
    from specgen.bench.workload import Config, make_configs

    assert make_configs(["auto", "ngram/16", "model/3", "none"], [None, 4]) == [
        Config("auto", None), Config("auto", 4), Config("ngram", 16), Config("model", 3)]
    assert make_configs(["ngram/auto", "ngram"], [None]) == [Config("ngram", None)]
