"""Load-time cost calibration: measured once per model and machine, then cached."""

import json
import time

import pytest

from specgen.build import EngineOptions, load_engine
from specgen.llama.backend import Context, Model
from specgen.llama.calibrate import measure_verify


def test_costs_are_measured_once_and_seed_the_controller(target_path, draft_path, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    e = load_engine(EngineOptions(target_path, draft_path, drafter="auto", n_ctx=512))
    cache = tmp_path / "specgen" / "costs.json"
    data = json.loads(cache.read_text())
    verify = next(v for v in data.values() if isinstance(v, dict))
    assert set(map(int, verify)) >= {1, 2, 4, 8, 17}
    assert all(s > 0 for s in verify.values())
    costs = e.controller.costs
    sizes = sorted(map(int, verify))
    curve = [costs.verify_cost(n) for n in sizes]
    # More rows never cost less, and the curve stays within what was measured.
    assert all(a <= b for a, b in zip(curve, curve[1:])), curve
    assert min(verify.values()) <= min(curve) and max(curve) <= max(verify.values())
    assert costs.draft_cost("model") > 0
    e.close()
    stamp = cache.stat().st_mtime_ns
    e = load_engine(EngineOptions(target_path, draft_path, drafter="auto", n_ctx=512))
    assert cache.stat().st_mtime_ns == stamp  # served from the cache, not re-measured
    assert list(tmp_path.joinpath("specgen").iterdir()) == [cache]  # no temp files left behind
    e.close()

    # A curve that noise bent, c(4) below c(3), seeds the closest non-decreasing one: those two sizes
    # pooled at their mean, every other size as measured.
    key = next(k for k, v in data.items() if isinstance(v, dict))
    bent = {n: n * 1e-3 for n in sizes} | {3: 4e-3, 4: 3e-3}
    data[key] = {str(n): s for n, s in bent.items()}
    cache.write_text(json.dumps(data))
    e = load_engine(EngineOptions(target_path, draft_path, drafter="auto", n_ctx=512))
    want = {n: n * 1e-3 for n in sizes} | {3: 3.5e-3, 4: 3.5e-3}
    assert {n: e.controller.costs.verify_cost(n) for n in sizes} == pytest.approx(want)
    e.close()


def test_plain_decoding_needs_no_calibration(target_path, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    load_engine(EngineOptions(target_path, drafter="none", n_ctx=512)).close()
    assert not (tmp_path / "specgen" / "costs.json").exists()


def test_a_burst_of_other_work_while_measuring_does_not_bend_the_curve(target_path):
    # The cached curve is the shape every later run prices drafts with; a second in which another job
    # held the CPU must not make one batch size look several times dearer than its neighbours.
    model = Model(target_path)
    ctx = Context(model, 512)
    real, calls = ctx.decode, [0]

    def busy(tokens, logits="last"):
        calls[0] += 1
        if 4 <= calls[0] < 7:  # three decodes in a row, early in the measurement, each 50 ms late
            time.sleep(0.05)
        return real(tokens, logits=logits)

    ctx.decode = busy
    try:
        verify = measure_verify(ctx)
    finally:
        ctx.close()
        model.close()
    assert calls[0] > 6  # the burst fell inside the measurement
    # It fell on the first few sizes measured; each still reads well below the widest batch.
    assert max(verify[n] for n in (1, 2, 3, 4)) < verify[17]
