"""Script mode on the real server (nginx + gunicorn): a user's ``inference.py`` from the
official scikit-learn container, unchanged, answering what that container answers.

What the SageMaker SDK's ``Predictor`` sends and how it reads the answer is reproduced
from the SDK's own source (``sagemaker/base_serializers.py`` and
``base_deserializers.py``, v2.257): ``NumpySerializer`` sends ``numpy.save`` bytes as
``application/x-npy``; ``NumpyDeserializer`` asks ``Accept: application/x-npy`` and
branches on the response's exact Content-Type; ``JSONSerializer`` sends
``json.dumps(array.tolist())``; ``JSONDeserializer`` is ``json.load``. The expected bodies
are the official container's default encoders (``json.dumps``, ``numpy.savetxt(fmt="%s")``,
``numpy.save``), so a byte-for-byte match is the official answer.
"""

from __future__ import annotations

import io
import json
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.tree import DecisionTreeClassifier

from tests.support.inference_scripts import (
    BROKEN_PY,
    DEFAULTS_PY,
    FOUR_HOOKS_PY,
    NO_MODEL_FN_PY,
    TRANSFORM_PY,
)
from tests.support.models import write_model
from tests.support.script_mode import BUCKET, s3_client, s3_server, source_dir, tarball
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.server

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


