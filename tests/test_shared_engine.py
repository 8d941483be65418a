"""One compiled-engine session per container (``modelapp/predictors/compiled.py``):
gunicorn's master makes the ONNX Runtime session before the fork and every worker answers
from it, so what a worker adds does not grow with the model; the workers still stop
cleanly (ONNX Runtime's exit handlers hang or abort in a forked process that runs them);
with more than one intra-op thread each worker makes its own session."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from modelapp.multimodel import trim_heap
from modelapp.predictors import compiled as compiled_engine
from tests.support import ROOT
from tests.support.models import write_model
from tests.support.servers import wait_for

RNG = np.random.default_rng(0)
# Labels of noise: every tree grows to its full depth, a graph of a few MB whose session
# is several times that.
X_TRAIN = RNG.standard_normal((10000, 10))
LABELS = RNG.integers(0, 2, len(X_TRAIN))
X_HELD_OUT = RNG.standard_normal((200, 10))
BODY = "".join(",".join(map(repr, row)) + "\n" for row in X_HELD_OUT.tolist()).encode()
PROBA = {"X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba"}
MB = 1024 * 1024


@pytest.fixture(scope="module")
def forest():
    return RandomForestClassifier(n_estimators=40, random_state=0).fit(X_TRAIN, LABELS)


@pytest.fixture(scope="module")
def forest_base(tmp_path_factory, forest) -> Path:
    """The forest as a bare ``model.joblib``: converted, verified and timed at load."""
    base = tmp_path_factory.mktemp("forest")
    write_model(base, forest)
    return base


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory, forest) -> Path:
    """The forest with the ``model.onnx`` that ``train`` writes, named in
    ``metadata.json`` with its sha256."""
    base = tmp_path_factory.mktemp("trained")
    graph = compiled_engine.convert(forest, X_TRAIN.shape[1])
    compiled = {"onnx": "model.onnx", "onnx_sha256": hashlib.sha256(graph).hexdigest()}
    write_model(base, forest, {"n_features": X_TRAIN.shape[1], "compiled": compiled})
    (base / "model" / "model.onnx").write_bytes(graph)
    return base


def private_bytes(pid: int) -> int:
    """The memory only this process holds (``smaps_rollup``'s private pages)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def maps_onnxruntime(pid: int) -> bool:
    return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()


def maps_onnx(pid: int) -> bool:
    """onnx's own extension (skl2onnx has none, and imports onnx first thing)."""
    return "/site-packages/onnx/" in Path(f"/proc/{pid}/maps").read_text()


def assert_answers_as_sklearn(server, model) -> None:
    for _ in range(2):  # every worker, most likely, and each more than once
        status, _, labels = server.invoke(BODY, Accept="application/json")
        assert status == HTTPStatus.OK, labels
        assert json.loads(labels)["predictions"] == model.predict(X_HELD_OUT).tolist()
        status, _, proba = server.invoke(BODY, Accept="application/json", **PROBA)
        assert status == HTTPStatus.OK, proba
        np.testing.assert_allclose(
            json.loads(proba)["predictions"],
            model.predict_proba(X_HELD_OUT),
            rtol=compiled_engine.RTOL,
            atol=compiled_engine.ATOL,
        )
        for record in X_HELD_OUT[:20].tolist():
            status, _, one = server.invoke(",".join(map(repr, record)).encode())
            assert status == HTTPStatus.OK, one


def assert_stopped_cleanly(server, workers: set[int]) -> None:
    """Every worker logged its exit, none was killed by a signal or exited non-zero,
    and serve waited out no grace period."""
    log = server.log
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in log, log
    assert not re.search(r"Worker \(pid:\d+\) (was sent|exited with code)", log), log
    assert "SIGABRT" not in log, log
    assert "terminate called" not in log, log
    assert "still running after the grace period" not in log, log


@pytest.mark.server
def test_workers_answer_from_the_masters_session(forest_base, forest, serve_factory):
    """The master makes the session (it maps ONNX Runtime) and the workers run it: each
    worker holds no more memory of its own than with the engine off, though the session
    is several times the graph; answers are scikit-learn's; SIGTERM stops it cleanly."""
    compiled = serve_factory(forest_base)
    assert_answers_as_sklearn(compiled, forest)
    assert re.search(
        r"Engines for RandomForestClassifier: predict by onnxruntime, predict_proba by "
        r"onnxruntime, .*converted at start-up",
        compiled.log,
    )
    assert "each worker makes its own session" not in compiled.log
    master, workers = compiled.gunicorn_master(), compiled.gunicorn_workers()
    assert len(workers) == 2
    assert maps_onnxruntime(master)
    assert all(maps_onnxruntime(pid) for pid in workers)
    # Converted at load, in a child of the master's (convert_apart): no onnx here.
    assert not any(maps_onnx(pid) for pid in (master, *workers))
    with_engine = {pid: private_bytes(pid) for pid in workers}

    plain = serve_factory(forest_base, env={"SMSERVE_COMPILED_ENGINE": "off"})
    assert_answers_as_sklearn(plain, forest)
    without = max(private_bytes(pid) for pid in plain.gunicorn_workers())
    # What one session of this graph takes, made here: a worker with its own would
    # hold at least that much more than a worker without the engine.
    import onnxruntime  # noqa: F401  (its library is not the session)

    graph = compiled_engine.convert(forest, X_TRAIN.shape[1])
    trim_heap()  # or the session reuses what converting freed, and RSS does not show it
    before = _rss()
    session = compiled_engine.OnnxSession(graph, np.float32)
    session.run(X_HELD_OUT.astype(np.float32))
    session_bytes = _rss() - before
    assert session_bytes > 4 * len(graph) > 16 * MB  # the model is not a small one
    for pid, own in with_engine.items():
        assert own - without < session_bytes / 4, (pid, own, without, session_bytes)

    assert compiled.stop() == 0
    assert_stopped_cleanly(compiled, workers)


@pytest.mark.server
def test_recycled_workers_stop_cleanly(trained_base, forest, serve_factory):
    """gunicorn's ``max_requests`` recycles each worker every few requests: every one
    leaves with status 0 (no abort, no hang in ONNX Runtime's exit handlers) and its
    replacement answers from the master's session too. Served with train's
    ``model.onnx``, no process imports onnx or skl2onnx, only ONNX Runtime."""
    server = serve_factory(trained_base, env={"GUNICORN_CMD_ARGS": "--max-requests 3"})
    assert "model.onnx written by train" in server.log
    first = server.gunicorn_workers()
    for pid in (server.gunicorn_master(), *first):
        assert maps_onnxruntime(pid)
        assert not maps_onnx(pid)
    assert_answers_as_sklearn(server, forest)
    wait_for(
        lambda: server.log.count("Autorestarting worker after current request") >= 4,
        what="workers recycled",
    )
    now = server.gunicorn_workers()
    assert now
    assert not now & first
    assert_answers_as_sklearn(server, forest)
    assert server.stop() == 0
    gone = {int(p) for p in re.findall(r"Worker exiting \(pid: (\d+)\)", server.log)}
    assert first | now <= gone
    assert_stopped_cleanly(server, first | now)


@pytest.mark.server
def test_more_threads_make_a_session_per_worker(forest_base, forest, serve_factory):
    """With two intra-op threads a session has a thread pool, which a fork does not
    copy: the master drops its session once verified, each worker makes its own (one
    log line says so), answers are the same, and the workers stop cleanly."""
    server = serve_factory(
        forest_base,
        env={"SMSERVE_COMPILED_THREADS": "2", "GUNICORN_CMD_ARGS": "--max-requests 5"},
    )
    assert "2 intra-op threads per session" in server.log
    assert "each worker makes its own session" in server.log
    assert_answers_as_sklearn(server, forest)
    workers = server.gunicorn_workers()
    assert server.stop() == 0
    assert_stopped_cleanly(server, workers)


def test_a_process_forked_without_adopting_makes_its_own(forest):
    """A process forked from one holding a session (not a gunicorn worker, which adopts
    it) makes its own on first use and answers the same; it keeps the one it inherited
    and ends with ``os._exit``, as gunicorn's workers do."""
    graph = compiled_engine.convert(forest, X_TRAIN.shape[1])
    session = compiled_engine.OnnxSession(graph, np.float32, thread_count=1)
    expected = session.run(X_HELD_OUT.astype(np.float32))[1]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        ok = False
        try:
            got = session.run(X_HELD_OUT.astype(np.float32))[1]
            ok = bool(np.array_equal(got, expected)) and len(session._inherited) == 1
        finally:
            os.write(write_end, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.close(read_end)
    assert os.waitpid(pid, 0)[1] == 0
    assert answer == b"1"
    assert session._inherited == []  # this process still runs the one it made


FORK_AND_LEAVE = """
import os, signal, sys, time
import numpy as np
from modelapp.predictors.compiled import OnnxSession

session = OnnxSession(open(sys.argv[1], "rb").read(), np.float32, thread_count=1)
X = np.zeros((5, int(sys.argv[2])), dtype=np.float32)
session.run(X)
for leave in (os._exit,):
    pid = os.fork()
    if pid == 0:
        try:
            session.run(X)
        finally:
            leave(0)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            done = os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    print(leave.__name__, done[1], flush=True)
"""


def test_a_forked_process_with_its_own_session_ends_at_once_with_os_exit(
    forest, tmp_path
):
    """How every worker ends: a process forked from one that holds a session, which makes
    and runs its own (as a process that did not adopt it does), ends at once and cleanly
    with ``os._exit``. (Ended with ``sys.exit`` instead, such a process was seen here to
    hang or abort in ONNX Runtime's exit handlers, though not on every run: the reason
    workers never end through Python's teardown.)"""
    graph = tmp_path / "model.onnx"
    graph.write_bytes(compiled_engine.convert(forest, X_TRAIN.shape[1]))
    done = subprocess.run(
        [sys.executable, "-c", FORK_AND_LEAVE, str(graph), str(X_TRAIN.shape[1])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    statuses = dict(line.split() for line in done.stdout.splitlines())
    assert statuses == {"_exit": "0"}, (statuses, done.stderr)


def _rss() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
