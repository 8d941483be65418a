"""Tables with text columns compiled (``modelapp/predictors/table_onnx.py``): the pipelines
``train`` writes (and the same trained elsewhere) are served by ONNX Runtime when verified,
answering scikit-learn's labels and probabilities on records with gaps and unknown
categories; a graph that answers otherwise is caught; the log line and the admin say which
engine serves each method, and why. And the batch-size rule between engines is stable."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import joblib
import numpy as np
import onnx
import pandas as pd
import pytest

from modelapp.batch import Batch
from modelapp.exceptions import InvalidInput
from modelapp.metadata import CATEGORICAL, Feature
from modelapp.predictors import compiled as compiled_engine
from modelapp.predictors.table_onnx import MISSING
from modelapp.registry import load_model
from modelapp.training.encoding import prepare
from modelapp.training.estimators import resolve
from tests.support import ROOT
from tests.support.admin import ADMIN_PASSWORD, ADMIN_USER, AdminClient
from tests.support.models import write_model
from tests.support.servers import ServeProcess, ServerDatabase
from tests.support.tables import (
    CATEGORICAL as TEXT_COLUMNS,
)
from tests.support.tables import (
    FEATURES,
    TARGET,
    churn_frame,
    fitted_elsewhere,
    own_answer,
)
from tests.support.training import train_env

ONNX, SKLEARN = compiled_engine.ENGINE, compiled_engine.SKLEARN
RTOL, ATOL = compiled_engine.RTOL, compiled_engine.ATOL
PROBA = {"X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"}
LOG_PROBA = {"X-Amzn-SageMaker-Custom-Attributes": "method=predict_log_proba"}
# Short name -> the encoding train picks for it (training/encoding.py).
ENCODINGS = {
    "random_forest": "OrdinalEncoder, passthrough",  # NaN codes reach the trees
    "gradient_boosting": "OrdinalEncoder, SimpleImputer",  # -1 codes, medians
    "hist_gradient_boosting": "OrdinalEncoder, passthrough",  # native categories
    "logistic_regression": "OneHotEncoder, SimpleImputer",  # infrequent countries
}


def held_out() -> pd.DataFrame:
    """Held-out rows with gaps (plan, tenure, spend), unseen countries and payments,
    and a record with no text at all."""
    rows = churn_frame(200, seed=9)[FEATURES]
    rows.loc[rows.index[0], "country"] = "NZ"
    rows.loc[rows.index[1], ["plan", "tenure"]] = np.nan
    rows.loc[rows.index[2], "payment"] = "crypto"
    rows.loc[rows.index[3], TEXT_COLUMNS] = np.nan
    rows.loc[rows.index[4:40:3], "country"] = "AU"
    return rows


def cells(rows: pd.DataFrame) -> list[list]:
    """Rows as a request's fields: NaN as None."""
    return [
        [None if isinstance(v, float) and math.isnan(v) else v for v in row]
        for row in rows.astype(object).itertuples(index=False)
    ]


def trained_here(name: str) -> object:
    """The pipeline train builds for the churn table with estimator ``name``, fitted."""
    frame = churn_frame(400, seed=0)
    features = [
        Feature(name=c, kind=CATEGORICAL if c in TEXT_COLUMNS else "numeric")
        for c in FEATURES
    ]
    estimator = resolve(name).set_params(random_state=0)
    if name == "logistic_regression":
        estimator.set_params(max_iter=1000)
    model, _ = prepare(estimator, features, named=True, has_missing=True)
    return model.fit(frame[FEATURES], frame[TARGET])


