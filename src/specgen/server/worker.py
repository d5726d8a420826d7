"""The one engine thread: requests are served one at a time, in arrival order.

The event loop never touches the engine.  It submits a `Job` and reads the
job's events from an asyncio queue; the worker thread pushes them there as the
engine yields them and stops a generation at the next event (within one
verify step) once the job is cancelled, so a client that hangs up frees the
engine at once.
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
    def __init__(self, engine: Engine, queue_size: int = 16,
                 on_done: Callable[[Job, Summary | None, bool], None] | None = None):
        self.engine = engine
        self.queue_size = queue_size
        self.on_done = on_done
        self.current: Job | None = None
        self._queue: queue.Queue[Job] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="specgen-engine", daemon=True)
        # Per-request drafter settings are applied for one job and then put back.
        self.default_drafter = engine.drafter.name
        self._draft_max = engine.controller.fixed

    @property
    def waiting(self) -> int:
        return self._waiting

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenRequest, loop: asyncio.AbstractEventLoop) -> Job:
        """Queue *request*; QueueFull when `queue_size` requests already wait beside the one being served (so
        with 0, one is served and none waits)."""
        with self._lock:
            if self._stopping.is_set():
                raise QueueFull("the server is shutting down")
            if self._waiting + (self.current is not None) > self.queue_size:
                raise QueueFull(f"one request is being served and {self._waiting} are waiting")
            self._waiting += 1
            job = Job(request, loop)
            self._queue.put(job)
        return job

    def stop(self) -> None:
        """Shut down: the running generation ends with an error, waiting jobs are refused.

        Only sets a flag, so a signal handler may call it whatever the main thread was doing.
        """
        self._stopping.set()

    def last_words(self, line: str) -> None:
        """The process is about to end (llama.cpp lost an RPC worker and aborts): give the running and the
        waiting requests *line* as a 502, and wait a little for their clients to have it.

        Runs on the thread llama.cpp aborted on, the engine's, while the event loop sends the answers.
        """
        self._stopping.set()
        jobs = [self.current] if self.current is not None else []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
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
            try:
                job = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._stopping.is_set():
                    break
                continue
            with self._lock:  # both at once: `submit` always counts a job, as waiting or as served
                self._waiting -= 1
                self.current = job
            try:
                if self._stopping.is_set():
                    job.push(Failed(APIError(503, "the server is shutting down", code="shutting_down")))
                elif job.cancelled:  # the client left while waiting
                    job.push(Done(None, cancelled=True))
                else:
                    self._serve(job)
            finally:
                self.current = None

    def _serve(self, job: Job) -> None:
        summary: Summary | None = None
        cancelled = False
        end: Done | Failed
        try:
            job.started = time.perf_counter()
            tokens = self.tokens_for(job.request)
            job.prompt_tokens = len(tokens)
            summary, cancelled = self._generate(job, tokens)
            if summary is None and not cancelled:  # stopped by a shutdown mid-generation
                raise APIError(503, "the server is shutting down; the reply was cut short", code="shutting_down")
            end = Done(summary, cancelled)
        except APIError as e:
            end = Failed(e)
        except ContextOverflow:  # the engine's own check: the prompt leaves no room for a reply
            end = Failed(context_exceeded(job.request.kind, job.prompt_tokens, self.engine.n_ctx))
        except ModelFault as e:  # the model failed, not the request: whatever was asked, it fails again
            end = Failed(APIError(500, str(e), code="model_failed"))
        except SpecgenError as e:  # e.g. a chat template that refuses the conversation
            end = Failed(APIError(400, str(e)))
        except Exception as e:  # the worker must outlive any one request
            traceback.print_exc(file=sys.stderr)
            end = Failed(APIError(500, f"internal error: {type(e).__name__}"))
        # Count the generation before the client can see its end (and read /metrics).
        if self.on_done is not None:
            self.on_done(job, summary, cancelled)
        job.push(end)

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

    def _generate(self, job: Job, tokens: list[int]) -> tuple[Summary | None, bool]:
        r, eng = job.request, self.engine
        if r.drafter is not None:
            eng.set_drafter(r.drafter)
        if r.draft_max != "server":
            eng.set_draft_max(r.draft_max)
        if not r.cache_prompt:
            eng.reset_cache()
        job.drafter = eng.drafter.name
        job.meter = meter = TurnMeter(eng.n_ctx, len(tokens))
        max_tokens = r.max_tokens if r.max_tokens is not None else eng.n_ctx
        events = eng.generate(tokens, max_tokens=max_tokens, sampling=r.sampling, stop=r.stop,
                              ignore_eos=r.ignore_eos, grammar=r.grammar, logprobs=r.logprobs, lines=r.lines,
                              sources=self.copy_sources(r), exact=r.exact)
        try:
            for ev in events:
                meter.on(ev)
                job.push(ev)
                if isinstance(ev, Summary):
                    return ev, False
                if self._stopping.is_set():
                    return None, False
                if job.cancelled:
                    return None, True
            return None, False
        finally:
            events.close()
            eng.set_drafter(self.default_drafter)
            eng.set_draft_max(self._draft_max)


__all__ = ["Done", "Failed", "Job", "JobEvent", "QueueFull", "Worker", "context_exceeded", "retry_after"]
