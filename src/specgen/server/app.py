"""The ASGI app: OpenAI's routes over one engine worker.

Request bodies are checked in schema.py, generations run in worker.py's
thread, and every answer — errors included — has OpenAI's shape.  Each
response carries `usage`, llama-server's `timings` and a `specgen` block.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Protocol

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..engine import Engine, Summary
from ..errors import SpecgenError, shorten, unsendable
from ..fileio import parse_json
from ..formats.infill import NoInfill, fim_tokens
from ..formats.tools import ToolFormat, ToolsError, tool_format
from ..llama.rpc import on_abort
from ..sampling import SamplingParams
from .metrics import CONTENT_TYPE, Metrics
from .anthropic import PATH as ANTHROPIC
from .anthropic import AnthropicReply, parse_anthropic, parse_count_tokens
from .anthropic import error_body as anthropic_error
from .openai_api import OpenAIReply
from .responses import ResponsesReply, parse_responses
from .reply import Assembler, End, ReplyEvent
from .infill import InfillReply
from .schema import APIError, GenRequest, parse_chat, parse_completion, parse_infill
from .view import RequestRecord, View
from .worker import Done, Failed, Job, QueueFull, Worker, retry_after
from ..slots import Slot

MAX_BODY = 8 << 20
"""Bytes; far above any prompt a context can hold, far below what would hurt the server."""



class Dialect(Protocol):
    """How one API words a reply: built per request, it formats the reply events (see reply.py)."""

    def start(self) -> list[bytes]: ...
    def event(self, ev: ReplyEvent) -> list[bytes]: ...
    def failed(self, e: APIError) -> bytes: ...
    def whole(self, reply: Assembler, end: End) -> dict: ...
    @staticmethod
    def error_body(e: APIError) -> dict: ...


Parse = Callable[[Any, SamplingParams], GenRequest]
MakeDialect = Callable[[GenRequest, str, Job], Dialect]


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
    parallel: int = 1
    """Slots: requests decoded together (the engine's context must hold as many sequences)."""
    cache_bytes: int = 0
    """Host memory for prefixes pushed out of the slots (0: none kept)."""

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
        Route("/slots", server.slots, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/models", server.models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.model, methods=["GET"]),
        Route("/models/{model:path}", server.model, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/completions", server.completions, methods=["POST"]),
        Route("/v1/responses", server.responses, methods=["POST"]),
        Route("/responses", server.responses, methods=["POST"]),
        Route("/infill", server.infill, methods=["POST"]),
        Route(ANTHROPIC, server.messages, methods=["POST"]),
        Route(f"{ANTHROPIC}/count_tokens", server.count_tokens, methods=["POST"]),
    ]
    handlers = {HTTPException: server.http_error, APIError: server.api_error, Exception: server.internal_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.server = server
    return app


def error_response(e: APIError, request: Request | None = None) -> JSONResponse:
    """*e* in the shape of the API *request* was made to."""
    anthropic = request is not None and request.url.path.startswith(ANTHROPIC)
    return JSONResponse(anthropic_error(e) if anthropic else e.body(), status_code=e.status, headers=e.headers)


class _Server:
    def __init__(self, engine: Engine, config: ServerConfig, view: View):
        self.engine, self.config, self.view = engine, config, view
        self.metrics = Metrics()
        self.worker = Worker(engine, config.queue, on_done=lambda job, s, c: self.metrics.generation(s, c),
                             parallel=config.parallel, cache_bytes=config.cache_bytes)
        self.created = int(time.time())
        self.tools: ToolFormat | None = tool_format(engine.target.chat_template())
        view.attach(self.worker, self.metrics, engine)

    # -- plain routes -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "busy": self.worker.current is not None,
                             "waiting": self.worker.waiting})

    async def metrics_text(self, request: Request) -> Response:
        self._check_key(request)
        w = self.worker
        text = self.metrics.render(w.waiting, len(w.running), w.parallel, w.slots.cache)
        self.metrics.request(_route(request), 200)
        return Response(text, media_type=CONTENT_TYPE)

    async def slots(self, request: Request) -> Response:
        """Each slot's state, in llama-server's shape (`id`, `is_processing`, `n_ctx`, `next_token`) for the
        tools that monitor it, with specgen's figures beside."""
        self._check_key(request)
        self.metrics.request(_route(request), 200)
        return JSONResponse([slot_state(slot, self.worker.running.get(slot.id), self.engine.n_ctx)
                             for slot in self.worker.slots.slots])

    async def models(self, request: Request) -> Response:
        self._check_key(request)
        return JSONResponse({"object": "list", "data": [self._model()]})

    async def model(self, request: Request) -> Response:
        """The served model by its id (the SDKs' `models.retrieve`); any other id is OpenAI's 404."""
        self._check_key(request)
        name = request.path_params["model"]
        if name != self.config.model_id:
            raise APIError(404, f"The model '{shorten(name)}' does not exist or you do not have access to it; "
                                f"this server serves '{self.config.model_id}'", code="model_not_found")
        return JSONResponse(self._model())

    def _model(self) -> dict:
        c, eng = self.config, self.engine
        meta = {"target": str(c.target), "draft": str(c.draft) if c.draft else None,
                "drafter": self.worker.default_drafter, "drafters": sorted(eng.drafters), "n_ctx": eng.n_ctx,
                "exact": eng.exact, "parallel": self.worker.parallel}
        return {"id": c.model_id, "object": "model", "created": self.created, "owned_by": "specgen", "meta": meta}

    # -- errors ---------------------------------------------------------------------------------

    async def api_error(self, request: Request, e: Exception) -> Response:
        assert isinstance(e, APIError)
        self.metrics.request(_route(request), e.status)
        self.view.request(RequestRecord(request.method, request.url.path, e.status, 0.0, None, error=e.message))
        return error_response(e, request)

    async def http_error(self, request: Request, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        if e.status_code == 404:
            err = APIError(404, f"no such route: {request.method} {request.url.path}; this server offers "
                                "/v1/chat/completions, /v1/completions, /v1/responses, /v1/messages, "
                                "/infill, /v1/models, /slots, /health and /metrics",
                           code="unknown_url")
        elif e.status_code == 405:
            err = APIError(405, f"{request.method} is not allowed on {request.url.path}",
                           code="method_not_allowed")
        else:
            err = APIError(e.status_code, str(e.detail))
        return await self.api_error(request, err)

    async def internal_error(self, request: Request, e: Exception) -> Response:
        # Starlette logs the traceback on the server's stderr; the client gets one line.
        return error_response(APIError(500, f"internal error: {type(e).__name__}"), request)

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
        if scheme.lower() != "bearer":  # Anthropic's clients send the key alone, in a header of their own
            given = request.headers.get("x-api-key", "")
            auth = auth or given
        if not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY' (or 'x-api-key: KEY')"
                           if not auth else "incorrect API key", code="invalid_api_key")

    # -- generation routes ----------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, parse_chat, OpenAIReply)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, parse_completion, OpenAIReply)

    async def infill(self, request: Request) -> Response:
        return await self._generate(request, parse_infill, InfillReply)

    async def responses(self, request: Request) -> Response:
        return await self._generate(request, parse_responses, ResponsesReply)

    async def messages(self, request: Request) -> Response:
        return await self._generate(request, parse_anthropic, AnthropicReply)

    async def count_tokens(self, request: Request) -> Response:
        self._check_key(request)
        req = self._with_tools(parse_count_tokens(await self._read_json(request), self.config.sampling))
        # The worker's own rendering, so the count is what the request would take; off the event loop, as a long
        # conversation takes tens of milliseconds that the streams being sent would wait for.
        try:
            n = len(await asyncio.to_thread(self.worker.tokens_for, req))
        except SpecgenError as e:  # a chat template that refuses the conversation
            raise APIError(400, str(e)) from None
        self.metrics.request(_route(request), 200)
        return JSONResponse({"input_tokens": n})

    async def _generate(self, request: Request, parse: Parse, dialect: MakeDialect) -> Response:
        t0 = time.perf_counter()
        self._check_key(request)
        req = self._with_tools(parse(await self._read_json(request), self.config.sampling))
        if req.infill is not None:
            try:
                fim_tokens(self.engine.target)
            except NoInfill as e:
                raise APIError(400, str(e), code="infill_unsupported") from None
        try:
            self.engine.ctx.check_exact(bool(req.exact))
        except SpecgenError as e:
            raise APIError(400, str(e), param="exact") from None
        if req.drafter is not None and req.drafter not in self.engine.drafters:
            raise APIError(400, f"drafter {req.drafter!r} is not available; choose one of "
                                f"{', '.join(sorted(self.engine.drafters))}", param="drafter")
        try:
            job = self.worker.submit(req, asyncio.get_running_loop())
        except QueueFull as e:
            m = self.metrics
            retry = retry_after(self.worker.current, self.engine.n_ctx, m.total, m.finished)
            raise APIError(503, f"the server is busy ({e}); retry in {retry} s", code="queue_full",
                           headers={"Retry-After": str(retry)}) from None
        out = dialect(req, self.config.model_id, job)
        response = await self._answer(request, req, job, out, t0)
        response.background = BackgroundTask(job.answered.set)  # runs once the client has it all
        return response

    def _with_tools(self, req: GenRequest) -> GenRequest:
        """*req* checked against the model's tool support, with the grammar its tool_choice forces."""
        has_turns = any(m.get("tool_calls") or m["role"] == "tool" for m in req.messages)
        if (req.tools or has_turns) and self.tools is None:
            raise APIError(400, f"{self.config.model_id}'s chat template has no tool support, so this server "
                                "cannot offer it tools; serve a model whose template takes tools",
                           param="tools" if req.tools else "messages", code="tools_unsupported")
        choice = req.tool_choice
        if not req.uses_tools or choice == "auto":
            return req
        assert self.tools is not None
        only = choice["name"] if isinstance(choice, dict) else None
        try:
            grammar = self.tools.grammar(list(req.tools), only, req.parallel_tool_calls)
        except ToolsError as e:  # a tool's parameters the schema converter cannot take
            raise APIError(400, f"{e.where}: {e}" if e.where else str(e), param=e.where or "tools") from None
        return dataclasses.replace(req, grammar=grammar)

    async def _answer(self, request: Request, req: GenRequest, job: Job, out: Dialect, t0: float) -> Response:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            first = await job.events.get()
        finally:
            watcher.cancel()
        if isinstance(first, Failed):
            self._finish(request, first.error.status, t0, job, None, error=first.error.message)
            return self._error(out, first.error)
        if isinstance(first, Done):  # the client left while it waited
            self._finish(request, 499, t0, job, None, cancelled=True)
            return Response(status_code=499)
        reply = Assembler(self.tools if req.uses_tools else None)
        if req.stream:
            return StreamingResponse(self._stream(request, job, out, reply, t0), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        end: End | None = None
        try:
            while True:
                ev = await job.events.get()
                if isinstance(ev, Failed):
                    self._finish(request, ev.error.status, t0, job, None, error=ev.error.message)
                    return self._error(out, ev.error)
                if isinstance(ev, Done):
                    break
                end = next((e for e in reply.feed(ev) if isinstance(e, End)), end)
        finally:
            watcher.cancel()
        if ev.summary is None or end is None:
            self._finish(request, 499, t0, job, None, cancelled=True)
            return Response(status_code=499)
        self._finish(request, 200, t0, job, ev.summary)
        return JSONResponse(out.whole(reply, end))

    @staticmethod
    def _error(out: Dialect, e: APIError) -> JSONResponse:
        return JSONResponse(out.error_body(e), status_code=e.status, headers=e.headers)

    async def _stream(self, request: Request, job: Job, out: Dialect, reply: Assembler,
                      t0: float) -> AsyncIterator[bytes]:
        status, summary, error, cancelled = 200, None, None, True
        try:
            for data in out.start():
                yield data
            while True:
                ev = await job.events.get()
                if isinstance(ev, Failed):
                    status, error = ev.error.status, ev.error.message
                    yield out.failed(ev.error)
                    cancelled = False
                    break
                if isinstance(ev, Done):
                    summary, cancelled = ev.summary, ev.cancelled
                    break
                for part in reply.feed(ev):
                    for data in out.event(part):
                        yield data
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
        self.metrics.request(_route(request), status, seconds)
        self.view.request(RequestRecord(request.method, request.url.path, status, seconds, summary,
                                        job.drafter if job else "", job.prompt_tokens if job else 0,
                                        error=error, cancelled=cancelled))


ROUTES = ("/health", "/metrics", "/slots", "/v1/models", "/models", "/v1/models/{model:path}", "/models/{model:path}",
          "/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/v1/responses",
          "/responses", ANTHROPIC, f"{ANTHROPIC}/count_tokens")


def _route(request: Request) -> str:
    """The metrics label: the matched route's path (a model id stays out of it), or "other" so that scanners
    cannot grow the label set."""
    path = getattr(request.scope.get("route"), "path", request.url.path)
    return path if path in ROUTES else "other"


def slot_state(slot: Slot, job: Job | None, n_ctx: int) -> dict:
    """One slot as /slots shows it."""
    m = job.meter if job is not None else None
    s = m.summary if m is not None else None
    out = {"id": slot.id, "is_processing": slot.gen is not None, "state": slot.state, "n_ctx": n_ctx,
           "cached_tokens": len(slot.cached), "task_id": job.id if job else None,
           "drafter": job.drafter if job else None,
           "next_token": [{"n_decoded": s.generated_tokens if s else 0, "has_next_token": slot.gen is not None}]}
    if job is not None and s is not None:
        out.update(prompt_tokens=s.prompt_tokens, reused_tokens=s.reused_tokens, restored_tokens=slot.restored,
                   generated_tokens=s.generated_tokens, tokens_per_second=round(m.window_tps, 2),
                   acceptance_rate=round(s.acceptance_rate, 4))
    return out


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Cancel *job* when the client hangs up (the body has been read, so only a disconnect can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


__all__ = ["MAX_BODY", "ServerConfig", "create_app"]
