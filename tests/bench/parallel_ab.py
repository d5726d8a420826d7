"""Concurrent clients benchmark: `specgen serve --parallel`, against one slot and llama-server: a script, not a test.

    python -m tests.bench.parallel_ab [--target T.gguf] [--draft D.gguf] [--clients 1,2,4,8] [--seconds 90]
                                      [--max-tokens 128] [--configs specgen-p1,...] [--kinds edit,chat]
                                      [--llama-server PATH] [--llama-spec ngram-simple] [--cache-prompt]
                                      [--ctx 4096] [--threads N] [--json OUT]

Configurations (--configs, default all), each its own server process, greedy, --no-mmap, the same threads
(--threads, else specgen's default, given to both servers) and `--ctx` tokens of context per slot:

- specgen-p1: `specgen serve --parallel 1 --drafter auto`, one request at a time (the others wait);
- specgen-p4-none, specgen-p4-ngram, specgen-p4-auto: `specgen serve --parallel 4 --drafter X`;
- llama-p4: llama-server (from the llama.cpp llama-cpp-python vendors; build it as infill_ab's docstring
  says) with `-np 4 -c 4*CTX --kv-unified --kv-unified-per-slot CTX -lm none --temp 0`: four slots sharing
  one pool of cells, each capped at CTX, as specgen keeps its slots; llama-p4-ngram: the same with
  `--spec-type ngram-simple` (--llama-spec), its n-gram speculation.  Both are skipped, with a note, when
  --llama-server (default /tmp/lsbuild/bin/llama-server) is not there.

OMP_WAIT_POLICY=passive (unless set) for every server and this process, as in rpc_ab: OpenMP threads
spinning between graph computations starve whatever shares the cores -- the clients, the idle servers,
neighbours -- and llama-server on a shared 2-core machine took 2.9 s for a one-token prompt spinning
against 18 ms passive, same minute.

Before the servers start, the target's batch cost curve on this machine: seconds for one decode of n rows
(`calibrate.measure_verify`, n = 1, 2, 4, 8), printed as c(n)/c(1), and 4 c(1)/c(4), what four streams
decoded in one batch could get over one stream at a time.

Every server is started once, all before any measuring, and warmed with one request.  Then, for each
client count (--clients) in turn, every configuration gets a window of --seconds: that many clients each
send streamed chat completions (max_tokens --max-tokens, `stream_options.include_usage`) one after
another, walking a rotation of code edits (the harness's code-edit prompt, other renames in inventory.py,
small changes to short files of this repository) and short chat prompts (heldout-prompts.jsonl) taking
turns (--kinds keeps one of the two), each client from its own place in it so that they send different
prompts at the same time.  Every request goes with `cache_prompt: false` unless --cache-prompt: the
rotation comes round again every dozen requests, and which prompts a server still holds then depends on
its slots and prompt caches (llama-server's --cache-ram, specgen's host prompt cache) more than on
batching, which is what is compared.

Not the harness's A/B (its ratios are of one request's speed; here it is throughput under load, a window
per sample), but ordered against drift where it costs nothing: the configurations compared at one client
count run back to back, minutes apart, not a client count's worth of windows apart, and their order
rotates from one client count to the next, so that no configuration always runs first.  Clients start
together when a window opens (the burst of first prompts is part of it); when it closes, the requests in
flight are cut (the connection closed: both servers cancel on a hang-up), and a 1-token request waits for
the server to be idle before the next window.

Reported per configuration and client count:

- aggregate tok/s: completion tokens streamed inside the window over its length.  A request finished
  inside counts the `completion_tokens` of its usage; one cut at the close counts the characters it had
  streamed times the tokens per character of that prompt's finished replies on that configuration (else of
  all its finished replies; else one token per content chunk).  specgen sends several tokens in a chunk,
  so chunks are not counted where usage is known;
- TTFT p50 and p95: from sending the request to its first content chunk; a request still waiting at the
  close counts the wait so far (a lower bound, not left out);
- ITL p50: over finished requests of two tokens or more, (last content chunk - first) / (tokens - 1);
- requests finished inside the window, and the draft tokens their `timings` say were accepted and
  proposed (a speculating configuration that drafts nothing is not speculating).

Then the goals (printed pass/fail, not asserted), at 4 clients for every specgen-p4 configuration:
tok/s over specgen-p1's >= 0.9 x 4 c(1)/c(4); over the best llama-server configuration's >= 1.1; p95 TTFT
over specgen-p1's <= 0.4; and at 1 client, tok/s over specgen-p1's >= 0.98.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from .harness import CODE_EDIT, HERE, csv_list, markdown, run_serving, write_json
from .infill_ab import LlamaServer, pct
from .server_ab import Server, edit_messages, source_files

MODELS = Path.home() / ".cache" / "specgen-models"
LLAMA_SERVER = Path("/tmp/lsbuild/bin/llama-server")


@dataclass(frozen=True)
class Config:
    name: str
    server: str
    """"specgen" or "llama"."""
    parallel: int
    drafter: str | None
    """specgen's --drafter; for llama-server, whether it speculates (its --spec-type is --llama-spec)."""


