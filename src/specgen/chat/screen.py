"""The chat screen: the reply streaming above a live status area, or plain text.

Rich mode (a terminal that is not TERM=dumb) keeps only the unfinished last
line of the reply and the status lines in a `Live` region; finished lines are
printed above it, so a reply longer than the screen scrolls normally and the
status never leaves the bottom.  Plain mode writes the reply as it comes and
one stats line per turn: fit for logs, pipes and screen readers.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .session import (COMMANDS, Chat, ChatEvent, Prompt, Outcome, position_acceptance, run_command,
                      session_rows)
from ..engine import Piece, Prefill, Summary
from ..errors import SpecgenError, printable
from ..fileio import read_line
from ..meter import TurnMeter
from ..settings import shown_draft_max
from ..statsline import stats_parts
from ..textstream import user_text

DRAFT_STYLE = "green"
SPARK = "▁▂▃▄▅▆▇█"
REFRESH = 1 / 20  # seconds between status redraws: smooth, and cheap next to a decode step


def rich_terminal() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"


class Screen:
    def __init__(self, fancy: bool | None = None, color: bool = True):
        self.fancy = rich_terminal() if fancy is None else fancy
        self.color = self.fancy and color and "NO_COLOR" not in os.environ
        self.console = Console(highlight=False, markup=False, emoji=False,
                               no_color=not self.fancy or "NO_COLOR" in os.environ)
        self._readline = False

    # -- output ---------------------------------------------------------------------

    def line(self, text: str | Text = "", style: str | None = None) -> None:
        if isinstance(text, str):  # messages quote paths, names and what was typed: shown, never obeyed
            text = printable(text, lines=True)
        if self.fancy:
            self.console.print(text, style=style, soft_wrap=False)
        else:
            print(str(text), flush=True)

    def notice(self, text: str) -> None:
        self.line(text, "yellow")

    def error(self, text: str) -> None:
        self.line(text, "bold red")

    def loading(self, what: str) -> Callable[[], None]:
        """Show *what* while models load; returns a function that clears it."""
        what = printable(what)
        if not self.fancy:
            print(what, flush=True)
            return lambda: None
        status = self.console.status(what, spinner="dots")
        status.start()
        return status.stop

    def banner(self, chat: Chat, backend: str) -> None:
        eng = chat.engine
        head = Text("specgen chat", style="bold")
        head.append(f"  {printable(chat.pair)}  ·  {backend}  ·  ctx {chat.n_ctx}", style="dim")
        self.line(head)
        self.line(f"drafter {eng.drafter.name} (of {', '.join(sorted(eng.drafters))}), draft length "
                  f"{shown_draft_max(eng.controller.fixed)}", "dim")
        self.line('Type a message (""" for several lines); /help for commands; Ctrl+D quits.', "dim")
        if self.color:
            legend = Text("Green: ", style="dim")
            legend.append("accepted draft tokens", style=DRAFT_STYLE)
            legend.append("; default colour: the target's own. /color toggles.", style="dim")
            self.line(legend)

    def help(self) -> None:
        width = max(len(k) for k in COMMANDS)
        for cmd, what in COMMANDS.items():
            self.line(f"  {cmd:<{width}}  {what}")
        self.line('  """           begins and ends a message of several lines')
        self.line("  Ctrl+C        stops a reply (at the prompt: clears the line)")

    def stats(self, chat: Chat) -> None:
        rows = [(k, printable(v)) for k, v in session_rows(chat)]
        spark = position_line(chat, self.fancy, max(self.console.width - 20, 20))
        if spark:
            rows.append(("by draft position", spark))
        if not self.fancy:
            for k, v in rows:
                print(f"{k}: {v}")
            return
        table = Table(title="session", show_header=False, box=None, padding=(0, 1), title_justify="left")
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for k, v in rows:
            table.add_row(k, v)
        self.console.print(table)

    # -- input ------------------------------------------------------------------------

    def _prompt(self, text: str) -> str:
        if not self.color:
            return text
        # \001..\002 tell readline the escapes take no columns, so editing keeps its place.
        return f"\001\x1b[1;36m\002{text}\001\x1b[0m\002"

    def _input(self, prompt: str) -> str:
        if sys.stdin.isatty():
            return input(self._prompt(prompt))
        # Piped, as input() does it, but each line bounded: /dev/zero has no line end to stop at.
        sys.stdout.write(self._prompt(prompt))
        sys.stdout.flush()
        line = read_line(sys.stdin, "a line of stdin")
        if line is None:
            raise EOFError
        return line

    def read_message(self) -> str | None:
        """One message: a line, or the lines between two \"\"\" marks.  None at end of input."""
        if not self._readline and sys.stdin.isatty():
            try:
                import readline  # noqa: F401  (line editing and arrow-key history for input())
            except ImportError:
                pass
            self._readline = True
        line = self._input(">>> ")
        start = line.lstrip()
        if not start.startswith('"""'):
            return line
        first = start[3:]
        if first.rstrip().endswith('"""'):  # """one line"""
            return first.rstrip()[:-3]
        parts = [first]
        while True:
            more = self._input("... ")
            if more.rstrip().endswith('"""'):
                parts.append(more.rstrip()[:-3])
                return "\n".join(parts).strip("\n")
            parts.append(more)

    # -- a turn ---------------------------------------------------------------------------

    def turn(self, chat: Chat, user: str) -> None:
        """Stream the reply to *user*; Ctrl+C ends it early and returns to the prompt."""
        events = chat.send(user)
        before = len(chat.turns)
        view = LiveReply(self, chat) if self.fancy else PlainReply(self)
        interrupted = False
        try:
            with view:
                for ev in events:
                    view.on(ev)
        except KeyboardInterrupt:
            interrupted = True
        except SpecgenError as e:
            view.finish()
            self.error(f"error: {e.worded(chat.setting_names)}")
            return
        finally:
            events.close()
        view.finish()
        if len(chat.turns) == before:  # stopped before any of the reply appeared
            if interrupted:
                self.notice("[stopped]")
            return
        t = chat.turns[-1]
        if interrupted:
            self.notice("[stopped: the partial reply stays in the conversation]")
        self.line(pack(stats_parts(t.stats()), self.console.width if self.fancy else 10**6, sep=" · "), "dim")
        width = self.console.width if self.fancy else 200
        spark = position_line(chat, self.fancy, width, "accepted by draft position (session): ")
        if spark:
            self.line(spark, "dim")
        reason = t.summary.stop_reason if t.summary and not interrupted else None
        if reason == "context":
            self.notice("[context full: the reply was cut; the oldest turns will be dropped next turn]")
        elif reason == "max_tokens":
            self.notice(f"[reply cut at {chat.max_tokens} tokens (--max-tokens)]")

    def toggle_color(self) -> str:
        if not self.fancy:
            return "colour needs a terminal (this is plain mode)"
        self.color = not self.color
        return "colouring accepted draft text: " + ("on" if self.color else "off")


