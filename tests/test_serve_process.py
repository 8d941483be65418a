"""``docker/serve`` as a process: model states, health under load, signals, modes."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from tests.support import ROOT
from tests.support.models import BuggyClassifier, SlowPredictClassifier, write_model
from tests.support.servers import SERVE, wait_for

X4 = np.zeros((4, 4))
Y4 = np.array([0, 1, 0, 1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pids_of_children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def wait_gone(pids: list[int], timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_missing_model_is_503_with_reason(serve_factory, tmp_path):
    """No model: the server runs, /ping and /invocations say 503 and why."""
    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    (base / "model" / "notes.txt").write_text("not a model")
    server = serve_factory(base, expect_status=503)
    status, _, body = server.request("GET", "/ping")
    assert status == HTTPStatus.SERVICE_UNAVAILABLE
    error = json.loads(body)
    assert error["code"] == "model_not_ready"
    assert "No model artifact" in error["detail"]
    status, _, body = server.invoke(b"1,2,3,4\n", "text/csv", Accept="application/json")
    assert status == HTTPStatus.SERVICE_UNAVAILABLE
    assert "No model artifact" in json.loads(body)["detail"]
    assert "holds: notes.txt" in server.log


def test_corrupt_model_is_503(serve_factory, tmp_path):
    """A corrupt artifact never crashes the server: 503 naming the load error."""
    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    (base / "model" / "model.joblib").write_bytes(b"\x80\x04 definitely not a pickle")
    server = serve_factory(base, expect_status=503)
    status, _, body = server.request("GET", "/ping")
    assert status == HTTPStatus.SERVICE_UNAVAILABLE
    assert "Could not load model.joblib" in json.loads(body)["detail"]


def test_lone_pickle_beside_tarball_loads(serve_factory, tmp_path, regressor_1f):
    """A model trained elsewhere (one *.pkl, no metadata, model.tar.gz beside) loads; a
    single-feature model takes one value per record."""
    base = tmp_path / "ml"
    write_model(base, regressor_1f, name="regressor.pkl")
    (base / "model" / "model.tar.gz").write_bytes(b"left by local mode")
    server = serve_factory(base)
    status, _, body = server.invoke(b"1\n2\n3\n", "text/csv", Accept="application/json")
    assert status == HTTPStatus.OK, body
    assert json.loads(body)["predictions"] == pytest.approx([3.0, 5.0, 7.0])
    status, _, body = server.invoke(b"[1, 2, 3]", "application/json")
    assert status == HTTPStatus.OK, body
    assert json.loads(body)["predictions"] == pytest.approx([3.0, 5.0, 7.0])


def test_feature_names_model(serve_factory, tmp_path, iris):
    """A model fitted on a DataFrame takes records as objects, and a CSV header in any
    column order; NaN is accepted because the model supports it."""
    X, y = iris
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    model = HistGradientBoostingClassifier(max_iter=5).fit(
        pd.DataFrame(X, columns=names), y
    )
    base = tmp_path / "ml"
    write_model(base, model)
    server = serve_factory(base)
    records = [dict(zip(names, row, strict=True)) for row in X[[0, 100]].tolist()]
    status, _, body = server.invoke(
        json.dumps({"instances": records}).encode(), "application/json"
    )
    assert status == HTTPStatus.OK, body
    expected = model.predict(pd.DataFrame(X[[0, 100]], columns=names)).tolist()
    assert json.loads(body)["predictions"] == expected

    header = "petal_width,petal_length,sepal_width,sepal_length\n"
    rows = "".join(",".join(map(str, row[::-1])) + "\n" for row in X[[0, 100]].tolist())
    status, _, body = server.invoke(
        (header + rows).encode(), "text/csv; header=present", Accept="application/json"
    )
    assert status == HTTPStatus.OK, body
    assert json.loads(body)["predictions"] == expected

    status, _, body = server.invoke(
        json.dumps([{"sepal_length": 1}]).encode(), "application/json"
    )
    assert status == HTTPStatus.BAD_REQUEST
    assert "lacks 'sepal_width'" in json.loads(body)["detail"]

    status, _, body = server.invoke(
        b"nan,1,1,1\n", "text/csv", Accept="application/json"
    )
    assert status == HTTPStatus.OK, body


def test_model_without_nan_support_rejects_nan(serve_factory, tmp_path, regressor_1f):
    """NaN is a 400 for a model that cannot take it, naming record and feature."""
    base = tmp_path / "ml"
    write_model(base, regressor_1f)
    server = serve_factory(base)
    status, _, body = server.invoke(b"1\nnan\n", "text/csv", Accept="application/json")
    assert status == HTTPStatus.BAD_REQUEST
    assert "Record 2, feature 1 is nan" in json.loads(body)["detail"]


def test_bug_is_500_with_traceback_in_log(serve_factory, tmp_path):
    """An unexpected error is a 500 with a JSON body and a logged traceback, not a 400."""
    base = tmp_path / "ml"
    write_model(base, BuggyClassifier().fit(X4, Y4))
    server = serve_factory(base)
    status, headers, body = server.invoke(b"1,2,3,4\n1,2,3,4\n", "text/csv")
    assert status == HTTPStatus.INTERNAL_SERVER_ERROR
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == "server_error"
    assert "Traceback" in server.log
    assert "ZeroDivisionError: deliberate bug" in server.log


def test_ping_answers_while_every_worker_is_busy(serve_factory, tmp_path):
    """/ping answers fast while both workers are stuck in slow invocations."""
    base = tmp_path / "ml"
    write_model(base, SlowPredictClassifier(delay=4).fit(X4, Y4))
    server = serve_factory(base, workers=2)
    results = []
    slow = [
        threading.Thread(
            target=lambda: results.append(server.invoke(b"999,0,0,0\n", "text/csv")[0])
        )
        for _ in range(4)
    ]
    for thread in slow:
        thread.start()
    time.sleep(0.5)  # both workers are now inside predict
    timings = []
    for _ in range(5):
        started = time.monotonic()
        status, _, _ = server.request("GET", "/ping", timeout=5)
        timings.append(time.monotonic() - started)
        assert status == HTTPStatus.OK
    for thread in slow:
        thread.join()
    assert results == [HTTPStatus.OK] * 4
    assert max(timings) < 2, timings


def test_sigterm_drains_then_stops_both(serve_factory, tmp_path):
    """SIGTERM lets an in-flight invocation finish, then nginx and gunicorn both exit
    and serve exits 0."""
    base = tmp_path / "ml"
    write_model(base, SlowPredictClassifier(delay=2).fit(X4, Y4))
    server = serve_factory(base)
    children = server.child_pids()
    assert len(children) == 2
    results = []
    inflight = threading.Thread(
        target=lambda: results.append(server.invoke(b"999,0,0,0\n", "text/csv")[0])
    )
    inflight.start()
    time.sleep(0.5)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    inflight.join()
    assert results == [HTTPStatus.OK]
    assert time.monotonic() - started < 30
    assert wait_gone(children), children
    assert "stopping: draining" in server.log


def test_child_death_stops_everything(serve_factory, tmp_path, iris_base):
    """If nginx dies, serve stops gunicorn and exits non-zero (the instance is replaced)."""
    server = serve_factory(iris_base)
    children = server.child_pids()
    nginx_pid = max(children)  # started second
    nginx_workers = pids_of_children(nginx_pid)
    assert nginx_workers
    os.kill(nginx_pid, signal.SIGKILL)
    assert server.proc.wait(30) != 0
    assert wait_gone(children), children
    # The dead master's workers are not left behind holding the port.
    assert wait_gone(nginx_workers), nginx_workers
    assert f"nginx (pid {nginx_pid}) exited: stopping" in server.log


def main_thread_wakeups(pid: int) -> int:
    """How often the process's main thread has slept and been woken."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    return int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))


