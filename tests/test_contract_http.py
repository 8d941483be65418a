"""The inference contract through the real stack: nginx + gunicorn + Django on loopback."""

from __future__ import annotations

import io
import json
import re
import uuid
from http import HTTPStatus

import numpy as np
import pytest

from tests.support.servers import wait_for

FORMATS = ["text/csv", "application/json", "application/jsonlines", "application/x-npy"]


def encode(rows: np.ndarray, content_type: str) -> bytes:
    if content_type == "text/csv":
        return "".join(
            ",".join(map(repr, row)) + "\n" for row in rows.tolist()
        ).encode()
    if content_type == "application/json":
        return json.dumps(rows.tolist()).encode()
    if content_type == "application/jsonlines":
        return "".join(json.dumps(row) + "\n" for row in rows.tolist()).encode()
    buffer = io.BytesIO()
    np.save(buffer, rows)
    return buffer.getvalue()


def decode(body: bytes, accept: str) -> list:
    if accept == "text/csv":
        return [
            [float(v) for v in line.split(",")] if "," in line else float(line)
            for line in body.decode().splitlines()
        ]
    if accept == "application/json":
        return json.loads(body)["predictions"]
    if accept == "application/jsonlines":
        return [json.loads(line) for line in body.decode().splitlines()]
    return np.load(io.BytesIO(body), allow_pickle=False).tolist()


@pytest.fixture(scope="module")
def sample(iris):
    X, _ = iris
    return X[::15]  # 10 records across the three classes


@pytest.mark.parametrize("accept", FORMATS)
@pytest.mark.parametrize("content_type", FORMATS)
def test_every_content_type_and_accept(
    server, iris_model, sample, content_type, accept
):
    """Every request format is answered in every response format, with the exact media
    type and the same predictions as the model in-process.

    README Formats: every request ``Content-Type`` row (CSV, JSON ``[[...]]``, JSON
    Lines arrays, NPY 2-D) against every ``Accept`` row (CSV labels, JSON
    ``{"predictions"}``, JSON Lines, NPY); "the exact media type, never a ``; charset=``".
    docs/serving.md, Formats: Accept: "`text/csv`"; "one line per record: the label";
    "`application/json`"; "`application/jsonlines`"; "one JSON value per line";
    "`application/x-npy`"; "`numpy.save` of the predictions (string labels as a unicode
    array)".
    """
    status, headers, body = server.invoke(
        encode(sample, content_type), content_type, Accept=accept
    )
    assert status == HTTPStatus.OK, body
    assert headers["content-type"] == accept
    assert decode(body, accept) == iris_model.predict(sample).tolist()


@pytest.mark.parametrize(
    "content_type",
    [None, "application/octet-stream", "text/csv; charset=utf-8", "Text/CSV"],
)
def test_content_type_variants_read_as_csv(server, content_type):
    """No Content-Type and application/octet-stream mean CSV; parameters and case are
    accepted.

    README Formats: ``text/csv`` "(also when absent, or ``application/octet-stream``)".
    docs/serving.md, Formats: Content-Type: "`text/csv` (also when absent, or
    `application/octet-stream`)".
    """
    status, _, body = server.invoke(
        b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n", content_type, Accept="text/csv"
    )
    assert status == HTTPStatus.OK, body
    assert body == b"0\n2\n"


@pytest.mark.parametrize(
    ("content_type", "accept", "expected"),
    [
        ("application/json", None, "application/json"),
        ("text/csv", None, "text/csv"),
        ("application/jsonlines", "*/*", "application/jsonlines"),
        ("text/csv", "text/csv;q=0.5, application/json", "application/json"),
        ("application/json", "text/html, text/csv;q=0.9", "text/csv"),
        ("application/json", "text/html, */*;q=0.1", "application/json"),
        ("application/json", "application/*", "application/json"),
    ],
)
def test_accept_rules(server, sample, content_type, accept, expected):
    """Absent Accept or */* answers in the request's own type; lists go by q-value.

    README Formats, ``Accept``: "absent or ``*/*``" (the request's own type), "a list".
    docs/serving.md, Formats: Accept: "else the request's own type"; "a list
    (`text/csv;q=0.5, application/json`)"; "the best supported one by q-value".
    """
    headers = {"Accept": accept} if accept else {}
    status, response_headers, body = server.invoke(
        encode(sample[:2], content_type), content_type, **headers
    )
    assert status == HTTPStatus.OK, body
    assert response_headers["content-type"] == expected


