"""The container's memory and start-up: PSS of the real ``docker/serve`` (nginx + gunicorn)
per process for 1, 2 and 4 workers, the compiled engine on and off; seconds to the first
``/ping`` 200; the parsers' peak per format; and one 100 MB batch's worker peak. Each
figure is set against issue 22's targets in a final table. Run by hand:

    .venv/bin/python bench/memory.py                        # this tree (~10 min)
    .venv/bin/python bench/memory.py --before /tmp/before   # and another checkout
    .venv/bin/python bench/memory.py --only pss,cold --workers 2 --models iris

``--before`` names a checkout of other code (``git worktree add --detach /tmp/before
main``, then ``manage.py collectstatic`` in it): every measurement runs against both trees
in this one run, with the same model files, bodies and settings, so before and after come
from one machine at one time.

The models: the iris tree (``DecisionTreeClassifier``), and a ``RandomForestClassifier(100)``
on ``make_classification(20000, 20, random_state=0)`` at its default depth, both as
written by each tree's ``./train`` (``model.onnx`` included) and as a bare
``model.joblib``. Training takes minutes here, so the files are kept in ``--cache``
(under ``var/``), keyed by scikit-learn's version and, for ``./train``'s output, by the
code that writes it.

What is measured, each in processes of its own (this script's memory is in no figure):

- **PSS** from ``/proc/<pid>/smaps_rollup`` once every worker runs, after 50 one-record
  requests (spread over the workers by as many concurrent connections) and once two reads
  a second apart agree within 1 MB, summed over gunicorn's master, its workers and nginx's
  master and workers; anything else in serve's tree (its shell) is shown apart and not
  counted. A worker beyond the first adds ``(total(N) - total(1)) / (N - 1)``. Totals
  vary between starts of the same server by tens of MB (the master's garbage from loading
  the model): each row starts ``--repeat`` servers and keeps the median run.
- **Cold start**: ``serve`` launched to the first 200 on ``/ping``, median of 3, 2 workers.
- **Parser peak**: ``bench/parsers.py``'s ``tracemalloc`` peak of parsing a body and
  preparing the model's input, as a multiple of the body, run in each tree.
- **100 MB batch**: a numeric CSV with a blank field in every record, in one request to a
  server with ``SAGEMAKER_MAX_PAYLOAD_IN_MB=100`` and one fresh worker (one small request
  served): the worker's ``VmHWM`` after it less its ``VmRSS`` before, over the body's size.
  A watchdog kills the worker past ``--cap-mb`` (the machine is shared) and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import parsers as parser_bench  # bench/parsers.py
import run as serving  # bench/run.py: process tree, clean environment, tables

ROOT = serving.ROOT
MODELS = ("iris", "forest-train", "forest-joblib")
ENGINES = ("on", "off")
PARTS = ("pss", "cold", "parsers", "batch")
WARM_REQUESTS = 50
COLD_RUNS = 3
# Seconds PSS may take to settle (two reads a second apart within 1 MB) after the warm
# requests.
SETTLE_READS = 15
# The code whose change changes what ./train writes: its output is trained again.
TRAIN_CODE = (
    "train",
    "modelapp/training",
    "modelapp/predictors/compiled.py",
    "modelapp/engines.py",
    "modelapp/metadata.py",
)


# --- model files, cached ------------------------------------------------------------------
def forest_data() -> tuple[Any, Any]:
    from sklearn.datasets import make_classification

    return make_classification(n_samples=20000, n_features=20, random_state=0)


def sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def bare_models(cache: Path) -> dict[str, Path]:
    """iris and the forest as bare ``model.joblib`` files, fitted once per version."""
    import joblib

    out = {}
    for name in ("iris", "forest-joblib"):
        path = cache / f"{name}-sklearn{sklearn_version()}" / "model.joblib"
        if not path.exists():
            print(f"fitting {name} (kept in {path.parent})", flush=True)
            from sklearn.datasets import load_iris
            from sklearn.ensemble import RandomForestClassifier
            from sklearn.tree import DecisionTreeClassifier

            if name == "iris":
                model = DecisionTreeClassifier(random_state=0).fit(
                    *load_iris(return_X_y=True)
                )
            else:
                model = RandomForestClassifier(n_estimators=100, random_state=0).fit(
                    *forest_data()
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(model, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)
        out[name] = path.parent
    return out


def train_key(root: Path) -> str:
    digest = hashlib.sha256(sklearn_version().encode())
    for name in TRAIN_CODE:
        target = root / name
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for path in files:
            if path.exists():
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return f"sklearn{sklearn_version()}-{digest.hexdigest()[:12]}"


def trained_forest(root: Path, cache: Path) -> Path:
    """The forest as ``root``'s ``./train`` writes it (its whole ``model/`` dir)."""
    target = cache / f"forest-train-{train_key(root)}"
    if (target / "model.joblib").exists():
        return target
    print(f"training the forest with {root}/train (kept in {target})", flush=True)
    X, y = forest_data()
    with tempfile.TemporaryDirectory(prefix="membench-train-") as tmp:
        base = Path(tmp) / "ml"
        config = base / "input" / "config"
        data = base / "input" / "data" / "train"
        config.mkdir(parents=True)
        data.mkdir(parents=True)
        hyperparameters = {
            "smserve_estimator": "random_forest",
            "n_estimators": "100",
            "smserve_random_seed": "0",
        }
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        channel = {"ContentType": "text/csv", "TrainingInputMode": "File"}
        (config / "inputdataconfig.json").write_text(json.dumps({"train": channel}))
        with (data / "train.csv").open("w") as out:
            for label, row in zip(y.tolist(), X.tolist(), strict=True):
                out.write(",".join([str(label), *map(repr, row)]) + "\n")
        env = {
            **serving.clean_environment(),
            "SMSERVE_PYTHON": sys.executable,
            "SMSERVE_STATE_DIR": str(Path(tmp) / "state"),
            "DATABASE_URL": "",
        }
        done = subprocess.run(
            [str(root / "train"), "--base-dir", str(base)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"./train failed:\n{done.stderr[-4000:]}")
        shutil.copytree(base / "model", target.with_suffix(".tmp"))
        target.with_suffix(".tmp").rename(target)
    return target


def one_record(model: str) -> bytes:
    if model == "iris":
        return b"5.1,3.5,1.4,0.2\n"
    X, _ = forest_data()
    return (",".join(map(repr, X[0].tolist())) + "\n").encode()


# --- the server ---------------------------------------------------------------------------
@dataclass
class Serve:
    """``root``'s ``docker/serve`` for the files of ``model_dir`` on a free loopback port,
    in a temp ``/opt/ml``-like tree; stopped by PID (its process group killed if it hangs)."""

    root: Path
    model_dir: Path
    work: Path
    workers: int
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    cold_start: float = 0.0
    cold_start_cpu: float = 0.0

    def start(self) -> Serve:
        model = self.work / "ml" / "model"
        model.mkdir(parents=True)
        for item in self.model_dir.iterdir():
            (model / item.name).symlink_to(item)
        self.port = serving.free_port()
        env = {
            **serving.clean_environment(),
            "SAGEMAKER_BASE_DIR": str(self.work / "ml"),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SMSERVE_BIND_HOST": "127.0.0.1",
            "SMSERVE_STATE_DIR": str(self.work / "state"),
            "SMSERVE_PYTHON": sys.executable,
            "MODEL_SERVER_WORKERS": str(self.workers),
            "TMPDIR": str(self.work),
            **self.env,
        }
        log = (self.work / "serve.log").open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(self.root / "docker" / "serve")],
            env=env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        while True:
            try:
                if self.request("GET", "/ping")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.perf_counter() > started + 120:
                raise RuntimeError(f"serve did not start:\n{self.log()[-4000:]}")
            time.sleep(0.01)
        self.cold_start = time.perf_counter() - started
        self.cold_start_cpu = tree_cpu_seconds(self.proc.pid)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        return (self.work / "serve.log").read_text(errors="replace")

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 30
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {}
            if body is not None:
                headers["Content-Type"] = "text/csv"
                headers["Accept"] = "text/csv"
            if hasattr(body, "read"):
                headers["Content-Length"] = str(os.fstat(body.fileno()).st_size)
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def roles(self) -> dict[int, str]:
        """pid -> ``master``, ``worker``, ``nginx`` or ``other``, for serve's whole tree."""
        assert self.proc is not None
        out = {}
        tree = serving.process_tree(self.proc.pid)
        for pid in tree:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if cmdline.startswith(b"nginx"):
                out[pid] = "nginx"
            elif b"gunicorn" in cmdline:
                out[pid] = "worker" if out.get(parent) == "master" else "master"
            else:
                out[pid] = "other"
        return out