def test_one_idle_worker_wakes_per_connection(serve_factory, iris_base):
    """Sequential invocations wake one gunicorn worker, not all: gunicorn's stock sync
    workers all wake for every connection (each did here, ~1.1 times per request)."""
    server = serve_factory(iris_base)
    (master,) = [
        pid
        for pid in server.child_pids()
        if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    workers = wait_for(
        lambda: len(pids_of_children(master)) == 2 and pids_of_children(master),
        what="two gunicorn workers",
    )
    # Each worker has answered once and settled (its stats thread has started).
    for _ in range(8):
        server.invoke(b"5.1,3.5,1.4,0.2\n")
    time.sleep(0.5)
    before = [main_thread_wakeups(pid) for pid in workers]
    requests = 200
    for _ in range(requests):
        assert server.invoke(b"5.1,3.5,1.4,0.2\n")[0] == HTTPStatus.OK
    woken = [
        main_thread_wakeups(pid) - b for pid, b in zip(workers, before, strict=True)
    ]
    assert sum(woken) >= requests, woken  # the workers did serve them
    assert min(woken) < requests // 4, woken


def test_without_nginx_gunicorn_takes_the_port(serve_factory, iris_base):
    """SMSERVE_NGINX=off (or no nginx installed): gunicorn serves the port itself, says
    so, and Django enforces the same payload limit with a 413."""
    server = serve_factory(
        iris_base, env={"SMSERVE_NGINX": "off", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"}
    )
    assert "nginx not found" in server.log
    status, headers, body = server.invoke(
        b"5.1,3.5,1.4,0.2\n", "text/csv", Accept="text/csv"
    )
    assert status == HTTPStatus.OK
    assert body == b"0\n"
    assert "x-smserve-records" not in headers  # only nginx needs it
    # No nginx to write the invocation's line: the app does.
    assert wait_for(
        lambda: re.search(
            r"INFO \[\d+\] modelapp.invocations: POST /invocations 200 records=1 "
            r"in=text/csv out=text/csv bytes_in=16 [\d.]+ms",
            server.log,
        ),
        what="the app's invocation line",
    )
    # Django answers from the Content-Length alone and closes the connection: a client
    # still sending would see a broken pipe, so this one sends the headers only.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Type", "text/csv")
        conn.putheader("Accept", "application/json")
        conn.putheader("Content-Length", str(1024 * 1024 + 1))
        conn.endheaders()
        response = conn.getresponse()
        status, body = response.status, response.read()
    finally:
        conn.close()
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    error = json.loads(body)
    assert error["code"] == "payload_too_large"
    assert "limit is 1048576 bytes" in error["detail"]


def test_early_health_checks_are_not_nginx_errors(serve_factory, iris_base):
    """The harness pings from the moment serve starts: nginx, started once gunicorn
    listens, never fails to reach it (which it logs as [crit])."""
    server = serve_factory(iris_base)
    assert server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")[0] == HTTPStatus.OK
    assert "[crit]" not in server.log
    assert "[error]" not in server.log


def test_log_lines_survive_a_plain_file_redirect(serve_factory, iris_base):
    """`serve > serve.log 2>&1` (no append mode): nginx, which opens /dev/stderr itself,
    and the Python processes do not overwrite each other's lines."""
    server = serve_factory(iris_base, append_log=False)
    for _ in range(3):
        assert server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")[0] == HTTPStatus.OK
    assert server.stop() == 0
    lines = server.log.splitlines()
    nginx_lines = [
        line
        for line in lines
        if "[nginx] modelapp.invocations: POST /invocations 200 records=1 " in line
    ]
    assert len(nginx_lines) >= 3, lines[-12:]
    # Every line whole: an overwritten one starts mid-way through another's text.
    whole = re.compile(r"^(\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d|System check )")
    assert [line for line in lines if not whole.match(line)] == [], lines
    assert "Shutting down: Master" in server.log
    assert lines[-1].endswith("serve: stopped")


def test_stderr_socket_leaves_invocation_lines_to_the_app(serve_process, iris_base):
    """Under systemd stderr is a socket, which nginx cannot open as /dev/stderr: serve
    starts all the same and the app writes the invocation lines."""
    server = serve_process(iris_base, workers=1)  # its environment and port
    ours, theirs = socket.socketpair()
    output: list[bytes] = []
    reader = threading.Thread(
        target=lambda: [
            output.append(chunk) for chunk in iter(lambda: ours.recv(65536), b"")
        ]
    )
    reader.start()
    proc = subprocess.Popen(
        [str(SERVE)],
        env=server.env,
        cwd=ROOT,
        stdout=theirs,
        stderr=theirs,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    theirs.close()
    try:

        def invoked() -> bool:
            try:
                return server.invoke(b"5.1,3.5,1.4,0.2\n")[0] == HTTPStatus.OK
            except OSError:
                return False

        wait_for(invoked, deadline=60, what="an invocation answered 200")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(35) == 0
        reader.join(10)
        ours.close()
    log = b"".join(output).decode(errors="replace")
    assert "started gunicorn" in log, log
    assert "and nginx" in log, log
    assert re.search(
        r"INFO \[\d+\] modelapp.invocations: POST /invocations 200 records=1 ", log
    ), log
    assert "[nginx] modelapp.invocations" not in log


def test_log_level_warning_drops_invocation_lines(serve_factory, iris_base):
    """SMSERVE_LOG_LEVEL=WARNING: no line per invocation, from nginx or the app; an
    error's detail is still an INFO line, so it goes too."""
    server = serve_factory(iris_base, env={"SMSERVE_LOG_LEVEL": "WARNING"})
    assert server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")[0] == HTTPStatus.OK
    assert server.invoke(b"5.1\n", "text/csv")[0] == HTTPStatus.BAD_REQUEST
    server.stop()
    assert "started gunicorn" in server.log
    assert "modelapp.invocations" not in server.log


def test_slow_invocation_times_out_with_504(serve_factory, tmp_path):
    """An invocation over the model server timeout is a 504 that says so."""
    base = tmp_path / "ml"
    write_model(base, SlowPredictClassifier(delay=4).fit(X4, Y4))
    server = serve_factory(base, env={"MODEL_SERVER_TIMEOUT": "1"})
    status, headers, body = server.invoke(b"999,0,0,0\n", "text/csv")
    assert status == HTTPStatus.GATEWAY_TIMEOUT
    assert headers["content-type"] == "application/json"
    assert "timeout of 1 s" in json.loads(body)["detail"]


class TestBatchMode:
    """SAGEMAKER_BATCH=true: batch transform's limits, chunked bodies and line splitting."""

    @pytest.fixture
    def batch_server(self, serve_factory, iris_base):
        return serve_factory(
            iris_base,
            env={
                "SAGEMAKER_BATCH": "True",
                "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0",
                "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv",
            },
        )

    def test_batch_server(self, batch_server, iris, iris_model):
        """Execution parameters report the real limit (0 = any size); a chunked 7 MB
        body is accepted; JSON Lines sent as application/json give one output line per
        input line; SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT picks the response type."""
        status, _, body = batch_server.request("GET", "/execution-parameters")
        assert json.loads(body)["MaxPayloadInMB"] == 0

        X, _ = iris
        rows = np.tile(X, (3000, 1))  # 450,000 records, about 7 MB of CSV
        csv = "".join(",".join(map(repr, row)) + "\n" for row in rows.tolist()).encode()
        assert len(csv) > 6 * 1024 * 1024

        def chunks():
            for start in range(0, len(csv), 1 << 20):
                yield csv[start : start + (1 << 20)]

        conn_status, headers, body = _chunked_post(batch_server, chunks())
        assert conn_status == HTTPStatus.OK, body[:200]
        assert headers["content-type"] == "text/csv"
        assert body.decode().splitlines() == [str(v) for v in iris_model.predict(rows)]

        lines = b"[5.1,3.5,1.4,0.2]\n[6.7,3.0,5.2,2.3]\n\n"
        status, headers, body = batch_server.invoke(lines, "application/json")
        assert status == HTTPStatus.OK, body
        assert body == b"0\n2\n"


def _chunked_post(server, chunks):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(
            "POST",
            "/invocations",
            body=chunks,
            headers={"Content-Type": "text/csv", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()
