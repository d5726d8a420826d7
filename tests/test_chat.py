"""`specgen chat`: the real executable in a pseudo-terminal, and the conversation logic in-process.

The screen tests feed everything the child writes into a terminal emulator
(pyte) of the child's size, so assertions are about what a user would see;
when a test fails, the screen and the tail of the raw output are printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pyte
import pytest

from specgen.chat.session import Chat, ChatError, Prompt, run_command
from specgen.engine import Piece, Prefill, Step, Summary
from specgen.tokens import common_prefix
from specgen.build import EngineOptions, load_engine
from specgen.chat.screen import status_text

EXE = str(Path(sys.executable).parent / "specgen")
PROMPT = r">>> "
ANSI = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|[=>])")
# One thread: the test machine is small and shared, and llama.cpp's spinning
# threads are very slow when they outnumber the free cores.
COMMON = ("--threads", "1")


class Term:
    """A `specgen chat` child in a pty, mirrored into an emulated screen."""

    def __init__(self, args: list[str], rows: int = 24, cols: int = 80, term: str = "xterm-256color"):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": term}
        env.pop("NO_COLOR", None)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self.child = pexpect.spawn(EXE, ["chat", *COMMON, *args], env=env, dimensions=(rows, cols), timeout=90)

    def _take(self) -> None:
        data = self.child.before or b""
        if isinstance(self.child.after, bytes):
            data += self.child.after
        self.raw.extend(data)
        self.stream.feed(data)

    def expect(self, pattern: str, timeout: float = 90) -> None:
        try:
            self.child.expect(pattern, timeout=timeout)
        finally:
            self._take()

    def mark(self) -> int:
        return len(self.raw)

    def since(self, mark: int) -> str:
        """Everything written since *mark*, escapes removed."""
        return ANSI.sub(b"", bytes(self.raw[mark:])).decode("utf-8", "replace").replace("\r", "")

    def say(self, line: str, timeout: float = 90) -> str:
        """Send a line and wait for the next prompt; return what was written meanwhile."""
        mark = self.mark()
        self.child.sendline(line)
        self.expect(PROMPT, timeout)
        return self.since(mark)

    def display(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def quit(self, how: str = "/bye") -> int:
        if how == "eof":
            self.child.sendeof()
        else:
            self.child.sendline(how)
        self.expect(pexpect.EOF, 60)
        self.child.close()
        return self.child.exitstatus

    def dump(self) -> str:
        tail = ANSI.sub(b"", bytes(self.raw[-3000:])).decode("utf-8", "replace")
        return f"--- screen ---\n{self.display()}\n--- raw tail (escapes removed) ---\n{tail}"


@pytest.fixture
def term(target_path, draft_path):
    """Start chats; their screens are printed at teardown, which pytest shows only for a failed test."""
    started: list[Term] = []

    def start(*args: str, rows: int = 24, cols: int = 80, term: str = "xterm-256color",
              models: bool = True) -> Term:
        paths = ["--target", str(target_path), "--draft", str(draft_path)] if models else []
        t = Term([*paths, *args], rows, cols, term)
        started.append(t)
        t.expect(PROMPT, 120)
        return t

    yield start
    for t in started:
        print(t.dump())
        if t.child.isalive():
            t.child.terminate(force=True)


def saved_json(t: Term, path: Path) -> dict:
    out = t.say(f"/save {path}")
    assert "saved" in out, out
    return json.loads(path.read_text())


# -- the screen ----------------------------------------------------------------------

def test_a_turn_streams_with_a_live_status_and_colours_draft_text(term):
    t = term("--drafter", "model", "--draft-max", "3", "--max-tokens", "32")
    t.screen.reset()  # forget the banner (its colour legend is green too)
    mark = t.mark()
    t.child.sendline("Name three fruits.")
    t.expect(r"tok/s \(avg")  # the live status is on screen while the reply streams
    t.expect(r"ctx \d+/4096")
    live = t.display()
    t.expect(PROMPT)
    out = t.since(mark)
    assert "ctx " in live and "/4096" in live, live
    # The status is redrawn as tokens arrive: the context count climbs.
    used = [int(n) for n in re.findall(r"ctx (\d+)/4096", out)]
    assert len(set(used)) >= 3 and max(used) > min(used), used
    assert "tok/step" in out and "accept" in out
    # After the turn: the reply, the turn's figures and the per-position sparkline stay.
    screen = t.display()
    assert "tokens/step" in screen and "prompt " in screen
    assert re.search(r"accepted by draft position \(session\): [▁▂▃▄▅▆▇█]+  1:\d+%", screen), screen
    reply_cells = [c for row in t.screen.buffer.values() for c in row.values() if c.data.strip()]
    assert any(c.fg == "green" for c in reply_cells), "no accepted draft text in green"
    assert any(c.fg == "default" for c in reply_cells)

    # /color: the next reply has no green at all.
    assert "off" in t.say("/color")
    t.screen.reset()
    t.say("Name three colours.")
    cells = [c for row in t.screen.buffer.values() for c in row.values() if c.data.strip()]
    assert cells and not any(c.fg == "green" for c in cells), t.display()
    # This turn's own line: draft tokens were accepted, so uncoloured text proves /color took effect.
    m = re.search(r"accepted (\d+)/(\d+) \(\d+%\)", t.display())
    assert m and int(m.group(1)) > 0, t.display()
    assert t.quit() == 0


def test_status_fits_the_terminal_width(term):
    for cols in (80, 200):
        t = term("--drafter", "model", "--draft-max", "2", "--max-tokens", "12", cols=cols)
        t.child.sendline("Say hello.")
        t.expect(r"tok/s \(avg")
        t.expect(PROMPT)
        # Split at every escape and carriage return too: a redraw moves the cursor without a newline.
        out = ANSI.sub(b"\n", bytes(t.raw)).decode("utf-8", "replace").replace("\r", "\n")
        frames = [line for line in out.splitlines() if " │ " in line]
        assert frames and max(len(f) for f in frames) <= cols, frames
        if cols == 200:  # wide: the figures share one line
            assert any("tok/s (avg" in f and "tok/step" in f and "draft " in f for f in frames), frames
        assert t.quit() == 0


def test_second_turn_reuses_the_cache_and_save_writes_both_formats(term, tmp_path):
    t = term("--drafter", "model", "--draft-max", "3", "--max-tokens", "24", "--system", "You are brief.")
    long_question = ("Here is a list of animals: cat, dog, horse, cow, sheep, goat, pig, duck, goose, "
                     "chicken, rabbit, mouse, rat, deer, fox, wolf, bear, lion, tiger, zebra. "
                     "Which of them can fly?")
    first = t.say(long_question)
    second = t.say("Thanks!")
    assert re.search(r"prompt \d+ new \+ 0 reused", first), first
    m = re.search(r"prompt (\d+) new \+ (\d+) reused", second)
    assert m, second

    data = saved_json(t, tmp_path / "chat.json")
    one, two = (turn["stats"] for turn in data["turns"])
    history = one["prompt_tokens"] + one["generated_tokens"]
    # Turn 2 decodes only its own tokens: everything up to the end of reply 1 comes from the cache, all
    # but reply 1's last token, which was emitted but never decoded: a count of turn 1's tokens that
    # does not come from its own summary.
    assert two["reused_tokens"] == history - 1, (one, two)
    assert two["prompt_decoded"] == two["prompt_tokens"] - two["reused_tokens"] < history
    assert (int(m.group(1)), int(m.group(2))) == (two["prompt_decoded"], two["reused_tokens"])

    assert data["system"] == "You are brief."
    assert [x["user"] for x in data["turns"]] == [long_question, "Thanks!"]
    assert all(x["assistant"].strip() for x in data["turns"])
    assert all(x["in_context"] and not x["stats"]["interrupted"] for x in data["turns"])
    for st in (one, two):
        assert st["steps"] <= st["generated_tokens"] <= (3 + 1) * st["steps"]  # draft max 3, plus the target's
        assert st["drafter"] == "model" and st["draft_max"] == "3"
    assert data["session"]["generated_tokens"] == one["generated_tokens"] + two["generated_tokens"]
    # What was shown is what was saved.
    words = data["turns"][0]["assistant"].split()
    assert " ".join(words[:3]) in " ".join(first.split())

    md_path = tmp_path / "chat.md"
    assert "saved" in t.say(f"/save {md_path}")
    md = md_path.read_text()
    turns = re.split(r"^## Turn \d+.*$", md.split("\n## Session")[0], flags=re.M)[1:]
    assert len(turns) == 2, md
    for section, saved in zip(turns, data["turns"]):
        you = re.search(r"### You\n\n(.*?)\n\n### Assistant\n\n(.*)\n\n> ([^\n]*)\n*$", section, re.S)
        assert you, section
        assert you.group(1) == saved["user"]
        assert you.group(2).strip() == saved["assistant"].strip()
        assert f"{saved['stats']['generated_tokens']} tokens" in you.group(3) and "tok/s" in you.group(3)
    assert "## System\n\nYou are brief." in md
    assert t.quit("/exit") == 0


def test_draft_drafter_temp_and_bad_commands(term, tmp_path):
    t = term("--drafter", "model", "--max-tokens", "16")
    assert "draft length: 2" in t.say("/draft 2")
    out = t.say("Count from one to ten.")
    assert "max 2" in out  # the live status shows the fixed length
    assert "draft length: auto" in t.say("/draft auto")
    t.child.send("/draft 1\r")
    t.expect(PROMPT)
    mark = t.mark()
    t.child.send("\x1b[A\r")  # arrow up: readline history brings back "/draft 1"
    t.expect(PROMPT)
    assert "draft length: 1" in t.since(mark)
    assert "draft length: auto" in t.say("/draft auto")
    assert "drafter: ngram" in t.say("/drafter ngram")
    t.say("Count from one to ten.")
    assert "temperature: 0.7" in t.say("/temp 0.7")
    t.say("Say hi.")

    for bad, hint in (("/draft lots", "/draft must be"), ("/draft -1", "/draft must be"),
                      ("/drafter magic", "choose one of"), ("/temp hot", "usage: /temp"), ("/temp -1", "/temp must be"),
                      ("/save notes.txt", ".md or .json"), ("/save", "usage: /save"),
                      (f"/save {tmp_path}/no/such/dir/x.json", "cannot write"), ("/frobnicate", "/help")):
        out = t.say(bad)
        assert hint in " ".join(out.split()) and "Traceback" not in out, (bad, out)
    help_text = t.say("/help")
    for cmd in ("/stats", "/draft", "/drafter", "/temp", "/system", "/clear", "/save", "/color", "/bye"):
        assert cmd in help_text
    stats = t.say("/stats")
    assert "draft acceptance" in stats and "steps by drafter" in stats

    data = saved_json(t, tmp_path / "s.json")
    a, b, c = (x["stats"] for x in data["turns"])
    assert a["drafter"] == "model" and a["draft_max"] == "2"
    assert set(a["draft_lengths"]) <= {"0", "1", "2"} and a["drafted"] > 0, a
    assert b["drafter"] == "ngram" and set(b["drafter_steps"]) <= {"ngram", "none"}, b
    assert c["temperature"] == 0.7 and a["temperature"] == 0.0
    assert t.quit() == 0


def test_multiline_system_and_clear(term, tmp_path):
    t = term("--drafter", "ngram", "--max-tokens", "12")
    mark = t.mark()
    t.child.sendline('"""')
    t.expect(r"\.\.\. ")
    t.child.sendline("Repeat these two lines:")
    t.expect(r"\.\.\. ")
    t.child.sendline('red apple"""')
    t.expect(PROMPT)
    assert "tokens/step" in t.since(mark)
    t.say('"""Say yes."""')
    assert "system prompt set" in t.say("/system You answer in French.")
    assert "You answer in French." in t.say("/system")
    data = saved_json(t, tmp_path / "a.json")
    assert [x["user"] for x in data["turns"]] == ["Repeat these two lines:\nred apple", "Say yes."]
    before = data["turns"][1]["stats"]["context_used"]

    assert "conversation cleared (system prompt kept)" in t.say("/clear")
    t.say("Say yes.")
    data = saved_json(t, tmp_path / "b.json")
    assert len(data["turns"]) == 1 and data["system"] == "You answer in French."
    assert data["turns"][0]["stats"]["prompt_tokens"] < before
    assert "system prompt removed" in t.say("/system -")
    assert t.quit("eof") == 0


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(term, tmp_path):
    t = term("--drafter", "model", "--draft-max", "2", "--max-tokens", "120")
    t.child.sendline("Write a long story about a dragon who learns to bake bread.")
    t.expect(r"ctx ([6-9][0-9]|1[0-9][0-9])/")  # well into the reply (the prompt is ~45 tokens)
    t.child.sendintr()
    t.expect(r"stopped")
    t.expect(PROMPT, 30)
    t.child.sendintr()  # at the prompt: a fresh prompt, not an exit
    t.expect(PROMPT, 30)
    out = t.say("Say yes.")
    assert "tokens/step" in out
    data = saved_json(t, tmp_path / "c.json")
    cut, ok = data["turns"]
    assert cut["stats"]["interrupted"] and cut["assistant"].strip()  # the partial reply is kept
    assert 0 < cut["stats"]["generated_tokens"] < 100
    assert not ok["stats"]["interrupted"] and ok["assistant"].strip()
    # The cache survived the interrupt: the next turn reused the whole first prompt at least.
    assert ok["stats"]["reused_tokens"] >= cut["stats"]["prompt_tokens"] - 1
    assert t.child.isalive()
    assert t.quit("eof") == 0


