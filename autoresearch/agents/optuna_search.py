"""The offline default agent: a local search over the UPPER_CASE constants of train.py, then Optuna's TPE
around the frontier. No model, no network.

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
the attention window pattern a few patterns. Tuples and the seed are left alone.

How it searches, the way a careful researcher would, starting from what works:
- The frontier is the first point it knows: the baseline (and every experiment it did not propose) is told
  to the study with its measured val_bpb; nothing is re-run to learn it.
- Local steps first: each proposal changes one constant (then two) of the frontier by a step that suits
  its kind: x/÷ 1.4 for a rate, the neighbouring power of two, ±0.1 for a fraction, ±1 for an integer,
  another window pattern. The description says exactly what changed ("MATRIX_LR 0.04 -> 0.056 (x1.4)").
- Once MODEL_AFTER results are finished and the current frontier has had LOCAL_AFTER_MOVE neighbours
  tried, TPE takes over, in a region around the frontier (rates x/÷ 2, fractions ±0.2, integers ±2),
  fitted to every earlier result inside that region; it changes at most MAX_CHANGES constants (those it
  moved furthest). When the frontier moves, the region moves with it: that is the re-centring.
  TPE rather than CMA-ES: TPE keeps no state of its own (it is refitted from the trials each time, so
  moving the region costs nothing and a restart loses nothing), it handles integers and categorical
  choices (depth, powers of two, window pattern) natively, and it is useful after a handful of results,
  where CMA-ES wants a population of ~11 per generation in 14 dimensions and continuous variables.
- A configuration that cannot run is never proposed: shape constraints between the constants (an even
  head size, TOTAL_BATCH_SIZE a multiple of DEVICE_BATCH_SIZE x sequence length, warm-up plus warm-down
  at most the whole budget, a window pattern of S and L) and memory: an out-of-memory crash records its
  size (rows x sequence x width x depth), and nothing that large or larger is proposed again.
- Crashes are recorded to the study as failed trials; TPE sees them as the worst result in its region.
  An interrupted experiment is recorded as failed too, but is not held against its values.
- A configuration already tried is not proposed again (the noise rule's repeats measure the frontier).

Every recorded experiment is told to the study, which persists in `.autoresearch/optuna.db` (one study per
branch): the search resumes after a restart where it stopped, and learns from experiments it did not
propose too.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
import time
from pathlib import Path

from .. import task as tasks
from ..git import git
from ..harness.settings import Settings
from ..layout import CANDIDATE, OPTUNA_DB, OPTUNA_PENDING, state
from .base import AgentError, AgentUnavailable, Context, Proposal

BEGIN = "# @autoresearch:hyperparameters-begin"   # the hyperparameter block of train.py: the lines between
END = "# @autoresearch:hyperparameters-end"       # these two (each alone on its line)
CONSTANT = re.compile(r"^([A-Z][A-Z0-9_]*) = ([^#\n]+?)(\s+#.*)?$", re.M)
SKIP = {"SEED"}
WINDOW_PATTERNS = ["L", "SL", "SSL", "SSSL"]

STEP_FACTOR = 1.4         # a local step of a rate: x or / this
FRACTION_STEP = 0.1       # a local step of a fraction
MODEL_AFTER = 10          # finished results before TPE takes over from the local steps
LOCAL_AFTER_MOVE = 3      # neighbours of a new frontier tried before TPE takes over again
MODEL_STARTUP = 4         # results inside TPE's region before it stops sampling the region at random
MODEL_TRIES = 40          # TPE samples drawn for one proposal before falling back to a local step
MAX_CHANGES = 3           # constants one TPE proposal may change
REGION = {"log": 2.0, "uniform": 0.2, "int": 2}   # TPE's region around the frontier, per kind
NOT_THE_VALUES = {"interrupted", "rejected"}      # failures not held against the values that ran


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


# ---------------------------------------------------------------------------------------------------
# Steps, constraints and descriptions (pure functions of values and the space)

def _rounded(spec: dict, value):
    """A value as train.py will hold it (4 significant digits for floats, as _literal writes them)."""
    if spec["kind"] in ("log", "uniform"):
        return float(f"{value:.4g}")
    if spec["kind"] == "int":
        return int(round(value))
    return value


def _inside(spec: dict, value) -> bool:
    if spec["kind"] == "choice":
        return value in spec["choices"]
    return isinstance(value, (int, float)) and spec["low"] <= value <= spec["high"]


def step_note(spec: dict, old, new) -> str:
    """How a value moved, in the step's own terms: x1.4, /2, +0.1, -1, or nothing for a pattern."""
    if isinstance(old, str) or isinstance(new, str) or old is None:
        return ""
    if spec["kind"] == "log" or (spec["kind"] == "choice" and old > 0 and new > 0):
        ratio = new / old
        return f"x{ratio:.3g}" if ratio >= 1 else f"/{1 / ratio:.3g}"
    return f"{new - old:+d}" if isinstance(old, int) and isinstance(new, int) else f"{new - old:+.3g}"


