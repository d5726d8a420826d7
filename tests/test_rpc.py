"""The target across llama.cpp RPC workers, all on 127.0.0.1: same output as local, real traffic,
clean errors when a worker is missing, lost, from another build or short of memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import one_line_error
from rpc_helpers import SPECGEN, FakeWorker, Relay, Worker, free_port, stop

PROMPT = "Repeat this list exactly, then add two more fruits: apple, banana, cherry, date, elderberry."


@pytest.fixture(scope="module")
def workers():
    ws = []
    try:
        ws += [Worker(), Worker()]
        yield ws
    finally:
        for w in ws:
            w.stop()


@pytest.fixture
def cache_env(tmp_path) -> dict[str, str]:
    """A fresh cost cache per test, so what a run measures over RPC is seen in isolation."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1",
            "OMP_WAIT_POLICY": "passive"}


def specgen(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*SPECGEN, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_json(args: list[str], env: dict[str, str]) -> dict:
    r = specgen("run", *args, "--max-tokens", "40", "--json", PROMPT, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("drafter", ["none", "ngram", "model", "model-remote-draft"])
def test_greedy_output_over_rpc_equals_local(workers, target_path, draft_path, cache_env, drafter):
    # A fixed --draft-max makes every verify batch the same shape on both sides, so the same
    # kernels run and greedy output must match token for token.
    remote_draft = drafter == "model-remote-draft"
    drafter = drafter.removesuffix("-remote-draft")
    args = ["--target", str(target_path), "--drafter", drafter, "--no-mmap"]
    if drafter == "model":
        args += ["--draft", str(draft_path)]
    if drafter != "none":
        args += ["--draft-max", "4"]
    local = run_json(args, cache_env)
    rpc = ["--rpc", ",".join(w.endpoint for w in workers)]
    if remote_draft:
        rpc += ["--draft-rpc", workers[1].endpoint]  # shares the target's connection to that worker
    remote = run_json(args + rpc, cache_env)
    assert remote["text"] == local["text"]
    assert remote["stats"]["generated_tokens"] == local["stats"]["generated_tokens"] > 0
    topo = remote["topology"]
    assert topo["target"]["rpc"] == [w.endpoint for w in workers]
    assert [d.split(" ")[1] for d in topo["target"]["devices"]] == [f"({w.endpoint})" for w in workers]
    assert topo["target"]["offloaded_layers"] == topo["target"]["layers"]
    assert local["topology"]["target"]["rpc"] == []
    if drafter == "model":
        assert remote["stats"]["drafted"] > 0
        # the draft stays here unless --draft-rpc
        assert topo["draft"]["rpc"] == ([workers[1].endpoint] if remote_draft else [])
    if drafter != "none":
        # the cost curves measured over RPC are cached apart from the local ones
        costs = json.loads((Path(cache_env["XDG_CACHE_HOME"]) / "specgen" / "costs.json").read_text())
        n_local = 2 if drafter == "model" else 1  # verify (+ draft)
        n_remote = 1 + remote_draft  # verify (+ draft, when it is remote too)
        assert len(costs) == n_local + n_remote, sorted(costs)


def test_bench_records_the_topology(workers, target_path, cache_env, tmp_path):
    out = tmp_path / "bench.json"
    r = specgen("bench", "--target", str(target_path), "--drafter", "ngram", "--prompts", "builtin:code-writing",
                "--limit", "1", "--max-tokens", "8", "--rpc", workers[0].endpoint, "--json", str(out), env=cache_env)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["machine"]["topology"]["target"]["rpc"] == [workers[0].endpoint]
    assert result["machine"]["pairs"][0]["topology"]["target"]["rpc"] == [workers[0].endpoint]
    assert "RPC" in result["machine"]["backend_detail"]


def test_workers_really_compute(target_path, cache_env):
    """Weights and activations cross the sockets: the workers together move more than the model."""
    ws = []
    try:
        ws += [Worker(), Worker()]
        run_json(["--target", str(target_path), "--drafter", "none", "--rpc", ",".join(w.endpoint for w in ws)],
                 cache_env)
        size_mb = target_path.stat().st_size / 1e6
        deadline = time.monotonic() + 15  # status lines come at most every 2 s
        while sum(sum(w.moved()) for w in ws) <= size_mb and time.monotonic() < deadline:
            time.sleep(0.5)
        moved = [w.moved() for w in ws]
        assert all(rx > 0 for rx, _ in moved), moved  # both workers hold layers
        assert sum(rx + tx for rx, tx in moved) > size_mb, (moved, size_mb)
    finally:
        for w in ws:
            w.stop()


def test_a_decode_over_rpc_waits_for_the_worker(target_path):
    """llama_decode returns while an RPC (or GPU) backend still computes, and whatever reads the results next
    waits for them.  Context.decode waits itself, so the computation is on the decode clock: a step would
    otherwise count it as host work (reading the rows), and a cost curve timed around decode would hold the
    launch alone.  Without the wait, reading took 157 ms here and the clock read 5 ms."""
    from specgen.llama.backend import Context, Model, ModelOptions, decode_clock

    worker = Worker()
    model = ctx = None
    try:
        model = Model(target_path, ModelOptions(use_mmap=False, rpc=(worker.endpoint,)))
        ctx = Context(model, 256, 1)
        tokens = model.tokenize(PROMPT, add_special=False)
        before = decode_clock.seconds
        ctx.decode(tokens, logits="all")
        decoding = decode_clock.seconds - before
        t0 = time.perf_counter()
        rows = ctx.logits_rows(len(tokens))
        reading = time.perf_counter() - t0
        assert reading < decoding / 4, (reading, decoding)
        assert rows.shape == (len(tokens), model.n_vocab) and np.isfinite(rows).all()
    finally:
        # Free what lives on the worker while it still answers, also when an assert failed: freed later, by the
        # collector, its buffers would be released over a closed connection.
        for owned in (ctx, model):
            if owned is not None:
                owned.close()
        worker.stop()


def test_killing_a_worker_mid_generation_is_one_clean_line(target_path, cache_env):
    ws = []
    try:
        ws += [Worker(), Worker()]
        proc = subprocess.Popen([*SPECGEN, "run", "--target", str(target_path), "--drafter", "none",
                                 "--ignore-eos", "--max-tokens", "4000", "--rpc",
                                 ",".join(w.endpoint for w in ws), "Tell a long story."],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cache_env)
        try:
            assert proc.stdout.read(20)  # generating
            ws[1].stop(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)  # bounded: no hang on a dead socket
        finally:
            stop(proc)
        r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        line = one_line_error(r)
        assert ws[1].endpoint in line and ws[0].endpoint not in line, line
        assert r.returncode == 1
    finally:
        for w in ws:
            w.stop()


def test_closed_port_is_one_clean_line(target_path, cache_env):
    port = free_port()
    r = specgen("run", "--target", str(target_path), "--rpc", f"127.0.0.1:{port}", "hi", env=cache_env)
    line = one_line_error(r)
    assert f"127.0.0.1:{port}" in line and "refused" in line and "specgen worker" in line


@pytest.mark.parametrize("spec", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", ":50052", "a:1,a:1"])
def test_bad_rpc_flag_is_one_clean_line(target_path, cache_env, spec):
    line = one_line_error(specgen("run", "--target", str(target_path), "--rpc", spec, "hi", env=cache_env))
    assert line.startswith("specgen: error: --rpc:")


def test_worker_from_another_build_is_named(target_path, cache_env):
    fake = FakeWorker(version=(99, 0, 0))
    try:
        r = specgen("run", "--target", str(target_path), "--rpc", fake.endpoint, "hi", env=cache_env, timeout=60)
    finally:
        fake.close()
    line = one_line_error(r)
    assert fake.endpoint in line and "v99.0.0" in line and "same llama-cpp-python version" in line


def test_worker_that_hangs_up_on_the_handshake_is_named(target_path, cache_env):
    fake = FakeWorker(hang_up=True)
    try:
        r = specgen("run", "--target", str(target_path), "--rpc", fake.endpoint, "hi", env=cache_env, timeout=60)
    finally:
        fake.close()
    line = one_line_error(r)
    assert fake.endpoint in line and "incompatible" in line


def test_not_enough_memory_across_workers(target_path, cache_env):
    fake = FakeWorker(free_bytes=1 << 20)
    try:
        r = specgen("run", "--target", str(target_path), "--rpc", fake.endpoint, "hi", env=cache_env, timeout=60)
    finally:
        fake.close()
    line = one_line_error(r)
    assert "not enough memory" in line and fake.endpoint in line and "--gpu-layers" in line


def test_worker_flags_and_stop(cache_env):
    # only IPv4 literals can be bound by ggml-rpc
    line = one_line_error(specgen("worker", "--host", "localhost", "--port", str(free_port()), env=cache_env))
    assert "--host" in line
    line = one_line_error(specgen("worker", "--device", "NOPE", "--port", str(free_port()), env=cache_env))
    assert "'NOPE'" in line and "CPU" in line  # lists the devices there are
    w = Worker()
    try:
        # a second worker on the same port
        line = one_line_error(specgen("worker", "--port", str(w.port), env=cache_env, timeout=60))
        assert f"127.0.0.1:{w.port}" in line and "--port" in line
    finally:
        assert w.stop(signal.SIGINT) == 0  # Ctrl+C stops it cleanly
    assert any("stopped" in line for line in w.lines), w.lines
    assert not any("Traceback" in line for line in w.lines)


def test_non_loopback_host_warns(cache_env):
    w = Worker(host="0.0.0.0")
    try:
        assert any("warning" in line and "SSH tunnel" in line for line in w.lines), w.lines
    finally:
        w.stop()


def test_a_slow_link_changes_no_output(target_path, cache_env):
    """Through latency_relay.py adding 2 ms of round trip, the answer is the one the same worker gives
    directly: the relay delivers every byte, in order, both ways, and nothing on specgen's side gives up
    on a slow link.  (That each decode then takes at least the added round trip holds by the relay's
    own construction, so it is not asserted.)"""
    args = ["--target", str(target_path), "--drafter", "ngram", "--draft-max", "4", "--no-mmap"]
    w = Worker()
    try:
        direct = run_json([*args, "--rpc", w.endpoint], cache_env)
        relay = Relay(w.endpoint, 2.0)
        try:
            slow = run_json([*args, "--rpc", relay.endpoint], cache_env)
        finally:
            relay.stop()
    finally:
        w.stop()
    assert slow["topology"]["target"]["rpc"] == [relay.endpoint]
    assert slow["text"] == direct["text"] and slow["stats"]["drafted"] > 0
    assert slow["stats"]["generated_tokens"] == direct["stats"]["generated_tokens"]


def test_keepalive_is_set_on_connections_to_workers():
    """A worker whose machine vanishes sends no reset; llama.cpp's sockets to it get keepalive and a
    user timeout so the kernel breaks them (loopback cannot drop packets, so the setting is checked)."""
    import socket

    from specgen.llama.rpc import KeepAlive

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(2)
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(2)
    to_worker = socket.create_connection(srv.getsockname())
    elsewhere = socket.create_connection(other.getsockname())
    try:
        ka = KeepAlive()
        ka.peers = {("127.0.0.1", srv.getsockname()[1])}
        ka.scan()
        assert to_worker.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert to_worker.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KeepAlive.IDLE
        assert to_worker.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == KeepAlive.USER_TIMEOUT
        assert elsewhere.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0  # only workers' sockets
    finally:
        for s in (to_worker, elsewhere, srv, other):
            s.close()
