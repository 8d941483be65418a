"""Why joblib's ``dask`` backend under-fills two hosts, and what fills them.

    .venv/bin/python bench/dask_search.py                # 3 repeats of every way
    .venv/bin/python bench/dask_search.py --repeats 1 --ways serial,map

Two "hosts" on loopback (127.0.16.1 and 127.0.16.2), each a ``dask worker`` with one
process and one thread pinned to its own core (``taskset``); the scheduler and this
driver share core 0 with the first worker, as they share the leader in a training job. The
same RandomForest grid (8 candidates x 3 folds) is run:

- ``serial``: one process, ``GridSearchCV(n_jobs=1)``, pinned to core 0: the baseline;
- ``joblib``: ``GridSearchCV(n_jobs=-1)`` inside ``joblib.parallel_backend("dask")``;
- ``joblib-predispatch``: the same with ``pre_dispatch="all"``;
- ``joblib-scatter``: the same with ``scatter=[X, y]`` (the data broadcast to every worker);
- ``joblib-scatter-predispatch``: both;
- ``flat``: ``GridSearchCV(n_jobs=-1)`` on smserve's backend (``modelapp.training.cluster``):
  joblib's ``dask`` backend with ``scatter=[X, y]`` whose nested calls run sequentially;
- ``map``: ``client.map`` over candidates x folds with the data scattered to every worker
  (the way issue 16 measured at 1.93x on an idle machine).

Each way prints its median wall time over the repeats, the ratio to ``serial``, and how
the tasks were spread over the workers (the ``where`` column: tasks per worker; for
``serial`` and ``flat`` also the final refit's seconds, part of the total). The workers run
with the scheduler's memory manager off, as smserve's do. Run by hand; not part of the
test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")

from tests.support import free_port  # noqa: E402

HOSTS = ("127.0.16.1", "127.0.16.2")
WAYS = (
    "serial",
    "joblib",
    "joblib-predispatch",
    "joblib-scatter",
    "joblib-scatter-predispatch",
    "flat",
    "map",
)


def pinned(core: int, command: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *command]
    return command


def problem() -> tuple[Any, Any, Any, dict[str, list[Any]]]:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(
        n_samples=3000, n_features=20, n_informative=8, random_state=0
    )
    grid = {
        "n_estimators": [40, 80],
        "max_depth": [None, 8],
        "max_features": ["sqrt", 0.5],
    }
    return X, y, RandomForestClassifier(random_state=0, n_jobs=1), grid


class Cluster:
    """A scheduler and one single-threaded worker per host, each pinned to a core."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port(HOSTS[0])
        self.address = f"tcp://{HOSTS[0]}:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> Cluster:
        dask = str(Path(sys.executable).with_name("dask"))
        self._spawn(
            "scheduler",
            pinned(
                0, [dask, "scheduler", "--host", HOSTS[0], "--port", str(self.port)]
            ),
        )
        for core, host in enumerate(HOSTS):
            self._spawn(
                f"worker-{host}",
                pinned(
                    core,
                    [
                        dask,
                        "worker",
                        self.address,
                        "--host",
                        host,
                        "--nworkers",
                        "1",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--name",
                        host,
                    ],
                ),
            )
        return self

    def _spawn(self, name: str, command: list[str]) -> None:
        log = (self.work / f"{name}.log").open("wb")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),  # the workers unpickle smserve's task wrapper
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            # As smserve's DaskProcess: X and y stay on every worker (the scheduler's
            # memory manager would keep one copy, and the other host fetch it again).
            "DASK_DISTRIBUTED__SCHEDULER__ACTIVE_MEMORY_MANAGER__START": "False",
        }
        self.procs.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def where(client: Any, start: float) -> str:
    """Tasks per worker and per function since ``start`` (the workers' task streams):
    ``127.0.16.1:12`` is 12 tasks on the first host, ``tree:340`` 340 nested tree tasks."""
    hosts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for record in client.get_task_stream(start=start):
        hosts[record["worker"].split("//")[-1].rsplit(":", 1)[0]] += 1
        key = str(record["key"])
        kinds["tree" if "tree" in key else "fit"] += 1
    return " ".join(
        [f"{host}:{hosts[host]}" for host in HOSTS]
        + [f"{kind}:{kinds[kind]}" for kind in sorted(kinds)]
    )


