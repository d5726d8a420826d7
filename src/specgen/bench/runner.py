"""Measure drafters and draft lengths on this machine, the way Spec-Bench measures methods.

Each model pair is loaded once; configurations are switched on the loaded
engine, so every configuration runs on the same weights, threads and caches.
For every question the baseline (plain decoding through the same engine) and
the configurations run interleaved, A B1 A B2 A ... A, and each configuration
is compared with the geometric mean of the two baseline runs around it: drift
on a noisy, shared machine (single-token decode was seen to swing from 25 ms
to 3 s on a VM under page reclaim) hits both sides of every ratio.

Rates are decode tokens/s (first generated token to the last), which the KV
cache's prefix reuse between runs does not affect.  Prompt tokens/s is taken
once per question and drafter from a cold cache, in the warm-up.

Summaries follow Spec-Bench: the median over repeats per question, then the
geometric mean over the questions of a category (and over all questions for
"overall"); acceptance and mean accepted tokens per verify step are totals
over the runs.  Nothing here prints; the CLI renders the events.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .. import __version__
from .workload import BASELINE, Config, Plan, Question, categories_of
from ..engine import Engine, Summary
from ..errors import SpecgenError
from ..fileio import cache_dir, file_sha256, read_json_cache, write_json_cache
from ..build import EngineOptions, describe_backend, load_engine, topology
from ..formats.infill import Infill, infill_tokens
from ..llama.chat_template import chat_tokens
from ..sampling import MAX_SEED, SamplingParams
from ..settings import parse_draft_max
from ..tokens import common_prefix

FORMAT = 1
"""Version of the result file layout (`specgen_bench` key)."""


# ---------------------------------------------------------------- events

@dataclass
class PairLoading:
    pair: str


@dataclass
class PairLoaded:
    info: dict


@dataclass
class Generating:
    """About to generate one turn (for progress)."""
    pair: str
    question: Question
    config: Config
    temperature: float | None
    repeat: int
    """-1 for the warm-up."""
    turn: int


@dataclass
class Generated:
    tokens: int


@dataclass
class Run:
    row: dict


@dataclass
class Finished:
    result: dict


BenchEvent = PairLoading | PairLoaded | Generating | Generated | Run | Finished


@dataclass
class PairSpec:
    """A pair to load: its display name, whether it is a models.yaml pair, and its EngineOptions."""
    name: str
    options: EngineOptions
    registry_pair: bool = False


# ---------------------------------------------------------------- running

def run_bench(pairs: Sequence[PairSpec], plan: Plan, settings: dict | None = None) -> Iterator[BenchEvent]:
    """Load each pair once, run the plan on it, and finish with the whole result."""
    runs: list[dict] = []
    infos: list[dict] = []
    started = time.time()
    for spec in pairs:
        yield PairLoading(spec.name)
        engine = load_engine(spec.options)
        try:
            missing = [d for d in plan.drafters() if d not in engine.drafters]
            if missing:
                engine.set_drafter(missing[0])  # raises with the drafters this engine has
            check_context(engine, plan)
            info = pair_info(engine, spec)
            infos.append(info)
            yield PairLoaded(info)
            for ev in run_pair(engine, spec.name, plan, seq_start=len(runs)):
                if isinstance(ev, Run):
                    runs.append(ev.row)
                yield ev
        finally:
            engine.close()
    yield Finished(build_result(infos, runs, plan, settings or {}, started))


def run_pair(engine: Engine, pair: str, plan: Plan, seq_start: int = 0) -> Iterator[BenchEvent]:
    """All questions of *plan* on one loaded engine; Run rows in execution order (seq)."""
    seq = [seq_start]
    prefill: dict[tuple[str, str], tuple[int, float]] = {}

    def converse(q: Question, config: Config, temperature: float | None, repeat: int,
                 sampling: SamplingParams, max_tokens: int, turns: int) -> Iterator[BenchEvent]:
        engine.set_drafter(config.drafter)
        engine.set_draft_max(config.draft_max)
        messages: list[dict] = []
        done = []
        for i, turn in enumerate(q.turns[:turns]):
            yield Generating(pair, q, config, temperature, repeat, i)
            messages.append({"role": "user", "content": turn})
            s = _generate(engine, _prompt(engine, q, messages), max_tokens, sampling)
            messages.append({"role": "assistant", "content": s.text})
            done.append(s)
            yield Generated(s.generated_tokens)
        return done

    for qi, q in enumerate(plan.questions):
        for d in plan.drafters():
            engine.reset_cache()  # measure prompt tok/s from an empty cache
            first = yield from converse(q, Config(d, None if d != "none" else 0), None, -1, SamplingParams(),
                                        min(plan.warmup_tokens, plan.max_tokens), 1)
            prefill[(str(q.question_id), d)] = (first[0].prompt_tokens, first[0].prompt_seconds)
        for temperature in plan.temperatures:
            session = engine.learned()
            for r in range(plan.repeat):
                # Repeats measure the same thing again, to average out timing noise: each starts from the
                # session as it was before this prompt, not one that has learned from its answer already.
                engine.restore(session)
                # One seed per question and repeat: at T > 0 every configuration draws from the same stream.
                # Wrapped, so that a --seed near the top of the range stays one for every question.
                sampling = SamplingParams(temperature=temperature, seed=(plan.seed + 1009 * qi + r) % (MAX_SEED + 1))

                def measured(config: Config) -> Iterator[BenchEvent]:
                    got = yield from converse(q, config, temperature, r, sampling, plan.max_tokens, len(q.turns))
                    row = _row(seq[0], pair, q, config, temperature, r, got,
                               prefill[(str(q.question_id), config.drafter)])
                    seq[0] += 1
                    return row

                before = yield from measured(BASELINE)
                yield Run(before)
                for config in plan.configs:
                    row = yield from measured(config)
                    after = yield from measured(BASELINE)
                    _pair_with_baseline(row, before, after)
                    yield Run(row)
                    yield Run(after)
                    before = after


def check_context(engine: Engine, plan: Plan) -> None:
    """Fail now, not half an hour in, when a conversation cannot fit the context."""
    for q in plan.questions:
        need = len(_prompt(engine, q, [{"role": "user", "content": q.turns[0]}]))
        # Later turns: the user's text, the reply, and a little template framing each.
        need += sum(len(engine.tokenize(t, add_special=False)) + 16 for t in q.turns[1:])
        need += plan.max_tokens * len(q.turns)
        if need >= engine.n_ctx:
            raise SpecgenError(f"question {q.question_id} ({q.category}) needs about {need} tokens of context "
                               f"but the context holds {engine.n_ctx}; raise --ctx or lower --max-tokens")


def _prompt(engine: Engine, q: Question, messages: list[dict]) -> list[int]:
    """The conversation so far through the chat template, or an infill's code around the cursor."""
    if q.suffix is not None:
        return infill_tokens(engine.target, Infill(q.turns[0], q.suffix))
    return chat_tokens(engine.target, messages)


