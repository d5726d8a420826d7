"""What `specgen bench` runs: questions (Spec-Bench's question.jsonl format) and configurations.

A prompt file has one JSON object a line, `{"question_id", "category",
"turns": [...]}`; multi-turn questions are asked as one conversation.  The
built-in suites ship as such files in `specgen/bench/suites/`.  Every problem with a
file is reported as one line naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import SpecgenError
from ..fileio import home_path, parse_json, read_regular
from ..settings import check_count, check_drafter, parse_draft_max, shown_draft_max
from ..sampling import SamplingParams

BUILTIN_ORDER = ("code-writing", "code-editing", "chat", "summarization")
FILL_IN = ("infill",)
"""Built-in suites of fill-in-the-middle tasks: a model without FIM tokens cannot run them, so `builtin:all`
(the chat suites, which every model runs) leaves them out; ask for them by name."""


class SuiteError(SpecgenError):
    pass


# ---------------------------------------------------------------- questions

@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    suffix: str | None = None
    """An infill task: the one turn is the code before the cursor, this the code after it."""


def builtin_suites() -> dict[str, Path]:
    folder = Path(str(resources.files("specgen.bench").joinpath("suites")))
    found = {p.stem: p for p in folder.glob("*.jsonl")}
    ordered = [n for n in BUILTIN_ORDER if n in found] + sorted(n for n in found if n not in BUILTIN_ORDER)
    return {n: found[n] for n in ordered}


def load_questions(specs: str | Sequence[str]) -> list[Question]:
    """Questions from `builtin:NAME`, `builtin:all` or Spec-Bench question.jsonl files, in order."""
    questions: list[Question] = []
    seen: set[tuple[str, str]] = set()
    for path in suite_paths(specs):
        for lineno, q in read_jsonl(path):
            key = (q.category, str(q.question_id))
            if key in seen:
                raise SuiteError(f"{path}:{lineno}: question_id {q.question_id!r} appears twice in "
                                 f"category {q.category!r}")
            seen.add(key)
            questions.append(q)
    return questions


def suite_paths(specs: str | Sequence[str]) -> list[Path]:
    """The files `load_questions` reads for *specs*, in order; an unknown built-in suite is a SuiteError."""
    paths: list[Path] = []
    for spec in [specs] if isinstance(specs, str) else specs:
        if spec.startswith("builtin:"):
            name = spec.split(":", 1)[1]
            suites = builtin_suites()
            if name == "all":
                paths += [path for suite, path in suites.items() if suite not in FILL_IN]
            elif name in suites:
                paths.append(suites[name])
            else:
                raise SuiteError(f"unknown built-in suite {name!r}; choose one of {', '.join([*suites, 'all'])}")
        else:
            paths.append(home_path(spec))
    return paths


def read_jsonl(path: Path) -> list[tuple[int, Question]]:
    """(line number, question) for each line of a question.jsonl file, validated."""
    raw = read_regular(path, "a .jsonl file of questions or builtin:NAME", SuiteError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SuiteError(f"{path}: not UTF-8 text") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = parse_json(line)
        except json.JSONDecodeError as e:
            raise SuiteError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        out.append((lineno, _question(obj, where)))
    if not out:
        raise SuiteError(f"{path}: no questions in this file")
    return out


def _question(obj: Any, where: str) -> Question:
    if not isinstance(obj, dict):
        raise SuiteError(f"{where}: expected a JSON object like "
                         '{"question_id": 1, "category": "chat", "turns": ["..."]}')
    qid = obj.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or qid == "":
        raise SuiteError(f"{where}: `question_id` must be a number or a string")
    cat = obj.get("category")
    if not isinstance(cat, str) or not cat.strip():
        raise SuiteError(f"{where}: `category` must be a non-empty string")
    turns = obj.get("turns")
    if not isinstance(turns, list) or not turns:
        raise SuiteError(f"{where}: `turns` must be a non-empty list of prompts")
    suffix = obj.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise SuiteError(f"{where}: `suffix` (the code after the cursor, for an infill) must be a string")
        if len(turns) != 1 or not isinstance(turns[0], str):
            raise SuiteError(f"{where}: an infill (a question with a `suffix`) has one turn: the code before the "
                             "cursor")
        return Question(qid, cat.strip(), tuple(turns), suffix)
    if not all(isinstance(t, str) and t.strip() for t in turns):
        raise SuiteError(f"{where}: every entry of `turns` must be a non-empty string")
    return Question(qid, cat.strip(), tuple(turns))


def categories_of(questions: Iterable[Question]) -> list[str]:
    return list(dict.fromkeys(q.category for q in questions))


def select(questions: list[Question], categories: Sequence[str] | None = None,
           limit: int | None = None) -> list[Question]:
    """Keep the *categories* asked for (all when None), at most *limit* questions each."""
    available = categories_of(questions)
    if categories:
        unknown = [c for c in categories if c not in available]
        if unknown:
            raise SuiteError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(map(repr, unknown))}; these prompts have: {', '.join(available)}")
        questions = [q for q in questions if q.category in categories]
    if limit is not None:
        check_count("limit", limit)
        count: dict[str, int] = {}
        kept = []
        for q in questions:
            count[q.category] = count.get(q.category, 0) + 1
            if count[q.category] <= limit:
                kept.append(q)
        questions = kept
    return questions


# ---------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Config:
    drafter: str
    draft_max: int | None
    """None: auto (the controller sizes each draft)."""

    @property
    def baseline(self) -> bool:
        return self.drafter == "none"

    @property
    def draft_max_label(self) -> int | str:
        return shown_draft_max(self.draft_max)

    @property
    def label(self) -> str:
        return "none" if self.baseline else f"{self.drafter}/{self.draft_max_label}"

    def flags(self) -> str:
        if self.baseline:
            return "--drafter none"
        return f"--drafter {self.drafter} --draft-max {self.draft_max_label}"


BASELINE = Config("none", 0)


def split_list(values: Sequence[str] | None) -> list[str]:
    """`--x a,b --x c` -> [a, b, c], without duplicates."""
    out: list[str] = []
    for v in values or ():
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return list(dict.fromkeys(out))


def parse_draft_maxes(values: Sequence[str]) -> list[int | None]:
    return list(dict.fromkeys(parse_draft_max(v) for v in values))


def parse_temperatures(values: Sequence[str]) -> list[float]:
    out = []
    for v in values:
        try:
            t = float(v)
        except ValueError:
            raise SpecgenError(f"{{temperature}} takes numbers, not {v!r}") from None
        SamplingParams(temperature=t).check()
        out.append(t)
    return list(dict.fromkeys(out))


def make_configs(drafters: Sequence[str], draft_maxes: Sequence[int | None]) -> list[Config]:
    """The configurations to compare: each drafter at every draft length, or NAME/LENGTH at that one only
    (`ngram/16,model/3` compares the best fixed choices without their whole grid)."""
    configs = []
    for item in drafters:
        name, fixed, length = item.partition("/")
        check_drafter(name)
        lengths = draft_maxes
        if fixed:
            try:
                lengths = [parse_draft_max(length)]
            except SpecgenError as e:  # the rule's own message, after the item, naming what was typed (no flag)
                typed = e.worded({"draft_max": "the draft length after '/'"})
                raise SpecgenError(f"{{drafter}} {item!r}: {typed}") from None
        if name != "none":
            configs += [Config(name, m) for m in lengths]
    configs = list(dict.fromkeys(configs))
    if not configs:
        raise SpecgenError("nothing to compare with plain decoding: give --drafter something besides none")
    return configs


@dataclass
class Plan:
    questions: list[Question]
    configs: list[Config]
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    max_tokens: int = 128
    repeat: int = 1
    warmup_tokens: int = 8
    seed: int = 0

    def drafters(self) -> list[str]:
        return list(dict.fromkeys(["none", *(c.drafter for c in self.configs)]))

    def generations(self) -> int:
        """Generations one pair runs (one per turn), for progress and ETA."""
        warm = len(self.drafters()) * len(self.questions)
        turns = sum(len(q.turns) for q in self.questions)
        return warm + turns * len(self.temperatures) * self.repeat * (2 * len(self.configs) + 1)
