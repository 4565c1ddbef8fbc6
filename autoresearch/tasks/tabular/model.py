"""The model and its features for the tabular task: classify breast-cancer tumours (scikit-learn's bundled
Wisconsin data, 30 features) as malignant (0) or benign (1). fit.py calls build() and features(); the
harness scores the predicted probabilities of held-out rows by log-loss (lower is better).

Only this file may change. scikit-learn and NumPy are available; nothing is downloaded.
"""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# @autoresearch:hyperparameters-begin
C = 1.0              # inverse regularisation strength of the logistic regression
MAX_ITER = 500       # solver iterations
LOG_FEATURES = 0     # 1: add log1p of every feature (they are all positive)
# @autoresearch:hyperparameters-end


def features(X: np.ndarray) -> np.ndarray:
    return np.hstack([X, np.log1p(np.abs(X))]) if LOG_FEATURES else X


def build():
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER))
