"""A training job's hosts as one Dask cluster: who leads, which processes each host runs,
how the fit reaches the workers, and how the cluster ends.

``resourceconfig.json`` lists the hosts. The leader (the first of the sorted names, the
training toolkits' convention) runs the Dask scheduler on port 8786 (``DASK_SCHEDULER_PORT``)
and every host runs ``dask worker`` (one process per CPU, one thread each, memory split
between them), bound to the address of the job's network interface. The leader's fit
waits until every host's workers have joined, then runs with joblib's ``dask`` backend;
closing the scheduler afterwards makes every worker exit 0. A worker that cannot reach the
scheduler for ``smserve_cluster_timeout`` seconds exits non-zero: its host fails with that
reason. A host that stops (SIGTERM) or fails tells the leader through the scheduler (an
event on ``FAILURE_TOPIC``), and the leader's job fails with that host's reason.

Dask's TCP traffic is unauthenticated, so every Dask process accepts connections only from
the job's hosts and loopback (``dask_peers``, preloaded); anything else is closed before
Dask's handshake.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import modelapp
from modelapp import conf
from modelapp.paths import SageMakerPaths
from modelapp.training.environment import (
    CLUSTER_TIMEOUT,
    KNOWN_CHANNELS,
    RESERVED,
    TrainingEnvironment,
    read_json_object,
)
from modelapp.training.errors import ClientError
from modelapp.usercode import child_environment

logger = logging.getLogger(__name__)

# Our hyperparameter: how long hosts wait for each other (its default: RESERVED).
TIMEOUT = CLUSTER_TIMEOUT
FAILURE_TOPIC = "smserve-host-failure"
BACKEND = "smserve-dask"
_STOP_GRACE = 20  # seconds a Dask process gets to close before it is killed


def timeout_of(value: Any) -> float:
    """``smserve_cluster_timeout`` checked: a number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ClientError(
            f"Hyperparameter {TIMEOUT} must be a number of seconds > 0, got {value!r}."
        )
    return float(value)


@dataclass(frozen=True)
class Hosts:
    """The job's hosts as ``resourceconfig.json`` gives them, sorted."""

    current: str
    names: tuple[str, ...]
    interface: str | None = None

    @classmethod
    def of(cls, env: TrainingEnvironment) -> Hosts:
        resources = read_json_object(env.paths.resourceconfig_file, default={})
        return cls(
            current=env.current_host,
            names=tuple(sorted(env.hosts or [env.current_host])),
            interface=resources.get("network_interface_name") or None,
        )

    @property
    def leader(self) -> str:
        return self.names[0]

    @property
    def is_leader(self) -> bool:
        return self.current == self.leader

    @property
    def distributed(self) -> bool:
        return len(self.names) > 1

    def address_of(self, host: str, timeout: float) -> str:
        """The IP address of ``host``: SageMaker's DNS (retried until ``timeout``, as
        host names may resolve a little after the container starts), or the test-only
        ``SMSERVE_HOST_ADDRESSES``."""
        overrides = conf.get("HOST_ADDRESSES") or {}
        if host in overrides:
            return overrides[host]
        deadline = time.monotonic() + timeout
        while True:
            try:
                return socket.gethostbyname(host)
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise ClientError(
                        f"Host {host} ({self.current} is one of the hosts "
                        f"{', '.join(self.names)}) did not resolve within {timeout:g} s: "
                        f"{exc}."
                    ) from exc
                time.sleep(1)

    def bind_address(self, timeout: float) -> str:
        """Where this host's Dask processes listen: the address of the job's network
        interface (``network_interface_name``), else the host name's address."""
        overrides = conf.get("HOST_ADDRESSES") or {}
        if self.current not in overrides and self.interface:
            import psutil

            for entry in psutil.net_if_addrs().get(self.interface, []):
                if entry.family == socket.AF_INET:
                    return entry.address
        return self.address_of(self.current, timeout)

    def peer_addresses(self, timeout: float) -> tuple[str, ...]:
        """The addresses of every host of the job (and this host's interface): the only
        peers its Dask processes accept."""
        found = {self.address_of(name, timeout) for name in self.names}
        found.add(self.bind_address(timeout))
        return tuple(sorted(found))

    def scheduler_address(self, timeout: float) -> str:
        port = conf.get("DASK_SCHEDULER_PORT")
        return f"tcp://{self.address_of(self.leader, timeout)}:{port}"