def single_steps(current: dict, space: dict) -> list[dict]:
    """Every one-constant local step from the current values that stays inside the space."""
    moves = []
    for name, spec in space.items():
        v = current.get(name)
        if v is None:
            continue
        kind = spec["kind"]
        if kind == "log":
            options = [v * STEP_FACTOR, v / STEP_FACTOR]
        elif kind == "uniform":
            options = [v + FRACTION_STEP, v - FRACTION_STEP]
        elif kind == "int":
            options = [v + 1, v - 1]
        elif all(isinstance(c, (int, float)) for c in spec["choices"]):   # powers of two: the neighbours
            ladder = sorted(spec["choices"])
            at = ladder.index(v) if v in ladder else None
            options = [] if at is None else [ladder[i] for i in (at + 1, at - 1) if 0 <= i < len(ladder)]
        else:
            options = [c for c in spec["choices"] if c != v]
        for option in options:
            option = _rounded(spec, option)
            if option != v and _inside(spec, option):
                moves.append({name: option})
    return moves


PAIRED = [("DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE")]   # moved together, so their ratio stays valid


def paired_steps(current: dict, space: dict, rng: random.Random, singles: list[dict]) -> list[dict]:
    """Two-constant steps: the paired constants in the same direction, then random pairs of single steps."""
    moves = []
    for a, b in PAIRED:
        for up in (True, False):
            step_a = [m for m in singles if a in m and (m[a] > current[a]) == up]
            step_b = [m for m in singles if b in m and (m[b] > current[b]) == up]
            if step_a and step_b:
                moves.append({**step_a[0], **step_b[0]})
    pairs = [(x, y) for i, x in enumerate(singles) for y in singles[i + 1:] if x.keys() != y.keys()]
    rng.shuffle(pairs)
    return moves + [{**x, **y} for x, y in pairs]


