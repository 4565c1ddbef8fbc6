"""The sandbox's command lines (an allowlist: nothing bound that is not named) and, where bubblewrap runs,
a short Python inside it: it imports the package, has no privilege, and what it writes stays the harness's.
The attacks through `autoresearch run` are in tests/redteam/test_redteam_sandbox.py."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch import sandbox
from autoresearch.harness.paths import prepared_dir

needs_sandbox = pytest.mark.skipif(sandbox.probe() != "", reason=f"no sandbox here: {sandbox.probe()}")


def binds(args: list[str]) -> dict[str, str]:
    """Destination -> kind of every bind and tmpfs in a bwrap command line."""
    out, i = {}, 0
    while i < len(args) and args[i] != "--":
        if args[i] in ("--bind", "--ro-bind", "--dev-bind"):
            out[args[i + 2]] = args[i]
            i += 3
        elif args[i] in ("--tmpfs", "--dev", "--proc", "--remount-ro", "--chdir"):
            out.setdefault(args[i + 1], args[i])
            i += 2
        else:
            i += 1
    return out


@pytest.fixture
def lab(cache_dir, tmp_path) -> Path:
    """A stand-in workspace (the command line needs only its paths) with a run folder."""
    root = tmp_path / "lab"
    (root / "runs" / "0001").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "train.py").write_text("print('hello')\n")
    (root / "autoresearch.toml").write_text("# a stand-in\n")
    return root


def test_the_train_command_binds_an_allowlist(lab):
    env = {}
    args = sandbox.train_command(["python", "train.py"], lab, lab / "runs" / "0001", "cpu", "text", env)
    seen, package = binds(args), sandbox.package_dir()
    assert args[0] == "bwrap" and args[-2:] == ["python", "train.py"]
    for flag in ("--unshare-user", "--disable-userns", "--unshare-net", "--unshare-pid", "--die-with-parent"):
        assert flag in args
    assert args[args.index("--cap-drop") + 1] == "ALL" and args[args.index("--uid") + 1] != "0"
    bound = {d for d, kind in seen.items() if kind.endswith("bind")}
    assert "/" not in bound and "/dev" not in bound and seen["/"] == "--remount-ro"
    assert seen[str(package)] == "--ro-bind" and str(package.parent) not in seen
    assert seen[str(package / "harness" / "corpus")] == "--tmpfs", "the packaged corpus is hidden"
    assert seen[str(lab)] == "--tmpfs" and seen[str(lab / "runs" / "0001")] == "--bind"
    assert {d for d, kind in seen.items() if kind == "--bind"} == {str(lab / "runs" / "0001")}
    data = prepared_dir("cpu")
    visible = {Path(d).name for d in seen if Path(d).parent == data}
    assert visible == set(sandbox.TRAIN_FILES), "of the data only the tokenizer and the train split"
    for hidden in (lab / ".git", lab / ".autoresearch", data / "val.bin", data / "test.bin",
                   Path(os.environ["AUTORESEARCH_CACHE"]) / "raw"):
        assert not any(d == str(hidden) or d.startswith(f"{hidden}/") for d in seen), hidden
    assert str(Path.home()) not in seen, "the home folder is not bound (only a Python prefix inside it, if any)"
    assert seen["/tmp"] == "--tmpfs" and "/etc/shadow" not in seen and "/etc" not in seen
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/tmp/") and env["HOME"] == "/tmp"


def test_the_evaluator_sees_the_data_it_scores_and_writes_only_its_run_folder(lab):
    run = lab / "runs" / "0001"
    cmd = [sys.executable, "-m", "autoresearch.harness.evaluate", "--program", str(run / "model.pt2"),
           "--workspace", str(lab), "--split", "val", "--out", str(run / "eval-val.json")]
    args = sandbox.eval_command(cmd, run, {}, profile_name="cpu")
    seen = binds(args)
    assert seen[str(prepared_dir("cpu"))] == "--ro-bind" and seen[str(lab / "autoresearch.toml")] == "--ro-bind"
    assert {d for d, kind in seen.items() if kind == "--bind"} == {str(run)}
    assert args[args.index("--chdir") + 1] == "/tmp", "nothing of the run folder on its import path"
    assert str(lab / "train.py") not in seen and str(lab / ".git") not in seen


def test_the_reason_when_the_sandbox_is_not_used(monkeypatch):
    monkeypatch.delenv(sandbox.MODE_ENV, raising=False)
    assert "off" in sandbox.unenforced_reason("off")
    monkeypatch.setattr(sandbox, "probe", lambda: "bubblewrap is not installed")
    assert sandbox.resolve("auto") == "none"
    assert sandbox.unenforced_reason("auto") == "no sandbox: bubblewrap is not installed"
    with pytest.raises(sandbox.SandboxError, match="required but unavailable: bubblewrap is not installed"):
        sandbox.unenforced_reason("require")
    monkeypatch.setattr(sandbox, "probe", lambda: "")
    assert sandbox.unenforced_reason("auto") == "" and sandbox.unenforced_reason("require") == ""


INSIDE = """
import os, pathlib, sys
import autoresearch
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
print("package", autoresearch.__file__)
print("caps", status["CapEff"].strip(), "nnp", status["NoNewPrivs"].strip(), "uid", os.getuid())
run = pathlib.Path(os.environ["RUN"])
(run / "deep" / "er").mkdir(parents=True)
(run / "deep" / "er" / "private.bin").write_bytes(b"x")
os.chmod(run / "deep" / "er" / "private.bin", 0o600)
pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).mkdir(parents=True)
print("root", sorted(os.listdir("/")))
"""


@needs_sandbox
def test_inside_python_imports_the_package_without_privilege_and_its_files_stay_the_harness(lab):
    run = lab / "runs" / "0001"
    env = {**os.environ, "RUN": str(run)}
    cmd = sandbox.train_command([sys.executable, "-c", INSIDE], lab, run, "cpu", "text", env)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"package {sandbox.package_dir() / '__init__.py'}" in done.stdout
    assert f"caps 0000000000000000 nnp 1 uid {sandbox.UID}" in done.stdout
    root = ast.literal_eval(done.stdout.split("root ", 1)[1].strip())
    assert set(root) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys", "tmp",
                         "usr", *Path(sys.prefix).parts[1:2], *sandbox.package_dir().parts[1:2]}, root
    written = run / "deep" / "er" / "private.bin"
    assert written.stat().st_uid == os.getuid() and written.read_bytes() == b"x"
    shutil.rmtree(run / "deep")  # the parent removes what train.py wrote
