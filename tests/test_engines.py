"""Compiled predictions (``modelapp/compiled.py``): ONNX Runtime serves a method only when
verified to answer as scikit-learn does, for every family the short names offer."""

from __future__ import annotations

import hashlib
import io
import json
import re
from http import HTTPStatus
from pathlib import Path

import numpy as np
import onnx
import pytest
from django.test import override_settings
from sklearn.base import is_classifier
from sklearn.pipeline import make_pipeline

from modelapp.batch import Batch
from modelapp.metadata import Feature, ModelMetadata, sha256_of
from modelapp.predictors import SklearnPredictor
from modelapp.predictors import compiled as compiled_engine
from modelapp.registry import load_model
from modelapp.training.estimators import resolve
from tests.support.models import write_model
from tests.support.training import run_train, sagemaker_tree

ONNX, SKLEARN = compiled_engine.ENGINE, compiled_engine.SKLEARN
RNG = np.random.default_rng(0)
X_TRAIN = RNG.standard_normal((300, 6))
X_HELD_OUT = RNG.standard_normal((200, 6))
LABELS = (X_TRAIN[:, 0] + X_TRAIN[:, 1] > 0).astype(int)
VALUES = X_TRAIN[:, 0] * 2 + X_TRAIN[:, 2]

# Short name (or pipeline) -> whether the compiled engine answers predict as
# scikit-learn does (ONNX) or cannot (SKLEARN): what scikit-learn's own families give with
# skl2onnx 1.20 / onnxruntime 1.32. (Whether it is then used depends on the speed
# measured at load: see test_larger_batches_go_where_measured_faster.)
FAMILIES = {
    "decision_tree": ONNX,
    "decision_tree_regressor": ONNX,
    "random_forest": ONNX,
    "random_forest_regressor": ONNX,
    "extra_trees": ONNX,
    "extra_trees_regressor": ONNX,
    "gradient_boosting": ONNX,
    "gradient_boosting_regressor": ONNX,
    "hist_gradient_boosting": ONNX,  # our converter (predictors/hgb_onnx.py)
    "hist_gradient_boosting_regressor": ONNX,
    "logistic_regression": ONNX,
    "linear_regression": ONNX,
    "ridge": ONNX,
    "lasso": ONNX,
    "svc": ONNX,
    "svr": SKLEARN,  # onnxruntime has no SVMRegressor kernel
    "knn": ONNX,
    "knn_regressor": ONNX,
    "naive_bayes": ONNX,
    "mlp": ONNX,
    "mlp_regressor": ONNX,
    "standard_scaler+logistic_regression": ONNX,
    "min_max_scaler+pca+ridge": ONNX,
}


def fitted(name: str):
    steps = [resolve(part) for part in name.split("+")]
    model = steps[0] if len(steps) == 1 else make_pipeline(*steps)
    params = model.get_params()
    for key in params:
        if key.endswith("random_state"):
            model.set_params(**{key: 0})
        if key.endswith("n_estimators"):
            model.set_params(**{key: 20})
        if key.endswith("max_iter") and "mlp" in name:
            model.set_params(**{key: 300})
        if key.endswith("probability"):
            model.set_params(**{key: True})
    return model.fit(X_TRAIN, LABELS if is_classifier(model) else VALUES)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(("name", "engine"), FAMILIES.items())
def test_each_family_engine_and_identical_outputs(name, engine):
    """Which engine serves it, and served outputs equal scikit-learn's on held-out
    records for every method offered (labels exactly, numbers within the tolerance)."""
    model = fitted(name)
    predictor = SklearnPredictor(model)
    predictor.compile(None)
    report = predictor.engine_report
    assert report.verified.get("predict", False) is (engine == ONNX), report.reason
    if engine == ONNX:
        assert report.reason.startswith("verified on every record")
    for method in predictor.available_methods:
        served = predictor.predict(Batch(values=X_HELD_OUT), method)
        expected = getattr(model, method)(X_HELD_OUT)
        if served.dtype.kind in "fc":
            np.testing.assert_allclose(
                served, expected, rtol=compiled_engine.RTOL, atol=compiled_engine.ATOL
            )
        else:
            np.testing.assert_array_equal(served, expected)


def test_larger_batches_go_where_measured_faster():
    """A batch above the measured crossover is scikit-learn's, below it the engine's,
    with the same answers either way."""
    model = resolve("random_forest").set_params(n_estimators=20, random_state=0)
    model.fit(X_TRAIN, LABELS)
    predictor = SklearnPredictor(model)
    predictor.compile(None)
    compiled = predictor._compiled["predict"].__self__
    served: list[int] = []
    fallback = compiled.fallback
    compiled.fallback = lambda method, X: served.append(len(X)) or fallback(method, X)
    compiled.max_records = 10
    small, large = X_HELD_OUT[:10], X_HELD_OUT[:11]
    np.testing.assert_array_equal(
        predictor.predict(Batch(values=small)), model.predict(small)
    )
    np.testing.assert_array_equal(
        predictor.predict(Batch(values=large)), model.predict(large)
    )
    assert served[-1] == 11  # the large batch went to scikit-learn whole
    assert 10 not in served


