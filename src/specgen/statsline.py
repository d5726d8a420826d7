"""How a generation's figures read, one wording for every front end: `run`'s summary
line, chat's line under each reply and its transcripts."""

from __future__ import annotations


def stats_parts(st: dict) -> list[str]:
    """Short phrases for `Summary.stats()` (a chat turn adds prompt_decoded, context_used, interrupted)."""
    parts = [f"{st.get('generated_tokens', 0)} tokens", f"{st.get('decode_tps', 0):.1f} tok/s"]
    if st.get("drafted"):
        parts.append(f"accepted {st['accepted']}/{st['drafted']} ({st['acceptance_rate']:.0%})")
    parts.append(f"{st.get('mean_accepted', 0):.2f} tokens/step")
    if "prompt_decoded" in st:
        parts.append(f"prompt {st['prompt_decoded']} new + {st.get('reused_tokens', 0)} reused")
    elif st.get("prompt_tokens"):
        parts.append(f"prompt {st['prompt_tokens']} tokens in {st.get('prompt_seconds', 0):.2f}s")
    if len(st.get("drafter_steps") or {}) > 1:  # auto: what it chose
        parts.append("steps " + ", ".join(f"{k} {v}" for k, v in sorted(st["drafter_steps"].items())))
    if st.get("context_used"):
        parts.append(f"context {st['context_used']} tokens")
    if st.get("interrupted"):
        parts.append("interrupted")
    return parts


def stats_line(st: dict) -> str:
    return " · ".join(stats_parts(st))
