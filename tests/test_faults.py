"""Faults as tests, against the real things: a worker killed under load, a prediction
over the timeout, the database down from the start, a full disk under ``train``, and
SIGTERM while the model loads. Every wait is on an event (a file, a log line, a
process), never on a clock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from http import HTTPStatus

import numpy as np
import pytest

from tests.support.faults import (
    AnnouncingSlowClassifier,
    SlowLoadingClassifier,
    UnwaitedServe,
    busy_pids,
)
from tests.support.models import write_model
from tests.support.servers import ServeProcess, free_port, wait_for
from tests.support.training import run_train, write_channel

X4 = np.zeros((4, 4))
Y4 = np.array([0, 1, 0, 1])
SLOW = b"999,0,0,0\n"
FAST = b"1,2,3,4\n"


def invoke_in_thread(
    server: ServeProcess, body: bytes, results: list
) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: results.append(server.invoke(body, "text/csv", timeout=60))
    )
    thread.start()
    return thread


@pytest.mark.server
def test_sigkilled_worker_costs_only_its_inflight_request(serve_factory, tmp_path):
    """Two workers each inside a slow prediction, more requests queued behind them;
    SIGKILL one worker: only its own request fails (a JSON 503), every other one is
    answered 200, and gunicorn replaces the worker."""
    markers = tmp_path / "markers"
    markers.mkdir()
    base = tmp_path / "ml"
    write_model(base, AnnouncingSlowClassifier(str(markers), delay=3).fit(X4, Y4))
    server = serve_factory(base, workers=2)
    before = server.gunicorn_workers()
    slow: list = []
    queued: list = []
    threads = [invoke_in_thread(server, SLOW, slow) for _ in range(2)]
    busy = wait_for(
        lambda: busy_pids(markers) if len(busy_pids(markers)) == 2 else None,
        what="both workers inside predict",
    )
    threads += [invoke_in_thread(server, FAST, queued) for _ in range(10)]
    victim = min(busy)
    os.kill(victim, signal.SIGKILL)
    for thread in threads:
        thread.join()
    statuses = sorted(status for status, _, _ in slow + queued)
    assert statuses == [HTTPStatus.OK] * 11 + [HTTPStatus.SERVICE_UNAVAILABLE]
    failed = next(r for r in slow if r[0] != HTTPStatus.OK)
    assert failed[1]["content-type"] == "application/json"
    assert json.loads(failed[2])["code"] == "model_server_unavailable"
    # A hang guard, not a figure: on a loaded machine the new worker takes a while.
    replaced = wait_for(
        lambda: len(server.gunicorn_workers() - before) >= 1,
        deadline=90,
        what="a new worker in place of the killed one",
    )
    assert replaced
    assert victim not in server.gunicorn_workers()
    assert server.invoke(FAST, "text/csv")[0] == HTTPStatus.OK


@pytest.mark.server
def test_prediction_over_the_timeout_is_504_and_the_worker_is_replaced(
    serve_factory, tmp_path
):
    """nginx answers a JSON 504 at the timeout; gunicorn kills the stuck worker a few
    seconds later and starts another, and the server goes on answering."""
    markers = tmp_path / "markers"
    markers.mkdir()
    base = tmp_path / "ml"
    write_model(base, AnnouncingSlowClassifier(str(markers), delay=60).fit(X4, Y4))
    server = serve_factory(base, workers=1, env={"MODEL_SERVER_TIMEOUT": "1"})
    status, headers, body = server.invoke(SLOW, "text/csv")
    assert status == HTTPStatus.GATEWAY_TIMEOUT
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == "model_server_timeout"
    assert "timeout of 1 s" in error["detail"]
    (stuck,) = busy_pids(markers)
    wait_for(
        lambda: f"WORKER TIMEOUT (pid:{stuck})" in server.log,
        what="gunicorn's timeout kill",
    )
    wait_for(
        lambda: (workers := server.gunicorn_workers()) and stuck not in workers,
        what="a replacement worker",
    )
    assert server.invoke(FAST, "text/csv")[0] == HTTPStatus.OK


@pytest.mark.server
def test_database_down_from_the_start_leaves_serving_up(serve_factory, iris_base):
    """A DATABASE_URL nothing answers at start: the migration failure is logged, and
    /ping and /invocations answer as usual (mid-run outages: test_stats)."""
    dead = f"postgres://smserve:smserve@127.0.0.1:{free_port()}/smserve"
    server = serve_factory(
        iris_base, env={"DATABASE_URL": dead, "SMSERVE_STATS_FLUSH_SECONDS": "0.2"}
    )
    assert "Database not migrated" in server.log
    assert server.request("GET", "/ping")[0] == HTTPStatus.OK
    for _ in range(5):
        status, _, body = server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")
        assert status == HTTPStatus.OK
        assert body == b"0\n"
    wait_for(lambda: "Stats not flushed" in server.log, what="a failed flush logged")
    assert server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")[0] == HTTPStatus.OK


@pytest.fixture
def small_model_volume(tmp_path):
    """``tmp_path/ml/model`` on a 256 KB tmpfs (the model below takes about 780 KB) (root mounts it; unmounted after)."""
    model_dir = tmp_path / "ml" / "model"
    model_dir.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(model_dir)],
        check=True,
    )
    yield model_dir
    subprocess.run(["umount", str(model_dir)], check=True)


@pytest.mark.root
def test_full_disk_while_writing_the_model_fails_the_job_cleanly(
    small_model_volume, tmp_path
):
    """A model larger than the model volume: ``train`` exits 1, output/failure starts
    with "No space left on device", and model/ holds nothing (no half-written file)."""
    base = small_model_volume.parent
    channel = write_channel(tmp_path / "data" / "train.csv", rows=400)
    done = run_train(
        base,
        "--channel",
        f"train={channel}",
        "--hp",
        "smserve_estimator=sklearn.ensemble.RandomForestClassifier",
        "--hp",
        "n_estimators=200",
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("No space left on device while writing the model to")
    assert "larger volume" in failure
    assert list(small_model_volume.iterdir()) == []


@pytest.mark.server
def test_sigterm_while_the_model_loads_stops_serve(tmp_path):
    """SIGTERM while gunicorn is still unpickling the model: serve exits 0, nothing
    of it is left running, and the load never finished."""
    markers = tmp_path / "markers"
    markers.mkdir()
    base = tmp_path / "ml"
    write_model(base, SlowLoadingClassifier(str(markers), load_delay=60).fit(X4, Y4))
    (markers / "loading").unlink(missing_ok=True)
    work = tmp_path / "serve"
    work.mkdir()
    server = UnwaitedServe(base, work).start()
    try:
        loader = int(
            wait_for(
                lambda: (
                    (markers / "loading").exists() and (markers / "loading").read_text()
                ),
                what="the model load under way",
            )
        )
    finally:
        code = server.stop(timeout=30)
    assert code == 0, server.log
    wait_for(lambda: not os.path.exists(f"/proc/{loader}"), what="the loader gone")
    assert "Loaded " not in server.log
    assert "stopped" in server.log
