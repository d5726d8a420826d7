"""The one engine thread: requests are served in the server's slots, decoded together, in arrival order.

The event loop never touches the engine.  It submits a `Job` and reads the
job's events from an asyncio queue; the worker thread pushes them there as the
slots yield them and ends a generation after the step (one batch) in which its
job is cancelled, so a client that hangs up frees its slot at once.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Union

from ..engine import ContextOverflow, Engine, Event, Summary
from ..errors import ModelFault, SpecgenError
from ..formats.infill import infill_tokens
from ..formats.structured import in_json_strings
from ..llama.chat_template import chat_tokens
from ..meter import TurnMeter
from ..slots import Outcome, Slots
from .schema import APIError, GenRequest


@dataclass
class Done:
    """The job's last event: `summary` is None when it never finished (cancelled, stopped)."""
    summary: Summary | None
    cancelled: bool = False


@dataclass
class Failed:
    """The job's last event when it could not run or was cut off by a shutdown."""
    error: APIError


JobEvent = Union[Event, Done, Failed]

_ids = itertools.count(1)
POLL_SECONDS = 0.2  # how often an idle worker looks for a shutdown
LAST_WORDS_SECONDS = 3.0  # how long a server that must die waits for its clients to get their error


@dataclass
class Job:
    request: GenRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    id: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    prompt_tokens: int = 0
    drafter: str = ""
    meter: TurnMeter | None = None
    """Live figures while it runs (read by the screen)."""
    slot: int | None = None
    """The slot serving it, once one does."""
    answered: threading.Event = field(default_factory=threading.Event)
    """Set once the client has its whole response (see `Worker.last_words`)."""
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def push(self, ev: JobEvent) -> None:
        """From the worker thread: hand one event to the request's coroutine."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, ev)
        except RuntimeError:  # the loop is gone (server stopped); nobody is listening
            pass


class QueueFull(Exception):
    pass


def context_exceeded(kind: str, prompt_tokens: int, n_ctx: int) -> APIError:
    """A prompt with no room left for a reply, in OpenAI's words and code: client libraries and agents
    recognise an overflow by "maximum context length" or `context_length_exceeded` and then trim the
    conversation.  A reply that merely outgrows the context (max_tokens beyond what is left) is not refused:
    it ends with finish_reason "length", as llama-server's does."""
    what = {"chat": "messages", "completion": "prompt", "infill": "input"}[kind]
    return APIError(400, f"This model's maximum context length is {n_ctx} tokens. However, your {what} resulted "
                         f"in {prompt_tokens} tokens. Please reduce the length of the {what}, or serve with a "
                         "larger --ctx.", param=what, code="context_length_exceeded", overflow=(prompt_tokens, n_ctx))


TYPICAL_REPLY = 256
"""Tokens a reply is expected to run to while none has finished."""


def retry_after(job: Job | None, n_ctx: int, done: Summary, finished: int) -> int:
    """Seconds until a refused request is likely to find a place: when *job*, the reply being generated, ends
    (the first waiting request then starts, so those waiting do not count, however long they will take).

    Its tokens to come: a typical reply's length (the mean of the *finished* replies totalled in *done*, else
    TYPICAL_REPLY) less those out so far, or half that length once past it; all of its max_tokens when it
    cannot end early (ignore_eos); never more than max_tokens or the context leave.  Each at the seconds per
    token it has decoded at so far, else at the finished replies' rate; plus what is left of reading its
    prompt, at the finished requests' prompt rate.  1 while nothing runs or no rate is known yet."""
    if job is None:
        return 1
    r, m = job.request, job.meter
    out = m.summary.generated_tokens if m is not None else 0
    if m is not None and out and m.summary.decode_seconds > 0:
        per_token = m.summary.decode_seconds / out
    elif done.generated_tokens and done.decode_seconds > 0:
        per_token = done.decode_seconds / done.generated_tokens
    else:
        return 1
    typical = done.generated_tokens / finished if finished else TYPICAL_REPLY
    if r.ignore_eos and r.max_tokens is not None:
        to_come = r.max_tokens - out
    else:
        to_come = typical - out if out < typical else typical / 2
    room = min(n_ctx - job.prompt_tokens, r.max_tokens if r.max_tokens is not None else n_ctx) - out
    seconds = max(0, min(to_come, room)) * per_token
    read = done.prompt_tokens - done.reused_tokens
    if (m is None or m.prefill is None) and job.started is not None and read > 0:
        seconds += max(0.0, job.prompt_tokens * done.prompt_seconds / read - (time.perf_counter() - job.started))
    return max(1, math.ceil(seconds))


