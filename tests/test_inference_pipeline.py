"""Inference pipelines proved: two real smserve servers in series on loopback, a
featurizer feeding a classifier trained on its output, chained the way SageMaker chains
a serial inference pipeline's containers.

The story, as a user would run it, every step through the real ``train`` and ``serve``:
1. ``train`` fits a featurizer (``["standard_scaler", "pca"]``) on the labelled training
   table; the label column (first, the default) is not a feature.
2. A batch transform (``SplitType=Line``, ``BatchStrategy=MultiRecord``, environment
   only: ``SAGEMAKER_BATCH``, ``SMSERVE_PASS_THROUGH_LABEL``) runs the training table
   through the featurizer: one output line per input line, in order, the label first.
3. ``train`` fits a classifier on that featurized table.
4. The two models in series answer raw records: each response's body and Content-Type
   become the next request's; the last container answers under the caller's Accept. The
   intermediate container gets no Accept, so it answers in the request's own format
   (``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` would choose another).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from tests.support.servers import ServeProcess
from tests.support.training import run_train

pytestmark = pytest.mark.server

WIDTH = 4
# Records per request of the simulated batch transform (MultiRecord fills a request with
# as many whole lines as fit MaxPayloadInMB; a small number makes several requests).
LINES_PER_REQUEST = 25


def labelled(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four numeric features and a text label that depends on two of them."""
    rng = np.random.default_rng(seed)
    X = np.round(rng.normal(5.0, 2.0, (rows, WIDTH)), 4)
    y = np.where(X[:, 0] + 0.5 * X[:, 2] > 7.5, "yes", "no")
    return X, y


def csv_lines(X: np.ndarray, y: np.ndarray | None = None) -> list[bytes]:
    """One CSV line per record, the label first when given."""
    return [
        (
            ",".join(([str(y[i])] if y is not None else []) + list(map(repr, row)))
            + "\n"
        ).encode()
        for i, row in enumerate(X.tolist())
    ]


def jsonl_lines(X: np.ndarray) -> list[bytes]:
    return [(json.dumps(row) + "\n").encode() for row in X.tolist()]


def chain(
    servers: list[ServeProcess], body: bytes, content_type: str, accept: str
) -> tuple[int, dict[str, str], bytes]:
    """A serial inference pipeline's request: each container's response body and
    Content-Type are the next one's request; only the last gets the caller's Accept.
    A container's error ends the chain: its status and body go to the caller."""
    for server in servers[:-1]:
        status, headers, body = server.invoke(body, content_type)
        if status != HTTPStatus.OK:
            return status, headers, body
        content_type = headers["content-type"]
    return servers[-1].invoke(body, content_type, Accept=accept)


def batch_transform(
    servers: list[ServeProcess], lines: list[bytes], content_type: str, accept: str
) -> list[bytes]:
    """SageMaker batch transform with SplitType=Line, BatchStrategy=MultiRecord and
    AssembleWith=Line: whole lines, several to a request, each request through the
    containers in series; the output is the responses' lines, in order."""
    out: list[bytes] = []
    for start in range(0, len(lines), LINES_PER_REQUEST):
        body = b"".join(lines[start : start + LINES_PER_REQUEST])
        status, _, answer = chain(servers, body, content_type, accept)
        assert status == HTTPStatus.OK, answer
        out += answer.splitlines(keepends=True)
    return out


@dataclass
class Pipeline:
    featurizer: ServeProcess
    classifier: ServeProcess
    featurizer_model: Any
    classifier_model: Any
    # The training table as the batch transform featurized it: input and output lines.
    raw_lines: list[bytes]
    featurized_lines: list[bytes]
    y: np.ndarray

    def expected(self, X: np.ndarray) -> list[str]:
        """The two models' answer in this process: classify(featurize(X))."""
        features = self.featurizer_model.transform(X)
        return self.classifier_model.predict(features).tolist()


