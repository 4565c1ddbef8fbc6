"""The edit protocol of the model-API backends: the model answers with search/replace blocks, the harness applies them.

A reply is one `DESCRIPTION:` line and one or more blocks

    FILE: path/of/the/file.py            (optional with one editable file)
    <<<<<<< SEARCH
    lines copied exactly from the current train.py
    =======
    the lines that replace them
    >>>>>>> REPLACE

A `FILE:` line (outside a block) names the file of the blocks that follow it, up to the next `FILE:` line;
blocks before any `FILE:` line edit the first editable file (train.py for the GPT task, whose instructions
never mention FILE lines). A task with several editable files is told to name the file before its blocks.
A block whose file is not an editable file makes the whole reply unusable (an AgentError of kind reply).

The model never touches files. `parse_edits` reads the reply (tolerating prose and code fences around the
blocks), `apply_file_edits` applies the blocks to their files in order (`apply_edits`: the blocks of one
file). A SEARCH section is matched as whole lines and must match exactly one place; when it matches nowhere,
a second try ignores trailing whitespace on each line (models often drop or add it). Every failure is an
AgentError saying which block went wrong and why.
"""

from __future__ import annotations

import re

from .base import REPLY, AgentError, Context, Proposal, as_int

EDIT_INSTRUCTIONS = """\
You are a machine-learning researcher running experiments on train.py, a single-file GPT training script. \
Each experiment trains for a fixed time budget and is judged by the validation metric the harness reports; \
your job is to make that metric better, one experiment at a time.

You cannot run anything or touch files. You answer with edits, and the harness applies them to train.py \
and runs the result. Your whole answer must have this form:

DESCRIPTION: <one line saying what this experiment tries and why>
<<<<<<< SEARCH
(lines copied exactly from the current train.py, including indentation)
=======
(the lines that take their place)
>>>>>>> REPLACE

Rules:
- Start with exactly one DESCRIPTION line, then give one or more SEARCH/REPLACE blocks.
- Each SEARCH section must be copied character for character from the current train.py and must match \
exactly one place in it: include a few neighbouring lines when a line alone would be ambiguous. Keep \
SEARCH sections short; do not repeat large unchanged parts of the file.
- Blocks are applied in order, each to the result of the previous ones.
- To delete lines, leave the REPLACE section empty. To add lines, SEARCH for the lines next to where they go \
and repeat them in REPLACE along with the new ones.
- Only train.py can change. It must stay self-contained: no new files, no new packages, no downloads.
- Test one idea per proposal, so that its result says something clear. Build on what the history shows \
worked, and do not repeat what already failed.
- Keep the script runnable: a syntax error or a crash wastes an experiment.
"""



FILES_INSTRUCTIONS = """\
You are a researcher running experiments on a research task whose editable files are {files} \
(program.md says what they do and how the result is scored). Each experiment runs them under a fixed time \
budget and is judged by the validation metric the harness reports; your job is to make that metric better, \
one experiment at a time.

You cannot run anything or touch files. You answer with edits, and the harness applies them to those files \
and runs the result. Your whole answer must have this form:

DESCRIPTION: <one line saying what this experiment tries and why>
FILE: <the path of the file the blocks below edit, exactly as shown, e.g. {first}>
<<<<<<< SEARCH
(lines copied exactly from the current text of that file, including indentation)
=======
(the lines that take their place)
>>>>>>> REPLACE

Rules:
- Start with exactly one DESCRIPTION line, then give one or more SEARCH/REPLACE blocks.
- Put a FILE line before the blocks of each file you edit; it holds for every block after it, up to the \
next FILE line. Name only the files listed above: a block for any other file makes the whole answer unusable.
- Each SEARCH section must be copied character for character from the current text of its file and must \
match exactly one place in it: include a few neighbouring lines when a line alone would be ambiguous. Keep \
SEARCH sections short; do not repeat large unchanged parts of a file.
- Blocks are applied in order, each to the result of the previous ones.
- To delete lines, leave the REPLACE section empty. To add lines, SEARCH for the lines next to where they go \
and repeat them in REPLACE along with the new ones.
- Only {files} can change: no new files, no new packages, no downloads.
- Test one idea per proposal, so that its result says something clear. Build on what the history shows \
worked, and do not repeat what already failed.
- Keep the code runnable: a syntax error or a crash wastes an experiment.
"""


