"""Only what the model needs is imported. Through the real server, a numeric model on
SQLite (compiled engine off) maps none of pandas, pyarrow, psycopg, onnx or skl2onnx in
gunicorn's master or its workers, and a model that ``./train`` fitted on a table with text
columns maps pandas. A PostgreSQL ``DATABASE_URL`` brings psycopg, SQLite does not.

A package's compiled extensions are mapped into a process once it is imported, so
``/proc/<pid>/maps`` shows what each process imported. skl2onnx has no extension of its
own; it imports onnx first thing, which has.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from http import HTTPStatus
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.servers import PYTHON, ServeProcess, wait_for
from tests.support.tables import FEATURES, TARGET, churn_frame
from tests.support.training import run_train

OPTIONAL = frozenset(
    {"pandas", "pyarrow", "psycopg", "psycopg_binary", "psycopg_c", "onnx", "skl2onnx"}
)
LEAN = {"SMSERVE_COMPILED_ENGINE": "off", "DATABASE_URL": ""}


def mapped_packages(pid: int) -> set[str]:
    """The installed packages whose files ``pid`` maps (``numpy.libs`` counts as numpy)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    found = re.findall(r"/site-packages/([^/\s]+)/", maps)
    return {name.removesuffix(".libs") for name in found}


def serving_processes(server: ServeProcess, workers: int) -> dict[str, set[str]]:
    """Master and workers -> what each maps, once all ``workers`` have forked."""
    wait_for(
        lambda: len(server.gunicorn_workers()) == workers,
        what=f"{workers} gunicorn workers",
    )
    pids = {"master": server.gunicorn_master()}
    pids |= {f"worker {pid}": pid for pid in server.gunicorn_workers()}
    return {name: mapped_packages(pid) for name, pid in pids.items()}


@pytest.mark.parametrize("engine", ["off", "on"])
def test_a_numeric_model_on_sqlite_maps_no_optional_package(
    iris_base, serve_factory, engine
):
    """The iris tree: scikit-learn in the master and every worker, none of the others;
    with the compiled engine on too, which converts the bare model.joblib apart."""
    server = serve_factory(
        iris_base, env={**LEAN, "SMSERVE_COMPILED_ENGINE": engine}, workers=2
    )
    for _ in range(8):
        status, _, body = server.invoke(b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n")
        assert status == HTTPStatus.OK, body
    processes = serving_processes(server, workers=2)
    for name, packages in processes.items():
        assert "sklearn" in packages, f"{name} maps no scikit-learn: {packages}"
        assert not packages & OPTIONAL, f"{name} maps {sorted(packages & OPTIONAL)}"
        # On, the tree was converted and is served by the engine's one session.
        assert ("onnxruntime" in packages) == (engine == "on"), (name, packages)


def test_a_table_model_with_text_columns_maps_pandas(tmp_path, serve_factory):
    """The opposite case: its records become a DataFrame, so pandas is there."""
    train_csv = tmp_path / "train.csv"
    churn_frame(200, seed=0).to_csv(train_csv, index=False)
    base = tmp_path / "ml"
    done = run_train(
        base,
        "--channel",
        f"train={train_csv}",
        "--hp",
        "smserve_estimator=random_forest",
        "--hp",
        "n_estimators=5",
        "--hp",
        f"smserve_target_column={TARGET}",
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    server = serve_factory(base, env=LEAN, workers=1)
    record = churn_frame(1, seed=5, gaps=0)[FEATURES].iloc[0].to_dict()
    status, _, body = server.invoke(json.dumps([record]).encode(), "application/json")
    assert status == HTTPStatus.OK, body
    for name, packages in serving_processes(server, workers=1).items():
        assert "pandas" in packages, f"{name} maps no pandas: {packages}"
        assert not packages & {"psycopg", "psycopg_binary"}, name


def imported_by_django(database_url: str, state_dir: Path) -> list[str]:
    """Which of the optional packages a Django process of ours has imported after
    loading the URLconf (the views, DRF) and the database backend of ``database_url``."""
    code = (
        "import sys\n"
        "from django.db import connection\n"
        "from django.urls import get_resolver\n"
        "get_resolver().resolve('/invocations')\n"
        "connection.ops\n"
        "print(sorted(m for m in ('pandas', 'pyarrow', 'psycopg', 'onnx', 'skl2onnx')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [PYTHON, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "SMSERVE_STATE_DIR": str(state_dir),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_postgresql_brings_psycopg_and_sqlite_does_not(tmp_path):
    # Loading the backend imports the driver; no connection is opened.
    assert imported_by_django("", tmp_path) == []
    postgresql = "postgresql://smserve@127.0.0.1:1/nowhere"
    assert imported_by_django(postgresql, tmp_path) == ["psycopg"]