def test_context_overflow_drops_the_oldest_turns(term, tmp_path):
    t = term("--drafter", "none", "--ctx", "256", "--max-tokens", "40", "--system", "Be brief.")
    question = "Describe the colour {} in two sentences, please, and say what it reminds you of."
    outs = [t.say(question.format(c)) for c in ("red", "green", "blue", "yellow")]
    assert any("context full: left out the oldest" in o for o in outs), outs
    too_long = " ".join(t.say("word " * 400).split())
    assert re.search(r"needs \d+ tokens .* --ctx", too_long), too_long[-300:]
    data = saved_json(t, tmp_path / "o.json")
    kept = [x["in_context"] for x in data["turns"]]
    assert kept[0] is False and kept[-1] is True, kept
    assert all(x["stats"]["prompt_tokens"] + 1 < 256 for x in data["turns"])
    assert data["system"] == "Be brief."
    assert "tokens/step" in t.say("Say hi.")  # it carries on
    assert t.quit() == 0


def test_plain_text_when_term_is_dumb(term):
    t = term("--drafter", "model", "--draft-max", "2", "--max-tokens", "16", term="dumb")
    mark = t.mark()
    t.child.sendline("Name three fruits.")
    t.expect(PROMPT)
    raw = bytes(t.raw[mark:])
    assert b"\x1b[" not in raw, raw  # no colours, no cursor movement
    out = t.since(mark)
    assert "tok/s (avg" not in out and " │ " not in out  # no live status
    assert re.search(r"\d+ tokens · [\d.]+ tok/s · accepted \d+/\d+", out), out
    assert re.search(r"accepted by draft position \(session\): 1:\d+%", out), out
    assert t.quit() == 0