def _generate(engine: Engine, tokens: list[int], max_tokens: int, sampling: SamplingParams) -> Summary:
    summary = None
    for ev in engine.generate(tokens, max_tokens=max_tokens, sampling=sampling):
        if isinstance(ev, Summary):
            summary = ev
    return summary


def _row(seq: int, pair: str, q: Question, config: Config, temperature: float, repeat: int,
         turns: list[Summary], prefill: tuple[int, float]) -> dict:
    s = Summary.total(turns)
    tps = round(s.decode_tps, 3)
    p_tokens, p_seconds = prefill
    return {
        "seq": seq, "pair": pair, "role": "baseline" if config.baseline else "config",
        "drafter": config.drafter, "draft_max": config.draft_max_label, "config": config.label,
        "temperature": temperature, "repeat": repeat, "question_id": q.question_id, "category": q.category,
        "turns": len(turns), "prompt_tokens": s.prompt_tokens,
        "generated_tokens": s.generated_tokens, "decode_seconds": round(s.decode_seconds, 5), "decode_tps": tps,
        "baseline_tps": tps if config.baseline else None, "speedup": 1.0 if config.baseline else None,
        "steps": s.steps, "drafted": s.drafted, "accepted": s.accepted,
        "acceptance_rate": round(s.acceptance_rate, 4), "mean_accepted": round(s.mean_accepted, 4),
        "draft_seconds": round(s.draft_seconds, 5), "verify_seconds": round(s.verify_seconds, 5),
        "host_ms_per_step": {k: round(v, 4) for k, v in s.host_ms_per_step.items()},
        "prefill_tokens": p_tokens, "prefill_seconds": round(p_seconds, 5),
        "prompt_tps": round(p_tokens / p_seconds, 3) if p_seconds > 0 else None,
        "same_as_baseline": None, "diverged_at": None,
        "stop_reason": turns[-1].stop_reason,
        "drafter_steps": s.drafter_steps, "draft_lengths": {str(k): v for k, v in s.draft_lengths.items()},
        "peak_rss_mb": peak_rss_mb(),
        "tokens": [t for s in turns for t in s.tokens],
    }


def _pair_with_baseline(row: dict, before: dict, after: dict) -> None:
    """The baseline of a configuration run is the geometric mean of the plain runs on either side."""
    base = round(geomean([before["decode_tps"], after["decode_tps"]]), 3)
    row["baseline_tps"] = base
    row["speedup"] = round(row["decode_tps"] / base, 4) if base > 0 else 0.0
    if row["temperature"] == 0:
        # A flag, not an error: llama.cpp's batched and single-token kernels round differently, so
        # greedy output may part from the baseline where the target's top two logits nearly tie.
        row["same_as_baseline"], row["diverged_at"] = compare_tokens(before["tokens"], row["tokens"])


