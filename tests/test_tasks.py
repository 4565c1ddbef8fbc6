"""Tasks beyond train.py (task.py): the built-in speed and tabular tasks end to end through the real CLI
(init --task, prepare, run, loop with the optuna agent, status, show, lineage, report), a task written by a
user in a temp folder (a metric to maximize), and bad task folders and evaluators: each a clear error that
changes nothing. The cheats of each task kind are in tests/redteam/test_redteam_tasks.py."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import git, rows, run_cli

from autoresearch import task as tasks


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own (the tasks prepare into it; the GPT data are not needed)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(path))
    monkeypatch.delenv("AUTORESEARCH_WORKSPACE", raising=False)
    return path


def new_task_lab(root: Path, task: str, tag: str = "t") -> Path:
    done = run_cli("init", str(root), "--task", task, "--tag", tag, cwd=root.parent)
    assert done.returncode == 0, done.stderr
    done = run_cli("prepare", cwd=root)
    assert done.returncode == 0, done.stderr
    return root


def ok(done) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# ---------------------------------------------------------------------------
# The built-in tasks, end to end

def test_tasks_lists_the_builtin_ones(cache, tmp_path):
    out = ok(run_cli("tasks", cwd=tmp_path, env={"COLUMNS": "200"}))
    for name in ("gpt", "speed", "tabular"):
        assert name in out
    assert "median_seconds" in out and "log_loss" in out


@pytest.mark.parametrize("name, metric", [("speed", "median_seconds"), ("tabular", "log_loss")])
def test_builtin_task_run_and_loop(cache, tmp_path, name, metric):
    lab = new_task_lab(tmp_path / "lab", name)
    assert (lab / "task.toml").is_file() and (lab / "program.md").is_file()
    assert "[task]" in (lab / "autoresearch.toml").read_text()
    assert not git(lab, "status", "--porcelain")

    out = ok(run_cli("run", "-m", "baseline", cwd=lab))
    assert out.startswith("keep") and metric in out
    first = rows(lab)[0]
    assert first["status"] == "keep" and first["val_bpb"] > 0 and first["test_bpb"] > 0  # the hidden split too
    assert json.loads((lab / "runs" / "0001" / "eval-val.json").read_text())["valid"] is True

    done = run_cli("loop", "--max-experiments", "2", "--noise-runs", "2", cwd=lab)
    ok(done)
    ledger = rows(lab)
    assert len(ledger) == 3 and all(r["status"] in ("keep", "discard") for r in ledger), ledger
    assert all(r["agent"] == "optuna" for r in ledger[1:])
    assert not git(lab, "status", "--porcelain")  # the tree is the frontier again

    status = ok(run_cli("status", cwd=lab, env={"COLUMNS": "200"}))
    assert f"task {name}" in status and metric in status and f"test_{metric}" in status
    shown = ok(run_cli("show", "2", cwd=lab))
    assert metric in shown and f"diff of {tasks.load(lab).editable[0]}" in shown
    assert metric in ok(run_cli("lineage", cwd=lab))
    ok(run_cli("report", cwd=lab))
    assert metric in (lab / "report" / "report.html").read_text()
    data = json.loads(ok(run_cli("status", "--json", cwd=lab)))
    assert data["metric"] == metric and data["direction"] == "minimize" and data["task"] == name


def test_task_guard_rejects_frozen_files_and_refuses_an_edited_task_toml(cache, tmp_path):
    lab = new_task_lab(tmp_path / "lab", "speed")
    ok(run_cli("run", "-m", "baseline", cwd=lab))
    (lab / "evaluate.py").write_text((lab / "evaluate.py").read_text() + "\n# mine\n")
    done = run_cli("run", "-m", "edit the evaluator", cwd=lab)
    assert done.returncode == 5 and "rejected" in done.stdout and "evaluate.py" in done.stdout
    git(lab, "checkout", "--", "evaluate.py")
    (lab / "helper.py").write_text("X = 1\n")  # a new file, even a code file, is out of scope
    assert run_cli("run", "-m", "new file", cwd=lab).returncode == 5
    (lab / "helper.py").unlink()

    toml = (lab / "task.toml").read_text()
    (lab / "task.toml").write_text(toml.replace('editable = ["solution.py"]', 'editable = ["solution.py", "selftest.py"]'))
    done = run_cli("run", "-m", "widen the scope", cwd=lab)
    assert done.returncode == 1 and "task.toml differs from the frontier" in done.stderr
    assert len(rows(lab)) == 3


# ---------------------------------------------------------------------------
# A task written by a user (README: "Writing a task"), with a metric to maximize

USER_TASK = {
    "task.toml": """\
        name = "guess"
        description = "put X close to the hidden target"
        editable = ["guess.py"]
        run = "python guess.py"
        evaluate = "python score.py"
        metric = "closeness"
        direction = "maximize"
        rule = "strict"
        budget = 10
        """,
    "guess.py": """\
        import json, os

        # @autoresearch:hyperparameters-begin
        X = 3.0              # the guess
        # @autoresearch:hyperparameters-end

        with open(os.path.join(os.environ["AUTORESEARCH_RUN_DIR"], "answer.json"), "w") as f:
            json.dump({"x": X}, f)
        """,
    "score.py": """\
        import json, os
        TARGET = {"val": 7.0, "test": 6.5}[os.environ["AUTORESEARCH_SPLIT"]]
        try:
            x = json.load(open(os.path.join(os.environ["AUTORESEARCH_RUN_DIR"], "answer.json")))["x"]
            result = {"valid": True, "metric": -(x - TARGET) ** 2, "metrics": {"x": x}}
        except (OSError, ValueError, KeyError, TypeError) as e:
            result = {"valid": False, "reason": f"no answer: {e}"}
        json.dump(result, open(os.environ["AUTORESEARCH_RESULT"], "w"))
        """,
}


def write_task(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def set_guess(lab: Path, x: float) -> None:
    path = lab / "guess.py"
    path.write_text(path.read_text().replace(path.read_text().split("X = ")[1].split()[0], repr(x), 1))


def test_user_task_from_a_folder_maximizes(cache, tmp_path):
    folder = write_task(tmp_path / "mytask", USER_TASK)
    lab = new_task_lab(tmp_path / "lab", str(folder))
    out = ok(run_cli("run", "-m", "baseline", cwd=lab))
    assert out.startswith("keep") and "closeness -16.000000" in out
    set_guess(lab, 5.0)
    out = ok(run_cli("run", "-m", "closer", cwd=lab))  # the task's rule (strict) is the default
    assert out.startswith("keep") and "closeness -4.000000" in out and "+12.000000" in out
    set_guess(lab, 1.0)
    out = ok(run_cli("run", "-m", "further", cwd=lab))
    assert out.startswith("discard")
    ledger = rows(lab)
    assert [r["status"] for r in ledger] == ["keep", "keep", "discard"]
    assert ledger[1]["test_bpb"] == pytest.approx(-2.25)  # the hidden split, for kept results only
    assert ledger[2]["test_bpb"] is None
    status = json.loads(ok(run_cli("status", "--json", cwd=lab)))
    assert status["best_val_bpb"] == pytest.approx(-4.0) and status["direction"] == "maximize"

    ok(run_cli("loop", "--max-experiments", "2", cwd=lab))  # the optuna agent on guess.py's constants
    assert [r["agent"] for r in rows(lab)[3:]] == ["optuna", "optuna"]
    assert not git(lab, "status", "--porcelain")


def test_a_wrong_output_is_invalid_never_kept(cache, tmp_path):
    folder = write_task(tmp_path / "mytask", USER_TASK)
    lab = new_task_lab(tmp_path / "lab", str(folder))
    ok(run_cli("run", "-m", "baseline", cwd=lab))
    path = lab / "guess.py"
    path.write_text(path.read_text().replace('json.dump({"x": X}, f)', 'f.write("not json")'))
    done = run_cli("run", "-m", "write garbage", cwd=lab)
    assert done.returncode == 6 and "invalid" in done.stdout and "[wrong]" in done.stdout
    assert "no answer" in done.stdout


# ---------------------------------------------------------------------------
# Bad task folders: a clear error, nothing changed

@pytest.mark.parametrize("change, message", [
    (lambda f: (f / "score.py").unlink(), "names score.py, which is not in"),
    (lambda f: (f / "task.toml").write_text((f / "task.toml").read_text().replace('"maximize"', '"sideways"')),
     "unknown direction 'sideways'"),
    (lambda f: (f / "task.toml").write_text((f / "task.toml").read_text().replace('["guess.py"]', '["src/*.py"]')),
     "editable glob 'src/*.py' matches no file"),
    (lambda f: (f / "task.toml").write_text((f / "task.toml").read_text().replace('metric = "closeness"\n', '')),
     "has no `metric`"),
    (lambda f: (f / "task.toml").write_text("name = [broken"), "is not valid TOML"),
])
def test_bad_task_folder_is_refused_at_init(cache, tmp_path, change, message):
    folder = write_task(tmp_path / "mytask", USER_TASK)
    change(folder)
    done = run_cli("init", str(tmp_path / "lab"), "--task", str(folder), cwd=tmp_path)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "lab").exists()


@pytest.mark.parametrize("evaluator, message", [
    ("raise SystemExit('the grader is broken')", "failed with exit 1: the grader is broken"),
    ("print('hello')", "wrote no result"),
    ("open(__import__('os').environ['AUTORESEARCH_RESULT'], 'w').write('garbage')", "is not JSON"),
    ("open(__import__('os').environ['AUTORESEARCH_RESULT'], 'w').write('{\"valid\": true, \"metric\": \"x\"}')",
     "not a finite number"),
])
def test_broken_evaluator_is_a_clear_error_that_records_nothing(cache, tmp_path, evaluator, message):
    folder = write_task(tmp_path / "mytask", USER_TASK | {"score.py": evaluator + "\n"})
    lab = new_task_lab(tmp_path / "lab", str(folder))
    head = git(lab, "rev-parse", "HEAD")
    set_guess(lab, 5.0)
    done = run_cli("run", "-m", "baseline", cwd=lab)
    assert done.returncode == 1 and message in done.stderr and "nothing was recorded" in done.stderr, done.stderr
    assert rows(lab) == []
    assert git(lab, "rev-parse", "HEAD") == head
    assert git(lab, "status", "--porcelain") == "M guess.py"  # the edit is still there, uncommitted
    assert not (lab / ".autoresearch" / "current.json").exists()


def test_task_load_checks(tmp_path):
    folder = write_task(tmp_path / "t", USER_TASK)
    task = tasks.load(folder)
    assert task.direction == "maximize" and task.sign == -1.0 and task.hidden_metric == "test_closeness"
    assert task.is_editable("guess.py") and not task.is_editable("score.py")
    assert task.deadline == task.startup + task.budget
    (folder / "task.toml").write_text((folder / "task.toml").read_text() + 'evaluate_me = 1\n')
    with pytest.raises(tasks.TaskError, match="unknown key"):
        tasks.load(folder)
    for text in ('{"valid": true}', '[1]', '{"valid": "yes", "metric": 1}'):
        with pytest.raises(tasks.TaskError):
            tasks.parse_result(text)
    assert tasks.parse_result('{"valid": false, "reason": "r"}')["metric"] is None
    assert tasks.of(tmp_path) is tasks.GPT_TASK


def test_agents_see_the_tasks_file(cache, tmp_path):
    from autoresearch.agents import Context
    from autoresearch.agents.claude_code import ClaudeCodeAgent
    from autoresearch.agents.cli_tools import CLI_INSTRUCTIONS, prompt_for_cli
    from autoresearch.agents.codex_cli import filesystem_rules
    from autoresearch.agents.edits import EDIT_INSTRUCTIONS, edit_instructions

    lab = new_task_lab(tmp_path / "lab", "tabular")
    ctx = Context(workspace=lab, program="p", train_py="C = 1.0\n", history="", budget_seconds=30, file="model.py")
    assert "The current model.py" in ctx.prompt() and "train.py" not in ctx.prompt()
    assert "train.py" not in edit_instructions("model.py") and edit_instructions("train.py") == EDIT_INSTRUCTIONS
    # the CLI agents are limited to the task's file and told its metric (tests/test_agents_cli.py runs them)
    cli_prompt = prompt_for_cli(ctx)
    assert CLI_INSTRUCTIONS not in cli_prompt and "train.py" not in cli_prompt and "val_bpb" not in cli_prompt
    assert "make log_loss lower (minimize)" in cli_prompt and "Edit model.py only" in cli_prompt
    [rules] = [a for a in ClaudeCodeAgent(workspace=lab).command("claude") if a.startswith("--allowedTools=")]
    assert rules == "--allowedTools=Read(./model.py),Edit(./model.py),Write(./model.py),Read(./fit.py)"
    assert '"model.py"' not in filesystem_rules(lab) and '"evaluate.py" = "read"' in filesystem_rules(lab)


def test_task_killed_mid_run_is_recovered_then_noise(cache, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import table

    lab = new_task_lab(tmp_path / "lab", "speed")
    ok(run_cli("run", "-m", "baseline", cwd=lab))
    frontier = git(lab, "rev-parse", "HEAD")
    (lab / "solution.py").write_text((lab / "solution.py").read_text().replace("CUTOFF = 48", "CUTOFF = 20"))
    env = {**os.environ, "AUTORESEARCH_TEST_PAUSE": "training"}

    def killed(*rule, then=("recover",)):
        proc = subprocess.Popen([sys.executable, "-m", "autoresearch.cli", "run", "-m", "killed", *rule], cwd=lab,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marker = lab / ".autoresearch" / "paused-training"
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "never reached training"
            time.sleep(0.1)
        marker.unlink()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return run_cli(*then, cwd=lab)

    # the noise rule (the speed task's default) first measures the floor, the candidate's file parked meanwhile
    rec = killed()
    assert rec.returncode == 0 and "put back the candidate's files" in rec.stderr, rec.stderr
    assert "CUTOFF = 20" in (lab / "solution.py").read_text() and len(rows(lab)) == 1
    # killed with its candidate committed, and met by the next `run`, which recovers first, then runs the tree
    rec = killed("--rule", "strict", then=("run", "-m", "after the kill", "--rule", "strict"))
    assert rec.returncode == 0 and "recover:" in rec.stderr and "recorded as crash" in rec.stderr, rec.stderr
    assert [(r["status"], r["error_class"]) for r in rows(lab)][:2] == [("keep", ""), ("crash", "interrupted")]
    assert rows(lab)[2]["description"] == "after the kill" and rows(lab)[2]["status"] in ("keep", "discard")
    assert frontier in (git(lab, "rev-parse", "HEAD"), git(lab, "rev-parse", "HEAD~1"))
    assert git(lab, "status", "--porcelain") == "" and "CUTOFF = 48" in (lab / "solution.py").read_text()

    out = ok(run_cli("noise", "--runs", "2", cwd=lab))
    assert "pooled noise floor" in out
    assert [r["kind"] for r in table(lab, "runs")].count("noise") == 2
