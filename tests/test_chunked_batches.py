"""Large batches in bounded memory: a body larger than ``SMSERVE_CHUNK_KB`` is parsed,
predicted and rendered a chunk of records at a time, and answers byte for byte what one
pass answers (a server whose chunk holds the whole body), errors included; a worker's
peak memory grows with the body's size, not with a multiple of its parsed form."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from tests.support.models import write_model
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.server

RECORDS = 6_000
# 16 KB chunks: the bodies below (~100-200 KB) take six to a dozen of them.
# The compiled engine off on both: each server measures at start up to how many records
# the engine is faster (its crossover), and on a busy machine two starts can measure
# different limits and send the same batch to different engines, whose last digits
# differ. What chunking must not change is the answer of one server.
CHUNKED = {
    "SMSERVE_CHUNK_KB": "16",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": "100",
    "SMSERVE_COMPILED_ENGINE": "off",
}
ONE_PASS = {**CHUNKED, "SMSERVE_CHUNK_KB": "102400"}


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    """Three features, missing values allowed, three classes."""
    rng = np.random.default_rng(0)
    X = rng.random((600, 3))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) * 3).astype(int)
    base = tmp_path_factory.mktemp("chunked_model")
    model = HistGradientBoostingClassifier(max_iter=10).fit(X, y)
    write_model(base, model, {"estimator": "hgb", "n_features": 3})
    return base


def _server(base: Path, work: Path, env: dict[str, str]) -> Iterator[ServeProcess]:
    server = ServeProcess(base, work, env=env, workers=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chunked(model_base, tmp_path_factory) -> Iterator[ServeProcess]:
    yield from _server(model_base, tmp_path_factory.mktemp("chunked"), CHUNKED)


@pytest.fixture(scope="module")
def one_pass(model_base, tmp_path_factory) -> Iterator[ServeProcess]:
    yield from _server(model_base, tmp_path_factory.mktemp("one_pass"), ONE_PASS)


def matrix() -> np.ndarray:
    values = np.random.default_rng(1).random((RECORDS, 3)).round(5)
    values[np.arange(RECORDS) % 7 == 0, 1] = np.nan  # a gap in every seventh record
    return values


def csv_body(values: np.ndarray) -> bytes:
    return "".join(
        ",".join("" if np.isnan(v) else repr(v) for v in row) + "\n"
        for row in values.tolist()
    ).encode()


def json_rows(values: np.ndarray) -> list:
    return [[None if np.isnan(v) else v for v in row] for row in values.tolist()]


def npy_body(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values)
    return buffer.getvalue()


def parquet_body(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(values, columns=["a", "b", "c"]).to_parquet(buffer, index=False)
    return buffer.getvalue()


def bodies() -> dict[str, tuple[str, bytes]]:
    values = matrix()
    rows = json_rows(values)
    lines = "".join(json.dumps(row) + "\n" for row in rows).encode()
    return {
        "csv with gaps": ("text/csv", csv_body(values)),
        "csv with a header": (
            "text/csv; header=present",
            b"a,b,c\n" + csv_body(values),
        ),
        "csv crlf": ("text/csv", csv_body(values).replace(b"\n", b"\r\n")),
        "json rows": ("application/json", json.dumps(rows).encode()),
        "json instances": (
            "application/json",
            json.dumps({"instances": rows}).encode(),
        ),
        # Batch transform's SplitType=Line: a JSON document a line, several lines.
        "json documents one per line": ("application/json", lines),
        "jsonlines arrays": ("application/jsonlines", lines),
        "jsonlines crlf": ("application/jsonlines", lines.replace(b"\n", b"\r\n")),
        "npy": ("application/x-npy", npy_body(values)),
        "parquet": ("application/x-parquet", parquet_body(values)),
    }


BODIES = bodies()
ACCEPTS = [
    "text/csv",
    "application/json",
    "application/jsonlines",
    "application/x-npy",
    "application/x-parquet",
]


@pytest.mark.parametrize("name", sorted(BODIES))
def test_chunked_answers_equal_one_pass(chunked, one_pass, name):
    """`SMSERVE_CHUNK_KB`: every input format, every output format, predict and
    predict_proba: the chunked answer is the one-pass answer, byte for byte."""
    content_type, body = BODIES[name]
    for accept in ACCEPTS:
        for method in ("predict", "predict_proba"):
            headers = {
                "Accept": accept,
                "X-Amzn-SageMaker-Custom-Attributes": f"method={method}",
            }
            got = chunked.invoke(body, content_type, **headers)
            want = one_pass.invoke(body, content_type, **headers)
            assert got[0] == want[0] == HTTPStatus.OK, (name, accept, got[2][:200])
            assert got[2] == want[2], (name, accept, method)
            assert got[1]["content-length"] == want[1]["content-length"]


def test_an_error_in_a_later_chunk_names_its_record_in_the_whole_body(
    chunked, one_pass
):
    """Infinity in record 5,001 (a later chunk): a 400 that names record 5001, the
    same body as one pass, and no predictions."""
    values = matrix()
    values[5_000, 2] = np.inf
    body = csv_body(values).replace(b"nan", b"inf")
    got = chunked.invoke(body, "text/csv", Accept="application/json")
    want = one_pass.invoke(body, "text/csv", Accept="application/json")
    assert got[0] == want[0] == HTTPStatus.BAD_REQUEST
    assert got[2] == want[2]
    assert json.loads(got[2])["detail"].startswith("Record 5001, feature 3 is inf")


def test_a_parse_error_after_a_model_error_answers_as_one_pass(chunked, one_pass):
    """One pass parses the whole body before it predicts: infinity in record 2 and a
    ragged record 5,500 answer the ragged record, chunked too."""
    values = matrix()
    values[1, 0] = np.inf
    lines = csv_body(values).splitlines(keepends=True)
    lines[5_499] = b"1,2,3,4\n"
    body = b"".join(lines)
    got = chunked.invoke(body, "text/csv", Accept="text/csv")
    want = one_pass.invoke(body, "text/csv", Accept="text/csv")
    assert got[0] == want[0] == HTTPStatus.BAD_REQUEST
    assert got[2] == want[2]
    assert b"record 5500 has 4" in got[2]


def test_a_later_chunk_only_the_general_parser_reads(chunked, one_pass):
    """A field the fast path declines (``+0.5``) in a later chunk: the whole body is
    read by the general parser, as in one pass, and the answers are equal."""
    lines = csv_body(matrix()).splitlines(keepends=True)
    lines[4_500] = b"+0.5,0.25,0.75\n"
    body = b"".join(lines)
    got = chunked.invoke(body, "text/csv", Accept="application/json")
    want = one_pass.invoke(body, "text/csv", Accept="application/json")
    assert got[0] == want[0] == HTTPStatus.OK
    assert got[2] == want[2]
    assert len(json.loads(got[2])["predictions"]) == RECORDS


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_large_body_grows_the_worker_by_a_few_times_its_size(
    model_base, serve_factory
):
    """A ~30 MB numeric CSV with gaps (short records: its floats alone take three
    times its size), in one request, to a fresh worker, chunks of 4 MB: its peak RSS
    grows by less than 4 times the body (in one pass the floats, the model's work
    arrays and the rendered lines of every record at once took many times that)."""
    server = serve_factory(
        model_base,
        env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "100", "SMSERVE_CHUNK_KB": "4096"},
        workers=1,
    )
    record = b"0.25,,0.5\n0.75,0.5,\n"
    body = record * (30 * 2**20 // len(record))
    (worker,) = server.gunicorn_workers()
    before = peak_rss(worker)
    status, _, answer = server.request(
        "POST",
        "/invocations",
        body,
        {"Content-Type": "text/csv", "Accept": "text/csv"},
        timeout=300,
    )
    grown = peak_rss(worker) - before
    assert status == HTTPStatus.OK, answer[:300]
    assert answer.count(b"\n") == body.count(b"\n")
    assert grown < 4 * len(body), f"peak RSS grew {grown / len(body):.1f}x the body"