@contextmanager
def serving_model(
    root: Path, model_dir: Path, work: Path, workers: int, env: dict[str, str]
) -> Iterator[Serve]:
    server = Serve(root, model_dir, Path(tempfile.mkdtemp(dir=work)), workers, env)
    try:
        yield server.start()
    finally:
        server.stop()


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root``'s tree so far: every live process's own and its waited-for
    children's (serve's checks and migrations, the master's short-lived children)."""
    total = 0
    for pid in serving.process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])
    return total / serving.CLK_TCK


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the measurements ---------------------------------------------------------------------
def measure_pss(server: Serve, body: bytes) -> dict[str, Any]:
    """PSS per role after the warm requests, once it has settled: ``/ping`` answers as
    soon as one worker is up, and a master may still be freeing its load's garbage."""
    deadline = time.monotonic() + 120
    while sum(r == "worker" for r in server.roles().values()) < server.workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.workers} workers never ran:\n{server.log()}")
        time.sleep(0.1)
    with ThreadPoolExecutor(server.workers) as pool:
        statuses = list(
            pool.map(
                lambda _: server.request("POST", "/invocations", body)[0],
                range(WARM_REQUESTS),
            )
        )
    if set(statuses) != {200}:
        raise RuntimeError(f"warm requests answered {sorted(set(statuses))}")
    figures = pss_by_role(server)
    for _ in range(SETTLE_READS):
        time.sleep(1)
        previous, figures = figures, pss_by_role(server)
        if abs(figures["total"] - previous["total"]) < 1:
            break
    return figures


