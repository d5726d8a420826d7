"""Render and store `specgen bench` results: tables, JSON/CSV/Markdown, bar charts, comparisons.

Everything here reads the result dict built by `runner.build_result` (or a
JSON file of it), so a result can be re-rendered or compared long after the
run, on another machine.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .runner import FORMAT, best_row, recommend
from ..errors import SpecgenError, is_finite_number, kind_of, printable, shorten
from ..fileio import home_path, os_problem, parse_json, read_regular, real_path, replaces, write_atomic


# ---------------------------------------------------------------- shared shape

@dataclass
class Block:
    """The summary rows of one pair at one temperature: one leaderboard table."""
    pair: str
    temperature: float
    categories: list[str]
    """Per-category columns, in run order, without "overall"."""
    configs: list[str]
    rows: dict[tuple[str, str], dict]
    """(config label, category) -> summary row."""

    def get(self, config: str, category: str) -> dict | None:
        return self.rows.get((config, category))


def blocks(summary: Iterable[dict]) -> list[Block]:
    out: dict[tuple[str, float], Block] = {}
    for s in summary:
        b = out.setdefault((s["pair"], s["temperature"]), Block(s["pair"], s["temperature"], [], [], {}))
        if s["category"] != "overall" and s["category"] not in b.categories:
            b.categories.append(s["category"])
        if s["config"] not in b.configs:
            b.configs.append(s["config"])
        b.rows[(s["config"], s["category"])] = s
    return list(out.values())


def mode(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"T={temperature:g}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0%}"


def _num(v: float | None, digits: int = 1) -> str:
    return "—" if not v else f"{v:.{digits}f}"


def leaderboard(block: Block, best: str | None) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and footnotes of a Spec-Bench-shaped table (speedup per category, overall, #MAT)."""
    # Categories come from a prompt file and pair names from file names: shown, never obeyed by the terminal.
    header = ["config", *map(printable, block.categories), "overall", "#mean accepted", "accepted", "decode tok/s",
              "draft time", "prompt tok/s"]
    rows, notes = [], []
    for cfg in block.configs:
        ov = block.get(cfg, "overall")
        label = printable(cfg) + (" ★" if cfg == best else "")
        if ov.get("n_diverged"):
            label += " ≠"
        cells = [label, *(_x(block.get(cfg, c)["speedup"]) if block.get(cfg, c) else "—" for c in block.categories),
                 _x(ov["speedup"]), f"{ov['mean_accepted']:.2f}",
                 "—" if ov["drafter"] == "none" else _pct(ov["acceptance_rate"]),
                 _num(ov["decode_tps"]), "—" if ov["drafter"] == "none" else _pct(ov["draft_share"]),
                 _num(ov["prompt_tps"], 0)]
        rows.append(cells)
    if best:
        notes.append("★ fastest overall" if best != "none" else "★ no configuration beat plain decoding")
    diverged = sum(block.get(c, "overall").get("n_diverged") or 0 for c in block.configs)
    if diverged:
        notes.append(f"≠ output differed from plain decoding in {diverged} run(s): near-ties that batched and "
                     "single-token kernels round differently, or a bug")
    return header, rows, notes


def _title(block: Block, result: dict) -> str:
    base = block.get("none", "overall")
    extra = f", plain decoding {base['decode_tps']:.1f} tok/s" if base else ""
    rss = max((r.get("peak_rss_mb") or 0 for r in block.rows.values()), default=0)
    if rss:
        extra += f", peak RSS {rss:.0f} MB"
    n = (base or next(iter(block.rows.values())))["n_prompts"]
    return (f"{printable(block.pair)} — {mode(block.temperature)}, {result['settings'].get('max_tokens', '?')} "
            f"tokens, {n} prompts{extra}")


def _best(result: dict, block: Block) -> str | None:
    """The configuration to highlight: the fastest one, or plain decoding when none beats it."""
    row = best_row(result["summary"], block.pair, block.temperature)
    if row is None:
        return None
    return row["config"] if row["speedup"] > 1.0 else "none"


# ---------------------------------------------------------------- terminal

def partial_note(result: dict) -> str | None:
    if not result["settings"].get("interrupted"):
        return None
    return f"interrupted: partial results from the {len(result['runs'])} runs that finished"