def train(base: Path, data: Path, *hyperparameters: str) -> Any:
    args = [arg for hp in hyperparameters for arg in ("--hp", hp)]
    done = run_train(base, "--channel", f"train={data}", *args, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return joblib.load(base / "model" / "model.joblib")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Iterator[Pipeline]:
    work = tmp_path_factory.mktemp("pipeline")
    X, y = labelled(120, seed=0)
    raw_lines = csv_lines(X, y)
    (work / "raw.csv").write_bytes(b"".join(raw_lines))
    featurizer_model = train(
        work / "featurizer",
        work / "raw.csv",
        'smserve_estimator=["standard_scaler", "pca"]',
        "pca__n_components=3",
        "smserve_random_seed=0",
    )
    # The training table's batch transform: a deployment of its own, environment only.
    (work / "featurize-training").mkdir()
    labelling = ServeProcess(
        work / "featurizer",
        work / "featurize-training",
        workers=1,
        env={"SAGEMAKER_BATCH": "true", "SMSERVE_PASS_THROUGH_LABEL": "true"},
    ).start()
    try:
        featurized = batch_transform([labelling], raw_lines, "text/csv", "text/csv")
    finally:
        labelling.stop()
    (work / "featurized.csv").write_bytes(b"".join(featurized))
    classifier_model = train(
        work / "classifier",
        work / "featurized.csv",
        "smserve_estimator=logistic_regression",
    )
    # The pipeline model's two containers.
    (work / "featurizer-serve").mkdir()
    (work / "classifier-serve").mkdir()
    featurizer = ServeProcess(work / "featurizer", work / "featurizer-serve", workers=1)
    classifier = ServeProcess(work / "classifier", work / "classifier-serve", workers=1)
    try:
        featurizer.start()
        classifier.start()
        yield Pipeline(
            featurizer,
            classifier,
            featurizer_model,
            classifier_model,
            raw_lines,
            featurized,
            y,
        )
    finally:
        classifier.stop()
        featurizer.stop()


def test_batch_transform_featurizes_training_data_line_for_line(pipeline):
    """The featurizer's batch transform of the labelled table: one output line per input
    line, in order, each the record's label then its ``transform`` (the label passed
    through, SMSERVE_PASS_THROUGH_LABEL); the featurizer fitted on the features only."""
    assert pipeline.featurizer_model.n_features_in_ == WIDTH
    assert len(pipeline.featurized_lines) == len(pipeline.raw_lines)
    X, y = labelled(120, seed=0)
    expected = pipeline.featurizer_model.transform(X)
    for i, line in enumerate(pipeline.featurized_lines):
        label, *features = line.decode().rstrip("\n").split(",")
        assert label == y[i], i
        assert np.allclose(
            [float(v) for v in features], expected[i], rtol=0, atol=1e-12
        ), i
    # The classifier was trained on the featurized table: three features, the labels.
    assert pipeline.classifier_model.n_features_in_ == 3
    assert sorted(pipeline.classifier_model.classes_) == ["no", "yes"]


def test_pipeline_of_csv(pipeline):
    """Raw CSV records through featurizer then classifier: the featurizer answers CSV
    (the request's own type), the classifier JSON (the caller's Accept); the labels are
    the two models' own answer."""
    X, _ = labelled(30, seed=1)
    status, headers, body = chain(
        [pipeline.featurizer, pipeline.classifier],
        b"".join(csv_lines(X)),
        "text/csv",
        "application/json",
    )
    assert status == HTTPStatus.OK, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["predictions"] == pipeline.expected(X)


def test_pipeline_of_json_lines(pipeline):
    """JSON Lines records in, each container passing JSON Lines on; the caller asks for
    CSV and gets one label per record."""
    X, _ = labelled(30, seed=2)
    status, headers, body = chain(
        [pipeline.featurizer, pipeline.classifier],
        b"".join(jsonl_lines(X)),
        "application/jsonlines",
        "text/csv",
    )
    assert status == HTTPStatus.OK, body
    assert headers["content-type"] == "text/csv"
    assert body.decode().splitlines() == pipeline.expected(X)


def test_intermediate_answer_is_the_next_containers_input(pipeline):
    """What the featurizer hands on: its Content-Type without parameters; CSV "one row
    of numbers per record"; JSON Lines "{"features": [...]} per record" (Clarify's
    record shape); each the model's ``transform``."""
    X, _ = labelled(5, seed=3)
    expected = pipeline.featurizer_model.transform(X)
    status, headers, answer = pipeline.featurizer.invoke(
        b"".join(csv_lines(X)), "text/csv"
    )
    assert status == HTTPStatus.OK, answer
    assert headers["content-type"] == "text/csv"
    rows = [[float(v) for v in line.split(",")] for line in answer.decode().split()]
    assert np.allclose(rows, expected, rtol=0, atol=1e-12)
    status, headers, answer = pipeline.featurizer.invoke(
        b"".join(jsonl_lines(X)), "application/jsonlines"
    )
    assert status == HTTPStatus.OK, answer
    assert headers["content-type"] == "application/jsonlines"
    records = [json.loads(line) for line in answer.decode().splitlines()]
    assert [list(record) for record in records] == [["features"]] * len(X)
    assert np.allclose(
        [record["features"] for record in records], expected, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    ("content_type", "accept", "lines"),
    [
        ("text/csv", "text/csv", csv_lines),
        ("application/jsonlines", "application/jsonlines", jsonl_lines),
    ],
    ids=["csv", "jsonl"],
)
def test_batch_transform_through_the_pipeline(pipeline, content_type, accept, lines):
    """A batch transform of unlabelled records through both containers (environment
    only, no custom attributes): one answer line per input line, in input order."""
    X, _ = labelled(70, seed=4)
    out = batch_transform(
        [pipeline.featurizer, pipeline.classifier], lines(X), content_type, accept
    )
    assert len(out) == len(X)
    labels = [json.loads(line) if accept != "text/csv" else line for line in out]
    labels = [
        label.decode().rstrip("\n") if isinstance(label, bytes) else label
        for label in labels
    ]
    assert labels == pipeline.expected(X)


def test_a_bad_record_stops_the_pipeline_at_the_featurizer(pipeline):
    """A record of the wrong width fails at the first container: the caller gets its 400
    and its detail (SageMaker hands it on as a ModelError), the classifier never runs."""
    status, headers, body = chain(
        [pipeline.featurizer, pipeline.classifier],
        b"1,2,3\n",
        "text/csv",
        "application/json",
    )
    assert status == HTTPStatus.BAD_REQUEST
    assert body.decode().strip() == "Expected 4 features per record, got 3."


def test_npy_answer_from_the_featurizer_is_a_float_matrix(pipeline):
    """The featurizer in NPY: "the 2-D float array" of ``transform``, which the next
    container reads as ``application/x-npy``."""
    X, _ = labelled(4, seed=5)
    status, _, body = pipeline.featurizer.invoke(
        b"".join(csv_lines(X)), "text/csv", Accept="application/x-npy"
    )
    assert status == HTTPStatus.OK, body
    array = np.load(io.BytesIO(body), allow_pickle=False)
    assert array.dtype == np.float64
    assert np.allclose(
        array, pipeline.featurizer_model.transform(X), rtol=0, atol=1e-12
    )
    status, _, answer = pipeline.classifier.invoke(
        body, "application/x-npy", Accept="application/json"
    )
    assert status == HTTPStatus.OK, answer
    assert json.loads(answer)["predictions"] == pipeline.expected(X)
