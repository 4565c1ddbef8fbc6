"""The prompt task's run (frozen): a prompt cannot run anything, so this step only checks prompt.txt (UTF-8,
not empty, at most MAX_CHARS characters, the same limit as the evaluator's) and leaves a copy in the run
folder, so that a broken prompt fails in a second, before any question is sent to the grader. The grader
is the evaluator's: this step has no network and none of its variables. Ends with a --- block."""

import os
import shutil
import sys

MAX_CHARS = 4000

try:
    text = open("prompt.txt", encoding="utf-8").read()
except UnicodeDecodeError as e:
    sys.exit(f"prompt.txt is not UTF-8: {e}")
if not text.strip():
    sys.exit("prompt.txt is empty: the grader would get no instructions")
if len(text) > MAX_CHARS:
    sys.exit(f"prompt.txt has {len(text)} characters; the limit is {MAX_CHARS}")
shutil.copyfile("prompt.txt", os.path.join(os.environ["AUTORESEARCH_RUN_DIR"], "prompt.txt"))
with open(os.path.join(os.environ["AUTORESEARCH_TASK_DATA"], "public", "examples.jsonl")) as f:
    examples = sum(1 for line in f if line.strip())
print("---")
print(f"prompt_chars:    {len(text)}")
print(f"prompt_lines:    {len(text.splitlines())}")
print(f"public_examples: {examples}")
