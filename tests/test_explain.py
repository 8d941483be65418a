"""``method=explain`` through the real server: each explainer (tree, linear, sampling) in
JSON, JSON Lines and CSV, attributions equal to the ``shap`` package's own, the cap on
records, and a model that cannot be explained saying so."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
import shap
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier

from tests.support.explain_models import SharpenedForest
from tests.support.models import write_model
from tests.support.servers import ServeProcess

X, Y = make_classification(240, 5, n_informative=3, random_state=0)
TRAIN, HELD_OUT = slice(0, 200), slice(200, 206)
BACKGROUND = X[:40]
# The same records with missing values, which HistGradientBoosting learns where to send.
GAPPY = np.where(np.random.default_rng(0).random(X.shape) < 0.15, np.nan, X)
FORMATS = ("application/json", "application/jsonlines", "text/csv")

pytestmark = pytest.mark.server


def explain_header(**extra: str) -> dict[str, str]:
    value = ", ".join(["method=explain", *(f"{k}={v}" for k, v in extra.items())])
    return {"X-Amzn-SageMaker-Custom-Attributes": value}


def csv_body(rows: np.ndarray) -> bytes:
    """One line per record; a missing value (NaN) is a blank field."""
    return "".join(
        ",".join("" if v != v else repr(v) for v in row) + "\n" for row in rows.tolist()
    ).encode()


def explained(
    server: ServeProcess, rows: np.ndarray, accept: str = "application/json", **extra
) -> list:
    """The answer's records: objects for JSON and JSON Lines, rows of fields for CSV."""
    status, headers, body = server.invoke(
        csv_body(rows), "text/csv", Accept=accept, **explain_header(**extra)
    )
    assert status == HTTPStatus.OK, body
    assert headers["content-type"] == accept
    text = body.decode()
    if accept == "application/json":
        return json.loads(text)["explanations"]
    if accept == "application/jsonlines":
        return [json.loads(line) for line in text.splitlines()]
    return list(csv.reader(io.StringIO(text)))


def serve(tmp_path_factory, name: str, model, env: dict | None = None) -> Iterator:
    work = tmp_path_factory.mktemp(name)
    write_model(work / "ml", model)
    # train's sample of the training rows: the background of linear and sampling models.
    np.save(work / "ml" / "model" / "verification.npy", BACKGROUND)
    server = ServeProcess(
        work / "ml",
        work,
        env={"SMSERVE_COMPILED_ENGINE": "false", **(env or {})},
        workers=1,
    ).start()
    try:
        yield server, model
    finally:
        server.stop()


@pytest.fixture(scope="module")
def forest(tmp_path_factory) -> Iterator:
    model = RandomForestClassifier(12, random_state=0).fit(X[TRAIN], Y[TRAIN])
    yield from serve(
        tmp_path_factory, "forest", model, {"SMSERVE_EXPLAIN_MAX_RECORDS": "6"}
    )


@pytest.fixture(scope="module")
def boosted(tmp_path_factory) -> Iterator:
    model = HistGradientBoostingClassifier(max_iter=15, random_state=0)
    yield from serve(tmp_path_factory, "hgb", model.fit(GAPPY[TRAIN], Y[TRAIN]))


@pytest.fixture(scope="module")
def logistic(tmp_path_factory) -> Iterator:
    model = LogisticRegression().fit(X[TRAIN], Y[TRAIN])
    yield from serve(tmp_path_factory, "logistic", model)


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Iterator:
    """A model neither a tree nor linear: the sampling explainer."""
    model = KNeighborsClassifier(7).fit(X[TRAIN], Y[TRAIN])
    yield from serve(tmp_path_factory, "knn", model)


def attributions(record: dict) -> np.ndarray:
    return np.array(list(record["attributions"].values()))


def test_forest_attributions_equal_shaps_in_every_format(forest):
    """A forest's explanation: the predicted class's probability, its base value and
    exact TreeSHAP attributions (shap's own to 1e-6), keyed by column, adding up to the
    probability; JSON, JSON Lines and CSV say the same (docs/explain.md)."""
    server, model = forest
    rows = X[HELD_OUT]
    reference = shap.TreeExplainer(model).shap_values(
        rows
    )  # (records, features, classes)
    proba = model.predict_proba(rows)
    answers = {accept: explained(server, rows, accept) for accept in FORMATS}
    as_json = answers["application/json"]
    assert answers["application/jsonlines"] == as_json
    for r, record in enumerate(as_json):
        k = int(proba[r].argmax())
        assert record["explainer"] == "tree"
        assert record["output"] == "probability"
        assert record["label"] == model.classes_[k]
        assert list(record["attributions"]) == ["0", "1", "2", "3", "4"]
        np.testing.assert_allclose(attributions(record), reference[r, :, k], atol=1e-6)
        assert record["value"] == pytest.approx(proba[r, k], abs=1e-9)
        total = record["base_value"] + attributions(record).sum()
        assert total == pytest.approx(record["value"], abs=1e-9)
        line = answers["text/csv"][r]
        assert line[0] == str(record["label"])
        numbers = [float(v) for v in line[1:]]
        assert numbers == [record["value"], record["base_value"], *attributions(record)]


