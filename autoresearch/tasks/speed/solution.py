"""Count the inversions of a sequence: the pairs i < j with values[i] > values[j] (the Kendall tau distance
between a ranking and sorted order). The harness's evaluator calls solve(values) on hidden inputs (lists of
ints, tens of thousands long, duplicates allowed), checks every answer against its own reference, and times
the calls from outside this process: make it faster without changing any answer.

Only this file may change. Plain Python and NumPy are available; nothing is downloaded.
"""

# @autoresearch:hyperparameters-begin
CUTOFF = 48          # runs shorter than this are counted by insertion sort instead of being split again
# @autoresearch:hyperparameters-end


def _insertion(xs: list) -> int:
    """Sort xs in place by insertion; the number of swaps is its inversion count."""
    count = 0
    for i in range(1, len(xs)):
        x, j = xs[i], i - 1
        while j >= 0 and xs[j] > x:
            xs[j + 1] = xs[j]
            j -= 1
            count += 1
        xs[j + 1] = x
    return count


def _sort_count(xs: list) -> tuple[list, int]:
    """Merge sort that counts, for each element of the right half, the larger elements of the left half."""
    if len(xs) <= max(CUTOFF, 1):
        xs = list(xs)
        return xs, _insertion(xs)
    mid = len(xs) // 2
    left, a = _sort_count(xs[:mid])
    right, b = _sort_count(xs[mid:])
    merged, count, i, j = [], a + b, 0, 0
    while i < len(left) and j < len(right):
        if right[j] < left[i]:
            merged.append(right[j])
            count += len(left) - i
            j += 1
        else:
            merged.append(left[i])
            i += 1
    merged += left[i:]
    merged += right[j:]
    return merged, count


def solve(values: list) -> int:
    return _sort_count(list(values))[1]
