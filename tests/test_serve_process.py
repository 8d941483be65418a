"""``docker/serve`` as a process: model states, health under load, signals, modes."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from tests.support import ROOT
from tests.support.models import (
    BuggyClassifier,
    SlowPredictClassifier,
    WarmUpFailingClassifier,
    write_model,
)
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
    """No model: the server runs, /ping and /invocations say 503 and why.

    README Errors: "model missing ..." 503 ``model_not_ready``."""
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
    assert json.loads(body)["code"] == "model_not_ready"
    assert "No model artifact" in json.loads(body)["detail"]
    assert "holds: notes.txt" in server.log


def assert_not_ready(server, reason: str) -> None:
    """/ping and /invocations (under each Accept) both say 503 ``model_not_ready`` with
    ``reason``; for CSV the detail is the plain line, for NPY the body is JSON."""
    status, headers, body = server.request("GET", "/ping")
    assert status == HTTPStatus.SERVICE_UNAVAILABLE
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == "model_not_ready"
    assert reason in error["detail"]
    for accept, media_type in [
        ("application/json", "application/json"),
        ("application/jsonlines", "application/jsonlines"),
        ("application/x-npy", "application/json"),
        ("text/csv", "text/csv"),
    ]:
        status, headers, body = server.invoke(b"1,2,3,4\n", "text/csv", Accept=accept)
        assert status == HTTPStatus.SERVICE_UNAVAILABLE, body
        assert headers["content-type"] == media_type
        if media_type == "text/csv":
            assert reason in body.decode()
            assert len(body.splitlines()) == 1
        else:
            assert json.loads(body)["code"] == "model_not_ready"


def test_corrupt_model_is_503(serve_factory, tmp_path):
    """A corrupt artifact never crashes the server: 503 naming the load error.

    README Errors: "model ... corrupt ... (on ``/ping`` and ``/invocations``, with the
    reason)" 503 ``model_not_ready``, in the negotiated format."""
    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    (base / "model" / "model.joblib").write_bytes(b"\x80\x04 definitely not a pickle")
    server = serve_factory(base, expect_status=503)
    assert_not_ready(server, "Could not load model.joblib")


def test_failed_warm_up_is_503(serve_factory, tmp_path):
    """A model that loads but fails its warm-up prediction is not served.

    README Errors: "model ... failing its warm-up (on ``/ping`` and ``/invocations``,
    with the reason)" 503 ``model_not_ready``.
    docs/serving.md, Errors: "or failing its warm-up (on `/ping` and `/invocations`,
    with the reason unless `SMSERVE_DETAILED_ERRORS=false`; the log says it when it
    changes and at most once a minute while it lasts, not once per ping)": here the
    warm-up, with the reason.
    """
    base = tmp_path / "ml"
    write_model(base, WarmUpFailingClassifier().fit(X4, Y4))
    server = serve_factory(base, expect_status=503)
    assert_not_ready(server, "warm-up prediction failed")
    assert "this model was saved broken" in server.log


def test_pings_while_the_model_cannot_load_log_the_reason_once(serve_factory, tmp_path):
    """Health checks poll a model that cannot load several times a second: each 503
    carries the reason in its JSON, and the log says it once (when the state changed,
    then at most once a minute), not one ``django.request`` ERROR per ping.
    docs/serving.md, Errors: "or failing its warm-up (on `/ping` and `/invocations`,
    with the reason unless `SMSERVE_DETAILED_ERRORS=false`; the log says it when it
    changes and at most once a minute while it lasts, not once per ping)": here
    the log, for a model that cannot load.
    """
    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    (base / "model" / "model.joblib").write_bytes(b"\x80\x04 definitely not a pickle")
    server = serve_factory(base, expect_status=503)
    for _ in range(20):
        status, _, body = server.request("GET", "/ping")
        assert status == HTTPStatus.SERVICE_UNAVAILABLE
        error = json.loads(body)
        assert error["code"] == "model_not_ready"
        assert "Could not load model.joblib" in error["detail"]
    reason = error["detail"].removeprefix("The model is not loaded: ")
    server.stop()
    reason_lines = [line for line in server.log.splitlines() if reason in line]
    assert len(reason_lines) == 1, reason_lines
    assert "Model not loaded: " in reason_lines[0]
    assert "django.request" not in server.log
    assert "Service Unavailable" not in server.log