def compare_tokens(baseline: Sequence[int], tokens: Sequence[int]) -> tuple[bool, int | None]:
    """(identical, index of the first differing token or None)."""
    if list(baseline) == list(tokens):
        return True, None
    return False, common_prefix(baseline, tokens)


# ---------------------------------------------------------------- summary maths

def geomean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None]
    if not vals:
        return 0.0
    if any(v <= 0 for v in vals):
        return 0.0
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def _per_question(rows: list[dict], key: str) -> list[float]:
    """The median of *key* over repeats, one value per question."""
    by_q: dict[tuple, list[float]] = {}
    for r in rows:
        if r[key] is not None:
            by_q.setdefault((r["category"], str(r["question_id"])), []).append(r[key])
    return [statistics.median(v) for v in by_q.values()]


def _summary_of(row: dict) -> Summary:
    """A run row's totals as a Summary, to add up rows the way the engine adds up steps."""
    return Summary(generated_tokens=row["generated_tokens"], decode_seconds=row["decode_seconds"],
                   steps=row["steps"], drafted=row["drafted"], accepted=row["accepted"],
                   draft_seconds=row["draft_seconds"], verify_seconds=row["verify_seconds"],
                   drafter_steps=dict(row["drafter_steps"]))


def summarize(runs: list[dict]) -> list[dict]:
    """One row per pair x configuration x temperature x category, plus category "overall"."""
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(runs, key=lambda r: r["seq"]):
        groups.setdefault((r["pair"], r["temperature"], r["drafter"], str(r["draft_max"])), []).append(r)
    out = []
    # Groups appear in run order: pairs, then per question each temperature's baseline and configurations.
    for (pair, temperature, _, _), rows in groups.items():
        for cat in [*dict.fromkeys(r["category"] for r in rows), "overall"]:
            sel = rows if cat == "overall" else [r for r in rows if r["category"] == cat]
            first = sel[0]
            tot = Summary.total(_summary_of(r) for r in sel)
            flags = [r["same_as_baseline"] for r in sel if r["same_as_baseline"] is not None]
            out.append({
                "pair": pair, "drafter": first["drafter"], "draft_max": first["draft_max"],
                "config": first["config"], "temperature": temperature, "category": cat,
                "n_prompts": len({(r["category"], str(r["question_id"])) for r in sel}), "n_runs": len(sel),
                "speedup": round(geomean(_per_question(sel, "speedup")), 4),
                "decode_tps": round(geomean(_per_question(sel, "decode_tps")), 3),
                "baseline_tps": round(geomean(_per_question(sel, "baseline_tps")), 3),
                "acceptance_rate": round(tot.acceptance_rate, 4), "mean_accepted": round(tot.mean_accepted, 4),
                "prompt_tps": round(geomean(_per_question(sel, "prompt_tps")), 3),
                "draft_seconds": round(tot.draft_seconds, 4), "verify_seconds": round(tot.verify_seconds, 4),
                "draft_share": round(tot.draft_share, 4),
                "generated_tokens": tot.generated_tokens, "steps": tot.steps, "drafted": tot.drafted,
                "accepted": tot.accepted,
                "n_diverged": sum(not f for f in flags) if temperature == 0 and first["role"] == "config" else None,
                "drafter_steps": tot.drafter_steps,
                "peak_rss_mb": max((r["peak_rss_mb"] or 0 for r in sel), default=0) or None,
            })
    return out


# ---------------------------------------------------------------- recommendation

@dataclass
class Recommendation:
    pair: str
    config: Config
    speedup: float
    temperature: float
    best: Config
    best_speedup: float

    @property
    def pays(self) -> bool:
        return not self.config.baseline

    def line(self, with_pair: bool = False) -> str:
        where = f"for {self.pair} " if with_pair else ""
        mode = "greedy" if self.temperature == 0 else f"temperature {self.temperature:g}"
        if self.pays:
            return f"on this machine {where}use {self.config.flags()}: {self.speedup:.2f}x overall ({mode})"
        return (f"on this machine {where}speculation does not pay: use --drafter none "
                f"(best was {self.best.flags()} at {self.best_speedup:.2f}x overall, {mode})")

    def as_json(self) -> dict:
        return {"pair": self.pair, "drafter": self.config.drafter, "draft_max": self.config.draft_max_label,
                "speedup": self.speedup, "temperature": self.temperature, "line": self.line(),
                "best_drafter": self.best.drafter, "best_draft_max": self.best.draft_max_label,
                "best_speedup": self.best_speedup}