def test_accept_falls_back_to_json(server):
    """No Accept, and a request type no renderer has: the answer (here the 415) is JSON.

    README Formats, ``Accept``: absent: "... else the request's own type, else JSON"."""
    status, headers, body = server.invoke(b"1,2,3,4\n", "text/html")
    assert status == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == "unsupported_media_type"


def test_csv_header_present(server):
    """``header=present`` skips the first line.

    README Formats: ``text/csv`` "``header=present`` skips ... a header line".
    docs/serving.md, Formats: Content-Type: "`header=present` uses a header line to name
    (and reorder) the columns".
    """
    body = b"sl,sw,pl,pw\n5.1,3.5,1.4,0.2\n"
    status, _, response = server.invoke(
        body, "text/csv; header=present", Accept="application/json"
    )
    assert status == HTTPStatus.OK, response
    assert json.loads(response) == {"predictions": [0]}


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}',
        b'{"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}',
        b"[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]",
    ],
)
def test_json_shapes(server, body):
    """The three JSON batch shapes give the same answer.

    README Formats: ``application/json`` "``[[...], ...]``, ``{"instances": [...]}``,
    ``{"inputs": [...]}``"."""
    status, _, response = server.invoke(body, "application/json")
    assert status == HTTPStatus.OK, response
    assert json.loads(response) == {"predictions": [0, 2]}


def test_single_flat_record(server):
    """A flat JSON list is one record (the official container says "Expected 2D array").

    README Formats: ``application/json`` "a flat ``[...]`` is one record".
    docs/serving.md, Formats: Content-Type: "a flat `[...]` is one record (or one value
    per record for a single-feature model)".
    """
    status, _, response = server.invoke(b"[6.7, 3.0, 5.2, 2.3]", "application/json")
    assert status == HTTPStatus.OK, response
    assert json.loads(response) == {"predictions": [2]}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        # Blank fields are NaN, which the tree accepts: predicted as the model does.
        (b"5.1,,1.4,0.2\n,3.0,5.2,2.3\n", "text/csv", "nan"),
        # JSON null is a missing value, as a blank CSV field is.
        (b"[[5.1,null,1.4,0.2],[null,3.0,5.2,2.3]]", "application/json", "nan"),
        # Quoted fields.
        (b'"5.1","3.5",1.4,0.2\n6.7,3.0,"5.2",2.3\n', "text/csv", [0, 2]),
        # A charset that is not ASCII-compatible is honoured (an ignored one is a 400).
        (
            "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n".encode("utf-16"),
            "text/csv; charset=utf-16",
            [0, 2],
        ),
        # latin-1: the header line's name is not UTF-8; the header is skipped.
        (
            "s\xe9pale,b,c,d\n6.7,3.0,5.2,2.3\n".encode("latin-1"),
            "text/csv; charset=latin-1; header=present",
            [2],
        ),
        # JSON Lines: an array per line.
        (b"[5.1,3.5,1.4,0.2]\n[6.7,3.0,5.2,2.3]\n", "application/jsonlines", [0, 2]),
        # NPY: a 1-D array is one record.
        (npy(np.array([6.7, 3.0, 5.2, 2.3])), "application/x-npy", [2]),
        # NPY of integers and of booleans: predicted as the same values as floats.
        (npy(np.array([[5, 3, 1, 0], [7, 3, 5, 2]])), "application/x-npy", "float"),
        (npy(np.array([[True, False, True, False]])), "application/x-npy", "float"),
    ],
    ids=[
        "csv-blank",
        "json-null",
        "csv-quoted",
        "utf-16",
        "latin-1",
        "jsonl-arrays",
        "npy-1d",
        "npy-int",
        "npy-bool",
    ],
)
def test_format_rows(server, iris_model, body, content_type, expected):
    """README Formats, request ``Content-Type``: ``text/csv`` "blank fields are missing
    values (NaN); quoted fields allowed; ``charset`` honoured"; ``application/jsonlines``
    "an array" per line; ``application/x-npy`` "a 1-D (one record)".
    docs/serving.md, Formats: Content-Type: "`null` is a missing value"; "one record per
    line: an array"; "a 1-D (one record) or 2-D numeric array (booleans, integers,
    floats) saved by `numpy.save`".
    """
    status, _, response = server.invoke(body, content_type, Accept="application/json")
    assert status == HTTPStatus.OK, response
    if expected == "nan":
        rows = np.array([[5.1, np.nan, 1.4, 0.2], [np.nan, 3.0, 5.2, 2.3]])
        expected = iris_model.predict(rows).tolist()
    elif expected == "float":
        rows = np.load(io.BytesIO(body)).astype(float)
        expected = iris_model.predict(rows).tolist()
    assert json.loads(response) == {"predictions": expected}


