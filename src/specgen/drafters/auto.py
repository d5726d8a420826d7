"""The hybrid drafter: copy when the text repeats, the draft model otherwise, or nothing.

Each step the free n-gram lookup goes first; if the controller prices its
draft above plain decoding, it is used.  Otherwise the draft model is asked
only when the controller expects its tokens (at their measured cost and this
session's acceptance) to beat plain decoding.  So on hardware where a draft
model cannot pay, `auto` degrades to n-gram copying and plain steps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..controller import Controller
from ..sampling import SamplingParams
from .base import Draft, Drafter, KeepGoing
from .ngram import NgramDrafter


class AutoDrafter:
    name = "auto"

    def __init__(self, controller: Controller, ngram: NgramDrafter, model: Drafter | None = None):
        self.controller = controller
        self.ngram = ngram
        self.model = model

    def prefill(self, history: Sequence[int]) -> None:
        self.ngram.prefill(history)
        if self.model is not None:
            self.model.prefill(history)

    def draft(self, history: Sequence[int], n_max: int, params: SamplingParams,
              rng: np.random.Generator, keep_going: KeepGoing | None = None) -> Draft:
        ctl = self.controller
        copy = self.ngram.draft(history, n_max, params, rng)
        if copy.tokens and ctl.best_length(self.ngram.name, copy.confidence).n > 0:
            copy.source = self.ngram.name
            return copy
        if self.model is not None and n_max > 0:
            name = self.model.name
            guess = self.model.draft(history, n_max, params, rng,
                                     keep_going=lambda conf: ctl.worth_drafting_more(name, conf))
            guess.source = name
            return guess
        return Draft()

    def close(self) -> None:
        self.ngram.close()
        if self.model is not None:
            self.model.close()
