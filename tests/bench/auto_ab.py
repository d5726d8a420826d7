"""auto against the fixed configurations and plain decoding, per category, A/B in one run: a script.

    python tests/bench/auto_ab.py --target T.gguf --draft D.gguf --out DIR [--limit 1] [--max-tokens 96]
                                  [--configs auto,ngram] [--draft-max auto] [--traces qwen_traces.json]
                                  [--repeat 1]

1. Measures this machine's cost curve before and after the runs, averaged (verify c(n), n = 1..17, at
   a 512-token context as the prompts run, fastest of 7 sweeps; the draft model's per-token cost and its
   catch-up batches) into DIR/curve.json, for the replay.
2. Runs `specgen bench` (greedy, --no-mmap; per prompt plain, config, plain, config, ..., plain on one
   loaded pair) on the Spec-Bench dev set, the built-in suites and the code-edit prompt of engine_ab.py.
3. Prints, per category, each configuration's measured speedup, auto against the best other one, and
   -- given --traces from `replay.py record` -- the replay's prediction for the same prompts, in the
   bench's order (what a drafter learns carries over from one prompt to the next), under the curve of
   step 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
DEV = Path(os.environ.get("SPECBENCH_DEV", HERE.parents[2] / "shared" / "bench" / "specbench-dev.jsonl"))


def measure_curve(target: str, draft: str, out: Path, average_with: Path | None = None) -> None:
    from specgen.llama import calibrate
    from specgen.llama.backend import Context, Model, ModelOptions
    from specgen.llama.calibrate import measure_draft, measure_verify

    # The engine's own calibration is quick (a short context, 3 sweeps); a prediction to be held
    # against measured runs wants the contexts those run at and less noise.
    calibrate.PREFIX, calibrate.REPEATS = 512, 7

    t = Model(target, ModelOptions(use_mmap=False))
    d = Model(draft, ModelOptions(use_mmap=False))
    tctx, dctx = Context(t, 4096), Context(d, 4096)
    curve = {"verify": {str(n): s for n, s in measure_verify(tctx).items()}, "draft": measure_draft(dctx),
             "draft_verify": {str(n): s for n, s in measure_verify(dctx, logits="last").items()}}
    if average_with is not None and average_with.exists():  # before and after the runs: the drift in between
        before = json.loads(average_with.read_text())
        curve = {k: ({n: (s + before[k][n]) / 2 for n, s in v.items()} if isinstance(v, dict) else (v + before[k]) / 2)
                 for k, v in curve.items()}
    out.write_text(json.dumps(curve))
    tctx.close()
    dctx.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=1)
    ap.add_argument("--prompts", action="append", help="suites (default: the Spec-Bench dev set and builtin:all)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each prompt and configuration, medians reported: one prompt's speedup moves by "
                         "a few percent between runs on a shared VM")
    ap.add_argument("--configs", default="auto,ngram")
    ap.add_argument("--draft-max", default="auto")
    ap.add_argument("--traces")
    ap.add_argument("--skip-run", action="store_true", help="only re-read DIR/bench.json")
    ap.add_argument("--remeasure-curve", action="store_true", help="with --skip-run: measure DIR/curve.json again")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from engine_ab import CODE_EDIT

    edit = out / "code-edit.jsonl"
    edit.write_text(json.dumps({"question_id": "code-edit", "category": "code-edit", "turns": [CODE_EDIT]}) + "\n")
    if not args.skip_run:
        measure_curve(args.target, args.draft, out / "curve.json")
        suites = [x for p in (args.prompts or [str(DEV), "builtin:all"]) for x in ("--prompts", p)]
        cmd = ["specgen", "bench", "--target", args.target, "--draft", args.draft, *suites,
               "--prompts", str(edit), "--limit", str(args.limit),
               "--drafter", args.configs, "--draft-max", args.draft_max, "--temperature", "0",
               "--max-tokens", str(args.max_tokens), "--repeat", str(args.repeat), "--no-mmap",
               "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md")]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run([str(Path(sys.executable).parent / "specgen"), *cmd[1:]], check=True)
        measure_curve(args.target, args.draft, out / "curve.json", average_with=out / "curve.json")
    elif args.remeasure_curve:
        measure_curve(args.target, args.draft, out / "curve.json")
    result = json.loads((out / "bench.json").read_text())
    rows = [s for s in result["summary"] if s["temperature"] == 0]
    cats = list(dict.fromkeys(s["category"] for s in rows if s["category"] != "overall")) + ["overall"]
    configs = list(dict.fromkeys(s["config"] for s in rows if s["drafter"] != "none"))
    get = {(s["config"], s["category"]): s for s in rows}
    predicted: dict = {}
    if args.traces:
        import replay

        traces = json.loads(Path(args.traces).read_text())
        order = {}
        for r in sorted(result["runs"], key=lambda r: r["seq"]):
            order.setdefault((r["category"], str(r["question_id"])), len(order))
        segs = [s for s in traces["segments"] if (s["category"], s["id"]) in order]
        traces["segments"] = sorted(segs, key=lambda s: (order[(s["category"], s["id"])], s["turn"]))
        curve = replay.load_curve(str(out / "curve.json"), traces)
        predicted = replay.predict_table(traces, curve, configs, max_tokens=args.max_tokens)
    head = ["category", "plain tok/s", *configs, "auto / best other"]
    if predicted:
        head += [f"replay {c}" for c in configs]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for cat in cats:
        base = get.get(("none", cat))
        cells = [cat, f"{base['decode_tps']:.1f}" if base else "-"]
        sp = {c: get[(c, cat)]["speedup"] for c in configs if (c, cat) in get}
        cells += [f"{sp[c]:.2f}x" if c in sp else "-" for c in configs]
        auto = next((c for c in configs if c.startswith("auto/")), None)
        others = [v for c, v in sp.items() if c != auto]
        cells.append(f"{sp[auto] / max(others):.2f}" if auto in sp and others else "-")
        if predicted:
            cells += [f"{predicted[c].get(cat, 0):.2f}x" if cat in predicted[c] else "-" for c in configs]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
