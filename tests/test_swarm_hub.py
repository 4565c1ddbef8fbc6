"""The swarm's hub on a real workspace (git repository, ledger, session), fed the results workers would
send: which results it keeps, which it re-applies, which it refuses to compare. No training here (the
numbers are given), so every outcome is deterministic; tests/test_swarm.py runs real workers."""

from __future__ import annotations

import subprocess

import pytest

from autoresearch.git import git
from autoresearch.guard import session
from autoresearch.swarm.hub import Hub, WorkerState, change_hash

PA, PB = "cpu: A x1 threads | torch 2 | budget 4s", "cuda: B x1 | torch 2 | budget 4s"


@pytest.fixture
def hub(workspace):
    with session(workspace.root, "off") as s:
        yield Hub(s, rule="strict", say=lambda line: None)


def sample(val, worker="w1", status="ok", error_class=""):
    return {"status": status, "val_bpb": val if status == "ok" else None, "error_class": error_class,
            "error_excerpt": "", "log": "a log\n", "worker": worker}


def take(hub: Hub, w: WorkerState) -> dict:
    job = hub.next_job(w)
    assert job is not None, f"no job for {w.name}"
    w.job = job
    return job


def propose(hub: Hub, w: WorkerState, old: str, new: str, description: str) -> dict | None:
    """Worker `w` asks for work, gets a proposal job, and answers it with train.py edited old -> new."""
    job = take(hub, w)
    assert job["method"] == "propose", job
    assert old in job["files"]["train.py"]
    hub.proposed(w, job, {"proposal": {"description": description, "model": "script"}, "seconds": 0.1,
                          "files": {"train.py": job["files"]["train.py"].replace(old, new, 1)}})
    return hub.next_job(w)


def baseline(hub: Hub, w: WorkerState, val: float) -> None:
    job = take(hub, w)
    assert job["method"] == "measure" and job["kind"] == "experiment"
    hub.measured(w, job, sample(val, w.name))
    test = hub.next_job(w)
    assert test["method"] == "score_test"
    hub.tested(test, {"test_bpb": val + 0.01})


def ledger_rows(hub):
    return {e.id: e for e in hub.ledger.all(hub.branch)}


def test_two_winners_on_one_parent_the_second_is_reapplied_and_rerun_never_kept_stale(hub):
    w1, w2 = WorkerState("w1", "h", PA), WorkerState("w2", "h", PA)
    baseline(hub, w1, 2.0)
    base = hub.frontier()
    assert git(hub.root, "rev-parse", "HEAD") == base.commit and base.status == "keep"

    run_a = propose(hub, w1, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "A: matrix lr")
    run_b = propose(hub, w2, "WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.4", "B: warmdown")
    run_c = propose(hub, WorkerState("w3", "h", PA), "MATRIX_LR = 0.04", "MATRIX_LR = 0.03", "C: matrix lr too")
    assert run_a["exp"] != run_b["exp"] != run_c["exp"]
    hub.measured(w1, run_a, sample(1.9))                       # A wins first: kept
    a = hub.frontier()
    assert a.description == "A: matrix lr" and a.parent == base.commit
    assert git(hub.root, "rev-parse", "HEAD") == a.commit
    assert hub.next_job(w1)["method"] == "score_test"

    hub.measured(w2, run_b, sample(1.8, "w2"))                 # B also beat the baseline, but A moved on
    rows = ledger_rows(hub)
    b = rows[run_b["exp"]]
    assert b.status == "stale" and "re-applied" in b.reason
    rerun = hub.next_job(w2)
    again = rows[rerun["exp"]]
    assert rerun["kind"] == "experiment" and again.parent == a.commit and again.status == "running"
    merged = rerun["files"]["train.py"]
    assert "MATRIX_LR = 0.05" in merged and "WARMDOWN_RATIO = 0.4" in merged
    assert hub.frontier().commit == a.commit               # nothing advanced from the stale parent

    hub.measured(WorkerState("w3", "h", PA), run_c, sample(1.7, "w3"))   # C changed A's line: a conflict
    c = ledger_rows(hub)[run_c["exp"]]
    assert c.status == "stale" and "conflict" in c.reason
    assert hub.frontier().commit == a.commit

    hub.measured(w2, rerun, sample(1.85, "w2"))                # B on top of A: judged against A
    final = ledger_rows(hub)[rerun["exp"]]
    assert final.status == "keep" and final.frontier_bpb == pytest.approx(1.9)
    keeps = [e for e in hub.ledger.all(hub.branch) if e.status == "keep"]
    assert [k.parent for k in keeps[1:]] == [k.commit for k in keeps[:-1]]   # a chain: no stale advance
    assert git(hub.root, "rev-parse", "HEAD") == final.commit


