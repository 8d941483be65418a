"""The model report: how good a trained model is, measured on data it was not fitted on.

``train`` writes it into ``metadata.json`` (``ModelMetadata.report``) and the admin's
model page draws it (``report_admin.py``). Classifiers get their confusion matrix,
per-class precision and recall, ROC and precision-recall curve points (one-vs-rest when
there are more than two classes) and calibration bins; regressors their residual
quantiles and predicted-against-actual bins; both the permutation importance of each raw
input column, so a one-hot encoded column counts once, as the column it came from.

Everything is bounded so training stays quick: curves keep at most ``MAX_CURVE_POINTS``
points, permutation importance shuffles the first ``IMPORTANCE_ROWS`` rows
``IMPORTANCE_REPEATS`` times.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelapp.metadata import json_safe

# Points kept per curve: enough to draw it, few enough for metadata.json.
MAX_CURVE_POINTS = 60
CALIBRATION_BINS = 10
VALUE_BINS = 10
RESIDUAL_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
IMPORTANCE_ROWS = 1000
IMPORTANCE_REPEATS = 5
# The share of train held out for the report when the job has no validation channel.
HOLDOUT_FRACTION = 0.2


def build_report(
    estimator: Any,
    task: str | None,
    X: Any,
    y: np.ndarray,
    source: dict[str, Any],
    column_names: list[str],
    seed: int = 0,
) -> dict[str, Any]:
    """The report of a fitted ``estimator`` on ``X``, ``y``; ``source`` says where they
    came from (``{"data": "validation", "rows": ...}``), empty for a transformer."""
    if task not in ("classification", "regression") or len(y) == 0:
        return {}
    y = np.asarray(y)
    report: dict[str, Any] = {"source": source}
    if task == "classification":
        report["classification"] = classification_report(estimator, X, y)
    else:
        report["regression"] = regression_report(estimator.predict(X), y)
    report["permutation_importance"] = importance(estimator, X, y, column_names, seed)
    return json_safe(report)


def classification_report(estimator: Any, X: Any, y: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics

    classes = list(estimator.classes_)
    predicted = estimator.predict(X)
    precision, recall, _, support = metrics.precision_recall_fscore_support(
        y, predicted, labels=classes, zero_division=0
    )
    out: dict[str, Any] = {
        "classes": classes,
        "confusion_matrix": metrics.confusion_matrix(y, predicted, labels=classes),
        "per_class": [
            {
                "class": c,
                "precision": float(p),
                "recall": float(r),
                "support": int(s),
            }
            for c, p, r, s in zip(classes, precision, recall, support, strict=True)
        ],
    }
    if not callable(getattr(estimator, "predict_proba", None)):
        return out
    proba = np.asarray(estimator.predict_proba(X), dtype=float)
    # Binary: the second class is the positive one; otherwise each class against the rest.
    positives = classes[1:] if len(classes) == 2 else classes
    curves = []
    for c in positives:
        index = classes.index(c)
        truth = y == c
        if truth.all() or not truth.any():
            continue  # a curve needs both outcomes
        score = proba[:, index]
        fpr, tpr, _ = metrics.roc_curve(truth, score)
        precision_c, recall_c, _ = metrics.precision_recall_curve(truth, score)
        curves.append(
            {
                "class": c,
                "roc_auc": float(metrics.roc_auc_score(truth, score)),
                "average_precision": float(
                    metrics.average_precision_score(truth, score)
                ),
                "roc": thin(fpr, tpr),
                "precision_recall": thin(recall_c, precision_c),
            }
        )
    out["curves"] = curves
    if len(classes) == 2:
        out["calibration"] = calibration(y == classes[1], proba[:, 1], "positive")
    else:
        top = proba.argmax(axis=1)
        hit = np.asarray(classes, dtype=object)[top] == y
        out["calibration"] = calibration(hit, proba.max(axis=1), "predicted")
    return out


def thin(x: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Curve points, at most ``MAX_CURVE_POINTS`` of them, evenly spaced along the
    curve's own order and always with both ends: a subset of the exact curve."""
    n = len(x)
    keep = (
        np.unique(np.linspace(0, n - 1, MAX_CURVE_POINTS).round().astype(int))
        if n > MAX_CURVE_POINTS
        else np.arange(n)
    )
    return {"x": [float(v) for v in x[keep]], "y": [float(v) for v in y[keep]]}


def calibration(
    outcome: np.ndarray, probability: np.ndarray, of: str
) -> dict[str, Any]:
    """Equal-width probability bins (as ``sklearn.calibration.calibration_curve``'s
    uniform strategy): each bin's mean predicted probability, the share of outcomes and
    its count; empty bins are left out. ``of``: the positive class's probability
    (binary) or the predicted class's (multiclass: whether the prediction was right)."""
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    index = np.searchsorted(edges[1:-1], probability)
    bins = []
    for b in range(CALIBRATION_BINS):
        inside = index == b
        count = int(inside.sum())
        if count:
            bins.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "predicted": float(probability[inside].mean()),
                    "observed": float(outcome[inside].mean()),
                    "count": count,
                }
            )
    return {"of": of, "bins": bins}


def regression_report(predicted: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    y = y.astype(float)
    predicted = np.asarray(predicted, dtype=float).reshape(len(y), -1)[:, 0]
    residuals = y - predicted
    edges = np.unique(np.quantile(predicted, np.linspace(0, 1, VALUE_BINS + 1)))
    index = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, None)
    index = np.minimum(index, max(len(edges) - 2, 0))
    bins = []
    for b in np.unique(index):
        inside = index == b
        bins.append(
            {
                "predicted": float(predicted[inside].mean()),
                "actual": float(y[inside].mean()),
                "count": int(inside.sum()),
            }
        )
    return {
        "residual_quantiles": {
            f"{q:g}": float(v)
            for q, v in zip(
                RESIDUAL_QUANTILES,
                np.quantile(residuals, RESIDUAL_QUANTILES),
                strict=True,
            )
        },
        "predicted_vs_actual": bins,
    }


def importance(
    estimator: Any, X: Any, y: np.ndarray, names: list[str], seed: int
) -> dict[str, Any]:
    """``sklearn.inspection.permutation_importance`` of the whole pipeline on the raw
    columns, scored by the estimator's own ``score`` (accuracy, R²), on the first
    ``IMPORTANCE_ROWS`` rows."""
    from sklearn.inspection import permutation_importance

    rows = min(len(y), IMPORTANCE_ROWS)
    sample = X.iloc[:rows] if hasattr(X, "iloc") else X[:rows]
    result = permutation_importance(
        estimator,
        sample,
        y[:rows],
        n_repeats=IMPORTANCE_REPEATS,
        random_state=seed,
        n_jobs=1,
    )
    columns = [
        {"name": name, "mean": float(m), "std": float(s)}
        for name, m, s in zip(
            names, result.importances_mean, result.importances_std, strict=True
        )
    ]
    return {
        "scoring": "score",
        "rows": rows,
        "repeats": IMPORTANCE_REPEATS,
        "random_state": seed,
        "columns": sorted(columns, key=lambda c: -c["mean"]),
    }
