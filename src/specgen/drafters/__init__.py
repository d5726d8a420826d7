"""Drafters: where guesses come from.  Each is a file; the engine sees only `Drafter`."""

from .base import Draft, Drafter, KeepGoing, NoDrafter
from .model import ModelDrafter
from .ngram import NgramDrafter
from .auto import AutoDrafter


def drafter_set(piece, controller, model: ModelDrafter | None) -> dict[str, Drafter]:
    """Every drafter a generation may use, by name: each keeps per-text state, so a sequence decoded beside
    others (a server slot) gets a set of its own; *piece* is the target's token text, *model* the draft
    model on this set's sequence."""
    drafters: dict[str, Drafter] = {"none": NoDrafter(), "ngram": NgramDrafter(piece=piece)}
    if model is not None:
        drafters["model"] = model
    # auto copies with an n-gram drafter of its own: what it learns about copies comes from its own
    # steps, not from runs with `ngram` at a fixed length (bench, chat's /drafter) drafting far more.
    drafters["auto"] = AutoDrafter(controller, NgramDrafter(piece=piece), model)
    return drafters


__all__ = ["Draft", "Drafter", "KeepGoing", "NoDrafter", "ModelDrafter", "NgramDrafter", "AutoDrafter",
           "drafter_set"]
