"""Profiles: the frozen constants of a workspace, chosen once at `autoresearch init`.

A profile fixes everything that decides whether two experiments are comparable: the dataset, the
vocabulary, the context length, the training budget and how much validation data is scored. Nothing in
train.py can change them; `--budget` may override the budget only when a workspace is created.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str            # "climbmix" | "tinystories" | "embedded"
    vocab_size: int         # BPE vocabulary, special tokens included
    max_seq_len: int        # context length of training rows and of evaluation
    time_budget: float      # seconds of training (wall clock, measured from clock start)
    eval_tokens: int        # validation tokens scored by the harness
    eval_batch_size: int    # rows per evaluation forward pass (the exported program's batch)
    startup_cap: float      # seconds allowed between process start and clock start
    num_shards: int = 0     # training shards to download (climbmix only)
    description: str = ""

    @property
    def hard_timeout(self) -> float:
        """Wall-clock limit for a whole run: the original's 600 s for 300 s, scaled for others."""
        return max(2.0 * self.time_budget, self.time_budget + self.startup_cap + 120.0)

    def with_budget(self, seconds: float) -> "Profile":
        if seconds <= 0:
            raise ValueError(f"budget must be positive, got {seconds}")
        return replace(self, time_budget=float(seconds))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


PROFILES: dict[str, Profile] = {
    "h100": Profile(
        name="h100", dataset="climbmix", vocab_size=8192, max_seq_len=2048, time_budget=300.0,
        eval_tokens=40 * 524288, eval_batch_size=32, startup_cap=180.0, num_shards=10,
        description="the original: one H100, climbmix-400b-shuffle, seq 2048, vocab 8192, 5 minutes",
    ),
    "small": Profile(
        name="small", dataset="tinystories", vocab_size=4096, max_seq_len=512, time_budget=300.0,
        eval_tokens=4 * 524288, eval_batch_size=32, startup_cap=180.0,
        description="a smaller GPU or Apple silicon: TinyStories, seq 512, vocab 4096, 5 minutes",
    ),
    "cpu": Profile(
        name="cpu", dataset="embedded", vocab_size=2048, max_seq_len=256, time_budget=60.0,
        eval_tokens=65536, eval_batch_size=32, startup_cap=120.0,
        description="any machine without an accelerator: embedded corpus, seq 256, vocab 2048, 60 s",
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {name!r} (known: {known})") from None