def pss_by_role(server: Serve) -> dict[str, Any]:
    figures: dict[str, Any] = {"master": 0.0, "workers": [], "nginx": 0.0, "other": 0.0}
    for pid, role in sorted(server.roles().items()):
        try:
            value = pss_mb(pid)
        except OSError:
            continue
        if role == "worker":
            figures["workers"].append(value)
        else:
            figures[role] += value
    figures["total"] = figures["master"] + sum(figures["workers"]) + figures["nginx"]
    return figures


def measure_batch(
    root: Path, model_dir: Path, work: Path, body_file: Path, cap_mb: float
) -> dict[str, Any]:
    env = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "100"}
    with serving_model(root, model_dir, work, 1, env) as server:
        status = server.request("POST", "/invocations", one_record("forest-joblib"))[0]
        if status != 200:
            raise RuntimeError(f"the warm request answered {status}")
        (worker,) = [p for p, r in server.roles().items() if r == "worker"]
        # A forked worker inherits its master's high-water mark: reset it to its RSS now
        # (proc(5), clear_refs), so that VmHWM after the request is the request's peak.
        Path(f"/proc/{worker}/clear_refs").write_text("5")
        before = status_mb(worker, "VmRSS")
        killed = threading.Event()
        done = threading.Event()

        def watchdog() -> None:
            while not done.wait(0.05):
                try:
                    if status_mb(worker, "VmRSS") > cap_mb:
                        os.kill(worker, signal.SIGKILL)
                        killed.set()
                        return
                except OSError:
                    return

        guard = threading.Thread(target=watchdog, daemon=True)
        guard.start()
        started = time.perf_counter()
        try:
            with body_file.open("rb") as body:
                status, answer = server.request("POST", "/invocations", body, 900)
            peak = status_mb(worker, "VmHWM")
        except OSError as exc:
            status, answer, peak = 0, str(exc).encode(), cap_mb
        finally:
            done.set()
            guard.join()
        seconds = time.perf_counter() - started
    body_mb = body_file.stat().st_size / 2**20
    return {
        "body_mb": body_mb,
        "status": status,
        "detail": answer[:200].decode(errors="replace") if status != 200 else "",
        "seconds": seconds,
        "rss_before_mb": before,
        "hwm_after_mb": peak,
        "growth_mb": peak - before,
        "multiple": (peak - before) / body_mb,
        "killed_at_cap": killed.is_set(),
    }


