"""`autoresearch swarm` for real: workers as Ray actors training on CPU for a few seconds, a scripted agent
per worker (tests/swarm_agent.py), the commands as the README shows them with a short budget. The first
test runs on a Ray cluster started as a user would (`ray start --head`, then `swarm --ray ADDRESS`); the
others on the Ray instance `swarm --workers N` starts itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import git, new_lab, rows, run_cli, table

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
AGENT = "swarm_agent:Scripted"
A = ["MATRIX_LR = 0.0004", "MATRIX_LR = 0.04"]
B = ["EMBEDDING_LR = 0.006", "EMBEDDING_LR = 0.6"]


def crippled_lab(root: Path, budget: float) -> Path:
    """A workspace whose committed train.py learns badly (two learning rates cut 100x): each fix is a
    clear win, so which results are kept does not depend on noise."""
    new_lab(root, budget=budget)
    train = root / "train.py"
    train.write_text(train.read_text().replace(A[1], A[0]).replace(B[1], B[0]))
    git(root, "commit", "-qam", "learning rates cut 100x")
    return root


@pytest.fixture
def lab(cache_dir, tmp_path):
    return crippled_lab(tmp_path / "lab", budget=3)


@pytest.fixture
def roomy_lab(cache_dir, tmp_path):
    """The same with a 6 s budget, for a test whose fixes must win: at 3 s, with two workers and another
    test's training on 2 cores, a run trained 4 s (a few steps) and a fix could lose to the noise."""
    return crippled_lab(tmp_path / "lab", budget=6)


def script(root: Path, steps: dict) -> dict:
    path = root.parent / "script.json"
    path.write_text(json.dumps(steps))
    return {"SWARM_SCRIPT": str(path), "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def swarm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoresearch.cli", "swarm", "--agent", AGENT, "--rule", "strict",
            "--backoff", "1000", *args]