def memory_units(values: dict, seq: int) -> int | None:
    """A size that grows with activation memory: rows x sequence x width x depth (None without them)."""
    try:
        depth, rows = int(values["DEPTH"]), int(values["DEVICE_BATCH_SIZE"])
        width = depth * int(values.get("ASPECT_RATIO", 64))
        head = int(values.get("HEAD_DIM", 1))
    except (KeyError, TypeError, ValueError):
        return None
    width = -(-width // head) * head if head > 0 else width
    return rows * seq * width * depth


def infeasible(values: dict, seq: int | None, oom_units: int | None = None) -> str | None:
    """Why train.py could not run with these values, or None. Mirrors the template's own checks."""
    for name in ("DEPTH", "ASPECT_RATIO", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE"):
        if name in values and not (isinstance(values[name], int) and values[name] >= 1):
            return f"{name} must be a positive integer"
    head = values.get("HEAD_DIM")
    if head is not None and not (isinstance(head, int) and head >= 2 and head % 2 == 0):
        return "HEAD_DIM must be even (rotary embeddings pair the channels)"
    pattern = values.get("WINDOW_PATTERN")
    if pattern is not None and not (pattern and set(pattern.upper()) <= {"S", "L"}):
        return "WINDOW_PATTERN must be made of S and L"
    if values.get("WARMUP_RATIO", 0.0) + values.get("WARMDOWN_RATIO", 0.0) > 1.0:
        return "WARMUP_RATIO + WARMDOWN_RATIO must be at most 1"
    if seq and {"DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE"} <= values.keys():
        if values["TOTAL_BATCH_SIZE"] % (values["DEVICE_BATCH_SIZE"] * seq):
            return "TOTAL_BATCH_SIZE must be a multiple of DEVICE_BATCH_SIZE x sequence length"
    units = memory_units(values, seq or 1)
    if oom_units is not None and units is not None and units >= oom_units:
        return "as large as a configuration that ran out of memory"
    return None


def describe(current: dict, changes: dict, space: dict) -> str:
    """Exactly what changed: "MATRIX_LR 0.04 -> 0.056 (x1.4), DEPTH 2 -> 3 (+1)"."""
    parts = []
    for name in sorted(changes):
        note = step_note(space.get(name, {"kind": "choice"}), current.get(name), changes[name])
        parts.append(f"{name} {_literal(name, current.get(name))} -> {_literal(name, changes[name])}"
                     + (f" ({note})" if note else ""))
    return ", ".join(parts)


def region(current: dict, space: dict) -> dict:
    """TPE's distributions: a region of the space around the current values (constants that cannot move
    in it are left out)."""
    import optuna.distributions as d

    out = {}
    for name, spec in space.items():
        kind, v = spec["kind"], current.get(name)
        if kind == "choice":
            out[name] = d.CategoricalDistribution(spec["choices"])
            continue
        if not isinstance(v, (int, float)):
            continue
        v = min(max(v, spec["low"]), spec["high"])
        if kind == "log":
            low, high = max(spec["low"], v / REGION["log"]), min(spec["high"], v * REGION["log"])
        else:
            low, high = max(spec["low"], v - REGION[kind]), min(spec["high"], v + REGION[kind])
        if low < high:
            out[name] = (d.IntDistribution(int(low), int(high)) if kind == "int"
                         else d.FloatDistribution(low, high, log=kind == "log"))
    return out


def _contains(dist, value) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def _distance(spec: dict, dist, old, new) -> float:
    """How far a value moved, as a share of its region (a choice that changed counts as half)."""
    if spec["kind"] == "choice" or old is None:
        return 0.5
    if getattr(dist, "log", False):
        return abs(math.log(new / old)) / math.log(dist.high / dist.low)
    return abs(new - old) / (dist.high - dist.low)


class OptunaAgent:
    name = "optuna"

    def __init__(self, workspace: Path, model: str | None = None, base_url: str | None = None, seed: int | None = None):
        self.root = Path(workspace)
        self.seed = seed
        self._study = None
        self.task = tasks.of(self.root)
        self.file = tuned_file(self.root, self.task)   # train.py, or a task's first file with the block

    def check(self) -> None:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise AgentUnavailable("the optuna agent needs the optuna package: pip install optuna") from None
        train = self.root / self.file
        if self.file != CANDIDATE and train.exists() and BEGIN not in train.read_text():
            raise AgentUnavailable(f"{self.file} has no hyperparameter block (no line {BEGIN!r}): the optuna agent "
                                   "tunes numeric constants and this task has none; use --agent openai or anthropic")
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
        study = optuna.create_study(study_name=branch, storage=storage, direction="minimize", load_if_exists=True)
        if "space" not in study.user_attrs:  # an AgentError here leaves no half-made study behind
            study.set_user_attr("space", space_of((self.root / self.file).read_text()))
        self._study = study
        self._fail_stale_trials()
        return self._study

    def _fail_stale_trials(self) -> None:
        """Trials left RUNNING (asked by an earlier version of this agent that died) are failed."""
        import optuna

        for trial in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self._study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

    def space(self) -> dict:
        return self.study().user_attrs["space"]

    def distributions(self) -> dict:
        import optuna.distributions as d

        out = {}
        for name, spec in self.space().items():
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

    def results(self) -> list:
        """The study's finished trials: measured results and failures."""
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        return self.study().get_trials(deepcopy=False, states=states)

    def oom_units(self, current: dict, seq: int) -> int | None:
        """The smallest size that ran out of memory (see memory_units), or None when none has."""
        sizes = [memory_units({**current, **t.params}, seq) for t in self.results()
                 if t.user_attrs.get("error_class") == "oom"]
        return min((s for s in sizes if s is not None), default=None)

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
        source = context.texts().get(self.file, context.train_py)
        current = read_constants(source)  # first: a frontier without its block asks for no trial
        self.study()
        if self._pending():  # proposed but never recorded (e.g. the loop was killed)
            self._record_pending(None, "crash", "interrupted", None)
        self._catch_up()
        space, seq = self.space(), _profile_seq_len(self.root)
        results = self.results()
        held = [t for t in results if t.user_attrs.get("error_class") not in NOT_THE_VALUES]
        tried = {_key(t.params) for t in held}
        oom = self.oom_units(current, seq or 1)
        frontier = {k: current[k] for k in space if k in current}
        rng = random.Random(f"{self.seed}:{len(held)}")   # an interrupted proposal is made again

        def runnable(changes: dict) -> bool:
            values = {**frontier, **changes}
            return _key(values) not in tried and infeasible({**current, **values}, seq, oom) is None

        complete = [t for t in results if t.value is not None]
        near = sum(1 for t in held if 1 <= sum(t.params.get(k) != v for k, v in frontier.items()) <= 2)
        changes, how = None, ""
        if len(complete) >= MODEL_AFTER and near >= LOCAL_AFTER_MOVE:
            changes, how = self._model_step(frontier, space, held, runnable, rng), f"tpe near the frontier, {len(complete)} results"
        if changes is None:
            singles = single_steps(frontier, space)
            rng.shuffle(singles)
            moves = [m for m in singles + paired_steps(frontier, space, rng, singles) if runnable(m)]
            changes, how = (moves[0] if moves else None), "local step from the frontier"
        if changes is None:
            changes, how = self._model_step(frontier, space, held, runnable, rng), "tpe near the frontier (no local step left)"
        if changes is None:
            raise AgentError("the optuna agent found no untried configuration that can run near the frontier; "
                             "widen the search by editing train.py's hyperparameter block by hand")
        values = {**frontier, **changes}
        self._set_pending({"params": values})
        new = write_constants(source, changes)
        return Proposal(description=f"optuna: {describe(current, changes, space)}; {how}",
                        train_py=new if self.file == context.file else context.train_py,
                        files={self.file: new},
                        model="optuna-tpe" if how.startswith("tpe") else "optuna-local",
                        cost_usd=0.0,  # no model, no tokens: known to cost nothing
                        reply="\n".join(f"{k} = {v!r}" for k, v in changes.items()) + "\n",
                        seconds=time.monotonic() - t0, extra={"changes": changes})

    def _model_step(self, frontier: dict, space: dict, held: list, runnable, rng: random.Random) -> dict | None:
        """TPE fitted to the results inside a region around the frontier; its sample, cut to the
        MAX_CHANGES constants it moved furthest. None when no sample is new and runnable."""
        import optuna
        from optuna.trial import TrialState, create_trial

        dists = region(frontier, space)
        values = [t.value for t in held if t.value is not None]
        worst = max(values, default=0.0) + 0.05   # a crash counts as worse than anything measured
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(
            seed=rng.randrange(2**31), n_startup_trials=MODEL_STARTUP, multivariate=True))
        for t in held:
            params = {k: t.params.get(k) for k in dists}
            if all(_contains(dists[k], v) for k, v in params.items()):
                study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.COMPLETE,
                                             value=t.value if t.value is not None else worst))
        for _ in range(MODEL_TRIES):
            sample = study.ask(dists).params
            moved = {k: _rounded(space[k], v) for k, v in sample.items()}
            moved = {k: v for k, v in moved.items() if v != frontier.get(k) and _inside(space[k], v)}
            far = sorted(moved, key=lambda k: -_distance(space[k], dists[k], frontier.get(k), moved[k]))
            changes = {k: moved[k] for k in far[:MAX_CHANGES]}
            if changes and runnable(changes):
                return changes
        return None

    def observe(self, experiment) -> None:
        """Tell the study: our own proposal (a crash as a failed trial), or any other experiment that
        was measured, as a finished trial of its values."""
        try:
            self.study()
        except AgentError:
            return  # no study without a hyperparameter block to read; the next proposal says why
        found = None
        if experiment.commit:
            try:
                found = read_constants(git(self.root, "show", f"{experiment.commit}:{self.file}", check=False))
            except AgentError:
                found = None  # its train.py has no block to read
        measured = experiment.status in ("keep", "discard") and experiment.val_bpb is not None
        value = self.task.sign * experiment.val_bpb if measured else None  # the study minimizes
        error = "" if measured else ("rejected" if experiment.status == "rejected" else experiment.error_class or "")
        if self._pending():
            self._record_pending(found, experiment.status, error, value, experiment.id)
        elif measured and found is not None:
            self._record(found, value, experiment.status, error, experiment.id)

    def _catch_up(self) -> None:
        """Tell the study every measured experiment of the branch it has not been told: those run before the
        loop started (`autoresearch run -m baseline`, then `loop`, as the quick start goes) or by hand between
        two loops. The frontier is then a point the searcher knows, scored and not re-run."""
        from ..ledger import Ledger

        told = {t.user_attrs.get("experiment") for t in self.study().get_trials(deepcopy=False)}
        ledger = Ledger(self.root, readonly=True)
        try:
            missed = [e for e in ledger.all(self.study().study_name) if e.id not in told]
        finally:
            ledger.close()
        for e in missed:
            if e.status in ("keep", "discard") and e.val_bpb is not None and e.commit:
                self.observe(e)

    def _record_pending(self, found: dict | None, status: str, error: str, value: float | None,
                        experiment: int | None = None) -> None:
        params = self._pending().get("params")
        self._set_pending(None)
        if params is not None:  # what ran is what the commit holds, when there is one
            self._record(found if found is not None else params, value, status, error, experiment)

    def _record(self, found: dict, value: float | None, status: str, error: str, experiment: int | None) -> None:
        """One finished trial; values outside the space are not recorded (a misleading point for TPE)."""
        from optuna.trial import TrialState, create_trial

        dists = self.distributions()
        params = {k: found[k] for k in dists if k in found}
        if params.keys() != dists.keys() or not all(_contains(dists[k], v) for k, v in params.items()):
            return
        self.study().add_trial(create_trial(
            params=params, distributions=dists, value=value,
            state=TrialState.COMPLETE if value is not None else TrialState.FAIL,
            user_attrs={"experiment": experiment, "status": status, "error_class": error}))


def tuned_file(root: Path, task: tasks.Task) -> str:
    """The file whose hyperparameter block is tuned: train.py, or the first editable file of a task that
    has a BEGIN line (else its first editable file, whose missing block check() then reports)."""
    if task.is_gpt:
        return CANDIDATE
    for name in task.editable_files(root):
        if (root / name).is_file() and _marker((root / name).read_text(), BEGIN) is not None:
            return name
    return task.primary(root)


def _key(params: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in params.items()))


def _profile_seq_len(root: Path) -> int | None:
    try:
        return Settings.load(root).profile.max_seq_len
    except (FileNotFoundError, ValueError, KeyError, AttributeError):  # a task workspace has no profile
        return None