def run_way(way: str, client: Any) -> tuple[float, str]:
    import joblib
    from sklearn.model_selection import GridSearchCV

    X, y, estimator, grid = problem()
    if way == "serial":
        raise AssertionError("serial runs in its own pinned process")
    if way == "map":
        started = time.time()
        clock = time.perf_counter()
        map_search(client, estimator, grid, X, y)
        return time.perf_counter() - clock, where(client, started)
    if way == "flat":
        from modelapp.training.cluster import BACKEND, _register_backend

        _register_backend()
        search = GridSearchCV(estimator, grid, cv=3, n_jobs=-1)
        started = time.time()
        clock = time.perf_counter()
        with joblib.parallel_config(backend=BACKEND, client=client, scatter=[X, y]):
            search.fit(X, y)
        seconds = time.perf_counter() - clock
        return seconds, f"{where(client, started)} refit:{search.refit_time_:.2f}s"
    kwargs: dict[str, Any] = {}
    search_kwargs: dict[str, Any] = {}
    if "scatter" in way:
        kwargs["scatter"] = [X, y]
    if "predispatch" in way:
        search_kwargs["pre_dispatch"] = "all"
    search = GridSearchCV(estimator, grid, cv=3, n_jobs=-1, **search_kwargs)
    started = time.time()
    clock = time.perf_counter()
    with joblib.parallel_backend("dask", **kwargs):
        search.fit(X, y)
    return time.perf_counter() - clock, where(client, started)


def fit_and_score(
    estimator: Any, params: dict[str, Any], X: Any, y: Any, train: Any, test: Any
) -> float:
    from sklearn.base import clone

    model = clone(estimator).set_params(**params).fit(X[train], y[train])
    return model.score(X[test], y[test])


def map_search(
    client: Any, estimator: Any, grid: dict[str, list[Any]], X: Any, y: Any
) -> list[float]:
    """Candidates x folds as one ``client.map``, the data broadcast once."""
    from sklearn.model_selection import ParameterGrid, StratifiedKFold

    candidates = list(ParameterGrid(grid))
    folds = list(StratifiedKFold(3).split(X, y))
    X_f, y_f = client.scatter([X, y], broadcast=True)
    pairs = [(p, f) for p in candidates for f in folds]
    futures = client.map(
        fit_and_score,
        [estimator] * len(pairs),
        [p for p, _ in pairs],
        [X_f] * len(pairs),
        [y_f] * len(pairs),
        [f[0] for _, f in pairs],
        [f[1] for _, f in pairs],
        pure=False,
    )
    return client.gather(futures)


def serial_once() -> tuple[float, float]:
    """The search's seconds, and of them the final refit's."""
    from sklearn.model_selection import GridSearchCV

    X, y, estimator, grid = problem()
    clock = time.perf_counter()
    search = GridSearchCV(estimator, grid, cv=3, n_jobs=1).fit(X, y)
    return time.perf_counter() - clock, search.refit_time_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ways", default=",".join(WAYS))
    args = parser.parse_args()
    ways = [w for w in args.ways.split(",") if w]
    times: dict[str, list[float]] = {w: [] for w in ways}
    spread: dict[str, str] = {}
    if "serial" in ways:
        for _ in range(args.repeats):
            out = subprocess.run(
                pinned(0, [sys.executable, __file__, "--serial-child"]),
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            ).stdout
            seconds, refit = map(float, out.split()[-2:])
            times["serial"].append(seconds)
            spread["serial"] = f"refit:{refit:.2f}s"
            print(f"serial: {seconds:.2f}s {spread['serial']}", file=sys.stderr)
    cluster_ways = [w for w in ways if w != "serial"]
    if cluster_ways:
        from distributed import Client

        work = Path(tempfile.mkdtemp(prefix="dask-bench-"))
        cluster = Cluster(work).start()
        try:
            with Client(cluster.address, timeout=30) as client:
                client.wait_for_workers(len(HOSTS), timeout=60)
                client.get_task_stream(start=time.time())  # starts the recording
                for _ in range(args.repeats):
                    for way in cluster_ways:
                        try:
                            seconds, spread[way] = run_way(way, client)
                        except Exception as exc:  # a way that fails is a finding
                            spread[way] = f"failed: {type(exc).__name__}: {exc}"[:200]
                            seconds = float("nan")
                        print(f"{way}: {seconds:.2f}s {spread[way]}", file=sys.stderr)
                        times[way].append(seconds)
        finally:
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(times["serial"]) if times.get("serial") else None
    print(f"{'way':24} {'median s':>9} {'runs':>22} {'vs serial':>9}  where")
    for way in ways:
        median = statistics.median(times[way])
        ratio = f"{base / median:.2f}x" if base else "-"
        runs = " ".join(f"{t:.2f}" for t in times[way])
        print(f"{way:24} {median:9.2f} {runs:>22} {ratio:>9}  {spread.get(way, '')}")


if __name__ == "__main__":
    if "--serial-child" in sys.argv:
        seconds, refit = serial_once()
        print(f"{seconds:.4f} {refit:.4f}")
    else:
        main()
