"""Helpers for tests that run a real server against its own database."""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg


class ServerDatabase:
    """The database a test server writes to: a new SQLite file, or a new database on the
    suite's PostgreSQL (``DATABASE_URL``) so that tests never see each other's rows."""

    def __init__(self, work: Path, url: str | None = None) -> None:
        self.state_dir = work / "state"
        self.url = url or ""

    @classmethod
    def create(cls, work: Path) -> ServerDatabase:
        suite_url = os.environ.get("DATABASE_URL", "")
        if not suite_url.startswith(("postgres://", "postgresql://")):
            return cls(work)
        name = f"smserve_t_{secrets.token_hex(6)}"
        with psycopg.connect(suite_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(suite_url)
        return cls(work, urlunsplit(parts._replace(path=f"/{name}")))

    def drop(self) -> None:
        if self.url:
            name = urlsplit(self.url).path.lstrip("/")
            with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @property
    def env(self) -> dict[str, str]:
        # An empty DATABASE_URL means SQLite under the state dir.
        return {"DATABASE_URL": self.url, "SMSERVE_STATE_DIR": str(self.state_dir)}

    @property
    def sqlite_path(self) -> Path:
        return self.state_dir / "smserve.sqlite3"

    def query(self, sql: str) -> list[tuple]:
        """Rows of ``sql``, on a connection opened and closed here (none is kept)."""
        if self.url:
            with psycopg.connect(self.url) as conn:
                return conn.execute(sql).fetchall()
        conn = sqlite3.connect(self.sqlite_path, timeout=20)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def totals(self) -> dict[str, int]:
        """Summed counts over every ``InvocationStat`` row (0 before the table exists)."""
        try:
            rows = self.query(
                "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(records), 0), "
                "COALESCE(SUM(errors_4xx), 0), COALESCE(SUM(errors_5xx), 0), COUNT(*), "
                "COALESCE(SUM(bytes_in), 0), COALESCE(SUM(bytes_out), 0) "
                "FROM modelapp_invocationstat"
            )
        except (sqlite3.Error, psycopg.Error):
            rows = [(0,) * 7]
        requests, records, e4, e5, count, bytes_in, bytes_out = (
            int(v) for v in rows[0]
        )
        return {
            "requests": requests,
            "records": records,
            "4xx": e4,
            "5xx": e5,
            "rows": count,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }


def wait_for(predicate: Any, deadline: float = 30, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``deadline`` s."""
    end = time.monotonic() + deadline
    value = None
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {deadline}s (last: {value!r})")


def invoke_many(server: Any, bodies: list[bytes], threads: int = 8) -> list[int]:
    """Statuses of ``bodies`` sent concurrently on separate connections."""

    def one(body: bytes) -> int:
        return server.invoke(body)[0]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, bodies))


def write_channel(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """Label first, two numeric features: SageMaker's built-in CSV layout."""
    rng = np.random.default_rng(seed)
    X = rng.random((rows, 2))
    y = (X.sum(axis=1) > 1).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            f"{label},{a:.4f},{b:.4f}\n" for label, (a, b) in zip(y, X, strict=True)
        )
    )
    return path
