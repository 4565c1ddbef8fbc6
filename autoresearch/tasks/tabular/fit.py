"""The tabular task's run (frozen): fit model.py on the train split, predict class probabilities for the
unlabelled val and test rows, write them to $AUTORESEARCH_RUN_DIR/predictions.npz for the evaluator. The
labels of those rows are not here: the evaluator holds them. Ends with a --- block."""

import os
import time

import numpy as np

import model

t0 = time.perf_counter()
data = os.environ["AUTORESEARCH_TASK_DATA"] + "/public"
train, rows = np.load(f"{data}/train.npz"), np.load(f"{data}/rows.npz")
estimator = model.build()
estimator.fit(model.features(train["X"]), train["y"])
out = {split: np.asarray(estimator.predict_proba(model.features(rows[split])), dtype=np.float64)
       for split in ("val", "test")}
np.savez(os.path.join(os.environ["AUTORESEARCH_RUN_DIR"], "predictions.npz"), **out)
print("---")
print(f"train_rows:  {len(train['y'])}")
print(f"fit_seconds: {time.perf_counter() - t0:.2f}")
