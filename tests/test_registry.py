"""Loading the model: what is found, what is refused, and why."""

from __future__ import annotations

import json
import logging

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
