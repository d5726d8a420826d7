"""The speculative engine: a generator of events over a target and a drafter.

Each step drafts a few tokens, verifies them with the target in one batch,
keeps the longest accepted run plus one token of the target's own, and rolls
the rejected rows out of the KV caches.  Front ends (run, chat, bench) only
consume the events; nothing here prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np

from .llama.backend import Context, Model, decode_clock
from .llama.grammar import Grammar
from .controller import Controller
from .drafters.base import Draft, Drafter
from .errors import ModelFault, SpecgenError
from .sampling import (SamplingParams, accept_or_resample, best_allowed, distribution, distributions, log_softmax_top,
                       only, penalized, sample)
from .settings import check_count, parse_draft_max
from .textstream import Lines, TextStream
from .tokens import common_prefix


class ContextOverflow(SpecgenError):
    pass


MAX_LOGPROBS = 20
"""The most alternatives a token's logprobs may list (OpenAI's bound)."""


@dataclass
class TokenLogprob:
    """An emitted token's log-probability in the target's own distribution there (before any penalty or
    grammar), and the likeliest tokens at that place."""
    token: int
    text: bytes
    logprob: float
    top: list[tuple[int, bytes, float]]
    """Up to the number asked: (token, bytes, logprob), best first."""


@dataclass
class Piece:
    """Text ready to show; `from_draft` when it came from accepted draft tokens."""
    text: str
    from_draft: bool


@dataclass
class Prefill:
    tokens: int
    """Prompt tokens decoded now (the rest were reused from the KV cache)."""
    reused: int
    seconds: float


HOST_PARTS = ("draft", "batch", "verify", "controller", "text")
"""A step's host work: the drafter (lookup, sampling its model's rows, sizing the draft), filling the verify
batch, reading the target's rows and the accept rule, the controller's bookkeeping and the KV roll-back, and
turning tokens into text.  On a GPU the decode calls are short and this is what is left."""


@dataclass
class Step:
    """One target verify pass."""
    drafter: str
    drafted: int
    accepted: int
    draft_seconds: float
    verify_seconds: float
    offered: int = 0
    """Tokens the drafter proposed; the controller verified `drafted` of them."""
    logprobs: list[TokenLogprob] | None = None
    """One per emitted token, when the generation asked for them."""
    host: dict[str, float] = field(default_factory=dict)
    """Seconds of the step's own work outside llama.cpp's decode calls, by part (HOST_PARTS)."""

    @property
    def emitted(self) -> int:
        return self.accepted + 1

    @property
    def drafter_used(self) -> str:
        """The drafter the step counts under: `none` when it verified no draft token (auto chose to wait, a
        copy found nothing), whichever drafter was asked."""
        return self.drafter if self.drafted else "none"


@dataclass
class Summary:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    stop_reason: str = "max_tokens"
    stop_string: str = ""
    """The stop string that ended the text, when one did (stop reason "stop")."""
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    drafter_steps: dict[str, int] = field(default_factory=dict)
    draft_lengths: dict[int, int] = field(default_factory=dict)
    by_drafter: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per drafter: steps it offered a draft, tokens offered, verified (after the controller's cut), accepted."""
    costs: dict = field(default_factory=dict)
    """The controller's cost model at the end (Controller.explain): why drafts were as long as they were."""
    host_seconds: dict[str, float] = field(default_factory=dict)
    """Host work over the steps, by part (HOST_PARTS)."""

    @property
    def host_ms_per_step(self) -> dict[str, float]:
        """Milliseconds of host work per step: the total and each part."""
        if not self.steps:
            return {}
        parts = {k: self.host_seconds.get(k, 0.0) * 1e3 / self.steps for k in HOST_PARTS}
        return {"total": sum(parts.values()), **parts}

    @property
    def decode_tps(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.generated_tokens / self.steps if self.steps else 0.0

    @property
    def draft_share(self) -> float:
        """The part of the drafting and verifying time spent drafting."""
        busy = self.draft_seconds + self.verify_seconds
        return self.draft_seconds / busy if busy > 0 else 0.0

    def add(self, step: Step) -> None:
        """Count one verify step (in place: it runs every step, where a GPU's steps are short)."""
        self.steps += 1
        self.drafted += step.drafted
        self.accepted += step.accepted
        self.generated_tokens += step.emitted
        self.draft_seconds += step.draft_seconds
        self.verify_seconds += step.verify_seconds
        _count(self.drafter_steps, step.drafter_used, 1)
        _count(self.draft_lengths, step.drafted, 1)
        for part, seconds in step.host.items():
            _count(self.host_seconds, part, seconds)
        if step.offered:
            mine = self.by_drafter.setdefault(step.drafter, {})
            for k, v in (("steps", 1), ("offered", step.offered), ("verified", step.drafted),
                         ("accepted", step.accepted)):
                _count(mine, k, v)

    def merge(self, other: Summary) -> None:
        """Add *other*'s totals to these (the turns of a chat, the turns and runs of a benchmark).

        Text, tokens and stop reason stay this summary's own.
        """
        for name in _TOTALS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.drafter_steps, other.drafter_steps), (self.draft_lengths, other.draft_lengths),
                             (self.host_seconds, other.host_seconds)):
            for k, v in theirs.items():
                _count(mine, k, v)
        for name, counts in other.by_drafter.items():
            mine = self.by_drafter.setdefault(name, {})
            for k, v in counts.items():
                _count(mine, k, v)
        if other.costs:
            self.costs = dict(other.costs)  # the controller's latest view

    @classmethod
    def total(cls, parts: Iterable[Summary]) -> Summary:
        out = cls()
        for s in parts:
            out.merge(s)
        return out

    def stats(self) -> dict:
        out = {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "prompt_seconds": round(self.prompt_seconds, 4),
            "decode_seconds": round(self.decode_seconds, 4),
            "decode_tps": round(self.decode_tps, 2),
            "steps": self.steps,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted": round(self.mean_accepted, 4),
            "reused_tokens": self.reused_tokens,
            "draft_seconds": round(self.draft_seconds, 4),
            "verify_seconds": round(self.verify_seconds, 4),
            "stop_reason": self.stop_reason,
            "drafter_steps": dict(self.drafter_steps),
            "draft_lengths": {str(k): v for k, v in sorted(self.draft_lengths.items())},
            "by_drafter": {k: dict(v) for k, v in sorted(self.by_drafter.items())},
        }
        if self.steps:
            out["host_ms_per_step"] = {k: round(v, 4) for k, v in self.host_ms_per_step.items()}
        if self.costs:
            out["costs"] = self.costs
        return out


