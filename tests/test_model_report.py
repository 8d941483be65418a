"""The model report (issue 27 item 3) through the real ``train``: what it writes into
``metadata.json`` equals scikit-learn's own metrics computed from the saved model on the
same held-out data; without a validation channel it says it used a held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics
from sklearn.calibration import calibration_curve
from sklearn.inspection import permutation_importance

from modelapp.metadata import ModelMetadata
from modelapp.report import IMPORTANCE_REPEATS, MAX_CURVE_POINTS
from tests.support.tables import FEATURES, TARGET, churn_frame
from tests.support.training import run_train, write_csv

SEED = 3


def trained(base: Path, channels: dict[str, Path], *hps: str) -> dict:
    args = [
        arg
        for name, path in channels.items()
        for arg in ("--channel", f"{name}={path}")
    ]
    done = run_train(
        base, *args, "--hp", f"smserve_random_seed={SEED}", *hps, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((base / "model" / "metadata.json").read_text())


def on_curve(points: dict, xs: np.ndarray, ys: np.ndarray) -> bool:
    """Every recorded point is a point of the exact curve, in its order."""
    exact = list(zip(xs.tolist(), ys.tolist(), strict=True))
    recorded = list(zip(points["x"], points["y"], strict=True))
    return all(p in exact for p in recorded) and recorded[0] == exact[0]


@pytest.fixture(scope="module")
def churn(tmp_path_factory) -> tuple[dict, object, pd.DataFrame]:
    """A logistic regression on the churn table (text columns one-hot encoded by
    train; probabilities all distinct, so the curves are longer than the cap), with a
    validation channel of its own."""
    work = tmp_path_factory.mktemp("report_churn")
    churn_frame(500, seed=0).to_csv(work / "train.csv", index=False)
    validation = churn_frame(400, seed=1)
    validation.to_csv(work / "validation.csv", index=False)
    metadata = trained(
        work / "ml",
        {"train": work / "train.csv", "validation": work / "validation.csv"},
        "--hp",
        f"smserve_target_column={TARGET}",
        "--hp",
        "smserve_estimator=logistic_regression",
    )
    model = joblib.load(work / "ml" / "model" / "model.joblib")
    return metadata, model, pd.read_csv(work / "validation.csv")


def test_classifier_report_equals_sklearn_on_the_validation_channel(churn):
    """metadata.json's report (the [model report](#the-model-report)) for a classifier:
    every figure equals scikit-learn's on the validation channel and the saved model.

    docs/training.md, Reserved keys: `smserve_report`: the [model report](#the-model-report):
    `auto` on the validation channel."""
    metadata, model, validation = churn
    report = metadata["report"]
    X, y = validation[FEATURES], validation[TARGET].to_numpy()
    assert report["source"] == {"data": "validation", "rows": len(y)}
    part = report["classification"]
    classes = list(model.classes_)
    assert part["classes"] == classes == ["no", "yes"]
    predicted = model.predict(X)
    assert (
        part["confusion_matrix"]
        == metrics.confusion_matrix(y, predicted, labels=classes).tolist()
    )
    precision, recall, _, support = metrics.precision_recall_fscore_support(
        y, predicted, labels=classes, zero_division=0
    )
    for row, p, r, s in zip(part["per_class"], precision, recall, support, strict=True):
        assert (row["precision"], row["recall"], row["support"]) == pytest.approx(
            (p, r, s), abs=1e-12
        )
    # Binary: one curve, of the second class.
    (curve,) = part["curves"]
    assert curve["class"] == "yes"
    score = model.predict_proba(X)[:, 1]
    truth = y == "yes"
    fpr, tpr, _ = metrics.roc_curve(truth, score)
    pr_precision, pr_recall, _ = metrics.precision_recall_curve(truth, score)
    assert len(pr_recall) > MAX_CURVE_POINTS  # so the cap is exercised
    assert len(curve["precision_recall"]["x"]) == MAX_CURVE_POINTS
    assert on_curve(curve["roc"], fpr, tpr)
    assert on_curve(curve["precision_recall"], pr_recall, pr_precision)
    assert curve["roc_auc"] == pytest.approx(metrics.roc_auc_score(truth, score))
    assert curve["average_precision"] == pytest.approx(
        metrics.average_precision_score(truth, score)
    )
    observed, mean_predicted = calibration_curve(truth, score, n_bins=10)
    bins = part["calibration"]["bins"]
    assert [b["observed"] for b in bins] == pytest.approx(observed.tolist())
    assert [b["predicted"] for b in bins] == pytest.approx(mean_predicted.tolist())
    assert sum(b["count"] for b in bins) == len(y)


def test_permutation_importance_is_per_raw_column(churn):
    """One entry per input column (a one-hot encoded column is one), equal to
    scikit-learn's on the same rows and seed."""
    metadata, model, validation = churn
    importance = metadata["report"]["permutation_importance"]
    assert importance["repeats"] == IMPORTANCE_REPEATS
    assert sorted(c["name"] for c in importance["columns"]) == sorted(FEATURES)
    expected = permutation_importance(
        model,
        validation[FEATURES],
        validation[TARGET].to_numpy(),
        n_repeats=IMPORTANCE_REPEATS,
        random_state=SEED,
    )
    by_name = {c["name"]: c["mean"] for c in importance["columns"]}
    assert [by_name[name] for name in FEATURES] == pytest.approx(
        expected.importances_mean.tolist()
    )
    means = [c["mean"] for c in importance["columns"]]
    assert means == sorted(means, reverse=True)


def test_regressor_report_equals_sklearn(tmp_path):
    """A regressor's residual quantiles equal numpy's on the saved model's residuals
    on the validation channel; its predicted-against-actual bins cover every row."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = 3 * X[:, 0] - X[:, 1] + rng.normal(0, 0.3, 400)
    train = write_csv(tmp_path / "train.csv", X[:300], y[:300])
    valid = write_csv(tmp_path / "validation.csv", X[300:], y[300:])
    metadata = trained(
        tmp_path / "ml",
        {"train": train, "validation": valid},
        "--hp",
        "smserve_estimator=ridge",
    )
    model = joblib.load(tmp_path / "ml" / "model" / "model.joblib")
    data = np.loadtxt(valid, delimiter=",")
    Xv, yv = data[:, 1:], data[:, 0]
    report = metadata["report"]
    assert report["source"] == {"data": "validation", "rows": 100}
    residuals = yv - model.predict(Xv)
    quantiles = report["regression"]["residual_quantiles"]
    assert quantiles["0.5"] == pytest.approx(np.median(residuals))
    assert quantiles["0"] == pytest.approx(residuals.min())
    assert quantiles["1"] == pytest.approx(residuals.max())
    bins = report["regression"]["predicted_vs_actual"]
    assert sum(b["count"] for b in bins) == 100
    assert len(bins) == 10
    predicted = np.array([b["predicted"] for b in bins])
    assert (np.diff(predicted) > 0).all()
    # A good fit: each bin's mean actual is near its mean predicted.
    assert np.abs(predicted - [b["actual"] for b in bins]).max() < 1.0
    names = [c["name"] for c in report["permutation_importance"]["columns"]]
    assert names[0] == "column 0"  # the feature with the largest coefficient
    assert sorted(names) == ["column 0", "column 1", "column 2"]


def test_without_validation_a_held_out_split_is_recorded(tmp_path):
    """No validation channel: 20% of train held out, scored by a copy of the model
    fitted on the other 80% (the saved model saw every row).

    docs/training.md, Reserved keys: `smserve_report` `auto`: else on a held-out 20% of
    train scored by a copy of the model fitted on the rest (a second fit, about 0.8 of
    the first's time)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    train = write_csv(tmp_path / "train.csv", X, (X.sum(axis=1) > 0).astype(int))
    metadata = trained(tmp_path / "ml", {"train": train}, "--hp", "max_depth=3")
    report = metadata["report"]
    assert report["source"] == {
        "data": "train_holdout",
        "rows": 40,
        "fraction": 0.2,
        "random_state": SEED,
        "fitted_rows": 160,
    }
    per_class = report["classification"]["per_class"]
    assert sum(row["support"] for row in per_class) == 40
    assert np.sum(report["classification"]["confusion_matrix"]) == 40
    assert metadata["rows"]["train"] == 200  # the saved model still saw every row
    assert not list((tmp_path / "ml" / "model").glob(".*report*"))


@pytest.mark.parametrize("choice", ["validation", "off"])
def test_the_report_can_skip_its_second_fit(tmp_path, choice):
    """docs/training.md, Reserved keys: `smserve_report` `validation` only from a
    validation channel (no second fit); `off` none: without a validation channel
    neither writes a report, and the model is trained as usual."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 2))
    train = write_csv(tmp_path / "train.csv", X, (X.sum(axis=1) > 0).astype(int))
    metadata = trained(
        tmp_path / "ml", {"train": train}, "--hp", f"smserve_report={choice}"
    )
    assert metadata["report"] == {}
    assert metadata["rows"]["train"] == 200
    assert (tmp_path / "ml" / "model" / "model.joblib").is_file()


def test_an_unknown_report_choice_fails_the_job(tmp_path):
    """docs/training.md, Reserved keys: `smserve_report` is one of `auto`, `validation`
    or `off`; anything else fails the job with a failure file that says so."""
    X = np.arange(40.0).reshape(20, 2)
    train = write_csv(tmp_path / "train.csv", X, (X[:, 0] > 20).astype(int))
    base = tmp_path / "ml"
    done = run_train(base, "--channel", f"train={train}", "--hp", "smserve_report=yes")
    assert done.returncode != 0
    failure = (base / "output" / "failure").read_text()
    assert "smserve_report must be one of auto, validation, off, got 'yes'" in failure


def test_files_without_a_report_still_read():
    """A metadata.json written before the report reads with an empty one, and a report
    survives a read and a write unchanged (no new schema version)."""
    old = ModelMetadata.from_dict({"schema_version": 3, "estimator": "x.Y"})
    assert old.report == {}
    report = {"source": {"data": "validation", "rows": 3}}
    again = ModelMetadata.from_dict({"schema_version": 3, "report": report})
    assert again.to_dict()["report"] == report
    assert again.to_dict()["schema_version"] == 3


def test_multiclass_curves_are_one_vs_rest(tmp_path):
    """Three classes: a ROC and precision-recall curve per class against the rest, and
    calibration of the predicted class's probability (was the prediction right)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(
        400, 4, n_informative=3, n_redundant=0, n_classes=3, random_state=0
    )
    train = write_csv(tmp_path / "train.csv", X[:250], y[:250])
    valid = write_csv(tmp_path / "validation.csv", X[250:], y[250:])
    metadata = trained(
        tmp_path / "ml",
        {"train": train, "validation": valid},
        "--hp",
        "smserve_estimator=logistic_regression",
    )
    model = joblib.load(tmp_path / "ml" / "model" / "model.joblib")
    data = np.loadtxt(valid, delimiter=",")
    Xv, yv = data[:, 1:], data[:, 0].astype(int)
    part = metadata["report"]["classification"]
    proba = model.predict_proba(Xv)
    assert [c["class"] for c in part["curves"]] == [0, 1, 2]
    for index, curve in enumerate(part["curves"]):
        truth = yv == index
        assert curve["roc_auc"] == pytest.approx(
            metrics.roc_auc_score(truth, proba[:, index])
        )
        fpr, tpr, _ = metrics.roc_curve(truth, proba[:, index])
        assert on_curve(curve["roc"], fpr, tpr)
    assert part["calibration"]["of"] == "predicted"
    hit = model.classes_[proba.argmax(axis=1)] == yv
    observed, mean_predicted = calibration_curve(hit, proba.max(axis=1), n_bins=10)
    bins = part["calibration"]["bins"]
    assert [b["observed"] for b in bins] == pytest.approx(observed.tolist())
    assert [b["predicted"] for b in bins] == pytest.approx(mean_predicted.tolist())
    assert np.array(part["confusion_matrix"]).shape == (3, 3)
