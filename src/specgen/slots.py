"""Several replies decoded together: the server's slots.

Each slot is one sequence of the target's context, with its cached prefix, its own drafters and its own
controller (sharing the machine's costs and what the session has learned of acceptance).  Each step decodes,
in one batch, every generating slot's verify rows (its plain row, or its draft prefix), then, in a call of its
own, a bounded chunk of a newcomer's prompt, so that a long prompt never holds the other streams up for more
than a chunk.  The slots' draft lengths are chosen together (Controller.share_batch); with one slot
generating, its step is exactly Engine.generate's.

While several slots draft with the draft model, their drafters plan a step side by side and the draft
model's decodes for all of them go into one batch (DraftRounds).

A request goes to the free slot whose cache shares the longest prefix with it, else to the one least recently
used.  A prefix that a new request would overwrite is first saved to host memory (PromptCache) and put back
into a slot when its conversation returns.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import numpy as np

from .controller import Controller
from .drafters.base import Drafter
from .drafters.model import ModelDrafter
from .engine import Engine, Event, Generation, Plan
from .llama.backend import Context, SeqView
from .settings import parse_draft_max
from .tokens import common_prefix

T = TypeVar("T")

PREFILL_CHUNK = 64
"""Prompt tokens read per step while other slots generate.  Their every token waits for the step, and on a
2-core CPU 64 prompt tokens of a 1.5B model take about as long as 4-6 plain steps; reading the prompt in
bigger chunks gains only a few percent of prompt speed.  A whole 64-row tile of llama.cpp's CPU flash attention:
65 tokens took 0.95 s against 0.81 s for 64, the extra row paying for a tile of its own.  With nobody
generating, a step reads a whole batch."""

SIMILARITY = 0.1
"""A free slot is chosen for the prefix it shares with a prompt when that is at least this share of the
prompt (llama-server's default); otherwise the least recently used slot is, so that a cache sharing only a
chat template's opening with the prompt is left for its own conversation."""

DEFAULT_CACHE_MIB = 8192
"""Host memory the server keeps prefixes in unless told (llama-server's --cache-ram default): a prefix of 4k
tokens of a 1.5B model takes about 115 MiB, and reading it again takes a CPU tens of seconds."""

MIN_SAVED = 64
"""Prefixes shorter than this are not worth a place in the host prompt cache (they read in well under a
second)."""


@dataclass
class Saved:
    tokens: list[int]
    data: bytes


class PromptCache:
    """KV prefixes pushed out of the slots, in host memory, at most *limit* bytes; the least recently used go
    first."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._entries: OrderedDict[int, Saved] = OrderedDict()
        self._ids = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: Sequence[int], data: bytes) -> None:
        if len(data) > self.limit:
            return
        for key, e in list(self._entries.items()):
            if common_prefix(e.tokens, tokens) == len(e.tokens):  # the new one holds all it did
                self._drop(key)
        while self.used + len(data) > self.limit:
            self._drop(next(iter(self._entries)))
        self._ids += 1
        self._entries[self._ids] = Saved(list(tokens), data)
        self.used += len(data)

    def best(self, prompt: Sequence[int]) -> tuple[int, Saved | None]:
        """The saved prefix sharing the most tokens with *prompt*, and how many (marked recently used)."""
        found, key = 0, None
        for k, e in self._entries.items():
            n = common_prefix(e.tokens, prompt)
            if n > found:
                found, key = n, k
        if key is None:
            return 0, None
        self._entries.move_to_end(key)
        return found, self._entries[key]

    def _drop(self, key: int) -> None:
        self.used -= len(self._entries.pop(key).data)


@dataclass
class Slot:
    id: int
    controller: Controller
    drafters: dict[str, Drafter]
    cached: list[int] = field(default_factory=list)
    """Tokens whose KV entries this slot's sequence holds."""
    gen: Generation | None = None
    used: float = 0.0
    """When it last started a reply (monotonic seconds; 0: never)."""
    restored: int = 0
    """Tokens of the current reply's prompt put back from the host prompt cache."""

    @property
    def state(self) -> str:
        if self.gen is None:
            return "idle"
        return "generating" if self.gen.ready else "prompt"


Outcome = list[Event] | BaseException
"""What a step did for one slot: its events, or the error that ended its reply (the slot is free again)."""


class Slots:
    """*n* slots over one engine whose context holds *n* sequences (EngineOptions.parallel)."""

    def __init__(self, engine: Engine, n: int, cache_bytes: int = 0, chunk: int = PREFILL_CHUNK):
        assert engine.ctx.n_seq >= n
        self.engine, self.ctx, self.chunk = engine, engine.ctx, chunk
        self.cache = PromptCache(cache_bytes)
        ctl = engine.controller
        self.slots = [Slot(0, ctl, engine.drafters, engine.cached)]
        for i in range(1, n):
            own = Controller(ctl.costs, ctl.fixed, ctl.auto_cap)
            own.acceptance = ctl.acceptance
            assert engine.slot_drafters is not None
            self.slots.append(Slot(i, own, engine.slot_drafters(i, own)))
        self._order: list[Slot] = []  # slots reading a prompt, first come first read
        self.draft_max = ctl.fixed  # the server's, which a request may replace for its own reply
        model = engine.drafters.get("model")
        self.rounds = DraftRounds(model.ctx, n) if n > 1 and isinstance(model, ModelDrafter) \
            and isinstance(model.ctx, Context) else None

    @property
    def free(self) -> int:
        return sum(s.gen is None for s in self.slots)

    def start(self, prompt: Sequence[int], drafter: str | None = None, draft_max: int | None | str = "server",
              cache_prompt: bool = True, **options) -> Slot:
        """Begin a reply to *prompt* in a free slot (there must be one); *options* are Generation's.
        *draft_max* "server" keeps the server's setting; *cache_prompt* False reads the prompt afresh."""
        slot = self._choose(prompt, cache_prompt)
        name = drafter or self.engine.drafter.name
        ctl = slot.controller
        ctl.set_fixed(self.draft_max if draft_max == "server" else parse_draft_max(draft_max))
        slot.gen = Generation(self.engine, prompt, slot.cached, slot.drafters[name], seq=slot.id, controller=ctl,
                              **options)
        slot.used = time.monotonic()
        self._order.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """End the slot's reply where it is (finished, cancelled or failed); its cache stays for reuse."""
        slot.gen = None
        if slot in self._order:
            self._order.remove(slot)

    def _choose(self, prompt: Sequence[int], cache_prompt: bool) -> Slot:
        free = [s for s in self.slots if s.gen is None]
        shared = {s.id: common_prefix(s.cached, prompt) for s in free}
        slot = max(free, key=lambda s: (shared[s.id], -s.used))
        if not shared[slot.id] or shared[slot.id] < SIMILARITY * len(prompt):
            slot = min(free, key=lambda s: s.used)
        slot.restored = 0
        keep = shared[slot.id] if cache_prompt else 0
        found, saved = self.cache.best(prompt) if cache_prompt else (0, None)
        self._save(slot, keep)
        if saved is not None and found > keep:
            if self.ctx.load(slot.id, saved.data, len(saved.tokens)):
                slot.cached[:] = saved.tokens
                slot.restored = min(found, len(prompt) - 1)  # the last prompt token is always decoded
            else:
                del slot.cached[:]
        elif not cache_prompt:
            self.ctx.rollback_to(0, slot.id)
            del slot.cached[:]
        return slot

    def _save(self, slot: Slot, keep: int) -> None:
        """Keep the slot's prefix in the host cache when a reply is about to cut it to *keep* tokens."""
        n = min(len(slot.cached), self.ctx.past[slot.id])
        if n - keep >= MIN_SAVED and self.cache.limit:
            del slot.cached[n:]
            self.ctx.rollback_to(n, slot.id)
            self.cache.put(slot.cached, self.ctx.save(slot.id))

    def step(self) -> list[tuple[Slot, Outcome]]:
        """One batch: every generating slot's verify rows and a chunk of the prompts being read.  Returns, per
        slot that did something, its events (ending with the Summary when its reply ended, the slot then free)
        or the error that ended its reply."""
        out: list[tuple[Slot, Outcome]] = []
        plans = []
        generating = [s for s in self.slots if s.gen is not None and s.gen.ready]
        # Rounds for the slots drafting with the draft model itself.  Under auto the model drafts now and
        # then, and planning side by side measured slower (0.96x at 4 clients): auto plans as it would alone.
        together = self.rounds is not None and \
            sum(slot.gen.drafter is slot.drafters.get("model") for slot in generating) > 1
        for slot in generating:
            slot.controller.waiting = len(generating)
        t_plan = time.perf_counter()
        if together:
            planned = self.rounds.run([(slot.drafters.get("model"), slot.gen.plan) for slot in generating])
        else:
            planned = [_attempt(slot.gen.plan) for slot in generating]
        spent = time.perf_counter() - t_plan
        for slot, plan in zip(generating, planned):
            if isinstance(plan, BaseException):
                if not isinstance(plan, Exception):
                    raise plan  # an interrupt ends the step, not a reply
                out.append(self._failed(slot, plan))
            elif plan is None:
                out.append(self._ended(slot, []))
            else:
                plans.append((slot, plan))
        budget = min(self.ctx.n_batch, self.chunk) if plans else self.ctx.n_batch
        reads = []
        for slot in self._order:
            take = slot.gen.unread[:budget]
            if slot.gen.unread and not take:
                break  # first come, first read
            reads.append((slot, take))
            budget -= len(take)
        shared = len(plans) > 1
        if shared:
            self._share(plans, spent)
        for slot, _ in plans:
            slot.gen.priced = not shared
        t0 = time.perf_counter()
        rows = self.ctx.decode_batch([(s.id, p.tokens, "all") for s, p in plans]) if plans else []
        if shared:
            n_rows = sum(len(p.tokens) for _, p in plans)
            self.engine.controller.costs.observe_verify(n_rows, time.perf_counter() - t0)
        for (slot, plan), r in zip(plans, rows):
            try:
                events = slot.gen.finish(plan, r)
            except Exception as e:
                out.append(self._failed(slot, e))
                continue
            out.append(self._ended(slot, events) if slot.gen.done else (slot, events))
        failed: Exception | None = None
        if any(t for _, t in reads):
            # A call of its own: in one call with the verify rows, every 64-query tile of llama.cpp's CPU flash
            # attention that holds both covers every sequence's cells (a tile skips only cells masked for all its
            # rows), and 3 rows + 64 prompt tokens took 1.26 s against 0.81 + 0.09 s in two calls.  Its failure
            # is the prompts' alone: the replies verified above keep their step.
            try:
                self.ctx.decode_batch([(s.id, t, "none") for s, t in reads if t])
            except Exception as e:
                failed = e
        for slot, take in reads:
            if take and failed is not None:
                out.append(self._failed(slot, failed))
                continue
            try:
                ev = slot.gen.read(len(take))
            except Exception as e:
                out.append(self._failed(slot, e))
                continue
            if ev is not None:
                self._order.remove(slot)
                out.append((slot, [ev]))
        return out

    def _share(self, plans: list[tuple[Slot, Plan]], spent: float) -> None:
        """Cut the drafts to the lengths that pay for the batch as a whole, the *spent* seconds of drafting
        counted in; a length the user fixed (draft_max) is not second-guessed, its rows counted as given."""
        sized = [(slot, plan) for slot, plan in plans if slot.controller.fixed is None]
        extra_rows = sum(len(plan.tokens) for slot, plan in plans if slot.controller.fixed is not None)
        drafts = [(p.drafter, p.draft.confidence, p.draft.calibrated) for _, p in sized]
        for (slot, plan), n in zip(sized, self.engine.controller.share_batch(drafts, extra_rows, spent)):
            if n < len(plan.draft):
                slot.gen.cut(plan, n)

    def _ended(self, slot: Slot, events: list[Event]) -> tuple[Slot, Outcome]:
        gen = slot.gen
        assert gen is not None
        self.release(slot)
        return slot, [*events, *gen.end()]

    def _failed(self, slot: Slot, e: BaseException) -> tuple[Slot, Outcome]:
        self.release(slot)
        return slot, e


def _attempt(fn: Callable[[], T]) -> T | Exception:
    try:
        return fn()
    except Exception as e:
        return e


class DraftRounds:
    """The slots' draft-model steps decoded together.

    Each slot's drafter runs in a thread of its own while the slots plan a step; whenever every slot still
    planning is waiting on its draft model (its catch-up, its next token), one llama_decode serves them all.
    On a CPU four sequences' tokens cost about 2.3 times one (a GPU's, about one), where the slots drafting
    one after another cost four.  Only the draft model waits on the others: the n-gram lookups, the
    controller and auto's choices run as they would alone.
    """

    def __init__(self, ctx: Context, n: int):
        self.ctx = ctx
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="specgen-draft")
        self._cv = threading.Condition()
        self._live = 0  # planning threads not yet done
        self._pending: dict[int, tuple[list[int], str]] = {}  # per sequence, the decode it waits on
        self._rows: dict[int, np.ndarray | BaseException] = {}
        self.calls = 0
        """llama_decode calls made for the rounds (each may serve several sequences)."""
        self.decodes = 0
        """Decodes the drafters asked for."""

    def run(self, plans: Sequence[tuple[ModelDrafter | None, Callable[[], T]]]) -> list[T | BaseException]:
        """Call each plan in a thread of its own, its drafter's draft model decoding through the rounds:
        each call's result, or what it raised."""
        views = [(d, d.ctx) for d, _ in plans if d is not None]
        for d, ctx in views:
            d.ctx = _RoundSeq(self, ctx.seq if isinstance(ctx, SeqView) else 0)
        self._live = len(plans)
        try:
            futures = [self._pool.submit(self._take_part, fn) for _, fn in plans]
            out: list[T | BaseException] = []
            for f in futures:
                try:
                    out.append(f.result())
                except BaseException as e:
                    out.append(e)
            return out
        finally:
            for d, ctx in views:
                d.ctx = ctx

    def _take_part(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        finally:
            with self._cv:
                self._live -= 1
                self._decode_if_all_wait()

    def decode(self, seq: int, tokens: Sequence[int], logits: str) -> np.ndarray | None:
        with self._cv:
            self._pending[seq] = (list(tokens), logits)
            self.decodes += 1
            self._decode_if_all_wait()
            while seq in self._pending:
                self._cv.wait()
            got = self._rows.pop(seq)
        if isinstance(got, BaseException):
            raise got
        return got

    def locked(self) -> threading.Condition:
        """Held around every other call into the draft model's context while a round runs."""
        return self._cv

    def _decode_if_all_wait(self) -> None:
        if not self._pending or len(self._pending) < self._live:
            return
        parts = [(seq, tokens, logits) for seq, (tokens, logits) in self._pending.items()]
        for group in _fitting(parts, self.ctx.n_batch):
            self.calls += 1
            try:
                rows: list = self.ctx.decode_batch(group)
            except BaseException as e:  # raised in each waiting drafter's own thread, failing only its reply
                rows = [e] * len(group)
            for (seq, _, _), got in zip(group, rows):
                self._rows[seq] = got
        self._pending.clear()
        self._cv.notify_all()


def _fitting(parts: list, n_batch: int) -> list[list]:
    """*parts* in groups of at most n_batch tokens each (a longer part alone)."""
    groups: list[list] = []
    size = n_batch
    for part in parts:
        if size + len(part[1]) > n_batch:
            groups.append([])
            size = 0
        groups[-1].append(part)
        size += len(part[1])
    return groups


class _RoundSeq(SeqView):
    """A slot's sequence of the draft model while a round runs: decodes wait for the round's batch."""

    def __init__(self, rounds: DraftRounds, seq: int):
        super().__init__(rounds.ctx, seq)
        self.rounds = rounds
        self._rows: np.ndarray | None = None

    def decode(self, tokens: Sequence[int], logits: str = "last") -> None:
        self._rows = self.rounds.decode(self.seq, tokens, logits)

    def logits_row(self, i: int) -> np.ndarray:
        assert self._rows is not None
        return self._rows[i]

    def rollback_to(self, n: int) -> None:
        with self.rounds.locked():
            super().rollback_to(n)


__all__ = ["DEFAULT_CACHE_MIB", "DraftRounds", "MIN_SAVED", "PREFILL_CHUNK", "PromptCache", "SIMILARITY", "Slot",
           "Slots"]
