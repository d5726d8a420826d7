"""auto against the fixed configurations and plain decoding, per category, with the replay's prediction: a script.

    python -m tests.bench.auto_ab --target T.gguf --draft D.gguf --out DIR [--prompts SUITE ...] [--limit 1]
                                  [--max-tokens 96] [--configs auto,ngram] [--draft-max auto] [--repeat 1]
                                  [--traces traces.json]

1. Measures this machine's cost curve before and after the runs, averaged, into DIR/curve.json
   (`replay.measure_curve`: at a 512-token context as the prompts run, fastest of 7 sweeps; --curve-context,
   --curve-sweeps).
2. Runs `specgen bench` (greedy, --no-mmap; per prompt plain, config, plain, config, ..., plain on one
   loaded pair) on the suites given: `specgen bench --prompts` specs (a Spec-Bench question.jsonl,
   builtin:NAME) or the harness's code-edit and code-write prompts by name (default: builtin:all and
   code-edit).
3. Prints, per category, each configuration's measured speedup, auto against the best other one, and
   -- given --traces from `replay record` -- the replay's prediction for the same prompts, in the
   bench's order (what a drafter learns carries over from one prompt to the next), under the curve of
   step 1.  DIR/auto_ab.json holds the same table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from . import replay
from .harness import PROMPTS, code_suite, markdown, specgen_exe, times, write_json


def average(a: dict, b: dict) -> dict:
    """Two curves measured before and after the runs: the drift in between, halved."""
    return {k: ({n: (s + b[k][n]) / 2 for n, s in v.items()} if isinstance(v, dict) else (v + b[k]) / 2)
            for k, v in a.items()}


def predicted(result: dict, traces_path: str, curve_path: Path, configs: list[str], max_tokens: int) -> dict:
    """The replay's speedups for the configurations, over the traces of the prompts the bench ran, in its order."""
    traces = json.loads(Path(traces_path).read_text())
    order: dict[tuple[str, str], int] = {}
    for r in sorted(result["runs"], key=lambda r: r["seq"]):
        order.setdefault((r["category"], str(r["question_id"])), len(order))
    segs = [s for s in traces["segments"] if (s["category"], s["id"]) in order]
    traces["segments"] = sorted(segs, key=lambda s: (order[(s["category"], s["id"])], s["turn"]))
    return replay.predict_table(traces, replay.load_curve(str(curve_path), traces), configs, max_tokens=max_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--out", required=True, help="a folder for the curve, the bench's result and the table")
    ap.add_argument("--limit", type=int, default=1, help="prompts per category")
    ap.add_argument("--prompts", action="append",
                    help=f"a suite, or one of {', '.join(PROMPTS)}; repeatable (default: builtin:all and code-edit)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each prompt and configuration, medians reported: one prompt's speedup moves by "
                         "a few percent between runs on a shared VM")
    ap.add_argument("--configs", default="auto,ngram", help="drafters, as `specgen bench --drafter`")
    ap.add_argument("--draft-max", default="auto")
    ap.add_argument("--traces", help="traces of the same prompts, from `replay record`")
    ap.add_argument("--curve-sweeps", type=int, default=7, help="measure each size of the curve this many times")
    ap.add_argument("--curve-context", type=int, default=512, help="measure the curve after this many tokens")
    ap.add_argument("--skip-run", action="store_true", help="only re-read DIR/bench.json")
    ap.add_argument("--remeasure-curve", action="store_true", help="with --skip-run: measure DIR/curve.json again")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curve = out / "curve.json"

    def measure_curve() -> dict:
        return replay.measure_curve(args.target, args.draft, prefix=args.curve_context, repeats=args.curve_sweeps)

    if not args.skip_run:
        before = measure_curve()
        suites = [str(code_suite(out / f"{p}.jsonl", [p])) if p in PROMPTS else p
                  for p in args.prompts or ["builtin:all", "code-edit"]]
        cmd = [specgen_exe(), "bench", "--target", args.target, "--draft", args.draft,
               *(x for p in suites for x in ("--prompts", p)), "--limit", str(args.limit),
               "--drafter", args.configs, "--draft-max", args.draft_max, "--temperature", "0",
               "--max-tokens", str(args.max_tokens), "--repeat", str(args.repeat), "--no-mmap",
               "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md")]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        if subprocess.run(cmd, stdout=sys.stderr).returncode:
            sys.exit("auto_ab: specgen bench failed")
        curve.write_text(json.dumps(average(measure_curve(), before)))
    elif args.remeasure_curve:
        curve.write_text(json.dumps(measure_curve()))
    result = json.loads((out / "bench.json").read_text())
    rows = [s for s in result["summary"] if s["temperature"] == 0]
    cats = list(dict.fromkeys(s["category"] for s in rows if s["category"] != "overall")) + ["overall"]
    configs = list(dict.fromkeys(s["config"] for s in rows if s["drafter"] != "none"))
    get = {(s["config"], s["category"]): s for s in rows}
    replayed = predicted(result, args.traces, curve, configs, args.max_tokens) if args.traces else {}
    auto = next((c for c in configs if c.startswith("auto/")), None)
    table: dict[str, dict] = {}
    for cat in cats:
        base = get.get(("none", cat))
        sp = {c: get[(c, cat)]["speedup"] for c in configs if (c, cat) in get}
        others = [v for c, v in sp.items() if c != auto]
        table[cat] = {"plain_tps": base["decode_tps"] if base else None, "speedup": sp,
                      "auto_vs_best_other": sp[auto] / max(others) if auto in sp and others else None,
                      "replay": {c: replayed[c][cat] for c in configs if cat in replayed.get(c, {})}}
    head = ["category", "plain tok/s", *configs, "auto / best other", *(f"replay {c}" for c in configs if replayed)]
    print(markdown(head, [[cat, f"{t['plain_tps']:.1f}" if t["plain_tps"] else "-",
                           *(times(t["speedup"].get(c)) for c in configs),
                           f"{t['auto_vs_best_other']:.2f}" if t["auto_vs_best_other"] else "-",
                           *(times(t["replay"].get(c)) for c in configs if replayed)] for cat, t in table.items()]))
    write_json(out / "auto_ab.json", {"configs": configs, "categories": table})


if __name__ == "__main__":
    main()