def spreads(estimator: Any) -> bool:
    """Whether ``estimator`` (or a pipeline step of it) parallelises its fit through
    joblib: scikit-learn's ensembles with ``n_jobs`` (forests, bagging)."""
    parts = [estimator, *estimator.get_params(deep=True).values()]
    return any(
        type(part).__module__.startswith("sklearn.ensemble")
        and "n_jobs" in part.get_params(deep=False)
        for part in parts
        if hasattr(part, "get_params") and not isinstance(part, type)
    )


@dataclass(frozen=True)
class Plan:
    """What this host does in the job: lead, lend its CPUs, or (one host, or nothing
    to spread) nothing with Dask at all."""

    env: TrainingEnvironment
    hosts: Hosts
    spread: bool
    timeout: float

    @classmethod
    def of(cls, env: TrainingEnvironment, estimator: Any, searching: bool) -> Plan:
        hosts = Hosts.of(env)
        timeout = timeout_of(env.hyperparameters.owned.get(TIMEOUT, RESERVED[TIMEOUT]))
        spread = hosts.distributed and (searching or spreads(estimator))
        return cls(env=env, hosts=hosts, spread=spread, timeout=timeout)

    def serve_as_worker(self) -> None:
        serve_as_worker(self.env, self.hosts, self.timeout)

    @contextmanager
    def leading(self) -> Iterator[Callable[..., Any]]:
        """The fit's context for ``run.fit_in_child``: joblib's own processes on one
        host, else the cluster's, the cluster running meanwhile."""
        if not self.spread:
            yield local_context
            return
        with leading(self.env, self.hosts, self.timeout) as scheduler:
            yield fit_context(scheduler, self.hosts.names, self.timeout)


def check_channels(paths: SageMakerPaths, hosts: Hosts) -> None:
    """Refuse ``ShardedByS3Key`` data on several hosts: the leader alone reads the data, so
    a search would see only its own shard."""
    config = read_json_object(paths.inputdataconfig_file, default={})
    for name in KNOWN_CHANNELS:
        spec = config.get(name)
        if (
            isinstance(spec, dict)
            and spec.get("S3DistributionType") == "ShardedByS3Key"
        ):
            raise ClientError(
                f"Channel {name!r} is ShardedByS3Key, but on {len(hosts.names)} hosts "
                f"smserve's leader ({hosts.leader}) reads all the data and spreads the "
                "work itself: make the channel FullyReplicated."
            )


# --- the processes a host runs -------------------------------------------------------------
def _dask(*args: str) -> list[str]:
    return [sys.executable, "-m", "dask", *args]


# Imported by the scheduler, every nanny and every worker: their listeners then accept
# connections only from the job's hosts (``dask_peers``).
PRELOAD = "modelapp.training.dask_peers"


def scheduler_command(bind: str, port: int) -> list[str]:
    """``dask scheduler`` on the job's interface, with no dashboard, for the job alone."""
    return _dask(
        "scheduler",
        "--host",
        bind,
        "--port",
        str(port),
        "--no-dashboard",
        "--preload",
        PRELOAD,
    )


