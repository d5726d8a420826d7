"""`specgen pull / list / rm / pair add` against a Hugging Face compatible mirror on 127.0.0.1.

Real downloads over loopback into a temporary HF_HOME, real files, huggingface_hub unmocked.
The CLI runs in a subprocess because huggingface_hub reads some settings at import.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from specgen.fileio import file_sha256

from cli_helpers import one_line_error
from hub_fixtures import *  # noqa: F401,F403  (fixtures)
from hub_fixtures import (DRAFT_FILE, DRAFT_REPO, GATED_REPO, GATED_TOKEN, OTHER_REPO, SHARD_REPO, TARGET_FILE,
                          TARGET_REPO, _specgen_exe, run_specgen, snapshot_files)


def partials(hf_home: Path) -> list[Path]:
    return sorted((hf_home / "hub").rglob("*.incomplete")) if (hf_home / "hub").exists() else []


def test_pull_pair_then_again_is_a_noop(hub_env, mirror, hub_models):
    hf_home = Path(hub_env["HF_HOME"])
    r = run_specgen("pull", "smol", env=hub_env)
    assert r.returncode == 0, r.stderr
    paths = [Path(p) for p in r.stdout.split()]
    assert [p.name for p in paths] == [TARGET_FILE, DRAFT_FILE]
    assert paths == snapshot_files(hf_home, TARGET_REPO) + snapshot_files(hf_home, DRAFT_REPO)
    assert file_sha256(paths[0]) == file_sha256(hub_models["target"])
    assert file_sha256(paths[1]) == file_sha256(hub_models["draft"])
    for p in paths:  # the standard layout: snapshot symlink -> blob named by the sha256 ETag
        assert p.is_symlink() and p.resolve().parent.name == "blobs"
        assert p.resolve().name == file_sha256(p)
    assert "downloaded" in r.stderr and "checked" in r.stderr
    assert not partials(hf_home)

    from huggingface_hub import scan_cache_dir  # what `hf cache ls` reads

    info = scan_cache_dir(hf_home / "hub")
    repos = {repo.repo_id: repo for repo in info.repos}
    assert set(repos) == {TARGET_REPO, DRAFT_REPO}
    assert {f.file_name for rev in repos[TARGET_REPO].revisions for f in rev.files} == {TARGET_FILE}
    assert (hf_home / "hub" / f"models--{TARGET_REPO.replace('/', '--')}" / "refs" / "main").is_file()

    mtimes = [p.resolve().stat().st_mtime_ns for p in paths]
    mirror.clear()
    again = run_specgen("pull", "smol", env=hub_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == r.stdout
    assert "already downloaded" in again.stderr
    assert mirror.requests(kind="resolve") == []  # listed, nothing fetched
    assert [p.resolve().stat().st_mtime_ns for p in paths] == mtimes

    listed = json.loads(run_specgen("list", "--json", env=hub_env).stdout)
    smol = next(p for p in listed if p["name"] == "smol")
    assert smol["downloaded"] == "yes" and smol["sizes_exact"] and smol["default"]
    assert smol["target_bytes"] == hub_models["target"].stat().st_size


def test_a_pair_using_one_model_twice_fetches_it_once(hub_env, mirror):
    r = run_specgen("pull", "smol-self", env=hub_env)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split()
    assert first == second
    assert len(mirror.requests("GET", "resolve")) == 1


def test_resume_after_the_server_drops_the_connection(hub_env, mirror, hub_models):
    drop_at = 30_000_000
    fault = mirror.fault(DRAFT_REPO, DRAFT_FILE)
    fault.drop_at, fault.drops = drop_at, 1
    r = run_specgen("pull", "smol-q2_k", env=hub_env)
    assert r.returncode == 0, r.stderr
    assert fault.drops == 0, "the mirror never dropped the connection"
    gets = [q for q in mirror.requests("GET", "resolve") if q["file"] == DRAFT_FILE]
    assert len(gets) == 2 and gets[0]["range"] is None
    resumed_at = int(gets[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= drop_at
    (path,) = map(Path, r.stdout.split())
    assert file_sha256(path) == file_sha256(hub_models["draft"])


def test_interrupted_pull_leaves_nothing_run_would_load_and_resumes_later(hub_env, mirror, hub_models,
                                                                          monkeypatch):
    hf_home = Path(hub_env["HF_HOME"])
    drop_at = 40_000_000
    fault = mirror.fault(TARGET_REPO, TARGET_FILE)
    fault.drop_at, fault.drops, fault.then_status, fault.status_times = drop_at, 1, 503, 1
    r = run_specgen("pull", "smol-q4_1", env=hub_env)
    msg = one_line_error(r, progress=True)
    assert "HTTP 503" in msg
    assert snapshot_files(hf_home, TARGET_REPO) == []
    (part,) = partials(hf_home)
    kept = part.stat().st_size
    assert 0 < kept <= drop_at  # what arrived before the drop (less whatever was still in flight)

    from specgen.errors import SpecgenError
    from specgen.models.resolve import resolve_models

    with pytest.raises(SpecgenError, match=r"run `specgen pull smol` first"):
        resolve_models(None, None, None, download=False)

    mirror.clear()
    r = run_specgen("pull", "smol-q4_1", env=hub_env)
    assert r.returncode == 0, r.stderr
    ranges = [q["range"] for q in mirror.requests("GET", "resolve") if q["file"] == TARGET_FILE]
    assert ranges == [f"bytes={kept}-"]
    assert not partials(hf_home)
    assert file_sha256(Path(r.stdout.split()[0])) == file_sha256(hub_models["target"])


def _pull_and_ctrl_c(hub_env, mirror) -> subprocess.Popen:
    hf_home = Path(hub_env["HF_HOME"])
    mirror.fault(DRAFT_REPO, DRAFT_FILE).rate = 8_000_000  # ~11 s for the whole file
    p = subprocess.Popen([_specgen_exe(), "pull", "smol-q2_k"], env=hub_env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = partials(hf_home)
            if got and got[0].stat().st_size > 2_000_000:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the download never started")
        p.send_signal(signal.SIGINT)
        p.out, p.err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    return p


def test_ctrl_c_keeps_only_a_partial_file(hub_env, mirror):
    hf_home = Path(hub_env["HF_HOME"])
    p = _pull_and_ctrl_c(hub_env, mirror)
    assert "Traceback" not in p.err
    assert "downloaded" not in p.err and p.out == ""
    assert snapshot_files(hf_home, DRAFT_REPO) == []
    (part,) = partials(hf_home)
    assert 0 < part.stat().st_size < 88_000_000


def test_ctrl_c_exits_130(hub_env, mirror):
    assert _pull_and_ctrl_c(hub_env, mirror).returncode == 130


def test_split_shards_are_fetched_together_in_order(hub_env, mirror, hub_models):
    hf_home = Path(hub_env["HF_HOME"])
    r = run_specgen("pull", f"{SHARD_REPO}:Q8_0", env=hub_env)
    assert r.returncode == 0, r.stderr
    paths = [Path(p) for p in r.stdout.split()]
    assert [p.name for p in paths] == sorted(hub_models["shards_q8"])
    for p in paths:
        assert p.read_bytes() == hub_models["shards_q8"][p.name]
    # A quant published both as one file and as a shard set (like Qwen2.5-Coder-7B): the single file.
    r = run_specgen("pull", f"{SHARD_REPO}:Q4_K_M", env=hub_env)
    assert r.returncode == 0, r.stderr
    assert [Path(p).name for p in r.stdout.split()] == list(hub_models["single_q4"])
    fetched = {q["file"] for q in mirror.requests("GET", "resolve")}
    assert not any("mmproj" in f or "q4_k_m-0000" in f for f in fetched)
    assert len(snapshot_files(hf_home, SHARD_REPO)) == 4


def test_repo_not_found(hub_env):
    msg = one_line_error(run_specgen("pull", "nobody/No-Such-Model-GGUF:Q4_K_M", env=hub_env), progress=True)
    assert "repo nobody/No-Such-Model-GGUF not found" in msg


def test_unknown_quant_lists_the_quants_the_repo_has(hub_env):
    msg = one_line_error(run_specgen("pull", f"{SHARD_REPO}:Q5_K_M", env=hub_env), progress=True)
    assert f"{SHARD_REPO} has no Q5_K_M GGUF; it has Q4_K_M, Q8_0" in msg


def test_unknown_pair_suggests_close_matches(hub_env):
    msg = one_line_error(run_specgen("pull", "qwen2.5-coder7b", env=hub_env), progress=True)
    assert "unknown pair 'qwen2.5-coder7b'" in msg and "qwen2.5-coder-7b" in msg


def test_gated_repo(hub_env, mirror, hub_models):
    hf_home = Path(hub_env["HF_HOME"])
    msg = one_line_error(run_specgen("pull", "gated-tiny", env=hub_env), progress=True)
    assert f"{GATED_REPO} is gated" in msg and f"{mirror.url}/{GATED_REPO}" in msg and "HF_TOKEN" in msg
    assert any(q["kind"] == "resolve" and q["auth"] is None for q in mirror.log)

    msg = one_line_error(run_specgen("pull", "gated-tiny", env=hub_env, HF_TOKEN="hf_not_granted"), progress=True)
    assert "your token has no access" in msg
    assert snapshot_files(hf_home, GATED_REPO) == [] and not partials(hf_home)

    mirror.clear()
    r = run_specgen("pull", "gated-tiny", env=hub_env, HF_TOKEN=GATED_TOKEN)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.split()[0]).read_bytes() == hub_models["gated"]
    assert {q["auth"] for q in mirror.requests(kind="resolve")} == {f"Bearer {GATED_TOKEN}"}


@pytest.mark.parametrize("kind", ["hash", "size"])
def test_a_file_that_does_not_match_the_listing_is_rejected(hub_env, mirror, kind):
    hf_home = Path(hub_env["HF_HOME"])
    fault = mirror.fault(DRAFT_REPO, DRAFT_FILE)
    if kind == "hash":
        fault.corrupt = True
    else:
        fault.size_delta = 1000  # the listing and headers claim 1000 bytes more than are served
    msg = one_line_error(run_specgen("pull", "smol-q2_k", env=hub_env), progress=True)
    assert ("checksum" if kind == "hash" else "size mismatch") in msg
    assert snapshot_files(hf_home, DRAFT_REPO) == []
    assert not partials(hf_home)
    assert not list((hf_home / "hub").rglob("blobs/*"))


def test_disk_full_is_caught_before_downloading(hub_env, mirror):
    mirror.fault(DRAFT_REPO, DRAFT_FILE).size_delta = 10 ** 16  # 10 PB
    msg = one_line_error(run_specgen("pull", "smol-q2_k", env=hub_env), progress=True)
    assert "disk full" in msg and "HF_HOME" in msg
    assert mirror.requests("GET", "resolve") == []


def test_offline_mode_fails_cleanly_without_the_cache(hub_env, mirror):
    msg = one_line_error(run_specgen("pull", "smol", env=hub_env, HF_HUB_OFFLINE="1"), progress=True)
    assert "HF_HUB_OFFLINE is set" in msg and TARGET_REPO in msg
    assert [q for q in mirror.log if q["kind"] != "other"] == []


def test_offline_mode_uses_the_cache(pulled_smol, hub_env, mirror):
    r = run_specgen("pull", "smol", env=hub_env, HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    assert [Path(p) for p in r.stdout.split()] == (snapshot_files(pulled_smol, TARGET_REPO)
                                                   + snapshot_files(pulled_smol, DRAFT_REPO))
    assert mirror.log == []


def test_no_network_says_what_to_do(hub_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    msg = one_line_error(run_specgen("pull", "smol", env=hub_env, HF_ENDPOINT=dead), progress=True)
    assert f"cannot reach {dead}" in msg and "HF_ENDPOINT" in msg and "HF_HUB_OFFLINE" in msg


def test_incompatible_vocabularies_are_reported_after_pull(hub_env):
    msg = one_line_error(run_specgen("pull", "smol-bad", env=hub_env), progress=True)
    assert "cannot draft for target" in msg and "token 1000 differs" in msg


def test_rm_keeps_files_another_downloaded_pair_uses(pulled_smol, hub_env):
    hf_home = pulled_smol
    target = snapshot_files(hf_home, TARGET_REPO)[0]
    blob = target.resolve()

    r = run_specgen("rm", "smol", env=hub_env)  # smol-self (target twice) is downloaded too
    assert r.returncode == 0, r.stderr
    assert f"kept {target}" in r.stdout
    assert target.is_file() and blob.is_file()
    assert not (hf_home / "hub" / f"models--{DRAFT_REPO.replace('/', '--')}").exists()
    status = {p["name"]: p["downloaded"] for p in json.loads(run_specgen("list", "--json", env=hub_env).stdout)}
    assert status["smol"] == "partly" and status["smol-self"] == "yes"

    r = run_specgen("rm", "smol-self", env=hub_env)
    assert r.returncode == 0, r.stderr
    assert not target.exists() and not blob.exists()
    assert not (hf_home / "hub" / f"models--{TARGET_REPO.replace('/', '--')}").exists()
    r = run_specgen("rm", "smol-self", env=hub_env)
    assert r.returncode == 0 and "nothing removed" in r.stderr


def test_pair_add_round_trips(hub_env, hub_models):
    r = run_specgen("pair", "add", "mine", "--target", f"{TARGET_REPO}:Q4_1", "--draft", f"{OTHER_REPO}:Q2_K",
                    "--draft-max", "6", "--drafter", "model", "--note", "my pair", env=hub_env)
    assert r.returncode == 0, r.stderr
    assert "specgen pull mine" in r.stderr
    mine = next(p for p in json.loads(run_specgen("list", "--json", env=hub_env).stdout) if p["name"] == "mine")
    assert mine["target"] == "smol-q4_1"  # the existing model entry is reused
    assert mine["draft_spec"] == f"{OTHER_REPO}:Q2_K"
    assert (mine["draft_max"], mine["drafter"], mine["note"], mine["user"]) == (6, "model", "my pair", True)

    msg = one_line_error(run_specgen("pair", "add", "mine", "--target", "smol-q4_1", "--draft", "smol-q2_k",
                                     env=hub_env))
    assert "already exists" in msg and "--force" in msg

    # Local files: checked right away, and the pair is usable without any download.
    r = run_specgen("pair", "add", "local", "--target", str(hub_models["target"]),
                    "--draft", str(hub_models["draft"]), "--default", env=hub_env)
    assert r.returncode == 0, r.stderr
    local = next(p for p in json.loads(run_specgen("list", "--json", env=hub_env).stdout) if p["name"] == "local")
    assert local["default"] and local["downloaded"] == "yes"
    assert local["target_files"] == [str(hub_models["target"])]
    msg = one_line_error(run_specgen("pair", "add", "bad", "--target", str(hub_models["target"]),
                                     "--draft", str(hub_models["other"]), env=hub_env))
    assert "token 1000 differs" in msg


def test_run_resolves_the_default_pair_and_pulls_it_when_missing(hub_env, mirror, hub_models):
    from specgen.errors import SpecgenError
    from specgen.models.userfile import save_local_default
    from specgen.models.resolve import resolve_models

    with pytest.raises(SpecgenError, match=r"pair 'smol' is not downloaded .*run `specgen pull smol` first"):
        resolve_models(None, None, None, download=False)
    assert mirror.requests(kind="info") == []

    r = resolve_models(None, None, None)  # the user file makes `smol` the default
    assert (r.pair, r.drafter, r.draft_max) == ("smol", "model", 4)
    assert file_sha256(r.target) == file_sha256(hub_models["target"])
    assert file_sha256(r.draft) == file_sha256(hub_models["draft"])

    save_local_default("smol", "ngram", None)  # what `specgen bench --save` does
    r2 = resolve_models("smol", None, None, download=False)
    assert (r2.target, r2.draft, r2.drafter, r2.draft_max) == (r.target, r.draft, "ngram", None)

    given = resolve_models(None, Path("/x/t.gguf"), Path("/x/d.gguf"))
    assert (given.target, given.draft, given.pair) == (Path("/x/t.gguf"), Path("/x/d.gguf"), None)
    with pytest.raises(SpecgenError, match="unknown pair 'smoll'.*did you mean smol"):
        resolve_models("smoll", None, None)

