"""The hybrid drafter: copy when the text repeats, the draft model otherwise, or nothing.

Each step the controller prices the free n-gram copy first; the draft model is
asked only when its outlook beats that, and its draft kept only when, priced,
it still does (the rule and why: DESIGN.md, "auto").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..controller import Controller
from ..sampling import SamplingParams
from .base import Draft, KeepGoing
from .model import ModelDrafter
from .ngram import NgramDrafter


class AutoDrafter:
    name = "auto"

    def __init__(self, controller: Controller, ngram: NgramDrafter, model: ModelDrafter | None = None):
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
        copy.source = self.ngram.name
        # The copy is free, but not always the better bet: where a wide verify costs
        # about one step (a GPU), a good draft model beats a doubtful copy.
        copy_choice = (ctl.best_length(self.ngram.name, copy.confidence, calibrated=copy.calibrated)
                       if copy.tokens else ctl.plain())
        if self.model is not None and n_max > 0:
            name = self.model.name
            if ctl.outlook(name, self.model.behind(history)).rate > copy_choice.rate:
                guess = self.model.draft(history, n_max, params, rng,
                                         keep_going=lambda conf: ctl.worth_drafting_more(name, conf))
                guess.source = name
                if guess.tokens:
                    # Both now carry the time the draft model took.
                    spent = len(guess) * ctl.costs.draft_cost(name)
                    mine = ctl.best_length(name, guess.confidence, spent, calibrated=guess.calibrated)
                    other = (ctl.best_length(self.ngram.name, copy.confidence, spent, calibrated=copy.calibrated)
                             if copy.tokens else None)
                    if mine.n > 0 and (other is None or mine.rate >= other.rate):
                        return guess
        return copy if copy_choice.n > 0 else Draft()

    def close(self) -> None:
        self.ngram.close()
        if self.model is not None:
            self.model.close()

    def learned(self) -> object:
        return self.ngram.learned(), None if self.model is None else self.model.learned()

    def restore(self, learned: object) -> None:
        ngram, model = learned
        self.ngram.restore(ngram)
        if self.model is not None:
            self.model.restore(model)
