"""Cold starts: the first generation after loading, A/B in one run: a script, not a test.

    python -m tests.bench.cold_ab --target T.gguf [--draft D.gguf] [--rounds 5] [--max-tokens 64]
                                  [--configs auto,ngram] [--prompt code-edit|code-write|TEXT] [--threads N]
                                  [--json OUT]

Each sample is a fresh `specgen run --json --no-mmap`, interleaved with plain decoding (--drafter
none) by the harness, so nothing learned in one generation helps the next: what a script piping one
prompt through `specgen run` gets.  Prints, per configuration, the median over rounds of decode tok/s
over the plain runs around it, with the acceptance and the steps each drafter took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from .harness import csv_list, interleave, markdown, progress, prompt_text, specgen_exe, times, write_json


def run_once(args: argparse.Namespace, drafter: str, prompt: str) -> tuple[float, dict]:
    """(decode tok/s, stats) of one fresh `specgen run`."""
    cmd = [specgen_exe(), "run", "--json", "--no-mmap", "--max-tokens", str(args.max_tokens), "--target",
           args.target, "--drafter", drafter, *(["--draft", args.draft] if args.draft else []),
           *(["--threads", str(args.threads)] if args.threads else []), prompt]
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        sys.exit(f"{drafter}: {p.stderr.strip()[-400:]}")
    stats = json.loads(p.stdout)["stats"]
    return stats["decode_tps"], stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--configs", default="auto,ngram", help="drafters, comma-separated")
    ap.add_argument("--prompt", default="code-edit", help="code-edit, code-write or the prompt's text")
    ap.add_argument("--threads", type=int, help="passed to run (default: its own)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    prompt = prompt_text(args.prompt)
    ab = interleave(csv_list(args.configs), args.rounds, lambda d: run_once(args, d, prompt), say=progress("cold"))
    rows = []
    for c in ab.configs:
        s = ab.last(c)
        acc = f"{s['accepted']}/{s['drafted']}" if s.get("drafted") else "-"
        rows.append([c, times(ab.ratio(c)), ", ".join(f"{x:.2f}" for x in ab.ratios(c)), acc,
                     ", ".join(f"{k} {v}" for k, v in sorted(s.get("drafter_steps", {}).items()))])
    print(markdown([f"config (fresh process, {args.max_tokens} tokens)", f"vs plain, median of {args.rounds}",
                    "runs", "accepted / drafted", "steps by drafter"], rows))
    write_json(args.json, {"max_tokens": args.max_tokens, **ab.to_json()})


if __name__ == "__main__":
    main()
