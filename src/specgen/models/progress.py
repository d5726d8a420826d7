"""Download progress on stderr."""

from __future__ import annotations

from ..errors import printable
from ..fileio import human_size


class Progress:
    """Download progress on stderr: a rich bar per file plus a total on a terminal,
    one plain line per file otherwise."""

    def __init__(self, enabled: bool | None = None):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal if enabled is None else enabled
        self._progress = None
        self._tasks: dict[str, int] = {}
        self._total = None

    def __enter__(self) -> "Progress":
        if self.live:
            from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self._progress = RichProgress(
                TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def plan(self, files: list[tuple[str, str, int | None, int]]) -> None:
        """[(key, label, total bytes, bytes already there)] for the files about to download."""
        if not files:
            return
        if self._progress is None:
            return
        from rich.markup import escape

        for key, label, total, done in files:  # a label is a Hub file name: text, never markup or escapes
            self._tasks[key] = self._progress.add_task(escape(printable(label)), total=total, completed=done)
        if len(files) > 1:
            totals = [t for _, _, t, _ in files]
            self._total = self._progress.add_task(
                "[bold]total", total=sum(totals) if None not in totals else None,
                completed=sum(d for _, _, _, d in files))

    def start(self, key: str, label: str, total: int | None, done: int) -> None:
        if self._progress is None:
            resumed = f", resuming at {human_size(done)}" if done else ""
            self.console.print(printable(f"downloading {label} ({human_size(total)}{resumed})"), markup=False)

    def advance(self, key: str, n: int) -> None:
        if self._progress is not None:
            if key in self._tasks:
                self._progress.advance(self._tasks[key], n)
            if self._total is not None:
                self._progress.advance(self._total, n)

    def message(self, text: str) -> None:
        self.console.print(printable(text), markup=False)
