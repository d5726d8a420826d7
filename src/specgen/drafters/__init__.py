"""Drafters: where guesses come from.  Each is a file; the engine sees only `Drafter`."""

from .base import Draft, Drafter, KeepGoing, NoDrafter
from .model import ModelDrafter
from .ngram import NgramDrafter
from .auto import AutoDrafter

__all__ = ["Draft", "Drafter", "KeepGoing", "NoDrafter", "ModelDrafter", "NgramDrafter", "AutoDrafter"]