def test_lone_pickle_beside_tarball_loads(serve_factory, tmp_path, regressor_1f):
    """A model trained elsewhere (one *.pkl, no metadata, model.tar.gz beside) loads; a
    single-feature model takes one value per record.

    README Formats: ``application/json`` "one value per record for a single-feature
    model"; ``application/jsonlines`` "a single number" per line; Serving: "a lone
    ``*.joblib``/``*.pkl`` trained elsewhere".
    docs/serving.md, Formats: Content-Type: "a flat `[...]` is one record (or one value
    per record for a single-feature model)".
    docs/serving.md, Formats: Content-Type: "or a single number".
    """
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
    status, _, body = server.invoke(
        b"1\n2\n3\n", "application/jsonlines", Accept="application/json"
    )
    assert status == HTTPStatus.OK, body
    assert json.loads(body)["predictions"] == pytest.approx([3.0, 5.0, 7.0])


def test_feature_names_model(serve_factory, tmp_path, iris):
    """A model fitted on a DataFrame with string labels takes records as objects (JSON and
    JSON Lines), and a CSV header in any column order; names it lacks or does not know are
    a 400; blank fields and NaN are accepted because the model supports them; NPY answers
    string labels as a unicode array; ``decision_function`` is there when the model has it.

    README Formats: ``application/json`` "records as objects ``{"feature": value}`` when
    the model was trained with feature names"; ``application/jsonlines`` "an object" per
    line; ``text/csv`` "``header=present`` skips (and uses) a header line", "blank fields
    are missing values (NaN)"; ``Accept: application/x-npy`` "(string labels as a unicode
    array)"; methods: ``decision_function``. README Errors: "missing/unknown feature
    names" 400 ``invalid_input``.
    docs/serving.md, Formats: Content-Type: "`header=present` uses a header line to name
    (and reorder) the columns". docs/serving.md, Formats: Accept: "`numpy.save` of the
    predictions (string labels as a unicode array)". docs/serving.md, Errors: "objects
    without feature names".
    """
    X, y = iris
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    model = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(
        pd.DataFrame(X, columns=names), labels
    )
    base = tmp_path / "ml"
    write_model(base, model)
    server = serve_factory(base)
    rows = X[[0, 100]]
    frame = pd.DataFrame(rows, columns=names)
    records = [dict(zip(names, row, strict=True)) for row in rows.tolist()]
    expected = model.predict(frame).tolist()
    assert expected == ["setosa", "virginica"]
    status, _, body = server.invoke(
        json.dumps({"instances": records}).encode(), "application/json"
    )
    assert status == HTTPStatus.OK, body
    assert json.loads(body)["predictions"] == expected

    lines = "".join(json.dumps(dict(reversed(r.items()))) + "\n" for r in records)
    status, _, body = server.invoke(
        lines.encode(), "application/jsonlines", Accept="application/json"
    )
    assert status == HTTPStatus.OK, body
    assert json.loads(body)["predictions"] == expected

    header = "petal_width,petal_length,sepal_width,sepal_length\n"
    csv = "".join(",".join(map(str, row[::-1])) + "\n" for row in rows.tolist())
    status, _, body = server.invoke(
        (header + csv).encode(), "text/csv; header=present", Accept="application/json"
    )
    assert status == HTTPStatus.OK, body
    assert json.loads(body)["predictions"] == expected

    status, headers, body = server.invoke(
        json.dumps(records).encode(), "application/json", Accept="application/x-npy"
    )
    assert status == HTTPStatus.OK, body
    assert headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(body), allow_pickle=False)
    assert array.dtype.kind == "U"
    assert array.tolist() == expected

    status, _, body = server.invoke(
        json.dumps(records).encode(),
        "application/json",
        **{"X-Amzn-SageMaker-Custom-Attributes": "method=decision_function"},
    )
    assert status == HTTPStatus.OK, body
    np.testing.assert_allclose(
        json.loads(body)["predictions"], model.decision_function(frame)
    )

    for bad, words in [
        ({"sepal_length": 1}, "lacks 'sepal_width'"),
        ({**records[0], "colour": 1}, "colour"),
    ]:
        status, _, body = server.invoke(json.dumps([bad]).encode(), "application/json")
        assert status == HTTPStatus.BAD_REQUEST, body
        error = json.loads(body)
        assert error["code"] == "invalid_input"
        assert words in error["detail"]

    status, _, body = server.invoke(
        b"nan,1,1,1\n,1,1,1\n", "text/csv", Accept="application/json"
    )
    assert status == HTTPStatus.OK, body
    gaps = pd.DataFrame([[np.nan, 1, 1, 1]] * 2, columns=names)
    assert json.loads(body)["predictions"] == model.predict(gaps).tolist()