def assert_answers_as_sklearn(predictor, model) -> None:
    rows = held_out()
    batch = Batch(rows=cells(rows))
    assert (
        predictor.predict(batch).tolist() == own_answer(model, "predict", rows).tolist()
    )
    np.testing.assert_allclose(
        predictor.predict(batch, "predict_proba"),
        own_answer(model, "predict_proba", rows),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_trained_table_pipelines_are_compiled(name, tmp_path):
    """Each encoding train picks (ordinal with NaN or -1 codes, native categories,
    one-hot with infrequent categories; medians or the estimator's own gaps) converts,
    passes verification and answers as the pipeline does on held-out records with gaps
    and unknown categories."""
    model = trained_here(name)
    write_model(tmp_path, model)
    predictor = load_model(tmp_path / "model").predictor
    report = predictor.engine_report
    assert report.methods["predict"] == ONNX, report.why
    assert report.methods["predict_proba"] == ONNX, report.why
    assert report.model.startswith(f"Pipeline(ColumnTransformer({ENCODINGS[name]})")
    assert report.records == compiled_engine.TABLE_RECORDS
    assert report.why["predict"].startswith("verified on 2000 records")
    assert_answers_as_sklearn(predictor, model)


def test_a_pipeline_trained_elsewhere_is_compiled(tmp_path):
    """A bare model.joblib (one-hot ignoring unknowns, a mean imputer, a logistic
    regression) without metadata.json: compiled, with scikit-learn's answers."""
    model = fitted_elsewhere()
    write_model(tmp_path, model)
    predictor = load_model(tmp_path / "model").predictor
    assert predictor.engine_report.methods["predict"] == ONNX
    assert_answers_as_sklearn(predictor, model)


def test_a_perturbed_table_graph_is_caught(tmp_path):
    """A graph whose encoder reads two plans the other way round (model.onnx beside
    the model, as train writes one) answers otherwise on the verification records:
    scikit-learn serves every method, and the report says why."""
    model = trained_here("random_forest")
    predictor = load_model(write_model(tmp_path, model).parent).predictor
    graph = onnx.load_from_string(
        compiled_engine.convert_table(
            model, predictor.schema.features, predictor.schema.labels
        )
    )
    swapped = 0
    for node in graph.graph.node:
        if node.op_type == "LabelEncoder" and node.input[0] == "c1":  # plan
            for attr in node.attribute:
                if attr.name == "values_int64s":
                    values = list(attr.ints)
                    values[0], values[1] = values[1], values[0]
                    del attr.ints[:]
                    attr.ints.extend(values)
                    swapped += 1
    assert swapped == 1
    (tmp_path / "model" / "model.onnx").write_bytes(graph.SerializeToString())
    (tmp_path / "model" / "metadata.json").write_text(
        json.dumps({"compiled": {"onnx": "model.onnx"}})
    )
    predictor = load_model(tmp_path / "model").predictor
    report = predictor.engine_report
    assert report.source == "model.onnx written by train"
    assert set(report.methods.values()) == {SKLEARN}
    assert re.search(
        r"verification failed for predict: \d+ of 2000 labels", report.reason
    )
    assert report.why["predict"].startswith("verification failed (")
    assert_answers_as_sklearn(predictor, model)


def test_a_table_pipeline_that_does_not_convert_says_why(tmp_path):
    """An encoder for which an unknown category is an error is not converted (the
    error is scikit-learn's to raise): every method by scikit-learn, each saying why."""
    write_model(tmp_path, fitted_elsewhere(handle_unknown="error"))
    report = load_model(tmp_path / "model").predictor.engine_report
    assert set(report.methods.values()) == {SKLEARN}
    assert report.why["predict"] == "not compiled: cat: an unknown category is an error"


def test_text_in_a_passed_through_column_is_refused_as_without_the_engine(tmp_path):
    """A bare model.joblib says nothing of its passed-through columns: a batch with
    text in one goes to scikit-learn, whose refusal is the caller's 400."""
    write_model(tmp_path, trained_here("random_forest"))
    predictor = load_model(tmp_path / "model").predictor
    assert predictor.engine_report.methods["predict"] == ONNX
    record = cells(held_out())[5]
    record[FEATURES.index("tenure")] = "old"
    with pytest.raises(InvalidInput, match="Record 1"):
        predictor.predict(Batch(rows=[record]))


def test_missing_text_is_fed_as_its_own_marker():
    """A missing text field reaches the graph as MISSING, never as the text "nan"."""
    from modelapp.predictors.table_onnx import feeds

    features = [Feature(name="plan", kind=CATEGORICAL), Feature(name="tenure")]
    data = {
        "plan": np.array(["pro", math.nan], dtype=object),
        "tenure": np.array([3.0, math.nan]),
    }
    fed = feeds(data, features, ["plan", "tenure"], np.float32)
    assert fed["c0"].tolist() == ["pro", MISSING]
    assert fed["numbers"].dtype == np.float32
    assert np.isnan(fed["numbers"][1, 0])


# --- the batch-size rule ---------------------------------------------------------------
# Costs in seconds of (engine on 1 record, engine on 1,000, scikit-learn on 1, on 1,000).
RULE_CASES = {
    "engine cheaper per record": ((0.02e-3, 10e-3, 4e-3, 20e-3), None),
    "the same per record": ((0.02e-3, 10e-3, 4e-3, 14e-3), None),
    "scikit-learn far cheaper per record": ((0.02e-3, 27e-3, 4e-3, 9e-3), 128),
    "scikit-learn cheaper at any size": ((0.03e-3, 30e-3, 0.01e-3, 10e-3), 0),
    "scikit-learn cheaper per record, level on one": ((8e-6, 1e-3, 9e-6, 0.1e-3), 0),
}


@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_the_batch_size_rule_is_stable_under_noise(case):
    """Measurements up to 10% apart (a busy machine) give the same decision: the engine
    keeps every batch unless scikit-learn is clearly cheaper per record; then it keeps
    small batches only if it is clearly cheaper on one record (a single tree, which
    skips its own validation, is level there: not compiled), up to a power of two."""
    costs, expected = RULE_CASES[case]
    rng = np.random.default_rng(0)
    decisions = {
        compiled_engine.crossover_limit(*(c * rng.uniform(0.95, 1.05) for c in costs))
        for _ in range(500)
    }
    assert decisions == {expected}


# --- the real train and the real server -----------------------------------------------
@pytest.fixture(scope="module")
def churn_channels(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("churn")
    churn_frame(400, seed=0).to_csv(work / "train.csv", index=False)
    return work


@pytest.fixture(
    scope="module", params=["random_forest", "hist_gradient_boosting"], ids=str
)
def trained(request, churn_channels, tmp_path_factory) -> Iterator:
    """The real ``train`` on the churn CSV, then two real servers on its model: the
    engine on (2 workers, the admin on) and off."""
    name = request.param
    work = tmp_path_factory.mktemp(name)
    base = work / "ml"
    done = subprocess.run(
        [str(ROOT / "train"), "--base-dir", str(base)]
        + ["--channel", f"train={churn_channels / 'train.csv'}"]
        + ["--hp", f"smserve_target_column={TARGET}", "--hp", "smserve_random_seed=3"]
        + ["--hp", f"smserve_estimator={name}"],
        cwd=ROOT,
        env=train_env(None, work / "train-state"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    db = ServerDatabase.create(work / "db")
    admin = {
        **db.env,
        "SMSERVE_ADMIN_ENABLED": "1",
        "SMSERVE_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SUPERUSER_USERNAME": ADMIN_USER,
        "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
        "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
        "SMSERVE_STATIC_ROOT": str(work / "static"),
    }
    (work / "on").mkdir()
    (work / "off").mkdir()
    on = ServeProcess(base, work / "on", env=admin, workers=2)
    off = ServeProcess(
        base, work / "off", env={"SMSERVE_COMPILED_ENGINE": "off"}, workers=1
    )
    try:
        on.start()
        off.start()
        yield name, on, off, db, joblib.load(base / "model" / "model.joblib")
    finally:
        on.stop()
        off.stop()
        db.drop()


def served(server: ServeProcess, body: bytes, **headers) -> list:
    status, _, answer = server.invoke(
        body, "text/csv", Accept="application/json", **headers
    )
    assert status == HTTPStatus.OK, answer
    return json.loads(answer)["predictions"]


@pytest.mark.server
def test_served_with_the_engine_on_and_off(trained):
    """Held-out records with gaps and unknown categories: with the engine on and off the
    labels are the saved pipeline's own, probabilities within the engine's tolerance
    (off: scikit-learn's to the last digit), and predict_log_proba (not in the graph)
    is scikit-learn's on both. The start-up log says which engine serves each method,
    and why."""
    name, on, off, _, model = trained
    rows = held_out()
    body = rows.to_csv(index=False, header=False).encode()
    labels = own_answer(model, "predict", rows).tolist()
    proba = own_answer(model, "predict_proba", rows)
    for server in (on, off):
        assert served(server, body) == labels
        np.testing.assert_allclose(served(server, body, **PROBA), proba, RTOL, ATOL)
    np.testing.assert_allclose(served(off, body, **PROBA), proba, rtol=0, atol=1e-12)
    if name == "random_forest":
        # log(0) is -inf, which JSON writes as null.
        log_proba = own_answer(model, "predict_log_proba", rows)
        log_proba[np.isinf(log_proba)] = np.nan
        for server in (on, off):
            got = np.array(served(server, body, **LOG_PROBA), dtype=float)
            np.testing.assert_allclose(got, log_proba)
    assert re.search(
        rf"Engines for Pipeline\(ColumnTransformer\({ENCODINGS[name]}\), \w+\): "
        r"predict by onnxruntime, predict_proba by onnxruntime, \w+ by scikit-learn "
        r"\(verified on every record; 2000 verification records, .*; converted at "
        r"start-up; .*\)\. Why: predict: verified on 2000 records.*; "
        r"\w+: the graph does not compute it\.",
        on.log,
    ), on.log
    assert re.search(
        r"Engines for Pipeline\(.*\): every method by scikit-learn \(off "
        r"\(SMSERVE_COMPILED_ENGINE\)\)\. Why: predict: off \(SMSERVE_COMPILED_ENGINE\)",
        off.log,
    ), off.log


@pytest.mark.server
def test_the_admin_says_which_engine_serves_each_method(trained):
    """The model's admin page lists each method's engine and why."""
    _, on, _, db, _ = trained
    client = AdminClient(on.port)
    status, _, _ = client.login(ADMIN_USER, ADMIN_PASSWORD)
    assert status == HTTPStatus.FOUND
    (pk,) = db.query("SELECT id FROM modelapp_trainedmodel")[0]
    status, _, page = client.get(f"/admin/modelapp/trainedmodel/{pk}/change/")
    assert status == HTTPStatus.OK
    assert (
        '<th scope="row">methods.predict</th><td><code>onnxruntime</code></td>' in page
    )
    assert re.search(
        r'<th scope="row">why.predict</th><td><code>verified on 2000 records', page
    )
    assert re.search(
        r'<th scope="row">why.\w+</th><td><code>the graph does not compute it', page
    )