def edit_instructions(files: str | list[str] = "train.py") -> str:
    """The system prompt for edits of `files` (one name or several): the GPT task's as written above, a
    one-file task's with its file named, a task of several files with FILE lines."""
    names = [files] if isinstance(files, str) else list(files)
    if len(names) > 1:
        return FILES_INSTRUCTIONS.format(files=", ".join(names), first=names[0])
    file = names[0]
    if file == "train.py":
        return EDIT_INSTRUCTIONS
    return (EDIT_INSTRUCTIONS.replace("train.py, a single-file GPT training script", f"{file}, the one editable file "
                                      "of a research task (program.md says what it does and how it is scored)")
            .replace("Each experiment trains for a fixed time budget", "Each experiment runs it under a fixed time "
                     "budget").replace("train.py", file))


_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
_DESCRIPTION = re.compile(r"^[ \t*_#>`-]*DESCRIPTION[ \t*_`]*:[ \t*_`]*(.*?)[ \t*_`]*$", re.M | re.I)
_FILE = re.compile(r"^[ \t*_#>`-]*FILE[ \t*_`]*:[ \t*_`]*(.*?)[ \t*_`]*$", re.I)
_THINKING = re.compile(r"<think>.*?</think>", re.S | re.I)


def parse_edits(text: str) -> tuple[str, list[tuple[str | None, str, str]]]:
    """The description and the (file, search, replace) blocks of a model's reply, in order; `file` is the
    path of the last `FILE:` line before the block, None before any.

    Text outside the blocks (prose, ``` fences, a <think> section) is ignored. Raises AgentError when the
    reply has no DESCRIPTION line, no block, or a block that is not closed.
    """
    text = _THINKING.sub("", (text or "").replace("\r\n", "\n").replace("\r", "\n"))

    blocks: list[tuple[str | None, str, str]] = []
    outside: list[str] = []   # the prose around the blocks, where the description is looked for
    state, search, replace, file = "outside", [], [], None
    for number, line in enumerate(text.split("\n"), start=1):
        if state == "outside":
            if _SEARCH.match(line):
                state, search, replace = "search", [], []
            elif named := _FILE.match(line):
                file = _path(named.group(1))
            else:
                outside.append(line)
        elif state == "search":
            if _DIVIDER.match(line):
                state = "replace"
            elif _SEARCH.match(line) or _REPLACE.match(line):
                raise AgentError(f"edit block {len(blocks) + 1}: no ======= line between its SEARCH and "
                                 f"REPLACE markers (reply line {number})")
            else:
                search.append(line)
        else:  # replace
            if _REPLACE.match(line):
                blocks.append((file, "\n".join(search), "\n".join(replace)))
                state = "outside"
            elif _SEARCH.match(line):
                raise AgentError(f"edit block {len(blocks) + 1}: not closed by >>>>>>> REPLACE before the "
                                 f"next SEARCH (reply line {number})")
            else:
                replace.append(line)
    if state != "outside":
        missing = "======= and >>>>>>> REPLACE" if state == "search" else ">>>>>>> REPLACE"
        raise AgentError(f"edit block {len(blocks) + 1}: the reply ends before its {missing} line "
                         "(was the answer cut off?)")

    described = [m.group(1).strip() for m in _DESCRIPTION.finditer("\n".join(outside))]
    description = next((d for d in described if d), "")
    if not description:
        raise AgentError("the reply has no 'DESCRIPTION: ...' line" + _reply_hint(text))
    if not blocks:
        raise AgentError("the reply has no '<<<<<<< SEARCH' / '=======' / '>>>>>>> REPLACE' edit block"
                         + _reply_hint(text))
    return description, blocks


