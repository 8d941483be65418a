"""Featurizers served: a model with ``transform`` and no ``predict`` answers ``transform``
by default, in every format. One trained by the real ``train`` without a label column
(a scaler and PCA), one fitted elsewhere and saved with joblib (a ``ColumnTransformer``
one-hot encoding text columns, whose output is sparse); bad inputs get 400s that say
what is wrong. One server per model, shared by the module's tests."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from tests.support.models import write_model
from tests.support.servers import ServeProcess
from tests.support.tables import churn_frame
from tests.support.training import run_train

pytestmark = pytest.mark.server

ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
WIDTH = 4  # features of the unlabelled table
NUMBERS = ["tenure", "spend", "calls"]
TEXT = ["plan", "country"]


def unlabelled(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(5.0, 2.0, (rows, WIDTH)), 4)


def csv_of(rows: np.ndarray) -> bytes:
    return "".join(",".join(map(repr, row)) + "\n" for row in rows.tolist()).encode()


@pytest.fixture(scope="module")
def scaler(tmp_path_factory) -> Iterator[tuple[ServeProcess, object, Path]]:
    """The real ``train``: ``["standard_scaler", "pca"]`` on a table with no label
    column (``smserve_target_column=none``), then the real ``serve`` on its model."""
    work = tmp_path_factory.mktemp("scaler")
    data = work / "train.csv"
    data.write_bytes(csv_of(unlabelled(200, seed=0)))
    base = work / "ml"
    done = run_train(
        base,
        "--channel",
        f"train={data}",
        "--hp",
        'smserve_estimator=["standard_scaler", "pca"]',
        "--hp",
        "smserve_target_column=none",
        "--hp",
        "pca__n_components=2",
        "--hp",
        "smserve_random_seed=0",
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    server = ServeProcess(base, work, workers=1).start()
    try:
        yield server, joblib.load(base / "model" / "model.joblib"), base
    finally:
        server.stop()


def fitted_column_transformer() -> object:
    """A featurizer fitted and saved elsewhere: text columns one-hot encoded (a sparse
    block; unknown categories refused), numbers imputed and scaled."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = churn_frame(300)[NUMBERS + TEXT].fillna({"plan": "basic"})
    return ColumnTransformer(
        [
            ("text", OneHotEncoder(handle_unknown="error"), TEXT),
            ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), NUMBERS),
        ],
        sparse_threshold=1.0,  # sparse whenever the encoder is: the server densifies
    ).fit(frame)


@pytest.fixture(scope="module")
def column_transformer(tmp_path_factory) -> Iterator[tuple[ServeProcess, object]]:
    work = tmp_path_factory.mktemp("column-transformer")
    model = fitted_column_transformer()
    write_model(work / "ml", model)  # a bare model.joblib, no metadata.json
    server = ServeProcess(work / "ml", work, workers=1).start()
    try:
        yield server, model
    finally:
        server.stop()


def test_trained_featurizer_serves_transform_in_every_format(scaler):
    """/ping is 200 (no longer 503 "no predict method"). docs/serving.md, Featurizers:
    CSV "one row of numbers per record"; JSON "{"predictions": [[...], ...]}"; JSON
    Lines "{"features": [...]} per record"; NPY "the 2-D float array": each the
    model's own ``transform``, and the answer names the method."""
    server, model, _ = scaler
    rows = unlabelled(9, seed=1)
    expected = model.transform(rows)
    status, headers, body = server.invoke(csv_of(rows), "text/csv", Accept="text/csv")
    assert status == HTTPStatus.OK, body
    assert headers[ATTRIBUTES] == "method=transform"
    got = np.loadtxt(io.StringIO(body.decode()), delimiter=",")
    assert got.shape == (9, 2)
    assert np.allclose(got, expected, rtol=0, atol=1e-12)

    status, _, body = server.invoke(
        json.dumps({"instances": rows.tolist()}).encode(),
        "application/json",
        Accept="application/json",
    )
    assert status == HTTPStatus.OK, body
    assert np.allclose(json.loads(body)["predictions"], expected, rtol=0, atol=1e-12)

    lines = "".join(json.dumps(row) + "\n" for row in rows.tolist()).encode()
    status, headers, body = server.invoke(
        lines, "application/jsonlines", Accept="application/jsonlines"
    )
    assert status == HTTPStatus.OK, body
    assert headers["content-type"] == "application/jsonlines"
    got_lines = [json.loads(line)["features"] for line in body.decode().splitlines()]
    assert np.allclose(got_lines, expected, rtol=0, atol=1e-12)

    status, _, body = server.invoke(
        csv_of(rows), "text/csv", Accept="application/x-npy"
    )
    assert status == HTTPStatus.OK, body
    array = np.load(io.BytesIO(body), allow_pickle=False)
    assert array.shape == (9, 2)
    assert np.allclose(array, expected, rtol=0, atol=1e-12)