# --- the SDK's serializers and deserializers, as their source defines them ----------------
def npy_serialize(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_deserialize(body: bytes, content_type: str) -> np.ndarray | None:
    """NumpyDeserializer: exact Content-Type match, else nothing (it returns None)."""
    if content_type == "text/csv":
        return np.genfromtxt(io.StringIO(body.decode()), delimiter=",")
    if content_type == "application/json":
        return np.array(json.loads(body))
    if content_type == "application/x-npy":
        return np.load(io.BytesIO(body), allow_pickle=False)
    return None


# --- what the official container's default output_fn writes --------------------------------
def official_json(prediction: np.ndarray) -> bytes:
    return json.dumps(prediction.tolist()).encode()


def official_csv(prediction: np.ndarray) -> bytes:
    out = io.StringIO()
    np.savetxt(out, prediction, delimiter=",", fmt="%s")
    return out.getvalue().encode()


def script_base(root: Path, model, script: str, in_model: bool = True) -> Path:
    """A base dir with the model; the script in model/code/ (the SDK's repacked
    model.tar.gz) unless ``in_model`` is False."""
    write_model(root, model)
    if in_model:
        source_dir(root / "model" / "code", {"inference.py": script})
    return root


@pytest.fixture(scope="module")
def defaults_server(tmp_path_factory, iris_model):
    """model_fn only, in model/code/: every other step is the container's default."""
    base = script_base(tmp_path_factory.mktemp("base"), iris_model, DEFAULTS_PY)
    server = ServeProcess(
        base,
        tmp_path_factory.mktemp("srv"),
        env={"SAGEMAKER_PROGRAM": "inference.py"},
        workers=1,
    )
    server.start()
    yield server
    server.stop()


def test_defaults_answer_the_official_bytes(defaults_server, iris_model):
    """JSON (a bare list), CSV and NPY bodies are the official encoders' bytes, and the
    SDK's NumpyDeserializer and JSONDeserializer read them back as the predictions.
    docs/serving.md, Script mode: better: "`text/csv`".
    """
    X = np.array(ROWS)
    labels = iris_model.predict(X)
    proba = iris_model.predict_proba(X)

    # SKLearnPredictor's defaults: NumpySerializer / NumpyDeserializer.
    status, headers, body = defaults_server.invoke(
        npy_serialize(X), "application/x-npy", Accept="application/x-npy"
    )
    assert status == HTTPStatus.OK, body
    assert headers["content-type"] == "application/x-npy"
    assert body == npy_serialize(labels)
    np.testing.assert_array_equal(
        npy_deserialize(body, headers["content-type"]), labels
    )

    # JSONSerializer / JSONDeserializer.
    status, headers, body = defaults_server.invoke(
        json.dumps(X.tolist()).encode(), "application/json", Accept="application/json"
    )
    assert (status, headers["content-type"]) == (HTTPStatus.OK, "application/json")
    assert body == official_json(labels) == b"[0, 2, 1]"
    assert json.loads(body) == labels.tolist()

    # CSV, two-dimensional output through the method custom attribute.
    csv_body = "".join(",".join(map(str, row)) + "\n" for row in ROWS).encode()
    status, headers, body = defaults_server.invoke(
        csv_body,
        "text/csv",
        Accept="text/csv",
        **{"X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"},
    )
    assert (status, headers["content-type"]) == (HTTPStatus.OK, "text/csv")
    assert body == official_csv(proba)
    np.testing.assert_array_equal(npy_deserialize(body, headers["content-type"]), proba)


def test_defaults_fix_what_the_official_container_gets_wrong(defaults_server):
    """One CSV row is one record (the official container squeezes it to 1-D and fails);
    Accept */* is JSON; an unsupported type is a JSON 415/406, never an HTML 500.
    docs/serving.md, Script mode: better: "415/406 listing the supported types".
    """
    status, _, body = defaults_server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")
    assert (status, body) == (HTTPStatus.OK, b"[0]")
    status, headers, body = defaults_server.invoke(
        b"5.1,3.5,1.4,0.2\n", "text/csv", Accept="*/*"
    )
    assert (status, headers["content-type"], body) == (
        HTTPStatus.OK,
        "application/json",
        b"[0]",
    )
    status, headers, body = defaults_server.invoke(b"<x/>", "application/xml")
    assert status == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    assert json.loads(body)["code"] == "unsupported_media_type"
    status, headers, body = defaults_server.invoke(
        b"5.1,3.5,1.4,0.2\n", "text/csv", Accept="application/xml"
    )
    assert status == HTTPStatus.NOT_ACCEPTABLE
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == "not_acceptable"


def test_four_hooks_from_a_file_uri(tmp_path, iris_model, serve_factory):
    """input_fn gets any Content-Type (no 415), predict_fn and output_fn run, context
    carries the custom attributes both ways; a hook's HTTPError answers its status and
    any other exception a JSON 500 whose body holds the message but no traceback
    (README Errors: `script_error`).
    docs/serving.md, Errors: "an exception in a script's hook (script mode; logged with
    its traceback; with `SMSERVE_DETAILED_ERRORS=false` a 500 says only that the script
    raised)" (the default, detailed). docs/serving.md, Script mode: better: "JSON `{"detail", "code"}`:
    500 with the message".
    docs/settings.md, Settings: "`SAGEMAKER_PROGRAM`"; "`SAGEMAKER_SUBMIT_DIRECTORY`".
    """
    base = script_base(tmp_path / "base", iris_model, "", in_model=False)
    code = source_dir(tmp_path / "src", {"inference.py": FOUR_HOOKS_PY})
    server = serve_factory(
        base,
        env={
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": code.as_uri(),
        },
        workers=1,
    )
    status, headers, body = server.invoke(
        json.dumps({"instances": ROWS[:2]}).encode(),
        "application/vnd.iris+json",
        Accept="application/json",
        **{"X-Amzn-SageMaker-Custom-Attributes": "trace=42"},
    )
    assert status == HTTPStatus.OK, body
    assert headers["content-type"] == "application/vnd.iris+json"
    assert headers["x-amzn-sagemaker-custom-attributes"] == "echo=trace=42"
    assert json.loads(body) == {
        "labels": [0, 2],
        "top": [1.0, 1.0],
        "accept": "application/json",
    }

    status, headers, body = server.invoke(b"a,b\n", "text/csv")
    assert status == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "detail": "iris takes JSON, not text/csv",
        "code": "script_error",
    }
    status, _, body = server.invoke(b"{}", "application/json")
    assert status == HTTPStatus.UNPROCESSABLE_ENTITY
    assert json.loads(body)["code"] == "no_instances"

    status, headers, body = server.invoke(
        b'{"instances": [], "explode": true}', "application/json"
    )
    assert status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "detail": "inference.py: input_fn raised RuntimeError: input_fn exploded on "
        "purpose",
        "code": "script_error",
    }
    assert b"Traceback" not in body
    assert "Traceback" in server.log
    assert 'inference.py", line' in server.log