def leftovers(root: Path) -> list[str]:
    """Processes that still work for this workspace (its path in their command line or environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(root).encode() in text:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
    return found


def assert_clean(root: Path) -> None:
    assert not (root / ".autoresearch" / "swarm").exists()
    deadline = time.time() + 20
    while leftovers(root) and time.time() < deadline:
        time.sleep(0.5)
    assert leftovers(root) == []
    assert not [r for r in rows(root) if r["status"] == "running"]
    keeps = [r for r in rows(root) if r["status"] == "keep"]
    assert git(root, "rev-parse", "HEAD") == keeps[-1]["commit"]
    assert [k["parent"] for k in keeps[1:]] == [k["commit"] for k in keeps[:-1]]   # never from a stale parent


@contextmanager
def ray_cluster(env: dict):
    """`ray start --head` on this machine, as a user starts a cluster's head node; its address."""
    import ray as ray_api

    ray = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard",
                            "false", "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"{ray_api.util.get_node_ip_address()}:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_two_workers_on_a_ray_cluster_share_one_frontier_skip_a_duplicate_and_rerun_a_stale_win(roomy_lab):
    lab = roomy_lab
    short = tempfile.mkdtemp(prefix="ray-", dir="/tmp")   # Ray's socket paths must stay under 108 bytes
    # Both workers have the same script: whichever runs the baseline (Ray decides which actor is ready first),
    # the other claims "fix matrix lr" first; the same change from the first is then a duplicate, and its
    # "fix embedding lr" runs beside it, on the old frontier, so it goes stale when the matrix fix is kept.
    steps = [{"replace": A, "description": "fix matrix lr"}, {"replace": B, "description": "fix embedding lr"}]
    env = {**os.environ, **script(lab, {"w1": steps, "w2": steps}),
           "RAY_TMPDIR": short, "RAY_AUTH_MODE": "token", "HOME": short}   # Ray's token authentication,
    # as the README says: a token generated once (in a home of the test's own: nothing left from another test)
    token = subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert token.returncode == 0 and (Path(short) / ".ray" / "auth_token").is_file(), token.stderr
    with ray_cluster(env) as address:
        done = subprocess.run(swarm_cmd("--ray", address, "--workers", "2", "--max-experiments", "4"), cwd=lab,
                              env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    by_desc = {r["description"]: r for r in rows(lab)}
    base, a = by_desc["baseline"], by_desc["fix matrix lr"]
    assert base["status"] == "keep" and a["status"] == "keep" and a["parent"] == base["commit"]
    stale = [r for r in rows(lab) if r["description"] == "fix embedding lr"]
    assert [r["status"] for r in stale][0] == "stale", done.stdout
    assert "re-applied" in stale[0]["reason"] and stale[0]["parent"] == base["commit"]
    assert stale[1]["parent"] == a["commit"] and stale[1]["status"] in ("keep", "discard")
    # the matrix fix from the baseline's worker; and the other's embedding fix when it came while the first
    # one's was still running (else it no longer applied to the frontier: a failed proposal, not a duplicate)
    assert [t["outcome"] for t in table(lab, "proposals")].count("duplicate") in (1, 2), done.stdout
    assert {r["worker"] for r in rows(lab)} == {"w1", "w2"}
    assert all(r["platform"] and r["worker"] for r in table(lab, "runs"))
    assert base["test_bpb"] is not None and a["test_bpb"] is not None
    assert_clean(lab)
    other = ({"w1", "w2"} - {a["worker"]}).pop()
    seen = [json.loads(line) for line in (lab.parent / f"observed-{other}.jsonl").read_text().splitlines()]
    assert {"fix matrix lr", "baseline"} <= {s["description"] for s in seen}   # it heard of the other's win
    status = run_cli("status", cwd=lab, env={"COLUMNS": "250"})   # a wide terminal: no column cut
    assert status.returncode == 0 and "worker" in status.stdout and "stale" in status.stdout
    show = run_cli("show", str(stale[0]["id"]), cwd=lab)
    assert f"worker       {stale[0]['worker']}" in show.stdout and "platform cpu:" in show.stdout


def _worker_of(root: Path, name: str) -> int | None:
    """The pid of the Ray actor process of worker `name`: the nearest ray:: ancestor of its train.py."""
    folder = str(root / ".autoresearch" / "swarm" / name).encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"train.py" in (entry / "cmdline").read_bytes() \
                    and folder in (entry / "environ").read_bytes():
                pid = int(entry.name)
                while pid > 1:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if cmd.startswith(b"ray::"):
                        return pid
                    pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


def test_a_killed_worker_loses_its_claim_once_and_the_others_go_on(lab):
    env = script(lab, {"w2": [{"replace": A, "description": "dies with its worker"}],
                       "w1": [{"replace": B, "description": "fix embedding lr"},
                              {"replace": A, "description": "fix matrix lr"}]})
    proc = subprocess.Popen(swarm_cmd("--workers", "2", "--max-experiments", "3"), cwd=lab,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, pid = time.time() + 300, None
        while pid is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            pid = _worker_of(lab, "w2")
        assert pid is not None, "w2 never trained"
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    lost = [r for r in rows(lab) if r["description"] == "dies with its worker"]
    assert [(r["status"], r["error_class"]) for r in lost] == [("crash", "lost")], out
    assert "fix embedding lr" in {r["description"] for r in rows(lab) if r["worker"] == "w1"}   # w1 went on
    assert "w2 is gone" in out
    assert_clean(lab)


def test_a_killed_hub_is_recovered_by_the_next_swarm_with_no_row_lost_or_doubled(lab):
    env = {**os.environ, **script(lab, {"w1": [{"replace": B, "description": "fix embedding lr"}],
                                        "w2": [{"replace": A, "description": "killed with the hub"}]})}
    proc = subprocess.Popen(swarm_cmd("--workers", "2"), cwd=lab, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while _worker_of(lab, "w2") is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert _worker_of(lab, "w2") is not None, "w2 never trained"
        proc.kill()                                  # SIGKILL: the hub has no chance to clean up
        proc.wait()
    finally:
        proc.kill()
    assert [r["status"] for r in rows(lab) if r["description"] == "killed with the hub"] == ["running"]
    script(lab, {"fail_start": ["w2"], "w1": [{"replace": A, "description": "after the restart"}]})
    again = subprocess.run(swarm_cmd("--workers", "2", "--max-experiments", "1"), cwd=lab, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "recover:" in again.stderr and "interrupted" in again.stderr
    assert "w2 cannot start: AgentUnavailable: w2 was told not to start" in again.stdout   # the others go on
    assert [r["status"] for r in rows(lab) if r["description"] == "after the restart"] in (["keep"], ["discard"])
    killed = [r for r in rows(lab) if r["description"] == "killed with the hub"]
    assert [(r["status"], r["error_class"]) for r in killed] == [("crash", "interrupted")]
    assert len({r["id"] for r in rows(lab)}) == len(rows(lab))
    assert_clean(lab)
