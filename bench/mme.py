"""The multi-model benchmark: 100 small models loaded through SageMaker's model API into
the real ``docker/serve`` (nginx + 2 gunicorn workers, ``SAGEMAKER_MULTI_MODEL=true``),
invoked at random under ``wrk``.

    .venv/bin/python bench/mme.py             # ~1 minute
    .venv/bin/python bench/mme.py --models 20 --seconds 3

Prints: what one load costs (POST /models) against ``joblib.load`` of the same file; the
first invocation of a freshly loaded model in the worker that did not load it (a lazy
load) against a warm one; requests/s and latency percentiles of random invocations at
concurrency 4; the server's memory (PSS of serve's process tree) per loaded model, and
after unloading them all; and what the per-invocation freshness check costs against
the alternatives considered (``modelapp/multimodel.py``). Server pinned to CPU 1, wrk to
CPU 0, as in ``bench/run.py``. Run by hand; not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import joblib  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

from bench.run import Server, tree_memory_mb  # noqa: E402

LUA = Path(__file__).resolve().parent / "mme.lua"
FEATURES = 8
ROW = b"0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8\n"


def make_models(root: Path, count: int) -> list[Path]:
    """``count`` small models (trees, logistic regressions, 10-tree forests), one
    directory each, as SageMaker unpacks them under /opt/ml/models/<name>/model."""
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(count):
        X = rng.random((500, FEATURES))
        y = (X[:, i % FEATURES] > 0.5).astype(int)
        model = [
            DecisionTreeClassifier(max_depth=8, random_state=i),
            LogisticRegression(),
            RandomForestClassifier(n_estimators=10, max_depth=8, random_state=i),
        ][i % 3].fit(X, y)
        model_dir = root / f"m{i:03d}" / "model"
        model_dir.mkdir(parents=True)
        joblib.dump(model, model_dir / "model.joblib")
        dirs.append(model_dir)
    return dirs


def joblib_load_ms(path: Path) -> float:
    return min(timeit.repeat(lambda: joblib.load(path), number=1, repeat=5)) * 1e3


class MMEServer(Server):
    """``bench.run.Server`` with no model: models come through POST /models."""

    def start(self, probe: bytes = b"") -> MMEServer:
        self.env = {**self.env, "SAGEMAKER_MULTI_MODEL": "true"}
        self.model_path = self.work / "none"  # bench.run.Server links it; never read
        self.model_path.touch()
        super().start(probe)
        return self

    def request(self, method: str, path: str, body: bytes | None = None):
        if path == "/invocations":
            return 200, b""  # Server.start's probe: no default model in this mode
        return super().request(method, path, body)

    def load(self, name: str, url: Path) -> tuple[int, float]:
        started = time.perf_counter()
        status = self.json("POST", "/models", {"model_name": name, "url": str(url)})[0]
        return status, (time.perf_counter() - started) * 1e3

    def json(self, method: str, path: str, body: dict | None = None):
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, data, {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def invoke_ms(self, name: str) -> float:
        started = time.perf_counter()
        status, _ = self.request("POST", f"/models/{name}/invoke", ROW)
        assert status == 200, status
        return (time.perf_counter() - started) * 1e3

    def holders(self, name: str) -> int:
        (run_dir,) = self.work.glob("smserve.*")
        registry = run_dir / "mme"
        token = next(
            e["token"]
            for e in (
                json.loads(p.read_text()) for p in (registry / "entries").iterdir()
            )
            if e["name"] == name
        )
        return sum(
            token in json.loads(p.read_text())
            for p in (registry / "workers").iterdir()
            if p.name.isdigit()
        )


def wrk_random(port: int, models: int, body: Path, seconds: int, cpus: str | None):
    cmd = ["wrk", "-t1", "-c4", f"-d{seconds}s", "--timeout", "30s", "-s", str(LUA)]
    cmd.append(f"http://127.0.0.1:{port}/")
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_MODELS": str(models)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    line = next(li for li in out.stdout.splitlines() if li.startswith("BENCH "))
    return json.loads(line[6:])


def freshness_checks(work: Path) -> dict[str, float]:
    """Microseconds per 'is my copy still the registered load?' asked each invocation."""
    d = Path(tempfile.mkdtemp(dir=work))
    token = uuid.uuid4().hex
    os.symlink(token, d / "link")
    entry = {"name": "x", "url": "/opt/ml/models/x/model", "token": token}
    (d / "entry.json").write_text(json.dumps(entry))
    db = sqlite3.connect(d / "r.sqlite3")
    db.execute("create table m(name text primary key, token text)")
    db.executemany(
        "insert into m values(?, ?)",
        [(f"m{i}", uuid.uuid4().hex) for i in range(1000)] + [("x", token)],
    )
    db.commit()

    def read_entry():
        return json.loads((d / "entry.json").read_bytes())["token"] == token

    checks = {
        "readlink (smserve)": lambda: os.readlink(d / "link") == token,
        "stat (mtime+inode; not unique)": lambda: os.stat(d / "entry.json").st_mtime_ns,
        "read + parse a JSON entry": read_entry,
        "SQLite indexed lookup": lambda: db.execute(
            "select token from m where name = ?", ("x",)
        ).fetchone(),
    }
    return {
        name: min(timeit.repeat(fn, number=20000, repeat=5)) / 20000 * 1e6
        for name, fn in checks.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    ncpu = len(os.sched_getaffinity(0))
    server_cpus, client_cpus = ("1", "0") if ncpu >= 2 else (None, None)
    work = Path(tempfile.mkdtemp(prefix="smserve-mme-bench-"))
    server = None
    try:
        dirs = make_models(work / "models", args.models)
        sizes = [(d / "model.joblib").stat().st_size for d in dirs]
        joblib_ms = [joblib_load_ms(d / "model.joblib") for d in dirs]
        server = MMEServer(work / "none", work, cpus=server_cpus).start()
        body = work / "row.csv"
        body.write_bytes(ROW)
        memory = {"none loaded": tree_memory_mb(server.proc.pid)["pss"]}
        # Two rounds of load, invoke, unload: the first also pays each worker's one-time
        # costs (pages of the preloaded libraries copied on first touch, caches), the
        # second shows what a model costs and whether an unload gives it back.
        for round_ in (1, 2):
            load_ms, cold_ms, warm_ms = [], [], []
            for i, model_dir in enumerate(dirs):
                name = f"m{i:03d}"
                status, ms = server.load(name, model_dir)
                assert status == 200, (name, status)
                load_ms.append(ms)
                # Two at once: one reaches the worker that loaded it, one the other.
                with ThreadPoolExecutor(2) as pool:
                    pair = list(pool.map(server.invoke_ms, [name, name]))
                if server.holders(name) == 2:
                    cold_ms.append(max(pair))
                warm_ms.append(server.invoke_ms(name))
            if round_ == 1:
                runs = {
                    f"{n} model(s)": wrk_random(
                        server.port, n, body, args.seconds, client_cpus
                    )
                    # 3: one model of each kind, the same mix as the 100
                    for n in (args.models, 3)
                }
            memory[f"round {round_}: {args.models} loaded"] = tree_memory_mb(
                server.proc.pid
            )["pss"]
            for i in range(args.models):
                assert server.json("DELETE", f"/models/m{i:03d}")[0] == 200
            memory[f"round {round_}: all unloaded"] = tree_memory_mb(server.proc.pid)[
                "pss"
            ]
        checks = freshness_checks(work)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"work dir: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def med(values):
        return statistics.median(values) if values else float("nan")

    def p90(values):
        return (
            statistics.quantiles(values, n=10)[-1] if len(values) > 1 else med(values)
        )

    n = args.models
    print(f"{n} models, {med(sizes) / 1024:.1f} kB median artifact; 2 workers")
    print("round 2:")
    print("| what | median | p90 |")
    print("|---|---|---|")
    print(
        f"| joblib.load, in-process (ms) | {med(joblib_ms):.2f} | {p90(joblib_ms):.2f} |"
    )
    print(f"| POST /models (load, ms) | {med(load_ms):.2f} | {p90(load_ms):.2f} |")
    print(
        f"| first invoke in the other worker, lazy load (ms; {len(cold_ms)} of {n}) "
        f"| {med(cold_ms):.2f} | {p90(cold_ms):.2f} |"
    )
    print(
        f"| warm invoke, one at a time (ms) | {med(warm_ms):.2f} | {p90(warm_ms):.2f} |"
    )
    for label, run in runs.items():
        rate = run["requests"] / (run["duration_us"] / 1e6)
        print(
            f"random invocations over {label}, concurrency 4, {args.seconds} s: "
            f"{rate:.0f} req/s, p50 {run['p50'] / 1e3:.2f} ms, p90 "
            f"{run['p90'] / 1e3:.2f} ms, p99 {run['p99'] / 1e3:.2f} ms, max "
            f"{run['max'] / 1e3:.1f} ms, {run['errors']} errors"
        )
    print("memory, PSS of serve's tree (MB):")
    for label, mb in memory.items():
        print(f"  {label}: {mb:.1f}")
    second = memory[f"round 2: {n} loaded"] - memory["round 1: all unloaded"]
    print(
        f"  per model in round 2 (a copy in each worker): {second / n * 1024:.0f} kB; "
        f"artifact {med(sizes) / 1024:.1f} kB"
    )
    print("per-invocation freshness check (us):")
    for name, us in checks.items():
        print(f"  {name}: {us:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