CONFIGS = {c.name: c for c in (
    Config("specgen-p1", "specgen", 1, "auto"),
    Config("specgen-p4-none", "specgen", 4, "none"),
    Config("specgen-p4-ngram", "specgen", 4, "ngram"),
    Config("specgen-p4-auto", "specgen", 4, "auto"),
    Config("llama-p4", "llama", 4, None),
    Config("llama-p4-ngram", "llama", 4, "ngram"),
)}
BASELINE = "specgen-p1"

INVENTORY = (HERE / "inventory.py").read_text()
INVENTORY_RENAMES = [
    "Rewrite this module with one rename: the dataclass `Item` becomes `Product`. Change nothing else and "
    "output the whole module.",
    "Rewrite this module with one rename: the method `low_stock` becomes `running_low`. Change nothing else and "
    "output the whole module.",
]
CHAT_CATEGORIES = ("qa", "translation", "math_reasoning", "writing", "stem", "coding")
WARM_UP = [{"role": "user", "content": "Say hi."}]


def prompts(kinds: list[str]) -> list[tuple[str, list[dict]]]:
    """The rotation the clients walk, (name, messages): code edits and chat prompts taking turns."""
    edits: list[tuple[str, list[dict]]] = [("code-edit", [{"role": "user", "content": CODE_EDIT}])]
    edits += [(f"inventory-{i + 1}", [{"role": "user", "content": f"{ask}\n\n```python\n{INVENTORY}```"}])
              for i, ask in enumerate(INVENTORY_RENAMES)]
    # Short files, as in server_ab: prefill is the slow part on a CPU, and decoding is what is compared.
    edits += [(f"edit:{path.name}", edit_messages(path, change)) for path, change in source_files(3, None, (40, 120))]
    chats: list[tuple[str, list[dict]]] = []
    for line in (HERE / "heldout-prompts.jsonl").read_text().splitlines():
        q = json.loads(line)
        if q["category"] in CHAT_CATEGORIES and len(q["turns"][0]) < 300 and \
                q["category"] not in (name.split(":")[1] for name, _ in chats):
            chats.append((f"chat:{q['category']}", [{"role": "user", "content": q["turns"][0]}]))
    if kinds == ["edit"]:
        return edits
    if kinds == ["chat"]:
        return chats
    return [p for pair in zip(edits, chats) for p in pair] + edits[len(chats):] + chats[len(edits):]


@dataclass
class Request:
    client: int
    prompt: str
    sent: float
    """Seconds from the window's opening, as first, last and end."""
    first: float | None = None
    last: float | None = None
    end: float | None = None
    """When the reply (its usage) was complete; None when the window closed first."""
    chunks: int = 0
    chars: int = 0
    tokens: int | None = None
    """completion_tokens of the usage; None when cut."""
    drafted: int = 0
    accepted: int = 0
    """Draft tokens proposed and accepted, from the `timings` both servers send with the usage."""


async def client_loop(http: httpx.AsyncClient, k: int, rotation: list[tuple[str, list[dict]]], fields: dict,
                      t0: float, out: list[Request]) -> None:
    """Client *k*: requests back to back, from its own place in the rotation, until cancelled."""
    i = k
    while True:
        name, messages = rotation[i % len(rotation)]
        i += 1
        req = Request(k, name, time.perf_counter() - t0)
        out.append(req)
        body = {"model": "x", "messages": messages, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, **fields}
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"client {k}: HTTP {r.status_code}: {(await r.aread()).decode()[:500]}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if obj.get("choices") and (text := obj["choices"][0].get("delta", {}).get("content")):
                    req.last = time.perf_counter() - t0
                    req.first = req.first if req.first is not None else req.last
                    req.chunks += 1
                    req.chars += len(text)
                if obj.get("usage"):
                    req.tokens = obj["usage"]["completion_tokens"]
                    timings = obj.get("timings") or {}
                    req.drafted, req.accepted = timings.get("draft_n", 0), timings.get("draft_n_accepted", 0)
        if req.tokens is None:
            raise RuntimeError(f"client {k}: the stream ended without usage")
        req.end = time.perf_counter() - t0


