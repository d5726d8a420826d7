"""Start-up time and memory of `specgen run`, against llama-cpp-python loading the same model: a script.

    python tests/bench/startup.py --target T.gguf --draft D.gguf [--rounds 3] [--llama-completion PATH]

Each round runs, interleaved, in fresh processes:
  * `specgen run --max-tokens 1 --no-mmap` with the target only (--drafter none; also --raw, the prompt
    without the chat template as llama-completion sends it) and with the pair;
  * llama-cpp-python's `Llama(target, n_ctx=4096, use_mmap=False)` generating 1 token;
  * with --llama-completion, llama.cpp's own CLI on the target (`-lm none -c 4096 -n 1`, no
    conversation mode), built from the source llama-cpp-python vendors: the reference;
  * `specgen run` with the pair under a phase timer (imports, GGUF checks, model loads, contexts,
    cached calibration, template rendering, first token) -- that run's wall time is not compared.
Wall times are medians over rounds; peak RSS is each child's ru_maxrss.  Memory is set against the
model files plus the KV caches (f16 K and V, n_ctx tokens, from the GGUF shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PHASES = r'''
import sys, time, json
t0 = time.perf_counter()
marks = {}
import specgen.cli
specgen.cli.register_commands(["run"])
marks["import specgen.cli (run command)"] = time.perf_counter() - t0
import specgen.build as build, specgen.cli.run as run, specgen.engine as engine
def timed(mod, name, label):
    fn = getattr(mod, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            marks[label] = marks.get(label, 0.0) + time.perf_counter() - t
    setattr(mod, name, wrapper)
from specgen.llama import backend
t = time.perf_counter(); backend._llama(); marks["import llama_cpp + backend init"] = time.perf_counter() - t
timed(build, "read_gguf", "GGUF header checks")
timed(build, "Model", "model loads (target + draft)")
timed(build, "check_compatible", "pair compatibility check")
timed(build, "Engine", "target context")
timed(build, "ModelDrafter", "draft context")
timed(build, "cached_costs", "calibration (cached)")
timed(run, "chat_tokens", "chat template + tokenize")
gen = engine.Engine.generate
def generate(self, *a, **k):
    t = time.perf_counter()
    for ev in gen(self, *a, **k):
        yield ev
    marks["prefill + 1 token"] = time.perf_counter() - t
engine.Engine.generate = generate
sys.argv = ["specgen"] + sys.argv[1:]
try:
    specgen.cli.main()
except SystemExit:
    pass
marks["total in process"] = time.perf_counter() - t0
print(json.dumps(marks), file=sys.stderr)
'''

LLAMA = r'''
import sys
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=4096, use_mmap=False, verbose=False)
print(llm.create_completion(sys.argv[2], max_tokens=1)["choices"][0]["text"])
'''


def child(cmd: list[str]) -> tuple[float, str]:
    """(wall seconds, stderr) of one fresh process."""
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[:3]} failed: {p.stderr[-400:]}")
    return wall, p.stderr


def peak_rss(cmd: list[str]) -> float:
    """Peak RSS (MiB) of one process, via GNU time if present, else /proc polling."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    peak = 0
    while p.poll() is None:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    return peak / 1024


def kv_bytes(path: str, n_ctx: int) -> int:
    from specgen.llama.gguf import read_gguf

    info = read_gguf(path)
    md, arch = info.metadata, info.architecture
    layers = int(md[f"{arch}.block_count"])
    heads = int(md[f"{arch}.attention.head_count"])
    kv_heads = int(md.get(f"{arch}.attention.head_count_kv", heads))
    dim = int(md[f"{arch}.embedding_length"]) // heads
    return layers * 2 * kv_heads * dim * 2 * n_ctx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", default="Say hi.")
    ap.add_argument("--llama-completion", help="llama.cpp's llama-completion binary, the reference")
    args = ap.parse_args()
    py = sys.executable
    exe = str(Path(py).parent / "specgen")
    base = ["run", "--max-tokens", "1", "--no-mmap", "--target", args.target, "--threads", "2"]
    cmds = {
        "python -c pass": [py, "-c", "pass"],
        "llama-cpp-python Llama, target": [py, "-c", LLAMA, args.target, args.prompt],
        "specgen run, target (--drafter none)": [exe, *base, "--drafter", "none", args.prompt],
        "specgen run, target, --raw (no chat template, as llama-completion)": [exe, *base, "--drafter", "none",
                                                                               "--raw", args.prompt],
        "specgen run, pair (auto)": [exe, *base, "--draft", args.draft, args.prompt],
    }
    if args.llama_completion:
        cmds["llama-completion, target"] = [args.llama_completion, "-m", args.target, "-lm", "none", "-c", "4096",
                                            "-n", "1", "-t", "2", "-no-cnv", "-p", args.prompt]
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    phases: list[dict] = []
    for _ in range(args.rounds):
        for name, cmd in cmds.items():
            walls[name].append(child(cmd)[0])
        _, err = child([py, "-c", PHASES, *base, "--draft", args.draft, args.prompt])
        phases.append(json.loads(err.strip().splitlines()[-1]))
    print("| process | wall, median of %d (s) | runs |" % args.rounds)
    print("|---|---:|---|")
    for name, w in walls.items():
        print(f"| {name} | {statistics.median(w):.2f} | {', '.join(f'{x:.2f}' for x in w)} |")
    print("\n| phase of `specgen run` (pair) | seconds, median |")
    print("|---|---:|")
    for key in phases[0]:
        print(f"| {key} | {statistics.median(p.get(key, 0.0) for p in phases):.3f} |")
    mib = 1 << 20
    t_file, d_file = os.path.getsize(args.target), os.path.getsize(args.draft)
    t_kv, d_kv = kv_bytes(args.target, 4096), kv_bytes(args.draft, 4096)
    rss_pair = peak_rss(cmds["specgen run, pair (auto)"])
    rss_target = peak_rss(cmds["specgen run, target (--drafter none)"])
    rss_llama = peak_rss(cmds["llama-cpp-python Llama, target"])
    rss_py = peak_rss([py, "-c", "import specgen.cli, numpy, llama_cpp"])
    rss_cli = peak_rss(cmds["llama-completion, target"]) if args.llama_completion else None
    budget = (t_file + d_file + t_kv + d_kv) / mib
    print("\n| memory | MiB |")
    print("|---|---:|")
    for name, v in [("target file", t_file / mib), ("draft file", d_file / mib), ("target KV (4096, f16)", t_kv / mib),
                    ("draft KV (4096, f16)", d_kv / mib), ("files + KV", budget),
                    ("files + KV + 10% (the goal)", budget * 1.1),
                    ("peak RSS, specgen run, pair", rss_pair), ("peak RSS, specgen run, target only", rss_target),
                    ("peak RSS, llama-cpp-python Llama, target", rss_llama),
                    ("peak RSS, llama-completion, target", rss_cli),
                    ("peak RSS, python + imports only", rss_py)]:
        if v is not None:
            print(f"| {name} | {v:.0f} |")


if __name__ == "__main__":
    main()