def test_a_duplicate_is_skipped_while_running_and_after_it_finished_on_the_same_parent(hub):
    w1, w2 = WorkerState("w1", "h", PA), WorkerState("w2", "h", PA)
    baseline(hub, w1, 2.0)
    first = propose(hub, w1, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "A")
    propose(hub, w2, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "A again")
    attempts = hub.ledger.attempts(hub.branch)
    assert attempts[-1].outcome == "duplicate" and f"#{first['exp']}" in attempts[-1].error
    assert [r["error_class"] for r in w2.pending_observe] == ["duplicate"]   # its agent is told
    hub.measured(w1, first, sample(2.1))                       # discarded
    w2.job = None
    propose(hub, w2, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "A once more")
    assert hub.ledger.attempts(hub.branch)[-1].outcome == "duplicate"
    assert sum(e.description.startswith("A") for e in hub.ledger.all(hub.branch)) == 1
    same = ({"t.py": "x = 1\n"}, {"t.py": "x = 2\n"}), ({"t.py": "y\nx = 1\n"}, {"t.py": "y\nx = 2\n"})
    assert change_hash(*same[0]) == change_hash(*same[1])
    two = {"a.py": "x = 1\n", "b.py": "x = 1\n"}   # the same edit in another file is another change
    assert change_hash(two, {**two, "a.py": "x = 2\n"}) != change_hash(two, {**two, "b.py": "x = 2\n"})


def test_each_platform_measures_the_frontier_itself_and_is_compared_only_with_itself(hub):
    wa, wb = WorkerState("wa", "h", PA), WorkerState("wb", "g", PB)
    baseline(hub, wa, 2.0)                                      # measured on platform A
    job = take(hub, wb)                                         # B has never seen the frontier
    assert job["method"] == "measure" and job["kind"] == "frontier"
    assert take(hub, WorkerState("wb2", "g", PB))["method"] == "propose"   # one frontier run in flight is enough
    hub.measured(wb, job, sample(3.0, "wb"))
    cand = propose(hub, wb, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "B-only")
    hub.measured(wb, cand, sample(2.5, "wb"))                   # worse than A's 2.0, better than B's 3.0
    exp = ledger_rows(hub)[cand["exp"]]
    assert exp.status == "keep" and exp.frontier_bpb == pytest.approx(3.0) and exp.platform == PB
    runs = hub.ledger.runs(hub.branch)
    assert {r["platform"] for r in runs} == {PA, PB} and all(r["worker"] for r in runs)