class Worker:
    """The engine's thread: up to *parallel* requests decoded together (slots.Slots), the rest waiting in
    arrival order."""

    def __init__(self, engine: Engine, queue_size: int = 16,
                 on_done: Callable[[Job, Summary | None, bool], None] | None = None, parallel: int = 1,
                 cache_bytes: int = 0):
        self.engine = engine
        self.queue_size = queue_size
        self.on_done = on_done
        self.slots = Slots(engine, parallel, cache_bytes)
        self.running: dict[int, Job] = {}
        """The job each busy slot serves, by slot id."""
        self._queue: queue.Queue[Job] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="specgen-engine", daemon=True)
        self.default_drafter = engine.drafter.name

    @property
    def parallel(self) -> int:
        return len(self.slots.slots)

    @property
    def current(self) -> Job | None:
        """The longest-running job (the one a refused request's Retry-After waits for), None when idle."""
        jobs = list(self.running.values())
        return min(jobs, key=lambda j: j.id) if jobs else None

    @property
    def waiting(self) -> int:
        return self._waiting

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenRequest, loop: asyncio.AbstractEventLoop) -> Job:
        """Queue *request*; QueueFull when `queue_size` requests already wait beside those being served (so
        with 0, the slots serve and none waits)."""
        with self._lock:
            if self._stopping.is_set():
                raise QueueFull("the server is shutting down")
            busy = len(self.running)
            if self._waiting + busy > self.queue_size + self.parallel - 1:
                raise QueueFull(f"{busy} request{'s are' if busy != 1 else ' is'} being served and "
                                f"{self._waiting} {'are' if self._waiting != 1 else 'is'} waiting")
            self._waiting += 1
            job = Job(request, loop)
            self._queue.put(job)
        return job

    def stop(self) -> None:
        """Shut down: the running generations end with an error, waiting jobs are refused.

        Only sets a flag, so a signal handler may call it whatever the main thread was doing.
        """
        self._stopping.set()

    def last_words(self, line: str) -> None:
        """The process is about to end (llama.cpp lost an RPC worker and aborts): give the running and the
        waiting requests *line* as a 502, and wait a little for their clients to have it.

        Runs on the thread llama.cpp aborted on, the engine's, while the event loop sends the answers.
        """
        self._stopping.set()
        jobs = list(self.running.values()) + self._drain()
        error = APIError(502, f"the server stops: {line}", code="backend_lost")
        for job in jobs:
            job.push(Failed(error))
        deadline = time.monotonic() + LAST_WORDS_SECONDS
        for job in jobs:
            job.answered.wait(max(0.0, deadline - time.monotonic()))

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self._stopping.is_set():
                self._shut_down()
                break
            self._admit()
            if not self.running:
                continue
            try:
                outcomes = self.slots.step()
            except Exception as e:  # the batch itself failed: every reply in it
                error = e
                outcomes = [(slot, error) for slot in self.slots.slots if slot.id in self.running]
                for slot, _ in outcomes:
                    self.slots.release(slot)
            for slot, outcome in outcomes:
                self._deliver(slot.id, outcome)
            for sid, job in list(self.running.items()):  # a client that left frees its slot now
                if job.cancelled:
                    self.slots.release(self.slots.slots[sid])
                    self._end(sid, None, True, Done(None, cancelled=True))

    def _admit(self) -> None:
        """Start waiting jobs in free slots; while nothing runs, wait for one (a while, to see a shutdown)."""
        while self.slots.free:
            try:
                job = self._queue.get_nowait() if self.running else self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                return
            if job.cancelled or self._stopping.is_set():  # the client left while waiting, or the server stops
                with self._lock:
                    self._waiting -= 1
                job.push(Done(None, cancelled=True) if job.cancelled else _shutting_down(cut=False))
                continue
            # Rendering the prompt and taking a slot run outside the lock, which `submit` waits on: the job
            # counts as waiting until it counts as served, both changed at once.
            failed = self._begin(job)
            with self._lock:
                self._waiting -= 1
                if failed is None:
                    self.running[job.slot] = job
            if failed is not None:
                self._finish(job, None, False, failed)

    def _begin(self, job: Job) -> Failed | None:
        """Put *job* in a slot (`job.slot`), or the error that refuses it."""
        r = job.request
        try:
            job.started = time.perf_counter()
            tokens = self.tokens_for(r)
            job.prompt_tokens = len(tokens)
            max_tokens = r.max_tokens if r.max_tokens is not None else self.engine.n_ctx
            slot = self.slots.start(tokens, drafter=r.drafter, draft_max=r.draft_max, cache_prompt=r.cache_prompt,
                                    max_tokens=max_tokens, sampling=r.sampling, stop=r.stop,
                                    ignore_eos=r.ignore_eos, grammar=r.grammar, logprobs=r.logprobs, lines=r.lines,
                                    sources=self.copy_sources(r), exact=r.exact)
        except Exception as e:
            return Failed(self._error(job, e))
        assert slot.gen is not None
        job.drafter = slot.gen.drafter.name
        job.slot = slot.id
        job.meter = TurnMeter(self.engine.n_ctx, len(tokens))
        return None

    def _deliver(self, sid: int, outcome: Outcome) -> None:
        job = self.running.get(sid)
        if job is None:
            return
        if isinstance(outcome, BaseException):
            self._end(sid, None, False, Failed(self._error(job, outcome)))
            return
        for ev in outcome:
            job.meter.on(ev)
            job.push(ev)
            if isinstance(ev, Summary):
                self._end(sid, ev, False, Done(ev))

    def _end(self, sid: int, summary: Summary | None, cancelled: bool, end: Done | Failed) -> None:
        job = self.running.pop(sid)
        self._finish(job, summary, cancelled, end)

    def _finish(self, job: Job, summary: Summary | None, cancelled: bool, end: Done | Failed) -> None:
        # Count the generation before the client can see its end (and read /metrics).
        if self.on_done is not None:
            self.on_done(job, summary, cancelled)
        job.push(end)

    def _shut_down(self) -> None:
        for sid in list(self.running):
            self.slots.release(self.slots.slots[sid])
            self._end(sid, None, False, _shutting_down(cut=True))
        for job in self._drain():
            job.push(_shutting_down(cut=False))

    def _drain(self) -> list[Job]:
        """Take every waiting job off the queue (the server stops)."""
        jobs = []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            self._waiting -= len(jobs)
        return jobs

    def _error(self, job: Job, e: BaseException) -> APIError:
        """What the client of *job* is told of *e*."""
        if isinstance(e, APIError):
            return e
        if isinstance(e, ContextOverflow):  # the engine's own check: the prompt leaves no room for a reply
            return context_exceeded(job.request.kind, job.prompt_tokens, self.engine.n_ctx)
        if isinstance(e, ModelFault):  # the model failed, not the request: whatever was asked, it fails again
            return APIError(500, str(e), code="model_failed")
        if isinstance(e, SpecgenError):  # e.g. a chat template that refuses the conversation
            return APIError(400, str(e))
        # The worker must outlive any one request.
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        return APIError(500, f"internal error: {type(e).__name__}")

    def tokens_for(self, r: GenRequest) -> list[int]:
        """The prompt tokens *r* is generated from (the chat template's rendering, tools included)."""
        if r.kind == "chat":
            return chat_tokens(self.engine.target, list(r.messages), tools=list(r.tools) if r.uses_tools else None)
        if r.infill is not None:
            # Room for the reply first: an editor's context is cut (other files, then the far ends) to leave it.
            n_ctx = self.engine.n_ctx
            return infill_tokens(self.engine.target, r.infill, n_ctx - min(r.max_tokens or n_ctx // 4, n_ctx // 2))
        return chat_tokens(self.engine.target, [{"role": "user", "content": r.prompt}], raw=True)

    def copy_sources(self, r: GenRequest) -> list[list[int]]:
        """What a reply in JSON (a tool call's arguments, structured output) copies from the conversation: its
        texts as they read escaped inside a JSON string (formats.structured.in_json_strings).  Wherever tools
        are offered or JSON is asked for: an agent asked for the file as JSON without a schema writes it so too."""
        if not (r.tools or r.grammar is not None):
            return []
        texts = [m["content"] for m in r.messages if isinstance(m.get("content"), str)] or [r.prompt]
        target = self.engine.target
        return [target.tokenize(t, add_special=False, parse_special=False) for t in in_json_strings(texts)]


def _shutting_down(cut: bool) -> Failed:
    """A job's end when the server stops: *cut* short while generating, or before it started."""
    return Failed(APIError(503, "the server is shutting down" + ("; the reply was cut short" if cut else ""),
                           code="shutting_down"))


__all__ = ["Done", "Failed", "Job", "JobEvent", "QueueFull", "Worker", "context_exceeded", "retry_after"]