def _count(totals: dict, key: object, value: float) -> None:
    totals[key] = totals.get(key, 0) + value


# Every count and time in a Summary adds up; its text, tokens and stop reason do not.
_TOTALS = tuple(f.name for f in fields(Summary) if f.type in ("int", "float"))

Event = Union[Piece, Prefill, Step, Summary]


def choose_draft(drafter: Drafter, ctl: Controller, history: list[int], room: int, params: SamplingParams,
                 rng: np.random.Generator, is_eog: Callable[[int], bool],
                 grammar: Grammar | None = None) -> tuple[Draft, str]:
    """Ask *drafter* for a draft and cut it to the prefix worth verifying: (draft, drafter that made it).

    A function of its own so that an offline replay of recorded outputs sizes drafts exactly as the engine does.
    """
    n_max = min(room, ctl.cap)
    if n_max <= 0:
        return Draft(), drafter.name
    draft = drafter.draft(history, n_max, params, rng,
                          keep_going=lambda conf: ctl.worth_drafting_more(drafter.name, conf))
    name = draft.source or drafter.name
    # Leave end-of-generation to the target, so every step emits accepted + 1.
    n = next((i for i, t in enumerate(draft.tokens) if is_eog(t)), len(draft))
    if grammar is not None:
        # A token the grammar forbids is rejected for sure, and so is all after it: not worth verifying, and
        # the controller should size what remains.
        n = grammar.valid_prefix(draft.tokens[:n])
    n = min(n, ctl.best_length(name, draft.confidence[:n], calibrated=draft.calibrated).n)
    return draft.first(n, offered=len(draft)), name


