"""The serving benchmark: the real ``docker/serve`` (nginx + gunicorn) on loopback under
``wrk``, against the in-process floor, with figures printed as a table.

    .venv/bin/python bench/run.py            # the full run (a few minutes)
    .venv/bin/python bench/run.py --quick    # a smoke run (well under a minute)

The server is pinned to one core and wrk to another (``taskset``) when the machine has two
or more. The target metric is the server's CPU per request: utime + stime of every process
in serve's tree (bash, nginx, gunicorn master and workers) before and after each wrk run,
divided by the requests wrk completed. It is read from each process's CPU-time clock
(``clock_gettime`` on the clock id the kernel derives from the PID, ``CPUCLOCK_SCHED``: the
scheduler's runtime in nanoseconds, all threads), not from ``/proc/<pid>/stat``'s 10 ms
ticks; ``/proc/<pid>/schedstat`` would do too, but reads 0 where the kernel keeps no
schedstats (this machine). Ticks remain the fallback, and the run says which it used. It is stable on a noisy shared machine, where
latency is not. The floor is the fastest in-process parse + predict + render of the same
body (median CPU time of repeated calls, BLAS/OpenMP capped to one thread as in a worker).
Run by hand; not part of the test suite.

A run says when it cannot be trusted: any response that is not 2xx (wrk's script counts
them) or any socket error marks it FAILED and the exit status is 1; the server gets a clean
environment (none of the caller's ``SMSERVE_*``, ``SAGEMAKER_*``, ``MODEL_SERVER_*`` or
``DATABASE_URL``), and every request sends an ``Accept`` equal to its ``Content-Type``, the
format the floor renders.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")

import django  # noqa: E402
import joblib  # noqa: E402
import numpy as np  # noqa: E402

from tests.support import free_port  # noqa: E402

SERVE = ROOT / "docker" / "serve"
LUA = Path(__file__).resolve().parent / "post.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CONTENT_TYPES = {"csv": "text/csv", "json": "application/json"}


# --- models and bodies --------------------------------------------------------------------
def make_models() -> dict[str, tuple[Any, np.ndarray]]:
    """name -> (fitted model, a pool of input rows to build bodies from)."""
    from sklearn.datasets import load_iris, make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    iris = DecisionTreeClassifier(random_state=0).fit(X, y)
    Xr, yr = make_classification(n_samples=20000, n_features=20, random_state=0)
    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(Xr, yr)
    return {"iris": (iris, X), "forest": (forest, Xr)}


def make_body(pool: np.ndarray, records: int, fmt: str) -> bytes:
    rows = pool[np.arange(records) % len(pool)]
    if fmt == "csv":
        return "".join(",".join(map(repr, r)) + "\n" for r in rows.tolist()).encode()
    import orjson

    return orjson.dumps(rows.tolist())


# --- the floor: in-process, no HTTP -------------------------------------------------------
def cpu_median(fn, budget: float, min_reps: int = 5) -> float:
    """Median CPU seconds of ``fn()`` over repetitions filling about ``budget`` seconds."""
    samples = []
    end = time.perf_counter() + budget
    while len(samples) < min_reps or time.perf_counter() < end:
        start = time.process_time()
        fn()
        samples.append(time.process_time() - start)
        if len(samples) > 5000:
            break
    return statistics.median(samples)


def floor_ms(model: Any, body: bytes, fmt: str, budget: float) -> dict[str, float]:
    """Fastest parse + predict + render of ``body``, each part's median CPU time, in ms."""
    import orjson
    import pandas
    import sklearn
    import sklearn.tree

    from modelapp.parsers import CSVParser, JSONParser
    from modelapp.renderers import CSVRenderer, JSONRenderer

    if fmt == "csv":
        parsers = {
            "smserve": lambda: CSVParser().parse_bytes(body, {}).values,
            "pandas": lambda: pandas.read_csv(
                io.BytesIO(body), header=None, engine="c"
            ).to_numpy(np.float64),
        }
        renderers = {"smserve": CSVRenderer().render_predictions}
    else:
        parsers = {
            "smserve": lambda: JSONParser().parse_bytes(body, {}).values,
            "orjson+numpy": lambda: np.asarray(orjson.loads(body), dtype=np.float64),
        }
        renderers = {
            "smserve": JSONRenderer().render_predictions,
            "orjson": lambda p: orjson.dumps(
                {"predictions": p}, option=orjson.OPT_SERIALIZE_NUMPY
            ),
        }
    parse = {name: cpu_median(fn, budget) for name, fn in parsers.items()}
    matrix = parsers["smserve"]()
    # The fastest predict: as is, or without scikit-learn's own NaN scan (the server
    # checks the batch itself and skips it).
    predict = cpu_median(lambda: model.predict(matrix), budget)
    with sklearn.config_context(assume_finite=True):
        predict = min(predict, cpu_median(lambda: model.predict(matrix), budget))
    if isinstance(model, sklearn.tree.BaseDecisionTree):
        # A single tree: no validation at all (its documented check_input switch), as
        # the server calls it.
        predict = min(
            predict,
            cpu_median(
                lambda: model.predict(
                    np.ascontiguousarray(matrix, dtype=np.float32), check_input=False
                ),
                budget,
            ),
        )
    # The compiled engine's floor (modelapp/compiled.py), as a worker runs it.
    from modelapp.predictors import compiled as compiled_engine

    compiled, _ = compiled_engine.compile_model(
        model, None, matrix.shape[1], ("predict",), False, fallback=None
    )
    predict_onnx = (
        cpu_median(lambda: compiled["predict"](matrix), budget)
        if "predict" in compiled
        else float("nan")
    )
    predictions = model.predict(matrix)
    render = {
        name: cpu_median(lambda fn=fn: fn(predictions), budget)
        for name, fn in renderers.items()
    }
    return {
        "parse": min(parse.values()) * 1e3,
        "parse_smserve": parse["smserve"] * 1e3,
        "predict": predict * 1e3,
        "render": min(render.values()) * 1e3,
        "total": (min(parse.values()) + predict + min(render.values())) * 1e3,
        "predict_onnx": predict_onnx * 1e3,
        "total_onnx": (min(parse.values()) + predict_onnx + min(render.values())) * 1e3,
    }


