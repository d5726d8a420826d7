"""What speculation costs and pays on this machine's accelerator, in one JSON file: a script, not a test.

    python -m tests.device.gpu_check --out check.json --tokenizer qwen-tokenizer.json.gz \
                                     [--shapes qwen7b|small] [--traces traces.json]
    python -m tests.device.gpu_check --out check.json --models TARGET.gguf DRAFT.gguf [--traces traces.json]

(from the repository root, with specgen importable: installed, or PYTHONPATH=src as gpu_check.sh runs it)

Writes two random-weight GGUFs with the `gguf` package, shaped like Qwen2.5 7B
(target) and 0.5B (draft) -- shapes and quant types, not weights, decide
timing -- with the real Qwen2.5 tokenizer (so the pair passes the vocabulary
check); then, through specgen's llama.cpp layer:
  * the target's verify cost c(n), n = 1..32 (--max-verify; calibrate.measure_verify), and the draft's
    per-token cost;
  * plain decoding tok/s through specgen's engine against llama-cpp-python's `Llama`, interleaved;
  * specgen's host work per step (tests/bench/host_time.py) beside these decode calls, plain and with the
    draft model at 1, 4, 8 and 16 tokens, greedy and at T = 0.7, and the draft model's predicted speedup
    over plain decoding from the measured costs, with that host time and without it;
  * what the controller chooses given those costs, and, with --traces (recorded by
    `python -m tests.bench.replay record` on a CPU), the replayed speedups per category under the
    measured curve.
`--shapes small` (the CPU path) uses a 0.5B-shaped target and a 4-layer draft; `--models` measures
two GGUFs at hand instead of writing any (the test suite's smallest case, on its tiny pair).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {  # n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, tied output
    "qwen2.5-7b": (3584, 28, 28, 4, 18944, 152064, False),
    "qwen2.5-0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "tiny": (256, 4, 4, 2, 1024, 151936, True),
}
PAIRS = {"qwen7b": ("qwen2.5-7b", "qwen2.5-0.5b"), "small": ("qwen2.5-0.5b", "tiny")}


def write_tokenizer_file(src_gguf: str, out: str) -> None:
    """Keep the tokenizer keys of a real GGUF (for the carry folder): a few MB instead of the model."""
    import gguf

    r = gguf.GGUFReader(src_gguf)
    keep = {}
    for name, f in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        if name == "tokenizer.chat_template":
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            if f.types[1] == gguf.GGUFValueType.STRING:
                keep[name] = ["s", [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]]
            else:
                keep[name] = ["i", [int(f.parts[i][0]) for i in f.data]]
        elif t == gguf.GGUFValueType.STRING:
            keep[name] = ["str", bytes(f.parts[f.data[0]]).decode()]
        elif t == gguf.GGUFValueType.BOOL:
            keep[name] = ["bool", bool(f.parts[f.data[0]][0])]
        else:
            keep[name] = ["u32", int(f.parts[f.data[0]][0])]
    with gzip.open(out, "wt") as fh:
        json.dump(keep, fh)


def _blocks(qtype, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random quantized rows with sane scales, tiled from one random slab (values don't change timing)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    per_row = cols // block * size
    slab = rng.integers(0, 256, size=(64, per_row), dtype=np.uint8)
    blocks = slab.reshape(64, -1, size)
    scale = np.frombuffer(np.array([0.002], dtype=np.float16).tobytes(), dtype=np.uint8)
    blocks[:, :, 0:2] = scale  # d
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        blocks[:, :, 2:4] = 0  # dmin
    return np.resize(slab, (rows, per_row))


def write_model(path: Path, shape: str, tokenizer: dict, seed: int) -> None:
    import gguf

    n_embd, n_layer, n_head, n_kv, n_ff, n_vocab, tied = SHAPES[shape]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name(f"random {shape}")
    w.add_context_length(32768)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(15)
    for key, (kind, value) in tokenizer.items():
        if kind == "s":
            tokens = list(value) + [f"[PAD{i}]" for i in range(max(0, n_vocab - len(value)))] \
                if key == "tokenizer.ggml.tokens" else value
            w.add_array(key, tokens)
        elif kind == "i":
            vals = list(value)
            if key == "tokenizer.ggml.token_type":
                vals += [4] * max(0, n_vocab - len(vals))  # user-defined padding, as Qwen's own GGUFs pad
            w.add_array(key, vals)
        elif kind == "str":
            w.add_string(key, value)
        elif kind == "bool":
            w.add_bool(key, value)
        else:
            w.add_uint32(key, value)
    Q4K, Q8 = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q8_0

    def mat(name: str, rows: int, cols: int) -> None:
        q = Q4K if cols % 256 == 0 else Q8  # llama.cpp's Q4_K_M falls back likewise where rows don't fit
        w.add_tensor(name, _blocks(q, rows, cols, rng), raw_dtype=q)

    def vec(name: str, n: int, value: float) -> None:
        w.add_tensor(name, np.full(n, value, dtype=np.float32))

    head = n_embd // n_head
    mat("token_embd.weight", n_vocab, n_embd)
    vec("output_norm.weight", n_embd, 1.0)
    if not tied:
        mat("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd, 1.0)
        vec(p + "ffn_norm.weight", n_embd, 1.0)
        mat(p + "attn_q.weight", n_embd, n_embd)
        mat(p + "attn_k.weight", n_kv * head, n_embd)
        mat(p + "attn_v.weight", n_kv * head, n_embd)
        vec(p + "attn_q.bias", n_embd, 0.0)
        vec(p + "attn_k.bias", n_kv * head, 0.0)
        vec(p + "attn_v.bias", n_kv * head, 0.0)
        mat(p + "attn_output.weight", n_embd, n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def predicted_speedup(verify: dict[int, float], per_token: float, host: list[dict]) -> dict:
    """What the draft model would gain over plain decoding at these costs, for acceptance rates a 7B/0.5B
    pair shows on code and prose: the best fixed draft length, with this machine's host time per step and
    without it (the difference is what the host work costs).  Greedy host times; n beyond the measured
    lengths takes the nearest measured one."""
    from specgen.controller import expected_tokens

    greedy = {r["length"]: r["host_ms"] / 1e3 for r in host if r["temperature"] == 0.0}

    def host_at(n: int) -> float:
        return greedy[min(greedy, key=lambda m: abs(m - n))]

    out = {}
    for alpha in (0.6, 0.7, 0.8, 0.9):
        for with_host in (True, False):
            plain = 1.0 / (verify[1] + (host_at(0) if with_host else 0.0))
            best = max((expected_tokens([alpha] * n, n)
                        / (verify[n + 1] + n * per_token + (host_at(n) if with_host else 0.0)), n)
                       for n in range(1, max(verify)))
            out[f"acceptance {alpha}" + ("" if with_host else ", no host time")] = {
                "draft_length": best[1], "vs_plain": round(best[0] / plain, 3)}
    return out


def say(t0: float, what: str) -> None:
    print(f"gpu_check: {time.perf_counter() - t0:6.1f} s  {what}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", help="gzipped JSON of tokenizer keys (see --make-tokenizer)")
    ap.add_argument("--make-tokenizer", nargs=2, metavar=("GGUF", "OUT"), help="extract the tokenizer keys and exit")
    ap.add_argument("--shapes", choices=sorted(PAIRS), default="qwen7b")
    ap.add_argument("--models", nargs=2, metavar=("TARGET", "DRAFT"),
                    help="measure these GGUFs instead of writing random-weight ones")
    ap.add_argument("--workdir", default="/tmp/specgen-gpu-check")
    ap.add_argument("--traces", help="traces recorded by `python -m tests.bench.replay record`")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-verify", type=int, default=32, help="measure verify batches of 1 to this many tokens")
    args = ap.parse_args()
    if args.make_tokenizer:
        write_tokenizer_file(*args.make_tokenizer)
        return
    if not args.tokenizer and not args.models:
        ap.error("--tokenizer is required to write the models (make one with --make-tokenizer), or give --models")
    from specgen.controller import Controller, CostModel
    from specgen.drafters import NoDrafter
    from specgen.engine import Engine
    from specgen.llama.backend import Context, Model, ModelOptions, backend_name, system_info
    from specgen.llama.calibrate import measure_draft, measure_verify

    report: dict = {"shapes": None if args.models else args.shapes, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    t0 = time.perf_counter()
    if args.models:
        paths = dict(zip(("target", "draft"), map(Path, args.models)))
        shapes = {r: p.name for r, p in paths.items()}
    else:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        with gzip.open(args.tokenizer, "rt") as fh:
            tokenizer = json.load(fh)
        shapes = dict(zip(("target", "draft"), PAIRS[args.shapes]))
        paths = {}
        for (role, shape), seed in zip(shapes.items(), (1, 2)):
            paths[role] = work / f"random-{shape}.gguf"
            if not paths[role].exists():
                write_model(paths[role], shape, tokenizer, seed)
        report["write_seconds"] = round(time.perf_counter() - t0, 1)
        say(t0, "models written")
    report["models"] = {r: {"shape": shapes[r], "bytes": p.stat().st_size} for r, p in paths.items()}
    report["backend"] = backend_name()
    report["system_info"] = system_info()

    target = Model(paths["target"], ModelOptions(gpu_layers=-1, use_mmap=False))
    draft = Model(paths["draft"], ModelOptions(gpu_layers=-1, use_mmap=False))
    report["gpu_layers"] = {"target": target.gpu_layers, "draft": draft.gpu_layers}
    tctx, dctx = Context(target, 4096), Context(draft, 4096)
    say(t0, "models loaded")
    verify = measure_verify(tctx, tuple(range(1, args.max_verify + 1)))
    per_token = measure_draft(dctx)
    catch_up = measure_verify(dctx, tuple(n for n in (1, 2, 3, 4, 6, 8, 12, 17) if n <= args.max_verify),
                              logits="last")  # the draft model's own batches
    say(t0, "costs measured")
    dctx.close()
    report["verify_seconds"] = {str(n): round(s, 6) for n, s in verify.items()}
    report["verify_over_one"] = {str(n): round(s / verify[1], 3) for n, s in verify.items()}
    report["draft_token_seconds"] = round(per_token, 6)
    report["draft_over_target_step"] = round(per_token / verify[1], 4)
    report["draft_catch_up_over_one"] = {str(n): round(s / catch_up[1], 3) for n, s in catch_up.items()}
    report["threads"] = tctx.n_threads
    tctx.close()

    # Plain decoding: specgen's engine against llama-cpp-python's Llama, interleaved.
    from llama_cpp import Llama

    from ..bench.engine_ab import engine_rate, llama_rate
    from ..bench.harness import interleave

    prompt = target.tokenize("Write a Python function that merges two sorted lists. " * 4)
    engine = Engine(target, NoDrafter(), n_ctx=4096)
    # The same threads on both sides (Llama's default is half of ours on a small machine).
    llm = Llama(str(paths["target"]), n_gpu_layers=-1, n_ctx=4096, use_mmap=False, verbose=False,
                n_threads=engine.ctx.n_threads, n_threads_batch=engine.ctx.n_threads)

    def measure(side: str) -> tuple[float, dict]:
        # Random weights emit end-of-generation tokens at random: both sides run the full length.
        if side == "llama_cpp_python":
            return llama_rate(llm, prompt, args.tokens, stop_at_eog=False)[0], {}
        engine.reset_cache()
        return engine_rate(engine, prompt, args.tokens, ignore_eos=True)[0], {}

    ab = interleave(["specgen"], args.rounds, measure, baseline="llama_cpp_python")
    say(t0, "plain decoding measured")
    report["plain_tok_s"] = {side: [round(x, 2) for x in ab.values(side)] for side in ("specgen", "llama_cpp_python")}
    report["plain_tok_s"]["ratio_median"] = round(ab.ratio("specgen"), 3)
    engine.close()
    llm.close()  # its GPU memory now, not when this function returns

    # Host work per step, as tests/bench/host_time.py measures it, with this machine's decode calls: the draft
    # model drafts every step at a fixed length (random weights agree with nothing, so it drafts, never copies).
    from specgen.drafters import ModelDrafter

    from ..bench.host_time import measure as host_measure

    engine = Engine(target, NoDrafter(), n_ctx=4096, drafters={"model": ModelDrafter(draft, 4096)},
                    controller=Controller(CostModel.from_curve(verify, {"model": per_token})))
    host = [host_measure(engine, prompt, d, n, t, args.tokens // 2)
            for t in (0.0, 0.7) for d, n in (("none", 0), *(("model", n) for n in (1, 4, 8, 16)))]
    engine.close()
    say(t0, "host work measured")
    report["host_ms_per_step"] = host
    report["predicted_speedup"] = predicted_speedup(verify, per_token, host)

    # What the controller chooses at these costs.
    ctl = Controller(CostModel.from_curve(verify, {"model": per_token}), cap=32)
    fresh = ctl.outlook("model")
    report["controller"] = {
        "draft_model_outlook_at_start": {"n": fresh.n, "vs_plain": round(fresh.rate * verify[1], 3)},
        "verified_of_32_copied_tokens_at_conf": {str(c): ctl.best_length("ngram", [c] * 32, calibrated=True).n
                                                 for c in (0.3, 0.6, 0.9, 0.99)},
        "verified_of_32_model_tokens_at_conf": {str(c): ctl.best_length("model", [c] * 32).n
                                                for c in (0.3, 0.6, 0.9, 0.99)},
    }
    if args.traces:
        from ..bench import replay

        curve = replay.Curve({n: s for n, s in verify.items()}, per_token, catch_up)
        traces = json.loads(Path(args.traces).read_text())
        report["replay"] = replay.predict_table(traces, curve, ["auto/auto", "ngram/auto", "model/auto", "model/4",
                                                                "model/8", "ngram/8"])
    say(t0, "done")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k not in ("verify_seconds", "system_info")}, indent=1))


if __name__ == "__main__":
    main()
