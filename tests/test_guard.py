"""The scope guard: only train.py may differ from the frontier, and nothing may hide where git does not look.
These runs are refused before anything trains, so they are quick."""

from __future__ import annotations

import os

from conftest import git, new_lab, rows, run_cli

from autoresearch.guard import out_of_scope


def test_a_symlink_in_an_ignored_folder_is_refused_like_hidden_code(cache_dir, tmp_path):
    lab = new_lab(tmp_path / "lab")
    shadow = tmp_path / "elsewhere" / "autoresearch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("SCALE = 0.5\n")
    (lab / "runs" / "0001").mkdir(parents=True)
    os.symlink(shadow, lab / "runs" / "0001" / "autoresearch")      # a folder link: the old scan did not follow it
    os.symlink(shadow / "__init__.py", lab / "report")                # a link where a folder would be
    done = run_cli("run", "-m", "shadow package", cwd=lab)
    assert done.returncode == 5 and done.stdout.startswith("rejected"), done.stdout + done.stderr
    (row,) = rows(lab)
    assert row["error_class"] == "scope"
    assert "runs/0001/autoresearch" in row["error_excerpt"] and "report" in row["error_excerpt"]
    assert (lab / "runs" / "0001" / "autoresearch").is_symlink()       # nothing the user made is touched


def test_a_pending_edit_of_train_py_is_in_scope(cache_dir, tmp_path):
    """`git status --porcelain` opens with a space for an unstaged edit; the guard reads paths, not columns."""
    lab = new_lab(tmp_path / "lab")
    (lab / "train.py").write_text((lab / "train.py").read_text() + "\n# my idea\n")
    assert out_of_scope(lab, git(lab, "rev-parse", "HEAD")) == []
    (lab / "program.md").write_text("edited\n")
    assert out_of_scope(lab, git(lab, "rev-parse", "HEAD")) == ["program.md"]
