"""Host work per step: a script, not a test.

    python -m tests.bench.host_time [--target T.gguf] [--draft D.gguf] [--lengths 1,4,8,16]
                                    [--drafters none,ngram,model,auto] [--tokens 64] [--threads N] [--json OUT]

Everything a speculative step does outside llama.cpp's decode calls (the drafter, filling the verify batch,
reading the target's rows and the accept rule, the controller, text) is measured by the engine itself
(`Step.host`, `--json`'s `host_ms_per_step`).  On this CPU a 1.5B target step takes 50-60 ms and hides it; on a
GPU a 7B step takes 8-15 ms, and every millisecond here is lost there.  The Qwen2.5-Coder 1.5B target has the
7B's 152k-token vocabulary, which is what the sampling path's cost grows with.

For each drafter and fixed draft length (none: plain decoding, length 0), greedy and at temperature 0.7 with
top-k 40, top-p 0.95 and min-p 0.05, the script generates --tokens tokens of the code-edit prompt (which the
n-gram drafter can copy) and prints, over the steps that verified exactly that many draft rows: host
milliseconds per step (median, and the mean of each part), llama.cpp's milliseconds per step, and the host
time as a share of a 10 ms GPU step.

On this CPU each decode streams the model's weights through the caches, so the step's host work starts with
every cache cold; on a GPU it does not.  So each configuration is also replayed (`--replay`, on by default):
the same generation again, every llama.cpp decode call replaced by a copy of the rows it gave into a
buffer kept for them (as a GPU's logits arrive on the host), the host work as it runs on a GPU's host.
`auto` is not replayed: which drafter it asks follows the decode times it measures, and a replay's differ.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from specgen.build import EngineOptions, load_engine
from specgen.engine import HOST_PARTS, Step
from specgen.llama.backend import decode_clock
from specgen.llama.chat_template import chat_tokens
from specgen.sampling import SamplingParams

from .harness import CODE_EDIT, csv_list, markdown, write_json

MODELS = Path.home() / ".cache" / "specgen-models"
GPU_STEP_MS = 10.0
"""A 7B target's verify step on a GPU, about: what the host time is compared with."""


class Tape:
    """A context's llama_decode calls recorded, then replayed: a replayed call computes nothing and copies the
    rows it gave into a buffer kept for them, where the context then reads them.  The rest of the context's
    work (filling the batch, its bookkeeping, rolling entries back) runs as ever.

    A call's rows are copied when the next call comes (or the replay begins), so that the copy does not
    warm the caches for the step that reads them.  The step has banned end-of-generation in them by then
    (ignore_eos): those -inf are kept as the lowest finite float, which the first step's check for a
    corrupt model lets pass and the replayed step bans again.  Copies are on the decode clock: llama.cpp's
    time, not the step's."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.calls: list[tuple[list[int], np.ndarray]] = []  # each call's batch tokens and rows
        self.at = 0  # the next call to replay
        self._pending: tuple[list[int], np.ndarray] | None = None  # the last call's, rows still llama.cpp's
        self._buffer = np.zeros((0, 0), dtype=np.float32)
        self._run = ctx._run
        ctx._run = self._record

    def _tokens(self) -> list[int]:
        batch = self.ctx._batch
        return batch.token[:batch.n_tokens]

    def _keep_pending(self) -> None:
        if self._pending is not None:
            tokens, rows = self._pending
            self.calls.append((tokens, np.maximum(rows, np.finfo(np.float32).min)))
            self._pending = None

    def _record(self) -> None:
        t0 = time.perf_counter()
        self._keep_pending()
        decode_clock.seconds += time.perf_counter() - t0
        self._run()
        t0 = time.perf_counter()
        self._pending = (self._tokens(), self.ctx._logits() if self.ctx._outputs else self._buffer)
        decode_clock.seconds += time.perf_counter() - t0

    def replay(self) -> None:
        """From now on, replay the calls recorded, in order."""
        self._keep_pending()
        most = max(self.calls, key=lambda call: len(call[1]))[1] if self.calls else self._buffer
        self._buffer = np.zeros_like(most)
        self.ctx._run, self.ctx._logits = self._replay, lambda: self._buffer[:self.ctx._outputs]

    def _replay(self) -> None:
        t0 = time.perf_counter()
        tokens, rows = self.calls[self.at]
        if self._tokens() != tokens:
            raise SystemExit(f"the replay parted from the recorded run at llama_decode call {self.at}")
        self.at += 1
        if len(rows):
            np.copyto(self._buffer[:len(rows)], rows)
        decode_clock.seconds += time.perf_counter() - t0

    def close(self) -> None:
        """The context as it was."""
        for name in ("_run", "_logits"):
            self.ctx.__dict__.pop(name, None)


def generate(engine, tokens: list[int], temperature: float, n: int) -> list[Step]:
    return [ev for ev in engine.generate(tokens, max_tokens=n, sampling=SamplingParams(temperature=temperature,
                                                                                      seed=1), ignore_eos=True)
            if isinstance(ev, Step)]


def replayed(engine, tokens: list[int], temperature: float, n: int) -> tuple[list[Step], list[Step]]:
    """The generation's steps, run for real and then replayed from what its decode calls gave (see Tape)."""
    model = engine.drafters.get("model")
    state = engine.learned()
    tapes = [Tape(ctx) for ctx in (engine.ctx, *([model.ctx] if model is not None else []))]
    try:
        engine.reset_cache()
        real = generate(engine, tokens, temperature, n)
        # What the replay's steps teach the cost model is not this machine's: it is put back after.
        costs = copy.deepcopy(engine.controller.costs)
        engine.restore(state)
        engine.reset_cache()
        for tape in tapes:
            tape.replay()
        again = generate(engine, tokens, temperature, n)
        engine.controller.costs = costs
    finally:
        for tape in tapes:
            tape.close()
        engine.reset_cache()  # the replay decoded nothing
    if [(s.drafted, s.accepted) for s in again] != [(s.drafted, s.accepted) for s in real]:
        raise SystemExit("the replay parted from the recorded run")
    return real, again