def worker_command(scheduler: str, host: str, bind: str, timeout: float) -> list[str]:
    """``dask worker``: one single-threaded process per CPU (scikit-learn's fits hold the
    GIL for much of their time), the host's memory split between them."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return _dask(
        "worker",
        scheduler,
        "--host",
        bind,
        "--name",
        host,
        "--nworkers",
        str(cpus or os.cpu_count() or 1),
        "--nthreads",
        "1",
        "--memory-limit",
        "auto",
        "--death-timeout",
        f"{timeout:g}",
        "--no-dashboard",
        "--local-directory",
        tempfile.gettempdir(),
        "--preload",
        PRELOAD,
        "--preload-nanny",
        PRELOAD,
    )


class DaskProcess:
    """One ``dask scheduler`` or ``dask worker`` subprocess; its output goes to ours (the
    job's log), and stopping it is SIGTERM, then SIGKILL after a grace period."""

    def __init__(
        self, name: str, command: list[str], peers: Iterable[str] = ()
    ) -> None:
        """``peers``: the addresses of the job's hosts, the only ones (with loopback)
        its listeners accept."""
        from modelapp.training.dask_peers import PEERS_VARIABLE

        self.name = name
        logger.info("Starting the Dask %s: %s", name, " ".join(command))
        # The workers unpickle smserve's own task wrapper: smserve must be importable
        # there whatever the working directory.
        root = str(Path(modelapp.__file__).resolve().parent.parent)
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        # Without smserve's secrets (SECRET_KEY, DATABASE_URL, ...): tasks run there.
        env = {
            **child_environment(),
            "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            # X and y are broadcast to every worker so that a host's death loses no
            # data (its tasks run again elsewhere). The scheduler's Active Memory
            # Manager would drop every copy but one within two seconds (its
            # ReduceReplicas policy), and a search whose one copy died with its host
            # could not go on.
            "DASK_DISTRIBUTED__SCHEDULER__ACTIVE_MEMORY_MANAGER__START": "False",
            PEERS_VARIABLE: ",".join(sorted(set(peers))),
        }
        # Its own process group: a terminal's Ctrl-C reaches us, and we stop it.
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                logger.warning("The Dask %s did not stop; killing it.", self.name)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def leading(env: TrainingEnvironment, hosts: Hosts, timeout: float) -> Iterator[str]:
    """On the leader: the scheduler and this host's workers, for the ``with`` block; yields
    the scheduler's address. Leaving the block closes the scheduler, which ends every
    host's workers (they exit 0)."""
    check_channels(env.paths, hosts)
    bind = hosts.bind_address(timeout)
    port = conf.get("DASK_SCHEDULER_PORT")
    address = f"tcp://{bind}:{port}"
    peers = hosts.peer_addresses(timeout)
    scheduler = DaskProcess("scheduler", scheduler_command(bind, port), peers)
    worker = None
    try:
        worker = DaskProcess(
            "worker", worker_command(address, hosts.current, bind, timeout), peers
        )
        yield address
    finally:
        logger.info("Closing the Dask cluster (scheduler %s).", address)
        scheduler.stop()
        if worker is not None:
            worker.stop()


def serve_as_worker(env: TrainingEnvironment, hosts: Hosts, timeout: float) -> None:
    """On any other host: run this host's workers until the leader closes the scheduler.

    Returns when they exit 0; raises ``ClientError`` when they could not reach the leader
    (or lost it) for ``timeout`` seconds. A stop (SIGTERM) or any other way out ends them
    and tells the leader, so the whole job ends.
    """
    scheduler = hosts.scheduler_address(timeout)
    bind = hosts.bind_address(timeout)
    logger.info(
        "This is %s; %s leads (scheduler %s): this host lends its CPUs as Dask workers.",
        hosts.current,
        hosts.leader,
        scheduler,
    )
    worker = DaskProcess(
        "worker",
        worker_command(scheduler, hosts.current, bind, timeout),
        hosts.peer_addresses(timeout),
    )
    try:
        while (code := worker.poll()) is None:
            time.sleep(0.2)
    except BaseException as exc:
        # The leader hears why before this host's tasks start failing.
        report_failure(scheduler, hosts.current, _why(exc))
        worker.stop()
        raise
    if code != 0:
        raise ClientError(
            f"Host {hosts.current} could not reach the leader {hosts.leader} at "
            f"{scheduler}, or lost it, for {timeout:g} s ({TIMEOUT}); its Dask worker "
            f"exited with code {code}. Is the leader's container running?"
        )
    logger.info("The leader closed the cluster: %s is done.", hosts.current)


def _why(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TrainingStopped":
        return "it was stopped (SIGTERM)"
    return f"{type(exc).__name__}: {exc}"


def report_failure(scheduler: str, host: str, reason: str) -> None:
    """Tell the leader (an event on the scheduler) that this host failed; best effort, as
    the leader may be gone."""
    try:
        from distributed import Client

        with Client(scheduler, timeout=5, set_as_default=False) as client:
            client.log_event(FAILURE_TOPIC, {"host": host, "reason": reason})
            client.get_events(FAILURE_TOPIC)  # a round trip: the event has arrived
    except Exception as exc:  # the leader is unreachable: nothing more to do
        logger.info("Could not tell the leader that %s failed: %s", host, exc)


# --- the fit's side: a Dask client in the fit's process ------------------------------------
class _SequentialBatch:
    """A batch of the search's tasks as a worker runs it: joblib's ``Batch``, but the
    tasks' own joblib calls (a forest's trees) run in the task.

    joblib's ``Batch`` runs its tasks inside ``parallel_config(backend="dask")``, which
    makes a Dask client on the worker: the nested calls would go back to the cluster, and
    that client, when the scheduler goes away, keeps the worker from exiting for Dask's
    30 s connect timeout while it tries to reconnect."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, tasks: list[tuple[Callable[..., Any], tuple, dict]]) -> list:
        import joblib

        with joblib.parallel_config(backend="sequential"):
            return [func(*args, **kwargs) for func, args, kwargs in tasks]

    def __repr__(self) -> str:
        return self.name  # the task's key, as joblib names it


def _register_backend() -> None:
    """joblib's ``dask`` backend, but the joblib calls inside a task run in the task,
    and only X and y are sent ahead (to every worker).

    The stock backend runs every task inside ``parallel_config(backend="dask")`` on the
    worker, so a task of a search (one candidate on one fold) that fits a forest sends
    the forest's trees back to the cluster, one task per batch of trees, whatever the
    forest's ``n_jobs``: ~600 extra tasks for 24 fits, and the cluster spends its time
    shipping trees (bench/RESULTS.md). Only the outer level belongs on the cluster.
    """
    import joblib
    from joblib._dask import DaskDistributedBackend  # no public name for the class

    class FlatDaskBackend(DaskDistributedBackend):
        # joblib batches tasks shorter than this (stock: 0.2 s) two, four, ... to a
        # Dask task; a search's few fits then split unevenly over the hosts.
        MIN_IDEAL_BATCH_DURATION = 0.05

        def start_call(self) -> None:
            super().start_call()
            # No automatic scatter of the other arguments (a fold's indices): it puts
            # each on one worker, and a task whose data died with its worker is
            # cancelled instead of run again. X and y are broadcast (``scatter``).
            self.call_data_futures: dict[Any, Any] | None = None

        def stop_call(self) -> None:
            self.call_data_futures = {}
            super().stop_call()

        async def _to_func_args(self, func: Any) -> tuple[Any, list[Any]]:
            batch, tasks = await super()._to_func_args(func)
            return _SequentialBatch(repr(batch)), tasks

        def __reduce__(self) -> tuple[Any, tuple[()]]:
            return (FlatDaskBackend, ())

    joblib.register_parallel_backend(BACKEND, FlatDaskBackend)


def workers_by_host(info: dict[str, Any], names: tuple[str, ...]) -> dict[str, int]:
    """How many workers of each host have joined (``dask worker --name HOST`` names its
    processes ``HOST-0``, ``HOST-1``, ... when it starts several)."""
    counts = dict.fromkeys(names, 0)
    for worker in info.get("workers", {}).values():
        name = str(worker.get("name", ""))
        for host in names:
            if name == host or (
                name.startswith(f"{host}-") and name[len(host) + 1 :].isdigit()
            ):
                counts[host] += 1
    return counts


@contextmanager
def local_context(X: Any, y: Any, fail: Callable[[str], None]) -> Iterator[None]:
    """The fit's context on one host: joblib's own process pool on every core, shut
    down after the fit (the fit's process would otherwise wait out its idle timeout)."""
    import joblib
    from joblib.externals.loky import get_reusable_executor

    try:
        with joblib.parallel_config(backend="loky"):
            yield
    finally:
        get_reusable_executor().shutdown(wait=True, kill_workers=True)


def fit_context(
    scheduler: str, hosts: tuple[str, ...], timeout: float
) -> Callable[[Any, Any, Callable[[str], None]], Any]:
    """The fit's context (``run.fit_in_child``'s ``context``): a client in the fit's
    process, every host's workers waited for, a failing host turned into the job's
    failure, the data sent once to every worker, and joblib's calls on the cluster."""

    @contextmanager
    def context(X: Any, y: Any, fail: Callable[[str], None]) -> Iterator[None]:
        import joblib
        from distributed import Client

        _register_backend()
        with Client(scheduler, timeout=timeout, set_as_default=False) as client:
            wait_for_hosts(client, hosts, timeout)

            def on_failure(event: tuple[float, dict[str, str]]) -> None:
                fail(_host_failed(event[1]))

            client.subscribe_topic(FAILURE_TOPIC, on_failure)
            try:
                with joblib.parallel_config(
                    backend=BACKEND, client=client, scatter=[X, y], n_jobs=-1
                ):
                    yield
            except Exception as exc:
                # A host that stops makes its tasks fail too, maybe before its message
                # arrives: the host's reason is the one the user needs.
                reason = reported_failure(client, wait=5)
                if reason:
                    raise ClientError(reason) from exc
                if _lost_work(exc):
                    raise ClientError(
                        "A host's Dask worker was lost mid-search and Dask could not "
                        f"run its tasks again ({type(exc).__name__}: {exc}). No model "
                        "was written; run the job again."
                    ) from exc
                raise

    return context


def _host_failed(detail: dict[str, str]) -> str:
    return (
        f"Host {detail.get('host')} failed: {detail.get('reason')}. The job ends on "
        "every host; no model was written."
    )


def reported_failure(client: Any, wait: float) -> str | None:
    """The first failure a host reported to the scheduler, waiting up to ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        events = client.get_events(FAILURE_TOPIC)
        if events:
            return _host_failed(events[0][1])
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def _lost_work(exc: BaseException) -> bool:
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return isinstance(exc, FutureCancelledError | KilledWorker | CommClosedError)


def wait_for_hosts(client: Any, hosts: tuple[str, ...], timeout: float) -> None:
    """Until every host has a worker in the cluster; after ``timeout``, a ``ClientError``
    naming the missing ones."""
    deadline = time.monotonic() + timeout
    while True:
        counts = workers_by_host(client.scheduler_info(n_workers=-1), hosts)
        missing = [host for host, count in counts.items() if not count]
        if not missing:
            logger.info(
                "Every host joined: %s.",
                ", ".join(f"{h} ({n} workers)" for h, n in counts.items()),
            )
            return
        if time.monotonic() >= deadline:
            raise ClientError(
                f"Host(s) {', '.join(missing)} did not join the Dask cluster within "
                f"{timeout:g} s ({TIMEOUT}); joined: "
                f"{', '.join(h for h in hosts if h not in missing) or 'none'}. Check "
                "that their containers started and can reach the leader on port "
                f"{conf.get('DASK_SCHEDULER_PORT')}."
            )
        time.sleep(0.2)
