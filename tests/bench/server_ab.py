"""Server A/B benchmark: a script, not a test.

    python -m tests.bench.server_ab --target T.gguf [--draft D.gguf] [--tokens 160] [--turn-tokens 48]
                                    [--files 10] [--source DIR] [--lines 80,200]
                                    [--sections edit,conversation,overhead] [--json OUT]

Starts two `specgen serve` processes on free loopback ports, both --no-mmap and
greedy: A with --drafter auto, B with --drafter none.  Then, over streamed
HTTP requests (what an editor sends):

1. edit session: --files requests, each a different Python file of 80-200
   lines (--lines) from this repository (or --source) with a small change to
   make (rename, add a parameter, add type hints), each sent to A between two
   sends to B by the harness;
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
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import httpx

from .harness import ROOT, csv_list, interleave, markdown, run_serving, specgen_exe, write_json

CHANGES = [
    "Rename the function `{f}` to `{f}_v2` everywhere it appears. Output the whole file.",
    "Add a keyword parameter `verbose: bool = False` to `{f}` (it does nothing yet). Output the whole file.",
    "Add type hints to every function parameter that lacks one. Output the whole file.",
]
SECTIONS = ("edit", "conversation", "overhead")


def source_files(n: int, source: Path | None, lines: tuple[int, int]) -> list[tuple[Path, str]]:
    """The n shortest Python files of *lines* lines under *source* (by default this repository's src and
    tests; prefill is the slow part on a CPU), each with a small change to ask for."""
    paths = sorted(source.rglob("*.py")) if source else sorted((ROOT / "src").rglob("*.py")) + sorted(
        (ROOT / "tests").glob("*.py"))
    found = []
    for p in paths:
        text = p.read_text()
        funcs = re.findall(r"^\s*def ([a-z][a-z0-9_]*)\(", text, re.M)
        if lines[0] <= len(text.splitlines()) <= lines[1] and funcs:
            found.append((len(text.splitlines()), p, funcs[0]))
    if len(found) < n:
        raise SystemExit(f"found only {len(found)} Python files of {lines[0]}-{lines[1]} lines with a function")
    return [(p, CHANGES[i % len(CHANGES)].format(f=f)) for i, (_, p, f) in enumerate(sorted(found)[:n])]


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def edit_messages(path: Path, change: str) -> list[dict]:
    return [{"role": "system", "content": "You are a careful coding assistant. Reply with code only."},
            {"role": "user", "content": f"{change}\n\n```python\n{path.read_text()}```"}]


class Server:
    def __init__(self, args: argparse.Namespace, drafter: str, log: Path, extra: Sequence[str] = ()):
        """`specgen serve` on a free loopback port, --no-mmap, with *extra* options after the usual ones."""
        cmd = [specgen_exe(), "serve", "--port", "0", "--no-mmap", "--target", args.target, "--drafter", drafter]
        if args.draft:
            cmd += ["--draft", args.draft]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        cmd += list(extra)
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


def edit_session(servers: dict[str, Server], files: list[tuple[Path, str]], tokens: int) -> tuple[list[str], dict]:
    rows, out = [], []
    for i, (path, change) in enumerate(files):
        msgs = edit_messages(path, change)

        def measure(name: str) -> tuple[float, dict]:
            r = servers[name].stream(msgs, tokens)
            return r["timings"]["predicted_per_second"], r

        ab = interleave(["auto"], 1, measure)
        ra, rb = ab.last("auto"), ab.last("none")
        same = "" if ra["text"] == rb["text"] else " (texts differ)"
        lines = len(path.read_text().splitlines())
        got = {"file": shown(path), "speedup": ab.ratio("auto"),
               "latency_plain_over_auto": ab.ratio("auto", lambda s: 1 / s.info["total"]),
               "decode_plain_over_auto": ab.ratio("auto", lambda s: 1 / max(s.info["decode"], 1e-9))}
        out.append(got)
        rows.append([i + 1, f"{got['file']} ({lines})", change.split(".")[0][:40], f"{ra['n']}/{rb['n']}{same}",
                     f"{ab.value('none'):.1f}", f"{ab.value('auto'):.1f}", f"{got['speedup']:.2f}x",
                     f"{ra['timings']['draft_n_accepted']}/{ra['timings']['draft_n']}",
                     f"{rb['total']:.1f} / {ra['total']:.1f}", f"{rb['decode']:.1f} / {ra['decode']:.1f}"])
        print(f"edit {i + 1}: {got['speedup']:.2f}x", file=sys.stderr, flush=True)
    medians = {k: statistics.median(f[k] for f in out) for k in out[0] if k != "file"}
    text = [markdown(["#", "file (lines)", "change", "tokens", "plain tok/s", "auto tok/s", "speedup",
                      "accepted/drafted", "latency plain / auto (s)", "decode part plain / auto (s)"], rows),
            f"\nmedian speedup (decode tok/s, auto / plain): {medians['speedup']:.2f}x; "
            f"end-to-end latency plain/auto: {medians['latency_plain_over_auto']:.2f}x; "
            f"decode part of the latency plain/auto: {medians['decode_plain_over_auto']:.2f}x"]
    return text, {"files": out, "median": medians}


def conversation(a: Server, path: Path, tokens: int) -> tuple[list[str], dict]:
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
    rows, ratios = [], []
    for k, (m, r) in enumerate(warm[1:], start=2):
        cold = a.stream(m, 1, cache_prompt=False)
        ratios.append(r["ttft"] / cold["ttft"])
        t = r["timings"]
        rows.append([k, t["prompt_n"] + t["cache_n"], t["cache_n"], f"{r['ttft']:.2f}", f"{cold['ttft']:.2f}",
                     f"{ratios[-1]:.2f}x"])
    median = statistics.median(ratios)
    return ([markdown(["turn", "prompt tokens", "cached", "TTFT warm (s)", "TTFT cold (s)", "warm / cold"], rows),
             f"\nmedian TTFT warm / cold, turns 2-5: {median:.2f}x"],
            {"file": shown(path), "ttft_warm_over_cold": ratios, "median": median})


def overhead(b: Server, args: argparse.Namespace) -> tuple[list[str], dict]:
    prompt = "Write a Python function that parses a CSV line, handling quoted fields."
    tokens = str(args.overhead_tokens)
    run = [specgen_exe(), "run", "--target", args.target, "--drafter", "none", "--no-mmap", "--max-tokens", tokens,
           "--ignore-eos", "--json", prompt] + (["--threads", str(args.threads)] if args.threads else [])

    def measure(name: str) -> tuple[float, dict]:
        if name == "server":
            r = b.stream([{"role": "user", "content": prompt}], args.overhead_tokens, ignore_eos=True,
                         cache_prompt=False)
            return r["client_tps"], {"engine_tps": r["timings"]["predicted_per_second"]}
        out = subprocess.run(run, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode:
            raise SystemExit(out.stderr)
        return json.loads(out.stdout)["stats"]["decode_tps"], {}

    ab = interleave(["server"], args.rounds, measure, baseline="run")
    s, r = ab.value("server"), ab.value("run")
    e = statistics.median(x.info["engine_tps"] for x in ab.samples if x.config == "server")
    return ([markdown([f"plain decoding, {tokens} tokens", "tok/s"],
                      [["`specgen run --json` (engine figure)", f"{r:.2f}"],
                       ["through the server, engine figure (`timings`)", f"{e:.2f}"],
                       ["through the server, measured by the client", f"{s:.2f}"]]),
             f"\nserver (client-measured) / run: {ab.ratio('server'):.3f}x; rounds: {args.rounds}, interleaved"],
            ab.to_json())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft")
    ap.add_argument("--tokens", type=int, default=160, help="generated tokens per edit request (cap)")
    ap.add_argument("--turn-tokens", type=int, default=48, help="generated tokens per conversation turn (cap)")
    ap.add_argument("--overhead-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2, help="overhead rounds")
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--source", type=Path, help="take the files from here (default: this repository)")
    ap.add_argument("--lines", default="80,200", help="the files' length, MIN,MAX lines")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="which parts to run, comma-separated")
    ap.add_argument("--threads", type=int, help="passed to the servers and to run (default: theirs)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    sections = set(csv_list(args.sections))
    if unknown := sections - set(SECTIONS):
        ap.error(f"unknown section {sorted(unknown)[0]!r}; choose of {', '.join(SECTIONS)}")
    try:
        lo, hi = (int(x) for x in args.lines.split(","))
    except ValueError:
        ap.error(f"--lines takes MIN,MAX, not {args.lines!r}")
    files = source_files(args.files, args.source, (lo, hi))
    print(f"$ python -m {__spec__.name} {' '.join(sys.argv[1:])}", flush=True)
    out, result = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, Server] = {}
        try:
            for name, needed in (("auto", {"edit", "conversation"}), ("none", {"edit", "overhead"})):
                if sections & needed:
                    servers[name] = Server(args, name, Path(tmp) / f"{name}.log")
            if "edit" in sections:
                text, result["edit"] = edit_session(servers, files, args.tokens)
                out += [f"## edit session ({len(files)} requests, up to {args.tokens} tokens each)", "", *text]
            if "conversation" in sections:
                conv_file = min((p for p, _ in files), key=lambda p: len(p.read_text().splitlines()))
                text, result["conversation"] = conversation(servers["auto"], conv_file, args.turn_tokens)
                out += ["", f"## growing conversation (5 turns on {shown(conv_file)}, "
                            f"up to {args.turn_tokens} tokens a turn, server A)", "", *text]
            if "overhead" in sections:
                text, result["overhead"] = overhead(servers["none"], args)
                out += ["", "## server overhead", "", *text]
        finally:
            for s in servers.values():
                s.stop()
    print("\n" + "\n".join(out))
    write_json(args.json, result)


if __name__ == "__main__":
    run_serving(main)