@pytest.mark.parametrize("method", ["predict_proba", "predict_log_proba"])
def test_method_by_custom_attributes(server, iris_model, sample, method):
    """The method comes from X-Amzn-SageMaker-Custom-Attributes and is echoed back; the
    log of a zero probability is minus infinity, which JSON cannot hold: ``null``.

    README Formats: "``method=predict_proba`` ... ``predict_log_proba`` ... the response
    echoes the attributes"; ``Accept: application/json`` "NaN and infinity become
    ``null``".
    docs/serving.md, Formats: Accept: "`{"predictions": [...]}` (NaN and infinity become
    `null`)".
    """
    status, headers, body = server.invoke(
        encode(sample, "text/csv"),
        "text/csv",
        Accept="application/json",
        **{"X-Amzn-SageMaker-Custom-Attributes": f"method={method}"},
    )
    assert status == HTTPStatus.OK, body
    assert headers["x-amzn-sagemaker-custom-attributes"] == f"method={method}"
    expected = [
        [None if np.isinf(v) else v for v in row]
        for row in getattr(iris_model, method)(sample).tolist()
    ]
    if method == "predict_log_proba":
        assert None in expected[0]  # the sample does hold an infinity
    assert json.loads(body)["predictions"] == expected


def test_predict_proba_as_csv_rows(server):
    """Scores render as one comma-joined row per record.

    README Formats, ``Accept: text/csv``: "or a comma-joined row of scores"."""
    status, _, body = server.invoke(
        b"5.1,3.5,1.4,0.2\n",
        "text/csv",
        Accept="text/csv",
        **{"X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"},
    )
    assert status == HTTPStatus.OK, body
    assert body == b"1.0,0.0,0.0\n"


def test_ten_thousand_records_in_order(server, iris, iris_model):
    """A 10,000-record CSV batch returns 10,000 lines, in input order.

    README Formats: ``text/csv`` "one record per line"; ``Accept: text/csv`` "one line
    per record".
    docs/serving.md, Formats: Content-Type: "no header".
    """
    X, _ = iris
    rng = np.random.default_rng(0)
    rows = X[rng.integers(0, len(X), 10_000)]
    status, _, body = server.invoke(
        encode(rows, "text/csv"), "text/csv", Accept="text/csv"
    )
    assert status == HTTPStatus.OK, body[:200]
    lines = body.decode().splitlines()
    assert len(lines) == 10_000
    assert [int(v) for v in lines] == iris_model.predict(rows).tolist()


def test_execution_parameters(server):
    """Batch transform asks how to call the container.

    README Calling it: ``/execution-parameters``; Settings: ``MaxPayloadInMB``.
    docs/settings.md, Settings: "`MODEL_SERVER_WORKERS`".
    """
    status, headers, body = server.request("GET", "/execution-parameters")
    assert status == HTTPStatus.OK
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 6,
    }