def pinned_floor(
    model: Any, body: bytes, fmt: str, budget: float, cpus: str | None
) -> dict[str, float]:
    """``floor_ms`` on ``cpus`` with BLAS/OpenMP capped to one thread, as in a worker."""
    from threadpoolctl import threadpool_limits

    affinity = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        with threadpool_limits(1):
            return floor_ms(model, body, fmt, budget)
    finally:
        os.sched_setaffinity(0, affinity)


def parse_bench(budget: float) -> list[dict[str, Any]]:
    """Our CSV parser against pandas.read_csv (C engine) on small and 6 MB bodies."""
    import pandas

    from modelapp.parsers import CSVParser

    rng = np.random.default_rng(0)
    rows = []
    for records, features in ((1, 4), (10, 20), (1000, 20), (15000, 20)):
        body = make_body(rng.standard_normal((records, features)), records, "csv")
        ours = cpu_median(lambda b=body: CSVParser().parse_bytes(b, {}), budget)
        theirs = cpu_median(
            lambda b=body: pandas.read_csv(
                io.BytesIO(b), header=None, engine="c"
            ).to_numpy(np.float64),
            budget,
        )
        rows.append(
            {
                "records": records,
                "features": features,
                "MB": len(body) / 1e6,
                "smserve_us": ours * 1e6,
                "pandas_us": theirs * 1e6,
                "speedup": theirs / ours,
            }
        )
    return rows


# --- the server's process tree ------------------------------------------------------------
def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


CPUCLOCK_SCHED = 2  # the kernel's process CPU-time clock for a PID: ((~pid) << 3) | 2


def process_cpu_seconds(pid: int) -> tuple[float, str]:
    """CPU time of one process (all its threads, live and exited), and the clock read:
    the scheduler's nanosecond runtime where the kernel lets us read another process's
    CPU clock, else utime + stime in clock ticks."""
    try:
        return time.clock_gettime((~pid << 3) | CPUCLOCK_SCHED), "ns"
    except OSError:
        pass
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, "ticks"


CPU_CLOCKS: set[str] = set()


def tree_cpu_seconds(root: int) -> float:
    """CPU time of every live process in the tree (children that exited are counted in
    their parent's cutime, which is not added: workers live through a run)."""
    total = 0.0
    for pid in process_tree(root):
        try:
            seconds, clock = process_cpu_seconds(pid)
        except OSError:
            continue  # gone meanwhile
        total += seconds
        CPU_CLOCKS.add(clock)
    return total


