"""False keeps of null edits and detection of a real improvement: the strict rule vs the noise rule, side by side.

    python bench/bench_noise.py --budget 4 --nulls 20 --improvements 10

On a fresh cpu workspace with a short budget: a baseline, the noise floor (`--noise-runs` repeats), then
`--nulls` null candidates (the baseline with only its seed changed) and `--improvements` candidates with a
real change (learning rates restored from a baseline that scales them by `--lr-scale`). Every candidate is
trained and scored by the harness's own code path (trial.measure: sandbox, parent-held clock, out-of-process
evaluation) and judged independently against the same frontier by both rules, with the noise rule's
confirmation run when it asks for one, exactly as `autoresearch run` does (the floor pools confirmation pairs
as they come). Printed: how many each rule keeps, and the improvement's measured size in noise stds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoresearch import sandbox, selection  # noqa: E402
from autoresearch.harness.prepare import load_manifest, prepare  # noqa: E402
from autoresearch.harness.profiles import get_profile  # noqa: E402
from autoresearch.harness.settings import Settings  # noqa: E402
from autoresearch.recovery import Journal  # noqa: E402
from autoresearch.trial import measure  # noqa: E402
from autoresearch.guard import Session  # noqa: E402
from autoresearch.ledger import Ledger  # noqa: E402
from autoresearch.workspace import init_workspace, pin_data  # noqa: E402

LRS = ("EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR")


def scale_lrs(text: str, factor: float) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        name = line.split("=")[0].strip()
        if name in LRS and "=" in line:
            value, _, comment = line.split("=", 1)[1].partition("#")
            line = f"{name} = {float(value) * factor!r}" + (f"  #{comment}" if comment else "\n")
        out.append(line)
    return "".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=4.0)
    ap.add_argument("--nulls", type=int, default=20)
    ap.add_argument("--improvements", type=int, default=10)
    ap.add_argument("--noise-runs", type=int, default=4)
    ap.add_argument("--lr-scale", type=float, default=0.5, help="the baseline's learning rates, times this")
    args = ap.parse_args()
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # compile time is not what is measured here

    tmp = Path(tempfile.mkdtemp(prefix="bench-noise-"))
    os.environ.setdefault("AUTORESEARCH_CACHE", str(Path.home() / ".cache" / "autoresearch"))
    prepare(get_profile("cpu"), progress=False)
    settings = init_workspace(tmp / "lab", "cpu", budget=args.budget, tag="bench")
    pin_data(settings, load_manifest(settings.profile))
    settings = Settings.load(tmp / "lab")
    root, box = settings.root, sandbox.resolve(None)
    session = Session(settings, Ledger(root), box, "autoresearch/bench")
    pristine = (root / "train.py").read_text()
    base_text = scale_lrs(pristine, args.lr_scale)
    (root / ".autoresearch").mkdir(exist_ok=True)
    journal = Journal(root)
    counter = iter(range(10**6))

    def sample(text: str, seed: int | None) -> float:
        (root / "train.py").write_text(text)
        n = next(counter)
        s = measure(session, root / "runs" / f"b{n:03d}", root / "runs" / f"b{n:03d}.log", journal, seed)
        if s.status != "ok":
            raise SystemExit(f"run {n} failed: {s.status} {s.error_class}\n{s.error_excerpt}")
        return s.val_bpb

    t0 = time.time()
    frontier = [sample(base_text, None)] + [sample(base_text, 43 + i) for i in range(args.noise_runs)]
    groups = [frontier]
    floor = selection.pooled_noise(groups)
    print(f"sandbox {box}; budget {args.budget:g}s; frontier (lr x{args.lr_scale:g}) over {len(frontier)} runs: "
          f"mean {statistics.fmean(frontier):.4f}, noise floor {floor.std:.4f} ({floor.dof} dof)", flush=True)

    def trial(text: str, i: int) -> tuple[bool, bool, list[float]]:
        values = [sample(text, None)]
        strict = selection.decide(values, frontier, "strict").keep
        decision = selection.decide(values, frontier, "noise", selection.pooled_noise(groups))
        if decision.verdict == "confirm":
            values.append(sample(text, 43 + i))
            groups.append(values)
            decision = selection.decide(values, frontier, "noise", selection.pooled_noise(groups))
        return strict, decision.keep, values

    results = {}
    for kind, count, make in (
            ("null (seed only)", args.nulls, lambda i: base_text.replace("torch.manual_seed(SEED)",
                                                                          f"torch.manual_seed(SEED + {1000 + i})")),
            ("real (lr restored)", args.improvements, lambda i: pristine.replace("torch.manual_seed(SEED)",
                                                                            f"torch.manual_seed(SEED + {1000 + i})"))):
        kept_strict = kept_noise = runs = 0
        firsts = []
        for i in range(count):
            s, n, values = trial(make(i), i)
            kept_strict += s
            kept_noise += n
            runs += len(values)
            firsts.append(values[0])
            print(f"  {kind} #{i + 1}: {' '.join(f'{v:.4f}' for v in values)}  strict {'keep' if s else 'discard'}"
                  f"  noise {'keep' if n else 'discard'}", flush=True)
        effect = (statistics.fmean(frontier) - statistics.fmean(firsts)) / selection.pooled_noise(groups).std
        results[kind] = (count, kept_strict, kept_noise, runs, effect)

    floor = selection.pooled_noise(groups)
    print(f"\nnoise floor at the end: {floor.std:.4f} ({floor.dof} dof); {time.time() - t0:.0f}s in all")
    print(f"{'candidates':20s} {'n':>3s} {'effect':>8s} {'strict keeps':>13s} {'noise keeps':>12s} {'runs/cand':>9s}")
    for kind, (count, s, n, runs, effect) in results.items():
        print(f"{kind:20s} {count:3d} {effect:+7.2f}σ {s:5d} ({100 * s / count:3.0f}%) {n:5d} ({100 * n / count:3.0f}%)"
              f" {runs / count:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
