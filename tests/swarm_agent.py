"""A scripted agent for swarm tests, usable in Ray worker processes: `--agent swarm_agent:Scripted` with
this folder on PYTHONPATH. Its script is the JSON file $SWARM_SCRIPT: {"w1": [step, ...], "w2": [...]},
one list per worker (the worker's folder is named after it); workers listed in "fail_start" refuse to start. A step is {"replace": [old, new],
"description": ...}, optionally with "sleep" seconds before answering. When its list is used up, each
request fails as a transient error (the test's --backoff keeps the worker waiting)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from autoresearch.agents import AgentError, Proposal


class Scripted:
    name = "scripted"

    def __init__(self, workspace: Path, model=None, base_url=None, seed=None):
        self.root = Path(workspace)
        script = json.loads(Path(os.environ["SWARM_SCRIPT"]).read_text())
        self.steps = script.get(self.root.name, [])
        self.refuse = self.root.name in script.get("fail_start", [])
        self.seen = Path(os.environ["SWARM_SCRIPT"]).with_name(f"observed-{self.root.name}.jsonl")

    def check(self) -> None:
        if self.refuse:
            from autoresearch.agents import AgentUnavailable

            raise AgentUnavailable(f"{self.root.name} was told not to start")

    def propose(self, context):
        if not self.steps:
            raise AgentError("script used up", kind="transient")
        step = self.steps.pop(0)
        time.sleep(step.get("sleep", 0))
        old, new = step["replace"]
        if old not in context.train_py:
            raise AgentError(f"{old!r} is not in the frontier's train.py", kind="reply")
        return Proposal(description=step["description"], train_py=context.train_py.replace(old, new, 1),
                        model="script")

    def observe(self, experiment) -> None:
        with self.seen.open("a") as f:
            f.write(json.dumps({"id": experiment.id, "status": experiment.status, "worker": experiment.worker,
                                "description": experiment.description}) + "\n")
