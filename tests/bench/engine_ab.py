"""Engine A/B benchmark: a script, not a test.

    python -m tests.bench.engine_ab --target T.gguf --draft D.gguf [--rounds 3] [--tokens 256]
                                    [--only llama,model/8,ngram,auto] [--threads N] [--json OUT]

Two questions on the code prompts, greedy, --no-mmap, each configuration interleaved with plain
decoding through specgen's engine by the harness (A B A ...):
  * llama: is the engine's plain decoding as fast as llama-cpp-python's own generate loop
    (`Llama.generate`, the same tokens)?  Its ratio is Llama / engine.
  * model/8, ngram, auto: what each drafter gains over plain decoding, each in a fresh engine of its
    own (nothing learned carries over from another configuration, unlike in `specgen bench`).
Rates are decode tokens/s from the first generated token to the last; ratios are medians over rounds.
Where an output parts from the plain one, the plain run's top-2 logit gap there is shown (a near-tie
is legitimate).
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

from specgen.build import EngineOptions, load_engine
from specgen.engine import Engine, Step, Summary
from specgen.llama.backend import default_threads
from specgen.llama.chat_template import chat_tokens, messages_for
from specgen.settings import uses_draft_model
from specgen.tokens import common_prefix

from ..near_tie import top2_gap
from .harness import PROMPTS, csv_list, interleave, markdown, progress, write_json

CONFIGS = {"llama": ("engine `none` vs llama-cpp-python Llama.generate (Llama/engine)", "code-write"),
           "model/8": ("--drafter model --draft-max 8", "code-write"),
           "ngram": ("--drafter ngram (draft-max auto)", "code-edit"),
           "auto": ("--drafter auto --draft-max auto", "code-write,code-edit")}
"""Each configuration: how the table names it, and the prompts it runs on."""


def engine_rate(engine: Engine, prompt: Sequence[int], n: int, ignore_eos: bool = False) -> tuple[float, Summary]:
    """Decode tok/s through specgen's engine, from the first step to the last (prefill excluded)."""
    t_first = t_last = None
    count = first_emitted = 0
    summary = None
    for ev in engine.generate(prompt, max_tokens=n, ignore_eos=ignore_eos):
        if isinstance(ev, Step):
            now = time.perf_counter()
            if t_first is None:
                t_first, first_emitted = now, ev.emitted
            t_last = now
            count += ev.emitted
        elif isinstance(ev, Summary):
            summary = ev
    return (count - first_emitted) / (t_last - t_first) if t_last > t_first else 0.0, summary


def llama_rate(llm, prompt: Sequence[int], n: int, stop_at_eog: bool = True) -> tuple[float, list[int]]:
    """llama-cpp-python's high-level generate loop, greedy, the same tokens."""
    out, t_first = [], None
    for tok in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        now = time.perf_counter()
        if t_first is None:
            t_first = now
        out.append(tok)
        if stop_at_eog and (llm._model.token_is_eog(tok) if hasattr(llm._model, "token_is_eog")
                            else tok == llm.token_eos()):
            break
        if len(out) >= n:
            break
    return (len(out) - 1) / (now - t_first) if now > t_first else 0.0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", help="the draft model (needed by model/8 and auto)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--prompt", help="run every configuration on this prompt instead of the code prompts")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args()
    only = csv_list(a.only)
    if unknown := [c for c in only if c not in CONFIGS]:
        ap.error(f"unknown configuration {unknown[0]!r}; choose of {', '.join(CONFIGS)}")
    if not a.draft and (need := [c for c in only if uses_draft_model(c.partition("/")[0])]):
        ap.error(f"{' and '.join(need)} need --draft")

    def make(drafter: str, draft_max: int | None = None) -> Engine:
        return load_engine(EngineOptions(a.target, a.draft if uses_draft_model(drafter) else None,
                                         drafter=drafter, draft_max=draft_max, n_ctx=4096, threads=a.threads,
                                         use_mmap=False))

    plain = make("none")
    texts = {"prompt": a.prompt} if a.prompt else PROMPTS
    prompts = {name: chat_tokens(plain.target, messages_for(text)) for name, text in texts.items()}
    rows, out = [], []
    for config in only:
        if config == "llama":
            from llama_cpp import Llama

            llm = Llama(a.target, n_ctx=4096, n_threads=a.threads or default_threads(), use_mmap=False,
                        verbose=False)

            def run_b(prompt: list[int], n: int) -> tuple[float, dict]:
                rate, tokens = llama_rate(llm, prompt, n)
                return rate, {"tokens": tokens}
        else:
            drafter, _, dmax = config.partition("/")
            engine = make(drafter, int(dmax) if dmax else None)

            def run_b(prompt: list[int], n: int) -> tuple[float, dict]:
                rate, s = engine_rate(engine, prompt, n)
                return rate, {"tokens": s.tokens, "summary": s}
        label, names = CONFIGS[config]
        for name in ["prompt"] if a.prompt else names.split(","):
            prompt = prompts[name]

            def measure(which: str) -> tuple[float, dict]:
                if which == "none":
                    rate, s = engine_rate(plain, prompt, a.tokens)
                    return rate, {"tokens": s.tokens}
                return run_b(prompt, a.tokens)

            engine_rate(plain, prompt, 16)  # warm-up: first graphs, the prompt's KV
            run_b(prompt, 16)
            ab = interleave([config], a.rounds, measure, say=progress(name))
            note = describe(plain, prompt, ab.last("none")["tokens"], ab.last(config))
            rows.append([label, name, f"{ab.value('none'):.1f}", f"{ab.value(config):.1f}",
                         f"{ab.ratio(config):.3f}", note])
            out.append({"config": config, "prompt": name, "note": note, **ab.to_json()})
        if config == "llama":
            del llm
        else:
            engine.close()
    plain.close()
    print("\n" + markdown(["configuration", "prompt", "none tok/s", "config tok/s", "ratio (median)", "notes"], rows))
    write_json(a.json, {"tokens": a.tokens, "rounds": a.rounds, "rows": out})


def describe(plain: Engine, prompt: list[int], plain_tokens: list[int], info: dict) -> str:
    """Whether the configuration's tokens are the plain run's, and where they part; with the drafts' tally."""
    tokens = info["tokens"]
    k = common_prefix(plain_tokens, tokens)
    if k >= min(len(tokens), len(plain_tokens)):
        same = "same tokens"
    else:
        same = f"differs from token {k} (plain top-2 gap {top2_gap(plain.target, prompt + plain_tokens[:k]):.3f})"
    s = info.get("summary")
    if s is None:
        return same
    return (f"{same}, accepted {s.accepted}/{s.drafted}, {s.mean_accepted:.2f} tok/step, "
            f"steps by drafter {s.drafter_steps}")


if __name__ == "__main__":
    main()
