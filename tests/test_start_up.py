"""serve's start-up order: gunicorn loads the model while prepare_serve migrates the
database, and /ping says 200 only once both are done (docker/serve, prepare_serve's
``--started-file``, ``wait_for_prepare_serve`` in docker/gunicorn.conf.py)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest

from tests.support.faults import UnwaitedServe
from tests.support.servers import wait_for

WAITING = "Waiting for the database migrations (prepare_serve)."


class SilentDatabase:
    """A loopback port that accepts connections and never answers: a PostgreSQL client
    waits there (as for a database still starting) until ``release`` closes them all,
    and later ones are refused."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return  # released

    def release(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent_database() -> Iterator[SilentDatabase]:
    database = SilentDatabase()
    yield database
    database.release()


def ping(server: UnwaitedServe) -> int | None:
    try:
        return server.request("GET", "/ping", timeout=1)[0]
    except OSError:
        return None


def prepare_serve_running(server: UnwaitedServe) -> bool:
    for pid in server.child_pids():
        try:
            if b"prepare_serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except FileNotFoundError:
            pass  # ended since ps listed it
    return False


@pytest.mark.server
def test_the_model_loads_while_migrations_run_and_ping_waits_for_them(
    tmp_path, iris_base, silent_database
):
    """With the migrations held up (a database that does not answer until the test lets
    it go), gunicorn loads the model and waits, /ping is not 200 while they run, and
    turns 200 once prepare_serve has finished (here: logged the failed migration)."""
    url = (
        f"postgres://smserve:smserve@127.0.0.1:{silent_database.port}/smserve"
        "?connect_timeout=120"
    )
    server = UnwaitedServe(iris_base, tmp_path, env={"DATABASE_URL": url}).start()
    try:
        wait_for(lambda: WAITING in server.log, deadline=60, what="gunicorn waiting")
        assert "Database not migrated" not in server.log
        assert prepare_serve_running(server)
        assert ping(server) != HTTPStatus.OK
        silent_database.release()
        wait_for(lambda: ping(server) == HTTPStatus.OK, deadline=60, what="/ping 200")
        # prepare_serve had ended (logging the failure) before /ping said 200.
        assert "Database not migrated" in server.log
        assert not prepare_serve_running(server)
        status, _, body = server.invoke(b"5.1,3.5,1.4,0.2\n", "text/csv")
        assert (status, body) == (HTTPStatus.OK, b"0\n")
        assert server.proc.poll() is None, server.log
        assert "failed after gunicorn started" not in server.log
    finally:
        assert server.stop() == 0, server.log


@pytest.mark.server
def test_a_refused_admin_password_stops_serve_before_gunicorn(tmp_path, iris_base):
    """A check prepare_serve makes before gunicorn may start still stops serve: exit 1,
    the reason logged, no gunicorn ever started."""
    server = UnwaitedServe(
        iris_base,
        tmp_path,
        env={
            "SMSERVE_ADMIN_ENABLED": "true",
            "SMSERVE_ALLOWED_HOSTS": "localhost",
            "DJANGO_SUPERUSER_USERNAME": "admin",
            "DJANGO_SUPERUSER_PASSWORD": "admin",
            "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
        },
    ).start()
    try:
        code = server.proc.wait(60)
    finally:
        server.stop()
    assert code == 1, server.log
    assert "DJANGO_SUPERUSER_PASSWORD is refused" in server.log
    assert "gunicorn" not in server.log.lower()
