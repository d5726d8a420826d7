"""Host work per step: a script, not a test.

    python -m tests.bench.host_time [--target T.gguf] [--draft D.gguf] [--lengths 1,4,8,16]
                                    [--drafters none,ngram,model,auto] [--tokens 64] [--threads N] [--json OUT]

Everything a speculative step does outside llama.cpp's decode calls (the drafter, filling the verify batch,
reading the target's rows and the accept rule, the controller, text) is measured by the engine itself
(`Step.host`, `--json`'s `host_ms_per_step`).  On this CPU a 1.5B target step takes 50-60 ms and hides it; on a
GPU a 7B step takes 8-15 ms, and every millisecond here is lost there.  The Qwen2.5-Coder 1.5B target has the
7B's 152k-token vocabulary, which is what the sampling path's cost grows with.

For each drafter and fixed draft length (none: plain decoding, length 0), greedy and at temperature 0.7 with
top-k 40, top-p 0.95 and min-p 0.05, the script generates --tokens tokens of the code-edit prompt (which the
n-gram drafter can copy) and prints, over the steps that verified exactly that many draft rows: host
milliseconds per step (median, and the mean of each part), llama.cpp's milliseconds per step, and the host
time as a share of a 10 ms GPU step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from specgen.build import EngineOptions, load_engine
from specgen.engine import HOST_PARTS, Step
from specgen.llama.chat_template import chat_tokens
from specgen.sampling import SamplingParams

from .harness import CODE_EDIT, csv_list, markdown, write_json

MODELS = Path.home() / ".cache" / "specgen-models"
GPU_STEP_MS = 10.0
"""A 7B target's verify step on a GPU, about: what the host time is compared with."""


def measure(engine, tokens: list[int], drafter: str, length: int, temperature: float, n: int) -> dict:
    engine.set_drafter(drafter)
    engine.set_draft_max(length if drafter != "none" else 0)
    steps: list[Step] = []
    for ev in engine.generate(tokens, max_tokens=n, sampling=SamplingParams(temperature=temperature, seed=1),
                              ignore_eos=True):
        if isinstance(ev, Step):
            steps.append(ev)
    rows = length if drafter != "none" else 0
    at = [s for s in steps if s.drafted == rows] or steps
    host = [sum(s.host.values()) * 1e3 for s in at]
    llama = [(s.draft_seconds + s.verify_seconds - sum(v for k, v in s.host.items() if k != "text")) * 1e3
             for s in at]
    return {"drafter": drafter, "length": rows, "temperature": temperature, "steps": len(steps),
            "steps_at_length": sum(s.drafted == rows for s in steps),
            "host_ms": statistics.median(host), "host_ms_mean": statistics.mean(host),
            "parts_ms": {k: statistics.mean(s.host.get(k, 0.0) * 1e3 for s in at) for k in HOST_PARTS},
            "llama_ms": statistics.median(llama), "gpu_share": statistics.median(host) / GPU_STEP_MS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--lengths", default="1,4,8,16")
    ap.add_argument("--drafters", default="none,ngram,model,auto")
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    args = ap.parse_args()
    print(f"$ python -m tests.bench.host_time {' '.join(sys.argv[1:])}", file=sys.stderr, flush=True)
    engine = load_engine(EngineOptions(args.target, args.draft, drafter="auto", n_ctx=4096, threads=args.threads,
                                       use_mmap=False))
    tokens = chat_tokens(engine.target, [{"role": "user", "content": CODE_EDIT}])
    out, rows = [], []
    try:
        for temperature in map(float, csv_list(args.temperatures)):
            for drafter in csv_list(args.drafters):
                for length in ([0] if drafter == "none" else map(int, csv_list(args.lengths))):
                    r = measure(engine, tokens, drafter, length, temperature, args.tokens)
                    out.append(r)
                    parts = " ".join(f"{k} {v:.3f}" for k, v in r["parts_ms"].items())
                    rows.append([drafter, r["length"], f"{temperature:g}", f"{r['steps_at_length']}/{r['steps']}",
                                 f"{r['host_ms']:.3f}", parts, f"{r['llama_ms']:.1f}", f"{r['gpu_share']:.0%}"])
                    print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    finally:
        engine.close()
    print(markdown(["drafter", "draft rows", "T", "steps at that length/all", "host ms/step (median)",
                    "mean ms by part", "llama.cpp ms/step", "of a 10 ms GPU step"], rows))
    write_json(args.json, {"args": vars(args), "results": out})


if __name__ == "__main__":
    main()
