"""A training job over several hosts on one machine: one real ``train`` per host, each
with its own base dir and ``resourceconfig.json``, on its own loopback address
(``tests/support/cluster.py``), forming a real Dask cluster."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import joblib
import numpy as np
import pytest
from distributed import Client
from sklearn.datasets import load_iris

from modelapp.training.cluster import (
    DaskProcess,
    fit_context,
    scheduler_command,
    worker_command,
    workers_by_host,
)
from tests.support.cluster import (
    SUBNET,
    Job,
    free_port,
    host_name,
    metadata,
    task_context,
    task_context_made_a_client,
)
from tests.support.servers import wait_for
from tests.support.training import file_channel, run_train, sagemaker_tree, write_csv

pytestmark = pytest.mark.slow

SEARCH = {
    "smserve_estimator": "random_forest",
    "n_estimators": "8",
    "smserve_random_seed": "0",
    "smserve_search": "grid",
    "smserve_search_space": json.dumps(
        {"max_depth": [1, 3], "min_samples_leaf": [1, 10]}
    ),
    "smserve_search_folds": "3",
    "smserve_cluster_timeout": "60",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    X, y = load_iris(return_X_y=True)
    order = np.random.default_rng(2).permutation(len(y))
    return write_csv(tmp_path_factory.mktemp("data") / "iris.csv", X[order], y[order])


@pytest.fixture
def jobs(tmp_path):
    """``jobs(count, hyperparameters)``; every process still running at the end is
    killed, by PID."""
    made: list[Job] = []

    def make(count: int, hyperparameters: dict[str, str], data, **kwargs) -> Job:
        job = Job(tmp_path / f"job{len(made)}", count, hyperparameters, data, **kwargs)
        made.append(job)
        return job

    yield make
    for job in made:
        job.stop()


def slow_search(started: str) -> dict[str, str]:
    """A search whose fits take a second each (and say when the first one started)."""
    return {
        "smserve_estimator": "tests.support.training.SlowFitClassifier",
        "seconds": "1.0",
        "started_file": json.dumps(started),
        "smserve_search": "grid",
        "smserve_search_space": json.dumps({"seconds": [1.0, 1.1, 1.2, 1.3]}),
        "smserve_search_folds": "2",
        "smserve_cluster_timeout": "60",
    }


def searching(jobs, data, tmp_path) -> Job:
    """Three hosts started on a slow search, returned once its first fit has begun."""
    started = tmp_path / "started"
    job = jobs(3, slow_search(str(started)), data).start()
    wait_for(started.exists, deadline=90, what="the search's first fit")
    return job


def test_three_hosts_search_as_one_host_does(tmp_path, jobs, data):
    """Three hosts: all exit 0, only the leader writes the model and output, and the
    search finds the best parameters the same search finds on one host.
    docs/training.md, Hosts: "Dask workers"; "and the fit: it waits until every host's
    workers have joined"; "runs the search (candidates × folds on the cluster, the data
    sent once to every worker) and the final refit of the best candidate (a forest's
    trees on the cluster too)"; "then closes the cluster"; "`model/`"; "`output/` as on
    one host"; "Dask workers only"; "exits 0 when the leader closes the cluster".
    docs/settings.md, Settings: "`SMSERVE_DASK_SCHEDULER_PORT`";
    "`SMSERVE_HOST_ADDRESSES`".
    """
    single = sagemaker_tree(
        tmp_path / "single", hyperparameters=SEARCH, channels={"train": file_channel()}
    )
    write_csv(single / "input/data/train/iris.csv", *_read(data))
    assert run_train(single).returncode == 0

    job = jobs(3, SEARCH, data).start()
    codes = job.wait()

    assert codes == {"algo-1": 0, "algo-2": 0, "algo-3": 0}, job.logs()
    leader, *others = job.hosts
    search = metadata(leader.base)["search"]
    assert search["hosts"] == 3
    assert search["best_params"] == metadata(single)["search"]["best_params"]
    assert search["best_score"] == metadata(single)["search"]["best_score"]
    assert (leader.base / "output/success").exists()
    assert "algo-1 (1 workers), algo-2 (1 workers), algo-3 (1 workers)" in leader.log
    for host in others:
        assert not (host.base / "model").exists()
        assert not (host.base / "output").exists()
        assert "The leader closed the cluster" in host.log


def test_a_forest_alone_is_fitted_over_two_hosts(tmp_path, jobs, data):
    """No search: a forest's trees are fitted on the cluster, and the model is the one a
    single host fits with the same seed."""
    forest = {
        "smserve_estimator": "random_forest",
        "n_estimators": "16",
        "smserve_random_seed": "0",
        "smserve_cluster_timeout": "60",
    }
    single = sagemaker_tree(
        tmp_path / "single", hyperparameters=forest, channels={"train": file_channel()}
    )
    write_csv(single / "input/data/train/iris.csv", *_read(data))
    assert run_train(single).returncode == 0

    job = jobs(2, forest, data).start()

    assert job.wait() == {"algo-1": 0, "algo-2": 0}, job.logs()
    leader = job.host("algo-1")
    assert "Every host joined" in leader.log
    X, _ = _read(data)
    assert (
        joblib.load(leader.base / "model/model.joblib").predict_proba(X).tolist()
        == joblib.load(single / "model/model.joblib").predict_proba(X).tolist()
    )


def test_the_cluster_timeout_defaults_to_300_seconds(jobs, data):
    """Without ``smserve_cluster_timeout`` every host's Dask workers are started to give
    up on a scheduler gone for 300 s, the default the hosts wait for each other.
    docs/training.md, Reserved keys, ``smserve_cluster_timeout``: "`300`".
    """
    forest = {
        "smserve_estimator": "random_forest",
        "n_estimators": "4",
        "smserve_random_seed": "0",
    }
    job = jobs(2, forest, data).start()

    assert job.wait() == {"algo-1": 0, "algo-2": 0}, job.logs()
    for host in job.hosts:
        started = [
            line for line in host.log.splitlines() if "Starting the Dask worker" in line
        ]
        assert len(started) == 1, host.log
        assert " --death-timeout 300 " in started[0]


def test_a_leader_that_never_comes(jobs, data):
    """A host whose leader never starts fails after smserve_cluster_timeout, saying so
    in its failure file.
    docs/training.md, Reserved keys: "seconds hosts wait for each other (the leader for
    every host's workers, the others for the leader)". docs/training.md, Hosts: "nothing
    (its `output/failure` if it fails)". docs/training.md, Distributed failures: "a host
    cannot reach the leader (never came, or died) for `smserve_cluster_timeout` s";
    "that host exits 1: "could not reach the leader algo-1 ..."".
    """
    job = jobs(2, {**SEARCH, "smserve_cluster_timeout": "3"}, data).start("algo-2")

    assert job.wait()["algo-2"] == 1
    failure = job.host("algo-2").failure
    assert "could not reach the leader algo-1" in failure
    assert "smserve_cluster_timeout" in failure


def test_hosts_that_never_join(jobs, data):
    """A leader whose other hosts never join fails, naming them.
    docs/training.md, Distributed failures: "some hosts never join the leader's cluster
    in `smserve_cluster_timeout` s"; "the leader exits 1 naming them".
    """
    job = jobs(3, {**SEARCH, "smserve_cluster_timeout": "3"}, data).start("algo-1")

    assert job.wait()["algo-1"] == 1, job.logs()
    failure = job.host("algo-1").failure
    assert "Host(s) algo-2, algo-3 did not join the Dask cluster within 3 s" in failure
    assert not (job.host("algo-1").base / "model/model.joblib").exists()


def test_a_host_killed_mid_search(tmp_path, jobs, data):
    """A host that dies mid-search (every process killed): Dask runs its tasks again on
    the other hosts, and the job completes.
    docs/training.md, Distributed failures: "a host dies mid-search (killed, out of
    memory)".
    """
    job = searching(jobs, data, tmp_path)

    job.host("algo-3").kill()
    codes = job.wait()

    assert codes["algo-1"] == 0, job.logs()
    assert codes["algo-2"] == 0, job.logs()
    assert metadata(job.host("algo-1").base)["search"]["candidates"] == 4


@contextmanager
def two_workers() -> Iterator[tuple[str, tuple[str, str]]]:
    """A scheduler and two hosts' workers, as the leader starts them, without ``train``:
    (the scheduler's address, the host names); stopped at the end."""
    leader = f"{SUBNET}.1"
    address = f"tcp://{leader}:{free_port(leader)}"
    names = (host_name(1), host_name(2))
    peers = (leader, f"{SUBNET}.2")
    started = [
        DaskProcess(
            "scheduler",
            scheduler_command(leader, int(address.rsplit(":", 1)[1])),
            peers,
        )
    ]
    try:
        for index, name in enumerate(names, start=1):
            bind = f"{SUBNET}.{index}"
            started.append(
                DaskProcess("worker", worker_command(address, name, bind, 60), peers)
            )
        yield address, names
    finally:
        for process in reversed(started):
            process.stop()


# A Dask client whose connections leave from the address argv[2], as a machine of that
# address would connect: prints how many workers it saw, or why it could not connect.
CLIENT_FROM = """\
import sys

from distributed import Client
from distributed.comm import registry
from distributed.comm.tcp import TCPBackend, TCPConnector


class FromConnector(TCPConnector):
    def _get_connect_args(self, **connection_args):
        return {"source_ip": sys.argv[2]}


class FromBackend(TCPBackend):
    _connector_class = FromConnector


registry.backends["tcp"] = FromBackend()
try:
    with Client(sys.argv[1], timeout=5) as client:
        print("workers", len(client.scheduler_info()["workers"]))
except Exception as exc:
    print("failed", type(exc).__name__, exc)
"""


def client_from(source: str, scheduler: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_FROM, scheduler, source],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip()


def first_bytes_from(source: str, address: str) -> bytes | None:
    """What a raw TCP connection from ``source`` to ``address`` receives first: the
    Dask handshake, ``b""`` when the peer closes it, None when nothing came in 5 s."""
    host, port = address.split("//")[1].rsplit(":", 1)
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect((host, int(port)))
        try:
            return sock.recv(64)
        except TimeoutError:
            return None


def test_only_the_jobs_hosts_reach_the_cluster():
    """The scheduler, the workers and the nannies close connections from any address but
    the job's hosts' and loopback: a Dask client from 127.0.16.3 (not a host of the job)
    cannot connect, a raw connection to a worker's or a nanny's port is closed before
    Dask's handshake; the same from algo-2's address works."""
    with two_workers() as (address, names):
        with Client(address, timeout=30) as client:
            wait_for(
                lambda: len(client.scheduler_info()["workers"]) >= 2,
                deadline=60,
                what="both workers",
            )
            workers = client.scheduler_info()["workers"]
        outsider, host = f"{SUBNET}.3", f"{SUBNET}.2"

        assert client_from(outsider, address).startswith("failed "), address
        assert client_from(host, address).startswith("workers ")
        for worker, info in workers.items():
            for port in (worker, info["nanny"]):
                assert first_bytes_from(outsider, port) == b"", port
                assert first_bytes_from(host, port), port


def test_two_hosts_finish_a_search_with_the_allowlist(jobs, data):
    """With every Dask process preloading the allowlist, two hosts still join and
    finish a search; the addresses each accepts are the ones train gave it.
    docs/settings.md, Settings: "`SMSERVE_DASK_PEERS`" (not a setting: train sets it
    for the Dask processes it starts).
    """
    job = jobs(2, SEARCH, data).start()

    assert job.wait() == {"algo-1": 0, "algo-2": 0}, job.logs()
    assert metadata(job.host("algo-1").base)["search"]["hosts"] == 2
    assert "accepts connections only from 127.0.0.1, 127.0.16.1, 127.0.16.2" in (
        job.logs()
    )


def test_the_data_stays_on_every_worker(monkeypatch):
    """X and y, sent once to every worker, stay on every worker: a host that dies then
    takes no data with it. (The scheduler's memory manager would keep one copy within
    seconds, and a search whose one copy died with its host could not go on.)"""
    # The memory manager, were it on, would look every 0.2 s instead of every 2 s: the
    # wait below then spans five of its cycles in one second.
    monkeypatch.setenv(
        "DASK_DISTRIBUTED__SCHEDULER__ACTIVE_MEMORY_MANAGER__INTERVAL", "200ms"
    )
    X, y = load_iris(return_X_y=True)
    with two_workers() as (address, names):
        with fit_context(address, names, 60)(X, y, pytest.fail):
            backend, _ = joblib.parallel.get_active_backend()
            futures = list(backend.data_futures.values())
            keys = [future.key for future in futures]
            # The workers that had joined when the data was sent (a host's second
            # worker may join a moment later, and fetches the data when a task needs it).
            sent = backend.client.who_has(futures)
            time.sleep(1)
            held = backend.client.who_has(futures)

    assert len(keys) == 2
    assert {key: set(held[key]) for key in keys} == {
        key: set(sent[key]) for key in keys
    }
    hosts = {f"{SUBNET}.1", f"{SUBNET}.2"}
    for key in keys:
        assert {
            worker.split("//")[1].rsplit(":", 1)[0] for worker in held[key]
        } == hosts


def test_a_task_runs_its_own_joblib_calls_in_place():
    """On the workers, a task's own joblib calls (a forest's trees) run sequentially in
    the task, and no Dask client is made there (joblib's stock batch makes one, which
    sends the nested calls back to the cluster and, once the scheduler has gone, holds
    the worker's exit for Dask's 30 s connect timeout)."""
    X, y = load_iris(return_X_y=True)
    with two_workers() as (address, names):
        with fit_context(address, names, 60)(X, y, pytest.fail):
            seen = joblib.Parallel()(joblib.delayed(task_context)() for _ in range(6))
            backend, _ = joblib.parallel.get_active_backend()
            ran_on = backend.client.run(task_context_made_a_client)

    assert set(seen) == {(False, "SequentialBackend")}
    assert len(ran_on) >= 2
    assert not any(ran_on.values())


def test_sigterm_on_the_leader_ends_every_host(tmp_path, jobs, data):
    """SIGTERM on the leader mid-search: it stops (143) with no model, and closing the
    cluster ends the other hosts (exit 0, nothing written).
    docs/training.md, Distributed failures: "SIGTERM on the leader (StopTrainingJob)";
    "it stops (exit 143, no model)"; "closing the cluster: the others exit 0 within
    seconds".
    """
    job = searching(jobs, data, tmp_path)

    job.host("algo-1").signal(signal.SIGTERM)
    codes = job.wait(timeout=30)

    assert codes == {"algo-1": 143, "algo-2": 0, "algo-3": 0}, job.logs()
    assert not (job.host("algo-1").base / "model/model.joblib").exists()
    assert "stopped (SIGTERM)" in job.host("algo-1").failure


def test_sigterm_on_another_host_fails_the_leader(tmp_path, jobs, data):
    """SIGTERM on a non-leader mid-search: it stops, the leader's job fails with that
    host's reason in its failure file, no model, and the third host exits 0.
    docs/training.md, Distributed failures: "SIGTERM on another host"; "it stops (143)
    and tells the leader"; "whose job fails (exit 1, no model) with "Host algo-2 failed:
    it was stopped (SIGTERM)" in its `output/failure`".
    """
    job = searching(jobs, data, tmp_path)

    job.host("algo-2").signal(signal.SIGTERM)
    codes = job.wait(timeout=30)

    assert codes == {"algo-1": 1, "algo-2": 143, "algo-3": 0}, job.logs()
    assert "Host algo-2 failed: it was stopped (SIGTERM)" in job.host("algo-1").failure
    assert not (job.host("algo-1").base / "model/model.joblib").exists()


def test_sharded_data_is_refused_on_several_hosts(jobs, data):
    """ShardedByS3Key gives each host a slice: the leader refuses it before starting."""
    job = jobs(
        2,
        SEARCH,
        data,
        channel=file_channel(S3DistributionType="ShardedByS3Key"),
    ).start("algo-1")

    assert job.wait()["algo-1"] == 1
    assert "is ShardedByS3Key" in job.host("algo-1").failure


def test_workers_by_host_reads_dask_worker_names():
    """``dask worker --name algo-1`` names several processes algo-1-0, algo-1-1."""
    info = {
        "workers": {
            "a": {"name": "algo-1-0"},
            "b": {"name": "algo-1-1"},
            "c": {"name": "algo-10"},
            "d": {"name": "algo-2"},
        }
    }
    assert workers_by_host(info, ("algo-1", "algo-2", "algo-3")) == {
        "algo-1": 2,
        "algo-2": 1,
        "algo-3": 0,
    }


def _read(path):
    rows = np.loadtxt(path, delimiter=",")
    return rows[:, 1:], rows[:, 0].astype(int)