def test_model_without_nan_support_rejects_nan(serve_factory, tmp_path, regressor_1f):
    """NaN is a 400 for a model that cannot take it, naming record and feature.

    README Errors: "NaN for a model that cannot take it" 400 ``invalid_input``."""
    base = tmp_path / "ml"
    write_model(base, regressor_1f)
    server = serve_factory(base)
    status, _, body = server.invoke(b"1\nnan\n", "text/csv", Accept="application/json")
    assert status == HTTPStatus.BAD_REQUEST, body
    error = json.loads(body)
    assert error["code"] == "invalid_input"
    assert "Record 2, feature 1 is nan" in error["detail"]


def test_bug_is_500_with_traceback_in_log(serve_factory, tmp_path):
    """An unexpected error is a 500 with a JSON body and a logged traceback, not a 400.

    README Errors: "a bug (logged with its traceback)" 500 ``server_error``."""
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
    """/ping answers 200 while both workers are held inside slow invocations: the
    invocations are still unanswered after the pings, and answered once released.

    README Serving: "``/ping`` is answered by nginx ... so health checks never wait
    behind busy workers". (How fast: ``bench/run.py``'s /ping p99 under load.)"""
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    base = tmp_path / "ml"
    model = SlowPredictClassifier(
        delay=120, started_dir=str(started), release_file=str(release)
    )
    write_model(base, model.fit(X4, Y4))
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
    try:
        wait_for(
            lambda: len(list(started.iterdir())) == 2, what="both workers in predict"
        )
        for _ in range(5):
            status, _, _ = server.request("GET", "/ping", timeout=30)
            assert status == HTTPStatus.OK
        assert results == []  # every worker was still busy
    finally:
        release.touch()
        for thread in slow:
            thread.join()
    assert results == [HTTPStatus.OK] * 4


def test_sigterm_drains_then_stops_both(serve_factory, tmp_path):
    """SIGTERM lets an invocation in flight at that moment finish, then nginx and gunicorn
    both exit and serve exits 0.

    README Serving: "SIGTERM drains in-flight requests and stops both"."""
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    base = tmp_path / "ml"
    model = SlowPredictClassifier(
        delay=120, started_dir=str(started), release_file=str(release)
    )
    write_model(base, model.fit(X4, Y4))
    server = serve_factory(base)
    children = server.child_pids()
    assert len(children) == 2
    results = []
    inflight = threading.Thread(
        target=lambda: results.append(server.invoke(b"999,0,0,0\n", "text/csv")[0])
    )
    inflight.start()
    try:
        wait_for(lambda: any(started.iterdir()), what="the invocation in predict")
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping: draining" in server.log, what="serve draining")
        assert results == []
    finally:
        release.touch()
    assert server.proc.wait(30) == 0
    inflight.join()
    assert results == [HTTPStatus.OK]
    assert wait_gone(children), children


