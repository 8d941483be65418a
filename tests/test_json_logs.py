"""Structured logs and CloudWatch metrics through the real server (``docs/logs.md``):
``SMSERVE_LOG_FORMAT=json`` makes every line of ``serve``'s output one JSON object,
SageMaker's inference id travels from the request header to the invocation's line in
both formats, and ``SMSERVE_METRICS_EMF=true`` writes Embedded Metric Format lines that
the format's specification accepts (``tests/support/emf.py``)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import uuid
from datetime import datetime
from http import HTTPStatus
from typing import Any

import jsonschema
import pytest

from smserve.logs import FIELDS, JSONFormatter, nginx_line
from tests.support import ROOT, emf
from tests.support.servers import wait_for

BODY = b"5.1,3.5,1.4,0.2\n"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
# Every line's fields, and an invocation's (whoever writes it; docs/logs.md).
LINE_FIELDS = {"timestamp", "level", "logger", "message"}
INVOCATION_FIELDS = LINE_FIELDS | {
    "process",
    "method",
    "path",
    "status",
    "code",
    "records",
    "content_type",
    "response_type",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "model",
    "model_sha256",
    "engine",
    "inference_id",
}
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
# Every writer of a line, with everything on.
JSON_ENV = {
    "SMSERVE_LOG_FORMAT": "json",
    "SMSERVE_NGINX_ACCESS_LOG": "/dev/stderr",
    "GUNICORN_CMD_ARGS": "--access-logfile -",
}
# EMF lines within a second or so, for a test.
EMF_ENV = {
    "SMSERVE_METRICS_EMF": "true",
    "SMSERVE_METRICS_EMF_SECONDS": "1",
    "SMSERVE_STATS_FLUSH_SECONDS": "0.2",
}


def json_lines(log: str) -> list[dict[str, Any]]:
    """Every line of ``log`` as a JSON object (an assertion error names the first line
    that is not one)."""
    found = []
    for number, line in enumerate(log.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), line
        assert LINE_FIELDS <= entry.keys(), line
        assert entry["level"] in LEVELS, line
        datetime.fromisoformat(entry["timestamp"])
        found.append(entry)
    return found


def invocations(entries: list[dict[str, Any]], inference_id: str) -> list[dict]:
    return [
        e
        for e in entries
        if e["logger"] == "modelapp.invocations" and e["inference_id"] == inference_id
    ]


def emf_documents(log: str) -> list[dict[str, Any]]:
    """The EMF lines of ``log`` (JSON objects with an ``_aws`` member)."""
    found = []
    for line in log.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            found.append(json.loads(line))
    return found


def emf_total(log: str, metric: str) -> float:
    return sum(doc[metric] for doc in emf_documents(log))


def test_every_line_of_the_server_is_json(serve_factory, iris_base):
    """With every writer on (`SMSERVE_LOG_FORMAT` json, nginx's access log, gunicorn's
    access log, `SMSERVE_METRICS_EMF`), every line serve writes from start to stop is one
    JSON object with `timestamp`, `level`, `logger` and `message`: serve's own, gunicorn's
    error and access lines, Django's and smserve's, nginx's invocation and access lines
    and its error log (wrapped). Each invocation has one line, nginx's for a success and
    the app's for an error it answered, with `process`, `method`, `path`, `status`,
    `code`, `records`, `content_type`, `response_type`, `bytes_in`, `bytes_out`,
    `duration_ms`, `model`, `model_sha256`, `engine`, `inference_id` (and `detail` and
    `source` where they apply); nginx's access lines add `remote_addr`, `referer`,
    `user_agent`; EMF lines count both invocations."""
    server = serve_factory(iris_base, env={**JSON_ENV, **EMF_ENV})
    ok, bad = f"ok-{uuid.uuid4()}", f"bad-{uuid.uuid4()}"
    assert server.invoke(BODY, **{INFERENCE_ID: ok})[0] == HTTPStatus.OK
    status, _, _ = server.invoke(b"1,2\n", **{INFERENCE_ID: bad})
    assert status == HTTPStatus.BAD_REQUEST
    # nginx answers this one itself, and logs an error line of its own.
    too_large = server.invoke(b"1,2,3,4\n" * 2_000_000)
    assert too_large[0] == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert server.request("GET", "/nowhere")[0] == HTTPStatus.NOT_FOUND
    wait_for(
        lambda: emf_total(server.log, "Invocations") == 2,
        what="EMF lines counting both invocations the app saw",
    )
    server.stop()
    entries = json_lines(server.log)

    loggers = {e["logger"] for e in entries}
    assert {
        "serve",
        "gunicorn.error",
        "gunicorn.access",
        "modelapp.registry",
        "modelapp.invocations",
        "modelapp.emf",
        "nginx.access",
        "nginx.error",
    } <= loggers, loggers
    (success,) = invocations(entries, ok)
    assert success.keys() == INVOCATION_FIELDS | {"source"}, success
    assert success["source"] == "nginx"
    assert success["status"] == HTTPStatus.OK
    assert (success["records"], success["code"]) == (1, "")
    assert (success["bytes_in"], success["bytes_out"]) == (len(BODY), 2)
    assert success["model"] == "model"
    assert len(success["model_sha256"]) == 12
    assert success["engine"] in ("onnxruntime", "scikit-learn")
    (error,) = invocations(entries, bad)
    assert error.keys() == INVOCATION_FIELDS | {"detail"}, error
    assert (error["status"], error["code"]) == (400, "invalid_input")
    assert error["detail"] == "Expected 4 features per record, got 2."
    assert error["model_sha256"] == success["model_sha256"]
    (refused,) = [
        e
        for e in entries
        if e["logger"] == "modelapp.invocations" and e["status"] == 413
    ]
    assert refused["code"] == "payload_too_large"
    assert any(
        e["logger"] == "nginx.error"
        and e["level"] == "ERROR"
        and "too large body" in e["message"]
        for e in entries
    )
    (access,) = [
        e for e in entries if e["logger"] == "nginx.access" and e["path"] == "/nowhere"
    ]
    assert access["status"] == HTTPStatus.NOT_FOUND
    assert access["remote_addr"] == "127.0.0.1"
    assert (access["referer"], access["user_agent"]) == ("", "")
    assert emf_total(server.log, "Errors4xx") == 1


def test_app_written_lines_have_the_same_fields(serve_factory, iris_base):
    """Without nginx's line (`SMSERVE_FAST_PATHS_OFF=nginx_log`) the app writes every
    invocation's line, with the same fields nginx writes; the JSON formatter's own lines
    carry the process id. gunicorn's access log stays off unless asked for: JSON mode
    adds no line (nor its cost) per request."""
    server = serve_factory(
        iris_base,
        env={"SMSERVE_LOG_FORMAT": "json", "SMSERVE_FAST_PATHS_OFF": "nginx_log"},
    )
    sent = f"app-{uuid.uuid4()}"
    assert server.invoke(BODY, **{INFERENCE_ID: sent})[0] == HTTPStatus.OK
    line = wait_for(
        lambda: invocations(json_lines(server.log), sent), what="the app's line"
    )[0]
    assert line.keys() == INVOCATION_FIELDS, line
    assert (line["status"], line["records"], line["bytes_out"]) == (200, 1, 2)
    assert line["engine"] in ("onnxruntime", "scikit-learn")
    assert line["message"].startswith("POST /invocations 200 records=1 ")
    assert line["message"].endswith(f" inference_id={sent}")
    entries = json_lines(server.log)
    assert "gunicorn.error" in {e["logger"] for e in entries}
    assert "gunicorn.access" not in {e["logger"] for e in entries}


def test_the_inference_id_is_on_the_text_lines(server):
    """The default text format is unchanged but for the caller's
    `X-Amzn-SageMaker-Inference-Id`, echoed as `inference_id=` at the end of nginx's
    line and before the detail on the app's."""
    ok, bad = f"text-ok-{uuid.uuid4()}", f"text-bad-{uuid.uuid4()}"
    assert server.invoke(BODY, **{INFERENCE_ID: ok})[0] == HTTPStatus.OK
    assert server.invoke(b"1,2\n", **{INFERENCE_ID: bad})[0] == HTTPStatus.BAD_REQUEST

    def lines(marker: str) -> list[str]:
        return [line for line in server.log.splitlines() if marker in line]

    (nginx,) = wait_for(lambda: lines(ok), what="nginx's line")
    assert (
        "INFO [nginx] modelapp.invocations: POST /invocations 200 records=1 " in nginx
    )
    assert nginx.endswith(f"s inference_id={ok}")
    found = wait_for(lambda: len(lines(bad)) == 2 and lines(bad), what="two lines")
    app = next(line for line in found if "[nginx]" not in line)
    assert f"ms inference_id={bad} detail='Expected 4 features" in app
    # A line without an id is as it was: it ends with nginx's time.
    tagged = f"text/csv; rid={uuid.uuid4().hex}"
    assert server.invoke(BODY, tagged)[0] == HTTPStatus.OK
    (plain,) = wait_for(lambda: lines(tagged), what="the line without an id")
    assert re.search(
        rf"in={re.escape(tagged)} out=text/csv bytes_in=16 \d+\.\d{{3}}s$", plain
    )


