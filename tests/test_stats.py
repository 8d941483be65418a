"""Invocation statistics: counted in memory per worker, flushed to the database in the
background, exact across workers, and never on the request path (not even in an outage)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

import psycopg
import pytest

from modelapp import stats
from modelapp.deployments import Deployments
from modelapp.metadata import sha256_of
from modelapp.models import InvocationStat, TrainedModel
from modelapp.registry import registry
from modelapp.stats import (
    E4XX,
    E5XX,
    LAT_MAX,
    RECORDS,
    REQUESTS,
    StatsCollector,
)
from tests.support import ROOT
from tests.support.servers import ServerDatabase, free_port, invoke_many, wait_for

IRIS_ROWS = b"5.1,3.5,1.4,0.2\n6.2,2.9,4.3,1.3\n"  # two records
WRONG_WIDTH = b"1,2\n"  # a 400: the model takes four features
POSTGRES_SH = ROOT / "scripts" / "postgres.sh"


def invocations(server: Any, count: int) -> None:
    """``count`` sequential invocations, each answered 200."""
    for _ in range(count):
        status, _, body = server.invoke(IRIS_ROWS)
        assert status == HTTPStatus.OK, body


@pytest.fixture
def server_db(tmp_path) -> Any:
    db = ServerDatabase.create(tmp_path / "db")
    yield db
    db.drop()


# --- in memory ---------------------------------------------------------------------------------
def test_record_sums_per_model_and_minute():
    """Invocations in one minute add into one bucket; another minute or model is another."""
    collector = StatsCollector()
    minute = 1_800_000_000 // 60 * 60
    collector.count("a", 200, 3, 5.0, 100, 40, now=minute + 1)
    collector.count("a", 400, 0, 1.0, 10, 60, now=minute + 59)
    collector.count("a", 503, 0, 9.0, 10, 60, now=minute + 60)
    collector.count(None, 200, 1, 2.0, 10, 10, now=minute + 2)
    pending = collector.pending()
    assert set(pending) == {("a", minute), ("a", minute + 60), (None, minute)}
    bucket = pending[("a", minute)]
    assert bucket[REQUESTS] == 2
    assert bucket[RECORDS] == 3
    assert (bucket[E4XX], bucket[E5XX]) == (1, 0)
    assert bucket[LAT_MAX] == 5.0
    assert pending[("a", minute + 60)][E5XX] == 1


def test_record_stays_in_memory():
    """Counting an invocation does no I/O: 20,000 calls reach neither the database (this
    test has no database access: pytest-django would raise) nor a file, and they sum up
    exactly. (What a call costs is measured by ``bench/run.py``.)"""
    collector = StatsCollector()
    minute = 1_800_000_000 // 60 * 60
    for i in range(20_000):
        collector.count("a" * 64, 200, 10, 1.5, 1000, 200, now=minute + i % 120)
    pending = collector.pending()
    assert set(pending) == {("a" * 64, minute), ("a" * 64, minute + 60)}
    assert sum(bucket[REQUESTS] for bucket in pending.values()) == 20_000
    assert sum(bucket[RECORDS] for bucket in pending.values()) == 200_000


def test_no_thread_runs_in_the_importing_process():
    """Importing the app starts no thread: gunicorn's post_fork starts one per worker."""
    import threading

    assert not [t for t in threading.enumerate() if t.name.startswith("smserve-stats")]


# --- against the test database -------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_flush_writes_and_increments_atomically():
    """A flush creates the minute's row; a later flush adds to it (F() increments), keeps
    the larger max latency, and two processes' counts for one minute end in one row."""
    minute = int(time.time()) // 60 * 60
    first, second = StatsCollector(), StatsCollector()
    for _ in range(5):
        first.count("f" * 64, 200, 2, 3.0, 50, 20, now=minute)
    first.count("f" * 64, 400, 0, 30.0, 5, 20, now=minute)
    for _ in range(7):
        second.count("f" * 64, 200, 1, 4.0, 50, 20, now=minute)
    assert first.flush()
    assert second.flush()
    row = InvocationStat.objects.get()
    assert row.requests == 13
    assert row.records == 17
    assert row.errors_4xx == 1
    assert row.latency_ms_max == 30.0
    assert row.bytes_in == 5 * 50 + 5 + 7 * 50
    assert first.pending() == {}
    assert second.pending() == {}