def test_child_death_stops_everything(serve_factory, tmp_path, iris_base):
    """If nginx dies, serve stops gunicorn and exits non-zero (the instance is replaced).

    README Serving: "if either dies, the other is stopped and ``serve`` exits non-zero"."""
    server = serve_factory(iris_base)
    children = server.child_pids()
    # By its command line: PIDs wrap around, so "started second" is not "larger".
    (nginx_pid,) = [
        pid
        for pid in children
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"nginx")
    ]
    nginx_workers = pids_of_children(nginx_pid)
    assert nginx_workers
    os.kill(nginx_pid, signal.SIGKILL)
    assert server.proc.wait(30) != 0
    assert wait_gone(children), children
    # The dead master's workers are not left behind holding the port.
    assert wait_gone(nginx_workers), nginx_workers
    assert f"nginx (pid {nginx_pid}) exited: stopping" in server.log


def main_thread(pid: int) -> tuple[str, int]:
    """The state of the process's main thread and how often it has slept and been woken."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    state = re.search(r"^State:\s+(\S)", status, re.M).group(1)
    woken = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1)
    return state, int(woken)


def gunicorn_workers(server) -> list[int]:
    (master,) = [
        pid
        for pid in server.child_pids()
        if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    return wait_for(
        lambda: len(pids_of_children(master)) == 2 and pids_of_children(master),
        what="two gunicorn workers",
    )


def connections_waking_both(server, connections: int) -> int:
    """Of ``connections`` sequential invocations, each sent while both workers sleep,
    how many woke both workers."""
    workers = gunicorn_workers(server)
    for _ in range(4):  # each worker answers once and starts its stats thread
        assert server.invoke(b"5.1,3.5,1.4,0.2\n")[0] == HTTPStatus.OK
    last: list = []

    def settled() -> list[int] | None:
        """Both asleep, and neither woken since the previous look: the counts."""
        now = [main_thread(pid) for pid in workers]
        still = bool(last) and now == last[-1] and all(state == "S" for state, _ in now)
        last[:] = [now]
        return [woken for _, woken in now] if still else None

    both = 0
    for _ in range(connections):
        before = wait_for(settled, what="both workers idle")
        assert server.invoke(b"5.1,3.5,1.4,0.2\n")[0] == HTTPStatus.OK
        after = wait_for(settled, what="both workers idle again")
        both += all(a > b for a, b in zip(after, before, strict=True))
    return both


def test_one_idle_worker_wakes_per_connection(serve_factory, iris_base):
    """A connection that arrives while both workers are idle wakes one of them; with
    gunicorn's stock sync worker (the trick switched off) it wakes both.

    Counted per connection, each sent once both workers sleep, so a loaded machine
    changes when the requests go, not what each one wakes.

    README Serving: "sync workers of which only one wakes per connection"."""
    connections = 20
    ours = connections_waking_both(serve_factory(iris_base), connections)
    stock = connections_waking_both(
        serve_factory(iris_base, env={"SMSERVE_FAST_PATHS_OFF": "exclusive_accept"}),
        connections,
    )
    assert stock > connections * 3 // 4, (ours, stock)
    assert ours < connections // 4, (ours, stock)


def test_without_nginx_gunicorn_takes_the_port(serve_factory, iris_base):
    """SMSERVE_NGINX=off (or no nginx installed): gunicorn serves the port itself, says
    so, and Django enforces the same payload limit with a 413.

    README Errors: "body over the payload limit (nginx, and Django with the same value)"
    413 ``payload_too_large``.
    docs/serving.md, Errors: "body over the payload limit (nginx, and Django with the
    same value; nginx reads and discards the rest of the body, so a client that writes
    its whole body before reading still reads this answer)".
    docs/settings.md, Settings: "`SAGEMAKER_MAX_PAYLOAD_IN_MB`".
    """
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


def test_a_long_tmpdir_moves_the_run_dir_to_tmp(serve_factory, iris_base, tmp_path):
    """A TMPDIR too long for gunicorn's unix socket path (107 bytes at most): serve puts
    its run dir in /tmp instead, says so, serves, and removes it when it stops."""
    long_tmp = tmp_path / ("t" * 60) / ("m" * 60)
    long_tmp.mkdir(parents=True)
    server = serve_factory(iris_base, env={"TMPDIR": str(long_tmp)})

    assert server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")[0] == HTTPStatus.OK
    moved = re.search(r"the run dir is (/tmp/smserve\.\w+)", server.log)
    assert moved, server.log
    assert Path(moved.group(1)).is_dir()
    assert server.stop() == 0
    assert not Path(moved.group(1)).exists()


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
    """An invocation over the model server timeout is a 504 that says so, in JSON
    whatever the Accept (nginx answers it).

    README Errors: "invocation longer than the model server timeout" 504
    ``model_server_timeout``."""
    base = tmp_path / "ml"
    write_model(base, SlowPredictClassifier(delay=4).fit(X4, Y4))
    server = serve_factory(base, env={"MODEL_SERVER_TIMEOUT": "1"})
    status, headers, body = server.invoke(b"999,0,0,0\n", "text/csv", Accept="text/csv")
    assert status == HTTPStatus.GATEWAY_TIMEOUT
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == "model_server_timeout"
    assert "timeout of 1 s" in error["detail"]


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
        input line; SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT picks the response type.

        README Formats: ``application/json`` "several documents one per line (batch
        transform with ``SplitType=Line``) are read as JSON Lines"; ``Accept`` absent:
        "``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` if set".
        docs/settings.md, Settings: "`SAGEMAKER_BATCH`";
        "`SAGEMAKER_MAX_PAYLOAD_IN_MB`".
        """
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