class Engine:
    def __init__(self, target: Model, drafter: Drafter, *, n_ctx: int = 4096,
                 n_threads: int | None = None, controller: Controller | None = None,
                 draft_model: Model | None = None, drafters: dict[str, Drafter] | None = None,
                 exact: bool = False, n_seq: int = 1):
        self.target = target
        self.draft_model = draft_model
        self.drafter = drafter
        # Every drafter this engine can switch to (chat's /drafter), by name.
        self.drafters: dict[str, Drafter] = {**(drafters or {}), drafter.name: drafter}
        self.ctx = Context(target, n_ctx, n_threads, exact=exact, n_seq=n_seq)
        self.n_ctx = self.ctx.n_ctx
        self.controller = controller or Controller()
        self.cached: list[int] = []
        """Tokens whose KV entries are in sequence 0 of the context, in order (a server's first slot shares it)."""
        self.slot_drafters: Callable[[int, Controller], dict[str, Drafter]] | None = None
        """A drafter set of its own for another sequence of the context and its controller (the server's
        slots; see drafters.drafter_set)."""

    @property
    def exact(self) -> bool:
        """Generations decode exactly unless told otherwise (see Context)."""
        return self.ctx.exact_capable

    def close(self) -> None:
        for d in self.drafters.values():
            d.close()
        self.ctx.close()

    def reset_cache(self) -> None:
        """Forget every cached prefix, so the next prompt is decoded in full (a cold start)."""
        self.ctx.rollback_to(0)
        del self.cached[:]
        for d in self.drafters.values():
            d.prefill([])

    def learned(self) -> object:
        """What the session has learned about the text so far (acceptance rates, the drafters' statistics;
        not the machine's costs), for `restore`."""
        return self.controller.learned(), {name: d.learned() for name, d in self.drafters.items()}

    def restore(self, learned: object) -> None:
        """Go back to a state `learned` returned: a benchmark's repeats of a prompt each start from the same
        session instead of one that has already seen that prompt's answer."""
        controller, drafters = learned
        self.controller.restore(controller)
        for name, state in drafters.items():
            self.drafters[name].restore(state)

    def set_drafter(self, name: str) -> None:
        """Switch drafters between generations (chat's /drafter)."""
        if name not in self.drafters:
            raise SpecgenError(f"drafter {name!r} is not available here; choose one of {', '.join(self.drafters)}"
                               + ("" if "model" in self.drafters else " (start with {draft} for 'model')"))
        self.drafter = self.drafters[name]

    def set_draft_max(self, n: int | None) -> None:
        """A fixed draft length, or None to let the controller choose each step."""
        self.controller.set_fixed(parse_draft_max(n))

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.target.tokenize(text, add_special=add_special, parse_special=True)

    def generate(self, prompt: Sequence[int], **options) -> Iterator[Event]:
        """Generate after *prompt*, as a stream of events: the options are `Generation`'s."""
        # The generation (its grammar's llama.cpp sampler among it) is freed with this generator, its only
        # reference, however the caller stops reading.
        gen = Generation(self, prompt, self.cached, self.drafter, **options)
        self.ctx.decode(gen.unread, logits="none")
        yield gen.read(len(gen.unread))
        while (plan := gen.plan()) is not None:
            self.ctx.decode(plan.tokens, logits="all", seq=gen.seq)
            yield from gen.finish(plan, self.ctx.logits_rows(len(plan.tokens)))
        yield from gen.end()


@dataclass
class Plan:
    """A step's draft, chosen and not yet verified: `tokens` go into the verify batch."""
    draft: Draft
    drafter: str
    tokens: list[int]
    started: float
    drafted: float
    """perf_counter when the step began and when its draft was ready."""
    clock: tuple[float, float]
    """decode_clock's seconds at those two moments."""