class PlainReply:
    def __init__(self, screen: Screen):
        self.screen = screen
        self.at_line_start = True

    def __enter__(self) -> "PlainReply":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def on(self, ev: ChatEvent) -> None:
        if isinstance(ev, Prompt) and ev.dropped:
            print(dropped_text(ev), flush=True)
        elif isinstance(ev, Piece) and ev.text:
            sys.stdout.write(ev.text)
            sys.stdout.flush()
            self.at_line_start = ev.text.endswith("\n")

    def finish(self) -> None:
        if not self.at_line_start:
            print(flush=True)
            self.at_line_start = True


class LiveReply:
    def __init__(self, screen: Screen, chat: Chat):
        self.screen, self.chat = screen, chat
        self.console = screen.console
        self.tail = Text()
        self.live = Live(console=self.console, auto_refresh=False, transient=True, redirect_stdout=False,
                         redirect_stderr=False)
        self.last_draw = 0.0
        self.done = False

    def __enter__(self) -> "LiveReply":
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()

    def on(self, ev: ChatEvent) -> None:
        if isinstance(ev, Prompt) and ev.dropped:
            self.console.print(Text(dropped_text(ev), style="yellow"))
        elif isinstance(ev, Piece) and ev.text:
            self.tail.append(ev.text, style=DRAFT_STYLE if ev.from_draft and self.screen.color else None)
            lines = self.tail.wrap(self.console, self.console.width)
            if len(lines) > 1:
                for done in lines[:-1]:
                    self.console.print(done, soft_wrap=True)
                self.tail = lines[-1]
        self._draw(force=isinstance(ev, (Prompt, Prefill, Summary)))

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < REFRESH:
            return
        self.last_draw = now
        self.live.update(Group(self.tail, status_text(self.chat, self.console.width)), refresh=True)

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.live.is_started:
            self.live.stop()
        if self.tail.plain:
            self.console.print(self.tail, soft_wrap=True)
        self.tail = Text()