def test_missing_values_go_to_scikit_learn():
    """A tree learns where NaN goes, the graph does not: records with NaN are
    scikit-learn's, the rest the engine's, in order."""
    X = X_TRAIN.copy()
    X[::7, 2] = np.nan
    model = resolve("random_forest").set_params(n_estimators=20, random_state=0)
    model.fit(X, LABELS)
    predictor = SklearnPredictor(model)
    predictor.compile(None)
    assert predictor.engine_report.methods["predict_proba"] == ONNX
    batch = X_HELD_OUT.copy()
    batch[::3, 1] = np.nan
    np.testing.assert_array_equal(
        predictor.predict(Batch(values=batch)), model.predict(batch)
    )
    np.testing.assert_allclose(
        predictor.predict(Batch(values=batch), "predict_proba"),
        model.predict_proba(batch),
        rtol=compiled_engine.RTOL,
        atol=compiled_engine.ATOL,
    )


def test_ties_are_labelled_by_scikit_learn():
    """Records whose two best classes tie (here leaf records of a 2-tree forest that
    splits its votes) keep scikit-learn's label, not float32's."""
    model = resolve("random_forest").set_params(n_estimators=2, random_state=1)
    model.fit(X_TRAIN, LABELS)
    compiled = compiled_engine.CompiledMethods(
        compiled_engine.OnnxSession(compiled_engine.convert(model, 6), np.float32),
        model,
        fallback=lambda method, X: getattr(model, method)(X),
    )
    records = compiled_engine.leaf_records(model.estimators_, 6)
    proba = model.predict_proba(records)
    assert (proba[:, 0] == proba[:, 1]).any()  # the ties are there
    np.testing.assert_array_equal(compiled.predict(records), model.predict(records))


def test_a_disagreeing_graph_is_caught(tmp_path):
    """A model.onnx whose thresholds were moved answers differently on the leaf records:
    verification catches it, scikit-learn serves, and the report says why."""
    model = fitted("random_forest")
    write_model(tmp_path, model, {"n_features": 6, "compiled": {"onnx": "model.onnx"}})
    graph = onnx.load_from_string(compiled_engine.convert(model, 6))
    for node in graph.graph.node:
        for attr in node.attribute:
            if attr.name == "nodes_values":
                moved = [v + 0.25 for v in attr.floats]
                del attr.floats[:]
                attr.floats.extend(moved)
    (tmp_path / "model" / "model.onnx").write_bytes(graph.SerializeToString())
    predictor = load_model(tmp_path / "model").predictor
    report = predictor.engine_report
    assert report.source == "model.onnx written by train"
    assert report.methods == {
        "predict": SKLEARN,
        "predict_proba": SKLEARN,
        "predict_log_proba": SKLEARN,
    }
    assert re.search(
        r"verification failed for predict: \d+ of \d+ labels", report.reason
    )
    served = predictor.predict(Batch(values=X_HELD_OUT))
    np.testing.assert_array_equal(served, model.predict(X_HELD_OUT))


def test_a_graph_that_is_not_the_one_train_wrote_is_converted_again(tmp_path):
    """A model.onnx whose sha256 differs from metadata.json's ``onnx_sha256`` is not
    used: the model is converted again at start-up.
    docs/training.md, What it writes, `model/model.onnx`: "with its sha256
    (`onnx_sha256`, checked when serving)".
    """
    model = fitted("random_forest")
    graph = compiled_engine.convert(model, 6)
    compiled = {"onnx": "model.onnx", "onnx_sha256": hashlib.sha256(graph).hexdigest()}
    write_model(tmp_path, model, {"n_features": 6, "compiled": compiled})
    (tmp_path / "model" / "model.onnx").write_bytes(graph)
    assert load_model(tmp_path / "model").predictor.engine_report.source == (
        "model.onnx written by train"
    )
    (tmp_path / "model" / "model.onnx").write_bytes(graph + b"\0")
    assert load_model(tmp_path / "model").predictor.engine_report.source == (
        "converted at start-up"
    )


def test_switched_off(iris_base):
    from django.conf import settings

    with override_settings(SMSERVE={**settings.SMSERVE, "COMPILED_ENGINE": False}):
        predictor = load_model(iris_base / "model").predictor
    assert set(predictor.engine_report.methods.values()) == {SKLEARN}
    assert "off" in predictor.engine_report.reason


