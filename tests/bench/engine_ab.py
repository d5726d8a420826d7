"""Engine A/B benchmark: a script, not a test.

    python tests/bench/engine_ab.py --target T.gguf --draft D.gguf [--rounds 3] [--tokens 256]

Greedy, --no-mmap, each configuration interleaved with its baseline in the
same run (A B A B ...), so drift on a noisy machine hits both.  Rates are
decode tokens/s from the first generated token to the last; ratios are
medians over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from specgen.llama.backend import Context, default_threads
from specgen.engine import Step, Summary
from specgen.build import EngineOptions, load_engine
from specgen.llama.chat_template import chat_tokens, messages_for

HERE = Path(__file__).parent
CODE_WRITE = ("Write a Python module that implements an LRU cache class with get, put, delete and "
              "resize methods, with docstrings and type hints, plus a small command-line demo.")
CODE_EDIT = ("Rewrite this module with two renames: the class `Inventory` becomes `Warehouse` and the "
             "method `restock` becomes `replenish`. Change nothing else and output the whole module.\n\n"
             "```python\n" + (HERE / "inventory.py").read_text() + "```")


def engine_rate(engine, prompt, n, ignore_eos: bool = False) -> tuple[float, Summary]:
    """Decode tok/s through specgen's engine, from the first step to the last (prefill excluded)."""
    t_first = t_last = None
    count = 0
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
            summary.prompt_ids = list(prompt)
    return (count - first_emitted) / (t_last - t_first), summary


def llama_rate(llm, prompt, n, stop_at_eog: bool = True) -> tuple[float, list[int]]:
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
    return (len(out) - 1) / (now - t_first), out


def divergence(plain, s_plain: Summary, s: Summary) -> str:
    """Where greedy outputs part, and the plain run's top-2 logit gap there (a near-tie is legitimate)."""
    k = next((i for i, (x, y) in enumerate(zip(s_plain.tokens, s.tokens)) if x != y),
             min(len(s.tokens), len(s_plain.tokens)))
    prompt = s_plain.prompt_ids
    ctx = Context(plain.target, 4096)
    try:
        seq = prompt + s_plain.tokens[:k]
        ctx.decode(seq[:-1], logits="none")
        ctx.decode(seq[-1:], logits="last")
        row = np.sort(np.array(ctx.logits_row(-1), dtype=np.float64))
    finally:
        ctx.close()
    return f"differs from token {k} (plain top-2 gap {row[-1] - row[-2]:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default="llama,model8,ngram,auto")
    a = ap.parse_args()
    only = set(a.only.split(","))

    def make(drafter, draft_max=None):
        return load_engine(EngineOptions(a.target, a.draft if drafter == "model" else None, drafter=drafter,
                                         draft_max=draft_max, n_ctx=4096, threads=a.threads, use_mmap=False))

    plain = make("none")
    write = chat_tokens(plain.target, messages_for(CODE_WRITE))
    edit = chat_tokens(plain.target, messages_for(CODE_EDIT))
    rows: list[tuple[str, str, list[float], list[float], str]] = []

    def ab(label, prompt_name, prompt, run_b, check):
        engine_rate(plain, prompt, 16)  # warm-up
        run_b(prompt, 16)
        ra, rb, note = [], [], ""
        for _ in range(a.rounds):
            r_a, s_a = engine_rate(plain, prompt, a.tokens)
            r_b, extra = run_b(prompt, a.tokens)
            ra.append(r_a)
            rb.append(r_b)
            note = check(s_a, extra)
        rows.append((label, prompt_name, ra, rb, note))
        print(f"{label:<40} {prompt_name:<11} none {statistics.median(ra):6.1f}  B {statistics.median(rb):6.1f}"
              f"  B/none {statistics.median([b / x for x, b in zip(ra, rb)]):.3f}  {note}\n"
              f"    rounds: none {[round(x, 2) for x in ra]}  B {[round(x, 2) for x in rb]}", flush=True)

    if "llama" in only:
        from llama_cpp import Llama

        llm = Llama(a.target, n_ctx=4096, n_threads=a.threads or default_threads(), use_mmap=False,
                    verbose=False)
        # Here A is the engine, B the reference; the table reports engine / Llama.
        def check(s, toks):
            if toks[: len(s.tokens)] == s.tokens:
                return "same tokens"
            return "Llama's tokens " + divergence(plain, s, Summary(tokens=toks)).removeprefix("differs")
        ab("llama-cpp-python Llama.generate", "code-write", write, lambda p, n: llama_rate(llm, p, n), check)
        del llm

    def spec(engine):
        def go(prompt, n):
            r, s = engine_rate(engine, prompt, n)
            return r, s
        return go

    def acc(s_plain, s):
        same = "same" if s.tokens == s_plain.tokens else divergence(plain, s_plain, s)
        return (f"{same} output, accepted {s.accepted}/{s.drafted}, {s.mean_accepted:.2f} tok/step, "
                f"steps by drafter {s.drafter_steps}")

    if "model8" in only:
        e = make("model", 8)
        ab("--drafter model --draft-max 8", "code-write", write, spec(e), acc)
        e.close()
    if "ngram" in only:
        e = make("ngram")
        ab("--drafter ngram (draft-max auto)", "code-edit", edit, spec(e), acc)
        e.close()
    if "auto" in only:
        for prompt_name, prompt in (("code-write", write), ("code-edit", edit)):
            e = make("auto")
            ab("--drafter auto --draft-max auto", prompt_name, prompt, spec(e), acc)
            e.close()

    print("\n| configuration | prompt | none tok/s | config tok/s | ratio (median) | notes |")
    print("|---|---|---|---|---|---|")
    for label, pname, ra, rb, note in rows:
        ratio = statistics.median([b / x for x, b in zip(ra, rb)])
        if label.startswith("llama-cpp"):
            ratio = statistics.median([x / b for x, b in zip(ra, rb)])
            label = "engine `none` vs " + label + " (engine/Llama)"
        print(f"| {label} | {pname} | {statistics.median(ra):.1f} | {statistics.median(rb):.1f} | "
              f"{ratio:.3f} | {note} |")


if __name__ == "__main__":
    main()
