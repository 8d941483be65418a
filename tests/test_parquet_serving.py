"""Parquet on /invocations through the real server (``modelapp/parquet.py``): the iris
tree (numbers, no feature names) and a churn table with text columns fitted by the real
``./train``; Parquet in and CSV or JSON out, CSV in and Parquet out, Parquet both ways
under the aliases, and every way a Parquet body can be wrong. Each module server is
started once and shared by its tests."""

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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelapp.predictors.compiled import ATOL, RTOL
from tests.support.servers import ServeProcess
from tests.support.tables import FEATURES, TARGET, churn_frame, own_answer
from tests.support.training import run_train

pytestmark = pytest.mark.server

PARQUET = "application/x-parquet"
PROBA = {"X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"}
COLUMNS = [*FEATURES, "paperless"]
IRIS_COLUMNS = ["sepal length", "sepal width", "petal length", "petal width"]


def parquet(frame: pd.DataFrame, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, **kwargs)
    return buffer.getvalue()


def read(body: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(body))


def csv(rows: pd.DataFrame) -> bytes:
    return rows.to_csv(index=False, header=False).encode()


def mapped_packages(pid: int) -> set[str]:
    """The installed packages whose files ``pid`` maps (as test_lean_imports.py)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return set(re.findall(r"/site-packages/([^/\s]+)/", maps))


def answer(server: ServeProcess, body: bytes, content_type: str, **headers: str):
    status, got, out = server.invoke(body, content_type, **headers)
    assert status == HTTPStatus.OK, out
    return got["content-type"], out


def error(server: ServeProcess, body: bytes, **headers: str) -> tuple[int, dict]:
    status, got, out = server.invoke(body, PARQUET, Accept=PARQUET, **headers)
    # A Parquet answer cannot carry text: errors are JSON (the renderer's error type).
    assert got["content-type"] == "application/json", (status, out)
    return status, json.loads(out)


# --- a numeric model without feature names ------------------------------------------


@pytest.fixture(scope="module")
def numeric(iris_base, tmp_path_factory) -> Iterator[tuple[ServeProcess, set[str]]]:
    """The iris tree on one worker, chunks of 1 KB (32 records of four floats) and a
    1 MB payload limit (a 20 MB parsed-size budget); with what the worker mapped after a
    CSV request, before any Parquet one."""
    server = ServeProcess(
        iris_base,
        tmp_path_factory.mktemp("numeric"),
        env={
            "SMSERVE_COMPILED_ENGINE": "off",
            "DATABASE_URL": "",
            "SMSERVE_CHUNK_KB": "1",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1",
        },
        workers=1,
    ).start()
    try:
        answer(server, b"5.1,3.5,1.4,0.2\n", "text/csv")
        (worker,) = server.gunicorn_workers()
        yield server, mapped_packages(worker)
    finally:
        server.stop()


def iris_frame(iris) -> pd.DataFrame:
    return pd.DataFrame(iris[0], columns=IRIS_COLUMNS)


def test_numeric_parquet_answers_what_csv_answers(numeric, iris, iris_model):
    """150 records as Parquet (larger than a chunk: decoded 32 rows at a time) answer
    byte for byte what the same records as CSV answer, in JSON and in CSV; columns are
    taken in the file's order for a model without feature names, and integer columns
    are numbers too.
    docs/serving.md, Formats: "one Parquet file"; "one record per row"; "columns by
    name (in the file's order for a model without feature names)"; Large batches: "a
    Parquet body of numbers ... is decoded and predicted a run of rows at a time"."""
    server, _ = numeric
    frame = iris_frame(iris)
    for accept in ("application/json", "text/csv"):
        _, by_csv = answer(server, csv(frame), "text/csv", Accept=accept)
        _, by_parquet = answer(server, parquet(frame), PARQUET, Accept=accept)
        assert by_parquet == by_csv, accept
    _, body = answer(server, parquet(frame), PARQUET, Accept="application/json")
    assert json.loads(body)["predictions"] == iris_model.predict(iris[0]).tolist()
    whole = frame.round().astype("int64")
    _, by_ints = answer(server, parquet(whole), PARQUET, Accept="application/json")
    expected = iris_model.predict(whole.to_numpy(dtype=float)).tolist()
    assert json.loads(by_ints)["predictions"] == expected


def test_csv_in_parquet_out(numeric, iris, iris_model):
    """Labels come back as one column `prediction`, scores as one float column per
    class named by its position.
    docs/serving.md, Formats: Accept "`application/x-parquet`"; "one row per record:
    a column `prediction` of labels or values"; "or one float column per position
    named by it (`"0"`, `"1"`, …) for scores (`predict_proba`: the classes in the
    model's order, as in a CSV row)"."""
    server, _ = numeric
    body = csv(iris_frame(iris))
    content_type, out = answer(server, body, "text/csv", Accept=PARQUET)
    assert content_type == PARQUET
    labels = read(out)
    assert list(labels.columns) == ["prediction"]
    assert labels["prediction"].tolist() == iris_model.predict(iris[0]).tolist()
    _, out = answer(server, body, "text/csv", Accept=PARQUET, **PROBA)
    scores = read(out)
    assert list(scores.columns) == ["0", "1", "2"]
    assert scores.to_numpy().tolist() == iris_model.predict_proba(iris[0]).tolist()


def test_parquet_both_ways_under_the_aliases(numeric, iris, iris_model):
    """Training's names for Parquet are read, and asked for: the answer is named as
    the Accept named it.
    docs/serving.md, Formats: "`application/x-parquet` (also `application/parquet`,
    `application/vnd.apache.parquet`)"; "an alias in `Accept` is answered by its
    format, under the name the client asked for"."""
    server, _ = numeric
    body = parquet(iris_frame(iris).iloc[:10])
    expected = iris_model.predict(iris[0][:10]).tolist()
    for content_type, accept in [
        (PARQUET, PARQUET),
        ("application/vnd.apache.parquet", "application/parquet"),
        ("application/parquet", "application/vnd.apache.parquet"),
    ]:
        named, out = answer(server, body, content_type, Accept=accept)
        assert named == accept
        assert read(out)["prediction"].tolist() == expected


def test_wrong_feature_count_for_a_model_without_names(numeric, iris):
    """A model without feature names takes the columns by position: one too many or
    one too few is a 400 that says how many it expects.
    docs/serving.md, Errors, `invalid_input`: "wrong feature count"."""
    server, _ = numeric
    frame = iris_frame(iris).iloc[:3]
    for sent in (frame.assign(extra=1.0), frame.iloc[:, :3]):
        status, detail = error(server, parquet(sent))
        assert status == HTTPStatus.BAD_REQUEST
        assert detail == {
            "detail": f"Expected 4 features per record, got {sent.shape[1]}.",
            "code": "invalid_input",
        }


def test_malformed_parquet_bodies_are_400s(numeric, iris):
    """Bytes that are no Parquet file, a cut file, a file of no rows or no columns,
    nested and binary columns and a name used twice are 400s that say what is wrong;
    an infinity in a chunked body names its record by its number in the whole body.
    docs/serving.md, Errors, `invalid_input`: "a Parquet body that is no readable file
    or has no rows or no columns"; "a Parquet column named twice"; Formats,
    `application/x-parquet`: "nested columns (lists, structs, maps) and binary ones are
    refused"."""
    server, _ = numeric
    frame = iris_frame(iris)
    whole = parquet(frame.iloc[:5])
    nested = pa.table({"a": [[1.0, 2.0]], "b": [1.0], "c": [1.0], "d": [1.0]})
    binary = pa.table({"a": [b"\x00"], "b": [1.0], "c": [1.0], "d": [1.0]})
    struct = pa.table({"a": [{"x": 1.0}], "b": [1.0], "c": [1.0], "d": [1.0]})
    mapping = pa.table(
        {
            "a": pa.array([[("x", 1.0)]], type=pa.map_(pa.string(), pa.float64())),
            "b": [1.0],
            "c": [1.0],
            "d": [1.0],
        }
    )
    twice = pa.Table.from_arrays([pa.array([1.0])] * 4, names=["a", "a", "b", "c"])
    cases = {
        b"5.1,3.5,1.4,0.2\n": "not a Parquet file: it does not start and end with PAR1",
        whole[:20] + whole[-200:]: "not a readable Parquet file",
        parquet(frame.iloc[:0]): "The Parquet file has no rows",
        parquet(pd.DataFrame(index=range(3))): "The Parquet file has no columns",
        written(nested): "Column 'a' holds list<element: double>",
        written(binary): "Column 'a' holds binary",
        written(struct): "Column 'a' holds struct<x: double>",
        written(mapping): "Column 'a' holds map<string, double",
        written(twice): "two columns named 'a'",
    }
    for body, message in cases.items():
        status, detail = error(server, body)
        assert status == HTTPStatus.BAD_REQUEST, message
        assert detail["code"] == "invalid_input"
        assert message in detail["detail"], detail
    infinite = frame.copy()
    infinite.iloc[99, 2] = np.inf
    status, detail = error(server, parquet(infinite))
    assert status == HTTPStatus.BAD_REQUEST
    assert detail["detail"].startswith("Record 100, feature 3 is inf"), detail


def test_a_file_broken_after_its_footer_was_read_is_a_400(numeric, iris):
    """A page that cannot be decoded (its header overwritten) under a sound footer is
    found when its rows' turn comes (a body read a run of rows at a time) or at once
    (a small one): a 400 either way.
    docs/serving.md, Errors, `invalid_input`: "a Parquet body that is no readable file
    or has no rows or no columns"."""
    server, _ = numeric
    for rows in (150, 20):
        frame = iris_frame(iris).iloc[:rows]
        body = bytearray(parquet(frame))
        body[4:40] = b"\xff" * 36  # the first page's header follows PAR1
        status, detail = error(server, bytes(body))
        assert status == HTTPStatus.BAD_REQUEST, (rows, detail)
        assert "not a readable Parquet file" in detail["detail"], detail


def written(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_a_small_file_of_a_huge_table_is_a_413(numeric):
    """A file of a few KB may hold a table of any size: its footer's rows and columns
    are held to the parsed-size budget before anything is decoded.
    docs/serving.md, Errors, `payload_too_large`: "body whose parsed form would take
    more than 20 times the payload limit"."""
    server, _ = numeric
    zeros = pa.array(np.zeros(700_000))
    body = written(pa.table({name: zeros for name in IRIS_COLUMNS}))
    assert len(body) < 100_000
    status, detail = error(server, body)
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert detail["code"] == "payload_too_large"
    assert "The Parquet body would take more than 20 MB once parsed" in detail["detail"]


def test_pyarrow_arrives_with_the_first_parquet_request(numeric, iris):
    """A numeric model's worker maps no pyarrow until a Parquet body arrives.
    docs/serving.md, Formats: "imported by a worker when the first Parquet body arrives
    or is asked for: a numeric model's workers never map it otherwise"."""
    server, before = numeric
    assert "sklearn" in before
    assert "pyarrow" not in before, sorted(before)
    answer(server, parquet(iris_frame(iris).iloc[:2]), PARQUET)
    (worker,) = server.gunicorn_workers()
    assert "pyarrow" in mapped_packages(worker)


def test_keys_a_deployment_names_are_columns(
    iris_base, serve_factory, iris, iris_model
):
    """With SAGEMAKER_INFERENCE_OUTPUT, a Parquet answer has a column per key, in the
    order named: values per record, lists for probabilities and labels."""
    keys = "predicted_label,probability,probabilities,labels"
    server = serve_factory(
        iris_base, env={"SAGEMAKER_INFERENCE_OUTPUT": keys}, workers=1
    )
    X = iris[0][::15]
    _, out = answer(server, parquet(pd.DataFrame(X, columns=IRIS_COLUMNS)), PARQUET)
    table = pq.read_table(io.BytesIO(out))
    assert table.column_names == keys.split(",")
    proba = iris_model.predict_proba(X)
    assert table.column("predicted_label").to_pylist() == iris_model.predict(X).tolist()
    assert table.column("probability").to_pylist() == proba.max(axis=1).tolist()
    assert table.column("probabilities").to_pylist() == proba.tolist()
    assert table.column("labels").to_pylist() == [[0, 1, 2]] * len(X)


# --- a table with text columns, fitted by ./train -----------------------------------


def churn_table(rows: int, seed: int) -> pd.DataFrame:
    """The churn table with a boolean column (``paperless``), which training reads as
    categorical ("True", "False")."""
    frame = churn_frame(rows, seed=seed)
    frame["paperless"] = np.random.default_rng(seed).random(rows) < 0.4
    return frame


@pytest.fixture(scope="module")
def churn(tmp_path_factory) -> Iterator[tuple[ServeProcess, object]]:
    """A random forest the real ``./train`` fitted on a Parquet channel with text and
    boolean columns and gaps, served on one worker; and the saved model."""
    work = tmp_path_factory.mktemp("churn")
    churn_table(300, seed=0).to_parquet(work / "train.parquet", index=False)
    base = work / "ml"
    done = run_train(
        base,
        "--channel",
        f"train={work / 'train.parquet'}",
        "--hp",
        "smserve_estimator=random_forest",
        "--hp",
        "n_estimators=10",
        "--hp",
        f"smserve_target_column={TARGET}",
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    server = ServeProcess(base, work, workers=1).start()
    try:
        yield server, joblib.load(base / "model" / "model.joblib")
    finally:
        server.stop()


def churn_rows() -> pd.DataFrame:
    """Held-out rows with gaps, an unseen country and a record with no plan, under a
    pandas index that is no range (stored in the file as a column of its own)."""
    rows = churn_table(20, seed=9)[COLUMNS]
    rows.index = [f"customer {i}" for i in range(len(rows))]
    rows.loc[rows.index[0], "country"] = "NZ"
    rows.loc[rows.index[1], ["plan", "tenure"]] = np.nan
    return rows


def as_trained(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` as training handed them to the model: booleans as their categories."""
    return rows.astype({"paperless": str})


def test_a_table_as_parquet_answers_what_the_model_answers(churn):
    """Columns by name in any order, text, category and boolean columns read with the
    kinds training gave them, gaps as missing values, the pandas index left out: labels
    in JSON and CSV and scores as Parquet equal the saved model's own answers.
    docs/serving.md, Formats: "columns by name (in the file's order for a model without
    feature names)"; "columns of numbers or text (category and boolean too) read with
    the kinds training gave them"; "null is a missing value"; "a pandas index is no
    feature"; Accept: "or one float column per position named by it"."""
    server, model = churn
    rows = churn_rows()
    labels = own_answer(model, "predict", as_trained(rows)).tolist()
    proba = own_answer(model, "predict_proba", as_trained(rows))
    reordered = rows[COLUMNS[::-1]].astype({"plan": "category", "payment": "string"})
    body = parquet(reordered)
    assert b"__index_level_0__" in body
    _, out = answer(server, body, PARQUET, Accept="application/json")
    assert json.loads(out)["predictions"] == labels
    _, out = answer(server, body, PARQUET, Accept="text/csv")
    assert out.decode().splitlines() == labels
    _, out = answer(server, body, PARQUET, Accept=PARQUET, **PROBA)
    scores = read(out)
    assert list(scores.columns) == ["0", "1"]
    # The compiled engine serves this pipeline: its tolerance (test_tables_compiled.py).
    assert np.allclose(scores.to_numpy(), proba, rtol=RTOL, atol=ATOL)


def test_csv_in_text_labels_out_as_parquet(churn):
    """Text labels are a text column of Parquet.
    docs/serving.md, Formats: Accept "`application/x-parquet`"; "text labels as
    text"."""
    server, model = churn
    rows = churn_rows()
    _, out = answer(server, csv(rows), "text/csv", Accept=PARQUET)
    column = pq.read_table(io.BytesIO(out)).column("prediction")
    assert pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    assert column.to_pylist() == own_answer(model, "predict", as_trained(rows)).tolist()


def test_wrong_columns_are_named(churn):
    """A missing column and an unknown one are named, with the features expected; text
    in a number column names its record, feature and value.
    docs/serving.md, Errors, `invalid_input`: "missing/unknown feature names"; "text
    where the model takes a number"."""
    server, _ = churn
    rows = churn_rows()
    expected = "expected the features " + ", ".join(COLUMNS)
    status, detail = error(server, parquet(rows.drop(columns="spend")))
    assert status == HTTPStatus.BAD_REQUEST
    assert "lack 'spend'" in detail["detail"], detail
    assert expected in detail["detail"]
    renamed = rows.rename(columns={"calls": "call_count"})
    status, detail = error(server, parquet(renamed))
    assert status == HTTPStatus.BAD_REQUEST
    assert "lack 'calls' and have unknown 'call_count'" in detail["detail"], detail
    text = rows.astype({"tenure": object})
    text.loc[text.index[2], "tenure"] = "old"
    status, detail = error(server, parquet(text.astype({"tenure": str})))
    assert status == HTTPStatus.BAD_REQUEST
    assert "Record 3, feature 'tenure': 'old' is not a number" in detail["detail"]
