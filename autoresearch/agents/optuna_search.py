"""The offline default agent: Optuna (TPE) over the UPPER_CASE constants of train.py. No model, no network.

The constants are those of train.py's hyperparameter block: the lines between two marker lines, which the
template has and documents. The block is found by these lines, never by the comments around them; when
one is gone, or the block holds nothing to tune, check() and every proposal fail saying so.

    # @autoresearch:hyperparameters-begin
    DEPTH = 8                  # number of transformer layers
    ...
    # @autoresearch:hyperparameters-end

The search space is read once, when the study is created, from the branch's train.py: positive floats
search a log range of /4..x4 around their default, fractions (names ending in RATIO or FRAC) a uniform
[0, 0.9], integers a range around their default, powers of two (batch sizes, widths) half, same or double,
the attention window pattern a few patterns. Tuples and the seed are left alone. Each proposal writes
sampled values into the frontier's train.py; every recorded experiment is told to the study (crashes as
failed trials), which persists in `.autoresearch/optuna.db`, so the search resumes after a restart and
learns from experiments it did not propose too.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from pathlib import Path

from ..git import git
from ..harness.settings import Settings
from ..layout import CANDIDATE, OPTUNA_DB, OPTUNA_PENDING, state
from .base import AgentError, AgentUnavailable, Context, Proposal

BEGIN = "# @autoresearch:hyperparameters-begin"   # the hyperparameter block of train.py: the lines between
END = "# @autoresearch:hyperparameters-end"       # these two (each alone on its line)
CONSTANT = re.compile(r"^([A-Z][A-Z0-9_]*) = ([^#\n]+?)(\s+#.*)?$", re.M)
SKIP = {"SEED"}
WINDOW_PATTERNS = ["L", "SL", "SSL", "SSSL"]


def _value(expr: str):
    """A literal or an arithmetic expression of literals (e.g. 2**19); None for anything else."""
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        return None

    def ev(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float, str)):
            return n.value
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Pow, ast.Mult, ast.Add, ast.Sub, ast.Div)):
            a, b = ev(n.left), ev(n.right)
            ops = {ast.Pow: lambda: a**b, ast.Mult: lambda: a * b, ast.Add: lambda: a + b,
                   ast.Sub: lambda: a - b, ast.Div: lambda: a / b}
            return ops[type(n.op)]()
        raise ValueError("not a literal")

    try:
        return ev(node)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return None


def _marker(source: str, marker: str, start: int = 0) -> re.Match | None:
    return re.compile(rf"^[ \t]*{re.escape(marker)}[ \t]*$", re.M).search(source, start)


def block_span(source: str) -> tuple[int, int]:
    """Where the hyperparameter block is: the offsets of the text between the BEGIN and END lines.
    AgentError when either line is missing (an agent or a human removed it)."""
    begin = _marker(source, BEGIN)
    if begin is None:
        raise AgentError(f"{CANDIDATE} has no line {BEGIN!r}: the optuna agent tunes the constants between it "
                         f"and {END!r}; put both lines back around the hyperparameters")
    end = _marker(source, END, begin.end())
    if end is None:
        raise AgentError(f"{CANDIDATE} has no line {END!r} after {BEGIN!r}: the optuna agent tunes the "
                         "constants between the two; put it back after the hyperparameters")
    return begin.end(), end.start()


def read_constants(source: str) -> dict:
    """{NAME: value} of the constants in the hyperparameter block; AgentError when it has none to read."""
    start, end = block_span(source)
    constants = {m.group(1): v for m in CONSTANT.finditer(source[start:end])
                 if (v := _value(m.group(2))) is not None and not isinstance(v, bool)}
    if not constants:
        raise AgentError(f"the hyperparameter block of {CANDIDATE} (between {BEGIN!r} and {END!r}) has no "
                         "constant the optuna agent can read: NAME = a number or a string, one per line")
    return constants


def _is_power_of_two(v) -> bool:
    return isinstance(v, int) and v >= 2 and v & (v - 1) == 0


def search_space(constants: dict) -> dict:
    """{name: spec} with spec = {"kind": "log"|"uniform"|"int"|"choice", ...}, derived from defaults."""
    space = {}
    for name, v in constants.items():
        if name in SKIP:
            continue
        if isinstance(v, str):
            if name == "WINDOW_PATTERN":
                space[name] = {"kind": "choice", "choices": sorted({*WINDOW_PATTERNS, v})}
        elif isinstance(v, float) and (name.endswith("RATIO") or name.endswith("FRAC")):
            space[name] = {"kind": "uniform", "low": 0.0, "high": 0.9}
        elif isinstance(v, float) and v > 0:
            space[name] = {"kind": "log", "low": v / 4, "high": v * 4}
        elif isinstance(v, float) and v == 0:
            space[name] = {"kind": "uniform", "low": 0.0, "high": 0.1}
        elif _is_power_of_two(v) and v >= 16:
            space[name] = {"kind": "choice", "choices": [v // 2, v, v * 2]}
        elif isinstance(v, int) and v > 0:
            space[name] = {"kind": "int", "low": max(1, v // 2), "high": max(v * 2, v + 2)}
    return space


def _literal(name: str, value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int) and _is_power_of_two(value) and value >= 1024:
        return f"2**{int(math.log2(value))}"
    if isinstance(value, float):
        return f"{value:.4g}" if value != 0 else "0.0"
    return str(value)


def write_constants(source: str, values: dict) -> str:
    """Replace the values of the named constants in the hyperparameter block, keeping each comment in its
    column."""
    start, end = block_span(source)
    block = source[start:end]
    for name, value in values.items():
        match = re.search(rf"^{name} = ([^#\n]+?)(\s+#.*)?$", block, re.M)
        if match is None:
            continue
        line = f"{name} = {_literal(name, value)}"
        if comment := match.group(2):
            column = match.end(2) - len(comment.lstrip()) - match.start()
            line = line.ljust(column - 1) + " " + comment.lstrip()
        block = block[: match.start()] + line + block[match.end():]
    return source[:start] + block + source[end:]


def space_of(source: str) -> dict:
    """The search space of a train.py; AgentError when its hyperparameter block has nothing to tune."""
    space = search_space(read_constants(source))
    if not space:
        raise AgentError(f"the hyperparameter block of {CANDIDATE} has no constant the optuna agent can tune "
                         f"(it leaves {', '.join(sorted(SKIP))}, tuples and booleans alone)")
    return space


class OptunaAgent:
    name = "optuna"

    def __init__(self, workspace: Path, model: str | None = None, base_url: str | None = None, seed: int | None = None):
        self.root = Path(workspace)
        self.seed = seed
        self._study = None

    def check(self) -> None:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise AgentUnavailable("the optuna agent needs the optuna package: pip install optuna") from None
        train = self.root / CANDIDATE
        if train.exists():  # a train.py whose markers are gone stops the loop before it starts
            try:
                space_of(train.read_text())
            except AgentError as e:
                raise AgentUnavailable(str(e)) from None

    # -- the study ------------------------------------------------------------------------------

    def study(self):
        if self._study is not None:
            return self._study
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        branch = git(self.root, "symbolic-ref", "--short", "HEAD")
        state(self.root).mkdir(exist_ok=True)
        storage = f"sqlite:///{state(self.root, OPTUNA_DB)}"
        sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=5, multivariate=True)
        study = optuna.create_study(study_name=branch, storage=storage, direction="minimize", sampler=sampler,
                                    load_if_exists=True)
        if "space" not in study.user_attrs:  # an AgentError here leaves no half-made study behind
            study.set_user_attr("space", space_of((self.root / CANDIDATE).read_text()))
        self._study = study
        self._fail_stale_trials()
        return self._study

    def _fail_stale_trials(self) -> None:
        """Trials left RUNNING by a process that died are failed, so TPE does not wait on them."""
        import optuna

        pending = self._pending()
        for trial in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number != pending.get("trial"):
                self._study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

    def distributions(self) -> dict:
        import optuna.distributions as d

        out = {}
        for name, spec in self.study().user_attrs["space"].items():
            kind = spec["kind"]
            if kind == "log":
                out[name] = d.FloatDistribution(spec["low"], spec["high"], log=True)
            elif kind == "uniform":
                out[name] = d.FloatDistribution(spec["low"], spec["high"])
            elif kind == "int":
                out[name] = d.IntDistribution(spec["low"], spec["high"])
            else:
                out[name] = d.CategoricalDistribution(spec["choices"])
        return out

    def _pending(self) -> dict:
        path = state(self.root, OPTUNA_PENDING)
        return json.loads(path.read_text()) if path.exists() else {}

    def _set_pending(self, data: dict | None) -> None:
        path = state(self.root, OPTUNA_PENDING)
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(json.dumps(data))

    # -- the agent interface --------------------------------------------------------------------

    def propose(self, context: Context) -> Proposal:
        t0 = time.monotonic()
        current = read_constants(context.train_py)  # first: a frontier without its block asks for no trial
        study = self.study()
        if self._pending().get("trial") is not None:  # proposed but never recorded (e.g. Ctrl-C)
            self._tell(self._pending()["trial"], None)
            self._set_pending(None)
        trial = study.ask(self.distributions())
        values = dict(trial.params)
        seq = _profile_seq_len(self.root)
        if {"TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"} <= values.keys() and seq:
            rows = values["DEVICE_BATCH_SIZE"] * seq  # TOTAL must be a multiple of one forward's tokens
            values["TOTAL_BATCH_SIZE"] = max(rows, values["TOTAL_BATCH_SIZE"] // rows * rows)
        changed = {k: v for k, v in values.items() if current.get(k) != v}
        description = "optuna: " + ", ".join(f"{k} {_literal(k, current.get(k))} -> {_literal(k, v)}"
                                             for k, v in sorted(changed.items()))
        self._set_pending({"trial": trial.number, "params": values})
        return Proposal(description=description if changed else "optuna: repeat the frontier (no change)",
                        train_py=write_constants(context.train_py, values), model="optuna-tpe",
                        cost_usd=0.0,  # no model, no tokens: known to cost nothing
                        reply="\n".join(f"{k} = {v!r}" for k, v in values.items()) + "\n",
                        seconds=time.monotonic() - t0, extra={"trial": trial.number})

    def observe(self, experiment) -> None:
        """Tell the study: our own trial, or any other experiment as a finished trial of its values."""
        import optuna

        try:
            study = self.study()
        except AgentError:
            return  # no study without a hyperparameter block to read; the next proposal says why
        pending = self._pending()
        ok = experiment.status in ("keep", "discard") and experiment.val_bpb is not None
        if pending.get("trial") is not None:
            self._tell(pending["trial"], experiment.val_bpb if ok else None)
            self._set_pending(None)
            return
        if not ok or not experiment.commit:
            return
        try:
            found = read_constants(git(self.root, "show", f"{experiment.commit}:{CANDIDATE}", check=False))
        except AgentError:
            return  # its train.py has no block to read: nothing to learn from it
        dists = self.distributions()
        params = {k: v for k, v in found.items() if k in dists}
        try:
            inside = params.keys() == dists.keys() and all(
                dists[k]._contains(dists[k].to_internal_repr(v)) for k, v in params.items())
        except (ValueError, TypeError):
            inside = False
        if inside:  # values outside the space would be a misleading fixed trial for TPE
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=experiment.val_bpb))

    def _tell(self, number: int, value: float | None) -> None:
        import optuna

        done = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        try:
            self.study().tell(number, value, state=done)
        except (ValueError, RuntimeError):
            pass  # already finished (told by an earlier, interrupted process)


def _profile_seq_len(root: Path) -> int | None:
    try:
        return Settings.load(root).profile.max_seq_len
    except (FileNotFoundError, ValueError, KeyError):
        return None