def tables(result: dict, width: int = 200) -> Group:
    """The leaderboards, laid out to fit *width* columns.

    Categories across when that fits; otherwise transposed (categories down,
    configurations across, in as many side-by-side groups as the width needs),
    so that no header is cut to an ellipsis on an 80-column terminal.
    """
    parts: list[Any] = []
    if partial_note(result):
        parts.append(Text(partial_note(result), style="bold yellow"))
    for block in blocks(result["summary"]):
        best = _best(result, block)
        header, rows, notes = leaderboard(block, best)
        # The title as its own line: a table title would wrap at the table's width.
        parts.append(Text(_title(block, result), style="bold"))
        styles = ["bold green" if cfg == best else ("dim" if cfg == "none" else None) for cfg in block.configs]
        table = _table(header, rows, styles)
        if _width(table) <= width:
            parts.append(table)
        else:
            parts += _transposed(header, rows, styles, width)
        if notes:
            parts.append(Text(" · ".join(notes), style="italic"))
        parts.append(Text(""))
    return Group(*parts)


def _table(header: list[str], rows: list[list[str]], styles: list[str | None]) -> Table:
    # Text cells, never markup: a category named "[/x]" is shown as such on any console.
    table = Table(header_style="bold", box=None, pad_edge=False)
    for i, h in enumerate(header):
        table.add_column(Text(h), justify="left" if i == 0 else "right", no_wrap=True)
    for cells, style in zip(rows, styles):
        table.add_row(*map(Text, cells), style=style)
    return table


def _width(table: Table) -> int:
    from rich.console import Console

    return Console(width=10_000).measure(table).maximum


def _transposed(header: list[str], rows: list[list[str]], styles: list[str | None], width: int) -> list[Table]:
    """One line per category or figure, one column per configuration, split into groups that fit."""
    first = max(len(h) for h in header[1:])
    groups: list[list[int]] = [[]]
    used = first
    for i, cells in enumerate(rows):
        w = max(len(c) for c in cells) + 2
        if groups[-1] and used + w > width:
            groups.append([])
            used = first
        groups[-1].append(i)
        used += w
    out = []
    for group in groups:
        table = Table(header_style="bold", box=None, pad_edge=False)
        table.add_column("", no_wrap=True)
        for i in group:
            table.add_column(Text(rows[i][0]), justify="right", no_wrap=True, header_style=styles[i] or "bold")
        for r, name in enumerate(header[1:], start=1):
            table.add_row(Text(name), *(Text(rows[i][r]) for i in group))
        out.append(table)
    return out


class ProgressLog:
    """One plain line per finished run, for logs: a long benchmark in a script is not silent until it ends."""

    def __init__(self, total: int, with_pair: bool = False):
        self.total, self.with_pair, self.done = total, with_pair, 0
        self.speedups: dict[tuple, list[float]] = {}

    def line(self, row: dict) -> str:
        from .runner import geomean

        self.done += 1
        where = f"{row['pair']} " if self.with_pair else ""
        head = printable(f"[{self.done}/{self.total}] {where}{row['category']} #{row['question_id']} "
                         f"{row['config']} {mode(row['temperature'])}: {row['decode_tps']:.1f} tok/s")
        if row["role"] == "baseline":
            return head
        seen = self.speedups.setdefault((row["pair"], row["temperature"], row["config"]), [])
        seen.append(row["speedup"])
        return f"{head}, {row['speedup']:.2f}x (running {geomean(seen):.2f}x over {len(seen)})"


def recommendation_lines(result: dict) -> list[str]:
    recs = result.get("recommendations") or []
    many = len(recs) > 1
    out = []
    for r in recs:
        rec = recommend(result["summary"], r["pair"])
        if rec is not None:
            out.append(printable(rec.line(with_pair=many)))
    return out


def bar_chart(result: dict, width: int = 40) -> Group:
    """Speedup per category and configuration as text bars; the tick marks 1.00x (plain decoding)."""
    parts: list[Any] = []
    for block in blocks(result["summary"]):
        configs = [c for c in block.configs if c != "none"]
        values = [block.get(c, cat)["speedup"] for cat in [*block.categories, "overall"] for c in configs
                  if block.get(c, cat)]
        top = max([1.0, *values]) * 1.05
        one = round(width / top)
        parts.append(Text(f"speedup over plain decoding — {printable(block.pair)}, {mode(block.temperature)}",
                          style="bold"))
        pad = max(len(c) for c in configs)
        for cat in [*block.categories, "overall"]:
            parts.append(Text(f"  {printable(cat)}", style="bold" if cat == "overall" else None))
            for c in configs:
                row = block.get(c, cat)
                if row is None:
                    continue
                n = min(round(row["speedup"] / top * width), width)
                fill = "green" if row["speedup"] >= 1 else "red"
                bar = Text(f"    {c:<{pad}} ")
                bar.append("█" * min(n, one), style=fill)
                if n > one:
                    bar.append("┃", style="bold")
                    bar.append("█" * (n - one - 1), style=fill)
                    bar.append(" " * (width - n))
                else:
                    bar.append(" " * (one - n))
                    bar.append("│", style="bold")
                    bar.append(" " * (width - one - 1))
                bar.append(f" {row['speedup']:.2f}x")
                parts.append(bar)
        parts.append(Text(""))
    return Group(*parts)