def test_featurizer_job_needs_no_label(scaler):
    """docs/training.md, ``smserve_target_column``: "none for no label column (a
    featurizer's job; a classifier's or a regressor's is refused)": the job fitted
    every column (the model takes all four), recorded no label and no metrics."""
    _, model, base = scaler
    assert model.n_features_in_ == WIDTH
    metadata = json.loads((base / "model" / "metadata.json").read_text())
    assert metadata["target"] is None
    assert metadata["classes"] is None
    assert metadata["metrics"] == {}


@pytest.mark.parametrize(
    ("body", "content_type", "attributes", "message"),
    [
        (b"1,2,3\n", "text/csv", "", "Expected 4 features per record, got 3."),
        (b"1,2,x,4\n", "text/csv", "", "'x' is not a number"),
        (b"1,2,,4\n", "text/csv", "", "does not accept missing (NaN)"),
        (
            b"1,2,3,4\n",
            "text/csv",
            "method=predict",
            "Unknown method 'predict'; this model supports: transform.",
        ),
        (
            b"1,2,3,4\n",
            "text/csv",
            "method=explain",
            "the model is a featurizer: it transforms, it does not predict",
        ),
    ],
    ids=["width", "text", "missing", "predict", "explain"],
)
def test_bad_input_to_a_featurizer_is_a_400(
    scaler, body, content_type, attributes, message
):
    """A record of the wrong width, a word or a gap where a number goes, a method a
    featurizer does not have, and an explanation of what it does not predict: each a
    400 whose detail says what to send or why not."""
    server, _, _ = scaler
    headers = {"X-Amzn-SageMaker-Custom-Attributes": attributes} if attributes else {}
    status, _, answer = server.invoke(
        body, content_type, Accept="application/json", **headers
    )
    assert status == HTTPStatus.BAD_REQUEST, answer
    assert message in json.loads(answer)["detail"]


def test_column_transformer_saved_elsewhere_serves_dense_rows(column_transformer):
    """A bare joblib of a fitted ``ColumnTransformer`` (sparse one-hot output): records
    by name (JSON objects), by position (CSV) or as ``{"features": [...]}`` (JSON
    Lines) get the dense rows of its ``transform``, text columns encoded."""
    server, model = column_transformer
    rows = churn_frame(7, seed=5)[NUMBERS + TEXT].fillna(
        {"plan": "basic", "tenure": 12.0}
    )
    expected = model.transform(rows).toarray()
    objects = rows.to_dict(orient="records")
    status, headers, body = server.invoke(
        json.dumps(objects).encode(), "application/json", Accept="application/json"
    )
    assert status == HTTPStatus.OK, body
    assert headers[ATTRIBUTES] == "method=transform"
    assert np.allclose(json.loads(body)["predictions"], expected, rtol=0, atol=1e-12)

    status, _, body = server.invoke(
        rows.to_csv(index=False, header=False).encode(), "text/csv", Accept="text/csv"
    )
    assert status == HTTPStatus.OK, body
    got = pd.read_csv(io.BytesIO(body), header=None).to_numpy()
    assert np.allclose(got, expected, rtol=0, atol=1e-12)

    # {"features": [...]} records (Clarify's shape) are positional, text fields too.
    features = "".join(
        json.dumps({"features": row}) + "\n" for row in rows.values.tolist()
    )
    status, _, body = server.invoke(
        features.encode(), "application/jsonlines", Accept="application/json"
    )
    assert status == HTTPStatus.OK, body
    assert np.allclose(json.loads(body)["predictions"], expected, rtol=0, atol=1e-12)


