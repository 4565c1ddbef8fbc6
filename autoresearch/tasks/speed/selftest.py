"""The speed task's run (frozen): import solution.py and check solve() on small public examples against a
brute-force count. It proves the candidate loads and is right on easy cases; the score is the evaluator's
(hidden inputs, timed from outside). Ends with a --- block; exits 1 on a wrong answer."""

import random
import time

import solution


def brute(values):
    return sum(values[i] > values[j] for i in range(len(values)) for j in range(i + 1, len(values)))


rng = random.Random(0)
cases = [[], [1], [2, 1], [1, 2, 3], [3, 2, 1], [1, 1, 1], [5, 1, 4, 2, 3]]
cases += [[rng.randrange(50) for _ in range(rng.randrange(1, 300))] for _ in range(20)]
t0 = time.perf_counter()
wrong = [c for c in cases if solution.solve(list(c)) != brute(c)]
print("---")
print(f"cases:   {len(cases)}")
print(f"wrong:   {len(wrong)}")
print(f"seconds: {time.perf_counter() - t0:.3f}")
if wrong:
    raise SystemExit(f"wrong answer on a public example: {wrong[0][:20]}")