def test_every_class_on_request(forest):
    """``explain_classes=all``: one explanation per class, in the model's class order,
    each adding up to that class's probability; CSV repeats the block per class."""
    server, model = forest
    rows = X[HELD_OUT][:2]
    proba = model.predict_proba(rows)
    for r, record in enumerate(explained(server, rows, explain_classes="all")):
        assert [c["label"] for c in record["classes"]] == model.classes_.tolist()
        for k, one in enumerate(record["classes"]):
            assert one["value"] == pytest.approx(proba[r, k], abs=1e-9)
            total = one["base_value"] + attributions(one).sum()
            assert total == pytest.approx(proba[r, k], abs=1e-9)
    lines = explained(server, rows, "text/csv", explain_classes="all")
    assert [len(line) for line in lines] == [2 * (3 + 5)] * 2


def test_records_past_the_cap_are_a_413_naming_it(forest):
    """`SMSERVE_EXPLAIN_MAX_RECORDS` caps the records of one explain request: past it a
    413 that names the cap; predictions are not capped.
    docs/serving.md, Errors: "`method=explain` with more records than
    `SMSERVE_EXPLAIN_MAX_RECORDS` (the detail names the cap)"."""
    server, _ = forest
    body = csv_body(X[:7])
    status, _, answer = server.invoke(
        body, "text/csv", Accept="application/json", **explain_header()
    )
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    error = json.loads(answer)
    assert error["code"] == "too_many_records"
    assert "at most 6 records" in error["detail"]
    assert "SMSERVE_EXPLAIN_MAX_RECORDS" in error["detail"]
    status, _, _ = server.invoke(body, "text/csv", Accept="application/json")
    assert status == HTTPStatus.OK


def test_npy_is_not_an_explanation_format(forest):
    """An explanation is JSON, JSON Lines or CSV: asking for NPY is a 406 listing them."""
    server, _ = forest
    status, _, answer = server.invoke(
        csv_body(X[:1]), "text/csv", Accept="application/x-npy", **explain_header()
    )
    assert status == HTTPStatus.NOT_ACCEPTABLE
    assert b"application/jsonlines" in answer


def test_boosted_model_explains_its_raw_score(boosted):
    """HistGradientBoosting: the raw score (log-odds) of the positive class, exact
    TreeSHAP equal to shap's to 1e-6, in every format; records with missing values go
    where the model sends them."""
    server, model = boosted
    rows = GAPPY[HELD_OUT]
    assert np.isnan(rows).any()
    reference = shap.TreeExplainer(model).shap_values(rows)
    raw = model.decision_function(rows)
    answers = {accept: explained(server, rows, accept) for accept in FORMATS}
    assert answers["application/jsonlines"] == answers["application/json"]
    for r, record in enumerate(answers["application/json"]):
        assert (record["explainer"], record["output"]) == ("tree", "raw_score")
        assert record["label"] == model.classes_[1]
        np.testing.assert_allclose(attributions(record), reference[r], atol=1e-6)
        assert record["value"] == pytest.approx(raw[r], abs=1e-9)
        line = [float(v) for v in answers["text/csv"][r][1:]]
        assert line == [record["value"], record["base_value"], *attributions(record)]


def test_linear_model_attributions_equal_shaps(logistic):
    """A logistic regression: exact attributions ``coef * (x - mean of the background)``
    with train's sample of the training rows as background, equal to shap's
    LinearExplainer to 1e-6; the raw score they add up to; every format."""
    server, model = logistic
    rows = X[HELD_OUT]
    reference = shap.LinearExplainer(model, BACKGROUND).shap_values(rows)
    raw = model.decision_function(rows)
    answers = {accept: explained(server, rows, accept) for accept in FORMATS}
    assert answers["application/jsonlines"] == answers["application/json"]
    for r, record in enumerate(answers["application/json"]):
        assert (record["explainer"], record["output"]) == ("linear", "raw_score")
        np.testing.assert_allclose(attributions(record), reference[r], atol=1e-6)
        assert record["value"] == pytest.approx(raw[r], abs=1e-9)
        line = [float(v) for v in answers["text/csv"][r][1:]]
        assert line == [record["value"], record["base_value"], *attributions(record)]


def test_other_models_use_the_sampling_explainer_and_state_its_error(other):
    """A model that is neither a tree nor linear (k nearest neighbours) is explained by
    sampling: the answer says so and states its error bound; the attributions still add
    up to the predicted class's probability."""
    server, model = other
    rows = X[HELD_OUT][:2]
    proba = model.predict_proba(rows)
    answers = {accept: explained(server, rows, accept) for accept in FORMATS}
    assert answers["application/jsonlines"] == answers["application/json"]
    for r, record in enumerate(answers["application/json"]):
        assert (record["explainer"], record["output"]) == ("sampling", "probability")
        assert record["error_bound"] > 0
        assert record["value"] == pytest.approx(proba[r].max(), abs=1e-9)
        total = record["base_value"] + attributions(record).sum()
        assert total == pytest.approx(record["value"], abs=1e-9)
        line = [float(v) for v in answers["text/csv"][r][1:]]
        assert line == [
            record["value"],
            record["base_value"],
            *attributions(record),
            record["error_bound"],
        ]