def test_emf_lines_follow_the_specification(serve_factory, iris_base):
    """`SMSERVE_METRICS_EMF` true writes, per model and every
    `SMSERVE_METRICS_EMF_SECONDS`, lines CloudWatch turns into metrics: each validates
    against the Embedded Metric Format's specification, also with text logs, and their
    `Invocations`, `Records`, `Errors4xx`, `Errors5xx`, `BytesIn` and `BytesOut` add up
    to what the workers answered; `Latency` holds each invocation's time and
    `LatencyMax` the slowest."""
    server = serve_factory(iris_base, env=EMF_ENV)
    bodies = [BODY, BODY * 3, b"1,2\n", BODY]
    answers = [server.invoke(body) for body in bodies]
    assert [status for status, _, _ in answers] == [200, 200, 400, 200]
    wait_for(
        lambda: emf_total(server.log, "Invocations") == len(bodies),
        what="every invocation in the EMF lines",
    )
    documents = emf_documents(server.log)
    for document in documents:
        emf.validate(document)
        assert document["Model"] == "model"
        assert document["_aws"]["Timestamp"] % 1000 == 0
    assert emf_total(server.log, "Records") == 1 + 3 + 0 + 1
    assert emf_total(server.log, "Errors4xx") == 1
    assert emf_total(server.log, "Errors5xx") == 0
    assert emf_total(server.log, "BytesIn") == sum(len(b) for b in bodies)
    assert emf_total(server.log, "BytesOut") == sum(len(body) for _, _, body in answers)
    latencies = [v for d in documents for v in d["Latency"]]
    assert len(latencies) == len(bodies)
    assert max(latencies) == max(d["LatencyMax"] for d in documents)