def at_length(steps: list[Step], rows: int) -> list[Step]:
    """The steps that verified *rows* draft rows (all steps when none did): the ones a configuration is read by."""
    return [s for s in steps if s.drafted == rows] or steps


def host_figures(at: list[Step]) -> dict:
    """Host ms per step over the steps *at*: the median and mean of the total, the mean of each part."""
    host = [sum(s.host.values()) * 1e3 for s in at]
    return {"host_ms": statistics.median(host), "host_ms_mean": statistics.mean(host),
            "parts_ms": {k: statistics.mean(s.host.get(k, 0.0) * 1e3 for s in at) for k in HOST_PARTS}}


def measure(engine, tokens: list[int], drafter: str, length: int, temperature: float, n: int,
            replay: bool = False) -> dict:
    """One configuration's host work per step; with *replay* (not for auto), also as a replay measures it."""
    rows = length if drafter != "none" else 0
    engine.set_drafter(drafter)
    engine.set_draft_max(rows)
    if replay and drafter != "auto":
        steps, again = replayed(engine, tokens, temperature, n)
    else:
        steps, again = generate(engine, tokens, temperature, n), None
    at = at_length(steps, rows)
    llama = [(s.draft_seconds + s.verify_seconds - sum(v for k, v in s.host.items() if k != "text")) * 1e3
             for s in at]
    out = {"drafter": drafter, "length": rows, "temperature": temperature, "steps": len(steps),
           "steps_at_length": sum(s.drafted == rows for s in steps), **host_figures(at),
           "llama_ms": statistics.median(llama),
           "replayed": host_figures(at_length(again, rows)) if again else None}
    out["gpu_share"] = out["host_ms"] / GPU_STEP_MS
    return out


def parts(r: dict) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in r["parts_ms"].items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--lengths", default="1,4,8,16")
    ap.add_argument("--drafters", default="none,ngram,model,auto")
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--replay", action=argparse.BooleanOptionalAction, default=True,
                    help="also replay each configuration without decoding (see the module's doc)")
    ap.add_argument("--json")
    args = ap.parse_args()
    print(f"$ python -m tests.bench.host_time {' '.join(sys.argv[1:])}", file=sys.stderr, flush=True)
    engine = load_engine(EngineOptions(args.target, args.draft, drafter="auto", n_ctx=4096, threads=args.threads,
                                       use_mmap=False))
    tokens = chat_tokens(engine.target, [{"role": "user", "content": CODE_EDIT}])
    out, rows = [], []
    try:
        for temperature in map(float, csv_list(args.temperatures)):
            for drafter in csv_list(args.drafters):
                for length in ([0] if drafter == "none" else map(int, csv_list(args.lengths))):
                    r = measure(engine, tokens, drafter, length, temperature, args.tokens, args.replay)
                    out.append(r)
                    again = r["replayed"]
                    rows.append([drafter, r["length"], f"{temperature:g}", f"{r['steps_at_length']}/{r['steps']}",
                                 f"{r['host_ms']:.3f}", parts(r), f"{r['llama_ms']:.1f}", f"{r['gpu_share']:.0%}",
                                 f"{again['host_ms']:.3f}" if again else "-", parts(again) if again else "-"])
                    print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    finally:
        engine.close()
    print(markdown(["drafter", "draft rows", "T", "steps at that length/all", "host ms/step (median)",
                    "mean ms by part", "llama.cpp ms/step", "of a 10 ms GPU step", "replayed: host ms/step",
                    "replayed: mean ms by part"], rows))
    write_json(args.json, {"args": vars(args), "results": out})


if __name__ == "__main__":
    main()
