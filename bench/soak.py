"""The soak benchmark: the real ``docker/serve`` kept at saturation for a long time with a
mix of valid and invalid invocations, watching for leaks, errors and slow health checks.

    .venv/bin/python bench/soak.py                     # 10 minutes (the target)
    .venv/bin/python bench/soak.py --duration 120      # a shorter soak

``wrk`` (pinned to CPU 0, the server to CPU 1, when there are two) keeps more
connections open than there are workers, sending valid CSV, JSON and NPY batches of 1 to
100 records in turn (``bench/soak.lua``): every answer must be 200. Beside it a client
thread sends a seeded mix of invalid bodies (wrong width, a word, broken JSON, an
unsupported Content-Type, random bytes, a cut NPY header): every answer must be a 4xx.
Another thread opens a new connection for ``GET /ping`` every 100 ms, as SageMaker's
health check does, and times it. Every ``--sample`` seconds each gunicorn worker's RSS,
PSS and private memory (``/proc/<pid>/smaps_rollup``) is recorded; "flat" means the
least-squares slope of private memory over the second half of the run is under
0.1 MB/min. Run by hand, not in the test suite; it stops by itself and stops its server
by PID.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import joblib  # noqa: E402
import numpy as np  # noqa: E402

from bench.run import Server, process_tree, tree_cpu_seconds  # noqa: E402

SEED = 11
LUA = Path(__file__).resolve().parent / "soak.lua"
FLAT_MB_PER_MIN = 0.1


def valid_bodies(rng: random.Random, X: np.ndarray) -> list[tuple[str, bytes]]:
    """(Content-Type, body) pairs that must all answer 200."""
    mix: list[tuple[str, bytes]] = []
    for records in (1, 1, 1, 10, 100):
        rows = X[rng.sample(range(len(X)), records)]
        csv = "".join(",".join(map(repr, r)) + "\n" for r in rows.tolist())
        mix.append(("text/csv", csv.encode()))
        mix.append(
            ("application/json", json.dumps({"instances": rows.tolist()}).encode())
        )
    buffer = io.BytesIO()
    np.save(buffer, X[:20])
    mix.append(("application/x-npy", buffer.getvalue()))
    return mix


def invalid_bodies(rng: random.Random) -> list[tuple[str, bytes]]:
    """(Content-Type, body) pairs that must all answer a 4xx."""
    return [
        ("text/csv", b"1,2,3\n"),
        ("text/csv", b"5.1,3.5,x,0.2\n"),
        ("application/json", b'{"instances": [[5.1, 3.5'),
        ("image/png", b"5.1,3.5,1.4,0.2\n"),
        ("text/csv; charset=latin-1", bytes(rng.randrange(256) for _ in range(300))),
        ("application/x-npy", b"\x93NUMPY\x01\x00"),
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB per minute."""
    if len(samples) < 2:
        return 0.0
    ts = [t for t, _ in samples]
    ys = [y for _, y in samples]
    t_mean, y_mean = statistics.fmean(ts), statistics.fmean(ys)
    den = sum((t - t_mean) ** 2 for t in ts) or 1.0
    num = sum((t - t_mean) * (y - y_mean) for t, y in zip(ts, ys, strict=True))
    return 60 * num / den


