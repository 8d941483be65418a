"""Drift capture's cost: server CPU per request with capture off and at
``SMSERVE_CAPTURE_PERCENT`` (default 10), in the same run, on the harness of
``bench/run.py`` (the real ``docker/serve`` pinned to one core, wrk on the other).

    .venv/bin/python bench/drift.py [--percent 10] [--rounds 5] [--seconds 3] [--files]

Two servers of the iris tree, one with capture off and one with it on, are measured in
turns (off then on, on then off, ...), so a shared machine's drifting speed hits both alike; the
figure is the ratio of the medians. The model has no training distributions (a bare
``model.joblib``), so the capturing server first builds its reference from the first
sampled records (``SMSERVE_DRIFT_REFERENCE_RECORDS``) in a warm-up run, and is measured
counting against it. ``--files`` also writes the sampled invocations as data-capture
files to a directory (``SMSERVE_CAPTURE_DESTINATION``). Run by hand; not part of the test
suite.
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

import joblib

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: the harness)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--percent", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--records", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--files", action="store_true")
    args = parser.parse_args()
    ncpu = len(os.sched_getaffinity(0))
    server_cpus, client_cpus = ("1", "0") if ncpu >= 2 else (None, None)

    model, pool = run.make_models()["iris"]
    work = Path(tempfile.mkdtemp(prefix="smserve-bench-drift-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    path = work / "iris.joblib"
    joblib.dump(model, path)
    body = work / "body.csv"
    body.write_bytes(run.make_body(pool, args.records, "csv"))
    settings = {
        "off": {},
        "on": {
            "SMSERVE_CAPTURE_PERCENT": str(args.percent),
            "SMSERVE_DRIFT_REFERENCE_RECORDS": "50",
        },
    }
    if args.files:
        settings["on"]["SMSERVE_CAPTURE_DESTINATION"] = str(work / "capture")
    servers = {
        name: run.Server(path, work / f"serve-{name}", cpus=server_cpus, env=env)
        for name, env in settings.items()
    }
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.start(run.make_body(pool, 1, "csv"))
            # Warm-up: the capturing server's reference is built here.
            run.measured_run(
                server, body, "csv", args.concurrency, args.seconds, client_cpus
            )
        for round_ in range(args.rounds):
            # Each round's order flips, so a machine slowing down (or speeding up)
            # over the run favours neither.
            order = list(servers.items())
            for name, server in order if round_ % 2 == 0 else order[::-1]:
                r = run.measured_run(
                    server, body, "csv", args.concurrency, args.seconds, client_cpus
                )
                cpu[name].append(r["cpu_ms"])
                print(f"round {round_ + 1} capture {name}: {r['cpu_ms']:.4f} ms")
    finally:
        for server in servers.values():
            server.stop()
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(
        f"iris, {args.records} record(s), c={args.concurrency}: server CPU per request "
        f"median of {args.rounds}: capture off {off:.4f} ms, capture at "
        f"{args.percent:g}%{' with files' if args.files else ''} {on:.4f} ms: ratio "
        f"{on / off:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
