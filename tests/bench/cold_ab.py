"""Cold starts: the first generation after loading, A/B in one run: a script, not a test.

    python tests/bench/cold_ab.py --target T.gguf [--draft D.gguf] [--rounds 5] [--max-tokens 64]
                                  [--configs auto,ngram] [--prompt code-edit|code-write|TEXT]

Each round starts a fresh `specgen run --json --no-mmap` per configuration, plain decoding
(--drafter none) between every two, so nothing learned in one generation helps the next:
what a script piping one prompt through `specgen run` gets.  Prints, per configuration, the
median over rounds of decode tok/s over the mean of the two plain runs around it, with the
acceptance and the steps each drafter took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def run_once(exe: str, args: argparse.Namespace, drafter: str, prompt: str) -> dict:
    cmd = [exe, "run", "--json", "--no-mmap", "--max-tokens", str(args.max_tokens), "--target", args.target,
           "--drafter", drafter, *(["--draft", args.draft] if args.draft else []), prompt]
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        sys.exit(f"{drafter}: {p.stderr.strip()[-400:]}")
    return json.loads(p.stdout)["stats"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--configs", default="auto,ngram")
    ap.add_argument("--prompt", default="code-edit")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from engine_ab import CODE_EDIT, CODE_WRITE

    prompt = {"code-edit": CODE_EDIT, "code-write": CODE_WRITE}.get(args.prompt, args.prompt)
    exe = str(Path(sys.executable).parent / "specgen")
    configs = args.configs.split(",")
    ratios: dict[str, list[float]] = {c: [] for c in configs}
    last: dict[str, dict] = {}
    plain = run_once(exe, args, "none", prompt)["decode_tps"]
    for r in range(args.rounds):
        for c in configs:
            stats = run_once(exe, args, c, prompt)
            after = run_once(exe, args, "none", prompt)["decode_tps"]
            ratios[c].append(stats["decode_tps"] / ((plain + after) / 2))
            last[c] = stats
            plain = after
            print(f"round {r + 1} {c}: {stats['decode_tps']:.1f} tok/s, {ratios[c][-1]:.2f}x plain", file=sys.stderr)
    print(f"| config (fresh process, {args.max_tokens} tokens) | vs plain, median of {args.rounds} | runs | "
          "accepted / drafted | steps by drafter |")
    print("|---|---:|---|---:|---|")
    for c in configs:
        s = last[c]
        acc = f"{s['accepted']}/{s['drafted']}" if s.get("drafted") else "-"
        print(f"| {c} | {statistics.median(ratios[c]):.2f}x | {', '.join(f'{x:.2f}' for x in ratios[c])} | {acc} | "
              + ", ".join(f"{k} {v}" for k, v in sorted(s.get("drafter_steps", {}).items())) + " |")


if __name__ == "__main__":
    main()