def test_column_transformer_bad_records_are_named(column_transformer):
    """An unknown category (the encoder refuses them) names the record and its field;
    a missing feature names the feature."""
    server, _ = column_transformer
    rows = churn_frame(5, seed=6)[NUMBERS + TEXT].fillna(
        {"plan": "basic", "tenure": 1.0}
    )
    rows.loc[rows.index[2], "country"] = "NZ"
    status, _, body = server.invoke(
        rows.to_csv(index=False, header=False).encode(),
        "text/csv",
        Accept="application/json",
    )
    assert status == HTTPStatus.BAD_REQUEST, body
    assert json.loads(body)["detail"].startswith(
        "Record 3, feature 'country': 'NZ' is not a category the model was trained with"
    )
    status, _, body = server.invoke(
        b'[{"tenure": 3, "spend": 1, "calls": 0, "plan": "pro"}]', "application/json"
    )
    assert status == HTTPStatus.BAD_REQUEST, body
    assert "Record 1 lacks 'country'" in json.loads(body)["detail"]


def test_a_classifier_job_without_a_label_fails_saying_why(tmp_path):
    """docs/training.md, ``smserve_target_column``: "none for no label column (a
    featurizer's job; a classifier's or a regressor's is refused)": a classifier's job
    fails with a message that says so, before any fit."""
    data = tmp_path / "train.csv"
    data.write_bytes(csv_of(unlabelled(20, seed=2)))
    done = run_train(
        tmp_path / "ml",
        "--channel",
        f"train={data}",
        "--hp",
        "smserve_estimator=logistic_regression",
        "--hp",
        "smserve_target_column=none",
    )
    assert done.returncode != 0
    failure = (tmp_path / "ml" / "output" / "failure").read_text()
    assert "smserve_target_column is none (no label column)" in failure
    assert "is a classification model: it learns from a label" in failure


# --- the label passed through, by each form a record may take (in-process) ---
@pytest.fixture
def passing_labels() -> Iterator[None]:
    from django.conf import settings
    from django.test import override_settings

    with override_settings(SMSERVE={**settings.SMSERVE, "PASS_THROUGH_LABEL": True}):
        yield


def answer(predictor, body: bytes, content_type: str, accept: str = "text/csv"):
    """The parsed body through the predictor, as the view does."""
    from modelapp.parsers import CSVParser, JSONLinesParser, JSONParser

    base, _, params = content_type.partition(";")
    parser = {
        "text/csv": CSVParser,
        "application/json": JSONParser,
        "application/jsonlines": JSONLinesParser,
    }[base]()
    batch = parser.parse(
        io.BytesIO(body), content_type, {"request": None, "params": params}
    )
    return predictor.invoke(batch, {}, content_type, accept).predictions


@pytest.fixture(scope="module")
def named_featurizer():
    """A scaler fitted on named columns by a job whose label column was ``churn``."""
    from sklearn.preprocessing import StandardScaler

    from modelapp.metadata import ModelMetadata
    from modelapp.predictors import SklearnPredictor

    frame = pd.DataFrame(unlabelled(30, seed=7)[:, :3], columns=["a", "b", "c"])
    model = StandardScaler().fit(frame)
    predictor = SklearnPredictor(model, ModelMetadata(target="churn"))
    return predictor, model


def test_label_by_name_in_records_and_in_a_header(named_featurizer, passing_labels):
    """SMSERVE_PASS_THROUGH_LABEL: records with names carry the label under the
    training job's label column's name (JSON objects, JSON Lines, a CSV header in any
    column order): each answer row is the label, then the record's ``transform``."""
    predictor, model = named_featurizer
    rows = pd.DataFrame(unlabelled(3, seed=8)[:, :3], columns=["a", "b", "c"])
    expected = model.transform(rows)
    labels = ["yes", "no", "yes"]
    objects = [
        {"churn": label, **row}
        for label, row in zip(labels, rows.to_dict(orient="records"), strict=True)
    ]
    numeric = [{**record, "churn": i} for i, record in enumerate(objects)]
    header = rows[["c", "a", "b"]].assign(churn=labels)[["c", "churn", "a", "b"]]
    cases = {
        "json objects, text labels": (json.dumps(objects), "application/json", labels),
        "json lines, number labels": (
            "".join(json.dumps(record) + "\n" for record in numeric),
            "application/jsonlines",
            [0, 1, 2],
        ),
        "csv with a header": (
            header.to_csv(index=False),
            "text/csv; header=present",
            labels,
        ),
    }
    for name, (body, content_type, want) in cases.items():
        got = answer(predictor, body.encode(), content_type)
        assert list(got[:, 0]) == want, name
        assert np.allclose(got[:, 1:].astype(float), expected, rtol=0, atol=1e-12), name


