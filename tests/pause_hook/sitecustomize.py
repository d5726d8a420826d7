"""Test-only: stop a `specgen` process at a named moment, so that a test can press Ctrl+C there.

A test puts this folder on PYTHONPATH (Python imports `sitecustomize` at start-up), names the moment in
SPECGEN_TEST_PAUSE and a file in SPECGEN_TEST_PAUSE_FILE.  On reaching the moment the process writes
that file, then waits (up to a minute) for the signal.  specgen itself carries nothing for this: the
pauses wrap the import of typer and llama_cpp's own functions from outside.

Moments:
    startup     while `specgen` imports its commands (typer), after its start-up Ctrl+C handler is set
    load        while llama.cpp loads a model: at its first progress report (the file then gets
                " -> stopped" or " -> loaded" when llama.cpp returns), or just before the call for a
                vocabulary-only load, which reports no progress
    load:NAME   the same, for the model file called NAME only
    decode      inside the first llama_decode call's interrupt-deferring block
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import sys
import time
from pathlib import Path

POINT = os.environ.get("SPECGEN_TEST_PAUSE", "")
MARKER = os.environ.get("SPECGEN_TEST_PAUSE_FILE", "")
WAIT = 60.0  # the test fails on its own deadline well before a paused process gives up


def _reached() -> None:
    Path(MARKER).write_text(POINT)


def _wait_for_ctrl_c() -> None:
    # While llama.cpp works, specgen's SIGINT handler only raises a flag; the product acts on it after.
    from specgen.llama.backend import interrupts

    deadline = time.monotonic() + WAIT
    while not interrupts.pending and time.monotonic() < deadline:
        time.sleep(0.01)


def _pause_in_load(lib, model_name: str) -> None:
    load = lib.llama_model_load_from_file

    def llama_model_load_from_file(path: bytes, params):
        if model_name and Path(path.decode()).name != model_name:
            return load(path, params)
        lib.llama_model_load_from_file = load  # one pause per process
        if params.vocab_only:
            _reached()
            _wait_for_ctrl_c()
            return load(path, params)
        # specgen's own callback, which stops the load on Ctrl+C; by address, since the field itself
        # is about to point at ours.
        report = lib.llama_progress_callback(ctypes.cast(params.progress_callback, ctypes.c_void_p).value)
        paused = []

        def progress(fraction: float, user_data) -> bool:
            if not paused:
                paused.append(True)
                _reached()
                _wait_for_ctrl_c()
            return report(fraction, user_data)

        callback = lib.llama_progress_callback(progress)  # referenced here until the load returns
        params.progress_callback = callback
        model = load(path, params)
        with open(MARKER, "a") as f:  # how the load ended, for the test to read after the process
            f.write(" -> loaded" if model else " -> stopped")
        return model

    lib.llama_model_load_from_file = llama_model_load_from_file


def _pause_in_decode(lib) -> None:
    decode = lib.llama_decode

    def llama_decode(ctx, batch):
        lib.llama_decode = decode
        _reached()
        _wait_for_ctrl_c()
        return decode(ctx, batch)

    lib.llama_decode = llama_decode


class _Finder:
    """Sees each import first: pauses at typer's, or patches llama_cpp once it has run."""

    def find_spec(self, name: str, path=None, target=None):
        kind, _, model_name = POINT.partition(":")
        if name == "typer" and kind == "startup":
            sys.meta_path.remove(self)
            _reached()
            time.sleep(WAIT)  # specgen's handler ends the process here
            return None
        if name != "llama_cpp" or kind not in ("load", "decode"):
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            if kind == "decode":
                _pause_in_decode(module)
            else:
                _pause_in_load(module, model_name)

        spec.loader.exec_module = exec_module
        return spec


if POINT and MARKER:
    sys.meta_path.insert(0, _Finder())
