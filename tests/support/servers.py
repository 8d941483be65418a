"""Helpers for tests that run the real server: ``ServeProcess`` (``docker/serve``, nginx +
gunicorn, on a free loopback port, polled to a deadline and always stopped by PID), the
database it writes to, and polling."""

from __future__ import annotations

import http.client
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from tests.support import ROOT, free_port

SERVE = ROOT / "docker" / "serve"
PYTHON = sys.executable


class ServeProcess:
    """The real ``docker/serve`` on a free loopback port, with its own state dir."""

    def __init__(
        self,
        base_dir: Path,
        work_dir: Path,
        env: dict[str, str] | None = None,
        workers: int = 2,
        append_log: bool = True,
    ) -> None:
        self.base_dir = base_dir
        self.port = free_port()
        self.log_path = work_dir / "serve.log"
        self.env = {
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(base_dir),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SMSERVE_BIND_HOST": "127.0.0.1",
            "SMSERVE_STATE_DIR": str(work_dir / "state"),
            "SMSERVE_PYTHON": PYTHON,
            "MODEL_SERVER_WORKERS": str(workers),
            "TMPDIR": str(work_dir),
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        # False: `serve > serve.log 2>&1` (no O_APPEND), as a user's shell would open it.
        self.log_mode = "ab" if append_log else "wb"

    def start(
        self, expect_status: int | None = 200, deadline: float = 60
    ) -> ServeProcess:
        self._log = self.log_path.open(self.log_mode)
        self.proc = subprocess.Popen(
            [str(SERVE)],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_up(expect_status, deadline)
        return self

    def wait_up(self, expect_status: int | None, deadline: float) -> None:
        """Poll /ping until the app itself answers (with ``expect_status`` if given)."""
        end = time.monotonic() + deadline
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"serve exited with {self.proc.returncode}:\n{self.log}"
                )
            try:
                status, _, body = self.request("GET", "/ping", timeout=2)
                last = (status, body)
                app_answered = status == 200 or b"model_not_ready" in body
                if app_answered and (expect_status is None or status == expect_status):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(
            f"serve not up in {deadline}s (last /ping {last}):\n{self.log}"
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection; exactly the headers given (plus Host and
        Content-Length)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                data,
            )
        finally:
            conn.close()

    def invoke(
        self, body: bytes, content_type: str | None = "text/csv", **headers: str
    ):
        all_headers = dict(headers)
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        return self.request("POST", "/invocations", body, all_headers)

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def run_dirs(self) -> list[Path]:
        """serve's run dirs that exist now: under its TMPDIR, or the one under /tmp that
        its log names (a TMPDIR too long for gunicorn's socket, as pytest-xdist's are)."""
        moved = [Path(p) for p in re.findall(r"the run dir is (\S+)", self.log)]
        tmpdir = Path(self.env["TMPDIR"])
        return [p for p in [*tmpdir.glob("smserve.*"), *moved] if p.exists()]

    @property
    def run_dir(self) -> Path:
        (run_dir,) = self.run_dirs()
        return run_dir

    def child_pids(self) -> list[int]:
        """The PIDs of the processes serve started (nginx and gunicorn masters)."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
            capture_output=True,
            text=True,
        ).stdout
        return [int(p) for p in out.split()]

    def gunicorn_master(self) -> int:
        """gunicorn's master: the child of serve whose command line names gunicorn
        (PIDs wrap, so their order says nothing)."""
        (master,) = [
            pid
            for pid in self.child_pids()
            if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        return master

    def gunicorn_workers(self) -> set[int]:
        """The PIDs of gunicorn's workers (its master's children)."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.gunicorn_master())],
            capture_output=True,
            text=True,
        ).stdout
        return {int(p) for p in out.split()}

    def stop(self, timeout: float = 35) -> int:
        """SIGTERM to serve, as SageMaker does; SIGKILL to its process group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(
                f"serve did not stop within {timeout}s:\n{self.log}"
            ) from None
        finally:
            self._log.close()


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
        # mode=rw: a missing file is an error, not a new empty database.
        conn = sqlite3.connect(f"file:{self.sqlite_path}?mode=rw", uri=True, timeout=20)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def totals(self) -> dict[str, int]:
        """Summed counts over every ``InvocationStat`` row. A database error (no file, no
        table, no server) is raised, never read as zero: the server under test migrates
        before it answers, so a test that asks after start-up always finds the table."""
        rows = self.query(
            "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(records), 0), "
            "COALESCE(SUM(errors_4xx), 0), COALESCE(SUM(errors_5xx), 0), COUNT(*), "
            "COALESCE(SUM(bytes_in), 0), COALESCE(SUM(bytes_out), 0) "
            "FROM modelapp_invocationstat"
        )
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
