"""Loading the model: what is found, what is refused, and why."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
from django.test import override_settings

from modelapp.exceptions import ModelNotReady
from modelapp.paths import SageMakerPaths
from modelapp.registry import ModelLoadError, ModelRegistry, load_model
from smserve import fastpaths
from tests.support.models import write_model


def test_loads_model_and_metadata(iris_base):
    """model.joblib loads with metadata.json and a real sha256."""
    loaded = load_model(SageMakerPaths(iris_base).model_dir)
    assert loaded.metadata.estimator == "sklearn.tree.DecisionTreeClassifier"
    assert len(loaded.sha256) == 64
    assert loaded.predictor.n_features == 4


def test_metadata_checksum_mismatch_is_logged(tmp_path, iris_model, caplog):
    """A metadata.json that does not match the artifact is reported, not fatal."""
    write_model(tmp_path, iris_model, {"sha256": "0" * 64})
    with caplog.at_level(logging.WARNING):
        loaded = load_model(SageMakerPaths(tmp_path).model_dir)
    assert loaded.sha256 != "0" * 64
    assert "metadata.json records" in caplog.text


def test_invalid_metadata_is_ignored(tmp_path, iris_model, caplog):
    write_model(tmp_path, iris_model)
    (tmp_path / "model" / "metadata.json").write_text("{not json")
    loaded = load_model(SageMakerPaths(tmp_path).model_dir)
    assert loaded.metadata is None
    assert "not valid JSON" in caplog.text


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, "does not exist"),
        ([], "No model artifact"),
        (["model.tar.gz"], "unpack it there"),
        (["a.pkl", "b.joblib"], "several artifacts"),
    ],
)
def test_refusals(tmp_path, files, message):
    """Each way a model dir can be wrong has its own message."""
    if files is not None:
        (tmp_path / "model").mkdir()
        for name in files:
            (tmp_path / "model" / name).write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=message):
        load_model(SageMakerPaths(tmp_path).model_dir)


def test_object_without_predict_is_refused(tmp_path):
    write_model(tmp_path, {"not": "a model"})
    with pytest.raises(ModelLoadError, match="has no predict method"):
        load_model(SageMakerPaths(tmp_path).model_dir)


def test_failed_warm_up_is_not_ready(tmp_path, iris_model):
    """A model whose warm-up prediction fails is not ready (metadata lies about width)."""
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(np.zeros((3, 2)), [0, 1, 2])
    del model.n_features_in_
    write_model(tmp_path, model, {"n_features": 5})
    with pytest.raises(ModelLoadError, match="warm-up prediction failed"):
        load_model(SageMakerPaths(tmp_path).model_dir)


def test_registry_keeps_reason_and_writes_ready_file(tmp_path, iris_base):
    """get() raises ModelNotReady with the reason; the ready file is written when asked
    (gunicorn's when_ready), and only for a loaded model."""
    from django.conf import settings

    ready = tmp_path / "ready.json"
    registry = ModelRegistry()
    with override_settings(
        SMSERVE={**settings.SMSERVE, "BASE_DIR": tmp_path, "READY_FILE": str(ready)}
    ):
        with pytest.raises(ModelNotReady, match="does not exist"):
            registry.get()
        fastpaths.write_ready_file(registry)
        assert not ready.exists()
    with override_settings(
        SMSERVE={**settings.SMSERVE, "BASE_DIR": iris_base, "READY_FILE": str(ready)}
    ):
        registry.load(force=True)
        assert registry.ready
        assert not ready.exists()  # loaded, but not yet serving
        fastpaths.write_ready_file(registry)
        assert json.loads(ready.read_text())["status"] == "ready"


@pytest.mark.parametrize(
    "content",
    [
        '{"estimator": "caf\xe9"}'.encode("latin-1"),  # not UTF-8
        b"[" * 100_000,  # nested deeper than the JSON decoder recurses
        b'{"n_features": 1000000000}',  # 10**9 features: ~136 GB of objects
    ],
    ids=["not-utf8", "deep-nesting", "huge-n-features"],
)
def test_a_broken_metadata_file_leaves_the_model_to_describe_itself(
    tmp_path, iris_model, content, caplog
):
    """The model is served with what the estimator says of itself; nothing escapes the
    load, and a file declaring 10**9 features is not built into 10**9 objects."""
    write_model(tmp_path, iris_model)
    (tmp_path / "model" / "metadata.json").write_bytes(content)
    started = time.perf_counter()
    loaded = load_model(SageMakerPaths(tmp_path).model_dir)
    assert time.perf_counter() - started < 1
    assert loaded.predictor.n_features == 4
    assert "Ignoring" in caplog.text


def test_a_broken_metadata_file_is_no_reason_to_stop_serve(tmp_path, iris_model):
    """Through the registry as ``serve``'s master calls it: loaded, not raised."""
    write_model(tmp_path, iris_model)
    (tmp_path / "model" / "metadata.json").write_bytes(b"\xff\xfe{}")
    assert ModelRegistry().load(model_dir=tmp_path / "model") is not None


def _trained_with_graph(base: Path, model) -> Path:
    """A model dir as train leaves it: model.joblib, model.onnx and a metadata.json
    recording both."""
    from modelapp.metadata import sha256_of
    from modelapp.training.compile import save_for_serving

    X = np.random.default_rng(0).normal(size=(50, 4))
    path = write_model(base, model)
    compiled = save_for_serving(model, 4, X, path.parent)
    metadata = {"n_features": 4, "sha256": sha256_of(path), "compiled": compiled}
    (path.parent / "metadata.json").write_text(json.dumps(metadata))
    return path.parent


def test_a_replaced_artifact_is_not_answered_by_the_old_graph(tmp_path, iris):
    """model.joblib swapped after training, the old metadata.json and model.onnx kept:
    the graph is converted again from the file being served."""
    from sklearn.tree import DecisionTreeClassifier

    X, y = iris
    model_dir = _trained_with_graph(
        tmp_path, DecisionTreeClassifier(max_depth=1).fit(X, y)
    )
    assert load_model(model_dir).predictor.engine_report.source == (
        "model.onnx written by train"
    )
    joblib.dump(
        DecisionTreeClassifier(random_state=0).fit(X, y), model_dir / "model.joblib"
    )
    report = load_model(model_dir).predictor.engine_report
    assert report.source == "converted at start-up"


def test_a_replaced_graph_is_converted_again(tmp_path, iris):
    """model.onnx is checked against the sha256 train recorded for it."""
    from sklearn.tree import DecisionTreeClassifier

    X, y = iris
    model = DecisionTreeClassifier(random_state=0).fit(X, y)
    model_dir = _trained_with_graph(tmp_path, model)
    other = tmp_path / "other"
    other_dir = _trained_with_graph(
        other, DecisionTreeClassifier(max_depth=1).fit(X, y)
    )
    (model_dir / "model.onnx").write_bytes((other_dir / "model.onnx").read_bytes())
    report = load_model(model_dir).predictor.engine_report
    assert report.source == "converted at start-up"