async def window(url: str, clients: int, seconds: float, rotation: list[tuple[str, list[dict]]],
                 fields: dict) -> list[Request]:
    """*clients* clients sending for *seconds*, *fields* in every request body; what each request did, in
    the order they were sent."""
    out: list[Request] = []
    async with httpx.AsyncClient(base_url=url, timeout=None) as http:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(client_loop(http, k, rotation, fields, t0, out)) for k in range(clients)]
        done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            t.cancel()  # closes the connections in flight: the servers cancel those requests
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()  # a client that failed before the close: its error
    return out


def settle(url: str, max_tokens: int = 1) -> None:
    """Wait for the server to be idle: a short request queued behind whatever it still finishes."""
    r = httpx.post(f"{url}/v1/chat/completions", timeout=None, json={"model": "x", "messages": WARM_UP,
                                                                      "max_tokens": max_tokens, "temperature": 0})
    r.raise_for_status()
    time.sleep(0.5)


def summarize(reqs: list[Request], seconds: float, per_char: dict[str, float], overall: float | None) -> dict:
    """One window's figures (see the module's docstring for how tokens are counted)."""
    finished = [r for r in reqs if r.end is not None]
    tokens = float(sum(r.tokens for r in finished))
    for r in reqs:
        if r.end is None:
            rate = per_char.get(r.prompt, overall)
            tokens += r.chars * rate if rate is not None else r.chunks
    ttft = [(r.first if r.first is not None else seconds) - r.sent for r in reqs]  # every client sent one at 0
    itl = [(r.last - r.first) / (r.tokens - 1) for r in finished
           if r.tokens and r.tokens > 1 and r.first is not None and r.last > r.first]
    return {"tok_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "finished": len(finished),
            "cut": len(reqs) - len(finished), "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95),
            "itl_p50_s": statistics.median(itl) if itl else None,
            "drafted": sum(r.drafted for r in finished), "accepted": sum(r.accepted for r in finished)}


def tokens_per_char(reqs: list[Request]) -> tuple[dict[str, float], float | None]:
    """Tokens per character of the finished replies: per prompt, and over all of them."""
    done = [r for r in reqs if r.end is not None and r.chars]
    per: dict[str, list[int]] = {}
    for r in done:
        t, c = per.setdefault(r.prompt, [0, 0])
        per[r.prompt] = [t + r.tokens, c + r.chars]
    total = sum(r.chars for r in done)
    return ({p: t / c for p, (t, c) in per.items()},
            sum(r.tokens for r in done) / total if total else None)


def cost_curve(target: str, threads: int) -> dict[int, float]:
    """Seconds for one decode of n rows of the target, n = 1, 2, 4, 8, in this process (freed after)."""
    from specgen.llama.backend import Context, Model, ModelOptions
    from specgen.llama.calibrate import measure_verify

    model = Model(target, ModelOptions(use_mmap=False))
    try:
        ctx = Context(model, 4096, threads)
        try:
            return measure_verify(ctx, (1, 2, 4, 8))
        finally:
            ctx.close()
    finally:
        model.close()


def start(config: Config, args: argparse.Namespace, log: Path) -> tuple[Server | LlamaServer, str]:
    """The configuration's server, and its base URL."""
    if config.server == "specgen":
        s = Server(args, config.drafter, log, ["--parallel", str(config.parallel), "--ctx", str(args.ctx)])
        return s, s.url
    ls = LlamaServer(args.llama_server, args, log, spec=args.llama_spec if config.drafter else None,
                     parallel=config.parallel, ctx=args.ctx)
    return ls, str(ls.client.base_url).rstrip("/")


