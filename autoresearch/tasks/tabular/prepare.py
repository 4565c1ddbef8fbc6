"""Prepare the tabular task (frozen; `autoresearch prepare` runs it once per cache): scikit-learn's
breast-cancer data, split 60 / 20 / 20 into train, val (the search split) and test (the hidden split),
stratified, with a fixed seed.

    $AUTORESEARCH_TASK_DATA/public/train.npz     X, y of the train split (all the run can read)
    $AUTORESEARCH_TASK_DATA/public/rows.npz      X of the val and test rows, without labels
    $AUTORESEARCH_TASK_DATA/hidden/labels.npz    y of the val and test rows (the evaluator's only)
"""

import os

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

data = os.environ["AUTORESEARCH_TASK_DATA"]
X, y = load_breast_cancer(return_X_y=True)
X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.4, stratify=y, random_state=0)
X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0)
os.makedirs(f"{data}/public", exist_ok=True)
os.makedirs(f"{data}/hidden", exist_ok=True)
np.savez(f"{data}/public/train.npz", X=X_train, y=y_train)
np.savez(f"{data}/public/rows.npz", val=X_val, test=X_test)
np.savez(f"{data}/hidden/labels.npz", val=y_val, test=y_test)
print(f"train {len(y_train)}, val {len(y_val)}, test {len(y_test)} rows, {X.shape[1]} features")
