"""Server A/B benchmark: a script, not a test.

    python tests/bench/server_ab.py --target T.gguf --draft D.gguf [--tokens 160] [--turn-tokens 48]

Starts two `specgen serve` processes on free loopback ports, both --no-mmap and
greedy: A with --drafter auto, B with --drafter none.  Then, over streamed
HTTP requests (what an editor sends):

1. edit session: 10 requests, each a different 80-200-line source file from
   this repository with a small change to make (rename, add a parameter, add
   type hints), sent to A and B interleaved (A B B A A B ...);
2. growing conversation: 5 turns on one file through A; time to first token
   of turns 2-5 (prefix reused) against the same requests sent cold
   (`cache_prompt: false`);
3. overhead: plain decoding (B) measured by the client against `specgen run
   --drafter none --json` on the same prompt, interleaved.

Requests are capped at --tokens generated tokens (the whole rewritten file
would take minutes per request on a CPU); the cap is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).parent / "specgen")
CHANGES = [
    "Rename the function `{f}` to `{f}_v2` everywhere it appears. Output the whole file.",
    "Add a keyword parameter `verbose: bool = False` to `{f}` (it does nothing yet). Output the whole file.",
    "Add type hints to every function parameter that lacks one. Output the whole file.",
]


def source_files(n: int) -> list[tuple[Path, str]]:
    """The n shortest Python files of 80-200 lines in this repository (prefill is the slow part on a
    CPU), each with a small change to ask for."""
    found = []
    for p in sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py")):
        text = p.read_text()
        funcs = re.findall(r"^\s*def ([a-z][a-z0-9_]*)\(", text, re.M)
        if 80 <= len(text.splitlines()) <= 200 and funcs:
            found.append((len(text.splitlines()), p, funcs[0]))
    if len(found) < n:
        raise SystemExit(f"found only {len(found)} source files of 80-200 lines")
    return [(p, CHANGES[i % len(CHANGES)].format(f=f)) for i, (_, p, f) in enumerate(sorted(found)[:n])]


def edit_messages(path: Path, change: str) -> list[dict]:
    return [{"role": "system", "content": "You are a careful coding assistant. Reply with code only."},
            {"role": "user", "content": f"{change}\n\n```python\n{path.read_text()}```"}]


class Server:
    def __init__(self, args: argparse.Namespace, drafter: str, log: Path):
        cmd = [EXE, "serve", "--port", "0", "--no-mmap", "--target", args.target, "--drafter", drafter]
        if args.draft:
            cmd += ["--draft", args.draft]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not (m := re.search(r"listening on (http://\S+) ", log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"server ({drafter}) did not start:\n{log.read_text()}")
            time.sleep(0.2)
        self.url = m.group(1)
        self.name = drafter
        self.client = httpx.Client(base_url=self.url, timeout=None)

    def stream(self, messages: list[dict], max_tokens: int, **extra) -> dict:
        """One streamed chat request; client-side clock for first and last content chunk."""
        body = {"model": "x", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, **extra}
        t0 = time.perf_counter()
        first = last = None
        text, final = [], None
        with self.client.stream("POST", "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if obj.get("choices") and obj["choices"][0]["delta"].get("content"):
                    last = time.perf_counter()
                    first = first or last
                    text.append(obj["choices"][0]["delta"]["content"])
                if obj.get("usage"):
                    final = obj
        end = time.perf_counter()
        n = final["usage"]["completion_tokens"]
        return {"text": "".join(text), "n": n, "ttft": (first or end) - t0, "total": end - t0,
                "decode": (last or end) - (first or end), "client_tps": (n - 1) / (last - first) if last and
                last > first else 0.0, "timings": final["timings"], "specgen": final["specgen"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def edit_session(a: Server, b: Server, files: list[tuple[Path, str]], tokens: int) -> list[str]:
    rows = ["| # | file (lines) | change | tokens | plain tok/s | auto tok/s | speedup | accepted/drafted |"
            " latency plain / auto (s) | decode part plain / auto (s) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    ratios, lat_ratios, dec_ratios = [], [], []
    for i, (path, change) in enumerate(files):
        msgs = edit_messages(path, change)
        order = (a, b) if i % 2 == 0 else (b, a)  # A B, B A, ...: drift hits both sides
        res = {s.name: s.stream(msgs, tokens) for s in order}
        ra, rb = res["auto"], res["none"]
        ta, tb = ra["timings"]["predicted_per_second"], rb["timings"]["predicted_per_second"]
        ratios.append(ta / tb)
        lat_ratios.append(rb["total"] / ra["total"])
        dec_ratios.append(rb["decode"] / ra["decode"] if ra["decode"] > 0 else float("nan"))
        same = "" if ra["text"] == rb["text"] else " (texts differ)"
        lines = len(path.read_text().splitlines())
        rows.append(f"| {i + 1} | {path.relative_to(ROOT)} ({lines}) | {change.split('.')[0][:40]} | "
                    f"{ra['n']}/{rb['n']}{same} | {tb:.1f} | {ta:.1f} | {ta / tb:.2f}x | "
                    f"{ra['timings']['draft_n_accepted']}/{ra['timings']['draft_n']} | "
                    f"{rb['total']:.1f} / {ra['total']:.1f} | {rb['decode']:.1f} / {ra['decode']:.1f} |")
        print(rows[-1], flush=True)
    rows.append(f"\nmedian speedup (decode tok/s, auto / plain): {statistics.median(ratios):.2f}x; "
                f"end-to-end latency plain/auto: {statistics.median(lat_ratios):.2f}x; "
                f"decode part of the latency plain/auto: {statistics.median(dec_ratios):.2f}x")
    print(rows[-1], flush=True)
    return rows


def conversation(a: Server, path: Path, tokens: int) -> list[str]:
    asks = ["Rename the first function in this file to `start`. Output only the changed function.",
            "Now add a docstring to it.", "Now add type hints to it.", "Now make it log its arguments.",
            "Now add a short example of calling it."]
    msgs = [{"role": "system", "content": "You are a careful coding assistant."},
            {"role": "user", "content": f"```python\n{path.read_text()}```\n\n{asks[0]}"}]
    warm = []
    for k, ask in enumerate(asks):
        if k:
            msgs.append({"role": "user", "content": ask})
        r = a.stream(msgs, tokens)
        warm.append((list(msgs), r))
        msgs.append({"role": "assistant", "content": r["text"]})
    rows = ["| turn | prompt tokens | cached | TTFT warm (s) | TTFT cold (s) | warm / cold |", "|---|---|---|---|---|---|"]
    ratios = []
    for k, (m, r) in enumerate(warm[1:], start=2):
        cold = a.stream(m, 1, cache_prompt=False)
        ratios.append(r["ttft"] / cold["ttft"])
        t = r["timings"]
        rows.append(f"| {k} | {t['prompt_n'] + t['cache_n']} | {t['cache_n']} | {r['ttft']:.2f} | "
                    f"{cold['ttft']:.2f} | {ratios[-1]:.2f}x |")
        print(rows[-1], flush=True)
    rows.append(f"\nmedian TTFT warm / cold, turns 2-5: {statistics.median(ratios):.2f}x")
    print(rows[-1], flush=True)
    return rows


def overhead(b: Server, args: argparse.Namespace, rounds: int) -> list[str]:
    prompt = "Write a Python function that parses a CSV line, handling quoted fields."
    tokens = str(args.overhead_tokens)
    run = [EXE, "run", "--target", args.target, "--drafter", "none", "--no-mmap", "--max-tokens", tokens,
           "--ignore-eos", "--json", prompt] + (["--threads", str(args.threads)] if args.threads else [])
    server_tps, server_engine_tps, run_tps = [], [], []
    for _ in range(rounds):
        r = b.stream([{"role": "user", "content": prompt}], args.overhead_tokens, ignore_eos=True,
                     cache_prompt=False)
        server_tps.append(r["client_tps"])
        server_engine_tps.append(r["timings"]["predicted_per_second"])
        out = subprocess.run(run, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode:
            raise SystemExit(out.stderr)
        run_tps.append(json.loads(out.stdout)["stats"]["decode_tps"])
    s, e, r = statistics.median(server_tps), statistics.median(server_engine_tps), statistics.median(run_tps)
    print(f"overhead: run {r:.2f}, server engine {e:.2f}, server client {s:.2f} tok/s", flush=True)
    return ["| plain decoding, " + tokens + " tokens | tok/s |", "|---|---|",
            f"| `specgen run --json` (engine figure) | {r:.2f} |",
            f"| through the server, engine figure (`timings`) | {e:.2f} |",
            f"| through the server, measured by the client | {s:.2f} |",
            f"\nserver (client-measured) / run: {s / r:.3f}x; rounds: {rounds}, interleaved"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft")
    ap.add_argument("--tokens", type=int, default=160, help="generated tokens per edit request (cap)")
    ap.add_argument("--turn-tokens", type=int, default=48, help="generated tokens per conversation turn (cap)")
    ap.add_argument("--overhead-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2, help="overhead rounds")
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--sections", default="edit,conversation,overhead", help="which parts to run")
    ap.add_argument("--threads", type=int, help="passed to the servers and to run (default: theirs)")
    args = ap.parse_args()
    files = source_files(args.files)
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    sections = set(args.sections.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        a = Server(args, "auto", Path(tmp) / "auto.log") if sections & {"edit", "conversation"} else None
        try:
            b = Server(args, "none", Path(tmp) / "none.log") if sections & {"edit", "overhead"} else None
            try:
                out = []
                if "edit" in sections:
                    out += [f"## edit session ({len(files)} requests, up to {args.tokens} tokens each)", ""]
                    out += edit_session(a, b, files, args.tokens)
                if "conversation" in sections:
                    conv_file = min((p for p, _ in files), key=lambda p: len(p.read_text().splitlines()))
                    out += ["", f"## growing conversation (5 turns on {conv_file.relative_to(ROOT)}, "
                                f"up to {args.turn_tokens} tokens a turn, server A)", ""]
                    out += conversation(a, conv_file, args.turn_tokens)
                if "overhead" in sections:
                    out += ["", "## server overhead", ""]
                    out += overhead(b, args, args.rounds)
            finally:
                if b:
                    b.stop()
        finally:
            if a:
                a.stop()
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` must not orphan the servers
    main()
