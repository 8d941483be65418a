"""The admin's test client and a server with the admin on, trained and with traffic."""

from __future__ import annotations

import json
import os
import re
import subprocess
from http import HTTPStatus
from http.client import HTTPConnection
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import (
    HTTPCookieProcessor,
    HTTPHandler,
    HTTPRedirectHandler,
    Request,
    build_opener,
)

from tests.support import ROOT
from tests.support.servers import (
    PYTHON,
    ServeProcess,
    ServerDatabase,
    invoke_many,
    wait_for,
)
from tests.support.training import write_channel

ADMIN_USER, ADMIN_PASSWORD = "admin", "a-long-test-password-9"
WRONG_WIDTH = b"1\n"


class NoRedirect(HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class FromAddress(HTTPHandler):
    """Connections from a given loopback address (another client, as nginx sees it)."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def http_open(self, req: Request) -> Any:
        return self.do_open(HTTPConnection, req, source_address=(self.address, 0))


class AdminClient:
    """A browser's cookie jar and CSRF token, without the browser; ``source`` is the
    loopback address it connects from (127.0.0.1 unless given)."""

    def __init__(self, port: int, source: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        handlers: list[Any] = [HTTPCookieProcessor(CookieJar()), NoRedirect()]
        if source is not None:
            handlers.append(FromAddress(source))
        self.opener = build_opener(*handlers)

    def request(
        self,
        method: str,
        path: str,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, str]:
        body = urlencode(data).encode() if data is not None else None
        request = Request(self.base + path, body, headers or {}, method=method)
        try:
            response = self.opener.open(request, timeout=30)
        except HTTPError as exc:
            response = exc
        with response:
            raw = response.read()
        text = raw.decode(errors="replace")
        return response.status, response.headers, text

    def get(self, path: str) -> tuple[int, Any, str]:
        return self.request("GET", path)

    def csrf_token(self, path: str) -> str:
        status, _, page = self.get(path)
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, f"no CSRF token on {path} ({status})"
        return match.group(1)

    def login(self, username: str, password: str) -> tuple[int, Any, str]:
        token = self.csrf_token("/admin/login/")
        return self.request(
            "POST",
            "/admin/login/",
            {
                "csrfmiddlewaretoken": token,
                "username": username,
                "password": password,
                "next": "/admin/",
            },
        )


def train_into(base: Path, work: Path, env: dict[str, str]) -> None:
    """A real ``manage.py train`` run (with validation metrics) into ``base``, recording
    its run in the server's database."""
    channels = work / "channels"
    train = write_channel(channels / "train.csv", rows=120)
    valid = write_channel(channels / "validation.csv", rows=40, seed=1)
    done = subprocess.run(
        [PYTHON, "manage.py", "train", "--base-dir", str(base)]
        + ["--channel", f"train={train}", "--channel", f"validation={valid}"]
        + ["--hp", "max_depth=3", "--hp", "smserve_random_seed=7"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr


def start_admin_server(work: Path) -> tuple[ServeProcess, ServerDatabase, str]:
    """A trained model served with the admin on, a superuser from DJANGO_SUPERUSER_*,
    and some traffic (successes and 400s) flushed into the database."""
    db = ServerDatabase.create(work / "db")
    base = work / "ml"
    train_into(base, work, db.env)
    metadata = json.loads((base / "model" / "metadata.json").read_text())
    server = ServeProcess(
        base,
        work,
        env={
            **db.env,
            "SMSERVE_ADMIN_ENABLED": "1",
            "SMSERVE_ALLOWED_HOSTS": "127.0.0.1",
            "DJANGO_SUPERUSER_USERNAME": ADMIN_USER,
            "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
            "SMSERVE_STATIC_ROOT": str(work / "static"),
            "SMSERVE_STATS_FLUSH_SECONDS": "0.3",
        },
    )
    server.start()
    try:
        bodies = [b"0.2,0.3\n0.9,0.8\n0.5,0.7\n"] * 40 + [WRONG_WIDTH] * 5
        statuses = invoke_many(server, bodies, threads=4)
        assert statuses.count(HTTPStatus.OK) == 40
        wait_for(lambda: db.totals()["requests"] == 45, what="45 requests flushed")
    except BaseException:
        server.stop()
        db.drop()
        raise
    return server, db, metadata["sha256"]
