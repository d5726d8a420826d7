"""The ASGI app: OpenAI's routes over one engine worker.

Request bodies are checked in schema.py, generations run in worker.py's
thread, and every answer — errors included — has OpenAI's shape.  Each
response carries `usage`, llama-server's `timings` and a `specgen` block.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..engine import Engine, Piece, Step, Summary
from ..errors import SpecgenError, unsendable
from ..fileio import parse_json
from ..llama.rpc import on_abort
from ..sampling import SamplingParams
from .metrics import CONTENT_TYPE, Metrics
from .schema import APIError, GenRequest, parse_chat, parse_completion
from .view import RequestRecord, View
from .worker import Done, Failed, Job, QueueFull, Worker

MAX_BODY = 8 << 20
"""Bytes; far above any prompt a context can hold, far below what would hurt the server."""

FINISH = {"eos": "stop", "stop": "stop", "max_tokens": "length", "context": "length"}


@dataclass
class ServerConfig:
    model_id: str
    """The name /v1/models lists (the pair, or the target file's stem)."""
    target: Path
    draft: Path | None = None
    api_key: str | None = None
    queue: int = 16
    sampling: SamplingParams = SamplingParams()
    """Defaults for fields a request leaves out (the command's --temperature etc.)."""
    max_body: int = MAX_BODY

    def __post_init__(self) -> None:
        if self.api_key is not None:
            check_api_key(self.api_key, "api_key")


def check_api_key(key: str, where: str) -> str:
    """*key*, when a client can send it as `Authorization: Bearer KEY`: printable ASCII with no space at
    either end.  Any other would make every request fail with 401, so it is a SpecgenError naming *where*
    (never the key)."""
    kind = unsendable(key)
    if kind:
        raise SpecgenError(f"{where} holds {kind}, which no client can send in an HTTP header; "
                           "give a key of printable ASCII characters")
    if key != key.strip(" "):
        raise SpecgenError(f"{where} starts or ends with a space, which an HTTP header drops; remove it")
    return key


def create_app(engine: Engine, config: ServerConfig, view: View | None = None) -> Starlette:
    server = _Server(engine, config, view or View())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.worker.start()
        unhook = on_abort(server.last_words)
        try:
            yield
        finally:
            unhook()
            server.worker.stop()

    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/completions", server.completions, methods=["POST"]),
    ]
    handlers = {HTTPException: server.http_error, APIError: server.api_error, Exception: server.internal_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.server = server
    return app


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class _Server:
    def __init__(self, engine: Engine, config: ServerConfig, view: View):
        self.engine, self.config, self.view = engine, config, view
        self.metrics = Metrics()
        self.worker = Worker(engine, config.queue, on_done=lambda job, s, c: self.metrics.generation(s, c))
        self.created = int(time.time())
        self._mean_seconds = 0.0  # recent request latency, for Retry-After
        view.attach(self.worker, self.metrics, engine)

    # -- plain routes -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "busy": self.worker.current is not None,
                             "waiting": self.worker.waiting})

    async def metrics_text(self, request: Request) -> Response:
        self._check_key(request)
        text = self.metrics.render(self.worker.waiting, self.worker.current is not None)
        self.metrics.request(_route(request), 200)
        return Response(text, media_type=CONTENT_TYPE)

    async def models(self, request: Request) -> Response:
        self._check_key(request)
        c, eng = self.config, self.engine
        meta = {"target": str(c.target), "draft": str(c.draft) if c.draft else None,
                "drafter": self.worker.default_drafter, "drafters": sorted(eng.drafters), "n_ctx": eng.n_ctx}
        return JSONResponse({"object": "list", "data": [
            {"id": c.model_id, "object": "model", "created": self.created, "owned_by": "specgen", "meta": meta}]})

    # -- errors ---------------------------------------------------------------------------------

    async def api_error(self, request: Request, e: Exception) -> Response:
        assert isinstance(e, APIError)
        self.metrics.request(_route(request), e.status)
        self.view.request(RequestRecord(request.method, request.url.path, e.status, 0.0, None, error=e.message))
        return error_response(e)

    async def http_error(self, request: Request, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        if e.status_code == 404:
            err = APIError(404, f"no such route: {request.method} {request.url.path}; this server offers "
                                "/v1/chat/completions, /v1/completions, /v1/models, /health and /metrics",
                           code="unknown_url")
        elif e.status_code == 405:
            err = APIError(405, f"{request.method} is not allowed on {request.url.path}",
                           code="method_not_allowed")
        else:
            err = APIError(e.status_code, str(e.detail))
        return await self.api_error(request, err)

    async def internal_error(self, request: Request, e: Exception) -> Response:
        # Starlette logs the traceback on the server's stderr; the client gets one line.
        return error_response(APIError(500, f"internal error: {type(e).__name__}"))

    def last_words(self, line: str) -> None:
        """llama.cpp is about to end the process: answer the clients, then give the terminal back."""
        self.worker.last_words(line)
        self.view.stop()

    def _check_key(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY'" if not auth else
                           "incorrect API key", code="invalid_api_key")

    # -- generation routes ----------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, parse_completion)

    async def _generate(self, request: Request, parse: Callable[..., GenRequest]) -> Response:
        t0 = time.perf_counter()
        self._check_key(request)
        req = parse(await self._read_json(request), self.config.sampling)
        if req.drafter is not None and req.drafter not in self.engine.drafters:
            raise APIError(400, f"drafter {req.drafter!r} is not available; choose one of "
                                f"{', '.join(sorted(self.engine.drafters))}", param="drafter")
        try:
            job = self.worker.submit(req, asyncio.get_running_loop())
        except QueueFull as e:
            retry = max(1, math.ceil(self._mean_seconds * (self.worker.waiting + 1)))
            raise APIError(503, f"the server is busy ({e}); retry in {retry} s", code="queue_full",
                           headers={"Retry-After": str(retry)}) from None
        response = await self._answer(request, req, job, t0)
        response.background = BackgroundTask(job.answered.set)  # runs once the client has it all
        return response

    async def _answer(self, request: Request, req: GenRequest, job: Job, t0: float) -> Response:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            first = await job.events.get()
        finally:
            watcher.cancel()
        if isinstance(first, Failed):
            self._finish(request, first.error.status, t0, job, None, error=first.error.message)
            return error_response(first.error)
        if isinstance(first, Done):  # the client left while it waited
            self._finish(request, 499, t0, job, None, cancelled=True)
            return Response(status_code=499)
        out = _Reply(req, self.config.model_id, job)
        if req.stream:
            return StreamingResponse(self._stream(request, job, out, t0), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            while True:
                ev = await job.events.get()
                if isinstance(ev, Piece):
                    out.text.append(ev.text)
                elif isinstance(ev, Failed):
                    self._finish(request, ev.error.status, t0, job, None, error=ev.error.message)
                    return error_response(ev.error)
                elif isinstance(ev, Done):
                    break
        finally:
            watcher.cancel()
        if ev.summary is None:
            self._finish(request, 499, t0, job, None, cancelled=True)
            return Response(status_code=499)
        self._finish(request, 200, t0, job, ev.summary)
        return JSONResponse(out.whole(ev.summary))

    async def _stream(self, request: Request, job: Job, out: "_Reply", t0: float) -> AsyncIterator[bytes]:
        status, summary, error, cancelled = 200, None, None, True
        try:
            yield sse(out.chunk(out.first_delta()))
            pending: list[str] = []
            while True:
                ev = await job.events.get()
                if isinstance(ev, Piece):
                    pending.append(ev.text)
                    continue
                if pending and isinstance(ev, (Step, Summary, Done, Failed)):
                    yield sse(out.chunk(out.delta("".join(pending))))
                    out.text.extend(pending)
                    pending = []
                if isinstance(ev, Failed):
                    status, error = ev.error.status, ev.error.message
                    yield sse(ev.error.body())
                    cancelled = False
                    break
                if isinstance(ev, Done):
                    summary, cancelled = ev.summary, ev.cancelled
                    if summary is not None:
                        yield sse(out.chunk(out.end_delta(), finish=FINISH[summary.stop_reason], summary=summary))
                        if out.req.include_usage:
                            yield sse(out.usage_chunk(summary))
                        yield b"data: [DONE]\n\n"
                    break
        finally:
            job.cancel()  # a client that hung up stops the generation at its next step
            self._finish(request, status, t0, job, summary, error=error, cancelled=cancelled and summary is None)

    async def _read_json(self, request: Request) -> object:
        cap = self.config.max_body
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > cap:
            raise APIError(413, f"the request body is {int(size)} bytes; the most this server takes is {cap}",
                           code="request_too_large")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > cap:
                    raise APIError(413, f"the request body is over {cap} bytes, the most this server takes",
                                   code="request_too_large")
        except ClientDisconnect:  # nobody to answer: the status is for the log and /metrics
            raise APIError(499, f"the client hung up after {len(body)} bytes of its request body",
                           code="client_closed_request") from None
        try:
            return parse_json(bytes(body))
        except UnicodeDecodeError as e:
            raise APIError(400, f"the request body is not UTF-8 text (byte {e.start}); send JSON in UTF-8",
                           code="invalid_json") from None
        except ValueError as e:
            raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None

    # -- bookkeeping ----------------------------------------------------------------------------

    def _finish(self, request: Request, status: int, t0: float, job: Job | None, summary: Summary | None,
                error: str | None = None, cancelled: bool = False) -> None:
        seconds = time.perf_counter() - t0
        if summary is not None:
            self._mean_seconds = seconds if not self._mean_seconds else 0.8 * self._mean_seconds + 0.2 * seconds
        self.metrics.request(_route(request), status, seconds)
        self.view.request(RequestRecord(request.method, request.url.path, status, seconds, summary,
                                        job.drafter if job else "", job.prompt_tokens if job else 0,
                                        error=error, cancelled=cancelled))


ROUTES = ("/health", "/metrics", "/v1/models", "/models", "/v1/chat/completions", "/chat/completions",
          "/v1/completions", "/completions")


def _route(request: Request) -> str:
    """The metrics label: the route's path, or "other" so that scanners cannot grow the label set."""
    return request.url.path if request.url.path in ROUTES else "other"


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Cancel *job* when the client hangs up (the body has been read, so only a disconnect can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class _Reply:
    """Builds one request's response objects, whole or as stream chunks, for either endpoint."""

    def __init__(self, req: GenRequest, model: str, job: Job):
        self.req, self.model, self.job = req, model, job
        self.chat = req.kind == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-specgen-{job.id}-{int(time.time())}"
        self.created = int(time.time())
        self.text: list[str] = []

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "specgen"}

    def first_delta(self) -> dict:
        return {"role": "assistant", "content": ""} if self.chat else {"text": ""}

    def delta(self, text: str) -> dict:
        return {"content": text} if self.chat else {"text": text}

    def end_delta(self) -> dict:
        return {} if self.chat else {"text": ""}

    def chunk(self, delta: dict, finish: str | None = None, summary: Summary | None = None) -> dict:
        if self.chat:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            out = {**self._head("text_completion"), "choices": [{"index": 0, **delta, "logprobs": None,
                                                                  "finish_reason": finish}]}
        if self.req.include_usage:
            out["usage"] = None
        if summary is not None:
            out.update(self._stats(summary))
        return out

    def usage_chunk(self, s: Summary) -> dict:
        head = self._head("chat.completion.chunk" if self.chat else "text_completion")
        return {**head, "choices": [], "usage": usage(s), **self._stats(s)}

    def whole(self, s: Summary) -> dict:
        text, finish = "".join(self.text), FINISH[s.stop_reason]
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage(s), **self._stats(s)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(s), **self._stats(s)}

    def _stats(self, s: Summary) -> dict:
        return {"timings": timings(s), "specgen": specgen_stats(s, self.job.drafter)}


def usage(s: Summary) -> dict:
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": s.reused_tokens}}


def timings(s: Summary) -> dict:
    """llama-server's `timings` object, so tools written for it read ours unchanged."""
    prompt_n = s.prompt_tokens - s.reused_tokens
    return {"prompt_n": prompt_n, "prompt_ms": round(s.prompt_seconds * 1e3, 3),
            "prompt_per_token_ms": round(s.prompt_seconds * 1e3 / prompt_n, 3) if prompt_n else 0.0,
            "prompt_per_second": round(prompt_n / s.prompt_seconds, 3) if s.prompt_seconds > 0 else 0.0,
            "cache_n": s.reused_tokens,
            "predicted_n": s.generated_tokens, "predicted_ms": round(s.decode_seconds * 1e3, 3),
            "predicted_per_token_ms": round(s.decode_seconds * 1e3 / s.generated_tokens, 3)
            if s.generated_tokens else 0.0,
            "predicted_per_second": round(s.decode_tps, 3),
            "draft_n": s.drafted, "draft_n_accepted": s.accepted}


def specgen_stats(s: Summary, drafter: str) -> dict:
    return {"drafter": drafter, "acceptance_rate": round(s.acceptance_rate, 4),
            "mean_accepted": round(s.mean_accepted, 4), "steps": s.steps, "drafter_steps": dict(s.drafter_steps),
            "draft_lengths": {str(k): v for k, v in sorted(s.draft_lengths.items())},
            "stop_reason": s.stop_reason}


__all__ = ["MAX_BODY", "ServerConfig", "create_app", "specgen_stats", "timings", "usage"]
