"""`specgen serve`: the engine behind an OpenAI-compatible HTTP API, for editors and agents."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..build import DEFAULT_PARALLEL, describe_backend, serve_layout
from ..errors import SpecgenError
from ..settings import check_given, check_parallel
from ..slots import DEFAULT_CACHE_MIB
from . import app
from .options import EngineFlags, engine_command, load


@app.command()
@engine_command
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; loopback by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8080,
    api_key: Annotated[Optional[str], typer.Option(
        help="Require 'Authorization: Bearer KEY' (default: $SPECGEN_API_KEY).", show_default=False)] = None,
    queue: Annotated[int, typer.Option(help="Requests that may wait while the slots are busy; more get 503.")] = 16,
    parallel: Annotated[Optional[int], typer.Option(
        help=f"Slots: requests decoded together in one batch, each with its own cache of --ctx tokens "
             f"(default: as many as fit in memory, at most {DEFAULT_PARALLEL}; 1 with --exact).",
        show_default=False)] = None,
    cache_ram: Annotated[int, typer.Option(
        help="MiB of host memory for prompt prefixes pushed out of the slots, put back when their "
             "conversation returns (0: none).")] = DEFAULT_CACHE_MIB,
    *,
    flags: EngineFlags,
) -> None:
    """Serve the pair over OpenAI's API (/v1/chat/completions, /v1/completions) with speculation inside."""
    try:
        from ..server.app import ServerConfig, check_api_key
        from ..server.listen import bind, exposure_warning, serve as serve_forever
        from ..server.view import LiveView, View
    except ImportError as e:
        raise SpecgenError(f"specgen serve needs {e.name}: pip install 'starlette>=0.37' 'uvicorn>=0.30'") from None
    if not 0 <= port <= 65535:
        raise SpecgenError(f"--port must be between 0 and 65535, not {port}")
    if queue < 0:
        raise SpecgenError(f"--queue must be 0 or more, not {queue}")
    if cache_ram < 0:
        raise SpecgenError(f"--cache-ram must be 0 or more (MiB), not {cache_ram}")
    if parallel is not None:
        check_parallel(parallel, flags.exact)
    # An empty --host would listen on every interface, an empty --api-key would let anyone in.
    check_given("--host", host)
    check_given("--api-key", api_key)
    key = api_key if api_key is not None else os.environ.get("SPECGEN_API_KEY") or None
    if key is not None:
        check_api_key(key, "--api-key" if api_key is not None else "SPECGEN_API_KEY")
    sampling = flags.sampling()
    opts = flags.engine_options()
    sized, opts.parallel = serve_layout(opts, flags.ctx, parallel)
    if sized is not None:
        opts.n_ctx = sized.n_ctx
    bind(host, port).close()  # a port in use should fail before the models load, not after
    warning = exposure_warning(host, key)
    view = LiveView() if LiveView.wanted() else View()
    if warning:
        view.line(warning)
    engine = load(opts)
    try:
        config = ServerConfig(model_id=flags.pair or Path(opts.target).stem, target=Path(opts.target),
                              draft=Path(opts.draft) if engine.draft_model is not None else None,
                              api_key=key, queue=queue, sampling=sampling, parallel=opts.parallel,
                              cache_bytes=cache_ram << 20)
        names = " + ".join([Path(opts.target).stem] + ([Path(opts.draft).stem] if config.draft else []))
        ctx = f"ctx {engine.n_ctx}" + (f" ({sized.why})" if sized is not None else "")
        ctx += f", {opts.parallel} slot{'s' if opts.parallel != 1 else ''}"
        exact = f", exact ({engine.ctx.exact_rows} rows a call)" if engine.exact else ""
        about = f"{names}, drafter {engine.drafter.name}, {ctx}{exact}, {describe_backend(engine)}"
        serve_forever(engine, config, host, port, view, about)
    finally:
        engine.close()
