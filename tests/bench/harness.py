"""The A/B harness every benchmark script here runs on: interleaved rounds, medians, ratio tables, JSON.

A shared machine's speed drifts (other jobs, clocks, page reclaim) by more than the effects measured
here, so no configuration is timed in a block of its own.  Each configuration runs between two runs of
the baseline, A B A C A ..., the baseline after one configuration serving as the one before the next,
and its ratio is its value over the geometric mean of those two: drift hits both sides of every ratio,
as in `specgen bench`.  Over rounds, a configuration's ratio is the median.

Not a script: the scripts import it (`python -m tests.bench.NAME` from the repository root).
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

CODE_WRITE = ("Write a Python module that implements an LRU cache class with get, put, delete and "
              "resize methods, with docstrings and type hints, plus a small command-line demo.")
CODE_EDIT = ("Rewrite this module with two renames: the class `Inventory` becomes `Warehouse` and the "
             "method `restock` becomes `replenish`. Change nothing else and output the whole module.\n\n"
             "```python\n" + (HERE / "inventory.py").read_text() + "```")
PROMPTS = {"code-write": CODE_WRITE, "code-edit": CODE_EDIT}
"""The code benchmarks' prompts: code-write, with nothing to copy from the prompt, and code-edit, nearly all copy."""


def prompt_text(name: str) -> str:
    """A prompt of PROMPTS by name, else *name* itself as the prompt."""
    return PROMPTS.get(name, name)


def code_suite(path: Path, names: Sequence[str]) -> Path:
    """PROMPTS by *names* as a Spec-Bench question file, each its own category, for `specgen bench --prompts`."""
    path.write_text("".join(json.dumps({"question_id": n, "category": n, "turns": [PROMPTS[n]]}) + "\n"
                            for n in names))
    return path


def specgen_exe() -> str:
    """The `specgen` command of the Python running this script."""
    return str(Path(sys.executable).parent / "specgen")


def run_serving(main: Callable[[], None]) -> None:
    """The entry of a script that starts servers: offline, and SIGTERM (what `timeout` sends) exits through
    the `finally` blocks that stop them, so none is orphaned."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()


def csv_list(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


@dataclass
class Sample:
    config: str
    round: int
    value: float
    """What the measurement returned (a rate, a time): ratios divide it by the baseline's."""
    info: dict = field(default_factory=dict)


@dataclass
class AB:
    """The samples of one interleaved A/B, in the order they ran: every configuration's between two baselines."""

    baseline: str
    configs: list[str]
    samples: list[Sample] = field(default_factory=list)

    def values(self, config: str) -> list[float]:
        return [s.value for s in self.samples if s.config == config]

    def ratios(self, config: str, of: Callable[[Sample], float] | None = None) -> list[float]:
        """Each sample's value (or what *of* reads from it) over the geometric mean of the baseline's around it."""
        of = of or (lambda s: s.value)
        return [of(s) / math.sqrt(of(self.samples[i - 1]) * of(self.samples[i + 1]))
                for i, s in enumerate(self.samples) if s.config == config]

    def value(self, config: str) -> float:
        return statistics.median(self.values(config))

    def ratio(self, config: str, of: Callable[[Sample], float] | None = None) -> float:
        return statistics.median(self.ratios(config, of))

    def last(self, config: str) -> dict:
        """The info of the configuration's latest sample."""
        return next(s.info for s in reversed(self.samples) if s.config == config)

    def to_json(self) -> dict:
        return {"baseline": self.baseline, "value": self.value(self.baseline), "values": self.values(self.baseline),
                "configs": {c: {"ratio": self.ratio(c), "ratios": self.ratios(c), "value": self.value(c),
                                "values": self.values(c)} for c in self.configs}}


def interleave(configs: Sequence[str], rounds: int, measure: Callable[[str], tuple[float, dict]],
               baseline: str = "none", say: Callable[[Sample, float], None] | None = None) -> AB:
    """Run *measure*(name) for the baseline and each configuration, A B A C A ..., *rounds* times over.

    *measure* returns (value, info); *say* hears of each configuration's sample and its ratio as they come.
    """
    ab = AB(baseline, list(configs))

    def run(name: str, r: int) -> None:
        value, info = measure(name)
        ab.samples.append(Sample(name, r, value, info))

    run(baseline, 0)
    for r in range(rounds):
        for name in configs:
            run(name, r)
            run(baseline, r)
            if say:
                say(ab.samples[-2], ab.ratios(name)[-1])
    return ab


def progress(label: str) -> Callable[[Sample, float], None]:
    """A *say* for `interleave`: one line on stderr per configuration's sample."""
    def say(s: Sample, ratio: float) -> None:
        print(f"{label} round {s.round + 1} {s.config}: {s.value:.3g}, {ratio:.3f}x the baseline",
              file=sys.stderr, flush=True)
    return say


def markdown(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; the first column left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def write_json(path: Path | str | None, result: dict) -> None:
    """The script's whole result as JSON, when asked for (--json)."""
    if path:
        Path(path).write_text(json.dumps(result, indent=1))