def test_plain_text_when_stdout_is_not_a_terminal(target_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm-256color"}
    r = subprocess.run([EXE, "chat", *COMMON, "--target", str(target_path), "--drafter", "ngram",
                        "--max-tokens", "12"], input="Say hi.\n/draft x\n/stats\n", capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert re.search(r"\d+ tokens · [\d.]+ tok/s", r.stdout), r.stdout
    assert "/draft must be a number of tokens" in r.stdout and "generated:" in r.stdout


def test_bad_startup_arguments_are_one_line(tmp_path, target_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args, hint in ((["--target", str(tmp_path / "nope.gguf")], "no such file"),
                       (["--target", str(target_path), "--max-tokens", "0"], "--max-tokens"),
                       (["--target", str(target_path), "--drafter", "model"], "--draft")):
        r = subprocess.run([EXE, "chat", *args], input="", capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and hint in lines[0], r.stderr


# -- the conversation, in-process ---------------------------------------------------------

@pytest.fixture(scope="module")
def engine(target_path, draft_path):
    eng = load_engine(EngineOptions(target=target_path, draft=draft_path, drafter="model", draft_max=3,
                                    threads=1, n_ctx=256))
    yield eng
    eng.close()


def run_turn(chat: Chat, text: str) -> tuple[Prefill, Summary]:
    pre = summary = None
    for ev in chat.send(text):
        if isinstance(ev, Prefill):
            pre = ev
        elif isinstance(ev, Summary):
            summary = ev
    return pre, summary


def test_a_new_turn_decodes_only_new_tokens_in_target_and_draft(engine):
    chat = Chat(engine, max_tokens=16)
    run_turn(chat, "Name two birds.")
    drafter = engine.drafters["model"]
    history = chat.turns[0].summary.prompt_tokens + chat.turns[0].summary.generated_tokens
    text = chat.render(chat.messages("And two fish?"))
    tokens = chat.tokens_for(text)
    # The draft model's cache already holds the conversation so far, as the target's does.
    assert common_prefix(drafter.cached, tokens) >= history - 2
    assert common_prefix(engine.cached, tokens) >= history - 1
    pre, _ = run_turn(chat, "And two fish?")
    assert pre.reused >= history - 1 and pre.tokens == len(tokens) - pre.reused


def test_dropping_turns_keeps_the_system_prompt(engine):
    chat = Chat(engine, system="You are a poet.", max_tokens=24)
    engine.set_drafter("none")  # plain decoding: this test is about the prompt, and fast that way
    events = []
    try:
        for i in range(5):
            items = ", ".join(f"shell {i}-{k}" for k in range(8))
            events += [ev for ev in chat.send(f"Remember these: {items}. Which is first?")
                       if isinstance(ev, Prompt)]
            assert chat.meter.context_used <= engine.n_ctx
    finally:
        engine.set_drafter("model")
    assert any(ev.dropped for ev in events)
    assert chat.first_kept > 0
    msgs = chat.messages("next")
    assert msgs[0] == {"role": "system", "content": "You are a poet."}
    assert msgs[1]["content"] == chat.turns[chat.first_kept].user
    with pytest.raises(ChatError, match="needs"):
        list(chat.send("sea " * 300))


def test_an_interrupted_turn_keeps_its_partial_reply(engine):
    chat = Chat(engine, max_tokens=64)
    stream = chat.send("Tell me about the moon.")
    shown = ""
    for ev in stream:
        if isinstance(ev, Piece):
            shown += ev.text
        elif isinstance(ev, Step) and len(shown) > 10:
            break
    stream.close()
    turn = chat.turns[-1]
    assert turn.interrupted and turn.reply == shown
    assert 0 < turn.summary.generated_tokens < 64
    _, summary = run_turn(chat, "Thanks.")
    assert summary.generated_tokens > 0 and not chat.turns[-1].interrupted


def test_commands_report_bad_input_without_raising(engine):
    chat = Chat(engine)
    assert run_command(chat, "/draft 3").message == "draft length: 3"
    assert engine.controller.fixed == 3
    for bad in ("/draft x", "/drafter nope", "/temp -2", "/temp nan", "/save x.csv", "/what"):
        out = run_command(chat, bad)
        assert out.error and out.message and "\n" not in out.message, bad
    assert run_command(chat, "/bye").quit and run_command(chat, "/exit").quit
    assert run_command(chat, "/stats").action == "stats"


def test_status_lines_fit_narrow_and_wide_screens(engine):
    chat = Chat(engine, max_tokens=8, pair="a-rather-long-target-name-q4_k_m + a-draft-name-q2_k", backend="CPU")
    run_turn(chat, "Hi.")
    for width, most in ((80, 4), (200, 2)):
        lines = status_text(chat, width).plain.splitlines()
        assert max(len(x) for x in lines) <= width and len(lines) <= most, lines
    assert len(status_text(chat, 40).plain.splitlines()) > 2