# ---------------------------------------------------------------- files

def check_output_path(path: Path | None, flag: str) -> None:
    """Fail before a long run, not after it, when an output cannot be written."""
    if path is None:
        return
    path = home_path(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as e:  # a link loop, a path through a file
        raise SpecgenError(f"{flag} {path}: {os_problem(e)}") from None
    if path.is_dir():
        raise SpecgenError(f"{flag} {path}: is a directory; give a file name")
    parent = path.resolve().parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise SpecgenError(f"{flag} {path}: {parent} {what}; give a path in an existing folder")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise SpecgenError(f"{flag} {path}: permission denied; give a file you can write")
        return
    try:  # the only sure test that a file can be made here (read-only mounts, ACLs, root)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".specgen-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SpecgenError(f"{flag} {path}: cannot create a file in {parent} ({os_problem(e)}); "
                           "give a path you can write") from None


def check_outputs(outputs: Iterable[tuple[Path | None, str]], inputs: Iterable[tuple[Path, str]] = ()) -> None:
    """`check_output_path` for each (path, flag), no file named twice (the second output would silently
    replace the first) and no output that is one of the *inputs* (path, flag): the result would replace the
    file it was measured on."""
    inputs = [(home_path(path), flag) for path, flag in inputs]
    seen: list[tuple[Path, str]] = []
    for path, flag in outputs:
        check_output_path(path, flag)
        if path is None:
            continue
        p = home_path(path)
        for source, source_flag in inputs:
            if _same_file(p, source):
                raise SpecgenError(f"{flag} names the {source_flag} file {path}: the result would replace it; "
                                   "give the output its own name")
        if not replaces(p):  # /dev/stdout, /dev/null, a pipe: each output goes through in turn
            continue
        for other, other_flag in seen:
            if _same_file(p, other):
                raise SpecgenError(f"{other_flag} and {flag} name the same file ({path}); give each its own")
        seen.append((p, flag))