def tree_memory_mb(root: int) -> dict[str, float]:
    """RSS and PSS of the tree; ``private``: the largest Private_* of one process (a
    worker's own memory, which a copied model would show up in)."""
    rss = pss = private = 0
    for pid in process_tree(root):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        mine = 0
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
            elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                mine += int(line.split()[1])
        private = max(private, mine)
    return {"rss": rss / 1024, "pss": pss / 1024, "private": private / 1024}


def model_memory_mb(path: Path) -> float:
    """RSS growth of a fresh interpreter loading the model (scikit-learn already
    imported): what each worker would hold if the model were copied."""
    probe = (
        "import joblib, sklearn.ensemble; "
        "f = lambda: int(open('/proc/self/statm').read().split()[1]); "
        f"a = f(); m = joblib.load({str(path)!r}); print((f() - a) * {PAGE})"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return int(out.stdout) / 2**20


@dataclass
class Server:
    """``docker/serve`` for one model, pinned to ``cpus``; stopped by PID."""

    model_path: Path
    work: Path
    workers: int = 2
    cpus: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    cold_start: float = 0.0
    cold_start_invoke: float = 0.0

    def start(self, probe: bytes) -> Server:
        base = self.work / "ml"
        (base / "model").mkdir(parents=True, exist_ok=True)
        target = base / "model" / "model.joblib"
        if not target.exists():
            target.symlink_to(self.model_path)
        self.port = free_port()
        env = {
            **clean_environment(),
            "SAGEMAKER_BASE_DIR": str(base),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SMSERVE_BIND_HOST": "127.0.0.1",
            "SMSERVE_STATE_DIR": str(self.work / "state"),
            "SMSERVE_PYTHON": sys.executable,
            "MODEL_SERVER_WORKERS": str(self.workers),
            "TMPDIR": str(self.work),
            **self.env,
        }
        cmd = [str(SERVE)]
        if self.cpus:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        log = (self.work / "serve.log").open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = started + 60
        while True:
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(
                    f"serve did not start:\n{(self.work / 'serve.log').read_text()}"
                )
            try:
                if self.request("GET", "/ping")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        self.cold_start = time.perf_counter() - started
        while (answer := self.request("POST", "/invocations", probe))[0] != 200:
            if time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(f"/invocations never answered 200: {answer}")
            time.sleep(0.01)
        self.cold_start_invoke = time.perf_counter() - started
        # Every worker has answered once (and the stats thread's first write is done).
        for _ in range(4 * self.workers):
            self.request("POST", "/invocations", probe)
        time.sleep(0.5)
        return self

    def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": "text/csv"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(35)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def worker_threads(self) -> list[int]:
        """Thread count of each gunicorn worker (BLAS pools would show up here)."""
        tree = process_tree(self.proc.pid)
        counts = []
        for pid in tree:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"gunicorn" in cmdline:
                counts.append(len(os.listdir(f"/proc/{pid}/task")))
        return sorted(counts)


# The caller's settings that would change what the benchmark measures (a log level that
# drops the invocation line, a default Accept the floor does not render, another database
# or worker count): the server never inherits them.
SCRUBBED_PREFIXES = ("SMSERVE_", "SAGEMAKER_", "MODEL_SERVER_")
SCRUBBED = {"DATABASE_URL", "DJANGO_SECRET_KEY", "SECRET_KEY"}


def clean_environment() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SCRUBBED_PREFIXES) and k not in SCRUBBED
    }


FAILURES: list[str] = []


def check_run(what: str, result: dict[str, Any]) -> None:
    """Record a run that had any non-2xx response or socket error: the whole benchmark
    is then reported FAILED (its figures would count fast errors as cheap requests)."""
    bad = {k: result[k] for k in ("non2xx", "connect", "read", "write", "timeout")}
    if any(bad.values()):
        FAILURES.append(f"{what}: {bad}")
        print(f"   FAILED {what}: {bad}", flush=True)


def wrk(
    port: int,
    path: str,
    body_file: Path | None,
    content_type: str,
    connections: int,
    seconds: float,
    cpus: str | None,
) -> dict[str, Any]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}{path}",
    ]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    env = {
        **clean_environment(),
        "BENCH_BODY": str(body_file or ""),
        "BENCH_CT": content_type,
        "BENCH_ACCEPT": content_type,
    }
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds + 60
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"wrk gave no figures: {out.stdout}\n{out.stderr}")


