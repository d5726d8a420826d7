"""Offline replay of drafters and the controller over recorded greedy outputs: a script, not a test.

    python -m tests.bench.replay record --target T.gguf --draft D.gguf [--prompts SUITE ...] --out traces.json
    python -m tests.bench.replay predict traces.json [--curve cpu|flat|FILE.json] [--log ID] [--configs ...]
                                                     [--json OUT]

Greedy decoding is deterministic, so what a drafter proposes and what the
target accepts can be replayed without the target, exactly but for near-ties
(a verify batch rounds unlike a one-token step and can take the other of two
all-but-tied tokens): `record` stores,
per prompt, the target's greedy output and the draft model's top-1 token and
its rating (as a greedy draft rates it) at every output position (one
batched pass of the draft model over prompt + output), and the text of
every token it saw (the n-gram
drafter tells seams from words by it; traces without texts replay it as all
words).  `predict` then runs the real drafters (`NgramDrafter`,
`AutoDrafter`) and the real `Controller` through `engine.choose_draft`, step
by step, charging each step the cost curve given, read through the engine's
own `CostModel`: verify c(n) for n rows, t_d per draft-model token.  The
speedup predicted for a configuration is the plain time (tokens x c(1)) over
its time.

Draft-model proposals past the first rejected token are taken from the true
history (the model's real guess there would follow its own wrong token); they
are rejected either way, so only their count and confidence are approximate.

`record` takes the built-in suites unless given --prompts.  A change to a drafter or the controller is
best checked on prompts it was not tuned on as well: `heldout-prompts.jsonl` here holds 58 written for
this project in Spec-Bench's categories (qa, translation, rag, extraction, math_reasoning,
summarization, writing, roleplay, and two-turn ones like MT-bench's in reasoning, stem, humanities,
math, coding and extraction); record them with
`record --prompts tests/bench/heldout-prompts.jsonl --max-tokens 96`.

`--log ID` prints the per-step decisions for one prompt: which drafter the
controller chose, how many tokens it verified, how many were accepted, the
n-gram copy on offer and how many of its tokens the target would have taken.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from specgen.bench.workload import load_questions, select
from specgen.controller import Controller, CostModel
from specgen.drafters import AutoDrafter, NgramDrafter, NoDrafter
from specgen.drafters.base import Draft, KeepGoing
from specgen.drafters.model import rated
from specgen.engine import Step, Summary, choose_draft
from specgen.tokens import common_prefix
from specgen.sampling import SamplingParams

from .harness import CODE_EDIT, markdown, write_json

CONFIGS = ["auto/auto", "ngram/auto", "model/auto", "ngram/8", "model/4"]
"""What `predict` replays unless told: drafter/draft length."""


# ---------------------------------------------------------------- record

def record(args: argparse.Namespace) -> None:
    from specgen.build import EngineOptions, load_engine
    from specgen.llama.chat_template import chat_tokens

    engine = load_engine(EngineOptions(target=args.target, draft=args.draft, drafter="auto", use_mmap=False,
                                       threads=args.threads))
    # Plain decoding, as the bench's baseline runs: llama.cpp's batched and one-token kernels round
    # differently, so at a near-tie a verify batch can pick another greedy token (traces recorded
    # through n-gram drafts parted from the bench's output on 14 of 86 prompts).
    engine.set_drafter("none")
    model_ctx = engine.drafters["model"].ctx
    n_vocab = min(engine.target.n_vocab, engine.draft_model.n_vocab)
    costs = engine.controller.costs
    # The load-time calibration: plain steps would show only c(1).
    out = {"curve": {"verify": {str(n): c for n, c in costs.shape.items()},
                     "draft": costs.draft_cost("model"), "threads": engine.ctx.n_threads},
           "segments": []}
    out["pieces"] = pieces = {}  # each token's text, for the n-gram drafter's seams
    done = set()
    if args.resume and Path(args.out).exists():
        kept = json.loads(Path(args.out).read_text())
        out["segments"] = kept["segments"]
        pieces.update(kept.get("pieces", {}))
        done = {(s["category"], s["id"]) for s in out["segments"]}
    questions = select(load_questions(args.prompts or ["builtin:all"]), args.categories, args.limit)
    convs = [(str(q.question_id), q.category, q.turns, args.max_tokens) for q in questions]
    if args.code_edit:
        convs.insert(0, ("code-edit", "code-edit", [CODE_EDIT], args.code_edit))
    for qid, cat, turns, max_tokens in convs:
        if (cat, qid) in done:  # ids repeat across suites (a built-in 401 and Spec-Bench's 401)
            continue
        messages: list[dict] = []
        for ti, turn in enumerate(turns):
            messages.append({"role": "user", "content": turn})
            prompt = chat_tokens(engine.target, messages)
            engine.reset_cache()
            t0 = time.perf_counter()
            summary = next(ev for ev in engine.generate(list(prompt), max_tokens=max_tokens)
                           if isinstance(ev, Summary))
            output = summary.tokens
            messages.append({"role": "assistant", "content": summary.text})
            # The draft model's guess at every output position, given the true history.
            model_ctx.rollback_to(0)
            model_ctx.decode(prompt[:-1], logits="none")
            model_ctx.decode([prompt[-1], *output[:-1]], logits="all")
            top, prob = [], []
            for i in range(len(output)):
                t, p = rated(model_ctx.logits_row(i)[:n_vocab])  # as the draft model rates a greedy draft
                top.append(t)
                prob.append(round(p, 5))
            model_ctx.rollback_to(0)
            engine.drafters["model"].cached = []
            out["segments"].append({"id": qid, "turn": ti, "category": cat, "prompt": list(prompt),
                                    "output": output, "draft_top": top, "draft_p": prob,
                                    "eog": [t for t in output if engine.target.is_eog(t)]})
            for t in (*prompt, *output):
                pieces.setdefault(str(t), engine.target.piece(t).hex())
            print(f"{qid} turn {ti}: {len(prompt)} prompt, {len(output)} output tokens, "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            Path(args.out).write_text(json.dumps(out))
    engine.close()


# ---------------------------------------------------------------- costs

@dataclass
class Curve:
    """What steps cost in a replay: c(n), the seconds of a verify batch of n rows; the seconds of one
    draft-model token; and the draft model's own batch curve, when measured (else its batches are taken
    to grow like the target's).  Read through the engine's `CostModel`, so that sizes between and
    beyond the measured ones cost what the controller takes them to cost."""

    verify: dict[int, float]
    draft: float
    draft_verify: dict[int, float] | None = None

    def __post_init__(self) -> None:
        self._target = CostModel.from_curve(self.verify)
        self._draft = CostModel.from_curve(self.draft_verify or self.verify)

    def c(self, n: int) -> float:
        return self._target.verify_cost(n)

    def draft_batch(self, n: int) -> float:
        """A draft-model batch of n tokens, in one-token draft decodes."""
        return self._draft.batch_factor(n)

    def slower(self, factor: float) -> Curve:
        return Curve({n: v * factor for n, v in self.verify.items()}, self.draft * factor, self.draft_verify)


def measure_curve(target: str, draft: str, *, prefix: int = 512, repeats: int = 7) -> dict:
    """This machine's costs for `--curve FILE`: verify c(n), n = 1..17, the draft model's per-token cost and
    its catch-up batches, at *prefix* tokens of context (prompts run at hundreds; the engine's own
    calibration uses a short one), the fastest of *repeats* sweeps (less noise than the engine's few)."""
    from specgen.llama.backend import Context, Model, ModelOptions
    from specgen.llama.calibrate import measure_draft, measure_verify

    t = Model(target, ModelOptions(use_mmap=False))
    d = Model(draft, ModelOptions(use_mmap=False))
    tctx, dctx = Context(t, 4096), Context(d, 4096)
    try:
        return {"verify": {str(n): s for n, s in measure_verify(tctx, prefix=prefix, repeats=repeats).items()},
                "draft": measure_draft(dctx, prefix=prefix),
                "draft_verify": {str(n): s for n, s in
                                 measure_verify(dctx, logits="last", prefix=prefix, repeats=repeats).items()}}
    finally:
        tctx.close()
        dctx.close()
        t.close()
        d.close()


def load_curve(spec: str, traces: dict) -> Curve:
    """`--curve`: cpu (the curve the recording calibrated), flat (GPU-like) or a file `measure_curve` wrote."""
    rec = traces["curve"]
    cpu = Curve({int(k): float(v) for k, v in rec["verify"].items()}, float(rec["draft"] or 0.0))
    if spec == "cpu":
        return cpu
    if spec == "flat":
        # A GPU-like curve: verifying 32 rows costs 15% more than one; a 0.5B draft token ~15% of a step.
        one = cpu.verify[1]
        return Curve({n: one * (1 + 0.15 * (n - 1) / 31) for n in range(1, 34)}, 0.15 * one)
    data = json.loads(Path(spec).read_text())
    draft_verify = {int(k): float(v) for k, v in data["draft_verify"].items()} if data.get("draft_verify") else None
    return Curve({int(k): float(v) for k, v in data["verify"].items()}, float(data.get("draft") or 0.0), draft_verify)


# ---------------------------------------------------------------- replay

class ReplayModelDrafter:
    """Serves the recorded draft-model guesses for the current position of the current segment."""

    name = "model"

    def __init__(self, curve: Curve) -> None:
        self.curve = curve
        self.top: list[int] = []
        self.prob: list[float] = []
        self.start = 0  # history length at output position 0
        self.cached = 0  # history length the draft model's KV cache has caught up to
        self.read: list[int] = []  # those tokens
        self.decodes = 0.0  # draft-model decodes (one-token equivalents) since the last take_decodes()

    def segment(self, seg: dict) -> None:
        self.top, self.prob = seg["draft_top"], seg["draft_p"]
        self.start = len(seg["prompt"])

    def prefill(self, history: Sequence[int], sources: Sequence[Sequence[int]] = ()) -> None:
        self.cached = len(history)
        self.read = list(history)

    def defer(self, history: Sequence[int]) -> None:
        # As the real drafter: the new text is noted, not read; only the part that still matches stays read.
        self.cached = min(self.cached, common_prefix(self.read, history))
        self.read = list(history[: self.cached])

    def behind(self, history: Sequence[int]) -> int:
        return max(1, len(history) - self.cached + 1)

    def draft(self, history: Sequence[int], n_max: int, params: SamplingParams,
              rng: np.random.Generator, keep_going: KeepGoing | None = None) -> Draft:
        out = Draft()
        if n_max <= 0 or (keep_going and not keep_going([])):
            return out
        # Catching up on the tokens emitted since the last call: one batch of the draft model.
        out.caught_up = self.behind(history)
        self.decodes += self.curve.draft_batch(out.caught_up)
        k = len(history) - self.start
        while k + len(out.tokens) < len(self.top):
            i = k + len(out.tokens)
            out.tokens.append(self.top[i])
            out.confidence.append(self.prob[i])
            if len(out.tokens) >= n_max or (keep_going and not keep_going(out.confidence)):
                break
            self.decodes += 1.0
        self.cached = len(history) + len(out.tokens) - 1
        self.read = [*history, *out.tokens][: self.cached]
        return out

    def take_decodes(self) -> float:
        d, self.decodes = self.decodes, 0.0
        return d

    def close(self) -> None:
        pass


class Session:
    """One configuration replayed over segments in order, with state (learning) carried across them."""

    def __init__(self, drafter: str, draft_max: int | None, curve: Curve, cap: int = 16,
                 calibrated: Curve | None = None, pieces: dict[str, str] | None = None):
        self.curve = curve
        # The controller starts from what load-time calibration saw; steps are charged what they cost now.
        seed = calibrated or curve
        self.controller = Controller(CostModel.from_curve(seed.verify, {"model": seed.draft}), fixed=draft_max,
                                     cap=cap)
        # The token texts the recording kept, as the engine's drafters read them from the vocabulary.
        piece = (lambda t: bytes.fromhex(pieces.get(str(t), ""))) if pieces else None
        self.ngram = NgramDrafter(piece=piece)
        self.model = ReplayModelDrafter(curve)
        self.drafter = {"none": NoDrafter(), "ngram": self.ngram, "model": self.model,
                        "auto": AutoDrafter(self.controller, self.ngram, self.model)}[drafter]
        self.shadow = NgramDrafter(piece=piece)  # what a plain copy would offer at each step, for the log

    def run(self, seg: dict, log: list[str] | None = None, max_tokens: int | None = None) -> Summary:
        """Replay one segment: the engine's totals of its steps, with *log* (when given) a line per step.

        A reply that ended with end-of-generation is replayed as the engine runs it, not knowing where
        it ends: drafts may reach past its end (up to *max_tokens*, the generation's limit), and the
        target's end-of-generation rejects what they copied there."""
        prompt, output = seg["prompt"], seg["output"]
        self.model.segment(seg)
        history = list(prompt)
        self.drafter.prefill(history)
        self.model.prefill(history) if self.drafter is not self.model else None
        res = Summary(prompt_tokens=len(prompt))
        rng = np.random.default_rng(0)
        params = SamplingParams()
        eog = set(seg.get("eog", []))
        ended = bool(output) and output[-1] in eog
        limit = max(max_tokens or 0, len(output)) if ended else len(output)
        k = 0
        while k < len(output):
            room = limit - k - 1
            self.model.take_decodes()
            draft, name = choose_draft(self.drafter, self.controller, history, room, params, rng,
                                       lambda t: t in eog)
            truth = output[k:]
            a = common_prefix(draft.tokens, truth)
            n = len(draft)
            # A model draft asked for but not used still took its time.
            draft_s = self.model.take_decodes() * self.curve.draft
            verify_s = self.curve.c(n + 1)
            self.controller.observe(name, n, a, draft_s, verify_s, draft.confidence, caught_up=draft.caught_up,
                                    calibrated=draft.calibrated)
            step = Step(name, n, a, draft_s, verify_s, offered=draft.offered)
            res.add(step)
            offer = self.shadow.draft(history, 16, params, rng)
            if log is not None:
                conf = " ".join(f"{c:.2f}" for c in draft.confidence[:6])
                log.append(f"k={k:4d} {step.drafter_used:5s} n={n:2d} acc={a:2d} | copy offered {len(offer):2d}, "
                           f"target takes {common_prefix(offer.tokens, truth):2d} | conf {conf}")
            emitted = truth[: a + 1]
            history.extend(emitted)
            k += len(emitted)
        res.decode_seconds = res.draft_seconds + res.verify_seconds
        res.tokens = output
        return res


def predict_table(traces: dict, curve: Curve, configs: list[str], categories: list[str] | None = None,
                  log: str | None = None, max_tokens: int | None = None,
                  calibrated: Curve | None = None) -> dict[str, dict]:
    """Replayed speedup per configuration and category (geometric mean over prompts), with totals.

    *max_tokens* cuts each recorded output, as a shorter generation would have stopped there.
    """
    segs = [s for s in traces["segments"] if not categories or s["category"] in categories]
    if max_tokens:
        segs = [{**s, "output": s["output"][:max_tokens]} for s in segs]
    cats = list(dict.fromkeys(s["category"] for s in segs))
    limit = max_tokens or max(len(s["output"]) for s in segs)  # the recording's own limit, if none is given
    geo = lambda v: math.exp(sum(math.log(x) for x in v) / len(v))
    out: dict[str, dict] = {}
    for cfg in configs:
        drafter, dm = cfg.split("/")
        sess = Session(drafter, None if dm == "auto" else int(dm), curve, calibrated=calibrated,
                       pieces=traces.get("pieces"))
        per: dict[str, list[float]] = {}
        runs = []
        for seg in segs:
            lines = [] if log is not None and seg["id"] == log else None
            r = sess.run(seg, lines, max_tokens=limit)
            if lines is not None:
                print(f"\n--- {cfg} on {seg['id']} turn {seg['turn']}")
                print("\n".join(lines))
            per.setdefault(seg["category"], []).append(r.generated_tokens * curve.c(1) / r.decode_seconds)
            runs.append(r)
        tot = Summary.total(runs)
        row = {c: round(geo(per[c]), 3) for c in cats}
        row["overall"] = round(geo([x for c in cats for x in per[c]]), 3)
        row["accepted"] = round(tot.acceptance_rate, 3) if tot.drafted else None
        row["steps"] = dict(sorted(tot.drafter_steps.items()))
        out[cfg] = row
    return out


def predict(args: argparse.Namespace) -> None:
    traces = json.loads(Path(args.traces).read_text())
    curve = load_curve(args.curve, traces)
    configs = args.configs or CONFIGS
    print(f"curve: c(1)={curve.c(1) * 1e3:.1f} ms, c(2)/c(1)={curve.c(2) / curve.c(1):.2f}, "
          f"c(4)/c(1)={curve.c(4) / curve.c(1):.2f}, c(8)/c(1)={curve.c(8) / curve.c(1):.2f}, "
          f"c(17)/c(1)={curve.c(17) / curve.c(1):.2f}, draft token {curve.draft / curve.c(1):.2f} c(1)")
    calibrated = None
    if args.slowdown != 1.0:  # the machine got slower (other jobs) after the load-time calibration
        calibrated, curve = curve, curve.slower(args.slowdown)
    table = predict_table(traces, curve, configs, args.categories, args.log, args.max_tokens, calibrated)
    cats = [k for k in next(iter(table.values())) if k not in ("overall", "accepted", "steps")]
    rows = [[cfg, *(f"{row[c]:.2f}x" for c in cats), f"{row['overall']:.2f}x",
             f"{row['accepted']:.0%}" if row["accepted"] is not None else "-",
             ", ".join(f"{k} {v}" for k, v in row["steps"].items())] for cfg, row in table.items()]
    print("\n" + markdown(["config", *cats, "overall", "accepted", "steps by drafter"], rows))
    write_json(args.json, {"curve": args.curve, "predicted": table})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--target", required=True)
    r.add_argument("--draft", required=True)
    r.add_argument("--prompts", action="append", help="suites, repeatable (default: builtin:all)")
    r.add_argument("--categories", nargs="*")
    r.add_argument("--limit", type=int, help="at most this many prompts per category")
    r.add_argument("--max-tokens", type=int, default=128)
    r.add_argument("--code-edit", type=int, default=0, help="also the code-edit prompt, this many tokens")
    r.add_argument("--threads", type=int)
    r.add_argument("--out", required=True)
    r.add_argument("--resume", action="store_true", help="keep the prompts already in --out")
    p = sub.add_parser("predict")
    p.add_argument("traces")
    p.add_argument("--curve", default="cpu", help="cpu (recorded), flat (GPU-like) or a JSON {verify, draft}")
    p.add_argument("--configs", nargs="*", help=f"drafter/draft length (default: {' '.join(CONFIGS)})")
    p.add_argument("--categories", nargs="*")
    p.add_argument("--log", help="print per-step decisions for this prompt id")
    p.add_argument("--max-tokens", type=int, help="cut the recorded outputs to this many tokens")
    p.add_argument("--slowdown", type=float, default=1.0,
                   help="steps cost this many times the curve the controller was calibrated with")
    p.add_argument("--json", help="also write the predictions here")
    args = ap.parse_args()
    record(args) if args.cmd == "record" else predict(args)


if __name__ == "__main__":
    main()
