"""``serve`` on a machine whose every core is busy: what a loaded host showed once in a
while (a timeout answered late and as a 500, a reset instead of a 413, a stop that waited
out gunicorn's grace period) must hold every time. Each test saturates the CPU with one
busy-loop process per core, started here and killed by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest

from tests.support.faults import UnwaitedServe
from tests.support.models import SlowPredictClassifier, write_model
from tests.support.servers import ServeProcess, wait_for

pytestmark = pytest.mark.server

X4 = np.zeros((4, 4))
Y4 = np.array([0, 1, 0, 1])
SLOW = b"999,0,0,0\n"
# A hang guard, not a figure: with every core busy a start-up can take a minute.
START_DEADLINE = 180


@pytest.fixture
def busy_cpus():
    """One process spinning on each core for the length of the test."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    yield [p.pid for p in spinners]
    for spinner in spinners:
        spinner.kill()
        spinner.wait()


@pytest.fixture
def slow_base(tmp_path):
    """A model whose prediction of a record starting with 999 takes 30 s."""
    base = tmp_path / "ml"
    write_model(base, SlowPredictClassifier(delay=30).fit(X4, Y4))
    return base


def assert_timeout_504(status: int, headers: dict, body: bytes, timeout: int) -> None:
    assert status == HTTPStatus.GATEWAY_TIMEOUT, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == "model_server_timeout"
    assert f"timeout of {timeout} s" in error["detail"]


def test_timeout_is_504_at_the_timeout_with_the_cpu_saturated(
    serve_factory, slow_base, busy_cpus
):
    """SAGEMAKER_MODEL_SERVER_TIMEOUT=3 and predictions that take 30 s, with every core
    busy: every one is the JSON 504 ``model_server_timeout`` at about 3 s (never
    gunicorn's kill at 8 s), five times in a row, and the server goes on answering.
    docs/serving.md, Errors: "invocation longer than the model server timeout (nginx
    answers it; the worker, timing the request itself, answers the same if nginx has not,
    then exits and is replaced; so does a worker gunicorn kills 5 s later, stuck in code
    no signal interrupts)".
    """
    server = serve_factory(
        slow_base, workers=2, env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "3"}
    )
    for _ in range(5):
        started = time.monotonic()
        status, headers, body = server.invoke(SLOW, "text/csv", Accept="text/csv")
        elapsed = time.monotonic() - started
        assert_timeout_504(status, headers, body, 3)
        assert 2.9 <= elapsed < 4.5, elapsed
    assert server.invoke(b"1,2,3,4\n", "text/csv")[0] == HTTPStatus.OK


def test_without_nginx_the_worker_answers_the_timeout(serve_factory, slow_base):
    """Without nginx the worker times the request itself: the same JSON 504 at the
    timeout, not a 500 when gunicorn kills the worker 5 s later; the worker is
    replaced and the server goes on answering.
    docs/serving.md, Errors: "invocation longer than the model server timeout (nginx
    answers it; the worker, timing the request itself, answers the same if nginx has not,
    then exits and is replaced; so does a worker gunicorn kills 5 s later, stuck in code
    no signal interrupts)".
    """
    server = serve_factory(
        slow_base,
        workers=1,
        env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "2", "SMSERVE_NGINX": "off"},
    )
    (worker,) = server.gunicorn_workers()
    started = time.monotonic()
    status, headers, body = server.invoke(SLOW, "text/csv")
    elapsed = time.monotonic() - started
    assert_timeout_504(status, headers, body, 2)
    assert elapsed < 4, elapsed
    assert "ran past the model server timeout of 2 s" in server.log
    wait_for(
        lambda: (workers := server.gunicorn_workers()) and worker not in workers,
        what="a new worker in place of the timed-out one",
    )
    assert server.invoke(b"1,2,3,4\n", "text/csv")[0] == HTTPStatus.OK


