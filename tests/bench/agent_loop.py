"""Agent-loop benchmark: a script, not a test.

    python -m tests.bench.agent_loop [--target T.gguf] [--draft D.gguf] [--tasks 10] [--max-tokens 2048]
                                     [--sections loop,schema] [--threads N] [--json OUT]

Starts one `specgen serve` on the pair (default: the Qwen2.5-Coder 1.5B target and 0.5B draft in
~/.cache/specgen-models), --no-mmap, greedy, and drives a coding agent's loop through the official
`openai` SDK, as an editor agent would.  Each task is "read this file, then change it": the model is
given the tools read_file(path) and write_file(path, content); asked for a change to a named file, it
calls read_file (forced by a named tool_choice), is answered with a generated 80-200-line Python
module, and writes the whole changed file back as write_file's arguments (forced too).

1. loop: each task runs with the request field `drafter` set to auto and to none, interleaved by the
   harness (none, auto, none).  Per arm: decode tok/s over the loop (the sum of `timings.predicted_n`
   over the sum of `timings.predicted_ms`), end-to-end seconds per task (client clock, both requests,
   prompt reading included: each task's first request starts from an empty prompt cache), the ratios.
2. schema: the write step (the same conversation after read_file, then "reply with a JSON object
   {path, content}", tool_choice none) with response_format json_schema against the same request
   without it (no grammar), both with drafter auto and an empty prompt cache, interleaved: decode
   tok/s ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

from openai import APIError, OpenAI

from .harness import HERE, csv_list, interleave, markdown, progress, run_serving, write_json
from .server_ab import Server

MODELS = Path.home() / ".cache" / "specgen-models"
SECTIONS = ("loop", "schema")
SYSTEM = "You are a coding agent. Use the tools to read and write files."
# An edit earlier in the session: without one to go by, the 1.5B model writes "..." or a summary as the content.
_INIT = ('# The app package: one module per kind of record.\n\n__all__ = ["billing", "inventory", "library"]\n'
         'VERSION = "1.2.0"\n')
EARLIER = [{"role": "user", "content": "In `app/__init__.py`: set `VERSION` to 1.3.0."},
           {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
               "name": "read_file", "arguments": json.dumps({"path": "app/__init__.py"})}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": _INIT},
           {"role": "assistant", "content": None, "tool_calls": [{"id": "call_2", "type": "function", "function": {
               "name": "write_file", "arguments": json.dumps({"path": "app/__init__.py",
                                                              "content": _INIT.replace("1.2.0", "1.3.0")})}}]},
           {"role": "tool", "tool_call_id": "call_2", "content": "ok"},
           {"role": "assistant", "content": "Done: `VERSION` is 1.3.0 now."}]
WRITE_SCHEMA = {"type": "object", "properties": {
                    "path": {"type": "string", "description": "The file's path, as given."},
                    "content": {"type": "string", "description": "The whole new content of the file."}},
                "required": ["path", "content"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {
             "name": "read_file", "description": "Read a file of the repository.",
             "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
                            "additionalProperties": False}}},
         {"type": "function", "function": {
             "name": "write_file", "description": "Replace a file's whole content.", "parameters": WRITE_SCHEMA}}]

# The ten modules: (module, record class, key field, fields, the store's own query, its condition, limit).
DOMAINS = [
    ("inventory", "Item", "sku", [("name", "str"), ("quantity", "int"), ("price", "float")],
     "low_stock", "item.quantity < 5", 5000),
    ("billing", "Invoice", "number", [("customer", "str"), ("amount", "float"), ("paid", "bool")],
     "unpaid", "not item.paid", 20000),
    ("shipping", "Parcel", "tracking", [("destination", "str"), ("weight", "float"), ("delivered", "bool")],
     "in_transit", "not item.delivered", 100000),
    ("library", "Book", "isbn", [("title", "str"), ("author", "str"), ("copies", "int")],
     "unavailable", "item.copies == 0", 50000),
    ("payroll", "Employee", "badge", [("name", "str"), ("salary", "float"), ("active", "bool")],
     "former", "not item.active", 2000),
    ("tickets", "Ticket", "code", [("event", "str"), ("seat", "int"), ("price", "float"), ("used", "bool")],
     "unused", "not item.used", 80000),
    ("fleet", "Vehicle", "plate", [("model", "str"), ("mileage", "int"), ("in_service", "bool")],
     "due_for_service", "item.mileage > 15000", 500),
    ("clinic", "Appointment", "ref", [("patient", "str"), ("minutes", "int"), ("confirmed", "bool")],
     "unconfirmed", "not item.confirmed", 10000),
    ("garden", "Plant", "tag", [("species", "str"), ("height", "float"), ("watered", "bool")],
     "thirsty", "not item.watered", 800),
    ("courses", "Enrollment", "student", [("course", "str"), ("credits", "int"), ("grade", "float")],
     "failing", "item.grade < 2.0", 30000),
]
CHANGES = [
    "Rename the function `summarize` to `summary_totals` and update every use of it.",
    "Add a parameter `delimiter: str = \",\"` to `parse_line` and pass it on to `csv.reader`.",
    "Add type hints to `parse_line`, `format_row`, `summarize`, `export_csv` and to the `predicate` "
    "parameter of `count_where`.",
    "Change the constant `MAX_RECORDS` to {double}.",
    "Add logging: a module-level `logger = logging.getLogger(__name__)`, and an INFO message in "
    "`{E}Store.add`, `{E}Store.remove` and `{E}Store.save`.",
    "Rename the method `{E}Store.find` to `lookup` and update every use of it.",
    "Add a parameter `encoding: str = \"utf-8\"` to `export_csv` and use it when opening the file.",
    "Make `{E}Store.remove` raise `KeyError` when the key is missing, instead of returning False; "
    "it then returns nothing.",
    "Rename the constant `DEFAULT_PAGE_SIZE` to `PAGE_SIZE` everywhere and set it to 50.",
    "Add a method `clear(self) -> None` to `{E}Store` that removes every record and saves the store.",
]
MODULE = string.Template((HERE / "agent_module.tmpl").read_text())
"""The tasks' files: a record class, its JSON store and a command line, filled in from DOMAINS."""
# The files' code quotes strings with ' and starts with comments, not a docstring: the 1.5B model escapes " in
# a JSON string unreliably, and the first " it leaves bare ends write_file's content there.
CHECK = {"str": "        if not self.{f}.strip():\n            problems.append('{f} is empty')",
         "int": "        if self.{f} < 0:\n            problems.append(f'{f} is negative: {{self.{f}}}')",
         "float": "        if self.{f} < 0:\n            problems.append(f'{f} is negative: {{self.{f}:.2f}}')",
         "bool": "        if not isinstance(self.{f}, bool):\n            problems.append('{f} must be True or False')"}
