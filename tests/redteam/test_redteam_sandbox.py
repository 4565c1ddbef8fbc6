"""The red team against the sandbox: through `autoresearch run`, a train.py looks for privilege, for files
of the host it was not given, and for a way to hand something to the next experiment. Every attempt must
be blocked, and the run still ends with its true metric.

Reuses the red team's workspace (a baseline kept, 3 s budget) and its private copy of the package, so a
sandbox that failed would damage a copy, never the checkout the tests run from.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

import cheats_sandbox
from cheats import one_step
from conftest import git, rows
from test_redteam import (SECRETS, assert_no_secrets, assert_true_metric, attempt, compose,  # noqa: F401 (fixtures)
                          lab, needs_sandbox, private_harness)

import autoresearch

pytestmark = [pytest.mark.slow, needs_sandbox]


@pytest.fixture
def host_secrets(tmp_path):
    """A file in the host's temporary folder and one in the home folder (removed after the test)."""
    name = f"autoresearch-redteam-{os.getpid()}-{tmp_path.name}"
    made = [Path(tempfile.gettempdir()) / name, Path.home() / f".{name}"]
    for path in made:
        path.write_text("host secret\n")
    yield made
    for path in made:
        path.unlink(missing_ok=True)


def source_checkouts() -> list[Path]:
    """The .git of the checkout the package is installed from (editable) and of the one the tests are in."""
    tests_root = Path(__file__).resolve().parents[2]
    roots = {Path(autoresearch.__file__).resolve().parents[1], tests_root}
    return sorted(root / ".git" for root in roots if (root / ".git").exists())


def test_no_privilege_inside_and_nothing_of_the_host_in_sight(lab, private_harness, host_secrets):
    env, _ = private_harness
    package_init = Path(env["PYTHONPATH"]) / "autoresearch" / "__init__.py"
    original = package_init.read_bytes()
    host_tmp, host_home = host_secrets
    baseline = rows(lab)[0]
    data = Path(os.environ["AUTORESEARCH_CACHE"])
    targets = {f"checkout {i}": str(p) for i, p in enumerate(source_checkouts())}
    targets |= {
        "workspace .git": str(lab / ".git"), "ledger": str(lab / ".autoresearch"),
        "other run": str(lab / "runs" / "0001"), "other run log": str(lab / "runs" / "0001.log"),
        "val split": str(data / "prepared" / "cpu" / "val.bin"),
        "test split": str(data / "prepared" / "cpu" / "test.bin"),
        "raw downloads": str(data / "raw"), "host tmp": str(host_tmp), "host home": str(host_home),
    }
    targets |= {f"device {p}": str(p) for p in sorted(Path("/dev").iterdir()) if p.is_block_device()}
    assert any(name.startswith("checkout") for name in targets), "the tests' own checkout has a .git"
    cheat = compose(cheats_sandbox.escalate, cheats_sandbox.look_around(targets),
                    cheats_sandbox.write_host({"host tmp write": str(host_tmp)}), cheats_sandbox.append_package,
                    cheats_sandbox.read_secrets, one_step)
    _, row, log = attempt(lab, cheat, env=env | SECRETS)  # the agents' keys, set for the harness

    assert row["sandbox"] == "bwrap"
    assert "CHEAT blocked (capabilities): CapEff 0000000000000000" in log
    assert "CHEAT blocked (no_new_privs): NoNewPrivs 1" in log
    for what in ("remount", "remount bind", "unmount", "user namespace", "setuid", "raw devices", "package",
                 *targets):
        assert f"CHEAT blocked ({what})" in log, (what, log[-3000:])
    assert "CHEAT: saw" not in log and "succeeded" not in log and "CHEAT: appended" not in log
    # writing the host's /tmp wrote the sandbox's own, in memory: the host's file is as it was
    assert host_tmp.read_text() == "host secret\n" and host_home.read_text() == "host secret\n"
    assert package_init.read_bytes() == original
    assert_no_secrets(log)  # train.py's environment is an allowlist (without the sandbox: test_redteam.py)
    assert_true_metric(row, baseline)


def test_nothing_one_run_writes_reaches_the_next(lab):
    name = f"stash-{lab.parent.name}.pt"
    baseline = rows(lab)[0]
    _, first, log = attempt(lab, compose(cheats_sandbox.stash_between_runs(name, 1), one_step))
    assert "CHEAT blocked (stash): nothing of an earlier run (1)" in log
    assert "CHEAT: stashed weights in the compile cache" in log, "the sandbox's own cache is writable"
    assert "CHEAT blocked (stash in the runs)" in log
    assert_true_metric(first, baseline)

    (lab / "train.py").write_text(git(lab, "show", f"{baseline['commit']}:train.py") + "\n")
    _, second, log = attempt(lab, compose(cheats_sandbox.stash_between_runs(name, 2), one_step))
    assert "CHEAT blocked (stash): nothing of an earlier run (2)" in log, log[-3000:]
    assert "CHEAT: found" not in log
    assert second["sandbox"] == "bwrap" and second["status"] in ("keep", "discard") and 0.5 < second["val_bpb"] < 10
    user = os.environ.get("USER", "root")
    host = [Path(tempfile.gettempdir()), Path(tempfile.gettempdir()) / f"torchinductor_{user}", Path.home(),
            Path.home() / ".cache", Path("/dev/shm"), lab / "runs"]
    assert not [str(p / name) for p in host if (p / name).exists()], "a stash reached the host"
