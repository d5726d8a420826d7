"""`specgen bench` and `specgen bench compare`: measure configurations here, render the result."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from ..bench import runner
from ..bench import workload
from ..bench import report
from ..errors import SpecgenError, printable
from ..sampling import SamplingParams
from ..settings import DRAFTERS, check_count, check_draft, check_given, parse_draft_max, shown_draft_max, \
    uses_draft_model
from . import app
from .messages import warn
from .options import EngineFlags, engine_command, path_flag, warn_context

bench_app = typer.Typer(no_args_is_help=False)
app.add_typer(bench_app, name="bench")

M, W, O = "Models", "Workload", "Output"


@bench_app.callback(invoke_without_command=True)
@engine_command(sampling=False)
def bench(
    context: typer.Context,
    pair: Annotated[Optional[List[str]], typer.Option(
        metavar="NAME", help="A pair from models.yaml (repeatable); default: the default pair.",
        rich_help_panel=M)] = None,
    drafter: Annotated[Optional[List[str]], typer.Option(
        metavar="LIST", help="Drafters to compare with plain decoding, comma-separated: "
                             f"{', '.join(d for d in DRAFTERS if d != 'none')}; NAME/N fixes one's draft length "
                             "(default: auto,ngram and, with a draft model, model).", rich_help_panel=W)] = None,
    draft_max: Annotated[Optional[List[str]], typer.Option(
        metavar="LIST", help="Draft lengths, comma-separated numbers or auto (default: auto).",
        rich_help_panel=W)] = None,
    temperature: Annotated[Optional[List[str]], typer.Option(
        metavar="LIST", help="Temperatures, comma-separated (default: 0, greedy).", rich_help_panel=W)] = None,
    prompts: Annotated[Optional[List[str]], typer.Option(
        metavar="SUITE", help="builtin:NAME (code-writing, code-editing, chat, summarization, all; and infill, "
                              "fill-in-the-middle for code models) or a Spec-Bench question.jsonl; repeatable "
                              "(default: builtin:all).",
        rich_help_panel=W)] = None,
    categories: Annotated[Optional[List[str]], typer.Option(
        metavar="LIST", help="Only these categories, comma-separated.", rich_help_panel=W)] = None,
    limit: Annotated[Optional[int], typer.Option(help="At most N prompts per category.", rich_help_panel=W)] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate per turn.", rich_help_panel=W)] = 128,
    repeat: Annotated[int, typer.Option(help="Runs of each prompt and configuration (medians are "
                                              "reported).", rich_help_panel=W)] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the sampling runs (T > 0): the same seed repeats them.",
                                      rich_help_panel=W)] = 0,
    json_path: Annotated[Optional[Path], typer.Option(
        "--json", help="Write machine, runs and summary as JSON.", parser=path_flag("--json"), metavar="<path>",
        rich_help_panel=O)] = None,
    csv_path: Annotated[Optional[Path], typer.Option(
        "--csv", help="Write the summary rows as CSV.", parser=path_flag("--csv"), metavar="<path>",
        rich_help_panel=O)] = None,
    markdown_path: Annotated[Optional[Path], typer.Option(
        "--markdown", help="Write the tables as Markdown.", parser=path_flag("--markdown"), metavar="<path>",
        rich_help_panel=O)] = None,
    plot: Annotated[Optional[Path], typer.Option(
        help="Draw speedups to a PNG (needs matplotlib, the `plot` extra).", parser=path_flag("--plot"),
        metavar="<path>", rich_help_panel=O)] = None,
    save: Annotated[bool, typer.Option(
        "--save", help="Store the recommendation as the pair's default for run and chat.", rich_help_panel=O)] = False,
    *,
    flags: EngineFlags,
) -> None:
    """Compare plain decoding with drafters and draft lengths on your prompts, on this machine.

    Each prompt runs plain and with each configuration, interleaved; the table
    shows the speedup per category (Spec-Bench's shape) and the line under it
    what to use.  `specgen bench compare A.json B.json` puts two results side by side.
    """
    if context.invoked_subcommand is not None:
        return
    # Everything that can be wrong with the arguments fails here, before minutes of loading and running.
    for name, values in (("--pair", pair), ("{drafter}", drafter), ("{draft_max}", draft_max),
                         ("{temperature}", temperature), ("--prompts", prompts), ("--categories", categories)):
        for value in values or ():
            check_given(name, value)
    draft_maxes = workload.parse_draft_maxes(workload.split_list(draft_max) or ["auto"])
    chosen = workload.make_configs(workload.split_list(drafter), draft_maxes) if drafter else None
    drafters = list(dict.fromkeys(c.drafter for c in chosen or ()))
    temperatures = workload.parse_temperatures(workload.split_list(temperature) or ["0"])
    check_count("max_tokens", max_tokens)
    check_count("repeat", repeat)
    SamplingParams(seed=seed).check()
    flags.check_numbers()
    prompts = prompts or ["builtin:all"]
    # Before anything is read: an output that is an input would replace the user's suite or model.
    inputs = [(path, "--prompts") for path in workload.suite_paths(prompts)]
    inputs += [(path, flag) for path, flag in ((flags.target, "--target"), (flags.draft, "--draft")) if path]
    report.check_outputs([(json_path, "--json"), (csv_path, "--csv"), (markdown_path, "--markdown"), (plot, "--plot")],
                         inputs=inputs)
    questions = workload.select(workload.load_questions(prompts), workload.split_list(categories), limit)
    if plot is not None:
        report.check_plot_available()
    pairs = workload.split_list(pair)
    target, draft = flags.target, flags.draft
    if target is not None and len(pairs) > 1:
        raise SpecgenError("--target/--draft replace one side of a pair; give at most one --pair with them")
    if save and target is not None:
        raise SpecgenError("--save stores the recommendation under a pair name; use --pair (see `specgen list`, "
                           "`specgen pair add`) instead of --target/--draft")
    if draft is not None and target is None and not pairs:
        raise SpecgenError("--draft needs --target (or a --pair whose draft it replaces)")
    flags.rpc_workers()

    specs = []
    for name in pairs or [None]:
        r = flags.resolve(name)
        use = drafters or ["auto", "ngram", *(["model"] if r.draft else [])]
        for d in use:
            check_draft(d, r.draft)
        needs_draft = any(uses_draft_model(d) for d in use)
        loaded_draft = r.draft if needs_draft else None
        label = r.pair or (f"{r.target.stem}+{loaded_draft.stem}" if loaded_draft else r.target.stem)
        # One engine per pair that can run every configuration; the runner switches between them.
        opts = flags.options_for(r.target, loaded_draft, "auto" if needs_draft else "ngram", None)
        for line in opts.check():
            warn(line)
        specs.append((runner.PairSpec(label, opts, registry_pair=r.pair is not None and target is None), use))
    # One plan for all pairs, so their tables line up; a pair without a draft model gets no model rows.
    plan_drafters = list(dict.fromkeys(d for _, use in specs for d in use))
    configs = chosen or workload.make_configs(plan_drafters, draft_maxes)
    plan = workload.Plan(questions, configs, temperatures, max_tokens, repeat, seed=seed)
    if len(specs) > 1 and any("model" not in use for _, use in specs) and "model" in plan_drafters:
        raise SpecgenError("some pairs have no draft model; leave `model` out of --drafter to compare them")
    settings = {"prompts": prompts, "limit": limit, "drafters": workload.split_list(drafter) or plan_drafters,
                "draft_max": [shown_draft_max(c) for c in draft_maxes], "seed": seed}

    # No markup on either console: category and pair names from files are text, "[/x]" included.
    err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
    result, interrupted = _run(err, [s for s, _ in specs], plan, settings)
    if result is None:
        raise KeyboardInterrupt

    outputs = [(path, write) for path, write in ((json_path, report.write_json), (csv_path, report.write_csv),
                                                 (markdown_path, report.write_markdown), (plot, report.write_plot))
               if path is not None]
    out = Console(highlight=False, markup=False)
    try:
        out.print(report.tables(result, out.width))
        for line in report.recommendation_lines(result):
            out.print(line, style="bold", soft_wrap=True)  # whole, however narrow: scripts grep for it
        if plot is None:
            out.print()
            out.print(report.bar_chart(result))
    finally:  # a stdout that cannot be written (a full disk) must not cost the results
        failed = report.save_outputs(result, outputs)
        for path, _ in outputs:
            if path not in failed:
                err.print(f"wrote {path}")
    if failed:
        raise SpecgenError("; ".join(failed.values()))
    if interrupted:
        raise KeyboardInterrupt  # after the partial results are out; main() exits 130
    if save:
        from ..models.userfile import save_local_default

        for rec in result["recommendations"]:
            written = save_local_default(rec["pair"], rec["drafter"], parse_draft_max(rec["draft_max"]))
            err.print(f"saved for {rec['pair']}: --drafter {rec['drafter']} --draft-max {rec['draft_max']} "
                      f"({written})")


def _run(err: Console, specs: list[runner.PairSpec], plan: workload.Plan,
         settings: dict) -> tuple[dict | None, bool]:
    """The result, and whether Ctrl+C cut it short (then it holds the runs finished so far, or is None)."""
    total = plan.generations() * len(specs)
    infos: list[dict] = []
    runs: list[dict] = []
    started = time.time()
    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                        transient=True, disable=not err.is_terminal)
    # Off a terminal (a log, a script) the bar is hidden: one plain line per run instead.
    lines = None if err.is_terminal else report.ProgressLog(
        len(plan.questions) * len(plan.temperatures) * plan.repeat * (2 * len(plan.configs) + 1) * len(specs),
        with_pair=len(specs) > 1)
    try:
        with progress:
            task = progress.add_task("loading", total=total)
            for ev in runner.run_bench(specs, plan, settings):
                if isinstance(ev, runner.Finished):
                    return ev.result, False
                _show(ev, progress, task, plan)
                if isinstance(ev, runner.PairLoaded):
                    infos.append(ev.info)
                    warn_context(next(s.options for s in specs if s.name == ev.info["pair"]), ev.info["n_ctx"])
                elif isinstance(ev, runner.Run):
                    runs.append(ev.row)
                    if lines is not None:
                        print(lines.line(ev.row), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        if not runs:
            return None, True
        err.print(f"interrupted: reporting the {len(runs)} runs finished so far")
        return runner.build_result(infos, runs, plan, {**settings, "interrupted": True}, started), True
    raise SpecgenError("the benchmark ended without a result")


def _show(ev: runner.BenchEvent, progress: Progress, task, plan: workload.Plan) -> None:
    if isinstance(ev, runner.PairLoading):
        progress.update(task, description=printable(f"{ev.pair}: loading"))
    elif isinstance(ev, runner.Generating):
        q = ev.question
        what = "warm-up" if ev.repeat < 0 else f"T={ev.temperature:g} repeat {ev.repeat + 1}/{plan.repeat}"
        turn = f" turn {ev.turn + 1}" if len(q.turns) > 1 else ""
        progress.update(task, description=printable(f"{ev.pair} · {q.category} #{q.question_id}{turn} · "
                                                    f"{ev.config.label} · {what}"))
    elif isinstance(ev, runner.Generated):
        progress.advance(task)


@bench_app.command("compare")
def compare(
    a: Annotated[Path, typer.Argument(help="A result written by `specgen bench --json`.")],
    b: Annotated[Path, typer.Argument(help="Another one.")],
) -> None:
    """Print two bench results side by side (each cell: A → B)."""
    ra, rb = report.load_result(a), report.load_result(b)
    out = Console(highlight=False, markup=False)
    if not out.is_terminal:
        out = Console(highlight=False, markup=False, width=max(out.width, 200))
    out.print(report.compare(ra, rb, a, b))
