"""The SageMaker Python SDK's own predictors against the real server (nginx + gunicorn).

``SKLearnPredictor`` with its defaults (``NumpySerializer`` / ``NumpyDeserializer``) and
``Predictor`` with ``JSONSerializer`` / ``JSONDeserializer``, from the installed SDK
(``tests/support/sdk_client.py``: its local-mode runtime client posts to
``http://localhost:<port>/invocations``), get what the official scikit-learn container
documents: NPY in, ``numpy.save`` of the predictions out, read back as the same array;
JSON in, the predictions as a bare JSON list out. Every answer is compared with the
model's own ``predict`` / ``predict_proba`` on the same rows.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.support.inference_scripts import DEFAULTS_PY, FOUR_HOOKS_PY, SDK_HOOKS_PY
from tests.support.models import write_model
from tests.support.script_mode import source_dir
from tests.support.sdk_client import sdk_predict
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.server

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]

# SKLearnPredictor with its defaults: NumpySerializer / NumpyDeserializer
NUMPY = {"predictor": "SKLearnPredictor"}
JSON = {
    "predictor": "Predictor",
    "serializer": "JSONSerializer",
    "deserializer": "JSONDeserializer",
}
CSV = {
    "predictor": "Predictor",
    "serializer": "CSVSerializer",
    "deserializer": "CSVDeserializer",
}
PROBA = "method=predict_proba"


@pytest.fixture(scope="module")
def servers(tmp_path_factory, iris_model):
    """Four servers, started together: a plain smserve model, and three in script mode
    (``model_fn`` only; NPY/JSON hooks; the JSON-only four hooks), each script in
    ``model/code/`` as the SDK's repacked ``model.tar.gz`` has it."""
    scripts = {
        "plain": None,
        "defaults": DEFAULTS_PY,
        "sdk_hooks": SDK_HOOKS_PY,
        "four_hooks": FOUR_HOOKS_PY,
    }
    made = {}
    for name, script in scripts.items():
        base = tmp_path_factory.mktemp(f"base_{name}")
        if script is None:
            write_model(base, iris_model, {"n_features": 4})
            env = {}
        else:
            write_model(base, iris_model)
            source_dir(base / "model" / "code", {"inference.py": script})
            env = {"SAGEMAKER_PROGRAM": "inference.py"}
        made[name] = ServeProcess(
            base, tmp_path_factory.mktemp(f"srv_{name}"), env=env, workers=1
        )
    try:
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(lambda server: server.start(), made.values()))
        yield made
    finally:
        for server in made.values():
            if server.proc is not None:
                server.stop()


def predict(server: ServeProcess, tmp_path: Path, *calls: dict) -> list:
    return sdk_predict(server.port, list(calls), tmp_path / "sdk")


def test_plain_model_with_the_sklearn_predictor_and_json(servers, tmp_path, iris_model):
    """A plain smserve model: SKLearnPredictor's NPY round trip gives the model's labels
    (and its probabilities with the method attribute); JSON is smserve's own
    ``{"predictions": [...]}`` (script mode gives the official bare list, below)."""
    X = np.array(ROWS)
    server = servers["plain"]
    labels, proba, as_list, document = predict(
        server,
        tmp_path,
        {**NUMPY, "data": X},
        {**NUMPY, "data": X, "custom_attributes": PROBA},
        {**NUMPY, "data": ROWS},  # NumpySerializer takes a list too
        {**JSON, "data": X},
    )
    assert isinstance(labels, np.ndarray)
    np.testing.assert_array_equal(labels, iris_model.predict(X))
    assert labels.dtype == iris_model.predict(X).dtype
    np.testing.assert_array_equal(proba, iris_model.predict_proba(X))
    np.testing.assert_array_equal(as_list, iris_model.predict(X))
    assert document == {"predictions": iris_model.predict(X).tolist()}
    # The SDK asked for what its serializer and deserializer name.
    assert "in=application/x-npy out=application/x-npy" in server.log
    assert "in=application/json out=application/json" in server.log


def test_script_mode_defaults_answer_as_the_official_container(
    servers, tmp_path, iris_model
):
    """``inference.py`` with ``model_fn`` only: the official container's default steps.
    NPY comes back as ``numpy.save`` of the predictions (same values, same dtype); JSON
    as the bare list ``json.dumps(prediction.tolist())``; CSV as
    ``numpy.savetxt(fmt="%s")``, one line per prediction (the SDK's CSVDeserializer
    gives lists of strings)."""
    X = np.array(ROWS)
    server = servers["defaults"]
    labels, proba, as_list, rows = predict(
        server,
        tmp_path,
        {**NUMPY, "data": X},
        {**NUMPY, "data": X, "custom_attributes": PROBA},
        {**JSON, "data": X},
        {**CSV, "data": X},
    )
    expected = iris_model.predict(X)
    assert isinstance(labels, np.ndarray)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == expected.dtype
    np.testing.assert_array_equal(proba, iris_model.predict_proba(X))
    assert as_list == expected.tolist() == [0, 2, 1]
    assert rows == [[str(label)] for label in expected] == [["0"], ["2"], ["1"]]
    assert "in=application/x-npy out=application/x-npy" in server.log


def test_script_mode_four_hooks_with_the_sdk_formats(servers, tmp_path, iris_model):
    """All four hooks, written for the SDK's formats: what the predictors get back is
    what ``predict_fn`` computed (the class probabilities), through the user's own
    ``input_fn`` / ``output_fn`` for NPY and for JSON."""
    X = np.array(ROWS)
    server = servers["sdk_hooks"]
    from_npy, from_json = predict(
        server, tmp_path, {**NUMPY, "data": X}, {**JSON, "data": X}
    )
    expected = iris_model.predict_proba(X)
    assert isinstance(from_npy, np.ndarray)
    assert from_npy.dtype == expected.dtype
    np.testing.assert_array_equal(from_npy, expected)
    assert from_json == expected.tolist()


def test_script_mode_json_hooks_with_a_dict_and_custom_attributes(
    servers, tmp_path, iris_model
):
    """The JSON-only four hooks: ``JSONSerializer`` sends the dict (its arrays as lists),
    the custom attributes reach ``output_fn``'s context, and ``JSONDeserializer`` reads
    the script's own media type (``application/vnd.iris+json``) as JSON."""
    X = np.array(ROWS)
    (answer,) = predict(
        servers["four_hooks"],
        tmp_path,
        {**JSON, "data": {"instances": X}, "custom_attributes": "trace=1"},
    )
    assert answer == {
        "labels": iris_model.predict(X).tolist(),
        "top": iris_model.predict_proba(X).max(axis=1).round(3).tolist(),
        "accept": "application/json",
    }