def test_transform_fn_from_s3_with_requirements(tmp_path, iris_model, serve_factory):
    """transform_fn alone, from an s3:// sourcedir.tar.gz on a local S3 server; its
    requirements.txt (already satisfied: no network) is installed before /ping is 200."""
    base = script_base(tmp_path / "base", iris_model, "", in_model=False)
    code = source_dir(
        tmp_path / "src", {"inference.py": TRANSFORM_PY, "requirements.txt": "numpy\n"}
    )
    archive = tarball(code, tmp_path / "sourcedir.tar.gz")
    with s3_server() as s3_env:
        client = s3_client(s3_env)
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(archive), BUCKET, "job/source/sourcedir.tar.gz")
        server = serve_factory(
            base,
            env={
                **s3_env,
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": f"s3://{BUCKET}/job/source/sourcedir.tar.gz",
            },
            workers=1,
        )
    assert "Requirement already satisfied: numpy" in server.log
    body = "\n".join("|".join(map(str, row)) for row in ROWS).encode()
    status, headers, answer = server.invoke(body, "text/csv", Accept="text/plain")
    assert (status, headers["content-type"], answer) == (
        HTTPStatus.OK,
        "text/plain",
        b"0|2|1\n",
    )


def test_a_broken_script_keeps_ping_503_naming_file_and_line(
    tmp_path, iris_model, serve_factory
):
    """docs/serving.md, Script mode: better: "`/ping` 200 only when it worked"; "503 with
    the reason otherwise".
    """
    base = script_base(tmp_path / "base", iris_model, BROKEN_PY)
    server = serve_factory(
        base, expect_status=503, env={"SAGEMAKER_PROGRAM": "inference.py"}, workers=1
    )
    status, _, body = server.request("GET", "/ping")
    assert status == HTTPStatus.SERVICE_UNAVAILABLE
    detail = json.loads(body)["detail"]
    assert "inference.py could not be imported: NameError" in detail
    assert "code/inference.py:6" in detail
    status, _, body = server.invoke(b"1,2,3,4\n", "text/csv")
    assert status == HTTPStatus.SERVICE_UNAVAILABLE