def environ_of(pid: int) -> dict[str, str]:
    """A process's environment as the kernel shows it (what it was started with)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(
        item.decode(errors="replace").partition("=")[::2]
        for item in raw.split(b"\0")
        if item
    )


def test_secrets_stay_out_of_the_workers_environment(
    serve_factory, iris_base, tmp_path
):
    """SECRET_KEY, DATABASE_URL and DJANGO_SUPERUSER_PASSWORD do their jobs (the
    superuser is created in that database and logs in; every worker signs its sessions
    with that key) but are in no gunicorn process's environment, which every process a
    worker starts (pip, a user's script) would inherit. Security review L9."""
    from tests.support.admin import ADMIN_PASSWORD, ADMIN_USER, AdminClient

    database = tmp_path / "named.sqlite3"
    secrets = {
        "SECRET_KEY": "a-secret-key-for-this-test-" + "x" * 30,
        "DATABASE_URL": f"sqlite:///{database}",
        "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
    }
    server = serve_factory(
        iris_base,
        workers=2,
        env={
            **secrets,
            "SMSERVE_ADMIN_ENABLED": "1",
            "SMSERVE_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SUPERUSER_USERNAME": ADMIN_USER,
            "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
            "SMSERVE_STATIC_ROOT": str(tmp_path / "static"),
        },
    )
    client = AdminClient(server.port)
    status, headers, _ = client.login(ADMIN_USER, ADMIN_PASSWORD)
    assert status == HTTPStatus.FOUND
    assert headers["Location"] == "/admin/"
    # Several requests, so both workers check the session against the same key.
    assert {client.get("/admin/")[0] for _ in range(8)} == {HTTPStatus.OK}
    assert database.stat().st_size > 0
    assert not (tmp_path / "serve0" / "state" / "secret_key").exists()
    gunicorn = [server.gunicorn_master(), *server.gunicorn_workers()]
    assert len(gunicorn) == 3
    for pid in gunicorn:
        environ = environ_of(pid)
        for name, value in secrets.items():
            assert name not in environ, (pid, name)
            assert value not in "\0".join(environ.values()), (pid, name)
    # Nor anywhere on disk once gunicorn has read them.
    assert not list(tmp_path.glob("serve0/smserve.*/secrets.json"))


def test_gunicorn_socket_and_run_dir_are_the_owners_only(serve_factory, iris_base):
    """Nobody else on the machine may talk to gunicorn past nginx: its socket has no
    permission for others and the run dir none for group or others (unless nginx's
    workers reach them through the group, see the next test). Security review L6."""
    # A short TMPDIR that only its owner may enter (mkdtemp's 0o700), so the run dir stays
    # in it, whatever the length of pytest's own temporary directories.
    private = Path(tempfile.mkdtemp(prefix="smserve-l6-", dir="/tmp"))
    try:
        server = serve_factory(iris_base, env={"TMPDIR": str(private)})
        run_dir = server.run_dir
        assert run_dir.parent == private
        assert run_dir.stat().st_mode & 0o777 == 0o700
        socket_mode = (run_dir / "gunicorn.sock").stat().st_mode
        assert socket_mode & 0o077 == 0, oct(socket_mode)
        assert server.request("GET", "/ping")[0] == HTTPStatus.OK
        server.stop()
    finally:
        subprocess.run(["rm", "-rf", str(private)], check=True)


def nginx_workers(server) -> list[int]:
    (master,) = [
        pid
        for pid in server.child_pids()
        if b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    return pids_of_children(master)


def test_nginx_workers_do_not_run_as_root(serve_factory, iris_base):
    """As root, with a run dir www-data can reach (the image's /tmp), nginx's workers,
    which parse untrusted HTTP, run as www-data and still reach gunicorn and the ready
    file through the group; nobody else can. Security review I2.
    docs/image-and-sagemaker.md, Image, user: "nginx's workers"; "which parse the HTTP";
    "run as `www-data` (see [How `serve` runs](serving.md#how-serve-runs))".
    """
    reachable = Path(tempfile.mkdtemp(prefix="smserve-i2-", dir="/tmp"))
    try:
        reachable.chmod(0o711)
        server = serve_factory(iris_base, env={"TMPDIR": str(reachable)})
        workers = nginx_workers(server)
        assert workers
        for pid in workers:
            owner = subprocess.run(
                ["ps", "-o", "user=", "-p", str(pid)], capture_output=True, text=True
            ).stdout.strip()
            assert owner == "www-data", pid
        run_dir = server.run_dir
        assert run_dir.stat().st_mode & 0o777 == 0o710
        assert (run_dir / "gunicorn.sock").stat().st_mode & 0o777 == 0o660
        # The ready file (nginx answers /ping) and the socket (everything else).
        assert json.loads(server.request("GET", "/ping")[2])["status"] == "ready"
        assert server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")[2] == b"0\n"
        server.stop()
    finally:
        subprocess.run(["rm", "-rf", str(reachable)], check=True)


def test_x_forwarded_ssl_from_a_client_is_ignored(server):
    """A client's own scheme headers contradicting nginx's X-Forwarded-Proto are not a
    400 from gunicorn: nginx drops them. Security review I1. (Reads only: the suite's
    shared server, with the default settings.)"""
    for header in ("X-Forwarded-Ssl", "X-Forwarded-Protocol"):
        status, _, body = server.invoke(
            b"5.1,3.5,1.4,0.2\n", "text/csv", **{header: "on"}
        )
        assert status == HTTPStatus.OK, (header, body)
        assert body == b"0\n"


def test_debug_on_a_public_address_does_not_start(serve_process, iris_base):
    """SMSERVE_DEBUG=true shows tracebacks, settings and headers to every caller: on an
    address other than loopback serve refuses to start and says why; on loopback it
    starts. Security review L11."""
    public = serve_process(
        iris_base, env={"SMSERVE_DEBUG": "true", "SMSERVE_BIND_HOST": "0.0.0.0"}
    )
    done = subprocess.run(
        [str(SERVE)],
        env=public.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "modelapp.E011" in done.stderr
    assert "SMSERVE_DEBUG" in done.stderr
    local = serve_process(iris_base, env={"SMSERVE_DEBUG": "true"})
    local.start()
    assert local.request("GET", "/ping")[0] == HTTPStatus.OK