def dropped_text(ev: Prompt) -> str:
    s = "s" if ev.dropped != 1 else ""
    return f"[context full: left out the oldest {ev.dropped} turn{s}; {ev.kept} kept, and the system prompt]"


def status_text(chat: Chat, width: int) -> Text:
    """The live status: short segments packed into as few lines as *width* allows."""
    m: TurnMeter | None = chat.meter
    eng = chat.engine
    segs: list[str] = []
    if m is None or m.prefill is None:
        segs.append(f"reading the prompt ({m.summary.prompt_tokens if m else '?'} tokens)…")
    else:
        s, last = m.summary, m.last_step
        now = last.drafter_used if last else eng.drafter.name
        segs.append(now if now == eng.drafter.name else f"{eng.drafter.name} → {now}")
        segs.append(f"{m.window_tps:.1f} tok/s (avg {m.avg_tps:.1f})")
        segs.append(f"accept {s.acceptance_rate:.0%} (session {m.session_acceptance:.0%})" if s.drafted
                    else "accept – (nothing drafted yet)")
        segs.append(f"{s.mean_accepted:.2f} tok/step")
        fixed = eng.controller.fixed
        segs.append(f"draft {last.drafted if last else 0} " + ("(length auto)" if fixed is None else f"(max {fixed})"))
        segs.append(f"time draft {s.draft_share:.0%} / verify {1 - s.draft_share:.0%}")
        segs.append(f"prompt {m.prefill.tokens} new + {m.prefill.reused} cached")
    segs.append(f"ctx {m.context_used if m else 0}/{chat.n_ctx}")
    segs.append(printable(chat.pair))
    segs.append(chat.backend)
    return pack([s for s in segs if s], width, style="dim")


def pack(segments: list[str], width: int, sep: str = " │ ", style: str | None = None) -> Text:
    lines: list[str] = []
    cur = ""
    for seg in segments:
        seg = seg if len(seg) <= width else seg[: width - 1] + "…"
        if cur and len(cur) + len(sep) + len(seg) > width:
            lines.append(cur)
            cur = seg
        else:
            cur = f"{cur}{sep}{seg}" if cur else seg
    if cur:
        lines.append(cur)
    return Text("\n".join(lines), style=style or "")


def position_line(chat: Chat, fancy: bool, width: int = 80, label: str = "") -> str:
    """Per-position acceptance over the session: a sparkline, then as many rates as fit."""
    ctl = chat.engine.controller
    pos = position_acceptance(ctl.position_drafted, ctl.position_accepted)[:16]
    if not pos:
        return ""
    line = label
    if fancy:
        line += "".join(SPARK[min(len(SPARK) - 1, int(r * len(SPARK)))] for _, r, _ in pos) + "  "
    for n, (i, r, _) in enumerate(pos):
        more = f"{' ' if n else ''}{i}:{r:.0%}"
        if len(line) + len(more) > width:
            break
        line += more
    return line


def run(chat: Chat, screen: Screen) -> None:
    """The read-reply loop, until /bye, /exit or end of input."""
    while True:
        try:
            text = screen.read_message()
        except KeyboardInterrupt:  # at the prompt: drop the line, as a shell does
            screen.line()
            continue
        except EOFError:
            screen.line()
            return
        try:
            text, bad = user_text(text, "that message")
        except SpecgenError as e:
            screen.error(f"error: {e.worded(chat.setting_names)}")
            continue
        if bad:
            screen.line(f"({bad} bytes that were not UTF-8 became \ufffd)", "dim")
        if not text.strip():
            continue
        if text.lstrip().startswith("/"):
            out = run_command(chat, text)
            if out.quit:
                return
            apply(screen, chat, out)
        else:
            screen.turn(chat, text)


def apply(screen: Screen, chat: Chat, out: Outcome) -> None:
    if out.action == "help":
        screen.help()
    elif out.action == "stats":
        screen.stats(chat)
    elif out.action == "color":
        screen.line(screen.toggle_color(), "dim")
    elif out.error:
        screen.error(out.message)
    elif out.message:
        screen.line(out.message, "dim")


__all__ = ["Screen", "run", "rich_terminal", "status_text", "pack", "position_line"]