def test_label_by_position_and_records_without_one(passing_labels):
    """A table trained without a header: the label is where the job had it (here the
    third column); a record of the model's own width is transformed as it is."""
    from sklearn.preprocessing import StandardScaler

    from modelapp.metadata import ModelMetadata
    from modelapp.predictors import SklearnPredictor
    from modelapp.renderers import JSONLinesRenderer

    X = unlabelled(20, seed=9)[:, :3]
    model = StandardScaler().fit(X)
    predictor = SklearnPredictor(model, ModelMetadata(target=2))
    rows = X[:2]
    labelled = np.insert(rows, 2, [7.0, 8.0], axis=1)
    got = answer(predictor, csv_of(labelled), "text/csv")
    assert got[:, 0].tolist() == [7.0, 8.0]
    assert np.allclose(got[:, 1:], model.transform(rows), rtol=0, atol=1e-12)
    got = answer(predictor, csv_of(rows), "text/csv")
    assert np.allclose(got, model.transform(rows), rtol=0, atol=1e-12)
    # In JSON Lines a labelled row stays an array, label first: what train reads.
    got = JSONLinesRenderer().render(
        answer(predictor, csv_of(labelled), "text/csv", "application/jsonlines")
    )
    lines = [json.loads(line) for line in got.decode().splitlines()]
    assert [line[0] for line in lines] == [7.0, 8.0]
    assert np.allclose([line[1:] for line in lines], model.transform(rows), atol=1e-12)
    # Without metadata (a model saved elsewhere) the label is the first field.
    bare = SklearnPredictor(model)
    got = answer(bare, csv_of(np.insert(rows, 0, [1.0, 0.0], axis=1)), "text/csv")
    assert got[:, 0].tolist() == [1.0, 0.0]
    assert np.allclose(got[:, 1:], model.transform(rows), rtol=0, atol=1e-12)


def test_a_chunked_body_answers_what_one_pass_answers():
    """A body larger than SMSERVE_CHUNK_KB, read a chunk at a time: the featurizer's
    JSON Lines records, and with SMSERVE_PASS_THROUGH_LABEL its labelled rows, are byte
    for byte the one-pass answer."""
    from django.conf import settings
    from django.test import override_settings
    from sklearn.preprocessing import StandardScaler

    from modelapp.predictors import SklearnPredictor
    from modelapp.renderers import CSVRenderer, JSONLinesRenderer

    rows = unlabelled(400, seed=10)[:, :3]
    model = StandardScaler().fit(rows)
    predictor = SklearnPredictor(model)  # no metadata: the label is the first field
    labelled = np.insert(rows, 0, np.arange(400) % 2, axis=1)
    answers = {}
    for chunk_kb in (1, 8192):
        smserve = {**settings.SMSERVE, "CHUNK_KB": chunk_kb}
        with override_settings(SMSERVE=smserve):
            features = answer(
                predictor, csv_of(rows), "text/csv", "application/jsonlines"
            )
            body = JSONLinesRenderer().render(features)
        with override_settings(SMSERVE={**smserve, "PASS_THROUGH_LABEL": True}):
            labels = CSVRenderer().render(
                answer(predictor, csv_of(labelled), "text/csv")
            )
        answers[chunk_kb] = (body, labels)
    assert answers[1] == answers[8192]
    body, labels = answers[1]
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert np.allclose(
        [line["features"] for line in lines], model.transform(rows), atol=1e-12
    )
    first = [line.split(",")[0] for line in labels.decode().splitlines()]
    assert first == [repr(float(i % 2)) for i in range(400)]


def test_json_lines_key_setting_names_the_featurizers_records():
    """The featurizer's JSON Lines records use SMSERVE_JSONLINES_FEATURES_KEY, the key
    the next container reads; empty: plain arrays, one per line."""
    from django.conf import settings
    from django.test import override_settings
    from sklearn.preprocessing import StandardScaler

    from modelapp.predictors import SklearnPredictor
    from modelapp.renderers import JSONLinesRenderer

    rows = unlabelled(4, seed=11)
    model = StandardScaler().fit(rows)
    predictor = SklearnPredictor(model)
    expected = model.transform(rows)
    for key in ("instance", ""):
        smserve = {**settings.SMSERVE, "JSONLINES_FEATURES_KEY": key}
        with override_settings(SMSERVE=smserve):
            body = JSONLinesRenderer().render(
                answer(predictor, csv_of(rows), "text/csv", "application/jsonlines")
            )
        lines = [json.loads(line) for line in body.decode().splitlines()]
        got = [line[key] for line in lines] if key else lines
        assert np.allclose(got, expected, rtol=0, atol=1e-12), key


