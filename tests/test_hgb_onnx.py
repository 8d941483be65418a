"""HistGradientBoosting compiled (``modelapp/predictors/hgb_onnx.py``): our converter's
graphs, run by ONNX Runtime, answer as scikit-learn does, missing values and numeric
categories included; a model with text categories stays with scikit-learn; the real
``train`` and the real server serve one with ONNX Runtime."""

from __future__ import annotations

import json
import re
from http import HTTPStatus

import numpy as np
import pytest
from sklearn.base import is_classifier
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)

from modelapp.batch import Batch
from modelapp.predictors import SklearnPredictor
from modelapp.predictors import compiled as compiled_engine
from modelapp.registry import load_model
from tests.support.models import write_model
from tests.support.training import run_train, sagemaker_tree

ONNX, SKLEARN = compiled_engine.ENGINE, compiled_engine.SKLEARN
RTOL, ATOL = compiled_engine.RTOL, compiled_engine.ATOL
N_FEATURES = 8


def with_gaps(X: np.ndarray, seed: int, share: float = 0.1) -> np.ndarray:
    """``X`` with a ``share`` of its values missing."""
    X = X.copy()
    X[np.random.default_rng(seed).random(X.shape) < share] = np.nan
    return X


def dataset(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """1,200 records with gaps: 1,000 to fit on, the rest held out."""
    if kind in ("regression", "absolute_error", "quantile"):
        X, y = make_regression(1200, N_FEATURES, noise=5.0, random_state=0)
    elif kind in ("poisson", "gamma"):
        X, _ = make_regression(1200, N_FEATURES, random_state=0)
        y = np.random.default_rng(0).poisson(np.exp(X[:, 0] / 3)) + (kind == "gamma")
    else:
        classes = {"binary": 2, "multiclass": 4, "text labels": 3}[kind]
        X, y = make_classification(
            1200, N_FEATURES, n_informative=5, n_classes=classes, random_state=0
        )
        if kind == "text labels":
            y = np.array(["bronze", "gold", "silver"])[y]
    return with_gaps(X, seed=1), y


MODELS = {
    "binary": HistGradientBoostingClassifier(max_iter=40, random_state=0),
    "multiclass": HistGradientBoostingClassifier(max_iter=40, random_state=0),
    "text labels": HistGradientBoostingClassifier(max_iter=20, random_state=0),
    "regression": HistGradientBoostingRegressor(max_iter=40, random_state=0),
    "poisson": HistGradientBoostingRegressor(
        loss="poisson", max_iter=40, random_state=0
    ),
    "absolute_error": HistGradientBoostingRegressor(
        loss="absolute_error", max_iter=20, random_state=0
    ),
    "quantile": HistGradientBoostingRegressor(
        loss="quantile", quantile=0.8, max_iter=20, random_state=0
    ),
    "gamma": HistGradientBoostingRegressor(loss="gamma", max_iter=20, random_state=0),
}


def fitted(kind: str):
    X, y = dataset(kind)
    return MODELS[kind].fit(X[:1000], y[:1000]), X[1000:]


def run_graph(model, X: np.ndarray) -> list[np.ndarray]:
    """The converted graph run by ONNX Runtime on ``X``, fed as the engine feeds it."""
    dtype = compiled_engine.input_dtype(model)
    session = compiled_engine.OnnxSession(
        compiled_engine.convert(model, X.shape[1]), dtype
    )
    return session.run(np.ascontiguousarray(X, dtype=dtype))


def split_records(model, base: np.ndarray) -> np.ndarray:
    """For every split of every tree, a record (cycled from ``base``) with the split's
    feature at its float64 threshold (goes left) and one just above it (goes right):
    where float32 thresholds would send a record the other way."""
    records = []
    for iteration in model._predictors:
        for predictor in iteration:
            for node in predictor.nodes[~predictor.nodes["is_leaf"].astype(bool)]:
                threshold = float(node["num_threshold"])
                if not np.isfinite(threshold):
                    continue
                for value in (threshold, np.nextafter(threshold, np.inf)):
                    record = base[len(records) % len(base)].copy()
                    record[int(node["feature_idx"])] = value
                    records.append(record)
    return np.array(records)


@pytest.mark.parametrize("kind", MODELS)
def test_graph_answers_as_scikit_learn(kind):
    """On held-out records with gaps, and on both sides of every split's threshold
    (where float32 input would take the other side): labels identical, probabilities
    and values within the engine's tolerance, for every loss."""
    model, held_out = fitted(kind)
    assert compiled_engine.input_dtype(model) is np.float64
    records = np.vstack([held_out, split_records(model, held_out)])
    assert np.isnan(records).any(axis=1).sum() > 100
    outputs = run_graph(model, records)
    if not is_classifier(model):
        (values,) = outputs
        np.testing.assert_allclose(
            values.ravel(), model.predict(records), rtol=RTOL, atol=ATOL
        )
        return
    labels, probabilities = outputs
    np.testing.assert_array_equal(
        labels.astype(model.classes_.dtype), model.predict(records)
    )
    np.testing.assert_allclose(
        probabilities, model.predict_proba(records), rtol=RTOL, atol=ATOL
    )


def test_missing_values_follow_each_split_s_learned_direction():
    """A record missing a split's feature goes where scikit-learn learned missing
    values go, left for some splits and right for others."""
    model, held_out = fitted("regression")
    directions = {
        bool(node["missing_go_to_left"])
        for iteration in model._predictors
        for predictor in iteration
        for node in predictor.nodes[~predictor.nodes["is_leaf"].astype(bool)]
    }
    assert directions == {True, False}
    records = np.repeat(held_out[:50], N_FEATURES, axis=0)
    records[np.arange(len(records)), np.tile(np.arange(N_FEATURES), 50)] = np.nan
    (values,) = run_graph(model, records)
    np.testing.assert_allclose(
        values.ravel(), model.predict(records), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("kind", ["binary", "regression"])
def test_the_engine_serves_it(kind):
    """The predictor verifies the graph and ONNX Runtime serves every method it offers;
    served answers equal scikit-learn's, records with gaps included."""
    model, held_out = fitted(kind)
    predictor = SklearnPredictor(model)
    predictor.compile(None)
    report = predictor.engine_report
    offered = ("predict", "predict_proba") if kind == "binary" else ("predict",)
    assert report.reason.startswith("verified on every record"), report.reason
    assert {m: report.methods[m] for m in offered} == dict.fromkeys(offered, ONNX)
    assert report.dtype == "float64"
    for method in offered:
        served = predictor.predict(Batch(values=held_out), method)
        expected = getattr(model, method)(held_out)
        if served.dtype.kind == "f":
            np.testing.assert_allclose(served, expected, rtol=RTOL, atol=ATOL)
        else:
            np.testing.assert_array_equal(served, expected)


def categorical_table() -> tuple[np.ndarray, np.ndarray]:
    """Two numeric columns of categories (1 and 3) among numbers, with gaps."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1500, 5))
    X[:, 1] = rng.choice([3.0, 7.0, 10.0, 11.5, 20.0, -2.0], len(X))
    X[:, 3] = rng.integers(0, 30, len(X))
    y = (X[:, 1] > 8) ^ (X[:, 3] % 3 == 0) ^ (X[:, 0] > 0.5)
    return with_gaps(X, seed=2, share=0.05), y.astype(int)


def test_categorical_features_answer_as_scikit_learn():
    """Categorical splits (numeric categories) are in the graph: known categories go
    where scikit-learn sends them, unknown ones and NaN where it sends missing values;
    the engine verifies and serves the model."""
    X, y = categorical_table()
    model = HistGradientBoostingClassifier(
        categorical_features=[1, 3], max_iter=30, random_state=0
    ).fit(X[:1000], y[:1000])
    assert any(p.nodes["is_categorical"].any() for it in model._predictors for p in it)
    held_out = X[1000:].copy()
    held_out[::7, 1] = 5.0  # a category never seen
    held_out[::11, 3] = 99.0
    labels, probabilities = run_graph(model, held_out)
    np.testing.assert_array_equal(labels, model.predict(held_out))
    np.testing.assert_allclose(
        probabilities, model.predict_proba(held_out), rtol=RTOL, atol=ATOL
    )
    predictor = SklearnPredictor(model)
    predictor.compile(None)
    assert predictor.engine_report.methods["predict_proba"] == ONNX
    np.testing.assert_array_equal(
        predictor.predict(Batch(values=held_out)), model.predict(held_out)
    )


def test_text_categories_stay_with_scikit_learn():
    """A model whose categories are text does not convert (the graph takes numbers),
    saying why, and scikit-learn serves it."""
    import pandas as pd

    X, y = categorical_table()
    frame = pd.DataFrame(X[:, :3], columns=["a", "colour", "c"])
    frame["colour"] = frame["colour"].map(lambda v: f"c{v}")
    model = HistGradientBoostingClassifier(
        categorical_features=["colour"], max_iter=10, random_state=0
    ).fit(frame, y)
    with pytest.raises(compiled_engine.CompileError, match="categories that are not"):
        compiled_engine.convert(model, 3)


def test_a_disagreeing_graph_is_caught(tmp_path):
    """A model.onnx whose thresholds were moved answers differently on the training rows
    kept for verification (gaps included): scikit-learn serves, and the report says
    why."""
    import onnx

    model, held_out = fitted("binary")
    write_model(
        tmp_path, model, {"n_features": N_FEATURES, "compiled": {"onnx": "model.onnx"}}
    )
    graph = onnx.load_from_string(compiled_engine.convert(model, N_FEATURES))
    (node,) = [n for n in graph.graph.node if n.op_type == "TreeEnsembleRegressor"]
    (values,) = [a for a in node.attribute if a.name == "nodes_values_as_tensor"]
    moved = onnx.numpy_helper.to_array(values.t) + 0.25
    values.t.CopyFrom(onnx.numpy_helper.from_array(moved))
    model_dir = tmp_path / "model"
    (model_dir / "model.onnx").write_bytes(graph.SerializeToString())
    np.save(model_dir / "verification.npy", held_out)
    predictor = load_model(model_dir).predictor
    report = predictor.engine_report
    assert report.source == "model.onnx written by train"
    assert report.methods["predict"] == report.methods["predict_proba"] == SKLEARN
    assert re.search(
        r"verification failed for predict: \d+ of 200 labels", report.reason
    )
    np.testing.assert_array_equal(
        predictor.predict(Batch(values=held_out)), model.predict(held_out)
    )


@pytest.mark.server
def test_train_compiles_it_and_the_server_serves_it(tmp_path, serve_factory):
    """The real train fits ``hist_gradient_boosting`` on a table with gaps and writes
    model.onnx; the real server says ONNX Runtime serves predict and predict_proba and
    answers held-out records, gaps included, as the saved model does. docs/training.md,
    What it writes: "the model converted to ONNX (trees, forests and
    HistGradientBoosting by our own converters, the rest by skl2onnx)"."""
    X, y = dataset("binary")
    base = sagemaker_tree(
        tmp_path / "ml",
        hyperparameters={
            "smserve_estimator": "hist_gradient_boosting",
            "max_iter": "30",
        },
    )
    data = base / "input" / "data" / "train"
    data.mkdir(parents=True)
    cell = lambda v: "" if np.isnan(v) else repr(float(v))  # noqa: E731
    (data / "train.csv").write_text(
        "".join(
            f"{label}," + ",".join(cell(v) for v in row) + "\n"
            for label, row in zip(y[:1000], X[:1000], strict=True)
        )
    )
    done = run_train(base)
    assert done.returncode == 0, done.stderr
    metadata = json.loads((base / "model" / "metadata.json").read_text())
    assert metadata["compiled"]["onnx"] == "model.onnx"
    assert metadata["compiled"]["dtype"] == "float64"
    import joblib

    model = joblib.load(base / "model" / "model.joblib")
    held_out = X[1000:]
    body = json.dumps(
        {
            "instances": [
                [None if np.isnan(v) else v for v in row] for row in held_out.tolist()
            ]
        }
    )
    server = serve_factory(base)
    status, _, labels = server.invoke(
        body.encode(), "application/json", Accept="application/json"
    )
    assert status == HTTPStatus.OK, labels
    assert json.loads(labels)["predictions"] == model.predict(held_out).tolist()
    status, _, proba = server.invoke(
        body.encode(),
        "application/json",
        Accept="application/json",
        **{"X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"},
    )
    assert status == HTTPStatus.OK, proba
    np.testing.assert_allclose(
        json.loads(proba)["predictions"],
        model.predict_proba(held_out),
        rtol=RTOL,
        atol=ATOL,
    )
    assert re.search(
        r"Engines for HistGradientBoostingClassifier: predict by onnxruntime, "
        r"predict_proba by onnxruntime, .*\(verified on every record; "
        r"1000 verification records, .*; model.onnx written by train;",
        server.log,
    ), server.log


@pytest.mark.server
def test_a_worker_predicts_in_parallel_after_the_master_verified(
    tmp_path, serve_factory
):
    """With more OpenMP threads than one per worker, the master verifies the engine on
    one thread: an OpenMP pool started in gunicorn's master would hang a forked worker's
    first parallel prediction (here scikit-learn's, for the records with gaps)."""
    model, held_out = fitted("binary")
    base = tmp_path / "ml"
    write_model(base, model)
    server = serve_factory(base, workers=1, env={"OMP_NUM_THREADS": "2"})
    assert "predict by onnxruntime" in server.log
    body = "".join(
        ",".join("" if np.isnan(v) else repr(v) for v in row) + "\n"
        for row in held_out.tolist()
    )
    status, _, labels = server.invoke(body.encode(), Accept="application/json")
    assert status == HTTPStatus.OK, labels
    assert json.loads(labels)["predictions"] == model.predict(held_out).tolist()