PARSE = {"str": "{v}.strip()", "int": "int({v})", "float": "float({v})", "bool": "{v}.strip().lower() == 'yes'"}
ROW = {"str": "{{item.{f}:<20}}", "int": "{{item.{f}:>8}}", "float": "{{item.{f}:>10.2f}}", "bool": "{{item.{f}!s:>5}}"}


def task(i: int) -> tuple[str, str, str]:
    """The *i*th task: the file's path, its content, the change asked for."""
    mod, cls, key, fields, query, cond, limit = DOMAINS[i % len(DOMAINS)]
    fields = [(key, "str")] + fields
    text = MODULE.substitute(
        e=cls.lower(), E=cls, key=key, limit=limit, query=query, cond=cond,
        n=len(fields), names=", ".join(f for f, _ in fields),
        fields="\n".join(f"    {f}: {t}" for f, t in fields),
        checks="\n".join(CHECK[t].format(f=f) for f, t in fields),
        parse=", ".join(PARSE[t].format(v=f"parts[{k}]") for k, (f, t) in enumerate(fields)),
        row=" ".join(ROW[t].format(f=f) for f, t in fields),
        sums="\n".join(f"    out['total_{f}'] = sum(item.{f} for item in items)" if t in ("int", "float") else
                       f"    out['{f}'] = sum(1 for item in items if item.{f})" for f, t in fields if t != "str"),
        quoted=", ".join(f"'{f}'" for f, _ in fields), attrs=", ".join(f"item.{f}" for f, _ in fields))
    change = CHANGES[i % len(CHANGES)].format(E=cls, double=2 * limit)
    return f"app/{mod}.py", text, change


def read_turn(path: str, change: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, *EARLIER, {"role": "user", "content": f"In `{path}`: {change}"}]


def named(fn: str) -> dict:
    return {"type": "function", "function": {"name": fn}}


def stats(r) -> dict:
    return r.model_extra.get("timings") or {}


def written(r) -> dict | None:
    """The {path, content} the reply wrote, from write_file's arguments or from JSON content; None if not JSON."""
    msg = r.choices[0].message
    text = msg.tool_calls[0].function.arguments if msg.tool_calls else msg.content
    try:
        got = json.loads(text or "")
    except json.JSONDecodeError:
        return None
    return got if isinstance(got, dict) else None