def fmt(x: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def goals(runs: dict[str, dict[int, dict]], factor: float) -> tuple[list[str], dict]:
    """Each goal's figure for every specgen-p4 configuration, from the measured numbers."""
    def get(config: str, clients: int, key: str) -> float | None:
        return runs.get(config, {}).get(clients, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    llama = [get(c, 4, "tok_s") for c in runs if CONFIGS[c].server == "llama" and get(c, 4, "tok_s") is not None]
    specs = [  # (name, figure of a p4 configuration, threshold, passes when the figure is at least it)
        ("4 clients: tok/s / specgen-p1's", lambda c: ratio(get(c, 4, "tok_s"), get(BASELINE, 4, "tok_s")),
         0.9 * factor, True),
        ("4 clients: tok/s / best llama-server's", lambda c: ratio(get(c, 4, "tok_s"), max(llama, default=None)),
         1.1, True),
        ("4 clients: p95 TTFT / specgen-p1's", lambda c: ratio(get(c, 4, "ttft_p95_s"), get(BASELINE, 4, "ttft_p95_s")),
         0.4, False),
        ("1 client: tok/s / specgen-p1's", lambda c: ratio(get(c, 1, "tok_s"), get(BASELINE, 1, "tok_s")),
         0.98, True),
    ]
    p4 = [c for c in runs if CONFIGS[c].server == "specgen" and CONFIGS[c].parallel == 4]
    if not p4:
        return ["no specgen-p4 configuration ran"], {}
    rows, out = [], {}
    for goal, figure, threshold, at_least in specs:
        out[goal] = {"threshold": threshold, "at_least": at_least, "configs": {}}
        row = [goal, f"{'>=' if at_least else '<='} {threshold:.2f}"]
        for c in p4:
            x = figure(c)
            ok = None if x is None else (x >= threshold if at_least else x <= threshold)
            out[goal]["configs"][c] = {"figure": x, "pass": ok}
            row.append("n/a" if x is None else f"{x:.2f} {'pass' if ok else 'FAIL'}")
        rows.append(row)
    return [markdown(["goal", "target", *p4], rows)], out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--clients", default="1,2,4,8", help="concurrent clients, one window each per configuration")
    ap.add_argument("--seconds", type=float, default=90, help="each window's length")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--kinds", default="edit,chat", help="the prompts in the rotation: code edits, chat, or both")
    ap.add_argument("--llama-server", default=str(LLAMA_SERVER) if LLAMA_SERVER.exists() else None,
                    help=f"a llama-server binary (default: {LLAMA_SERVER}, when it exists)")
    ap.add_argument("--llama-spec", default="ngram-simple", help="llama-p4-ngram's --spec-type")
    ap.add_argument("--cache-prompt", action="store_true",
                    help="let the servers reuse cached prompts (default: every request prefilled afresh)")
    ap.add_argument("--ctx", type=int, default=4096, help="context tokens per slot, in every server")
    ap.add_argument("--threads", type=int, help="CPU threads of every server (default: specgen's default)")
    ap.add_argument("--json")
    args = ap.parse_args()
    # Before llama.cpp's OpenMP starts in this process, and inherited by every server (see the docstring).
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    names = csv_list(args.configs)
    if unknown := [c for c in names if c not in CONFIGS]:
        ap.error(f"unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    try:
        counts = [int(n) for n in csv_list(args.clients)]
    except ValueError:
        ap.error(f"--clients takes counts like 1,2,4,8, not {args.clients!r}")
    kinds = csv_list(args.kinds)
    if not kinds or set(kinds) - {"edit", "chat"}:
        ap.error(f"--kinds takes edit, chat or both, not {args.kinds!r}")
    if not counts or min(counts) < 1:
        ap.error("--clients takes counts of at least 1")
    skipped = []
    if not (args.llama_server and Path(args.llama_server).exists()):
        skipped = [c for c in names if CONFIGS[c].server == "llama"]
        names = [c for c in names if c not in skipped]
        if skipped:
            print(f"note: {', '.join(skipped)} skipped: no llama-server at {args.llama_server or LLAMA_SERVER} "
                  "(--llama-server)", file=sys.stderr, flush=True)
    if not names:
        ap.error("no configuration left to run")
    from specgen.llama.backend import default_threads
    args.threads = args.threads or default_threads()  # one figure for both servers, whose defaults differ
    rotation = prompts(kinds)
    fields = {"max_tokens": args.max_tokens, "cache_prompt": args.cache_prompt}
    print(f"$ python -m {__spec__.name} {' '.join(sys.argv[1:])}", flush=True)

    seconds = cost_curve(args.target, args.threads)
    factor = 4 * seconds[1] / seconds[4]
    out = ["## the target's batch cost curve", "",
           markdown(["rows n", "c(n) ms", "c(n)/c(1)"], [[n, f"{s * 1e3:.2f}", f"{s / seconds[1]:.2f}"]
                                                         for n, s in seconds.items()]),
           "", f"4 c(1)/c(4) = {factor:.2f}: four streams in one batch could decode this much faster than one "
               f"at a time ({args.threads} threads)"]
    print("\n".join(out), flush=True)

    reqs: dict[str, dict[int, list[Request]]] = {c: {} for c in names}
    failed: dict[str, str] = {}
    """Configurations whose server failed, and where: their later windows are not run."""
    with tempfile.TemporaryDirectory(prefix="parallel-ab-") as tmp:
        servers: dict[str, tuple[Server | LlamaServer, str]] = {}
        try:
            for c in names:
                servers[c] = start(CONFIGS[c], args, Path(tmp) / f"{c}.log")
                print(f"{c}: up at {servers[c][1]}", file=sys.stderr, flush=True)
            for c in names:  # first requests pay for page faults and thread start-up
                settle(servers[c][1], 8)
            for i, n in enumerate(counts):
                for c in names[i % len(names):] + names[:i % len(names)]:
                    if c in failed:
                        continue
                    try:
                        got = asyncio.run(window(servers[c][1], n, args.seconds, rotation, fields))
                        settle(servers[c][1])
                    except Exception as e:  # a server that dies is reported, and the others go on
                        failed[c] = f"{n} clients: {type(e).__name__}: {e}"
                        print(f"{n} clients, {c}: FAILED ({failed[c]}); its log ends:\n"
                              f"{Path(servers[c][0].log).read_text()[-1500:]}", file=sys.stderr, flush=True)
                        continue
                    reqs[c][n] = got
                    done = [r for r in got if r.end is not None]
                    print(f"{n} clients, {c}: {len(done)} finished, {sum(r.tokens for r in done)} tokens",
                          file=sys.stderr, flush=True)
        except Exception as e:
            logs = "\n".join(f"--- {c}\n{Path(s.log).read_text()[-2000:]}" for c, (s, _) in servers.items())
            raise SystemExit(f"{type(e).__name__}: {e}\n{logs}") from e
        finally:
            for s, _ in servers.values():
                s.stop()

    runs: dict[str, dict[int, dict]] = {}
    for c in names:
        per_char, overall = tokens_per_char([r for got in reqs[c].values() for r in got])
        runs[c] = {n: summarize(got, args.seconds, per_char, overall) for n, got in reqs[c].items()}
    rows = []
    for c in names:
        for n in counts:
            if n not in runs[c]:
                rows.append([c, n, "failed", "-", "-", "-", "-", "-", "-"])
                continue
            r = runs[c][n]
            base = runs.get(BASELINE, {}).get(n, {}).get("tok_s")
            rows.append([c, n, f"{r['tok_s']:.1f}", f"{r['tok_s'] / base:.2f}x" if base else "-",
                         fmt(r["ttft_p50_s"]), fmt(r["ttft_p95_s"]), fmt(r["itl_p50_s"], 1e3, 1), r["finished"],
                         f"{r['accepted']}/{r['drafted']}"])
    table = markdown(["config", "clients", "tok/s", f"vs {BASELINE}", "TTFT p50 s", "TTFT p95 s", "ITL p50 ms",
                      "finished", "accepted/drafted"], rows)
    goal_text, goal_json = goals(runs, factor)
    print("\n".join(["", f"## {args.seconds:g} s per window, up to {args.max_tokens} tokens a request, greedy", "",
                     table, "", "## goals (at 4 clients unless said; figure and pass/fail per configuration)", "",
                     *goal_text]))
    if skipped:
        print(f"\nskipped (no llama-server): {', '.join(skipped)}")
    for c, why in failed.items():
        print(f"\n{c} failed at {why}")
    write_json(args.json, {
        "args": vars(args), "skipped": skipped, "failed": failed, "prompts": [name for name, _ in rotation],
        "curve": {"seconds": seconds, "relative": {n: s / seconds[1] for n, s in seconds.items()},
                  "goal_factor": factor},
        "runs": runs, "goals": goal_json,
        "requests": {c: {n: [asdict(r) for r in got] for n, got in per.items()} for c, per in reqs.items()}})


if __name__ == "__main__":
    run_serving(main)
