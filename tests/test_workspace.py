"""`autoresearch init` and `prepare` through the real console script."""

from __future__ import annotations


import pytest

from autoresearch.harness.settings import Settings
from autoresearch.workspace import WorkspaceError, default_tag, init_workspace, render_train_py
from autoresearch.harness.profiles import get_profile
from conftest import git, run_cli


def test_init_creates_a_frozen_workspace(tmp_path):
    root = tmp_path / "lab"
    proc = run_cli("init", str(root), "--profile", "cpu", "--budget", "7", "--tag", "mytag", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert git(root, "symbolic-ref", "--short", "HEAD") == "autoresearch/mytag"
    assert git(root, "status", "--porcelain") == ""
    assert sorted(git(root, "ls-files").split()) == [".gitignore", "autoresearch.toml", "program.md", "train.py"]
    settings = Settings.load(root)
    assert settings.profile.name == "cpu" and settings.profile.time_budget == 7.0
    assert settings.profile.max_seq_len == 256 and settings.profile.vocab_size == 2048
    assert settings.harness_fingerprint and settings.data == {}
    ignored = (root / ".gitignore").read_text()
    assert "results.tsv" in ignored and "runs/" in ignored
    train = (root / "train.py").read_text()
    assert "DEPTH = 2 " in train and "from autoresearch.harness import" in train
    assert "autoresearch/mytag" in (root / "program.md").read_text()


def test_default_tag_is_the_date():
    import datetime

    assert default_tag(datetime.date(2026, 11, 22)) == "nov22"
    assert default_tag(datetime.date(2026, 3, 5)) == "mar5"


@pytest.mark.parametrize("args, message", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--profile", "cpu", "--budget", "-3"], "budget must be positive"),
    (["--profile", "cpu", "--tag", "bad tag"], "invalid tag"),
])
def test_init_refuses_bad_arguments_cleanly(tmp_path, args, message):
    proc = run_cli("init", str(tmp_path / "lab"), *args, cwd=tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "lab").exists() or not any((tmp_path / "lab").iterdir())


def test_init_refuses_a_non_empty_directory_and_touches_nothing(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("my notes")
    proc = run_cli("init", str(root), "--profile", "cpu", cwd=tmp_path)
    assert proc.returncode == 1 and "not empty" in proc.stderr
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
    assert (root / "notes.txt").read_text() == "my notes"


def test_new_tag_in_existing_workspace_and_existing_branch_refused(tmp_path):
    root = tmp_path / "lab"
    init_workspace(root, "cpu", tag="one")
    init_workspace(root, "cpu", tag="two")
    assert git(root, "symbolic-ref", "--short", "HEAD") == "autoresearch/two"
    with pytest.raises(WorkspaceError, match="already exists"):
        init_workspace(root, "cpu", tag="one")
    with pytest.raises(WorkspaceError, match="frozen"):
        init_workspace(root, "h100", tag="three")


def test_train_py_defaults_follow_the_profile():
    cpu, h100 = render_train_py(get_profile("cpu")), render_train_py(get_profile("h100"))
    assert "DEPTH = 2 " in cpu and "HEAD_DIM = 64 " in cpu and 'WINDOW_PATTERN = "L"' in cpu
    assert "DEPTH = 8 " in h100 and "TOTAL_BATCH_SIZE = 2**19" in h100
    compile(cpu, "train.py", "exec")  # still valid Python, comments kept
    assert "# number of transformer layers" in cpu


def test_prepare_in_workspace_pins_fingerprints_once(cache_dir, tmp_path):
    root = tmp_path / "lab"
    init_workspace(root, "cpu", tag="t")
    proc = run_cli("prepare", cwd=root)
    assert proc.returncode == 0, proc.stderr
    settings = Settings.load(root)
    assert set(settings.data) == {"data_fingerprint", "tokenizer_fingerprint"}
    assert git(root, "status", "--porcelain") == ""
    assert "pin data" in git(root, "log", "-1", "--format=%s")
    again = run_cli("prepare", cwd=root)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert len(git(root, "log", "--format=%h").split()) == 2  # no second pin commit

    # a workspace pinned to other data refuses to use this cache
    text = (root / "autoresearch.toml").read_text().replace(settings.data["data_fingerprint"], "0" * 64)
    (root / "autoresearch.toml").write_text(text)
    bad = run_cli("prepare", cwd=root)
    assert bad.returncode == 1 and "not be comparable" in bad.stderr


def test_prepare_outside_a_workspace_needs_a_profile(tmp_path, cache_dir):
    proc = run_cli("prepare", cwd=tmp_path)
    assert proc.returncode == 1 and "autoresearch init" in proc.stderr and "Traceback" not in proc.stderr


def test_prepare_without_network_is_a_clear_error(tmp_path, cache_dir):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {"AUTORESEARCH_CACHE": str(tmp_path / "empty-cache"), "AUTORESEARCH_CLIMBMIX_URL": f"http://127.0.0.1:{port}"}
    proc = run_cli("prepare", "--profile", "h100", "--num-shards", "1", cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2
    assert "network" in proc.stderr and "cpu" in proc.stderr and "Traceback" not in proc.stderr


def test_a_workspace_from_an_older_release_keeps_its_metric_and_says_so(workspace):
    """A 0.1 workspace (no metric_version, another fingerprint) keeps working, scored by metric 1; an
    installation edited in place (same version, other files) is refused."""
    from autoresearch import __version__
    from autoresearch.guard import check_frozen, metric_note
    from autoresearch.harness.settings import METRIC_VERSION

    settings = Settings.load(workspace.root)
    assert settings.metric_version == METRIC_VERSION and metric_note(settings) is None
    check_frozen(settings)

    legacy = Settings.load(workspace.root)
    legacy.harness_version, legacy.harness_fingerprint = "0.1.0", "0"
    legacy.save()
    toml = workspace.root / "autoresearch.toml"
    toml.write_text("".join(l for l in toml.read_text().splitlines(True) if not l.startswith("metric_version")))
    legacy = Settings.load(workspace.root)
    assert legacy.metric_version == 1
    check_frozen(legacy)  # no error: a release the installed harness can still score
    note = metric_note(legacy)
    assert "metric 1" in note and "NOT comparable" in note and "0.1.0" in note

    legacy.harness_version = __version__  # the same release with other files: edited in place
    with pytest.raises(WorkspaceError, match="edited installation"):
        check_frozen(legacy)
    legacy.harness_version, legacy.metric_version = "9.0.0", 9
    with pytest.raises(WorkspaceError, match="metric 9"):
        check_frozen(legacy)