def test_the_compiled_engine_serves_a_trained_featurizers_transform(scaler, tmp_path):
    """docs/serving.md, Featurizers: the compiled engine serves the ``transform`` of a
    numeric featurizer (``train``'s ``model.onnx``, verified at load like any method):
    the answers are within the verification tolerance of the model's own, and the log
    line says ONNX Runtime serves ``transform``. With the engine off the answers are
    scikit-learn's exactly, and the log says so."""
    from modelapp.predictors.compiled import ATOL, RTOL

    server, model, base = scaler
    assert re.search(
        r"Engines for Pipeline\(StandardScaler, PCA\): transform by onnxruntime "
        r"\(verified on every record; 200 verification records, .*; model\.onnx "
        r"written by train;",
        server.log,
    )
    rows = unlabelled(50, seed=4)
    for body, content_type in (
        (csv_of(rows), "text/csv"),
        (csv_of(rows[:1]), "text/csv"),
    ):
        status, _, answer_body = server.invoke(
            body, content_type, Accept="application/x-npy"
        )
        assert status == HTTPStatus.OK, answer_body
        got = np.load(io.BytesIO(answer_body), allow_pickle=False)
        expected = model.transform(np.loadtxt(io.BytesIO(body), delimiter=",", ndmin=2))
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)

    plain = ServeProcess(
        base, tmp_path, workers=1, env={"SMSERVE_COMPILED_ENGINE": "off"}
    ).start()
    try:
        status, _, answer_body = plain.invoke(
            csv_of(rows), "text/csv", Accept="application/x-npy"
        )
        assert status == HTTPStatus.OK, answer_body
        np.testing.assert_array_equal(
            np.load(io.BytesIO(answer_body), allow_pickle=False), model.transform(rows)
        )
        assert (
            "Engines for Pipeline(StandardScaler, PCA): every method by scikit-learn "
            "(off (SMSERVE_COMPILED_ENGINE))" in plain.log
        )
    finally:
        plain.stop()


def test_a_featurizer_the_engine_does_not_convert_is_not_converted(column_transformer):
    """A featurizer other than the numeric scalers and PCA (here a ``ColumnTransformer``
    one-hot encoding text) gets no conversion nor verification at start-up, and its
    log line says scikit-learn serves ``transform``, and why."""
    server, _ = column_transformer
    assert (
        "Engines for ColumnTransformer(OneHotEncoder, Pipeline(SimpleImputer, "
        "StandardScaler)): every method by scikit-learn (not compiled: the compiled "
        "engine converts only the numeric featurizers (StandardScaler, MinMaxScaler, "
        "MaxAbsScaler, PCA and pipelines of them), not ColumnTransformer). Why: "
        "transform: not compiled" in server.log
    )
    assert "verification records" not in server.log


def test_a_featurizer_graph_that_disagrees_is_caught(tmp_path):
    """A ``model.onnx`` whose scaling constants were moved answers ``transform``
    differently: verification catches it, scikit-learn serves, the report says why."""
    import onnx
    from onnx import numpy_helper
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from modelapp.predictors import compiled
    from modelapp.registry import load_model

    model = make_pipeline(StandardScaler(), PCA(2)).fit(unlabelled(100, seed=2))
    write_model(
        tmp_path, model, {"n_features": WIDTH, "compiled": {"onnx": "model.onnx"}}
    )
    graph = onnx.load_from_string(compiled.convert(model, WIDTH))
    for tensor in graph.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f":
            tensor.CopyFrom(numpy_helper.from_array(values + 0.01, tensor.name))
    (tmp_path / "model" / "model.onnx").write_bytes(graph.SerializeToString())
    predictor = load_model(tmp_path / "model").predictor
    report = predictor.engine_report
    assert report.source == "model.onnx written by train"
    assert report.methods == {"transform": compiled.SKLEARN}
    assert re.search(r"verification failed for transform: max \|diff\|", report.reason)
    rows = unlabelled(5, seed=3)
    np.testing.assert_array_equal(
        predictor.call("transform", rows), model.transform(rows)
    )