def parse_reply(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The description and the (search, replace) pairs of a reply, their files left out (one-file callers)."""
    description, blocks = parse_edits(text)
    return description, [(search, replace) for _, search, replace in blocks]


def _path(named: str) -> str:
    """A FILE line's path as the workspace names it: quotes and a leading ./ taken off."""
    named = named.strip().strip("'\"")
    return named[2:] if named.startswith("./") else named


def _reply_hint(text: str) -> str:
    flat = " ".join(text.split())
    if not flat:
        return " (the reply is empty)"
    return f" (reply starts: {flat[:120]!r})"


def _find(lines: list[str], wanted: list[str], key) -> list[int]:
    """Indices at which `wanted` occurs in `lines` as a run of whole lines, comparing key(line)."""
    n = len(wanted)
    target = [key(w) for w in wanted]
    first = target[0]
    return [i for i in range(len(lines) - n + 1)
            if key(lines[i]) == first and [key(x) for x in lines[i:i + n]] == target]


def _first_line(search: str) -> str:
    for line in search.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def apply_edits(source: str, blocks: list[tuple[str, str]], file: str = "train.py") -> str:
    """`source` (the text of `file`) with each (search, replace) block applied in turn; AgentError if any
    block does not apply, or if together they change nothing."""
    result = _apply(source, list(enumerate(blocks, start=1)), len(blocks), file)
    if result == source:
        raise AgentError("the edits change nothing")
    return result


def _apply(source: str, numbered: list[tuple[int, tuple[str, str]]], total: int, file: str) -> str:
    """`source` with the numbered blocks applied in order (numbers as the reply counts them)."""
    lines = source.split("\n")
    for index, (search, replace) in numbered:
        label = f"edit block {index} of {total}"
        if not search.strip():
            raise AgentError(f"{label}: its SEARCH section is empty, so it cannot say where the edit goes")
        wanted = search.split("\n")
        hits = _find(lines, wanted, lambda s: s)
        if not hits:
            hits = _find(lines, wanted, str.rstrip)
        if len(hits) != 1:
            problem = (f"was not found in {file}" if not hits
                       else f"is ambiguous: it matches {len(hits)} places in {file} (add context lines)")
            raise AgentError(f"{label}: SEARCH starting {_first_line(search)!r} {problem}")
        at = hits[0]
        lines[at:at + len(wanted)] = replace.split("\n") if replace else []
    return "\n".join(lines)


def apply_file_edits(sources: dict[str, str], blocks: list[tuple[str | None, str, str]]) -> dict[str, str]:
    """The new text of each file the (file, search, replace) blocks change; `sources` holds the editable
    files (name -> text, the one a block without a file edits first). AgentError when a block names a file
    that is not among them, when a block does not apply, or when the edits change nothing."""
    default = next(iter(sources))
    total = len(blocks)
    by_file: dict[str, list] = {}
    for index, (file, search, replace) in enumerate(blocks, start=1):
        name = file or default
        if name not in sources:
            raise AgentError(f"edit block {index} of {total} names {name!r}, which is not an editable file "
                             f"(editable: {', '.join(sources)}); nothing was applied")
        by_file.setdefault(name, []).append((index, (search, replace)))
    new = {name: _apply(sources[name], numbered, total, name) for name, numbered in by_file.items()}
    changed = {name: text for name, text in new.items() if text != sources[name]}
    if not changed:
        raise AgentError("the edits change nothing")
    return changed


def proposal_from_reply(text: str, context: Context, *, model: str, input_tokens, output_tokens, seconds: float,
                        cut_off: str | None = None, served_model=None) -> Proposal:
    """Parse a model's reply, apply its edits to the context's editable files, and wrap the result as a
    Proposal: `files` holds the new text of each changed file, `train_py` the primary file's.

    The model is the one the server says answered (`served_model`), else the one asked for. `cut_off` names
    the token limit when the server says the reply was truncated, so a parse failure can say why. A reply
    that cannot be used is an AgentError that keeps the reply and what it cost."""
    served = served_model if isinstance(served_model, str) and served_model else model
    spent = Proposal(description="", model=served, input_tokens=as_int(input_tokens),
                     output_tokens=as_int(output_tokens), seconds=seconds, reply=text)
    try:
        description, blocks = parse_edits(text)
        changed = apply_file_edits(context.texts(), blocks)
    except AgentError as e:
        why = f"{e} [the reply was cut off at {cut_off}]" if cut_off else str(e)
        raise AgentError(why, kind=REPLY, reply=text, spent=spent) from None
    spent.description, spent.files = description, changed
    spent.train_py = changed.get(context.file, context.train_py)
    spent.extra = {"edit_blocks": len(blocks), "requested_model": model, "files_changed": sorted(changed)}
    return spent
