"""`specgen chat`: a conversation in the terminal that shows speculation at work."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ..chat.session import Chat
from ..build import describe_backend
from ..chat.screen import Screen, run
from ..settings import check_count, check_given
from . import app
from .messages import SETTING_FLAGS, decoded
from .options import EngineFlags, engine_command, load


@app.command()
@engine_command
def chat(
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per reply.")] = 1024,
    no_color: Annotated[bool, typer.Option("--no-color", help="Don't colour accepted draft text.")] = False,
    *,
    flags: EngineFlags,
) -> None:
    """Chat with the target; the status line shows what speculation does for each reply."""
    check_count("max_tokens", max_tokens)
    check_given("--system", system)
    sampling = flags.sampling()
    system = decoded(system, "--system") if system is not None else None
    if hasattr(sys.stdin, "reconfigure"):  # stray bytes reach the chat as surrogates, not an exception
        sys.stdin.reconfigure(errors="surrogateescape")
    opts = flags.engine_options()
    screen = Screen(color=not no_color)
    done = screen.loading(f"loading {opts.target.name}" + (f" and {opts.draft.name}" if opts.draft else "") + "…")
    try:
        engine = load(opts)
    finally:
        done()
    try:
        names = [opts.target.stem] + ([opts.draft.stem] if engine.draft_model is not None else [])
        pair = (f"{flags.pair}: " if flags.pair else "") + " + ".join(names)
        conv = Chat(engine, system=system, sampling=sampling, max_tokens=max_tokens, pair=pair,
                    backend=describe_backend(engine), setting_names=SETTING_FLAGS)
        screen.banner(conv, conv.backend)
        run(conv, screen)
    finally:
        engine.close()