def test_body_over_the_limit_is_read_as_413_by_a_client_that_writes_first(
    serve_factory, iris_base, busy_cpus
):
    """A 7 MB body against the 6 MB limit, sent by urllib, which writes the whole body
    before it reads anything: nginx answers 413 at once and reads the rest of the body
    away, so the client reads the JSON 413 (no EPIPE, no reset), every time.
    docs/serving.md, Errors: "body over the payload limit (nginx, and Django with the
    same value; nginx reads and discards the rest of the body, so a client that writes
    its whole body before reading still reads this answer)".
    """
    server = serve_factory(iris_base)
    body = b"1,2,3,4\n" * (7 * 1024 * 1024 // 8)
    for _ in range(5):
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/invocations",
            data=body,
            headers={"Content-Type": "text/csv"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=60)
        assert caught.value.code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        assert caught.value.headers["Content-Type"] == "application/json"
        assert json.loads(caught.value.read())["code"] == "payload_too_large"


def stop_time(server: ServeProcess, at_launch: bool = False) -> float:
    """Seconds from SIGTERM to serve's exit (status 0), with every process it had
    started, and its run dir, gone. At launch bash may not have run a line yet: the
    signal's default action ends it, which is a prompt stop too."""
    children = server.child_pids()
    started = time.monotonic()
    code = server.stop(timeout=40)
    elapsed = time.monotonic() - started
    assert code in ((0, -signal.SIGTERM) if at_launch else (0,)), server.log
    assert server.run_dirs() == [], server.log
    wait_for(
        lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children),
        deadline=10,
        what="serve's children gone",
    )
    return elapsed


def children_cmdlines(server: ServeProcess) -> str:
    return " ".join(
        Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        for pid in server.child_pids()
        if os.path.exists(f"/proc/{pid}")
    )


def ping_status(server: ServeProcess) -> int | None:
    try:
        return server.request("GET", "/ping", timeout=2)[0]
    except OSError:
        return None


def stop_at(server: ServeProcess, moment: str) -> float:
    """Start ``server``, wait for ``moment`` of its start-up, SIGTERM it: the seconds
    it took to stop."""
    server.start()
    try:
        if moment == "during prepare_serve":
            wait_for(
                lambda: "prepare_serve" in children_cmdlines(server),
                deadline=START_DEADLINE,
                what="prepare_serve running",
            )
        elif moment == "when gunicorn boots a worker":
            wait_for(
                lambda: "Booting worker" in server.log,
                deadline=START_DEADLINE,
                what="a worker booting",
            )
        elif moment == "ready":
            wait_for(
                lambda: ping_status(server) == HTTPStatus.OK,
                deadline=START_DEADLINE,
                what="/ping 200",
            )
    finally:
        elapsed = stop_time(server, at_launch=moment == "at launch")
    return elapsed


@pytest.mark.parametrize(
    ("moment", "attempts"),
    [
        ("at launch", 3),
        ("during prepare_serve", 3),
        ("when gunicorn boots a worker", 3),
        # Once here: the test below stops serve at this same moment five times, with
        # four workers still booting rather than two.
        ("ready", 1),
    ],
)
def test_sigterm_at_any_point_of_start_up_stops_serve_promptly(
    tmp_path, iris_base, busy_cpus, moment, attempts
):
    """SIGTERM at each point of start-up, with nothing in flight, three times each
    (once when ready): serve exits 0 within a few seconds, never after gunicorn's 25 s
    grace period (a worker still booting missed the signal) or never at all (a signal
    that came while prepare_serve ran left gunicorn to start with nobody to stop it)."""
    for attempt in range(attempts):
        work = tmp_path / f"{attempt}"
        work.mkdir()
        server = UnwaitedServe(iris_base, work, workers=2)
        elapsed = stop_at(server, moment)
        assert elapsed < 5, (moment, elapsed, server.log)


def test_sigterm_right_after_ping_turns_200_stops_serve_promptly(
    tmp_path, iris_base, busy_cpus
):
    """The case seen: a stop sent as soon as /ping says 200 (nginx answers from the ready
    file, written before the workers fork, so they may still be booting), five times
    with four workers: each stop takes a few seconds at most."""
    for attempt in range(5):
        work = tmp_path / f"{attempt}"
        work.mkdir()
        server = UnwaitedServe(iris_base, work, workers=4)
        elapsed = stop_at(server, "ready")
        assert elapsed < 5, (elapsed, server.log)