def test_a_script_without_model_fn_shapes_its_response(
    tmp_path, iris_model, serve_factory
):
    """An ``inference.py`` without ``model_fn``, served with
    SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT=text/csv. docs/serving.md, Script mode:
    "Without `model_fn`, smserve loads the joblib itself" (Script mode: better: "smserve
    loads the joblib"); "Accept absent or `*/*` means
    `SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`, else JSON"; `set_response_content_type` and
    `set_response_status` "shape the response"; "or any exception with an integer
    `status_code`" answers that status (Script mode: better: "`HTTPError(status, ...)`
    or any `status_code`"); the default input_fn takes "also JSON Lines"; "CSV
    headers"; "media-type parameters accepted", and gives ``float32`` for CSV and JSON,
    ``float64`` for NPY ("With the default `input_fn`, NPY input reaches `predict_fn`
    as `float64`")."""
    base = script_base(tmp_path, iris_model, NO_MODEL_FN_PY)
    server = serve_factory(
        base,
        env={
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv",
        },
        workers=1,
    )
    row = b"6.7,3.0,5.2,2.3\n"
    for accept in ({}, {"Accept": "*/*"}):
        status, headers, body = server.invoke(row, "text/csv", **accept)
        assert (status, headers["content-type"], body) == (
            HTTPStatus.OK,
            "text/csv",
            b"2:float32\n",
        )
    for body, content_type in (
        (b"[6.7,3.0,5.2,2.3]\n", "application/jsonlines"),
        (b"a,b,c,d\n6.7,3.0,5.2,2.3\n", "text/csv; header=present; charset=utf-8"),
        (b"[[6.7,3.0,5.2,2.3]]", "application/json"),
    ):
        status, _, answer = server.invoke(body, content_type, Accept="application/json")
        assert (status, json.loads(answer)) == (HTTPStatus.OK, ["2:float32"]), body
    status, _, answer = server.invoke(
        npy_serialize(np.array([ROWS[1]], dtype=np.float32)),
        "application/x-npy",
        Accept="application/json",
    )
    assert (status, json.loads(answer)) == (HTTPStatus.OK, ["2:float64"])
    status, headers, body = server.invoke(row, "text/csv", **{"X-Status": "202"})
    assert (status, headers["content-type"], body) == (
        HTTPStatus.ACCEPTED,
        "text/vnd.iris",
        b"2:float32\n",
    )
    status, _, body = server.invoke(
        row, "text/csv", Accept="application/json", **{"X-Teapot": "1"}
    )
    assert status == 418
    assert json.loads(body) == {"detail": "short and stout", "code": "script_error"}


def test_default_input_fn_takes_json_records_with_feature_names(
    tmp_path, iris, serve_factory
):
    """A script without ``input_fn`` for a model fitted with feature names takes JSON
    records as objects, in any key order, and hands the script's ``predict_fn`` the
    columns in the model's order. docs/serving.md, Script mode: better: default input
    formats: "JSON records with feature names"."""
    X, y = iris
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    model = DecisionTreeClassifier(random_state=0).fit(
        pd.DataFrame(X, columns=names), y
    )
    base = script_base(tmp_path, model, NO_MODEL_FN_PY)
    server = serve_factory(base, env={"SAGEMAKER_PROGRAM": "inference.py"}, workers=1)
    rows = X[[0, 100]]
    expected = model.predict(pd.DataFrame(rows, columns=names)).tolist()
    assert expected == [0, 2]
    # Keys reversed: a predictor that took the values in the order sent would be wrong.
    records = [
        dict(reversed(list(zip(names, row, strict=True)))) for row in rows.tolist()
    ]
    for body, content_type in (
        (json.dumps(records).encode(), "application/json"),
        (json.dumps({"instances": records}).encode(), "application/json"),
    ):
        status, _, answer = server.invoke(body, content_type, Accept="application/json")
        assert (status, json.loads(answer)) == (
            HTTPStatus.OK,
            [f"{label}:float32" for label in expected],
        ), body


# model_fn that says which process ran it, and how often.
COUNTED_MODEL_FN_PY = """\
import os

import joblib


def model_fn(model_dir):
    with open(os.path.join(model_dir, "loaded-by"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""


def test_model_fn_runs_once_in_the_master_before_the_fork(
    tmp_path, iris_model, serve_factory
):
    """docs/serving.md, Script mode: better, when the model loads: "once"; "before the
    workers fork": with two workers, after invocations through both, ``model_fn`` ran
    one time, in gunicorn's master."""
    base = script_base(tmp_path, iris_model, COUNTED_MODEL_FN_PY)
    server = serve_factory(base, env={"SAGEMAKER_PROGRAM": "inference.py"}, workers=2)
    for _ in range(10):
        assert server.invoke(b"6.7,3.0,5.2,2.3\n", "text/csv")[0] == HTTPStatus.OK
    loaded_by = (base / "model" / "loaded-by").read_text().split()
    assert loaded_by == [str(server.gunicorn_master())]
    assert len(server.gunicorn_workers()) == 2