@pytest.mark.django_db(transaction=True)
def test_flush_of_nothing_writes_nothing():
    """An idle worker's flush leaves the table untouched."""
    assert StatsCollector().flush()
    assert not InvocationStat.objects.exists()


def test_failed_flush_keeps_every_count(monkeypatch):
    """A flush that cannot reach the database (here pytest-django refuses the access)
    returns False and keeps the counts, merged with those that arrive meanwhile."""
    # The counts are this flush's only database access, whatever ran before in this
    # process: no model left to record by an earlier in-process test (pytest-django's
    # refusal is a RuntimeError, which the models' recording, expecting a DatabaseError
    # from a real outage, does not catch).
    nothing_to_record = Deployments()
    if registry.loaded is not None:
        nothing_to_record._recorded.add(registry.loaded.sha256)
    monkeypatch.setattr(stats, "deployments", nothing_to_record)
    collector = StatsCollector()
    minute = 1_800_000_000 // 60 * 60
    collector.count("k" * 64, 200, 2, 10.0, 5, 5, now=minute)
    assert collector.flush() is False
    collector.count("k" * 64, 500, 1, 3.0, 5, 5, now=minute)
    bucket = collector.pending()[("k" * 64, minute)]
    assert bucket[REQUESTS] == 2
    assert bucket[RECORDS] == 3
    assert bucket[E5XX] == 1
    assert bucket[LAT_MAX] == 10.0


@pytest.mark.django_db(transaction=True)
def test_flush_bumps_last_seen_of_the_model():
    """Traffic for a model refreshes its ``last_seen``."""
    model = TrainedModel.objects.create(sha256="e" * 64)
    before = model.last_seen
    collector = StatsCollector()
    collector.count("e" * 64, 200, 1, 1.0, 1, 1)
    assert collector.flush()
    model.refresh_from_db()
    assert model.last_seen > before


# --- through the real server ---------------------------------------------------------------
def test_counts_across_workers_are_exact(serve_factory, iris_base, server_db):
    """N invocations spread over three workers add up to exactly N in the database, flushed
    in the background while the server runs; the model is recorded on start-up.
    docs/admin.md, Admin pages: "model and minute (UTC)"; "each gunicorn worker".
    docs/admin.md, Admin variables: "where the SQLite database and the generated key
    live (default `var/` in the app dir)"; "how often each worker writes its counts
    (default 5)".
    docs/settings.md, Settings: "`SMSERVE_STATS_FLUSH_SECONDS`".
    """
    server = serve_factory(
        iris_base,
        workers=3,
        env={**server_db.env, "SMSERVE_STATS_FLUSH_SECONDS": "0.3"},
    )
    sha = sha256_of(iris_base / "model" / "model.joblib")
    wait_for(
        lambda: server_db.query(
            f"SELECT estimator FROM modelapp_trainedmodel WHERE sha256 = '{sha}'"
        ),
        what="the model's row",
    )
    bodies = [IRIS_ROWS] * 240 + [WRONG_WIDTH] * 30
    statuses = invoke_many(server, bodies, threads=12)
    assert statuses.count(HTTPStatus.OK) == 240
    assert statuses.count(HTTPStatus.BAD_REQUEST) == 30
    totals = wait_for(
        lambda: (t := server_db.totals())["requests"] == 270 and t,
        what="270 requests flushed",
    )
    assert totals["records"] == 480
    assert totals["4xx"] == 30
    assert totals["5xx"] == 0
    # Bytes both ways: one more of each kind shows what each response weighs.
    _, _, ok_body = server.invoke(IRIS_ROWS)
    _, _, error_body = server.invoke(WRONG_WIDTH)
    totals = wait_for(
        lambda: (t := server_db.totals())["requests"] == 272 and t,
        what="272 requests flushed",
    )
    assert totals["bytes_in"] == 241 * len(IRIS_ROWS) + 31 * len(WRONG_WIDTH)
    assert totals["bytes_out"] == 241 * len(ok_body) + 31 * len(error_body)
    workers = {
        line.split("pid: ")[1]
        for line in server.log.splitlines()
        if "Booting worker" in line
    }
    assert len(workers) == 3
    # Every periodic flush since, and each worker's last one at exit, added nothing more.
    assert server.stop() == 0
    assert server_db.totals()["requests"] == 272


