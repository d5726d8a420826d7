"""The hybrid drafter: copy when the text repeats, the draft model otherwise, or nothing.

Each step the controller prices the free n-gram copy first; the draft model is
asked only when its outlook beats that, and its draft kept only when, priced,
it still does.  The draft model does not read a prompt when it arrives: it
reads what it missed (the prompt, text copied since) in one batch when it is
first asked, and it is asked once the time its drafts would have saved since
it was last caught up covers that reading (rent or buy: the rule and why,
DESIGN.md, "auto").
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..controller import Choice, Controller
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
        self.missed = 0.0
        """Seconds the draft model would have saved, had it been caught up, since it last was."""

    def prefill(self, history: Sequence[int], sources: Sequence[Sequence[int]] = ()) -> None:
        self.ngram.prefill(history, sources)
        self.missed = 0.0
        if self.model is not None:
            self.model.defer(history)  # read only if it comes to pay: an edit may be all copies

    def draft(self, history: Sequence[int], n_max: int, params: SamplingParams,
              rng: np.random.Generator, keep_going: KeepGoing | None = None) -> Draft:
        ctl = self.controller
        copy = self.ngram.draft(history, n_max, params, rng)
        copy.source = self.ngram.name
        # The copy is free, but not always the better bet: where a wide verify costs
        # about one step (a GPU), a good draft model beats a doubtful copy.
        copy_choice = (ctl.best_length(self.ngram.name, copy.confidence, calibrated=copy.calibrated)
                       if copy.tokens else ctl.plain())
        if self.model is not None and n_max > 0 and self._ask_model(history, copy_choice):
            name = self.model.name
            t0 = time.perf_counter()
            guess = self.model.draft(history, n_max, params, rng,
                                     keep_going=lambda conf: ctl.worth_drafting_more(name, conf))
            guess.source = name
            if guess.caught_up:
                self.missed = 0.0
                ctl.costs.observe_catch_up(name, guess.caught_up, guess.catch_up_seconds)
            if guess.tokens:
                # Both now carry the time the draft model took.
                spent = len(guess) * ctl.draft_cost(name)
                mine = ctl.best_length(name, guess.confidence, spent, calibrated=guess.calibrated)
                other = (ctl.best_length(self.ngram.name, copy.confidence, spent, calibrated=copy.calibrated)
                         if copy.tokens else None)
                if mine.n > 0 and (other is None or mine.rate >= other.rate):
                    return guess
            ctl.costs.set_aside(time.perf_counter() - t0)  # the step is the copy's; this was not its cost
        return copy if copy_choice.n > 0 else Draft()

    def _ask_model(self, history: Sequence[int], copy_choice: Choice) -> bool:
        """Whether the draft model is worth asking this step, its reading of what it missed included.

        Caught up, it would save this step what its outlook gains on the copy's choice.  Behind, it must
        first read what it missed, once, and then it drafts every step after: charged to one step, a
        prompt's reading would refuse it for good.  How many steps will follow is unknown (the reply
        ends when it ends), so the reading is bought once the savings missed since the model was last
        caught up would have paid for it: whatever the reply's length, that loses at most twice what the
        better of reading at once and never reading would have.  A few tokens behind, one step's saving
        pays for it.
        """
        ctl, name = self.controller, self.model.name
        caught_up = ctl.outlook(name)
        gain = caught_up.expected_tokens / copy_choice.rate - caught_up.expected_seconds
        if gain <= 0:
            return False
        self.missed += gain
        return self.missed >= ctl.catch_up_cost(name, self.model.behind(history))

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
