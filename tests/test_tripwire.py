"""The tripwire and the ledger: the harness must not race with its own tamper check.

SQLite keeps a shared lock on the ledger while the parent's connection is open. A tripwire that read the
ledger through a second file descriptor dropped it (POSIX locks belong to the process and go with ANY
close of the file), so the next process to close the ledger (the loop's next connection, a user's
`autoresearch status`) deleted the write-ahead log, and an honest run was recorded as tampering.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from autoresearch import tripwire
from autoresearch.ledger import Experiment, Ledger

READER = "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute('SELECT count(*) FROM experiments').fetchone(); db.close()"
WRITER = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
          "db.execute(\"INSERT INTO experiments (branch, status, val_bpb) VALUES ('b', 'keep', 0.001)\"); db.commit(); db.close()")


def _ledger(tmp_path: Path) -> tuple[Ledger, tripwire.Scope]:
    root = tmp_path / "ws"
    root.mkdir()
    ledger = Ledger(root)
    ledger.insert(Experiment(branch="b", status="keep", val_bpb=1.8, description="baseline"))
    ledger.checkpoint()
    return ledger, tripwire.Scope(root, "cpu", "embedded", ledger=ledger)


def _other_process(code: str, db: Path) -> None:
    subprocess.run([sys.executable, "-c", code, str(db)], check=True)


def test_a_reader_closing_the_ledger_while_a_run_trains_changes_nothing(tmp_path):
    ledger, scope = _ledger(tmp_path)
    before = tripwire.take(scope)
    wal = ledger.files[1]
    assert wal.exists()
    _other_process(READER, ledger.path)   # `autoresearch status` in another terminal
    assert wal.exists(), "the parent's SQLite lock was lost: another process's close deleted the WAL"
    assert tripwire.changes(before, scope) == []
    ledger.insert(Experiment(branch="b", status="discard", val_bpb=1.9))  # the connection still works
    assert len(ledger.all()) == 2


def test_the_race_is_real_when_the_ledger_is_read_through_another_descriptor(tmp_path):
    """The cause, shown: one read of the file by path drops SQLite's lock, and the reader's close
    then deletes the write-ahead log (what the old tripwire did before every run)."""
    ledger, _ = _ledger(tmp_path)
    wal = ledger.files[1]
    assert wal.exists()
    ledger.path.read_bytes()
    _other_process(READER, ledger.path)
    assert not wal.exists()


def test_a_candidate_writing_the_ledger_is_caught_and_undone(tmp_path):
    ledger, scope = _ledger(tmp_path)
    before = tripwire.take(scope)
    _other_process(WRITER, ledger.path)
    found = tripwire.changes(before, scope)
    assert any("ledger.sqlite" in line for line in found), found
    evidence = tmp_path / "run"
    notes = tripwire.restore(before, scope, evidence)
    assert "restored .autoresearch/ledger.sqlite" in notes
    assert [e.val_bpb for e in ledger.all()] == [1.8]           # reopened from the restored image
    assert (evidence / "tampered" / ".autoresearch" / "ledger.sqlite.tampered").exists()
    assert tripwire.changes(tripwire.take(scope), scope) == []


def test_a_ledger_replaced_on_disk_is_caught(tmp_path):
    ledger, scope = _ledger(tmp_path)
    before = tripwire.take(scope)
    forged = tmp_path / "forged.sqlite"
    db = sqlite3.connect(forged)
    db.execute("CREATE TABLE experiments (id INTEGER PRIMARY KEY, val_bpb REAL)")
    db.commit()
    db.close()
    os.replace(forged, ledger.path)   # the open connection still sees the old inode
    assert any("ledger.sqlite" in line for line in tripwire.changes(before, scope))
    tripwire.restore(before, scope, tmp_path / "run")
    assert [e.val_bpb for e in ledger.all()] == [1.8]


def _workspace_file(tmp_path: Path) -> tuple[Path, tripwire.Scope]:
    root = tmp_path / "ws"
    root.mkdir()
    path = root / "results.tsv"
    path.write_text("commit\tval_bpb\n")
    return path, tripwire.Scope(root, "cpu", "embedded")


def _rewrite(path: Path, data: bytes) -> None:
    """What an installer (or an undo) does: a new file moved over the old one, so a new inode."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.replace(path)


def test_a_file_rewritten_with_its_own_bytes_is_flagged_and_left_so_two_watchers_never_undo_each_other(tmp_path):
    """Two runs watching one file (two workspaces' loops on the shared site-packages): something outside both
    rewrites it with the same bytes. Each run is invalid, as it cannot tell who wrote, but neither writes the
    file again: an undo would give it yet another identity, the other run's tripwire would take that for
    tampering and undo it in turn, and every later run of both would be invalid (seen in a campaign)."""
    path, scope = _workspace_file(tmp_path)
    first = tripwire.take(scope)                      # run A's snapshot
    _rewrite(path, path.read_bytes())                 # the outside write, during A
    second = tripwire.take(scope)                     # run B starts after it
    assert tripwire.changes(first, scope) == ["modified: results.tsv"]
    assert tripwire.restore(first, scope, tmp_path / "runA") == ["left results.tsv: rewritten with its own bytes"]
    assert not (tmp_path / "runA" / "tampered").exists()
    assert tripwire.changes(second, scope) == []      # A's undo did not become B's tampering
    assert tripwire.changes(tripwire.take(scope), scope) == []


def test_the_same_bytes_behind_a_link_or_another_mode_are_put_back(tmp_path):
    """Only a plain file with its own bytes, one name, its mode and its owner is left; the same bytes reached
    through a symlink or a hard link (whose other name the candidate can still write), or with another mode
    or owner, are restored like any other change."""
    path, scope = _workspace_file(tmp_path)
    data = path.read_bytes()
    elsewhere = tmp_path / "mine.tsv"
    for n, tamper in enumerate(("symlink", "hardlink", "mode", "owner")):
        before = tripwire.take(scope)
        if tamper == "symlink":
            elsewhere.write_bytes(data)
            path.unlink()
            path.symlink_to(elsewhere)
        elif tamper == "hardlink":
            elsewhere.unlink()
            elsewhere.write_bytes(data)
            path.unlink()
            os.link(elsewhere, path)
        elif tamper == "mode":
            path.chmod(0o777)
        elif os.geteuid() == 0:
            os.chown(path, 65534, 65534)   # nobody: a later process of that user could write the harness
        else:
            continue
        assert tripwire.changes(before, scope) == ["modified: results.tsv"], tamper
        notes = tripwire.restore(before, scope, tmp_path / f"run{n}")
        assert notes == ["restored results.tsv"], (tamper, notes)
        st = os.lstat(path)
        assert not path.is_symlink() and st.st_nlink == 1 and path.read_bytes() == data, tamper
        assert (tmp_path / f"run{n}" / "tampered" / "results.tsv.tampered").exists(), tamper