def worker_memory(root: int) -> dict[int, dict[str, float]]:
    """pid -> RSS, PSS and private MB of each gunicorn worker (a child of the master)."""
    out = {}
    for pid in process_tree(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            parent = Path(f"/proc/{int(stat[1])}/cmdline").read_bytes()
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        if b"gunicorn" not in cmdline or b"gunicorn" not in parent:
            continue
        fields = {}
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0]) / 1024
        out[pid] = {
            "rss": fields.get("Rss", 0),
            "pss": fields.get("Pss", 0),
            "private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        }
    return out


class Soak:
    """One soak: wrk's valid traffic, a thread of invalid requests, a /ping thread and
    memory samples, for ``seconds``."""

    def __init__(self, server: Server, work: Path, seconds: float) -> None:
        self.server = server
        self.work = work
        self.seconds = seconds
        self.running = True
        self.lock = threading.Lock()
        self.invalid = 0
        self.invalid_errors: list[str] = []
        self.ping_ms: list[float] = []
        self.ping_errors = 0

    def invalid_client(self, mix: list[tuple[str, bytes]]) -> None:
        rng = random.Random(SEED)
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        while self.running:
            content_type, body = rng.choice(mix)
            try:
                conn.request(
                    "POST", "/invocations", body, {"Content-Type": content_type}
                )
                response = conn.getresponse()
                response.read()
                status: Any = response.status
                if response.will_close:
                    conn.close()
            except OSError as exc:
                status = f"{type(exc).__name__}: {exc}"
                conn.close()
            with self.lock:
                self.invalid += 1
                if not (isinstance(status, int) and 400 <= status < 500):
                    self.invalid_errors.append(f"{content_type}: {status}")
        conn.close()

    def pinger(self) -> None:
        while self.running:
            started = time.perf_counter()
            try:
                status = self.server.request("GET", "/ping")[0]
            except OSError:
                status = 0
            elapsed = (time.perf_counter() - started) * 1e3
            with self.lock:
                if status == 200:
                    self.ping_ms.append(elapsed)
                else:
                    self.ping_errors += 1
            time.sleep(0.1)

    def wrk_command(self, manifest: Path, connections: int, cpus: str | None) -> list:
        cmd = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{round(self.seconds)}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA),
            f"http://127.0.0.1:{self.server.port}/",
        ]
        return ["taskset", "-c", cpus, *cmd] if cpus else cmd

    def run(
        self,
        valid: list[tuple[str, bytes]],
        invalid: list[tuple[str, bytes]],
        connections: int,
        wrk_cpus: str | None,
        sample_every: float,
    ) -> dict[str, Any]:
        manifest = self.work / "bodies.tsv"
        lines = []
        for number, (content_type, body) in enumerate(valid):
            path = self.work / f"body{number}"
            path.write_bytes(body)
            lines.append(f"{content_type}\t{path}")
        manifest.write_text("\n".join(lines) + "\n")
        root = self.server.proc.pid
        threads = [
            threading.Thread(target=self.invalid_client, args=(invalid,)),
            threading.Thread(target=self.pinger),
        ]
        started = time.monotonic()
        cpu_before = tree_cpu_seconds(root)
        load = subprocess.Popen(
            self.wrk_command(manifest, connections, wrk_cpus),
            env={**os.environ, "SOAK_BODIES": str(manifest)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for thread in threads:
            thread.start()
        memory: list[tuple[float, dict[int, dict[str, float]]]] = []
        try:
            while load.poll() is None:
                memory.append((time.monotonic() - started, worker_memory(root)))
                try:
                    load.wait(sample_every)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if load.poll() is None:
                load.kill()
            self.running = False
            for thread in threads:
                thread.join()
        wall = time.monotonic() - started
        memory.append((wall, worker_memory(root)))
        cpu = tree_cpu_seconds(root) - cpu_before
        output = load.stdout.read()
        figures = [json.loads(x[5:]) for x in output.splitlines() if x[:5] == "SOAK "]
        if not figures:
            raise RuntimeError(f"wrk gave no figures:\n{output}")
        return {"wall": wall, "cpu": cpu, "memory": memory, "wrk": figures[0]}


def summarize(
    soak: Soak, result: dict[str, Any], restarts: int, args: argparse.Namespace
) -> tuple[str, bool]:
    wall, figures = result["wall"], result["wrk"]
    valid_errors = sum(
        figures[k] for k in ("connect", "read", "write", "status", "timeout")
    )
    pings = soak.ping_ms or [float("nan")]
    lines = [
        f"soak: {wall:.0f} s, {args.workers} workers, wrk with {args.connections} "
        f"connections, seed {SEED}",
        f"valid (wrk): {figures['requests']} requests "
        f"({figures['requests'] / wall:.0f}/s), {valid_errors} errors; latency p50 "
        f"{figures['p50'] / 1e3:.1f} ms, p99 {figures['p99'] / 1e3:.1f} ms, "
        f"max {figures['max'] / 1e3:.0f} ms",
        f"invalid (one thread): {soak.invalid} requests, "
        f"{len(soak.invalid_errors)} not a 4xx",
        f"server CPU: {result['cpu'] / wall:.2f} cores busy on average",
        f"workers restarted: {restarts}",
        f"/ping (new connection every 100 ms): {len(soak.ping_ms)} checks, "
        f"{soak.ping_errors} failed; p50 {percentile(pings, 50):.1f} ms, "
        f"p99 {percentile(pings, 99):.1f} ms, max {max(pings):.1f} ms",
        "worker memory (MB): first sample -> last (slope over the second half)",
    ]
    samples = result["memory"]
    pids = sorted(set().union(*(m.keys() for _, m in samples)))
    flat = True
    for pid in pids:
        series = [(t, m[pid]) for t, m in samples if pid in m]
        half = [(t, v) for t, v in series if t >= wall / 2]
        cells = []
        for key in ("rss", "pss", "private"):
            slope = slope_mb_per_min([(t, v[key]) for t, v in half])
            cells.append(
                f"{key} {series[0][1][key]:.1f} -> {series[-1][1][key]:.1f} "
                f"({slope:+.3f}/min)"
            )
            if key == "private" and abs(slope) > FLAT_MB_PER_MIN:
                flat = False
        lines.append(f"  worker {pid}: " + ", ".join(cells))
    for sample in soak.invalid_errors[:10]:
        lines.append(f"  invalid request answered: {sample}")
    ok = (
        flat
        and valid_errors == 0
        and not soak.invalid_errors
        and soak.ping_errors == 0
        and restarts == 0
    )
    lines.append(f"verdict: {'pass' if ok else 'FAIL'} (memory flat: {flat})")
    return "\n".join(lines), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds (600)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8, help="wrk's (8)")
    parser.add_argument("--sample", type=float, default=10, help="memory every N s")
    parser.add_argument("--markdown", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    work = Path(tempfile.mkdtemp(prefix="smserve-soak-"))
    model_path = work / "iris.joblib"
    joblib.dump(DecisionTreeClassifier(random_state=0).fit(X, y), model_path)
    two_cpus = (os.cpu_count() or 1) >= 2
    server = Server(
        model_path, work, workers=args.workers, cpus="1" if two_cpus else None
    )
    rng = random.Random(SEED)
    try:
        server.start(b"5.1,3.5,1.4,0.2\n")
        soak = Soak(server, work, args.duration)
        result = soak.run(
            valid_bodies(rng, X),
            invalid_bodies(rng),
            args.connections,
            "0" if two_cpus else None,
            args.sample,
        )
        log = (work / "serve.log").read_text(errors="replace")
        restarts = log.count("Booting worker") - args.workers
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    text, ok = summarize(soak, result, restarts, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
