"""RPC benchmark: speculation over a network link, a script, not a test.

    python tests/bench/rpc_ab.py --target qwen2.5-coder-1.5b.gguf --draft qwen2.5-coder-0.5b.gguf \
        [--tokens 128] [--rtt 0,0.5,2] [--rounds 1]

The target's layers live on one `specgen worker` on 127.0.0.1, reached through
latency_relay.py (tests/) adding 0 / 0.5 / 2 ms of round trip; the draft model
stays local; --no-mmap, greedy.  On each link (and locally, for reference) one
process loads the pair once and runs plain, ngram, auto and model
--draft-max 8 interleaved per prompt, so each ratio to plain is taken on the
same link minutes apart at most.  It also measures c(1) and c(8), one verify
decode of 1 and 8 tokens, and checks every output against the local plain one.

OMP_WAIT_POLICY=passive (unless set): on a shared 2-core machine, OpenMP
threads spinning between graph computations in the worker, the client and
the neighbours' processes starved each other (a 135M model decoded at
0.5-1.3 tok/s with spinning, 83-94 tok/s passive, same minute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # rpc_helpers, latency_relay

CONFIGS = [("plain", "none", 0), ("ngram", "ngram", None), ("auto", "auto", None), ("model8", "model", 8)]


def child(a: argparse.Namespace) -> None:
    """One link: load once, c(n), then every config on every prompt, interleaved; JSON on stdout."""
    from specgen.build import EngineOptions, load_engine
    from specgen.bench.workload import load_questions
    from specgen.engine import Summary
    from specgen.llama.calibrate import measure_verify
    from specgen.llama.chat_template import chat_tokens

    prompts = {"code-edit": load_questions("builtin:code-editing")[0].turns[0],
               "code-write": load_questions("builtin:code-writing")[0].turns[0]}
    rpc = tuple(x for x in a.rpc.split(",") if x)
    engine = load_engine(EngineOptions(target=a.target, draft=a.draft, drafter="auto", use_mmap=False,
                                       threads=a.threads, rpc=rpc, n_ctx=2048))
    cn = measure_verify(engine.ctx, (1, 8))
    engine.reset_cache()
    rows = []
    def generate(tokens: list[int], drafter: str, dmax: int | None, n: int) -> Summary:
        engine.set_drafter(drafter)
        engine.set_draft_max(dmax)
        return next(ev for ev in engine.generate(tokens, max_tokens=n) if isinstance(ev, Summary))

    for r in range(a.rounds):
        for name, text in prompts.items():
            tokens = chat_tokens(engine.target, [{"role": "user", "content": text}])
            generate(tokens, "none", 0, 8)  # warm-up: the prompt's KV, first graphs; not measured
            # plain opens and closes the sequence; its rate is the mean of the two
            for label, drafter, dmax in CONFIGS + CONFIGS[:1]:
                s = generate(tokens, drafter, dmax, a.tokens)
                rows.append({"round": r, "prompt": name, "config": label, "tps": s.decode_tps,
                             "tokens": list(s.tokens), "draft_lengths": s.draft_lengths,
                             "drafter_steps": s.drafter_steps, "accepted": s.accepted, "drafted": s.drafted})
                print(f"  {name:10} {label:7} {s.decode_tps:6.2f} tok/s", file=sys.stderr, flush=True)
    engine.close()
    print(json.dumps({"c1": cn[1], "c8": cn[8], "rows": rows}))


def run_link(a: argparse.Namespace, rpc: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--target", str(a.target), "--draft", str(a.draft),
           "--tokens", str(a.tokens), "--rounds", str(a.rounds), "--threads", str(a.threads), "--rpc", rpc]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"link {rpc or 'local'} failed (exit {r.returncode})")
    return json.loads(r.stdout)


def lengths(d: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(d.items(), key=lambda kv: int(kv[0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--draft", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rtt", default="0,0.5,2", help="added round trips in ms, comma-separated")
    ap.add_argument("--threads", type=int, default=2, help="threads here (draft) and on the worker")
    ap.add_argument("--out", type=Path, help="also keep the raw results (JSON) here")
    ap.add_argument("--table", type=Path, help="print the table of an earlier --out and stop")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rpc", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    if a.table:
        return table(a, json.loads(a.table.read_text()))
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # inherited by the worker and every link
    # Each link calibrates afresh into a cache of its own, not the user's costs.json.
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="rpc_ab-")

    from rpc_helpers import Relay, Worker

    links: dict[str, dict] = {}
    print("link local", file=sys.stderr)
    links["local"] = run_link(a, "")
    w = Worker(threads=a.threads)
    try:
        for rtt in [float(x) for x in a.rtt.split(",")]:
            print(f"link RPC + {rtt} ms RTT", file=sys.stderr)
            relay = Relay(w.endpoint, rtt)
            try:
                links[f"rpc {rtt:g} ms"] = run_link(a, relay.endpoint)
            finally:
                relay.stop()
    finally:
        w.stop()
    if a.out:
        a.out.write_text(json.dumps(links))
    table(a, links)


def table(a: argparse.Namespace, links: dict[str, dict]) -> None:
    ref = {(row["prompt"], row["round"]): row["tokens"] for row in links["local"]["rows"]
           if row["config"] == "plain"}
    print(f"\nspecgen rpc_ab: {a.target.name} (+ {a.draft.name} local), {a.tokens} tokens, greedy, --no-mmap, "
          f"{a.rounds} round(s)\n")
    print("| link | c(1) ms | c(8) ms | c(8)/c(1) |")
    print("|---|---|---|---|")
    for link, res in links.items():
        print(f"| {link} | {res['c1'] * 1e3:.1f} | {res['c8'] * 1e3:.1f} | {res['c8'] / res['c1']:.2f} |")
    print("\n| prompt | link | config | tok/s | x plain (same link) | = local | draft_lengths (len:steps) |")
    print("|---|---|---|---|---|---|---|")
    for prompt in ("code-edit", "code-write"):
        for link, res in links.items():
            rows = [r for r in res["rows"] if r["prompt"] == prompt]
            plain = [r["tps"] for r in rows if r["config"] == "plain"]
            base = sum(plain) / len(plain)
            for label, _, _ in CONFIGS:
                mine = [r for r in rows if r["config"] == label]
                tps = sum(r["tps"] for r in mine) / len(mine)
                same = all(r["tokens"] == ref[(prompt, r["round"])] for r in mine)
                print(f"| {prompt} | {link} | {label} | {tps:.2f} | {tps / base:.2f} | {'yes' if same else 'NO'} | "
                      f"{lengths(mine[-1]['draft_lengths']) if label != 'plain' else ''} |")


if __name__ == "__main__":
    main()
