"""The ledger as MLflow runs (optional): `autoresearch report --mlflow [--mlflow-uri URI]`.

One MLflow run per finished ledger row, tagged with its ledger id and workspace, so a second call adds only
the new rows. The store defaults to $AUTORESEARCH_MLFLOW_URI, else a SQLite file in the harness's state
folder. mlflow is an optional dependency (`pip install 'autoresearch[mlflow]'`): without it this module
still imports, and logging fails with MlflowUnavailable, which says what to install.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from .history import VALID, History, delta_of, label, log_file, train_diff
from .layout import CANDIDATE, MLFLOW, state

MLFLOW_ENV = "AUTORESEARCH_MLFLOW_URI"
MLFLOW_DB = "mlflow.db"
MLFLOW_ID_TAG = "autoresearch.ledger_id"
MLFLOW_WORKSPACE_TAG = "autoresearch.workspace"
MLFLOW_DONE_TAG = "autoresearch.complete"


class MlflowUnavailable(ValueError):
    pass


def default_mlflow_uri(root: Path) -> str:
    return f"sqlite:///{(state(Path(root).resolve(), MLFLOW) / MLFLOW_DB).as_posix()}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local store live beside it (never in the cwd, which is the workspace)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    if uri.startswith("file:") or ":" not in uri:
        return None  # a file store keeps artifacts inside itself
    return None  # a server decides


def log_mlflow(h: History, uri: str | None = None, experiment_name: str | None = None) -> dict:
    """One MLflow run per finished ledger row, tagged with its ledger id; rows already logged are skipped."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlflowUnavailable("MLflow logging needs the optional package mlflow: "
                                "pip install 'autoresearch[mlflow]' (or pip install mlflow)") from None
    root = h.root
    uri = uri or os.environ.get(MLFLOW_ENV) or default_mlflow_uri(root)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith("file:") or ":" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses file stores otherwise
    client = MlflowClient(tracking_uri=uri)
    name = experiment_name or f"autoresearch {root.name}"
    found = client.get_experiment_by_name(name)
    exp_id = found.experiment_id if found else client.create_experiment(name, artifact_location=_artifact_location(uri))

    logged: dict[int, str] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if tags.get(MLFLOW_WORKSPACE_TAG) != str(root) or MLFLOW_ID_TAG not in tags:
                continue
            if tags.get(MLFLOW_DONE_TAG) == "1":
                logged[int(tags[MLFLOW_ID_TAG])] = run.info.run_id
            else:  # a half-written run from an interrupted call: replace it
                client.delete_run(run.info.run_id)
        token = page.token
        if not token:
            break

    added, skipped = [], []
    for exp in h.rows:
        if exp.status == "running":
            continue
        if exp.id in logged:
            skipped.append(exp.id)
            continue
        start = int((exp.started_at or time.time()) * 1000)
        end = int((exp.finished_at or exp.started_at or time.time()) * 1000)
        tags = {MLFLOW_ID_TAG: str(exp.id), MLFLOW_WORKSPACE_TAG: str(root), "status": exp.status,
                "commit": exp.commit, "branch": exp.branch, "error_class": exp.error_class,
                "mlflow.note.content": exp.description}
        run = client.create_run(exp_id, start_time=start, tags=tags, run_name=f"{exp.id:04d} {label(exp.description)}")
        rid = run.info.run_id
        metrics = {k: getattr(exp, k) for k in ("val_bpb", "memory_gb", "training_seconds", "total_seconds",
                                                "train_wall_seconds", "eval_wall_seconds", "steps", "params_m",
                                                "mfu_percent", "frontier_bpb")}
        metrics["delta"] = delta_of(exp)
        params = {"description": " ".join(exp.description.split())[:500], "parent": exp.parent,
                  "reason": exp.reason[:500]}
        client.log_batch(rid, metrics=[Metric(k, float(v), end, 0) for k, v in metrics.items()
                                       if v is not None and math.isfinite(v)],
                         params=[Param(k, v) for k, v in params.items()])
        diff = train_diff(root, exp)
        if diff:
            client.log_text(rid, diff + "\n", f"{CANDIDATE}.diff")
        log = log_file(root, exp)
        if log:
            client.log_artifact(rid, str(log))
        if exp.error_excerpt:
            client.log_text(rid, exp.error_excerpt, "error_excerpt.txt")
        client.log_batch(rid, tags=[RunTag(MLFLOW_DONE_TAG, "1")])
        client.set_terminated(rid, status="FINISHED" if exp.status in VALID else
                              "KILLED" if exp.status == "rejected" else "FAILED", end_time=end)
        added.append(exp.id)
    return {"uri": uri, "experiment": name, "experiment_id": exp_id, "added": added, "skipped": skipped}
