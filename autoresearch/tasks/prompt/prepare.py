"""Prepare the prompt task (frozen; `autoresearch prepare` runs it once per cache): short questions with one
exact integer answer each (arithmetic, word problems, unit conversions), drawn from a fixed seed, so every
cache holds the same ones.

    $AUTORESEARCH_TASK_DATA/public/examples.jsonl   a few questions with their answers (the run may read them)
    $AUTORESEARCH_TASK_DATA/hidden/val.jsonl        the search split: {"question", "answer"} per line
    $AUTORESEARCH_TASK_DATA/hidden/test.jsonl       the hidden split (scored for kept results only)

No question appears twice, in one split or across them.
"""

import json
import os
import random

SEED = 12
SIZES = {"public/examples": 5, "hidden/val": 40, "hidden/test": 40}


# ---------------------------------------------------------------------------
# One question of each kind: (question, answer)

def arithmetic(r):
    a, b = r.randint(12, 99), r.randint(12, 99)
    op = r.choice("+-*")
    a, b = (a, b) if op != "-" or a >= b else (b, a)
    return f"What is {a} {op} {b}?", {"+": a + b, "-": a - b, "*": a * b}[op]


def word_problem(r):
    kind = r.randrange(4)
    if kind == 0:
        n, k = r.randint(6, 24), r.randint(3, 15)
        return f"A box holds {n} eggs. How many eggs are in {k} full boxes?", n * k
    if kind == 1:
        have, give = r.randint(30, 90), r.randint(5, 29)
        return (f"Ana has {have} stickers and gives {give} of them to Ben. How many stickers does Ana have "
                "left?", have - give)
    if kind == 2:
        speed, hours = r.choice((40, 45, 50, 60, 70, 80, 90)), r.randint(2, 9)
        return f"A train travels {speed} km every hour. How many km does it travel in {hours} hours?", speed * hours
    price, count = r.randint(2, 19), r.randint(3, 12)
    return f"Pencils cost {price} cents each. How many cents do {count} pencils cost in total?", price * count


def conversion(r):
    kind = r.randrange(5)
    if kind == 0:
        h, m = r.randint(1, 9), r.choice((5, 10, 15, 20, 25, 30, 40, 45, 50))
        return f"How many minutes are there in {h} hours and {m} minutes?", 60 * h + m
    if kind == 1:
        m = r.randint(2, 30)
        return f"How many seconds are there in {m} minutes?", 60 * m
    if kind == 2:
        w = r.randint(2, 30)
        return f"How many days are there in {w} weeks?", 7 * w
    if kind == 3:
        whole, tenth = r.randint(1, 9), r.randint(1, 9)
        return f"How many centimetres are there in {whole}.{tenth} metres?", 100 * whole + 10 * tenth
    kg = r.randint(2, 40)
    return f"How many grams are there in {kg} kilograms?", 1000 * kg


KINDS = (arithmetic, word_problem, conversion)


# ---------------------------------------------------------------------------
# The splits

def draw(r, n, seen):
    out = []
    while len(out) < n:
        question, answer = KINDS[len(out) % len(KINDS)](r)
        if question not in seen:
            seen.add(question)
            out.append({"question": question, "answer": str(answer)})
    return out


if __name__ == "__main__":
    data, r, seen = os.environ["AUTORESEARCH_TASK_DATA"], random.Random(SEED), set()
    for name, n in SIZES.items():
        os.makedirs(os.path.dirname(f"{data}/{name}"), exist_ok=True)
        with open(f"{data}/{name}.jsonl", "w") as f:
            for row in draw(r, n, seen):
                f.write(json.dumps(row) + "\n")
    print(", ".join(f"{name} {n}" for name, n in SIZES.items()) + " questions")