def _same_file(a: Path, b: Path) -> bool:
    """Whether *a* and *b* lead to one file: by name through any links, or (a hard link) by identity."""
    if real_path(a) == real_path(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them is not there (yet): only its name could match
        return False


def save_outputs(result: dict, outputs: list[tuple[Path, Callable[[dict, Path], None]]]) -> dict[Path, str]:
    """Write each output; one that fails goes to a temporary file instead, so a long run is never lost.

    Every writer replaces its file in one step (a failure or Ctrl+C leaves the old file or none, never half
    of one).  Returns, for each output that could not be written where asked, a line saying where it went.
    """
    failed: dict[Path, str] = {}
    for path, write in outputs:
        try:
            write(result, home_path(path))  # where check_outputs looked
        except OSError as e:
            fd, spare = tempfile.mkstemp(prefix="specgen-bench-", suffix=path.suffix or ".out")
            os.close(fd)
            write(result, Path(spare))
            failed[path] = f"could not write {path} ({os_problem(e)}); saved it to {spare}"
    return failed


def write_json(result: dict, path: Path) -> None:
    """Indented, except one line per run and summary row (runs carry their tokens)."""
    parts = []
    for key, value in result.items():
        if key in ("runs", "summary") and value:
            body = "[\n" + ",\n".join("  " + json.dumps(v) for v in value) + "\n ]"
        else:
            body = json.dumps(value, indent=1).replace("\n", "\n ")
        parts.append(f" {json.dumps(key)}: {body}")
    write_atomic(path, "{\n" + ",\n".join(parts) + "\n}\n")


CSV_FIELDS = ["pair", "config", "drafter", "draft_max", "temperature", "category", "n_prompts", "n_runs",
              "speedup", "decode_tps", "baseline_tps", "acceptance_rate", "mean_accepted", "prompt_tps",
              "draft_seconds", "verify_seconds", "draft_share", "generated_tokens", "steps", "drafted", "accepted",
              "n_diverged", "drafter_steps", "peak_rss_mb"]


def write_csv(result: dict, path: Path) -> None:
    """The summary rows, one per pair x configuration x temperature x category."""
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for s in result["summary"]:
        row = dict(s)
        row["drafter_steps"] = " ".join(f"{k}:{v}" for k, v in sorted(s["drafter_steps"].items()))
        w.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_FIELDS})
    write_atomic(path, f.getvalue())


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# specgen bench", ""]
    lines.append(f"- machine: {m.get('cpu')}, {m.get('cores_physical') or '?'} cores "
                 f"({m.get('cores_logical')} logical), {m.get('threads')} threads, "
                 f"{m.get('backend_detail') or m.get('backend')}, {m.get('platform')}")
    lines.append(f"- specgen {m.get('specgen')}, llama-cpp-python {m.get('llama_cpp_python')}, "
                 f"started {m.get('started')}, {m.get('seconds')} s")
    for p in m.get("pairs", []):
        models = [f"{p['target']['path']} (sha256 {p['target']['sha256'][:12]}…)"]
        if p.get("draft"):
            models.append(f"{p['draft']['path']} (sha256 {p['draft']['sha256'][:12]}…)")
        lines.append(f"- {p['pair']}: " + " + ".join(models))
    lines += [f"- command: `{m.get('command')}`", ""]
    if partial_note(result):
        lines += [f"**{partial_note(result)}**", ""]
    for block in blocks(result["summary"]):
        best = _best(result, block)
        header, rows, notes = leaderboard(block, best)
        lines += [f"## {_title(block, result)}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for cfg, cells in zip(block.configs, rows):
            if cfg == best:
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += [n + "  " for n in notes]
        if notes:
            lines.append("")
    lines += [f"**{line}**" for line in recommendation_lines(result)]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(result: dict, path: Path) -> None:
    write_atomic(path, markdown(result))


def check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SpecgenError("--plot needs matplotlib: pip install 'specgen[plot]' "
                           "(without --plot a bar chart is printed in the terminal)") from None


def write_plot(result: dict, path: Path) -> None:
    """Speedup per category (x) and configuration (bars), one panel per pair and temperature."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    bl = blocks(result["summary"])
    fig, axes = plt.subplots(len(bl), 1, figsize=(max(6.0, 1.4 * (len(bl[0].categories) + 1) + 2), 3.6 * len(bl)),
                             squeeze=False)
    for ax, block in zip(axes[:, 0], bl):
        cats = [*block.categories, "overall"]
        configs = [c for c in block.configs if c != "none"]
        width = 0.8 / max(len(configs), 1)
        for i, cfg in enumerate(configs):
            xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(cats))]
            ys = [(block.get(cfg, c) or {}).get("speedup") or 0.0 for c in cats]
            ax.bar(xs, ys, width, label=cfg)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=20, ha="right")
        ax.set_ylabel("speedup over plain")
        ax.set_title(f"{block.pair} — {mode(block.temperature)}")
        ax.legend(fontsize="small", ncol=min(len(configs), 4))
    fig.tight_layout()
    kind = path.suffix.lstrip(".").lower()  # .svg, .pdf ... as named; PNG otherwise
    image = io.BytesIO()
    fig.savefig(image, dpi=120, format=kind if kind in fig.canvas.get_supported_filetypes() else "png")
    plt.close(fig)
    write_atomic(path, image.getvalue())


# ---------------------------------------------------------------- compare

_RESULT = "a `specgen bench --json` result"

RESULT_FIELDS = {"machine": "an object", "summary": "an array"}
"""The parts of a result file `compare` reads, and the kind of value (as `kind_of` names it) each must be."""

MACHINE_FIELDS = {"cpu": "a string", "threads": "a number", "backend": "a string", "backend_detail": "a string",
                  "started": "a string"}
"""What `compare` shows of the machine, when a result has it, and the kind of value each must be."""

SUMMARY_FIELDS = {"pair": "a string", "config": "a string", "category": "a string", "temperature": "a number",
                  "speedup": "a number", "decode_tps": "a number", "mean_accepted": "a number"}
"""What `compare` reads of each summary row, and the kind of value each must be."""


def _check_fields(obj: dict, fields: dict[str, str], where: str, what: str | None = None,
                  optional: bool = False) -> None:
    """Refuse *obj* when it lacks one of *fields* (then it is not *what*; *optional* ones may be left out) or
    holds one as another kind of value."""
    missing = [key for key in fields if key not in obj]
    if missing and not optional:
        raise SpecgenError(f"{where} lacks {' and '.join(missing)}" + (f": not {what}" if what else ""))
    for key, kind in fields.items():
        if key not in obj:
            continue
        value = obj[key]
        if kind_of(value) != kind:
            raise SpecgenError(f"{where}: `{key}` must be {kind}, not {kind_of(value)}")
        if kind == "a number" and not is_finite_number(value):  # an int past the largest float
            raise SpecgenError(f"{where}: `{key}` is a number too large to show ({len(str(abs(value)))} digits)")


def load_result(path: Path) -> dict:
    """A result file, checked here, once, for everything `compare` reads: a file of another shape (a hand
    edit, another program's JSON) is one line naming the file and what is wrong in it."""
    path = home_path(path)
    raw = read_regular(path, _RESULT)
    try:
        data = parse_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecgenError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(data, dict):
        raise SpecgenError(f"{path}: not {_RESULT} (it holds {kind_of(data)}, not an object)")
    version = data.get("specgen_bench", FORMAT)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecgenError(f"{path}: `specgen_bench` (the format) must be a whole number from 1, not "
                           f"{shorten(json.dumps(version), 30)}")
    if version > FORMAT:
        raise SpecgenError(f"{path}: written by a newer specgen (format {version}); upgrade to read it")
    _check_fields(data, RESULT_FIELDS, str(path), _RESULT)
    _check_fields(data["machine"], MACHINE_FIELDS, f"{path}: machine", optional=True)
    for i, row in enumerate(data["summary"]):
        if not isinstance(row, dict):
            raise SpecgenError(f"{path}: summary row {i} must be an object, not {kind_of(row)}")
        _check_fields(row, SUMMARY_FIELDS, f"{path}: summary row {i}")
    return data


def _machine_line(name: str, path: Path, r: dict) -> str:
    m = r["machine"]
    return printable(f"{name}: {path} — {m.get('cpu')}, {m.get('threads')} threads, "
                     f"{m.get('backend_detail') or m.get('backend')}, {m.get('started', '?')}")


def compare(a: dict, b: dict, path_a: Path, path_b: Path) -> Group:
    """Side by side: each cell is A → B, for every pair, temperature and configuration in either file."""
    parts: list[Any] = [Text(_machine_line("A", path_a, a)), Text(_machine_line("B", path_b, b)), Text("")]
    ba = {(x.pair, x.temperature): x for x in blocks(a["summary"])}
    bb = {(x.pair, x.temperature): x for x in blocks(b["summary"])}
    for key in dict.fromkeys([*ba, *bb]):
        xa, xb = ba.get(key), bb.get(key)
        cats = list(dict.fromkeys([*(xa.categories if xa else []), *(xb.categories if xb else [])]))
        configs = list(dict.fromkeys([*(xa.configs if xa else []), *(xb.configs if xb else [])]))
        where = "" if xa and xb else f" (only in {'A' if xa else 'B'})"
        table = Table(title=Text(printable(f"{key[0]} — {mode(key[1])}: A → B{where}")), title_justify="left",
                      header_style="bold", box=None, pad_edge=False)
        table.add_column("config", no_wrap=True)
        for h in [*cats, "overall", "#mean accepted", "decode tok/s"]:
            table.add_column(Text(printable(h)), justify="right", no_wrap=True)

        def cell(cfg: str, cat: str, field: str, fmt) -> str:
            va = xa.get(cfg, cat) if xa else None
            vb = xb.get(cfg, cat) if xb else None
            return f"{fmt(va[field]) if va else '—'} → {fmt(vb[field]) if vb else '—'}"

        for cfg in configs:
            table.add_row(Text(printable(cfg)), *(cell(cfg, c, "speedup", _x) for c in [*cats, "overall"]),
                          cell(cfg, "overall", "mean_accepted", lambda v: f"{v:.2f}"),
                          cell(cfg, "overall", "decode_tps", lambda v: f"{v:.1f}"),
                          style="dim" if cfg == "none" else None)
        parts += [table, Text("")]
    return Group(*parts)