def batch_body(path: Path, size_mb: float) -> Path:
    """A numeric CSV of the forest's records, each with one blank field, to ``size_mb``."""
    if path.exists() and path.stat().st_size >= size_mb * 2**20:
        return path
    X, _ = forest_data()
    lines = []
    for i, row in enumerate(X[:2000].tolist()):
        fields = list(map(repr, row))
        fields[i % len(fields)] = ""
        lines.append(",".join(fields) + "\n")
    block = "".join(lines).encode()
    with path.open("wb") as out:
        written = 0
        while written + len(block) <= size_mb * 2**20:
            written += out.write(block)
    return path


# --- the run ------------------------------------------------------------------------------
# What a failed measurement raises: a server that does not start or answers wrongly, a
# checkout whose ./train or parsers fail. The run goes on; the report lists it.
MEASUREMENT_ERRORS = (RuntimeError, OSError, subprocess.CalledProcessError)


def attempt(errors: list[str], what: str, measure: Any, *args: Any) -> Any:
    """``measure(*args)``, or None with the failure recorded in ``errors``."""
    try:
        return measure(*args)
    except MEASUREMENT_ERRORS as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        errors.append(f"{what}: {type(exc).__name__}: {detail[-2000:]}")
        print(f"  FAILED {what}: {type(exc).__name__}", flush=True)
        return None


