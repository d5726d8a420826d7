"""RPC benchmark: speculation over a network link, a script, not a test.

    python -m tests.bench.rpc_ab --target qwen2.5-coder-1.5b.gguf --draft qwen2.5-coder-0.5b.gguf \
        [--tokens 128] [--rtt 0,0.5,2] [--rounds 1] [--configs ngram,auto,model/8] \
        [--prompt code-edit --prompt code-write] [--json OUT] [--table OUT]

The target's layers live on one `specgen worker` on 127.0.0.1, reached through
tests/latency_relay.py adding 0 / 0.5 / 2 ms of round trip; the draft model
stays local; --no-mmap, greedy.  On each link (and locally, for reference) one
process loads the pair once and runs each configuration interleaved with
plain decoding by the harness, per prompt, so each ratio to plain is taken on
the same link minutes apart at most.  It also measures c(1) and c(8), one
verify decode of 1 and 8 tokens, and checks every output against the local
plain one.

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

from .harness import csv_list, interleave, markdown, progress, prompt_text, write_json

CONFIGS = {"ngram": ("ngram", None), "auto": ("auto", None), "model/8": ("model", 8)}
"""Each configuration: drafter and draft length (None: the controller's)."""


def child(a: argparse.Namespace) -> None:
    """One link: load once, c(n), then every configuration on every prompt, interleaved; JSON on stdout."""
    from specgen.build import EngineOptions, load_engine
    from specgen.engine import Summary
    from specgen.llama.calibrate import measure_verify
    from specgen.llama.chat_template import chat_tokens

    rpc = tuple(csv_list(a.rpc))
    engine = load_engine(EngineOptions(target=a.target, draft=a.draft, drafter="auto", use_mmap=False,
                                       threads=a.threads, rpc=rpc, n_ctx=2048))
    cn = measure_verify(engine.ctx, (1, 8))
    engine.reset_cache()
    configs = {"none": ("none", 0), **{c: CONFIGS[c] for c in csv_list(a.configs)}}

    def generate(tokens: list[int], config: str, n: int) -> Summary:
        drafter, dmax = configs[config]
        engine.set_drafter(drafter)
        engine.set_draft_max(dmax)
        return next(ev for ev in engine.generate(tokens, max_tokens=n) if isinstance(ev, Summary))

    out = {"c1": cn[1], "c8": cn[8], "prompts": {}}
    for name in a.prompt:
        tokens = chat_tokens(engine.target, [{"role": "user", "content": prompt_text(name)}])
        generate(tokens, "none", 8)  # warm-up: the prompt's KV, first graphs; not measured

        def measure(config: str) -> tuple[float, dict]:
            s = generate(tokens, config, a.tokens)
            return s.decode_tps, {"tokens": list(s.tokens), "draft_lengths": s.draft_lengths}

        ab = interleave(list(configs)[1:], a.rounds, measure, say=progress(f"  {name}"))
        out["prompts"][name] = {**ab.to_json(),
                                "samples": [{"config": s.config, **s.info} for s in ab.samples]}
    engine.close()
    print(json.dumps(out))


def run_link(a: argparse.Namespace, rpc: str) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--child", "--target", str(a.target), "--draft", str(a.draft),
           "--tokens", str(a.tokens), "--rounds", str(a.rounds), "--threads", str(a.threads), "--rpc", rpc,
           "--configs", a.configs, *(x for p in a.prompt for x in ("--prompt", p))]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"link {rpc or 'local'} failed (exit {r.returncode})")
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--draft", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rtt", default="0,0.5,2", help="added round trips in ms, comma-separated")
    ap.add_argument("--threads", type=int, default=2, help="threads here (draft) and on the worker")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--prompt", action="append", help="code-edit, code-write or a prompt's text; repeatable "
                                                      "(default: both code prompts)")
    ap.add_argument("--json", type=Path, help="also keep the raw results here")
    ap.add_argument("--table", type=Path, help="print the table of an earlier --json and stop")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rpc", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.prompt = a.prompt or ["code-edit", "code-write"]
    if unknown := [c for c in csv_list(a.configs) if c not in CONFIGS]:
        ap.error(f"unknown configuration {unknown[0]!r}; choose of {', '.join(CONFIGS)}")
    if a.child:
        return child(a)
    if a.table:
        return table(a, json.loads(a.table.read_text()))
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # inherited by the worker and every link
    # Each link calibrates afresh into a cache of its own, not the user's costs.json.
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="rpc_ab-")

    from ..rpc_helpers import Relay, Worker

    links: dict[str, dict] = {}
    print("link local", file=sys.stderr)
    links["local"] = run_link(a, "")
    w = Worker(threads=a.threads)
    try:
        for rtt in [float(x) for x in csv_list(a.rtt)]:
            print(f"link RPC + {rtt} ms RTT", file=sys.stderr)
            relay = Relay(w.endpoint, rtt)
            try:
                links[f"rpc {rtt:g} ms"] = run_link(a, relay.endpoint)
            finally:
                relay.stop()
    finally:
        w.stop()
    write_json(a.json, links)
    table(a, links)


def lengths(d: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(d.items(), key=lambda kv: int(kv[0])))


def table(a: argparse.Namespace, links: dict[str, dict]) -> None:
    print(f"\nspecgen rpc_ab: {a.target.name} (+ {a.draft.name} local), {a.tokens} tokens, greedy, --no-mmap, "
          f"{a.rounds} round(s)\n")
    print(markdown(["link", "c(1) ms", "c(8) ms", "c(8)/c(1)"],
                   [[link, f"{r['c1'] * 1e3:.1f}", f"{r['c8'] * 1e3:.1f}", f"{r['c8'] / r['c1']:.2f}"]
                    for link, r in links.items()]))
    rows = []
    for prompt, local in links["local"]["prompts"].items():
        ref = next(s["tokens"] for s in local["samples"] if s["config"] == local["baseline"])
        for link, res in links.items():
            got = res["prompts"][prompt]
            for config in [got["baseline"], *got["configs"]]:
                mine = [s for s in got["samples"] if s["config"] == config]
                same = all(s["tokens"] == ref for s in mine)
                stat = got["configs"].get(config)
                rows.append([prompt, link, config, f"{(stat or got)['value']:.2f}",
                             f"{stat['ratio']:.2f}" if stat else "1", "yes" if same else "NO",
                             lengths(mine[-1]["draft_lengths"]) if stat else ""])
    print("\n" + markdown(["prompt", "link", "config", "tok/s", "x plain (same link)", "= local",
                           "draft_lengths (len:steps)"], rows))


if __name__ == "__main__":
    main()
