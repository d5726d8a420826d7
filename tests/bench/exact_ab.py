"""--exact against the default, greedy: a script, not a test.

    python -m tests.bench.exact_ab [--target T.gguf] [--draft D.gguf] [--category summarization]
                                   [--drafters none,ngram,auto] [--tokens 192] [--rounds 2]
                                   [--heldout 24] [--heldout-tokens 48] [--json OUT]

Speed: for the code-edit and code-write prompts and the first two Spec-Bench prompts of --category, and for
each drafter, the default and --exact engines run in turn (default, exact, default, ...; `harness.interleave`)
and the table gives each one's decode tok/s, exact's ratio over the default runs around it, and whether each
mode's reply is its plain (`none`) reply.  Both engines
start every run from the same learned state, so neither gains from having seen the answer.

Exactness: over the first --heldout held-out prompts (`heldout-prompts.jsonl`), how many replies of each
drafter part from plain decoding (`none`), with and without --exact.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from specgen.build import EngineOptions, load_engine
from specgen.engine import Engine, Summary
from specgen.llama.chat_template import chat_tokens

from .harness import HERE, PROMPTS, csv_list, interleave, markdown, progress, write_json

MODELS = Path.home() / ".cache" / "specgen-models"
SPEC_BENCH = HERE.parents[2] / "shared" / "bench" / "specbench-dev.jsonl"


def generate(engine: Engine, tokens: list[int], drafter: str, n: int) -> Summary:
    engine.set_drafter(drafter)
    *_, summary = engine.generate(tokens, max_tokens=n)
    assert isinstance(summary, Summary)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--prompts", default=str(SPEC_BENCH), help="Spec-Bench questions to take --category from")
    ap.add_argument("--category", default="summarization")
    ap.add_argument("--drafters", default="none,ngram,auto")
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--heldout", type=int, default=24)
    ap.add_argument("--heldout-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    args = ap.parse_args()
    print(f"$ python -m tests.bench.exact_ab {' '.join(sys.argv[1:])}", file=sys.stderr, flush=True)
    questions = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    texts = dict(PROMPTS)
    for i, q in enumerate([q for q in questions if q["category"] == args.category][:2]):
        texts[f"{args.category}-{i + 1}"] = q["turns"][0]
    drafters = csv_list(args.drafters)
    engines = {mode: load_engine(EngineOptions(args.target, args.draft, drafter="auto", n_ctx=4096,
                                               threads=args.threads, use_mmap=False, exact=mode == "exact"))
               for mode in ("default", "exact")}
    print(f"exact: at most {engines['exact'].ctx.exact_rows} rows a call", file=sys.stderr, flush=True)
    start = {mode: e.learned() for mode, e in engines.items()}
    out: dict = {"args": vars(args), "exact_rows": engines["exact"].ctx.exact_rows, "speed": {}, "parting": {}}
    rows = []
    try:
        for name, text in texts.items():
            tokens = chat_tokens(engines["default"].target, [{"role": "user", "content": text}])
            plain: dict[str, list[int]] = {}  # each mode's reply with drafter none
            for drafter in drafters:
                def measure(mode: str) -> tuple[float, dict]:
                    engines[mode].restore(start[mode])
                    s = generate(engines[mode], tokens, drafter, args.tokens)
                    return s.generated_tokens / s.decode_seconds, {"tokens": s.tokens, "accepted": s.accepted}

                ab = interleave(["exact"], args.rounds, measure, baseline="default",
                                say=progress(f"{name} {drafter}"))
                reply = {mode: ab.last(mode)["tokens"] for mode in engines}
                if drafter == "none":
                    plain = reply
                out["speed"][f"{name}/{drafter}"] = ab.to_json()
                rows.append([name, drafter, f"{ab.value('default'):.1f}", f"{ab.value('exact'):.1f}",
                             f"{ab.ratio('exact'):.3f}x",
                             *("-" if drafter == "none" or m not in plain else "yes" if reply[m] == plain[m] else "no"
                               for m in engines)])
        parting = {mode: {d: 0 for d in drafters if d != "none"} for mode in engines}
        held = [json.loads(line) for line in (HERE / "heldout-prompts.jsonl").read_text().splitlines()]
        held = [q for q in held if len(q["turns"]) == 1][:args.heldout]
        for q in held:
            for mode, engine in engines.items():
                tokens = chat_tokens(engine.target, [{"role": "user", "content": q["turns"][0]}])
                engine.restore(start[mode])
                plain = generate(engine, tokens, "none", args.heldout_tokens).tokens
                for d in parting[mode]:
                    engine.restore(start[mode])
                    parting[mode][d] += generate(engine, tokens, d, args.heldout_tokens).tokens != plain
        out["parting"] = {"prompts": len(held), **parting}
    finally:
        for e in engines.values():
            e.close()
    print(markdown(["prompt", "drafter", "default tok/s", "exact tok/s", "exact / default",
                    "default: reply = none's", "exact: reply = none's"], rows))
    ratios = [float(r[4][:-1]) for r in rows]
    print(f"\nmedian exact / default over {len(ratios)} rows: {statistics.median(ratios):.3f}x; exact decodes at "
          f"most {out['exact_rows']} rows a call")
    print(markdown(["mode"] + [f"{d}: replies parting from none" for d in parting["default"]],
                   [[mode] + [f"{n}/{len(held)}" for n in counts.values()] for mode, counts in parting.items()]))
    write_json(args.json, out)


if __name__ == "__main__":
    main()