def measured_run(
    server: Server, body_file: Path, fmt: str, connections: int, seconds: float, cpus
) -> dict[str, Any]:
    before = tree_cpu_seconds(server.proc.pid)
    result = wrk(
        server.port,
        "/invocations",
        body_file,
        CONTENT_TYPES[fmt],
        connections,
        seconds,
        cpus,
    )
    after = tree_cpu_seconds(server.proc.pid)
    result["cpu_ms"] = (after - before) * 1e3 / max(1, result["requests"])
    result["errors"] = sum(
        result[k] for k in ("non2xx", "connect", "read", "write", "timeout")
    )
    check_run(f"/invocations {body_file.name} c={connections}", result)
    return result


def served_by(server: Server, records: int) -> str:
    """Which engine answered ``predict`` for a batch of ``records``, from the server's
    start-up log line (``compiled.EngineReport.log``)."""
    log = (server.work / "serve.log").read_text(errors="replace")
    found = re.search(
        r"Engines for .*?: predict by ([\w-]+)(?:.*?batches over (\w+) records to "
        r"scikit-learn)?",
        log,
    )
    if found is None:
        return "?"
    engine, limit = found.group(1), found.group(2)
    if engine != "onnxruntime" or limit in (None, "no") or records <= int(limit):
        return engine
    return f"scikit-learn (over {limit})"


