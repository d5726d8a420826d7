"""Assertions shared by the CLI tests."""

from __future__ import annotations

import subprocess

ERROR = "specgen: error: "


def one_line_error(r: subprocess.CompletedProcess, progress: bool = False) -> str:
    """The failing command's error line: exit status 1, no traceback, one `specgen: error:` line.

    It must be the only line on stderr, or with *progress* (downloads report as they go)
    the last one, after lines that are not errors.
    """
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(ERROR)]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert progress or len(lines) == 1, r.stderr
    return errors[0]
