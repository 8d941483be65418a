"""The Prometheus metrics' cost in one run: for each model, two ``docker/serve`` side by
side (metrics off, and on with ``SMSERVE_METRICS_PORT``), pinned to the same core, driven
in turn by ``wrk`` (``bench/run.py``'s ``Server`` and ``measured_run``) in an ABBA order,
so that a shared machine's drift falls on both alike. Prints the server's CPU per request
of each, their ratio per pair and the median ratio.

    .venv/bin/python bench/metrics_ab.py [--pairs 4] [--seconds 3] [--connections 1]

Add ``bench/metrics_cost.py``'s in-process figure for what the metrics add alone. Run by
hand; not part of the test suite.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import joblib  # noqa: E402
import run as bench  # noqa: E402

from tests.support import free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="iris,forest")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=1)
    args = parser.parse_args()
    ncpu = len(os.sched_getaffinity(0))
    server_cpus, client_cpus = ("1", "0") if ncpu >= 2 else (None, None)
    work = Path(tempfile.mkdtemp(prefix="smserve-metrics-ab-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    models = bench.make_models()
    print(
        f"1 record CSV, {args.connections} connection(s), {args.seconds:g} s per run, "
        f"{args.pairs} ABBA pairs; server on cpu {server_cpus}, wrk on {client_cpus}"
    )
    print(
        "| model | off CPU ms/req | on CPU ms/req | on/off per pair | median on/off |"
    )
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        model, pool = models[name]
        path = work / f"{name}.joblib"
        joblib.dump(model, path)
        body = work / f"{name}.csv"
        body.write_bytes(bench.make_body(pool, 1, "csv"))
        probe = body.read_bytes()
        metrics_env = {
            "SMSERVE_METRICS_PORT": str(free_port()),
            "SMSERVE_METRICS_HOST": "127.0.0.1",
        }
        servers = {
            "off": bench.Server(path, work / f"{name}-off", cpus=server_cpus),
            "on": bench.Server(
                path, work / f"{name}-on", cpus=server_cpus, env=metrics_env
            ),
        }
        for server in servers.values():
            server.start(probe)
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        try:
            for pair in range(args.pairs):
                order = ("off", "on") if pair % 2 == 0 else ("on", "off")
                for mode in order:
                    result = bench.measured_run(
                        servers[mode],
                        body,
                        "csv",
                        args.connections,
                        args.seconds,
                        client_cpus,
                    )
                    cpu[mode].append(result["cpu_ms"])
        finally:
            for server in servers.values():
                server.stop()
        ratios = [on / off for on, off in zip(cpu["on"], cpu["off"], strict=True)]
        print(
            f"| {name} | {statistics.median(cpu['off']):.3f} "
            f"| {statistics.median(cpu['on']):.3f} "
            f"| {' '.join(f'{r:.3f}' for r in ratios)} "
            f"| {statistics.median(ratios):.3f} |",
            flush=True,
        )
    if bench.FAILURES:
        print("FAILED:", *bench.FAILURES, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
