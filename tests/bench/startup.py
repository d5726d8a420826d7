"""Start-up time and memory of `specgen run`, against llama-cpp-python loading the same model: a script.

    python -m tests.bench.startup --target T.gguf --draft D.gguf [--rounds 3] [--llama-completion PATH]
                                  [--json OUT]

Each round runs in fresh processes, each of them between two runs of the baseline (the harness's A/B):
  * llama-cpp-python's `Llama(target, n_ctx=4096, use_mmap=False)` generating 1 token: the baseline;
  * `specgen run --max-tokens 1 --no-mmap` with the target only (--drafter none; also --raw, the prompt
    without the chat template as llama-completion sends it) and with the pair;
  * `python -c pass`, what any Python process costs;
  * with --llama-completion, llama.cpp's own CLI on the target (`-lm none -c 4096 -n 1`, no
    conversation mode), built from the source llama-cpp-python vendors: the reference;
  * `specgen run` with the pair under a phase timer (imports, GGUF checks, model loads, contexts,
    cached calibration, template rendering, first token), once a round -- its wall time is not compared.
Wall times, and their ratios to the baseline's, are medians over rounds; peak RSS is each child's
ru_maxrss.  Memory is set against the model files plus the KV caches (f16 K and V, n_ctx tokens, from
the GGUF shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from .harness import interleave, markdown, progress, specgen_exe, write_json

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
from specgen.llama.loader import load_llama
t = time.perf_counter(); load_llama(); marks["import llama_cpp + backend init"] = time.perf_counter() - t
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


def child(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stderr) of one fresh process."""
    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)  # the child's own rusage: its peak RSS, however short it lived
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} failed: {text[-400:]}")
    return wall, usage.ru_maxrss / 1024, text


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
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    py = sys.executable
    base = ["run", "--max-tokens", "1", "--no-mmap", "--target", args.target, "--threads", "2"]
    llama = "llama-cpp-python Llama, target"
    cmds = {
        llama: [py, "-c", LLAMA, args.target, args.prompt],
        "python -c pass": [py, "-c", "pass"],
        "specgen run, target (--drafter none)": [specgen_exe(), *base, "--drafter", "none", args.prompt],
        "specgen run, target, --raw (no chat template, as llama-completion)": [specgen_exe(), *base, "--drafter",
                                                                               "none", "--raw", args.prompt],
        "specgen run, pair (auto)": [specgen_exe(), *base, "--draft", args.draft, args.prompt],
    }
    if args.llama_completion:
        cmds["llama-completion, target"] = [args.llama_completion, "-m", args.target, "-lm", "none", "-c", "4096",
                                            "-n", "1", "-t", "2", "-no-cnv", "-p", args.prompt]

    def measure(name: str) -> tuple[float, dict]:
        wall, rss, _ = child(cmds[name])
        return wall, {"rss_mib": rss}

    ab = interleave([n for n in cmds if n != llama], args.rounds, measure, baseline=llama, say=progress("startup"))
    phases = [json.loads(child([py, "-c", PHASES, *base, "--draft", args.draft, args.prompt])[2]
                         .strip().splitlines()[-1]) for _ in range(args.rounds)]
    print(markdown(["process", f"wall, median of {args.rounds} (s)", "x Llama", "runs"],
                   [[name, f"{ab.value(name):.2f}", f"{ab.ratio(name):.2f}" if name != llama else "1",
                     ", ".join(f"{x:.2f}" for x in ab.values(name))] for name in cmds]))
    phase = {key: statistics.median(p.get(key, 0.0) for p in phases) for key in phases[0]}
    print("\n" + markdown(["phase of `specgen run` (pair)", "seconds, median"],
                          [[k, f"{v:.3f}"] for k, v in phase.items()]))
    mib = 1 << 20
    t_file, d_file = os.path.getsize(args.target), os.path.getsize(args.draft)
    t_kv, d_kv = kv_bytes(args.target, 4096), kv_bytes(args.draft, 4096)
    budget = (t_file + d_file + t_kv + d_kv) / mib
    rss = {name: statistics.median(s.info["rss_mib"] for s in ab.samples if s.config == name) for name in cmds}
    rss["python + imports only"] = child([py, "-c", "import specgen.cli, numpy, llama_cpp"])[1]
    memory = {"target file": t_file / mib, "draft file": d_file / mib, "target KV (4096, f16)": t_kv / mib,
              "draft KV (4096, f16)": d_kv / mib, "files + KV": budget, "files + KV + 10% (the goal)": budget * 1.1,
              **{f"peak RSS, {name}": v for name, v in rss.items() if name != "python -c pass"}}
    print("\n" + markdown(["memory", "MiB"], [[k, f"{v:.0f}"] for k, v in memory.items()]))
    write_json(args.json, {"wall": ab.to_json(), "phases": phase, "memory_mib": memory})


if __name__ == "__main__":
    main()