def test_the_emf_checker_refuses_what_the_specification_does():
    """The checker is no rubber stamp: a document without its timestamp, with a unit
    CloudWatch lacks, or naming a metric it does not carry is refused."""
    good: dict[str, Any] = {
        "_aws": {
            "Timestamp": 1_700_000_000_000,
            "CloudWatchMetrics": [
                {
                    "Namespace": "smserve",
                    "Dimensions": [["Model"]],
                    "Metrics": [{"Name": "Invocations", "Unit": "Count"}],
                }
            ],
        },
        "Model": "m",
        "Invocations": 3,
    }
    emf.validate(good)
    no_time = json.loads(json.dumps(good))
    del no_time["_aws"]["Timestamp"]
    bad_unit = json.loads(json.dumps(good))
    bad_unit["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = "Requests"
    missing = {k: v for k, v in good.items() if k != "Invocations"}
    too_many = {**good, "Invocations": [1.0] * 101}
    for document in (no_time, bad_unit, missing, too_many):
        with pytest.raises((AssertionError, jsonschema.ValidationError)):
            emf.validate(document)


def test_nginx_error_lines_are_wrapped():
    """nginx's error lines (and its start-up messages) become JSON with nginx's level and
    pid; its JSON access lines pass unchanged."""
    line = nginx_line(b"2026/12/07 19:05:00 [crit] 41#41: *3 connect() failed\n")
    entry = json.loads(line)
    assert entry["level"] == "CRITICAL"
    assert entry["logger"] == "nginx.error"
    assert entry["process"] == 41
    assert entry["message"] == "*3 connect() failed"
    assert json.loads(nginx_line(b'nginx: [emerg] bind() failed "x"\n'))["message"] == (
        'bind() failed "x"'
    )
    access = b'{"logger":"nginx.access","status":200}\n'
    assert nginx_line(access) == access


def test_json_formatter_keeps_the_traceback_and_the_fields():
    """An exception's traceback goes into `exception`; the call's fields to the top."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    record.__dict__[FIELDS] = {"status": 500}
    entry = json.loads(JSONFormatter().format(record))
    assert entry["message"] == "failed here"
    assert entry["status"] == 500
    assert "ValueError: boom" in entry["exception"]


def test_an_unknown_log_format_stops_start_up(tmp_path):
    """`SMSERVE_LOG_FORMAT` other than text or json is an error naming the variable;
    so is an `SMSERVE_METRICS_EMF_SECONDS` of zero."""
    for name, value, message in (
        ("SMSERVE_LOG_FORMAT", "xml", "SMSERVE_LOG_FORMAT must be 'text' or 'json'"),
        ("SMSERVE_METRICS_EMF_SECONDS", "0", "SMSERVE_METRICS_EMF_SECONDS must be"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", "import smserve.settings"],
            env={
                "PATH": "/usr/bin:/bin",
                "SMSERVE_STATE_DIR": str(tmp_path),
                name: value,
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode != 0
        assert message in done.stderr