def test_noise_rule_measures_each_platforms_floor_before_deciding(workspace):
    with session(workspace.root, "off") as s:
        hub = Hub(s, rule="noise", noise_runs=2, say=lambda line: None)
        w1, w2 = WorkerState("w1", "h", PA), WorkerState("w2", "h", PA)
        baseline(hub, w1, 2.0)
        jobs = [take(hub, w) for w in (w1, w2)]
        assert [j["kind"] for j in jobs] == ["frontier", "frontier"]   # 1 + 2 repeats wanted, 1 measured
        cand = propose(hub, WorkerState("w3", "h", PA), "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "A")
        hub.measured(WorkerState("w3", "h", PA), cand, sample(1.5, "w3"))
        assert ledger_rows(hub)[cand["exp"]].status == "running"      # waits for the floor
        for w, j, v in zip((w1, w2), jobs, (2.01, 1.99)):
            hub.measured(w, j, sample(v, w.name))
        assert ledger_rows(hub)[cand["exp"]].status == "keep"


def test_a_lost_claim_is_recorded_once_and_verify_needs_a_second_worker(workspace):
    with session(workspace.root, "off") as s:
        hub = Hub(s, rule="strict", verify=True, say=lambda line: None)
        w1, w2 = WorkerState("w1", "h", PA), WorkerState("w2", "h", PA)
        baseline(hub, w1, 2.0)
        job = propose(hub, w1, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "A")
        hub.lost(w1, job, "w1 died")
        hub.lost(w1, job, "w1 died")
        lost = ledger_rows(hub)[job["exp"]]
        assert (lost.status, lost.error_class) == ("crash", "lost")
        assert sum(e.error_class == "lost" for e in hub.ledger.all(hub.branch)) == 1
        w1.job = None
        job = propose(hub, w1, "MATRIX_LR = 0.04", "MATRIX_LR = 0.06", "B")
        hub.measured(w1, job, sample(1.8))
        assert hub.frontier().description == "baseline"                # not yet: a second worker verifies
        verify = hub.next_job(w2)
        assert verify["kind"] == "verify" and verify["exp"] == job["exp"]
        assert hub.queue == []                                          # taken by w2, never by w1
        hub.measured(w2, verify, sample(1.82, "w2"))
        kept = hub.frontier()
        assert kept.description == "B" and kept.samples == 2


def test_report_and_plot_show_each_worker_and_platform(hub, tmp_path):
    from autoresearch.history import reading
    from autoresearch.plot import plot_progress, swarm_groups
    from autoresearch.report import write_report

    wa, wb = WorkerState("wa", "h", PA), WorkerState("wb", "g", PB)
    baseline(hub, wa, 2.0)
    job = take(hub, wb)
    hub.measured(wb, job, sample(3.0, "wb"))
    for w, old, new, val in ((wb, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", 3.2),
                             (wa, "WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.4", 2.1)):
        w.job = None
        cand = propose(hub, w, old, new, f"by {w.name}")
        hub.measured(w, cand, sample(val, w.name))
    rows = hub.ledger.all(hub.branch)
    drawn = plot_progress(rows, tmp_path / "progress.png")
    assert "kept (edge: its platform)" in drawn.legend       # two platforms: points coloured by platform
    by, group = swarm_groups(rows)
    assert by == "platform" and set(group.values()) == {"cpu: A x1 threads", "cuda: B x1"}
    with reading(hub.root) as h:
        write_report(h, tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert '<th data-key="worker">worker</th>' in page and PB in page


def test_a_worker_on_a_machine_without_the_prepared_data_says_so_at_start(workspace, tmp_path, monkeypatch):
    from autoresearch.swarm.worker import Worker
    from autoresearch.workspace import WorkspaceError

    root = workspace.root
    files = {name: (root / name).read_bytes() for name in ("autoresearch.toml", "program.md", "train.py")}
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "empty-cache"))   # another machine: nothing prepared
    spec = {"name": "w1", "workspace": str(tmp_path / "elsewhere"), "host": "another-host", "swarm_id": "s1",
            "branch": "autoresearch/test", "files": files, "agent": "optuna", "sandbox": "off", "seed": 1}
    worker = Worker(spec)
    with pytest.raises(WorkspaceError, match="no prepared data for profile 'cpu'"):
        worker.start()
    assert worker.root.is_relative_to(tmp_path / "empty-cache")   # not on the workspace's machine: the cache
    worker.stop()
    assert not worker.root.exists()


def test_a_change_whose_run_was_lost_may_be_tried_again(hub):
    w1 = WorkerState("w1", "h", PA)
    baseline(hub, w1, 2.0)
    job = propose(hub, w1, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "A")
    hub.lost(w1, job, "w1 died")
    w1.job = None
    again = propose(hub, w1, "MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "A again")
    assert again is not None and again["kind"] == "experiment"
    assert hub.ledger.attempts(hub.branch)[-1].outcome == "proposed"


def test_a_candidate_of_several_files_is_committed_at_any_depth_and_merged_file_by_file(tmp_path):
    from autoresearch.git import commit_files, show_file
    from autoresearch.swarm.hub import _merge

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    for name, text in (("a.py", "A = 1\n"), ("src/b.py", "B = 1\n#\n#\nC = 1\n"), ("src/keep.py", "K = 1\n")):
        (repo / name).write_text(text)
    (repo / "src" / "run.sh").write_text("#!/bin/sh\n")
    (repo / "src" / "run.sh").chmod(0o755)
    git_ = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True).stdout  # noqa: E731
    git_("init", "-q")
    git_("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git_("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "base")
    parent = git_("rev-parse", "HEAD").strip()
    status = git_("status", "--porcelain")
    commit = commit_files(repo, parent, {"a.py": "A = 2\n", "src/b.py": "B = 2\n#\n#\nC = 1\n"}, "two files")
    assert show_file(repo, commit, "a.py") == b"A = 2\n" and show_file(repo, commit, "src/b.py") == b"B = 2\n#\n#\nC = 1\n"
    assert show_file(repo, commit, "src/keep.py") == b"K = 1\n"                      # the rest of the tree kept
    assert "100755" in git_("ls-tree", "-r", commit, "src/run.sh")                    # and its modes
    assert git_("rev-parse", "HEAD").strip() == parent and git_("status", "--porcelain") == status  # nothing moved
    base = {"a.py": "A = 1\n", "src/b.py": "B = 1\n#\n#\nC = 1\n"}
    front = {"a.py": "A = 1\n", "src/b.py": "B = 1\n#\n#\nC = 3\n"}                        # the frontier moved C
    assert _merge(base, front, {"a.py": "A = 2\n", "src/b.py": "B = 2\n#\n#\nC = 1\n"}) == \
        {"a.py": "A = 2\n", "src/b.py": "B = 2\n#\n#\nC = 3\n"}
    assert _merge(base, front, {"a.py": "A = 2\n", "src/b.py": "B = 1\n#\n#\nC = 4\n"}) == "src/b.py"   # a conflict, named
