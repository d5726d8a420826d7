"""The drafter interface: propose the next few tokens, cheaply.

A drafter sees the whole token history (prompt + generated so far) and
returns up to `n_max` guesses.  It keeps whatever state it likes (a KV cache,
an n-gram index) and re-syncs from the history on every call, so the engine
never has to tell it what was accepted or rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from ..sampling import Dist, SamplingParams


KeepGoing = Callable[[Sequence[float]], bool]
"""Asked before each costly draft token, with the confidences so far: draft another?"""


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)
    q: list[Dist] | None = None
    """The distribution each token was sampled from; None for a deterministic drafter."""
    confidence: list[float] = field(default_factory=list)
    """The drafter's own probability for each token (its top-1 prob, or a match score)."""
    calibrated: bool = False
    """True when `confidence` is already the drafter's learned estimate of how often this target
    accepts such a token (used as is); False when it is a raw probability, which the controller
    calibrates against the target's verdicts."""
    source: str | None = None
    """Which drafter made it, when a drafter delegates (auto); None: the drafter itself."""
    offered: int = 0
    """How many tokens the drafter proposed before the controller cut the draft (set by the engine)."""
    caught_up: int = 0
    """Tokens a model drafter decoded in one batch to catch up with the history before drafting
    (the text copied or decoded since it last drafted); part of the draft time."""
    catch_up_seconds: float = 0.0
    """What that catch-up batch took, timed where it ran."""

    def __len__(self) -> int:
        return len(self.tokens)

    def first(self, n: int, offered: int | None = None) -> "Draft":
        """Its first *n* tokens, with their distributions and confidences, to verify; *offered* (by default as
        it was) counts what the drafter proposed.  Built directly: it runs every step."""
        return Draft(self.tokens[:n], self.q[:n] if self.q is not None else None, self.confidence[:n],
                     calibrated=self.calibrated, offered=self.offered if offered is None else offered,
                     caught_up=self.caught_up)


class Drafter(Protocol):
    name: str

    def draft(self, history: Sequence[int], n_max: int, params: SamplingParams,
              rng: np.random.Generator, keep_going: KeepGoing | None = None) -> Draft:
        """Guess up to n_max tokens that follow *history*.

        A drafter whose tokens cost time (a model) asks `keep_going` before
        each one; a free one (lookup) may return all it has and let the
        engine's controller cut the draft.
        """
        ...

    def prefill(self, history: Sequence[int], sources: Sequence[Sequence[int]] = ()) -> None:
        """Catch up on a new prompt before generation starts (counted as prompt time).  *sources* are other
        token sequences the reply may copy (a text as it reads escaped inside a JSON string); a drafter
        that copies looks them up as it does the prompt, the others ignore them."""
        ...

    def close(self) -> None:
        ...

    def learned(self) -> object:
        """A copy of what the drafter has learned from the target's verdicts so far (None: nothing)."""
        ...

    def restore(self, learned: object) -> None:
        """Go back to a state `learned` returned, so that a benchmark's repeats start alike."""
        ...


class NoDrafter:
    """Plain decoding through the same engine: the fair baseline."""

    name = "none"

    def draft(self, history: Sequence[int], n_max: int, params: SamplingParams,
              rng: np.random.Generator, keep_going: KeepGoing | None = None) -> Draft:
        return Draft()

    def prefill(self, history: Sequence[int], sources: Sequence[Sequence[int]] = ()) -> None:
        pass

    def close(self) -> None:
        pass

    def learned(self) -> object:
        return None

    def restore(self, learned: object) -> None:
        pass
