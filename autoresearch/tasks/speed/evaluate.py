"""The speed task's evaluator (frozen; the harness runs it in a fresh, sandboxed process after the run).

For the split it is asked for ($AUTORESEARCH_SPLIT: val, or test for kept results) it draws inputs with a
seed from `secrets` (new every evaluation: nothing to read, nothing to remember from an earlier run), starts
the candidate's solution.py (the copy in $AUTORESEARCH_CANDIDATE_DIR) in a child process, and sends it one
input per line: first CHECKS edge cases, then REPEATS fresh random inputs, each timed here from sending the
input to reading the answer. Every answer is compared with this file's own count; one wrong answer or a
child that dies makes the result invalid. This process is made non-dumpable first, so the child cannot read
its memory through /proc. Writes {"metric": median seconds, "valid", "reason", "metrics"} to
$AUTORESEARCH_RESULT.
"""

import ctypes
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

SIZES = {"val": 20_000, "test": 30_000}   # input length per split
CHECKS = 6                                # edge cases, checked, not timed
REPEATS = 9                               # timed calls, each on a fresh input
CALL_TIMEOUT = 20.0                       # seconds one call may take

WORKER = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("solution", sys.argv[1])
module = importlib.util.module_from_spec(spec)
answers, sys.stdout = sys.stdout, sys.stderr      # the candidate's prints go to stderr
spec.loader.exec_module(module)
answers.write("ready\n"); answers.flush()
for line in sys.stdin:
    answers.write(json.dumps(module.solve(json.loads(line))) + "\n"); answers.flush()
"""


def reference(values):
    """Inversions by merge sort, written here once and never shared with the candidate."""
    def count(xs):
        if len(xs) < 2:
            return xs, 0
        left, a = count(xs[: len(xs) // 2])
        right, b = count(xs[len(xs) // 2:])
        out, n, i, j = [], a + b, 0, 0
        while i < len(left) and j < len(right):
            if right[j] < left[i]:
                out.append(right[j]); n += len(left) - i; j += 1
            else:
                out.append(left[i]); i += 1
        return out + left[i:] + right[j:], n
    return count(list(values))[1]


def inputs(rng, n):
    """Edge cases first, then REPEATS random sequences (some with many duplicates)."""
    yield from ([], [7], list(range(n // 10)), list(range(n // 10, 0, -1)), [3] * (n // 10),
                [rng.randrange(5) for _ in range(n // 10)])
    for k in range(REPEATS):
        high = n if k % 2 else n // 20
        yield [rng.randrange(-high, high) for _ in range(n)]


def no_dumping():
    """PR_SET_DUMPABLE 0: a process of the same user can no longer open /proc/<this>/mem or environ."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def evaluate(split):
    with tempfile.TemporaryDirectory() as work:   # the child's cwd and HOME: fresh, and gone afterwards
        return _evaluate(split, work)


def _evaluate(split, work):
    rng = random.Random(secrets.randbits(64))
    source = os.path.join(os.environ["AUTORESEARCH_CANDIDATE_DIR"], "solution.py")
    child = subprocess.Popen([sys.executable, "-I", "-c", WORKER, source], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=work,
                             env={"PATH": os.environ.get("PATH", ""), "HOME": work, "OMP_NUM_THREADS": "1"},
                             start_new_session=True)
    try:
        if child.stdout.readline().strip() != "ready":
            return {"valid": False, "reason": "solution.py failed to import"}
        times = []
        for k, values in enumerate(inputs(rng, SIZES[split])):
            line = json.dumps(values) + "\n"
            t0 = time.perf_counter()
            child.stdin.write(line)
            child.stdin.flush()
            answer = child.stdout.readline()
            seconds = time.perf_counter() - t0
            if not answer:
                return {"valid": False, "reason": f"solution.py died on input {k}"}
            if json.loads(answer) != reference(values):
                return {"valid": False, "reason": f"wrong answer on hidden input {k} (length {len(values)})"}
            if k >= CHECKS:
                times.append(seconds)
        return {"valid": True, "metric": statistics.median(times), "reason": f"{len(times)} timed calls",
                "metrics": {"mean_seconds": statistics.fmean(times), "min_seconds": min(times),
                            "max_seconds": max(times), "n": SIZES[split]}}
    except (ValueError, OSError) as e:
        return {"valid": False, "reason": f"solution.py answered something unreadable: {e}"}
    finally:
        child.kill()
        child.wait()
        if os.getpid() == 1:  # in the sandbox this is PID 1: end whatever the child left behind
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit() and p != "1"):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass


if __name__ == "__main__":
    no_dumping()
    result = evaluate(os.environ.get("AUTORESEARCH_SPLIT", "val"))
    path = os.environ["AUTORESEARCH_RESULT"]
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)