# --- the run --------------------------------------------------------------------------------
def fmt_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (<1 min)")
    parser.add_argument(
        "--seconds", type=float, help="per wrk run (default 3; quick 1)"
    )
    parser.add_argument("--models", default="iris,forest")
    parser.add_argument("--records", help="comma list (default 1,100,1000,10000)")
    parser.add_argument("--formats", default="csv,json")
    parser.add_argument("--concurrency", help="comma list (default 1,4,16)")
    parser.add_argument("--no-memory", action="store_true", help="skip 1/2/4 workers")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the server (its environment is otherwise clean), e.g. "
        "SMSERVE_COMPILED_ENGINE=off; repeatable",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work dir (models, bodies, serve logs); removed otherwise",
    )
    args = parser.parse_args()

    quick = args.quick
    seconds = args.seconds or (1.0 if quick else 3.0)
    budget = 0.05 if quick else 0.3
    records_list = [
        int(r)
        for r in (args.records or ("1,1000" if quick else "1,100,1000,10000")).split(
            ","
        )
    ]
    conc_list = [
        int(c) for c in (args.concurrency or ("4" if quick else "1,4,16")).split(",")
    ]
    formats = args.formats.split(",") if not quick else ["csv"]
    model_names = args.models.split(",")
    ncpu = len(os.sched_getaffinity(0))
    server_cpus, client_cpus = ("1", "0") if ncpu >= 2 else (None, None)

    django.setup()
    from threadpoolctl import threadpool_limits

    out: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        out.append(text)

    emit(
        f"machine: {platform.node()} {platform.machine()} {ncpu} cpus "
        f"({_cpu_model()}), python {platform.python_version()}, "
        f"{_versions()}; server on cpu {server_cpus}, wrk on cpu {client_cpus}; "
        f"{seconds:g} s per wrk run"
    )
    models = make_models()
    work = Path(tempfile.mkdtemp(prefix="smserve-bench-"))
    if args.keep:
        print(f"work dir (kept): {work}", file=sys.stderr)
    else:
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    paths = {}
    for name, (model, _) in models.items():
        paths[name] = work / f"{name}.joblib"
        joblib.dump(model, paths[name])

    # Parsing on its own.
    emit("\n## CSV parse: smserve vs pandas.read_csv (C engine), median CPU")
    affinity = os.sched_getaffinity(0)
    if server_cpus:
        os.sched_setaffinity(0, {int(server_cpus)})
    with threadpool_limits(1):
        prow = parse_bench(budget)
    os.sched_setaffinity(0, affinity)
    emit(
        fmt_table(
            ["records", "features", "MB", "smserve µs", "pandas µs", "pandas/smserve"],
            [list(r.values()) for r in prow],
        )
    )

    rows = []
    summary: dict[str, Any] = {}
    for name in model_names:
        model, pool = models[name]
        bodies = {}
        for fmt in formats:
            for records in records_list:
                body_file = work / f"{name}-{records}.{fmt}"
                body_file.write_bytes(make_body(pool, records, fmt))
                bodies[fmt, records] = body_file
        server = Server(
            paths[name],
            work / f"serve-{name}",
            cpus=server_cpus,
            env=dict(item.split("=", 1) for item in args.server_env),
        )
        server.start(make_body(pool, 1, "csv"))
        summary[f"{name} cold start s"] = server.cold_start
        summary[f"{name} worker threads"] = server.worker_threads()
        try:
            for (fmt, records), body_file in bodies.items():
                # The floor on the server's core (idle meanwhile), right before the runs
                # it is compared with: a shared machine's speed drifts over minutes.
                floor = pinned_floor(
                    model, body_file.read_bytes(), fmt, budget, server_cpus
                )
                for conc in conc_list:
                    r = measured_run(server, body_file, fmt, conc, seconds, client_cpus)
                    rps = r["requests"] / (r["duration_us"] / 1e6)
                    rows.append(
                        [
                            name,
                            fmt,
                            records,
                            conc,
                            rps,
                            rps * records,
                            r["p50"] / 1e3,
                            r["p90"] / 1e3,
                            r["p99"] / 1e3,
                            r["errors"],
                            r["cpu_ms"],
                            floor["total"],
                            r["cpu_ms"] / floor["total"],
                            r["cpu_ms"] - floor["total"],
                            r["p50"] / 1e3 / floor["total"],
                            floor["parse"],
                            floor["parse_smserve"],
                            floor["total_onnx"],
                            r["cpu_ms"] / floor["total_onnx"],
                            served_by(server, records),
                        ]
                    )
                    print("  ", rows[-1][:4], f"cpu {r['cpu_ms']:.3f} ms", flush=True)
            if name == "forest":
                # /ping while /invocations is saturated.
                key = ("csv", max(records_list))
                before = time.perf_counter()
                loader = subprocess.Popen(
                    [
                        *(["taskset", "-c", client_cpus] if client_cpus else []),
                        "wrk",
                        "-t1",
                        "-c16",
                        f"-d{max(1, round(seconds)) + 1}s",
                        "--timeout",
                        "30s",
                        "-s",
                        str(LUA),
                        f"http://127.0.0.1:{server.port}/invocations",
                    ],
                    env={
                        **clean_environment(),
                        "BENCH_BODY": str(bodies[key]),
                        "BENCH_CT": "text/csv",
                        "BENCH_ACCEPT": "text/csv",
                    },
                    stdout=subprocess.PIPE,
                    text=True,
                )
                time.sleep(0.5)
                ping = wrk(server.port, "/ping", None, "", 1, seconds, client_cpus)
                check_run("/ping under load", ping)
                loaded, _ = loader.communicate(timeout=seconds + 60)
                for line in loaded.splitlines():
                    if line.startswith("BENCH "):
                        check_run(
                            "/invocations load beside /ping", json.loads(line[6:])
                        )
                summary["ping p99 ms under load"] = ping["p99"] / 1e3
                summary["ping max ms under load"] = ping["max"] / 1e3
                summary["ping errors under load"] = (
                    ping["non2xx"] + ping["timeout"] + ping["read"] + ping["connect"]
                )
                del before
        finally:
            server.stop()

    emit("\n## /invocations (server CPU per request over the whole serve process tree)")
    emit(
        fmt_table(
            [
                "model",
                "fmt",
                "records",
                "conc",
                "req/s",
                "records/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "errors",
                "CPU ms/req",
                "floor ms",
                "CPU/floor",
                "overhead ms",
                "p50/floor",
                "floor parse ms",
                "our parse ms",
                "ONNX floor ms",
                "CPU/ONNX floor",
                "predict by",
            ],
            rows,
        )
    )
    # Medians over concurrency: the figure the targets are judged on.
    emit("\n## Server CPU per request, median over concurrency")
    med = {}
    for row in rows:
        med.setdefault(tuple(row[:3]), []).append(row)
    emit(
        fmt_table(
            [
                "model",
                "fmt",
                "records",
                "CPU ms/req",
                "floor ms",
                "CPU/floor",
                "overhead ms",
                "ONNX floor ms",
                "CPU/ONNX floor",
            ],
            [
                [
                    *key,
                    statistics.median(r[10] for r in group),
                    group[0][11],
                    statistics.median(r[12] for r in group),
                    statistics.median(r[13] for r in group),
                    group[0][17],
                    statistics.median(r[18] for r in group),
                ]
                for key, group in med.items()
            ],
        )
    )

    if not args.no_memory and "forest" in model_names:
        emit("\n## Memory and cold start with the RandomForest (whole process tree)")
        model_mb = paths["forest"].stat().st_size / 2**20
        mem_rows = []
        for workers in (1, 2, 4):
            server = Server(
                paths["forest"],
                work / f"mem-{workers}",
                workers=workers,
                cpus=server_cpus,
            )
            server.start(make_body(models["forest"][1], 1, "csv"))
            try:
                idle = tree_memory_mb(server.proc.pid)
                check_run(
                    f"memory load, {workers} workers",
                    wrk(
                        server.port,
                        "/invocations",
                        bodies.get(("csv", 1000), bodies[next(iter(bodies))]),
                        "text/csv",
                        workers,
                        1,
                        client_cpus,
                    ),
                )
                mem = tree_memory_mb(server.proc.pid)
                mem_rows.append(
                    [
                        workers,
                        idle["pss"],
                        idle["private"],
                        mem["rss"],
                        mem["pss"],
                        mem["private"],
                        server.cold_start,
                        server.cold_start_invoke,
                    ]
                )
            finally:
                server.stop()
        emit(
            f"model.joblib: {model_mb:.1f} MB on disk, "
            f"{model_memory_mb(paths['forest']):.1f} MB in memory once loaded"
        )
        emit(
            fmt_table(
                [
                    "workers",
                    "PSS MB after start",
                    "max worker private MB after start",
                    "RSS MB after 1 s of 1000-record load",
                    "PSS MB after load",
                    "max worker private MB after load",
                    "cold start s (/ping)",
                    "first /invocations s",
                ],
                mem_rows,
            )
        )
        for a, b in zip(mem_rows, mem_rows[1:], strict=False):
            emit(
                f"PSS per extra worker {a[0]}->{b[0]}: after start "
                f"{(b[1] - a[1]) / (b[0] - a[0]):.1f} MB, after load "
                f"{(b[4] - a[4]) / (b[0] - a[0]):.1f} MB"
            )

    # Start-up pieces: prepare_serve (deploy checks + migrate + nginx.conf) on a fresh
    # state dir and again on a migrated one; the thread pools a worker gets.
    for label in ("prepare_serve, fresh database s", "prepare_serve, migrated s"):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "manage.py", "prepare_serve", str(work / "prep")],
            cwd=ROOT,
            env={**clean_environment(), "SMSERVE_STATE_DIR": str(work / "prep-state")},
            check=True,
            capture_output=True,
        )
        summary[label] = time.perf_counter() - started
    probe = (
        "exec(open('docker/gunicorn.conf.py').read()); import sklearn.ensemble; "
        "from threadpoolctl import threadpool_info; "
        "print(sorted({(i['internal_api'], i['num_threads']) for i in threadpool_info()}))"
    )
    pools = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**clean_environment(), "MODEL_SERVER_WORKERS": "2"},
        capture_output=True,
        text=True,
    )
    summary["worker thread pools, 2 workers (api, threads)"] = pools.stdout.strip()

    summary["StatsCollector.count µs per call (in memory)"] = stats_record_us(budget)
    summary["server CPU clock"] = (
        "scheduler ns (clock_gettime, CPUCLOCK_SCHED)"
        if CPU_CLOCKS == {"ns"}
        else f"clock ticks of 1/{CLK_TCK} s (for some processes)"
    )

    emit("\n## Other figures")
    for key, value in summary.items():
        emit(f"- {key}: {value if not isinstance(value, float) else round(value, 3)}")
    if FAILURES:
        emit("\n## FAILED: these runs had non-2xx responses or socket errors")
        emit("The figures above count them as requests; do not use this run.")
        for failure in FAILURES:
            emit(f"- {failure}")
    if args.markdown:
        args.markdown.write_text("\n".join(out) + "\n")
    return 1 if FAILURES else 0


def stats_record_us(budget: float) -> float:
    """What counting one invocation costs a worker (moved here from the test suite,
    where a µs bound failed on a loaded machine)."""
    from modelapp.stats import StatsCollector

    collector = StatsCollector()
    calls = 2000

    def batch() -> None:
        for i in range(calls):
            collector.count("a" * 64, 200, 10, 1.5, 1000, 200, now=1_800_000_000 + i)

    return cpu_median(batch, budget) * 1e6 / calls


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _versions() -> str:
    import gunicorn
    import orjson
    import pandas
    import rest_framework
    import sklearn

    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return (
        f"Django {django.__version__}, DRF {rest_framework.VERSION}, gunicorn "
        f"{gunicorn.__version__}, numpy {np.__version__}, pandas {pandas.__version__}, "
        f"orjson {orjson.__version__}, scikit-learn {sklearn.__version__}, "
        f"{nginx.strip().split(': ')[-1]}, wrk {wrk_v.split()[1] if wrk_v else '?'}"
    )


if __name__ == "__main__":
    sys.exit(main())