def test_text_columns_are_not_compiled():
    _, report = compiled_engine.compile_model(
        fitted("logistic_regression"),
        None,
        6,
        ("predict",),
        False,
        ModelMetadata(features=[*[Feature()] * 5, Feature(kind="categorical")]),
    )
    assert report.methods == {"predict": SKLEARN}
    assert "text (categorical) columns" in report.reason


@pytest.mark.server
def test_train_compiles_and_the_server_serves_it(tmp_path, serve_factory):
    """The real train writes model.onnx and the verification rows; the real server
    (2 workers, sharing the master's session) answers held-out records as the saved model
    does, for predict and predict_proba; with the engine off it answers the same.
    docs/training.md, What it writes: "the model converted to ONNX (trees, forests and
    HistGradientBoosting by our own converters, the rest by skl2onnx)"; "when it
    converts"; "`metadata.json`'s `compiled` says so"; "or why not (`onnx_error`)"; "up
    to 1,000 training rows (float64, the model's feature order): what serving verifies
    the [compiled engine](speed.md#compiled-predictions-onnx-runtime) on". The
    probabilities come back in float32 with the engine (CSV digits, an NPY dtype),
    float64 without.
    docs/settings.md, Settings: "`SMSERVE_COMPILED_ENGINE`".
    """
    base = sagemaker_tree(
        tmp_path / "ml",
        hyperparameters={
            "smserve_estimator": "random_forest",
            "n_estimators": "30",
            "smserve_random_seed": "3",
        },
    )
    data = base / "input" / "data" / "train"
    data.mkdir(parents=True)
    rows = np.column_stack([LABELS, X_TRAIN])
    (data / "train.csv").write_text(
        "".join(",".join(f"{v:.6g}" for v in row) + "\n" for row in rows)
    )
    done = run_train(base)
    assert done.returncode == 0, done.stderr
    model_dir = base / "model"
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["compiled"] == {
        "verification": "verification.npy",
        "onnx": "model.onnx",
        "onnx_sha256": sha256_of(model_dir / "model.onnx"),
        "dtype": "float32",
    }
    assert np.load(model_dir / "verification.npy").shape == (300, 6)
    import joblib

    model = joblib.load(model_dir / "model.joblib")
    body = "".join(",".join(map(repr, row)) + "\n" for row in X_HELD_OUT.tolist())
    compiled = serve_factory(base)
    plain = serve_factory(base, env={"SMSERVE_COMPILED_ENGINE": "off"})
    for server in (compiled, plain):
        status, _, labels = server.invoke(body.encode(), Accept="application/json")
        assert status == HTTPStatus.OK
        assert json.loads(labels)["predictions"] == model.predict(X_HELD_OUT).tolist()
        status, _, proba = server.invoke(
            body.encode(),
            Accept="application/json",
            **{"X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"},
        )
        assert status == HTTPStatus.OK
        np.testing.assert_allclose(
            json.loads(proba)["predictions"],
            model.predict_proba(X_HELD_OUT),
            rtol=compiled_engine.RTOL,
            atol=compiled_engine.ATOL,
        )
    # Probabilities in float32 from the graph (docs/speed.md, "Numbers"), float64 from
    # scikit-learn: in CSV every value is a float32 written out in full, and NPY keeps
    # the dtype.
    proba = {"X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"}
    answers = {}
    for name, server in (("compiled", compiled), ("plain", plain)):
        _, _, csv = server.invoke(body.encode(), Accept="text/csv", **proba)
        values = np.loadtxt(io.StringIO(csv.decode()), delimiter=",")
        _, _, npy = server.invoke(body.encode(), Accept="application/x-npy", **proba)
        answers[name] = (values, np.load(io.BytesIO(npy)).dtype)
    values, dtype = answers["compiled"]
    assert dtype == np.float32
    np.testing.assert_array_equal(values, values.astype(np.float32))
    assert any(len(repr(v)) > 10 for v in values.ravel())  # e.g. 0.4000000059604645
    values, dtype = answers["plain"]
    assert dtype == np.float64
    assert not np.array_equal(values, values.astype(np.float32))
    assert re.search(
        r"Engines for RandomForestClassifier: predict by onnxruntime, predict_proba by "
        r"onnxruntime, predict_log_proba by scikit-learn \(verified on every record; "
        r"300 verification records, .*; model.onnx written by train;",
        compiled.log,
    )
    assert (
        "Engines for RandomForestClassifier: every method by scikit-learn "
        "(off (SMSERVE_COMPILED_ENGINE))" in plain.log
    )
    # The session is made in gunicorn's master and run by both workers
    # (tests/test_shared_engine.py), which stop cleanly.
    master = compiled.gunicorn_master()
    workers = compiled.gunicorn_workers()
    assert len(workers) == 2
    for pid in (master, *workers):
        assert "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()
    assert compiled.stop() == 0
    assert "SIGABRT" not in compiled.log
    assert "Worker exiting" in compiled.log
