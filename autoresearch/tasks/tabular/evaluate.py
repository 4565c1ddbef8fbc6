"""The tabular task's evaluator (frozen; run by the harness in a fresh, sandboxed process after the run).

Reads the run's predictions.npz (plain arrays: no pickle is loaded) for the split it is asked for
($AUTORESEARCH_SPLIT: val, or test for kept results) and scores them against the hidden labels of
$AUTORESEARCH_TASK_DATA/hidden/labels.npz: the metric is the log-loss (probabilities clipped to
[1e-15, 1 - 1e-15]); accuracy is a secondary metric. Predictions of the wrong shape, or rows that are not
probability distributions, are invalid. Writes its JSON result to $AUTORESEARCH_RESULT.
"""

import json
import os

import numpy as np


def evaluate(split):
    labels = np.load(os.path.join(os.environ["AUTORESEARCH_TASK_DATA"], "hidden", "labels.npz"))[split]
    path = os.path.join(os.environ["AUTORESEARCH_RUN_DIR"], "predictions.npz")
    try:
        proba = np.load(path, allow_pickle=False)[split]
    except (OSError, KeyError, ValueError) as e:
        return {"valid": False, "reason": f"no readable predictions for {split}: {e}"}
    if proba.shape != (len(labels), 2) or not np.issubdtype(proba.dtype, np.floating):
        return {"valid": False, "reason": f"predictions for {split} have shape {proba.shape}, not ({len(labels)}, 2)"}
    if not np.all(np.isfinite(proba)) or proba.min() < 0 or np.abs(proba.sum(axis=1) - 1).max() > 1e-6:
        return {"valid": False, "reason": "predictions are not probability distributions"}
    p = np.clip(proba[np.arange(len(labels)), labels], 1e-15, 1 - 1e-15)
    return {"valid": True, "metric": float(-np.mean(np.log(p))), "reason": f"{len(labels)} rows",
            "metrics": {"accuracy": float(np.mean(proba.argmax(axis=1) == labels))}}


if __name__ == "__main__":
    result = evaluate(os.environ.get("AUTORESEARCH_SPLIT", "val"))
    path = os.environ["AUTORESEARCH_RESULT"]
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)
