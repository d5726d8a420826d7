"""Draft with a second, smaller GGUF that shares the target's vocabulary."""

from __future__ import annotations

import copy
import time
from typing import Sequence

import numpy as np

from ..llama.backend import Context, Model, SeqView
from ..sampling import SamplingParams, distribution, sample, top_ids
from ..tokens import common_prefix
from .base import Draft, KeepGoing

RATED_AMONG = 10
"""A greedy draft token's confidence is its probability among the row's 10 likeliest tokens, as llama.cpp rates
its drafts (top-k 10, then the softmax): --draft-p-min means what it means there.  The whole row's softmax
took an exp over 152k logits per drafted token, about 0.3 ms on a 2-core VM (numpy's exp is not vectorized
there), most of the draft model's host work; the 10 likeliest take half that, and the best of them is the
argmax."""


class ModelDrafter:
    name = "model"

    def __init__(self, model: Model, n_ctx: int, n_threads: int | None = None,
                 p_min: float = 0.0, n_vocab: int | None = None, n_seq: int = 1):
        self.model = model
        self.ctx: Context | SeqView = Context(model, n_ctx, n_threads, n_seq=n_seq)
        self.p_min = p_min
        self.n_vocab = n_vocab or model.n_vocab  # ids shared with the target
        self.cached: list[int] = []  # tokens whose KV is in self.ctx

    def for_seq(self, seq: int) -> ModelDrafter:
        """A drafter of its own on sequence *seq* of this one's context (a server slot's)."""
        assert isinstance(self.ctx, Context)
        other = copy.copy(self)
        other.ctx, other.cached = self.ctx.view(seq), []
        return other

    def behind(self, history: Sequence[int]) -> int:
        """About how many tokens the next draft must first decode to catch up with *history*."""
        return max(1, len(history) - len(self.cached) + 1)

    def _keep(self, history: Sequence[int]) -> int:
        """Roll the draft KV cache back to what it shares with *history* (all but its last token at most)."""
        keep = min(common_prefix(self.cached, history), max(len(history) - 1, 0), self.ctx.n_past)
        self.ctx.rollback_to(keep)
        self.cached = self.cached[:keep]
        return keep

    def _sync(self, history: Sequence[int]) -> tuple[int, float]:
        """Bring the draft KV cache to *history*, decoding only what it lacks: (tokens decoded, seconds).

        After a verify step the cache holds the accepted prefix of the last
        draft; everything past the common prefix is rolled back.  The last
        history token is decoded with logits so drafting can start.
        """
        keep = self._keep(history)
        t0 = time.perf_counter()
        self.ctx.decode(history[keep:], logits="last")
        self.cached = list(history)
        return len(history) - keep, time.perf_counter() - t0

    def prefill(self, history: Sequence[int], sources: Sequence[Sequence[int]] = ()) -> None:
        """Read a new prompt now: drafting with this model alone needs it for the first step anyway."""
        if not history:  # the engine's reset_cache: drop everything
            self.defer([])
            return
        self._sync(history)

    def defer(self, history: Sequence[int]) -> None:
        """Take *history* as the new text without reading it: only what no longer matches is dropped, so
        `behind` counts what a draft would first have to decode (auto decides whether that pays)."""
        self._keep(history)

    def draft(self, history: Sequence[int], n_max: int, params: SamplingParams,
              rng: np.random.Generator, keep_going: KeepGoing | None = None) -> Draft:
        out = Draft(q=None if params.greedy else [])
        if n_max <= 0:
            return out
        if keep_going and not keep_going([]):
            return out
        out.caught_up, out.catch_up_seconds = self._sync(history)
        while True:
            logits = self.ctx.logits_row(-1)[: self.n_vocab]
            if params.greedy:
                tok, top = rated(logits)  # the controller calibrates it into a survival estimate
            else:
                # Only the penalties look at the past; skip copying it when they are off.
                q = distribution(logits, list(history) + out.tokens if params.looks_back else (), params)
                tok = sample(q, rng)
                top = float(q.max())
                out.q.append(q)
            if top < self.p_min:  # as llama.cpp: an unsure guess costs a verify row for nothing
                if out.q:
                    out.q.pop()
                break
            out.tokens.append(tok)
            out.confidence.append(top)
            if len(out.tokens) >= n_max or (keep_going and not keep_going(out.confidence)):
                break
            self.ctx.decode([tok], logits="last")
            self.cached.append(tok)
        return out

    def close(self) -> None:
        self.ctx.close()

    def learned(self) -> object:
        return None  # its calibration is the controller's

    def restore(self, learned: object) -> None:
        pass


def rated(logits: np.ndarray) -> tuple[int, float]:
    """The row's best token (the lowest id among equals, as argmax) and its probability among the RATED_AMONG
    likeliest."""
    ids = top_ids(logits, RATED_AMONG)
    if not len(ids):  # nothing finite (a corrupt draft model): a guess the target will judge, rated as none
        return int(np.argmax(logits)), 0.0
    best = logits[ids].astype(np.float64)
    return int(ids[0]), 1.0 / float(np.exp(best - best[0]).sum())
