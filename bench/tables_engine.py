"""The compiled engine on tables with text columns: the churn-like table (numbers, three
text columns, gaps) trained by the real ``train``, served by the real ``docker/serve``
with the engine on and off, one record per request; beside it the in-process cost of the
predictor's own parse-less ``predict`` of one record (the schema's columns or DataFrame,
then the engine or scikit-learn).

    .venv/bin/python bench/tables_engine.py [--seconds 5] [--estimators random_forest,...]

Served figures are the server's CPU per request (every process of serve's tree, as in
``bench/run.py``, whose ``Server`` and ``measured_run`` this reuses), one connection, 2
workers pinned to one core and wrk to the other. In-process figures are medians of CPU
time, OpenMP/BLAS on one thread as in a worker. Each line also says which engine served
each method and the batch size above which scikit-learn does. Run by hand; not part of
the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smserve.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.test import override_settings  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench.run import Server, cpu_median, fmt_table, measured_run  # noqa: E402
from modelapp.batch import Batch  # noqa: E402
from modelapp.registry import load_model  # noqa: E402
from tests.support.tables import FEATURES, TARGET, churn_frame  # noqa: E402


def train(work: Path, estimator: str) -> Path:
    """The real ``train`` on 2,000 churn rows; the model directory."""
    data = work / "churn.csv"
    if not data.exists():
        churn_frame(2000, seed=0).to_csv(data, index=False)
    base = work / f"ml-{estimator}"
    subprocess.run(
        [str(ROOT / "train"), "--base-dir", str(base), "--channel", f"train={data}"]
        + ["--hp", f"smserve_target_column={TARGET}", "--hp", "smserve_random_seed=3"]
        + ["--hp", f"smserve_estimator={estimator}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "SMSERVE_PYTHON": sys.executable,
            "SMSERVE_STATE_DIR": str(work / "train-state"),
            "DATABASE_URL": "",
        },
    )
    return base / "model"


def in_process_ms(model_dir: Path, record: list, engine: bool, budget: float) -> tuple:
    smserve = {**getattr(settings, "SMSERVE", {}), "COMPILED_ENGINE": engine}
    with override_settings(SMSERVE=smserve), threadpool_limits(1):
        predictor = load_model(model_dir).predictor
        cost = cpu_median(lambda: predictor.predict(Batch(rows=[record])), budget)
    report = predictor.engine_report
    return cost * 1e3, report.methods, report.max_records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--estimators", default="random_forest,hist_gradient_boosting")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tables-"))
    cores = os.cpu_count() or 1
    server_cpus, wrk_cpus = ("0", "1") if cores >= 2 else (None, None)
    rows = []
    try:
        record_frame = churn_frame(1, seed=9)[FEATURES]
        record = record_frame.astype(object).iloc[0].tolist()
        body_file = work / "one.csv"
        body_file.write_bytes(record_frame.to_csv(index=False, header=False).encode())
        for estimator in args.estimators.split(","):
            model_dir = train(work, estimator)
            figures = {}
            for engine in (True, False):
                local, methods, limit = in_process_ms(model_dir, record, engine, 2.0)
                served_dir = work / f"serve-{estimator}-{engine}"
                (served_dir / "ml").mkdir(parents=True)
                shutil.copytree(model_dir, served_dir / "ml" / "model")
                server = Server(
                    model_dir / "model.joblib",
                    served_dir,
                    workers=2,
                    cpus=server_cpus,
                    env={"SMSERVE_COMPILED_ENGINE": "on" if engine else "off"},
                ).start(body_file.read_bytes())
                try:
                    result = measured_run(
                        server, body_file, "csv", 1, args.seconds, wrk_cpus
                    )
                finally:
                    server.stop()
                figures[engine] = (result["cpu_ms"], local)
                rows.append(
                    [
                        estimator,
                        "on" if engine else "off",
                        result["cpu_ms"],
                        local,
                        ", ".join(f"{m}: {e}" for m, e in methods.items()),
                        "-" if limit is None else limit,
                    ]
                )
            (on_served, on_local), (off_served, off_local) = (
                figures[True],
                figures[False],
            )
            rows.append(
                [
                    estimator,
                    "off / on",
                    f"{off_served / on_served:.1f}x",
                    f"{off_local / on_local:.1f}x",
                    "",
                    "",
                ]
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        fmt_table(
            [
                "model",
                "engine",
                "served CPU ms/request",
                "in-process ms/record",
                "engines",
                "scikit-learn above",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