def agent_task(client: OpenAI, i: int, drafter: str, max_tokens: int) -> dict:
    """One task through the two tool turns: the client clock over both, the server's timings summed."""
    path, text, change = task(i)
    msgs = read_turn(path, change)
    t0 = time.perf_counter()
    # The prompt cache starts empty: each task reads its whole prompt, as the first request of a session.
    r1 = client.chat.completions.create(model="x", messages=msgs, tools=TOOLS, tool_choice=named("read_file"),
                                        parallel_tool_calls=False, temperature=0, max_tokens=64,
                                        extra_body={"drafter": drafter, "cache_prompt": False})
    calls = r1.choices[0].message.tool_calls
    if not calls:
        raise SystemExit(f"agent_loop: read_file was forced, but the reply called no tool: {r1.choices[0].message}")
    call = calls[0]
    # Every call needs its result; the file goes to the first, whatever path it named, so that each task
    # measures the same copy.
    msgs += [r1.choices[0].message.model_dump(exclude_none=True),
             *({"role": "tool", "tool_call_id": c.id, "content": text if c is call else "error: one file at a time"}
               for c in calls)]
    r2 = client.chat.completions.create(model="x", messages=msgs, tools=TOOLS, tool_choice=named("write_file"),
                                        parallel_tool_calls=False, temperature=0, max_tokens=max_tokens,
                                        extra_body={"drafter": drafter})
    wall = time.perf_counter() - t0
    t1, t2 = stats(r1), stats(r2)
    out = written(r2)
    return {"wall": wall, "n": t1["predicted_n"] + t2["predicted_n"], "ms": t1["predicted_ms"] + t2["predicted_ms"],
            "prompt_ms": t1["prompt_ms"] + t2["prompt_ms"], "drafted": t1["draft_n"] + t2["draft_n"],
            "accepted": t1["draft_n_accepted"] + t2["draft_n_accepted"],
            "read_path_ok": len(calls) == 1 and json.loads(call.function.arguments).get("path") == path,
            "written": out, "edited": out is not None and out.get("content") not in (None, text),
            "lines_written": len(str((out or {}).get("content", "")).splitlines())}


def tps(samples: list) -> float:
    """Decode tok/s over samples: their tokens over their decode time."""
    return sum(s.info["n"] for s in samples) / max(sum(s.info["ms"] for s in samples) / 1e3, 1e-9)


def loop(client: OpenAI, tasks: int, max_tokens: int) -> tuple[list[str], dict]:
    rows, abs_, out = [], [], []
    for i in range(tasks):
        path, text, change = task(i)

        def measure(name: str) -> tuple[float, dict]:
            r = agent_task(client, i, name, max_tokens)
            return r["n"] / max(r["ms"] / 1e3, 1e-9), r

        ab = interleave(["auto"], 1, measure, say=progress(f"task {i + 1}"))
        abs_.append(ab)
        a, b = ab.last("auto"), ab.last("none")
        got = {"file": path, "lines": len(text.splitlines()), "change": change, "speedup": ab.ratio("auto"),
               "e2e_plain_over_auto": ab.ratio("auto", lambda s: 1 / s.info["wall"]),
               "same_output": a["written"] == b["written"], "edited": a["edited"], "read_path_ok": a["read_path_ok"],
               "lines_written": a["lines_written"]}
        out.append(got)
        rows.append([i + 1, f"{path} ({got['lines']})", change[:48], f"{a['n']}/{b['n']}",
                     "yes" if got["same_output"] else "no",
                     "not JSON" if a["written"] is None else f"{a['lines_written']}{'' if a['edited'] else ' (same)'}",
                     f"{ab.value('none'):.1f}", f"{ab.value('auto'):.1f}", f"{got['speedup']:.2f}x",
                     f"{a['accepted']}/{a['drafted']}", f"{b['wall']:.1f} / {a['wall']:.1f}"])
    arms = {}
    for name in ("none", "auto"):
        samples = [s for ab in abs_ for s in ab.samples if s.config == name]
        arms[name] = {"decode_tps": tps(samples), "e2e_s_per_task": statistics.mean(s.info["wall"] for s in samples),
                      "prompt_s_per_task": statistics.mean(s.info["prompt_ms"] for s in samples) / 1e3}
    ratio = {"decode_tps_auto_over_plain": arms["auto"]["decode_tps"] / arms["none"]["decode_tps"],
             "e2e_plain_over_auto": arms["none"]["e2e_s_per_task"] / arms["auto"]["e2e_s_per_task"],
             "median_task_speedup": statistics.median(t["speedup"] for t in out),
             "median_task_e2e_plain_over_auto": statistics.median(t["e2e_plain_over_auto"] for t in out)}
    summary = [[f"{'plain (drafter none)' if n == 'none' else 'auto'}", f"{a['decode_tps']:.1f}",
                f"{a['e2e_s_per_task']:.2f}", f"{a['prompt_s_per_task']:.2f}"] for n, a in arms.items()]
    text = [markdown(["#", "file (lines)", "change", "tokens auto/plain", "same", "lines written", "plain tok/s",
                      "auto tok/s", "speedup", "accepted/drafted", "e2e plain / auto (s)"], rows), "",
            markdown(["arm", "decode tok/s over the loop", "end-to-end s/task", "prompt s/task"], summary),
            f"\ndecode tok/s auto / plain: {ratio['decode_tps_auto_over_plain']:.2f}x; end-to-end per task "
            f"plain / auto: {ratio['e2e_plain_over_auto']:.2f}x (per-task medians {ratio['median_task_speedup']:.2f}x"
            f", {ratio['median_task_e2e_plain_over_auto']:.2f}x)"]
    return text, {"tasks": out, "arms": arms, "ratio": ratio}