def _config_of(row: dict) -> Config:
    return Config(row["drafter"], parse_draft_max(row["draft_max"]))


def best_row(summary: list[dict], pair: str, temperature: float | None = None) -> dict | None:
    """The configuration with the highest overall speedup (greedy if measured, else the first temperature)."""
    rows = [s for s in summary if s["pair"] == pair and s["category"] == "overall" and s["drafter"] != "none"]
    if not rows:
        return None
    if temperature is None:
        temps = list(dict.fromkeys(s["temperature"] for s in rows))
        temperature = 0.0 if 0.0 in temps else temps[0]
    rows = [s for s in rows if s["temperature"] == temperature]
    return max(rows, key=lambda s: s["speedup"])


def recommend(summary: list[dict], pair: str) -> Recommendation | None:
    best = best_row(summary, pair)
    if best is None:
        return None
    cfg = _config_of(best)
    pays = best["speedup"] > 1.0
    return Recommendation(pair, cfg if pays else BASELINE, best["speedup"] if pays else 1.0,
                          best["temperature"], cfg, best["speedup"])


# ---------------------------------------------------------------- machine and result

def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (not GPU memory)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def _cpuinfo() -> tuple[str | None, int | None]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, None
    model, cores, phys = None, set(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            cores.add((phys, value))
    return model, len(cores) or None


def machine_info() -> dict:
    from ..llama.backend import backend_name, system_info

    model, physical = _cpuinfo()
    if not model and sys.platform == "darwin":
        import subprocess

        try:
            model = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                   text=True, timeout=5).stdout.strip() or None
        except OSError:
            pass
    try:
        from importlib.metadata import version

        llama_version = version("llama_cpp_python")
    except Exception:
        llama_version = None
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores_logical": os.cpu_count(), "cores_physical": physical,
        "platform": platform.platform(), "python": platform.python_version(),
        "backend": backend_name(), "llama_cpp_system_info": system_info(),
        "llama_cpp_python": llama_version, "specgen": __version__,
        "command": shlex.join(["specgen", *sys.argv[1:]]),
    }


def pair_info(engine: Engine, spec: PairSpec) -> dict:
    o = spec.options

    def model(m) -> dict | None:
        if m is None:
            return None
        return {"path": str(m.path), "name": m.name, "bytes": m.path.stat().st_size, "sha256": model_sha256(m.path),
                "gpu_layers": m.gpu_layers, "n_layer": m.n_layer}

    return {"pair": spec.name, "registry_pair": spec.registry_pair, "target": model(engine.target),
            "draft": model(engine.draft_model), "backend": describe_backend(engine),
            "threads": engine.ctx.n_threads, "n_ctx": engine.n_ctx, "use_mmap": o.use_mmap,
            "gpu_layers": o.gpu_layers, "draft_gpu_layers": o.draft_gpu_layers, "draft_p_min": o.draft_p_min,
            "exact_rows": engine.ctx.exact_rows if engine.exact else None,
            "drafters": list(engine.drafters), "topology": topology(engine)}


def model_sha256(path: Path) -> str:
    """sha256 of a model file, cached by path, size and mtime (a 5 GB file takes a while)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = cache_dir() / "sha256.json"
    cache = read_json_cache(cache_path, _digests) or {}
    if key in cache:
        return cache[key]
    cache[key] = digest = file_sha256(path)
    write_json_cache(cache_path, cache)
    return digest


def _digests(cache: object) -> bool:
    """The layout `model_sha256` writes: {"path|size|mtime": hex digest}."""
    return isinstance(cache, dict) and all(isinstance(v, str) for v in cache.values())


def build_result(pairs: list[dict], runs: list[dict], plan: Plan, settings: dict, started: float) -> dict:
    machine = machine_info()
    if pairs:
        first = pairs[0]
        machine.update({k: first[k] for k in ("threads", "use_mmap")})
        machine["gpu_layers"] = first["target"]["gpu_layers"]
        machine["draft_gpu_layers"] = first["draft"]["gpu_layers"] if first["draft"] else None
        machine["backend_detail"] = first["backend"]
        machine["topology"] = first["topology"]
    machine["pairs"] = pairs
    machine["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
    machine["seconds"] = round(time.time() - started, 1)
    summary = summarize(runs)
    recs = [r for p in pairs if (r := recommend(summary, p["pair"])) is not None]
    return {
        "specgen_bench": FORMAT,
        "machine": machine,
        "settings": {**settings, "max_tokens": plan.max_tokens, "repeat": plan.repeat,
                     "temperatures": plan.temperatures, "warmup_tokens": plan.warmup_tokens,
                     "configs": [c.label for c in plan.configs], "n_questions": len(plan.questions),
                     "categories": categories_of(plan.questions)},
        "runs": runs,
        "summary": summary,
        "recommendations": [r.as_json() for r in recs],
    }
