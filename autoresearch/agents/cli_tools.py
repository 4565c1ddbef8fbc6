"""What the two coding-agent CLI backends share (`claude_code.py`, `codex_cli.py`).

    editable_files        the files a CLI may edit: train.py, or the task's editable files
    prompt_for_cli        the shared prompt plus the instructions for a CLI that edits those files itself
                          (the GPT task's CLI_INSTRUCTIONS; a task's name its files and its metric)
    description_from      the DESCRIPTION line of the CLI's final message
    find_executable       the CLI to run, or AgentUnavailable saying how to install it
    run_cli               one run with the prompt on stdin; past the timeout its whole process group ends
    require_some_change   AgentError when the CLI finished without changing anything

A CLI edits the workspace itself, so nothing here applies an edit: the harness guard decides what runs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import task as tasks
from ..git import git
from ..layout import CANDIDATE
from .base import TRANSIENT, AgentError, AgentUnavailable, Context
from .http import excerpt

CLI_INSTRUCTIONS = """\
What to do now: make ONE focused change to train.py that you expect to lower val_bpb, by editing the file
train.py in the current directory directly with your file-editing tool.
- Edit train.py only. Do not create, edit, move or delete any other file: such edits are refused, and a
  change outside train.py gets the whole experiment rejected.
- Do not run train.py or start any training or evaluation: the harness runs it after you finish, under
  its fixed time budget.
- Keep train.py a complete, runnable program.
- When you are done, end your final message with one line of the form
  DESCRIPTION: <one short line saying what you changed and why>"""

TASK_CLI_INSTRUCTIONS = """\
What to do now: make ONE focused change to {files} that you expect to make {metric} {better} ({direction}), \
by editing the file(s) in the current directory directly with your file-editing tool.
- Edit {files} only. Do not create, edit, move or delete any other file: such edits are refused, and a
  change outside these files gets the whole experiment rejected.
- Do not run the task's program or start any run or evaluation: the harness runs it after you finish,
  under its fixed time budget, and scores it with its frozen evaluator.
- Keep the code complete and runnable.
- When you are done, end your final message with one line of the form
  DESCRIPTION: <one short line saying what you changed and why>"""

DESCRIPTION_RE = re.compile(r"^[\s>*_`#-]*DESCRIPTION[*_`]*\s*:[*_`]*\s*(.+?)\s*$", re.I | re.M)
MAX_DESCRIPTION = 200


def editable_files(root: Path | None) -> list[str]:
    """What a CLI agent may edit in workspace `root`: train.py for the GPT task (and when there is no
    workspace), else the task's editable files (those git tracks that match its globs)."""
    task = tasks.of(root) if root is not None else tasks.GPT_TASK
    return [CANDIDATE] if task.is_gpt else task.editable_files(root)


def cli_instructions(root: Path | None) -> str:
    """What the CLI is told to do: CLI_INSTRUCTIONS for the GPT task, a task's files and metric otherwise."""
    task = tasks.of(root) if root is not None else tasks.GPT_TASK
    if task.is_gpt:
        return CLI_INSTRUCTIONS
    return TASK_CLI_INSTRUCTIONS.format(files=", ".join(editable_files(root)), metric=task.metric,
                                        better=task.better, direction=task.direction)


def prompt_for_cli(context: Context) -> str:
    return context.prompt() + "\n\n" + cli_instructions(context.workspace) + "\n"


def description_from(text: str) -> str:
    """The last `DESCRIPTION: ...` line of the agent's final message; else its first line, shortened."""
    matches = [m.group(1).strip("*_` ") for m in DESCRIPTION_RE.finditer(text or "")]
    matches = [m for m in matches if m]
    if matches:
        return _shorten(matches[-1])
    for line in (text or "").splitlines():
        line = line.strip().strip("#*_` ")
        if line:
            return _shorten(line)
    return "(no description)"


def _shorten(line: str) -> str:
    line = " ".join(line.split())
    return line if len(line) <= MAX_DESCRIPTION else line[: MAX_DESCRIPTION - 3] + "..."


def find_executable(configured: str | None, default: str, env_name: str, install_hint: str) -> str:
    """The CLI to run: `configured` (a path or a name on PATH) if given, else `default` on PATH."""
    name = configured or default
    path = shutil.which(name)
    if path is None:
        where = f"${env_name}={configured!r} is not an executable" if configured else f"`{default}` is not on PATH"
        raise AgentUnavailable(f"{where}: install it with `{install_hint}`, or point ${env_name} at it")
    return path


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


def run_cli(cmd: list[str], prompt: str, cwd: Path, env: dict[str, str], timeout: float, what: str) -> CliRun:
    """Run `cmd` in `cwd` with `prompt` on stdin; past `timeout` its whole process group is ended."""
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as e:
        raise AgentUnavailable(f"could not start {what} ({cmd[0]}): {e}") from None
    try:
        stdout, stderr = proc.communicate(prompt, timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(proc)
        stdout, stderr = proc.communicate()
        last = (stdout or "").strip().splitlines()[-1:] or (stderr or "").strip().splitlines()[-1:] or [""]
        raise AgentError(f"{what} did not finish within {timeout:g} s (--request-timeout) and was stopped; "
                         f"its last output: {excerpt(last[0])!r}", kind=TRANSIENT, reply=stdout or "") from None
    except BaseException:  # Ctrl-C while the CLI works: do not leave it editing the workspace
        _end_group(proc)
        raise
    return CliRun(proc.returncode, stdout or "", stderr or "")


def _end_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def require_some_change(root: Path, context: Context, what: str) -> None:
    """An agent that changed nothing at all produced no experiment (unchanged editable files would only
    rerun the frontier). Changes to other files are left for the harness guard to reject and put aside."""
    texts = context.texts()
    unchanged = all(((root / name).read_text() if (root / name).exists() else None) == text
                    for name, text in texts.items())
    if unchanged and not git(root, "status", "--porcelain", check=False).strip():
        raise AgentError(f"{what} finished without changing {' or '.join(texts)}")