def test_ping_ready(server):
    """/ping is 200 once the model is loaded and warmed up.

    README Calling it: "``/ping`` 200 once the model is loaded and warmed up"."""
    status, _, body = server.request("GET", "/ping")
    assert status == HTTPStatus.OK
    assert json.loads(body)["status"] == "ready"


ERRORS = [
    # (body, content type, accept, status, code, words in the message)
    (b"", "text/csv", None, 400, "empty_body", "body is empty"),
    (b"\n\n", "text/csv", None, 400, "invalid_input", "empty"),
    (
        b"1,2,3\n",
        "text/csv",
        None,
        400,
        "invalid_input",
        "Expected 4 features per record, got 3",
    ),
    (
        b"1,2,3,4\n1,2,3,4,5\n",
        "text/csv",
        None,
        400,
        "invalid_input",
        "record 1 has 4, record 2 has 5",
    ),
    (
        b"1,2,x,4\n",
        "text/csv",
        None,
        400,
        "invalid_input",
        "Record 1, feature 3: 'x' is not",
    ),
    (b"1,2,3,4\n\n1,2,3,4\n", "text/csv", None, 400, "invalid_input", "blank line"),
    (b"[[1,2,3,4]", "application/json", None, 400, "invalid_input", "not valid JSON"),
    (
        b'{"rows": [[1,2,3,4]]}',
        "application/json",
        None,
        400,
        "invalid_input",
        "Unknown JSON shape",
    ),
    (b'"text"', "application/json", None, 400, "invalid_input", "Unknown JSON shape"),
    (b"[]", "application/json", None, 400, "invalid_input", "no records"),
    (
        b'[{"a": 1}]',
        "application/json",
        None,
        400,
        "invalid_input",
        "without feature names",
    ),
    (
        b"[1,2,3,4]\nnope\n",
        "application/jsonlines",
        None,
        400,
        "invalid_input",
        "Line 2",
    ),
    (b"not npy", "application/x-npy", None, 400, "invalid_input", "not an NPY array"),
    (
        npy(np.array([[1, 2, 3, 4]], dtype=object)),
        "application/x-npy",
        None,
        400,
        "invalid_input",
        "holds Python objects, which are refused",
    ),
    (b'1,2,"3,4\n', "text/csv", None, 400, "invalid_input", "feature 3: '3,4"),
    (
        b"[[1,2,3,4],[1,2,3]]",
        "application/json",
        None,
        400,
        "invalid_input",
        "record 1 has 4, record 2 has 3",
    ),
    (b"1,2,inf,4\n", "text/csv", None, 400, "invalid_input", "not infinity"),
    (
        b"1,2,3,4\n",
        "text/html",
        None,
        415,
        "unsupported_media_type",
        "text/csv, application/json",
    ),
    (
        b"1,2,3,4\n",
        "text/csv",
        "text/html",
        406,
        "not_acceptable",
        "application/json, text/csv",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status", "code", "words"), ERRORS
)
def test_error_table(server, body, content_type, accept, status, code, words):
    """Each bad request gets its status and a JSON body that says what was expected.

    README Errors: empty body; malformed CSV (an unclosed quote)/JSON/NPY (pickled object
    arrays refused: README Formats, ``application/x-npy``), ragged records (CSV, JSON),
    non-numeric value, blank line, unknown JSON shape, wrong feature count, objects
    without feature names, infinity; 415; 406.
    docs/serving.md, Formats: Content-Type: "pickled object arrays are refused".
    docs/serving.md, Errors: "malformed CSV/JSON/NPY"; "text where the model takes a
    number"; "unsupported `Content-Type` (lists the supported ones)"; "unsatisfiable
    `Accept` (lists the supported ones)".
    """
    headers = {"Accept": accept or "application/json"}
    got, response_headers, response = server.invoke(body, content_type, **headers)
    assert got == status, response
    assert response_headers["content-type"] == "application/json"
    error = json.loads(response)
    assert error["code"] == code
    assert words in error["detail"]


WIDTH_ERROR = {
    "detail": "Expected 4 features per record, got 3.",
    "code": "invalid_input",
}


@pytest.mark.parametrize(
    ("accept", "media_type", "expected"),
    [
        ("text/csv", "text/csv", b"Expected 4 features per record, got 3.\n"),
        ("application/json", "application/json", WIDTH_ERROR),
        ("application/jsonlines", "application/jsonlines", WIDTH_ERROR),
        ("application/x-npy", "application/json", WIDTH_ERROR),
        (None, "text/csv", b"Expected 4 features per record, got 3.\n"),
    ],
)
def test_error_body_in_the_negotiated_format(server, accept, media_type, expected):
    """An error is rendered by the negotiated renderer: CSV the detail as one plain line;
    JSON Lines one JSON line; NPY, which cannot carry text, JSON.

    README Errors: "Every error body is ``{"detail": ..., "code": ...}`` in the negotiated
    format (for CSV, the detail as one plain line; for NPY, JSON)"."""
    headers = {"Accept": accept} if accept else {}
    status, response_headers, body = server.invoke(b"1,2,3\n", "text/csv", **headers)
    assert status == HTTPStatus.BAD_REQUEST
    assert response_headers["content-type"] == media_type
    if isinstance(expected, bytes):
        assert body == expected
    else:
        assert body.endswith(b"\n") == (media_type == "application/jsonlines")
        assert len(body.splitlines()) == 1
        assert json.loads(body) == expected


def test_unknown_method(server):
    """An unknown method is a 400 listing the methods the model has.

    README Errors: "unknown method in the custom attributes" 400 ``unknown_method``."""
    status, _, body = server.invoke(
        b"1,2,3,4\n",
        "text/csv",
        Accept="application/json",
        **{"X-Amzn-SageMaker-Custom-Attributes": "method=transform"},
    )
    assert status == HTTPStatus.BAD_REQUEST
    error = json.loads(body)
    assert error["code"] == "unknown_method"
    assert "predict, predict_proba, predict_log_proba" in error["detail"]


def test_oversize_body_is_413_from_nginx(server):
    """A body over 6 MB never reaches the app: nginx answers 413 in JSON.

    README Errors: "body over the payload limit (nginx ...)" 413 ``payload_too_large``.
    docs/serving.md, Errors: "body over the payload limit (nginx, and Django with the
    same value; nginx reads and discards the rest of the body, so a client that writes
    its whole body before reading still reads this answer)".
    """
    body = b"1,2,3,4\n" * (6 * 1024 * 1024 // 8 + 10)
    status, headers, response = server.invoke(body, "text/csv")
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert headers["content-type"] == "application/json"
    assert json.loads(response)["code"] == "payload_too_large"
    # Answered by nginx alone, and still logged.
    assert wait_for(
        lambda: invocation_lines(server, " 413 records=- in=text/csv"),
        what="the 413's line",
    )


@pytest.mark.parametrize(
    "accept", [None, "application/json", "text/html,application/xhtml+xml,*/*;q=0.8"]
)
@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", HTTPStatus.NOT_FOUND, "not_found"),
        ("GET", "/invocations", HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed"),
        ("POST", "/ping/", HTTPStatus.NOT_FOUND, "not_found"),
        ("GET", "/admin/", HTTPStatus.NOT_FOUND, "not_found"),
    ],
)
def test_unknown_paths_and_methods_are_json(server, method, path, status, code, accept):
    """Never HTML, not even for a path or method that does not exist, nor for a browser's
    Accept: an unknown path is JSON; a wrong method on /invocations is in the format
    negotiated there (CSV, the request's own type, unless JSON is asked for).

    README Errors: "unknown path / method on a path" 404 / 405 ``not_found`` /
    ``method_not_allowed``; "never HTML, not even for an unknown path"."""
    headers = {"Accept": accept} if accept else {}
    got, response_headers, body = server.request(method, path, headers=headers)
    assert got == status
    negotiated = path == "/invocations" and accept != "application/json"
    if negotiated:
        assert response_headers["content-type"] == "text/csv"
        assert body == b'Method "GET" not allowed.\n'
        return
    assert response_headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == code
    assert error["detail"]


@pytest.mark.parametrize("path", ["/invocations", "/execution-parameters", "/models"])
def test_options_is_not_an_operation(server, path):
    """OPTIONS is no call of the contract: a 405 like any other method a path does not
    take, not DRF's metadata (which carried the views' docstrings)."""
    status, headers, body = server.request(
        "OPTIONS", path, headers={"Accept": "application/json"}
    )
    assert (status, headers["content-type"]) == (
        HTTPStatus.METHOD_NOT_ALLOWED,
        "application/json",
    )
    assert json.loads(body) == {
        "detail": 'Method "OPTIONS" not allowed.',
        "code": "method_not_allowed",
    }


def test_gunicorn_not_answering_is_503_from_nginx(server):
    """While nginx cannot reach gunicorn (its socket gone, as while gunicorn starts or
    restarts), an invocation is the JSON 503 that says so; once it is back, a 200.

    README Errors: "gunicorn not answering (starting, restarting, stopping)" 503
    ``model_server_unavailable``."""
    socket_path = server.run_dir / "gunicorn.sock"
    away = socket_path.with_name("gunicorn.sock.away")
    socket_path.rename(away)
    try:
        for accept in ("application/json", "text/csv"):
            status, headers, body = server.invoke(
                b"5.1,3.5,1.4,0.2\n", "text/csv", Accept=accept
            )
            assert status == HTTPStatus.SERVICE_UNAVAILABLE, body
            # nginx's own answer: JSON whatever the Accept.
            assert headers["content-type"] == "application/json"
            assert json.loads(body)["code"] == "model_server_unavailable"
    finally:
        away.rename(socket_path)
    assert server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")[0] == HTTPStatus.OK


def invocation_lines(server, marker: str) -> list[str]:
    return [
        line
        for line in server.log.splitlines()
        if "modelapp.invocations" in line and marker in line
    ]


def tagged(content_type: str) -> str:
    """``content_type`` with a parameter no other request carries: both nginx's line and
    the app's log the Content-Type as sent, so it finds this request's lines (the
    request id), whatever other tests send to the shared server."""
    return f"{content_type}; rid={uuid.uuid4().hex}"


def test_invocation_is_logged_once_by_nginx(server):
    """One INFO line per invocation with status, records, types, size and duration,
    written by nginx; the app does not repeat it, and the client does not see the
    header that carries the record count.

    README Serving: "Each invocation gets one INFO line, written by nginx"."""
    content_type = tagged("text/csv")
    body = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
    _, headers, _ = server.invoke(body, content_type, Accept="text/csv")
    assert "x-smserve-records" not in headers
    lines = wait_for(lambda: invocation_lines(server, content_type), what="the line")
    assert len(lines) == 1, lines
    assert re.search(
        r"INFO \[nginx\] modelapp.invocations: POST /invocations 200 records=2 "
        rf"in={re.escape(content_type)} out=text/csv bytes_in={len(body)} "
        r"\d+\.\d{3}s$",
        lines[0],
    ), lines


def test_error_is_logged_with_its_detail(server):
    """A rejected invocation: nginx's line, and the app's with what was wrong.

    README Serving: "An invocation the app rejects gets a second line from the app with
    the detail"."""
    content_type = tagged("text/csv")
    status, _, _ = server.invoke(b"1,2,3,4,5,6,7\n", content_type)
    assert status == HTTPStatus.BAD_REQUEST
    lines = wait_for(
        lambda: len(found := invocation_lines(server, content_type)) == 2 and found,
        what="two lines",
    )
    assert any("[nginx]" in line and " 400 records=-" in line for line in lines)
    assert any(
        f"POST /invocations 400 records=0 in={content_type} out=text/csv" in line
        and "detail='Expected 4 features per record, got 7.'" in line
        for line in lines
    ), lines
