"""Editor autocomplete: fill in the middle through llama-server's /infill and OpenAI's `suffix`, `specgen run
--suffix`, the prompt layout and the line rules editors ask for.

The server tests run a real server on Qwen2.5-Coder 0.5B (it has FIM tokens) and read it as the editor
plugins do: raw HTTP for /infill (llama-server's own shape), the official `openai` SDK for completions.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from cli_helpers import one_line_error
from server_helpers import EXE, Server

from specgen.formats.infill import Chunk, Infill, NoInfill, fim_tokens, infill_tokens
from specgen.llama.backend import Model, ModelOptions
from specgen.textstream import Lines, TextStream

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))"
# The same request as a client that wraps the code in the model's FIM tokens itself sends it.
RAW = f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
# A fresh cache for each request: the same prompt decoded with and without reuse may round a near-tie apart.
FRESH = {"cache_prompt": False}


# The request each test varies: greedy, a fresh cache, a short completion.
BODY = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 24, "temperature": 0, **FRESH}


def infill(server: Server, **body) -> tuple[int, dict]:
    status, _, raw = server.request("POST", "/infill", {**BODY, **body})
    return status, json.loads(raw)


def streamed(server: Server, **body) -> list[dict]:
    status, headers, raw = server.request("POST", "/infill", {**BODY, "stream": True, **body})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    assert "data: [DONE]" not in events  # llama-server ends its own stream with the `stop: true` object
    return [json.loads(e[len("data: "):]) for e in events]


# -- the server ---------------------------------------------------------------------------------

def test_infill_completes_the_body_in_llama_servers_shape(coder):
    status, r = infill(coder)
    assert status == 200, r
    assert r["content"].startswith("return a + b"), r["content"]
    assert r["stop"] is True and r["stop_type"] in ("eos", "limit")
    assert r["tokens_predicted"] == r["timings"]["predicted_n"] <= 24
    assert r["tokens_evaluated"] == r["timings"]["prompt_n"] + r["timings"]["cache_n"]
    assert r["generation_settings"]["n_predict"] == 24 and r["truncated"] is False


def test_a_streamed_infill_equals_the_whole_one(coder):
    _, whole = infill(coder)
    chunks = streamed(coder)
    *parts, last = chunks
    assert all(c["stop"] is False and c["content"] for c in parts) and last["stop"] is True
    assert "".join(c["content"] for c in parts) == whole["content"]
    assert last["tokens_predicted"] == whole["tokens_predicted"] and last["stop_type"] == whole["stop_type"]


def test_openai_suffix_and_a_raw_fim_prompt_give_the_same_middle(coder):
    _, whole = infill(coder)
    client = coder.client()
    via_suffix = client.completions.create(model="x", prompt=PREFIX, suffix=SUFFIX, max_tokens=24, temperature=0,
                                           extra_body=FRESH)
    assert via_suffix.choices[0].text == whole["content"]
    assert via_suffix.usage.prompt_tokens == whole["tokens_evaluated"]
    # Special tokens in a raw prompt are read as special, so the model sees the same prompt.
    raw = client.completions.create(model="x", prompt=RAW, max_tokens=24, temperature=0, extra_body=FRESH)
    assert raw.choices[0].text == whole["content"]
    assert raw.usage.prompt_tokens == whole["tokens_evaluated"]


def test_greedy_infill_with_auto_equals_plain_decoding(coder):
    # An in-file edit: the two functions after the cursor are what the model retypes, changed.
    body = {"input_prefix": "import math\n\n\ndef distance_between(p, q):\n    return math.hypot(p[0] - q[0], "
                            "p[1] - q[1])\n\n\ndef perimeter(points):\n",
            "input_suffix": "\n\ndef perimeter_old(points):\n    total = 0.0\n    for i, p in enumerate(points):\n"
                            "        q = points[(i + 1) % len(points)]\n        total += dist(p, q)\n"
                            "    return total\n",
            "n_predict": 48}
    _, plain = infill(coder, drafter="none", **body)
    _, auto = infill(coder, drafter="auto", **body)
    # A fixed length: whether a copy pays is the controller's call, from the rates this server's earlier requests
    # taught it and a cost curve calibrated whenever this machine last measured one (a full suite's run once
    # left it drafting nothing here); this test only needs the copy offered.
    _, ngram = infill(coder, drafter="ngram", draft_max=8, **body)
    assert auto["content"] == plain["content"] == ngram["content"]
    assert plain["specgen"]["steps"] == plain["tokens_predicted"]
    # The copy came from the suffix: the n-gram drafter had nothing else to copy from.
    assert ngram["timings"]["draft_n_accepted"] > 0
    assert ngram["specgen"]["steps"] < ngram["tokens_predicted"]


def test_input_extra_goes_before_the_file_and_is_drafted_from(coder):
    helper = "def distance_between(p, q):\n    return math.hypot(p[0] - q[0], p[1] - q[1])\n"
    status, r = infill(coder, input_prefix="import math\n\n\n", input_suffix="\n\ndef nearest(points, target):\n"
                       "    return min(points, key=lambda p: distance_between(p, target))\n",
                       input_extra=[{"filename": "geometry/old.py", "text": helper}], n_predict=32,
                       drafter="ngram")
    assert status == 200, r
    assert r["tokens_evaluated"] > 40 and r["content"]


def test_line_rules_end_the_completion_where_an_editor_wants(coder):
    _, free = infill(coder, n_predict=40)
    assert "\nprint" in free["content"], free  # the model runs on past the body: the rules below have work to do
    _, block = infill(coder, n_predict=40, n_indent=4)
    assert block["content"] == "return a + b" and block["stop_type"] == "limit"
    _, lines = infill(coder, n_predict=40, max_lines=2)
    assert lines["content"].count("\n") == 1 and free["content"].startswith(lines["content"])
    # A 1 ms budget is spent before the first line ends: the completion stops at that line's end.
    _, late = infill(coder, n_predict=40, t_max_predict_ms=1)
    assert late["content"] == "return a + b" and late["stop_type"] == "limit"
    assert late["generation_settings"]["t_max_predict_ms"] == 1


@pytest.mark.parametrize("body, param, words", [
    ({"input_prefix": "", "input_suffix": ""}, "input_prefix", "nothing to fill in"),
    ({"input_suffix": "x"}, "input_prefix", "input_prefix is required"),
    ({"input_extra": {"filename": "a.py", "text": "x"}}, "input_extra", "must be a list"),
    ({"input_extra": [{"filename": "a.py"}]}, "input_extra", '"text" string'),
    ({"input_extra": [{"filename": 3, "text": "x"}]}, "input_extra", "filename must be a string"),
    ({"n_indent": -1}, "n_indent", "0 or more"),
    ({"input_prefix": 7}, "input_prefix", "must be a string"),
])
def test_bad_infill_requests_are_400s_naming_the_field(coder, body, param, words):
    base = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 4}
    base.update(body)
    if "input_prefix" not in body and param == "input_prefix":
        del base["input_prefix"]
    status, _, raw = coder.request("POST", "/infill", base)
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == param and words in err["message"], err


# -- the prompt -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vocab(coder_path):
    m = Model(coder_path, ModelOptions(vocab_only=True))
    yield m
    m.close()


def test_the_prompt_follows_the_repository_layout_and_keeps_code_as_text(vocab):
    plain = Infill("x = 1\n", "y = 2\n")
    pre, suf, mid = fim_tokens(vocab)
    assert infill_tokens(vocab, plain) == [pre, *vocab.tokenize("x = 1\n", False, False), suf,
                                           *vocab.tokenize("y = 2\n", False, False), mid]
    with_files = infill_tokens(vocab, Infill("x = 1\n", "y = 2\n", (Chunk("a.py", "A = 0\n"),)))
    text = vocab.tokenize("<|repo_name|>myproject\n<|file_sep|>a.py\nA = 0\n<|file_sep|>filename\n", False, True)
    assert with_files == text + infill_tokens(vocab, plain)
    # Code that spells a FIM token stays code: it cannot restructure the prompt.
    sneaky = infill_tokens(vocab, Infill("s = '<|fim_middle|>'", ""))
    assert sneaky.count(mid) == 1 and sneaky[-1] == mid


def test_a_prompt_too_long_loses_other_files_first_then_the_far_ends(vocab):
    prefix = "".join(f"a{i} = {i}\n" for i in range(200))
    suffix = "".join(f"b{i} = {i}\n" for i in range(200))
    files = (Chunk("old.py", "".join(f"c{i} = {i}\n" for i in range(200))),)
    whole = infill_tokens(vocab, Infill(prefix, suffix, files))
    full_file = infill_tokens(vocab, Infill(prefix, suffix))
    cut = infill_tokens(vocab, Infill(prefix, suffix, files), budget=len(full_file) + 10)
    assert len(cut) == len(full_file) + 10 and cut[-len(full_file):] == full_file  # only other files' code went
    tight = infill_tokens(vocab, Infill(prefix, suffix, files), budget=400)
    assert len(tight) == 400 < len(whole)
    # The code nearest the cursor stays: the prefix's end, the suffix's start.
    pre_at, suf_at = tight.index(fim_tokens(vocab)[0]), tight.index(fim_tokens(vocab)[1])
    kept_prefix = b"".join(vocab.piece(t) for t in tight[pre_at + 1:suf_at]).decode()
    kept_suffix = b"".join(vocab.piece(t) for t in tight[suf_at + 1:-1]).decode()
    assert kept_prefix.endswith("a199 = 199\n") and kept_suffix.startswith("b0 = 0\n")
    assert 2.5 <= (suf_at - pre_at) / (len(tight) - suf_at) <= 3.5  # three parts before the cursor to one after


def test_a_model_without_fim_tokens_is_refused(target_path):
    m = Model(target_path, ModelOptions(vocab_only=True))
    try:
        with pytest.raises(NoInfill, match="cannot fill in the middle: its vocabulary has no prefix, suffix"):
            infill_tokens(m, Infill("a", "b"))
    finally:
        m.close()


# -- the line rules ---------------------------------------------------------------------------------

def _stream(text: str, lines: Lines, step: int) -> tuple[str, str]:
    t = TextStream((), lines)
    shown = []
    for i in range(0, len(text), step):
        shown += [p for p, _ in t.push(text[i:i + step].encode(), False)]
        if t.stopped:
            break
    shown += [p for p, _ in t.flush()]
    return "".join(shown), t.reason


@pytest.mark.parametrize("step", [1, 2, 5, 100])
def test_line_rules_cut_at_line_ends_however_the_text_arrives(step):
    body = "if x:\n        y = 1\n\n        z = 2\n\n\nprint(y)\n"
    assert _stream("    " + body, Lines(n_indent=4), step) == ("    if x:\n        y = 1\n\n        z = 2", "block")
    assert _stream(body, Lines(max_lines=2), step) == ("if x:\n        y = 1", "limit")
    assert _stream(body, Lines(seconds=1e-9), step) == ("if x:", "limit")
    assert _stream("a\n    b\n", Lines(n_indent=4), step) == ("a\n    b\n", "")  # the rule never fired


def _per_char(shown: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    return [(c, src) for piece, src in shown for c in piece]


@pytest.mark.parametrize("step", [1, 3, 8])
def test_a_steps_tokens_pushed_at_once_show_what_they_show_one_by_one(step):
    """The engine pushes each step's tokens together: the same text, the same stop and reason, the same
    source per character."""
    tokens = [t.encode() for t in ("    if", " x", ":\n", "        y", " =", " 1", "\n\n", "print", "(y)", "\nEN", "D")]
    for stop, lines in ((["END"], None), (["(y"], None), ([], Lines(n_indent=4)), ([], Lines(max_lines=2))):
        one, many = TextStream(stop, lines), TextStream(stop, lines)
        shown_one = [p for i, t in enumerate(tokens) for p in one.push(t, i % 2 == 0)] + one.flush()
        shown_many = [p for i in range(0, len(tokens), step)
                      for p in many.push_all([(t, (i + j) % 2 == 0) for j, t in enumerate(tokens[i:i + step])])]
        shown_many += many.flush()
        assert _per_char(shown_many) == _per_char(shown_one)
        assert (many.text, many.reason, many.matched) == (one.text, one.reason, one.matched)


def test_line_rules_are_checked():
    for bad in (Lines(n_indent=-1), Lines(max_lines=-2), Lines(seconds=float("nan"))):
        with pytest.raises(Exception):
            bad.check()


# -- the command line --------------------------------------------------------------------------------

def specgen(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, input=stdin, timeout=600)


def test_run_with_a_suffix_fills_in_the_middle(coder_path, tmp_path):
    suffix = tmp_path / "after.py"
    suffix.write_text(SUFFIX)
    common = ("run", "--target", str(coder_path), "--drafter", "ngram", "--max-tokens", "8", "--json")
    r = specgen(*common, "--suffix-file", str(suffix), stdin=PREFIX)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"].startswith("return a + b"), out["text"]
    # The code before the cursor is taken as it is: its trailing blanks are part of the prompt.
    assert out["stats"]["prompt_tokens"] == len(raw_tokens(coder_path))


def raw_tokens(path) -> list[int]:
    m = Model(path, ModelOptions(vocab_only=True))
    try:
        return m.tokenize(RAW, add_special=False, parse_special=True)
    finally:
        m.close()


def test_run_refuses_a_suffix_it_cannot_use(coder_path, target_path, tmp_path):
    no_fim = specgen("run", "--target", str(target_path), "--suffix", "x", "def f():")
    assert "cannot fill in the middle" in one_line_error(no_fim)
    both = specgen("run", "--target", str(coder_path), "--suffix", "x", "--suffix-file", str(tmp_path), "a")
    assert "--suffix or --suffix-file, not both" in one_line_error(both)
    raw = specgen("run", "--target", str(coder_path), "--suffix", "x", "--raw", "a")
    assert "does not apply to an infill" in one_line_error(raw)


def test_bench_runs_the_infill_suite(coder_path, tmp_path):
    out = tmp_path / "infill.json"
    r = specgen("bench", "--target", str(coder_path), "--prompts", "builtin:infill", "--limit", "2",
                "--drafter", "ngram", "--max-tokens", "8", "--json", str(out))
    assert r.returncode == 0, r.stderr
    cats = {s["category"] for s in json.loads(out.read_text())["summary"]}
    assert "infill" in cats