def test_a_regressor_explains_its_value(tmp_path_factory):
    """A regressor: its value, no label (an empty first CSV field), the attributions
    adding up to its prediction."""
    Xr, yr = make_regression(120, 4, random_state=1)
    model = Ridge().fit(Xr, yr)
    work = tmp_path_factory.mktemp("ridge")
    write_model(work / "ml", model)
    server = ServeProcess(work / "ml", work, workers=1).start()
    try:
        (record,) = explained(server, Xr[:1])
        assert (record["explainer"], record["output"]) == ("linear", "value")
        assert record["label"] is None
        assert record["value"] == pytest.approx(model.predict(Xr[:1])[0])
        total = record["base_value"] + attributions(record).sum()
        assert total == pytest.approx(record["value"], rel=1e-9)
        (line,) = explained(server, Xr[:1], "text/csv")
        assert line[0] == ""
    finally:
        server.stop()


def test_a_model_without_explainer_refuses_clearly(tmp_path: Path):
    """A pipeline whose columns cannot be traced back and that takes text (no sampling
    over text) still predicts, and refuses ``explain`` with a 400 saying why.
    docs/serving.md, Errors: "`method=explain` for a model no explainer serves (the
    detail says why)"."""
    from sklearn.compose import make_column_transformer
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from tests.support.tables import CATEGORICAL, FEATURES, TARGET, churn_frame

    frame = churn_frame(120).dropna()
    model = make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL),
            remainder="passthrough",
        ),
        PCA(3),
        LogisticRegression(),
    ).fit(frame[FEATURES], frame[TARGET])
    write_model(tmp_path / "ml", model)
    server = ServeProcess(tmp_path / "ml", tmp_path, workers=1).start()
    try:
        body = frame[FEATURES].head(1).to_csv(header=False, index=False).encode()
        status, _, _ = server.invoke(body, "text/csv", Accept="application/json")
        assert status == HTTPStatus.OK
        status, _, answer = server.invoke(
            body, "text/csv", Accept="application/json", **explain_header()
        )
        assert status == HTTPStatus.BAD_REQUEST
        error = json.loads(answer)
        assert error["code"] == "not_explainable"
        assert "PCA" in error["detail"]
    finally:
        server.stop()


def test_a_model_whose_attributions_do_not_add_up_refuses(tmp_path: Path):
    """Additivity is checked at load on the warm-up records: a forest whose
    probabilities are not its trees' mean still predicts, says so in the log, and
    refuses ``explain`` naming the sums that differ."""
    model = SharpenedForest(5, random_state=0).fit(X[TRAIN], Y[TRAIN])
    write_model(tmp_path / "ml", model)
    server = ServeProcess(tmp_path / "ml", tmp_path, workers=1).start()
    try:
        body = csv_body(X[:1])
        status, _, _ = server.invoke(body, "text/csv", Accept="application/json")
        assert status == HTTPStatus.OK
        status, _, answer = server.invoke(
            body, "text/csv", Accept="application/json", **explain_header()
        )
        assert status == HTTPStatus.BAD_REQUEST
        error = json.loads(answer)
        assert error["code"] == "not_explainable"
        assert "add up to" in error["detail"]
        assert "but the model answers" in error["detail"]
        assert "Explanations of SharpenedForest refused" in server.log
    finally:
        server.stop()


def test_gradient_boosting_explains_its_raw_score(tmp_path: Path):
    """GradientBoosting: the raw score (log-odds) its decision_function gives, exact
    TreeSHAP equal to shap's to 1e-6."""
    model = GradientBoostingClassifier(n_estimators=20, random_state=0)
    model.fit(X[TRAIN], Y[TRAIN])
    write_model(tmp_path / "ml", model)
    server = ServeProcess(tmp_path / "ml", tmp_path, workers=1).start()
    try:
        rows = X[HELD_OUT]
        reference = shap.TreeExplainer(model).shap_values(rows)
        raw = model.decision_function(rows)
        for r, record in enumerate(explained(server, rows)):
            assert (record["explainer"], record["output"]) == ("tree", "raw_score")
            np.testing.assert_allclose(attributions(record), reference[r], atol=1e-6)
            assert record["value"] == pytest.approx(raw[r], abs=1e-9)
    finally:
        server.stop()


def test_the_tree_explainer_is_built_once_before_the_fork(forest):
    """The master builds the explainer where it loads the model, before gunicorn forks
    its workers, which share it: its one log line is the master's."""
    server, _ = forest
    lines = [
        line
        for line in server.log.splitlines()
        if "Explanations of RandomForestClassifier: the tree explainer" in line
    ]
    assert len(lines) == 1, lines
    assert f"[{server.gunicorn_master()}]" in lines[0]
