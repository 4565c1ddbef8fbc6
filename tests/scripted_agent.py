"""A scripted agent for loop tests: replays a list of actions, records what it was shown."""

from __future__ import annotations

from pathlib import Path

from autoresearch.agents import Proposal

SCRIPT: list[dict] = []   # filled by a test: {"replace": (old, new)} | {"write": {path: text}} | {"fail": msg}
SEEN: list = []           # the contexts the agent was given
OBSERVED: list = []       # the experiments it was told about
OBSERVE_FAILS: set = set()  # descriptions whose observe() raises (a backend's bookkeeping failing)


class ScriptedAgent:
    name = "scripted"

    def __init__(self, workspace: Path, model=None, base_url=None):
        self.root = Path(workspace)

    def check(self) -> None:
        pass

    def propose(self, context):
        from autoresearch.agents import AgentError

        SEEN.append(context)
        step = SCRIPT.pop(0)
        if "fail" in step:
            raise AgentError(step["fail"])
        if "write" in step:  # a coding agent that edits the workspace itself
            for rel, text in step["write"].items():
                (self.root / rel).write_text(text)
            return Proposal(description=step.get("description", "edit files"), model="script")
        old, new = step["replace"]
        assert old in context.train_py, old
        return Proposal(description=step.get("description", f"replace {old.strip()}"),
                        train_py=context.train_py.replace(old, new, 1), model="script", input_tokens=10,
                        output_tokens=5, seconds=0.01)

    def observe(self, experiment) -> None:
        OBSERVED.append(experiment)
        if experiment.description in OBSERVE_FAILS:
            raise RuntimeError(f"scripted observe failure on {experiment.description}")
