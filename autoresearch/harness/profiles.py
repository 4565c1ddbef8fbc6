"""Profiles: the frozen constants of a workspace, chosen once at `autoresearch init`.

A profile fixes everything that decides whether two experiments are comparable: the dataset, the
vocabulary, the context length, the training budget with its start-up and export allowances, and how much
validation data is scored. Nothing in train.py can change them; `--budget` may override the budget only
when a workspace is created. The time rules a run is held to are derived from the profile in one place:
`profile.time_rules` (clock.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .clock import TimeRules

# `--budget` scales the start-up allowance down with the budget, never below this: importing torch and
# building the model take 4-10 s on a busy 2-core CPU, so a shorter allowance would leave a test-sized
# budget no training at all.
MIN_STARTUP_ALLOWANCE = 10.0


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str            # "climbmix" | "tinystories" | "embedded"
    vocab_size: int         # BPE vocabulary, special tokens included
    max_seq_len: int        # context length of training rows and of evaluation
    time_budget: float      # seconds of training
    eval_tokens: int        # validation tokens scored by the harness
    eval_batch_size: int    # rows per evaluation forward pass (the exported program's batch)
    startup_allowance: float  # seconds from launch for set-up (imports, model, compilation) before the budget
    export_allowance: float   # seconds after the training window for submit() to put the model on disk
    num_shards: int = 0     # training shards to download (climbmix only)
    description: str = ""

    @property
    def time_rules(self) -> TimeRules:
        """Every time rule of a run (budget, allowances, deadline, grace, timeouts), in one value."""
        return TimeRules.of(self)

    @property
    def hard_timeout(self) -> float:
        """Launch to exit of train.py, at most (see TimeRules)."""
        return self.time_rules.hard_timeout

    def with_budget(self, seconds: float) -> "Profile":
        """The profile with another budget; the start-up allowance is never longer than the budget (nor
        shorter than MIN_STARTUP_ALLOWANCE), so a short budget stays a short run."""
        if seconds <= 0:
            raise ValueError(f"budget must be positive, got {seconds}")
        startup = min(self.startup_allowance, max(float(seconds), MIN_STARTUP_ALLOWANCE))
        return replace(self, time_budget=float(seconds), startup_allowance=startup)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        """A profile as saved in autoresearch.toml. A workspace made before the allowances existed (it saved a
        `startup_cap`, a different rule) gets the built-in profile's allowances."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if (builtin := PROFILES.get(values.get("name", ""))) is not None and "time_budget" in values:
            scaled = builtin.with_budget(values["time_budget"])
            values.setdefault("startup_allowance", scaled.startup_allowance)
            values.setdefault("export_allowance", scaled.export_allowance)
        return cls(**values)


# The allowances, from measurement. cpu (2 cores, busy): importing torch, building the model and one warm-up
# step take 4-10 s, a cold torch.compile of the model 15-20 s more (a sandboxed run compiles cold every time):
# 30 s. The template overshoots its window by at most one step (0.1-0.5 s at the defaults), then exports in
# 0.4-1 s (a 31 M-parameter model: 1.7 s): 5 s. GPU, not yet measured on one: 90 s for imports, kernels and a
# cold compile of model and optimizer, 15 s for one step and the export of a ~50 M-parameter model.
PROFILES: dict[str, Profile] = {
    "h100": Profile(
        name="h100", dataset="climbmix", vocab_size=8192, max_seq_len=2048, time_budget=300.0,
        eval_tokens=40 * 524288, eval_batch_size=32, startup_allowance=90.0, export_allowance=15.0, num_shards=10,
        description="the original: one H100, climbmix-400b-shuffle, seq 2048, vocab 8192, 5 minutes",
    ),
    "small": Profile(
        name="small", dataset="tinystories", vocab_size=4096, max_seq_len=512, time_budget=300.0,
        eval_tokens=4 * 524288, eval_batch_size=32, startup_allowance=90.0, export_allowance=15.0,
        description="a smaller GPU or Apple silicon: TinyStories, seq 512, vocab 4096, 5 minutes",
    ),
    "cpu": Profile(
        name="cpu", dataset="embedded", vocab_size=2048, max_seq_len=256, time_budget=60.0,
        eval_tokens=65536, eval_batch_size=32, startup_allowance=30.0, export_allowance=5.0,
        description="any machine without an accelerator: embedded corpus, seq 256, vocab 2048, 60 s",
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {name!r} (known: {known})") from None