JSON_ASK = "Reply with only a JSON object with the keys path and content, content being the whole changed file."


def schema(client: OpenAI, tasks: int, max_tokens: int) -> tuple[list[str], dict]:
    response_format = {"type": "json_schema", "json_schema": {"name": "write_file", "schema": WRITE_SCHEMA,
                                                              "strict": True}}
    rows, samples, valid = [], {"unconstrained": [], "json_schema": []}, []
    for i in range(tasks):
        path, text, change = task(i)
        call = {"id": "call_read", "type": "function",
                "function": {"name": "read_file", "arguments": json.dumps({"path": path})}}
        msgs = read_turn(path, change) + [{"role": "assistant", "content": None, "tool_calls": [call]},
                                          {"role": "tool", "tool_call_id": "call_read", "content": text},
                                          {"role": "user", "content": JSON_ASK}]

        def measure(name: str) -> tuple[float, dict]:
            extra = {"response_format": response_format} if name == "json_schema" else {}
            # Both arms send the same conversation: each reads it afresh, or the second would find it cached.
            r = client.chat.completions.create(model="x", messages=msgs, tools=TOOLS, tool_choice="none",
                                               temperature=0, max_tokens=max_tokens, **extra,
                                               extra_body={"drafter": "auto", "cache_prompt": False})
            t = stats(r)
            return t["predicted_per_second"], {"n": t["predicted_n"], "ms": t["predicted_ms"], "written": written(r)}

        ab = interleave(["json_schema"], 1, measure, baseline="unconstrained", say=progress(f"schema {i + 1}"))
        for s in ab.samples:
            samples[s.config].append(s)
        got = ab.last("json_schema")["written"]
        valid.append(got is not None and set(got) == {"path", "content"})
        rows.append([i + 1, path, f"{ab.value('unconstrained'):.1f}", f"{ab.value('json_schema'):.1f}",
                     f"{ab.ratio('json_schema'):.3f}x", "yes" if valid[-1] else "no"])
    overall = tps(samples["json_schema"]) / tps(samples["unconstrained"])
    return ([markdown(["#", "file", "unconstrained auto tok/s", "json_schema auto tok/s", "ratio", "valid"], rows),
             f"\njson_schema / unconstrained decode tok/s over the tasks (both auto): {overall:.3f}x"],
            {"ratio": overall, "valid": valid, "unconstrained_tps": tps(samples["unconstrained"]),
             "json_schema_tps": tps(samples["json_schema"])})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--tasks", type=int, default=len(DOMAINS), help="how many of the tasks to run, from the first")
    ap.add_argument("--max-tokens", type=int, default=2048, help="cap on the write step's generated tokens")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="which parts to run, comma-separated")
    ap.add_argument("--threads", type=int, help="passed to the server (default: its own)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    sections = set(csv_list(args.sections))
    if unknown := sections - set(SECTIONS):
        ap.error(f"unknown section {sorted(unknown)[0]!r}; choose of {', '.join(SECTIONS)}")
    if not 1 <= args.tasks <= len(DOMAINS):
        ap.error(f"--tasks takes 1 to {len(DOMAINS)}, not {args.tasks}")
    for name in ("target", "draft"):
        if not Path(getattr(args, name)).is_file():
            ap.error(f"--{name} {getattr(args, name)}: no such file")
    print(f"$ python -m {__spec__.name} {' '.join(sys.argv[1:])}", flush=True)
    out, result = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args, "auto", Path(tmp) / "serve.log")
        try:
            client = OpenAI(base_url=server.url + "/v1", api_key="none", timeout=None, max_retries=0)
            if "loop" in sections:
                text, result["loop"] = loop(client, args.tasks, args.max_tokens)
                out += [f"## agent loop ({args.tasks} tasks, read_file then write_file, up to {args.max_tokens} "
                        "tokens a write; drafter auto against none, interleaved)", "", *text]
            if "schema" in sections:
                text, result["schema"] = schema(client, args.tasks, args.max_tokens)
                out += ["", "## the write step as json_schema output against unconstrained (both auto)", "", *text]
        except APIError as e:
            raise SystemExit(f"agent_loop: the server refused a request: {e}") from None
        finally:
            server.stop()
    print("\n" + "\n".join(out))
    write_json(args.json, result)


if __name__ == "__main__":
    run_serving(main)