class Generation:
    """One reply on one sequence of the target's context, a step at a time: whoever drives it decodes what it
    asks for (`unread`, then each `plan`'s tokens) and hands back the rows (Engine.generate for one, a
    batch of slots for several).

    *max_tokens* caps the reply.  *ignore_eos* bans end-of-generation tokens (as llama.cpp's --ignore-eos),
    for benchmarks that need a fixed length.  *grammar* (GBNF, from its rule `root`) constrains every emitted
    token; the reply ends when it is complete (then even under *ignore_eos*: nothing else may follow).
    *logprobs* puts on each Step the emitted tokens' logprobs with that many alternatives.  *lines* ends the
    reply at a line an editor does not want (outside the block, past a line count or a time budget): stop
    reason "block" or "limit".  *sources* are token sequences besides the prompt that the reply may copy (see
    Drafter.prefill).  *exact* (None: as the engine was built) makes the reply at temperature 0 the same token
    for token whatever the drafter and whatever prefix the cache held; it needs an engine built with
    exact=True.  *cached* lists the tokens whose KV entries sequence *seq* holds; the generation keeps it true.
    *drafter* and *controller* (by default the engine's) are this sequence's own.
    """

    def __init__(self, engine: Engine, prompt: Sequence[int], cached: list[int], drafter: Drafter, *,
                 seq: int = 0, controller: Controller | None = None, max_tokens: int = 256,
                 sampling: SamplingParams = SamplingParams(), stop: Sequence[str] = (), ignore_eos: bool = False,
                 grammar: str | None = None,
                 logprobs: int | None = None, lines: Lines | None = None,
                 sources: Sequence[Sequence[int]] = (), exact: bool | None = None):
        check_count("max_tokens", max_tokens)
        sampling.check()
        if lines is not None:
            lines.check()
        if logprobs is not None and not (isinstance(logprobs, int) and not isinstance(logprobs, bool)
                                         and 0 <= logprobs <= MAX_LOGPROBS):
            raise SpecgenError(f"logprobs must be a whole number from 0 to {MAX_LOGPROBS}, not {logprobs!r}")
        self.engine, self.target, self.ctx = engine, engine.target, engine.ctx
        self.controller = controller or engine.controller
        self.ctx.set_exact(engine.exact if exact is None else exact)
        self.grammar = Grammar(self.target, grammar) if grammar is not None else None
        self.banned = self.target.eog_tokens if ignore_eos else None
        self.history = list(prompt)
        if not self.history:
            raise SpecgenError("empty prompt")
        if len(self.history) >= engine.n_ctx:
            raise ContextOverflow(f"prompt is {len(self.history)} tokens but the context holds {engine.n_ctx}; "
                                  "shorten it or raise {n_ctx}")
        self.seq, self.cached, self.drafter, self.sources = seq, cached, drafter, sources
        self.max_tokens, self.sampling, self.logprobs = max_tokens, sampling, logprobs
        self.rng = np.random.default_rng(sampling.seed)
        self.summary = Summary(prompt_tokens=len(self.history))
        self.text = TextStream(stop, lines)
        self.priced = True
        """Whether each step's verify time prices the controller's cost curve (not when the batch is shared)."""
        self.done = False
        self.ready = False
        """Whether the prompt has been read (`read` gave the Prefill event), so steps may begin."""
        self._rows = np.zeros((0, 0), dtype=np.float32)  # the last verify batch's logits, a row per token
        self._first_step = True
        self._started = time.perf_counter()
        # Reuse the cached prefix; ctx.past is the truth if an interrupt cut the last generation short.
        keep = self.ctx.reusable(common_prefix(cached, self.history[:-1]), seq)
        self.ctx.rollback_to(keep, seq)
        del cached[keep:]
        self.summary.reused_tokens = keep

    @property
    def unread(self) -> list[int]:
        """Prompt tokens still to decode (all but its last, which the first verify batch holds)."""
        return self.history[len(self.cached):-1]

    def read(self, n: int) -> Prefill | None:
        """*n* more prompt tokens are in the cache: the Prefill event once the whole prompt is."""
        self.cached += self.unread[:n]
        if self.unread:
            return None
        self.ready = True
        self.drafter.prefill(self.history, self.sources)
        s = self.summary
        s.prompt_seconds = time.perf_counter() - self._started
        self._t_decode = time.perf_counter()
        return Prefill(s.prompt_tokens - s.reused_tokens, s.reused_tokens, s.prompt_seconds)

    def plan(self) -> Plan | None:
        """The next step's draft, or None when the reply is over."""
        # Never draft past max_tokens or the context: every step emits accepted + 1.
        s = self.summary
        room = min(self.max_tokens - s.generated_tokens, self.engine.n_ctx - len(self.history)) - 1
        if self.done or room < 0:
            if not self.done:
                s.stop_reason = "max_tokens" if s.generated_tokens >= self.max_tokens else "context"
                self.done = True
            return None
        c0, t0 = decode_clock.seconds, time.perf_counter()
        draft, name = choose_draft(self.drafter, self.controller, self.history, room, self.sampling, self.rng,
                                   self.target.is_eog, self.grammar)
        return Plan(draft, name, [self.history[-1], *draft.tokens], t0, time.perf_counter(),
                    (c0, decode_clock.seconds))

    def cut(self, plan: Plan, n: int) -> None:
        """Verify only the first *n* tokens of the plan's draft (a batch of slots could not afford more)."""
        plan.draft = plan.draft.first(n)
        plan.tokens = plan.tokens[:n + 1]

    def finish(self, plan: Plan, rows: np.ndarray) -> list[Event]:
        """Accept from the verify batch's *rows*, roll back the rest: the step's text pieces and its Step."""
        c2, t2 = decode_clock.seconds, time.perf_counter()
        draft, name, t0, t1 = plan.draft, plan.drafter, plan.started, plan.drafted
        self._rows = rows
        if self._first_step:
            # A file whose tensor bytes are garbage still loads; its logits are what give it away.
            self._first_step = False
            if not np.isfinite(rows[0]).all():
                raise ModelFault(f"{self.target.path.name}: the model produced invalid numbers (NaN or "
                                 "infinity); the file may be corrupt, download it again")
        step = Step(name, len(draft), 0, t1 - t0, 0.0, offered=draft.offered)
        accepted, token = self._verify(draft)
        t3 = time.perf_counter()
        if accepted < len(draft):  # else nothing to drop, and the call costs tens of microseconds right after a batch
            self.ctx.rollback_to(len(self.history) + accepted, self.seq)
        self.cached.append(self.history[-1])
        self.cached += draft.tokens[:accepted]
        emitted = draft.tokens[:accepted] + [token]
        step.accepted, step.verify_seconds = accepted, t3 - t1
        self.controller.observe(name, step.drafted, accepted, step.draft_seconds, step.verify_seconds,
                                draft.confidence, caught_up=draft.caught_up, calibrated=draft.calibrated,
                                priced=self.priced)
        (c0, c1) = plan.clock
        step.host = {"draft": (t1 - t0) - (c1 - c0), "batch": (t2 - t1) - (c2 - c1), "verify": t3 - t2,
                     "controller": time.perf_counter() - t3}
        if self.logprobs is not None:  # after the timing: a pass over the vocabulary per token, no cost of drafting
            step.logprobs = [self._logprob(i, tok, self.logprobs) for i, tok in enumerate(emitted)]
        t_text = time.perf_counter()
        self.history += emitted
        s, text, is_eog, piece = self.summary, self.text, self.target.is_eog, self.target.piece
        shown = next((i for i, tok in enumerate(emitted) if is_eog(tok)), len(emitted))
        pieces = [Piece(p, from_draft) for p, from_draft in
                  text.push_all([(piece(tok), i < step.accepted) for i, tok in enumerate(emitted[:shown])])]
        if text.stopped:
            s.stop_reason, s.stop_string = text.reason, text.matched
        elif shown < len(emitted):
            s.stop_reason = "eos"
        s.add(step)
        step.host["text"] = time.perf_counter() - t_text
        _count(s.host_seconds, "text", step.host["text"])
        self.done = s.stop_reason == "eos" or text.stopped
        return [*pieces, step]

    def end(self) -> list[Event]:
        """The text held back (a possible stop string's start), then the Summary."""
        out: list[Event] = [Piece(piece, from_draft) for piece, from_draft in self.text.flush()]
        s = self.summary
        s.decode_seconds = time.perf_counter() - self._t_decode
        s.costs = self.controller.explain()
        s.text = self.text.text
        s.tokens = self.history[s.prompt_tokens:]
        return [*out, s]

    def _verify(self, draft: Draft) -> tuple[int, int]:
        """Rows 0..n of the verify batch judge draft tokens 1..n, row n gives the bonus token.

        Greedy: keep a draft token while it is the target's argmax.  Sampling:
        speculative sampling, so the output is distributed exactly as the target's.
        Under a grammar, each row is judged in the grammar's state after the tokens
        before it, so the output is exactly plain constrained decoding's; the grammar
        moves past each token as it is emitted, and no further.
        """
        history, params, rng, grammar = self.history, self.sampling, self.rng, self.grammar
        if params.greedy and grammar is None and not params.looks_back:
            # The common case, in as few steps of Python as it takes: each runs with the caches the
            # verify batch just flushed, at several times its usual cost.
            for i, x in enumerate(draft.tokens):
                tok = self._argmax(i)
                if tok != x:
                    return i, tok
            return len(draft), self._argmax(len(draft))
        if grammar is None and not params.looks_back:
            # Every row's distribution at once: one pass over the rows finds their supports, where a row at a
            # time cost several, and the rows after a rejection cost less than those passes saved.
            dists = distributions(self._row(slice(len(draft) + 1)), params)
            for i, x in enumerate(draft.tokens):
                ok, tok = accept_or_resample(dists[i], draft.q[i] if draft.q is not None else None, x, rng)
                if not ok:
                    return i, tok
            return len(draft), sample(dists[len(draft)], rng)
        # Only the penalties look at the past; skip copying it when they are off.
        seen = history + draft.tokens if params.looks_back else []
        for i, x in enumerate(draft.tokens):
            row = self._judged(i, seen[: len(history) + i], params, grammar)
            if params.greedy:
                tok = int(np.argmax(row))
                ok = tok == x
            else:
                q = draft.q[i] if draft.q is not None else None
                ok, tok = accept_or_resample(distribution(row, (), params), q, x, rng)
            if grammar is not None:
                grammar.advance([tok])
            if not ok:
                return i, tok
        n = len(draft)
        row = self._judged(n, seen[: len(history) + n], params, grammar)
        tok = int(np.argmax(row)) if params.greedy else sample(distribution(row, (), params), rng)
        if grammar is not None:
            grammar.advance([tok])
        return n, tok

    def _judged(self, i: int, past: Sequence[int], params: SamplingParams, grammar: Grammar | None) -> np.ndarray:
        """Row i as sampling decides on it: penalized, and every token *grammar* forbids impossible.

        Only the tokens sampling could pick are put to the grammar, best first (the
        argmax, greedy; the top_k, sampling), which gives the same choice as masking
        the whole row at a fraction of its cost; top_k 0 (off) needs the whole row.
        """
        row = penalized(self._row(i), past, params)
        if grammar is None:
            return row
        k = 1 if params.greedy else params.top_k or row.shape[0]
        if k == 1 and grammar.allows(int(np.argmax(row))):
            return row
        keep = best_allowed(row, grammar.allowed, k)
        if not len(keep):
            # Nothing allowed can come next: the grammar is complete and end-of-generation banned (ignore_eos),
            # or it needs a character no token spells.  End the reply rather than write what it forbids.
            row, keep = np.zeros_like(row), np.array([self.target.eos])
        return only(row, keep)

    def _logprob(self, i: int, token: int, n: int) -> TokenLogprob:
        """*token*'s logprob in row i of the verify batch, and the row's *n* likeliest tokens."""
        piece = self.target.piece
        logprob, ids, logprobs = log_softmax_top(self._row(i), token, n)
        return TokenLogprob(token, piece(token), logprob,
                            [(int(t), piece(int(t)), float(lp)) for t, lp in zip(ids, logprobs)])

    def _argmax(self, i: int) -> int:
        """Row i's best token, end-of-generation banned: the row is rewritten only where that is the best."""
        tok = int(self._rows[i].argmax())
        return int(self._row(i).argmax()) if self.banned is not None and self.target.is_eog(tok) else tok

    def _row(self, i: int | slice) -> np.ndarray:
        """Row i of the verify batch (or the rows of a slice), end-of-generation banned under ignore_eos."""
        row = self._rows[i]
        if self.banned is not None:
            row[..., self.banned] = -np.inf  # llama.cpp's buffer; nobody else reads these rows
        return row
