"""Assertions shared by the CLI tests."""

from __future__ import annotations

import subprocess


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The failing command's only stderr line: non-zero exit, one line, no traceback."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]