def run_all(
    trees: dict[str, Path], args: argparse.Namespace, bare: dict[str, Path], work: Path
) -> dict[str, dict[str, Any]]:
    """Every figure asked for, for every checkout; each measurement is taken for the
    trees one after the other, so that a busy machine weighs on them alike."""
    out: dict[str, dict[str, Any]] = {
        label: {
            "pss": {},
            "cold": {},
            "cold_cpu": {},
            "parsers": {},
            "batch": {},
            "errors": [],
        }
        for label in trees
    }
    dirs = {label: dict(bare) for label in trees}
    if {"pss", "cold"} & set(args.only) and "forest-train" in args.models:
        for label, root in trees.items():
            trained = attempt(
                out[label]["errors"],
                "./train",
                trained_forest,
                root,
                args.cache,
            )
            if trained:
                dirs[label]["forest-train"] = trained

    def start(label: str, model: str, workers: int, env: dict[str, str]) -> Any:
        return serving_model(trees[label], dirs[label][model], work, workers, env)

    def pss(label: str, model: str, workers: int, env: dict[str, str]) -> Any:
        with start(label, model, workers, env) as server:
            return measure_pss(server, one_record(model))

    def cold(label: str, model: str) -> Any:
        with start(label, model, 2, {}) as server:
            return server.cold_start, server.cold_start_cpu

    if "pss" in args.only:
        for model in args.models:
            for engine in args.engines:
                for workers in args.workers:
                    env = {"SMSERVE_COMPILED_ENGINE": engine}
                    key = f"{model}|{engine}|{workers}"
                    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
                    for _ in range(args.repeat):
                        for label in trees:
                            if model in dirs[label]:
                                figures = attempt(
                                    out[label]["errors"],
                                    f"PSS {key}",
                                    pss,
                                    label,
                                    model,
                                    workers,
                                    env,
                                )
                                if figures:
                                    runs[label].append(figures)
                    for label in trees:
                        if not runs[label]:
                            continue
                        # The run with the median total (the lower of two).
                        ordered = sorted(runs[label], key=lambda f: f["total"])
                        figures = ordered[(len(ordered) - 1) // 2]
                        figures["runs"] = [f["total"] for f in runs[label]]
                        out[label]["pss"][key] = figures
                        print(
                            f"  {label}: PSS {model}, engine {engine}, {workers} "
                            f"workers: {figures['runs']} MB",
                            flush=True,
                        )
    if "cold" in args.only:
        for model in args.models:
            for _ in range(COLD_RUNS):
                for label in trees:
                    if model not in dirs[label]:
                        continue
                    timed = attempt(
                        out[label]["errors"],
                        f"cold start {model}",
                        cold,
                        label,
                        model,
                    )
                    if timed:
                        out[label]["cold"].setdefault(model, []).append(timed[0])
                        out[label]["cold_cpu"].setdefault(model, []).append(timed[1])
            for label in trees:
                print(
                    f"  {label}: cold start {model}: {out[label]['cold'].get(model)}",
                    flush=True,
                )
    if "parsers" in args.only:
        size = int(args.parser_mb * 2**20)
        for label, root in trees.items():
            out[label]["parsers"] = (
                attempt(
                    out[label]["errors"],
                    "parsers",
                    parser_bench.child,
                    root,
                    "measure",
                    size,
                )
                or {}
            )
            print(f"  {label}: parsers done", flush=True)
    if "batch" in args.only:
        body = batch_body(args.cache / f"batch-{args.batch_mb:g}mb.csv", args.batch_mb)
        for label, root in trees.items():
            out[label]["batch"] = (
                attempt(
                    out[label]["errors"],
                    "batch",
                    measure_batch,
                    root,
                    bare["forest-joblib"],
                    work,
                    body,
                    args.cap_mb,
                )
                or {}
            )
            print(f"  {label}: batch {out[label]['batch']}", flush=True)
    return out


def per_added_worker(pss: dict[str, Any], model: str, engine: str) -> dict[int, float]:
    """N -> what each worker beyond the first adds, from the totals at 1 and N workers."""
    one = pss.get(f"{model}|{engine}|1")
    out = {}
    for key, figures in pss.items():
        name, eng, workers = key.split("|")
        if one and name == model and eng == engine and int(workers) > 1:
            out[int(workers)] = (figures["total"] - one["total"]) / (int(workers) - 1)
    return out


def report(figures: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    labels = list(figures)
    fmt = serving.fmt_table
    out: list[str] = []
    if "pss" in args.only:
        out.append(f"\n## PSS after {WARM_REQUESTS} one-record requests, MB")
        out.append(
            "total = gunicorn master + workers + nginx (master and workers); "
            "serve's own shell is left out; of "
            f"{args.repeat} run(s) per row, the one with the median total (the lower "
            "of two)"
        )
        rows = []
        for model in args.models:
            for engine in args.engines:
                for workers in args.workers:
                    row: list[Any] = [model, engine, workers]
                    for label in labels:
                        f = figures[label]["pss"].get(f"{model}|{engine}|{workers}")
                        if f is None:
                            row += ["-"] * 6
                            continue
                        row += [
                            f["total"],
                            f["master"],
                            " + ".join(f"{w:.0f}" for w in f["workers"]),
                            f["nginx"],
                            f["other"],
                            " ".join(f"{t:.0f}" for t in f["runs"]),
                        ]
                    rows.append(row)
        heads = [
            "total",
            "master",
            "workers",
            "nginx",
            "other (not counted)",
            "totals of the runs",
        ]
        out.append(
            fmt(
                ["model", "engine", "workers"]
                + [f"{label}: {h}" for label in labels for h in heads],
                rows,
            )
        )
        out.append("\n## What each worker beyond the first adds (PSS MB)")
        rows = []
        for model in args.models:
            for engine in args.engines:
                row = [model, engine]
                for label in labels:
                    added = per_added_worker(figures[label]["pss"], model, engine)
                    row += [added.get(n, "-") for n in (2, 4)]
                rows.append(row)
        out.append(
            fmt(
                ["model", "engine"]
                + [f"{label}: 1->{n}" for label in labels for n in (2, 4)],
                rows,
            )
        )
    if "cold" in args.only:
        out.append(
            "\n## Cold start: serve launched to /ping 200 (2 workers, engine on): wall s, "
            "and CPU s of serve's tree by then (less sensitive to a busy machine)"
        )
        rows = []
        for model in args.models:
            row = [model]
            for label in labels:
                runs = figures[label]["cold"].get(model)
                cpu = figures[label]["cold_cpu"].get(model)
                if not runs:
                    row += ["-"] * 3
                    continue
                row += [
                    statistics.median(runs),
                    " ".join(f"{r:.2f}" for r in runs),
                    statistics.median(cpu),
                ]
            rows.append(row)
        heads = ("median s", "runs s", "median CPU s")
        out.append(
            fmt(
                ["model"] + [f"{label}: {h}" for label in labels for h in heads],
                rows,
            )
        )
    if "parsers" in args.only:
        out.append(
            f"\n## Parser peak (tracemalloc) / body, bodies of ~{args.parser_mb:g} MB"
        )
        rows = []
        for name in parser_bench.CONTENTS:
            row = [name]
            for label in labels:
                f = figures[label]["parsers"].get(name)
                if f is None:
                    row += ["-"] * 2
                    continue
                row += [
                    parser_bench.ratio(f["parse"]),
                    parser_bench.ratio(f["prepare"])
                    if f["prepare"] is not None
                    else f"({f['refused']})",
                ]
            rows.append(row)
        out.append(
            fmt(
                ["content"]
                + [f"{label}: {h}" for label in labels for h in ("parse", "+ input")],
                rows,
            )
        )
    if "batch" in args.only:
        out.append(
            f"\n## {args.batch_mb:g} MB numeric CSV with gaps, one request, 1 worker "
            "(forest, bare joblib)"
        )
        keys = list({k: 0 for f in figures.values() for k in f["batch"]})
        out.append(
            fmt(
                ["", *labels],
                [
                    [k, *(figures[lb]["batch"].get(k, "-") for lb in labels)]
                    for k in keys
                ],
            )
        )
    out.append("\n## Issue 22's targets")
    out.append(fmt(["target", *labels, "met"], targets(figures)))
    for label in labels:
        for error in figures[label]["errors"]:
            out.append(f"\nFAILED ({label}) {error}")
    return out


def targets(figures: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per target: its figure per tree, and whether the last tree meets it."""

    def pss(f: dict[str, Any], key: str) -> float | None:
        found = f["pss"].get(key)
        return found["total"] if found else None

    def ratio(f: dict[str, Any]) -> float | None:
        on, off = pss(f, "forest-joblib|on|2"), pss(f, "forest-joblib|off|2")
        return on / off if on and off else None

    def added(f: dict[str, Any]) -> float | None:
        values = [
            v
            for model in ("forest-joblib", "forest-train")
            for v in per_added_worker(f["pss"], model, "on").values()
        ]
        return max(values) if values else None

    def parser_peak(f: dict[str, Any]) -> float | None:
        values = [
            max(row["parse"], row["prepare"] or 0) for row in f["parsers"].values()
        ]
        return max(values) if values else None

    def batch(f: dict[str, Any]) -> float | None:
        return f["batch"].get("multiple")

    def cold(f: dict[str, Any], model: str) -> float | None:
        runs = f["cold"].get(model)
        return statistics.median(runs) if runs else None

    rows = [
        ("forest (bare joblib), 2 workers: PSS engine on / off <= 1.2x", ratio, 1.2),
        (
            "forest, engine on: PSS each worker beyond the first adds <= 15 MB (worst of both forests, 1->2 and 1->4)",
            added,
            15,
        ),
        ("iris, 2 workers: PSS <= 200 MB", lambda f: pss(f, "iris|on|2"), 200),
        (
            "parser peak <= 10x the body (worst content, parse or + input)",
            parser_peak,
            10,
        ),
        ("100 MB CSV with gaps: worker peak RSS growth <= 3x the body", batch, 3),
        (
            "cold start, forest by ./train (model.onnx) <= 2.0 s",
            lambda f: cold(f, "forest-train"),
            2.0,
        ),
        (
            "cold start, forest as bare joblib <= 3.0 s",
            lambda f: cold(f, "forest-joblib"),
            3.0,
        ),
    ]
    table: list[list[Any]] = []
    for name, get, bound in rows:
        values = [get(f) for f in figures.values()]
        last = values[-1]
        verdict = "-" if last is None else ("met" if last <= bound else "not met")
        table.append([name, *(v if v is not None else "-" for v in values), verdict])
    table.append(
        [
            "no speed regression (bench/run.py, same run)",
            *("not measured here" for _ in figures),
            "-",
        ]
    )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout, measured too")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}"
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument(
        "--repeat", type=int, default=2, help="servers started per PSS row"
    )
    parser.add_argument("--parser-mb", type=float, default=6.0)
    parser.add_argument("--batch-mb", type=float, default=100.0)
    parser.add_argument(
        "--cap-mb",
        type=float,
        default=8000.0,
        help="the batch's worker is killed past this RSS (the machine is shared)",
    )
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "var" / "bench-memory", help="model files"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    args.only = args.only.split(",")
    args.models = args.models.split(",")
    args.engines = args.engines.split(",")
    args.workers = [int(w) for w in args.workers.split(",")]
    unknown = set(args.only) - set(PARTS) | set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    args.cache.mkdir(parents=True, exist_ok=True)

    trees = {"this tree": ROOT}
    if args.before:
        trees = {"before": args.before.resolve(), "after": ROOT}
    lines = [
        f"machine: {platform.node()} {platform.machine()} "
        f"{len(os.sched_getaffinity(0))} cpus ({serving._cpu_model()}), "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GB, "
        f"python {platform.python_version()}, scikit-learn {sklearn_version()}, "
        f"load average {load_average()}; "
        + "; ".join(
            f"{label}: {root} ({git_label(root)})" for label, root in trees.items()
        )
    ]
    print(lines[0], flush=True)
    for root in trees.values():
        # Bytecode compiled beforehand, as in the image: compiling at import leaves its
        # garbage in the master's heap, which every worker would share.
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "modelapp", "smserve", "bench"],
            cwd=root,
            check=True,
        )
    bare = bare_models(args.cache)
    work = Path(tempfile.mkdtemp(prefix="membench-"))
    try:
        figures = run_all(trees, args, bare, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines.append(f"load average at the end: {load_average()}")
    lines += report(figures, args)
    print("\n".join(lines[1:]))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 1 if any(f["errors"] for f in figures.values()) else 0


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def git_label(root: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    branch = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--abbrev-ref", "HEAD"],
        capture_output=True,
        text=True,
    )
    return f"{branch.stdout.strip()} {done.stdout.strip()}".strip() or str(root)


if __name__ == "__main__":
    sys.exit(main())
