"""A conversation over the engine: history, turns, context budget, commands, transcripts.

Nothing here prints.  `Chat.send` is itself a generator: it yields the
engine's events (after a `Prompt` event) so a screen can show them, and it
records the turn whatever happens to the stream, an interrupt included.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Mapping, Union

from .. import __version__
from ..engine import ContextOverflow, Engine, Event, Piece, Prefill, Summary
from ..errors import SpecgenError
from ..fileio import home_path, not_a_folder, os_problem, write_atomic
from ..llama.chat_template import Message, chat_text, prompt_tokens
from ..meter import TurnMeter
from ..sampling import SamplingParams, allowed
from ..statsline import stats_line
from ..settings import parse_draft_max, shown_draft_max


class ChatError(SpecgenError):
    """A problem with one message or command; the conversation goes on."""


@dataclass
class Prompt:
    """First event of a turn: the prompt is built and about to be read.

    `dropped` oldest turns no longer fitted the context and were left out
    (the system prompt always stays); `kept` earlier turns remain.
    """
    tokens: int
    dropped: int = 0
    kept: int = 0


ChatEvent = Union[Event, Prompt]


@dataclass
class Turn:
    user: str
    reply: str = ""
    summary: Summary | None = None
    prefill: Prefill | None = None
    interrupted: bool = False
    drafter: str = ""
    draft_max: str = "auto"
    temperature: float = 0.0
    context_used: int = 0

    def stats(self) -> dict:
        out = self.summary.stats() if self.summary else {}
        if self.prefill:
            out["prompt_decoded"] = self.prefill.tokens
        out.update(drafter=self.drafter, draft_max=self.draft_max, temperature=self.temperature,
                   context_used=self.context_used, interrupted=self.interrupted)
        return out


class Chat:
    def __init__(self, engine: Engine, system: str | None = None, sampling: SamplingParams | None = None,
                 max_tokens: int = 1024, pair: str = "", backend: str = "",
                 setting_names: Mapping[str, str] | None = None):
        self.engine = engine
        self.setting_names = {**(setting_names or {}), **COMMAND_SETTINGS}
        """What the front end calls the engine settings that errors name (SpecgenError.worded); the
        settings a command changes go by that command's name."""
        self.model = engine.target
        self.system = system or None
        self.sampling = sampling or SamplingParams()
        self.max_tokens = max_tokens
        self.pair, self.backend = pair, backend  # for display
        self.turns: list[Turn] = []
        self.meter: TurnMeter | None = None  # the current (or last) turn's live figures
        self.first_kept = 0  # turns before this one were dropped from the prompt
        self._template = self.model.chat_template()
        # What the KV cache holds as text and as the exact tokens decoded (the
        # generated reply included): a next prompt that extends this text is
        # built by appending, so its prefix matches the cache token for token.
        self._decoded: tuple[str, list[int]] | None = None

    # -- prompt -----------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    def reply_room(self) -> int:
        """Tokens kept free for a reply when deciding which turns still fit."""
        return max(1, min(self.max_tokens, self.n_ctx // 4))

    def messages(self, user: str | None = None, first: int | None = None) -> list[Message]:
        msgs: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        for t in self.turns[self.first_kept if first is None else first:]:
            msgs += [{"role": "user", "content": t.user}, {"role": "assistant", "content": t.reply}]
        if user is not None:
            msgs.append({"role": "user", "content": user})
        return msgs

    def render(self, messages: list[Message]) -> str:
        return chat_text(self.model, messages, self._template)

    def tokens_for(self, text: str) -> list[int]:
        if self._decoded and text.startswith(self._decoded[0]):
            done, tokens = self._decoded
            return tokens + self.model.tokenize(text[len(done):], add_special=False)
        return prompt_tokens(self.model, text)

    def _fit(self, user: str) -> tuple[str, list[int], int]:
        """The prompt for *user*, dropping the oldest turns when a reply would not have room."""
        text = self.render(self.messages(user))
        tokens = self.tokens_for(text)
        if len(tokens) + self.reply_room() <= self.n_ctx:
            return text, tokens, 0
        alone = len(self.tokens_for(self.render(self.messages(user, first=len(self.turns)))))
        if alone >= self.n_ctx:
            raise ChatError(f"that message needs {alone} tokens with the system prompt but the context holds "
                            f"{self.n_ctx}; shorten it or restart with a larger --ctx")
        # Drop down to half the context, not just below the limit: a new prefix
        # means re-reading the whole prompt, so do it once per several turns.
        dropped = 0
        while self.first_kept < len(self.turns) and len(tokens) > self.n_ctx // 2:
            self.first_kept += 1
            dropped += 1
            text = self.render(self.messages(user))
            tokens = self.tokens_for(text)
        return text, tokens, dropped

    # -- a turn -----------------------------------------------------------------

    def session_summary(self) -> Summary:
        return Summary.total(t.summary for t in self.turns if t.summary is not None)

    def send(self, user: str) -> Iterator[ChatEvent]:
        """Generate the reply to *user*; the turn is recorded even if the stream is cut short.

        `self.meter` holds the live figures from the first event on.  A reply
        cut by Ctrl+C stays in the history as far as it got (the model sees
        what the user saw) and is marked interrupted; a turn stopped before
        any text appeared is forgotten.
        """
        if not user.strip():
            raise ChatError("empty message")
        text, tokens, dropped = self._fit(user)
        session = self.session_summary()
        self.meter = meter = TurnMeter(self.n_ctx, len(tokens), session.drafted, session.accepted)
        fixed = self.engine.controller.fixed
        turn = Turn(user, drafter=self.engine.drafter.name, temperature=self.sampling.temperature,
                    draft_max=str(shown_draft_max(fixed)))
        yield Prompt(len(tokens), dropped, len(self.turns) - self.first_kept)
        self.turns.append(turn)
        self._decoded = None  # until this reply is complete, only the engine knows what is cached
        events = self.engine.generate(list(tokens), max_tokens=self.max_tokens, sampling=self.sampling)
        try:
            for ev in events:
                if isinstance(ev, Piece):
                    turn.reply += ev.text
                elif isinstance(ev, Prefill):
                    turn.prefill = ev
                elif isinstance(ev, Summary):
                    turn.summary = ev
                    reply = ev.tokens[:-1] if ev.tokens and self.model.is_eog(ev.tokens[-1]) else ev.tokens
                    self._decoded = (text + turn.reply, tokens + reply)
                meter.on(ev)
                yield ev
        except ContextOverflow as e:  # _fit should prevent it; never let it end the session
            raise ChatError(str(e)) from None
        finally:
            events.close()
            if turn.summary is None:
                turn.interrupted = True
                turn.summary = meter.summary
                if not turn.reply and self.turns and self.turns[-1] is turn:
                    self.turns.pop()
            turn.context_used = turn.summary.prompt_tokens + turn.summary.generated_tokens

    # -- state --------------------------------------------------------------------

    def clear(self) -> None:
        self.turns.clear()
        self.first_kept = 0

    def set_system(self, text: str | None) -> None:
        self.system = text or None

    # -- transcripts --------------------------------------------------------------

    def transcript(self) -> dict:
        return {
            "specgen": __version__,
            "saved": datetime.now().isoformat(timespec="seconds"),
            "target": str(self.model.path),
            "draft": str(self.engine.draft_model.path) if self.engine.draft_model else None,
            "pair": self.pair,
            "system": self.system,
            "turns": [{"user": t.user, "assistant": t.reply, "in_context": i >= self.first_kept,
                       "stats": t.stats()} for i, t in enumerate(self.turns)],
            "session": self.session_summary().stats(),
        }

    def save(self, path: str) -> Path:
        """Write the transcript as JSON (.json) or Markdown (.md, .markdown)."""
        if not path:
            raise ChatError("usage: /save PATH.md or /save PATH.json")
        p = home_path(path)
        kind = p.suffix.lower()
        if kind not in (".json", ".md", ".markdown"):
            raise ChatError(f"/save writes .md or .json, not {kind or 'a file without an extension'!r}")
        data = self.transcript()
        body = json.dumps(data, indent=2, ensure_ascii=False) + "\n" if kind == ".json" else markdown(data)
        problem = not_a_folder(p.parent)  # a mistyped folder is reported, not created
        if problem:
            raise ChatError(f"cannot write {p}: {problem}")
        try:
            write_atomic(p, body)
        except OSError as e:
            raise ChatError(f"cannot write {p}: {os_problem(e)}") from None
        return p


def markdown(data: dict) -> str:
    lines = ["# specgen chat", "", f"- saved: {data['saved']}", f"- target: `{data['target']}`"]
    if data["draft"]:
        lines.append(f"- draft: `{data['draft']}`")
    if data["system"]:
        lines += ["", "## System", "", data["system"]]
    for i, t in enumerate(data["turns"], 1):
        note = "" if t["in_context"] else " (dropped from the context)"
        lines += ["", f"## Turn {i}{note}", "", "### You", "", t["user"], "", "### Assistant", "", t["assistant"],
                  "", f"> {stats_line(t['stats'])}"]
    s = data["session"]
    lines += ["", "## Session", "", f"> {stats_line(s)}", ""]
    return "\n".join(lines)


def position_acceptance(drafted: list[int], accepted: list[int]) -> list[tuple[int, float, int]]:
    """(position from 1, acceptance rate, drafts that reached it) for positions ever drafted."""
    return [(i + 1, accepted[i] / n, n) for i, n in enumerate(drafted) if n]


# -- commands -----------------------------------------------------------------------

COMMANDS = {
    "/help": "this list",
    "/stats": "session summary",
    "/draft N|auto": "draft length: a fixed N, or auto (sized from measured costs)",
    "/drafter NAME": "switch drafter",
    "/temp T": "sampling temperature (0 = greedy)",
    "/system TEXT": "set the system prompt; alone: show it; '/system -': remove it",
    "/clear": "forget the conversation (the system prompt stays)",
    "/save PATH": "transcript with per-turn stats, as .md or .json",
    "/color": "toggle colouring of accepted draft text",
    "/bye, /exit": "quit (so does Ctrl+D)",
}

COMMAND_SETTINGS = {"draft_max": "/draft", "temperature": "/temp"}
"""The settings a command changes, by the command's name (an error about one names the command)."""


@dataclass
class Outcome:
    message: str = ""
    error: bool = False
    quit: bool = False
    action: str | None = None
    """Something only the screen can do: help, stats, color."""


def run_command(chat: Chat, line: str) -> Outcome:
    """Carry out one slash command; bad input comes back as a one-line hint, never raised."""
    name, _, arg = line.strip().partition(" ")
    name, arg = name.lower(), arg.strip()
    try:
        return _command(chat, name, arg)
    except SpecgenError as e:
        return Outcome(e.worded(chat.setting_names), error=True)


def _command(chat: Chat, name: str, arg: str) -> Outcome:
    eng = chat.engine
    if name in ("/bye", "/exit", "/quit"):
        return Outcome(quit=True)
    if name in ("/help", "/?"):
        return Outcome(action="help")
    if name == "/stats":
        return Outcome(action="stats")
    if name == "/color":
        return Outcome(action="color")
    if name == "/clear":
        chat.clear()
        return Outcome("conversation cleared" + (" (system prompt kept)" if chat.system else ""))
    if name == "/draft":
        eng.set_draft_max(parse_draft_max(arg))
        return Outcome(f"draft length: {shown_draft_max(eng.controller.fixed)}")
    if name == "/drafter":
        if not arg:
            raise ChatError(f"usage: /drafter NAME, one of {', '.join(sorted(eng.drafters))} "
                            f"(now {eng.drafter.name})")
        eng.set_drafter(arg)
        return Outcome(f"drafter: {eng.drafter.name}")
    if name == "/temp":
        try:
            t = float(arg)
        except ValueError:
            raise ChatError(f"usage: /temp T, {allowed('temperature')} (now {chat.sampling.temperature:g})") from None
        chat.sampling = dataclasses.replace(chat.sampling, temperature=t).check()
        return Outcome(f"temperature: {t:g}" + (" (greedy)" if t == 0 else ""))
    if name == "/system":
        if not arg:
            return Outcome(f"system prompt: {chat.system}" if chat.system else "no system prompt")
        chat.set_system(None if arg == "-" else arg)
        return Outcome("system prompt removed" if arg == "-" else "system prompt set")
    if name == "/save":
        return Outcome(f"saved {chat.save(arg)}")
    raise ChatError(f"unknown command {name}; /help lists the commands")


def session_rows(chat: Chat) -> list[tuple[str, str]]:
    """The /stats table: (what, value) rows over the whole session."""
    s = chat.session_summary()
    eng = chat.engine
    kept = len(chat.turns) - chat.first_kept
    rows = [("turns", f"{len(chat.turns)}" + (f" ({kept} in context)" if kept != len(chat.turns) else "")),
            ("prompt tokens", f"{s.prompt_tokens - s.reused_tokens} decoded, {s.reused_tokens} reused from cache"),
            ("prompt time", f"{s.prompt_seconds:.2f} s"),
            ("generated", f"{s.generated_tokens} tokens in {s.decode_seconds:.2f} s ({s.decode_tps:.1f} tok/s)"),
            ("verify steps", f"{s.steps} ({s.mean_accepted:.2f} tokens/step)")]
    if s.drafted:
        rows.append(("draft acceptance", f"{s.accepted}/{s.drafted} ({s.acceptance_rate:.0%})"))
    if s.drafter_steps:
        rows.append(("steps by drafter", ", ".join(f"{k} {v}" for k, v in sorted(s.drafter_steps.items()))))
    if s.draft_lengths:
        rows.append(("draft lengths", ", ".join(f"{k}×{v}" for k, v in sorted(s.draft_lengths.items()))))
    if s.draft_seconds + s.verify_seconds > 0:
        rows.append(("time share", f"draft {s.draft_share:.0%}, verify {1 - s.draft_share:.0%}"))
    used = chat.turns[-1].context_used if chat.turns else 0
    rows += [("context", f"{used}/{chat.n_ctx} tokens used by the last turn"),
             ("drafter", eng.drafter.name + f" (available: {', '.join(sorted(eng.drafters))})"),
             ("draft length", str(shown_draft_max(eng.controller.fixed))),
             ("temperature", f"{chat.sampling.temperature:g}"),
             ("target", str(chat.model.path))]
    if eng.draft_model is not None:
        rows.append(("draft", str(eng.draft_model.path)))
    return rows


__all__ = ["Chat", "ChatError", "ChatEvent", "Prompt", "Turn", "COMMANDS", "Outcome",
           "run_command", "session_rows", "markdown", "position_acceptance"]