def test_worker_exit_flushes_what_is_left(serve_factory, iris_base, server_db):
    """With no periodic flush due, stopping the server (SIGTERM) still writes every count."""
    server = serve_factory(
        iris_base,
        workers=2,
        env={**server_db.env, "SMSERVE_STATS_FLUSH_SECONDS": "3600"},
    )
    statuses = invoke_many(server, [IRIS_ROWS] * 50, threads=4)
    assert statuses == [HTTPStatus.OK] * 50
    assert server_db.totals()["requests"] == 0  # the hourly flush is not due
    assert server.stop() == 0
    assert server_db.totals()["requests"] == 50


def _sqlite_outage(pg_dir: Path, server_db: ServerDatabase) -> tuple[dict, Any, Any]:
    """The state dir moved away: SQLite cannot open the file (root ignores file modes, so
    a read-only file would not stop it)."""
    away = server_db.state_dir.with_name("state-away")
    return (
        server_db.env,
        lambda: server_db.state_dir.rename(away),
        lambda: away.rename(server_db.state_dir),
    )


def _postgres_outage(pg_dir: Path, server_db: ServerDatabase) -> tuple[dict, Any, Any]:
    """A PostgreSQL cluster of this test's own, stopped and started again."""
    port = str(free_port())
    url = subprocess.run(
        [str(POSTGRES_SH), "start", str(pg_dir), port],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    server_db.url = url
    return (
        server_db.env,
        lambda: subprocess.run([str(POSTGRES_SH), "stop", str(pg_dir)], check=True),
        lambda: subprocess.run(
            [str(POSTGRES_SH), "start", str(pg_dir), port],
            check=True,
            capture_output=True,
        ),
    )


@pytest.fixture
def pg_dir() -> Any:
    """A directory for a throwaway cluster that the postgres user can reach (pytest's
    tmp_path is private to root); the cluster is stopped and the directory removed."""
    path = Path(tempfile.mkdtemp(prefix="smserve-pg-"))
    path.chmod(0o755)
    yield path
    subprocess.run([str(POSTGRES_SH), "stop", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.root)]
)
def test_database_outage_costs_invocations_nothing(
    backend, serve_factory, iris_base, tmp_path, pg_dir
):
    """With the database gone, every invocation still succeeds while the workers' flushes
    fail (and are logged), and the counts arrive once the database is back. (That an
    outage costs invocations no time is a latency figure: ``bench/run.py``, not here.)

    README admin: "If the database is down, the flush is logged ... the counts wait in
    memory; invocations do not slow down".
    docs/admin.md, Admin variables: "another database"; "e.g.
    `postgres://user:password@host:5432/smserve`".
    """
    server_db = ServerDatabase(tmp_path / "db")
    outage = _sqlite_outage if backend == "sqlite" else _postgres_outage
    env, take_away, bring_back = outage(pg_dir, server_db)
    server = serve_factory(
        iris_base,
        workers=2,
        env={**env, "SMSERVE_STATS_FLUSH_SECONDS": "0.2"},
    )
    invocations(server, 120)
    wait_for(lambda: server_db.totals()["requests"] == 120, what="first flush")

    take_away()
    try:
        invocations(server, 50)
        wait_for(
            lambda: server.log.count("Stats not flushed") >= 2,
            what="failed flushes logged",
        )
        invocations(server, 50)  # still answered with flushes failing meanwhile
    finally:
        bring_back()
    wait_for(
        lambda: server_db.totals()["requests"] == 220,
        what="counts after the outage",
    )
    assert "kept for the next flush" in server.log
    assert server.stop() == 0
    assert server_db.totals()["requests"] == 220


@pytest.mark.root
def test_postgres_script_starts_and_stops_a_cluster(pg_dir):
    """``scripts/postgres.sh start`` prints a DATABASE_URL that accepts connections;
    ``start`` again is a no-op; ``stop`` stops it."""
    port = str(free_port())
    start = [str(POSTGRES_SH), "start", str(pg_dir), port]
    url = subprocess.run(start, check=True, capture_output=True, text=True).stdout
    url = url.strip()
    assert url == f"postgres://smserve:smserve@127.0.0.1:{port}/smserve"
    again = subprocess.run(start, check=True, capture_output=True, text=True).stdout
    assert again.strip() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    subprocess.run([str(POSTGRES_SH), "stop", str(pg_dir)], check=True)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
