"""A churn table end to end: the real ``train`` on a header CSV with text columns, gaps
and text labels, then the real ``serve``; every request format answers what the saved
model's own ``predict`` / ``predict_proba`` answers on the same rows as a DataFrame. And a
ColumnTransformer pipeline trained elsewhere serves from a bare model.joblib."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from modelapp.predictors.compiled import ATOL, RTOL
from tests.support import ROOT
from tests.support.models import write_model
from tests.support.servers import ServeProcess
from tests.support.tables import (
    FEATURES,
    TARGET,
    churn_frame,
    fitted_elsewhere,
    own_answer,
)
from tests.support.training import train_env

pytestmark = pytest.mark.server

ESTIMATORS = {
    "random_forest": ["n_estimators=20"],
    "hist_gradient_boosting": ["max_iter=30"],
    "logistic_regression": ["max_iter=1000"],
    "user_pipeline": [
        'smserve_estimator=["standard_scaler", "logistic_regression"]',
        "logisticregression__C=0.5",
    ],
}
PROBA = {"X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"}


def requests_rows() -> pd.DataFrame:
    """Held-out rows with gaps, plus an unseen country and a record with no plan."""
    rows = churn_frame(24, seed=9)[FEATURES]
    rows.loc[rows.index[0], "country"] = "NZ"
    rows.loc[rows.index[1], ["plan", "tenure"]] = np.nan
    return rows


def cells(rows: pd.DataFrame) -> list[list]:
    """JSON-ready rows: NaN as null."""
    return [
        [None if isinstance(v, float) and math.isnan(v) else v for v in row]
        for row in rows.astype(object).itertuples(index=False)
    ]


def bodies(rows: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    """One request body per format, all holding ``rows``."""
    as_lists = cells(rows)
    objects = [dict(zip(FEATURES, row, strict=True)) for row in as_lists]
    reordered = rows[FEATURES[::-1]]
    return {
        "csv": (rows.to_csv(index=False, header=False).encode(), "text/csv"),
        "csv with header": (
            reordered.to_csv(index=False).encode(),
            "text/csv; header=present",
        ),
        "json arrays": (
            json.dumps({"instances": as_lists}).encode(),
            "application/json",
        ),
        "json objects": (json.dumps(objects).encode(), "application/json"),
        "json lines": (
            "".join(json.dumps(o) + "\n" for o in objects).encode(),
            "application/jsonlines",
        ),
    }


def predictions(server: ServeProcess, body: bytes, content_type: str, **headers):
    status, _, answer = server.invoke(
        body, content_type, Accept="application/json", **headers
    )
    assert status == HTTPStatus.OK, answer
    return json.loads(answer)["predictions"]


@pytest.fixture(scope="module")
def channels(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("churn")
    churn_frame(300, seed=0).to_csv(work / "train.csv", index=False)
    churn_frame(80, seed=1).to_csv(work / "validation.csv", index=False)
    return work


@pytest.fixture(scope="module", params=sorted(ESTIMATORS))
def trained(request, channels, tmp_path_factory) -> Iterator:
    """The real ``train`` (a subprocess) then the real ``serve`` on its model."""
    name = request.param
    work = tmp_path_factory.mktemp(name)
    base = work / "ml"
    hp = [f"smserve_estimator={name}", *ESTIMATORS[name]]
    if name == "user_pipeline":
        hp = ESTIMATORS[name]
    done = subprocess.run(
        [str(ROOT / "train"), "--base-dir", str(base)]
        + ["--channel", f"train={channels / 'train.csv'}"]
        + ["--channel", f"validation={channels / 'validation.csv'}"]
        + ["--hp", f"smserve_target_column={TARGET}", "--hp", "smserve_random_seed=3"]
        + [arg for item in hp for arg in ("--hp", item)],
        cwd=ROOT,
        env=train_env(None, work / "train-state"),  # never the checkout's var/
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "#metric validation:accuracy=" in done.stdout + done.stderr
    server = ServeProcess(base, work, workers=1).start()
    try:
        yield server, joblib.load(base / "model" / "model.joblib")
    finally:
        server.stop()


def test_every_format_answers_what_the_model_answers(trained):
    """CSV (positional and with a header in another order), JSON arrays and objects,
    JSON Lines: labels equal the model's own on the DataFrame, probabilities within
    the compiled engine's tolerance (it serves these pipelines: test_tables_compiled.py).
    docs/serving.md, Formats: Content-Type: "text fields for a model with text columns".
    """
    server, model = trained
    rows = requests_rows()
    labels = own_answer(model, "predict", rows).tolist()
    proba = own_answer(model, "predict_proba", rows)
    for fmt, (body, content_type) in bodies(rows).items():
        got = predictions(server, body, content_type)
        assert got == labels, fmt
        got = predictions(server, body, content_type, **PROBA)
        assert np.allclose(got, proba, rtol=RTOL, atol=ATOL), fmt


def test_text_in_a_number_column_is_a_400(trained):
    server, _ = trained
    status, _, body = server.invoke(
        b"12,pro,30,DE,1,card\nold,pro,30,DE,1,card\n", "text/csv"
    )
    assert status == HTTPStatus.BAD_REQUEST
    assert "Record 2, feature 'tenure': 'old' is not a number" in body.decode()


def test_bare_column_transformer_pipeline_serves(tmp_path, serve_factory):
    """The issue's pipeline, joblib.dump'ed elsewhere with no metadata.json: /ping turns
    200, records by position or by name get its predictions, bad fields are 400s."""
    model = fitted_elsewhere()
    write_model(tmp_path, model)
    server = serve_factory(tmp_path, workers=1)
    rows = requests_rows()
    for fmt in ("csv", "json objects"):
        body, content_type = bodies(rows)[fmt]
        expected = own_answer(model, "predict", rows).tolist()
        assert predictions(server, body, content_type) == expected
    status, _, body = server.invoke(
        b'[{"tenure": 3, "plan": "pro"}]', "application/json"
    )
    assert status == HTTPStatus.BAD_REQUEST
    assert "Record 1 lacks 'spend'" in body.decode()
    status, _, body = server.invoke(b"3,pro,x,DE,1,card\n", "text/csv")
    assert status == HTTPStatus.BAD_REQUEST
    assert "Record 1, feature 'spend': 'x' is not a number" in body.decode()


def test_a_record_the_model_refuses_is_named(tmp_path, serve_factory):
    """docs/serving.md, Errors, `invalid_input`: "a record the model itself rejects (its
    `ValueError`, e.g. an unknown category for an encoder that refuses them: the record
    is named)": a pipeline trained elsewhere with ``handle_unknown="error"``, a batch
    whose fourth record has an unseen country. And Formats, CSV: "quoted fields keep
    their commas" (a quoted country with a comma is one field, a category the model
    has not seen)."""
    model = fitted_elsewhere(handle_unknown="error")
    write_model(tmp_path, model)
    server = serve_factory(tmp_path, workers=1)
    rows = churn_frame(6, seed=4)[FEATURES]
    rows["country"] = "DE"
    rows.loc[rows.index[3], "country"] = "NZ"
    body = rows.to_csv(index=False, header=False).encode()
    status, _, answer = server.invoke(body, "text/csv", Accept="application/json")
    assert status == HTTPStatus.BAD_REQUEST
    detail = json.loads(answer)
    assert detail["code"] == "invalid_input"
    assert detail["detail"].startswith(
        "Record 4, feature 'country': 'NZ' is not a category the model was trained with"
    ), detail
    quoted = b'3,pro,12.5,"Auckland, NZ",1,card\n'
    status, _, answer = server.invoke(quoted, "text/csv", Accept="application/json")
    assert status == HTTPStatus.BAD_REQUEST
    assert "'Auckland, NZ' is not a category" in json.loads(answer)["detail"]
