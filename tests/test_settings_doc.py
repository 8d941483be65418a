"""docs/settings.md against the tests: every documented variable is set by some test, and
the ones no other test sets are set here, on the real server.

``test_every_documented_variable_is_set_by_a_test`` reads the table's variables and looks
for each being set in tests/ (a key of an environment dict, ``NAME=`` in a command, or
``monkeypatch.setenv``); a variable added to the docs with no test setting it fails.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
from http import HTTPStatus

import pytest

from tests.support import ROOT
from tests.support.docs import tables
from tests.support.servers import ServeProcess

# A documented variable no test can set, and why.
NOT_SET_BY_TESTS: dict[str, str] = {
    "SMSERVE_DASK_PEERS": "not a setting: train sets it for the Dask processes it starts"
    " (modelapp/training/cluster.py); tests/training/test_cluster.py runs train on two"
    " hosts and reads in their log the addresses it gave them",
}


def documented_variables() -> list[str]:
    """The variables of docs/settings.md's table (``_PASSWORD`` read as
    ``DJANGO_SUPERUSER_PASSWORD``: the row's shorthand)."""
    (table,) = tables(ROOT / "docs" / "settings.md")
    found = []
    for cells in table.rows:
        names = re.findall(r"`([A-Z_][A-Z0-9_]*)`", cells[0])
        prefix = names[0].rsplit("_", 1)[0]
        found += [f"{prefix}{name}" if name.startswith("_") else name for name in names]
    return found


def setters(variable: str) -> list[str]:
    """The test files that set ``variable``."""
    quoted = re.escape(variable)
    pattern = re.compile(
        rf"[\"']{quoted}[\"']\s*:|[\"']{quoted}=|\b{quoted}=|setenv\(\s*[\"']{quoted}[\"']"
        rf"|\[[\"']{quoted}[\"']\]\s*="
    )
    return sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("*.py")
        if pattern.search(path.read_text())
    )


def test_every_documented_variable_is_set_by_a_test():
    """Each variable of docs/settings.md is set by at least one test (or listed, with the
    reason, in NOT_SET_BY_TESTS)."""
    variables = documented_variables()
    assert len(variables) > 40
    unset = [v for v in variables if v not in NOT_SET_BY_TESTS and not setters(v)]
    assert unset == [], "documented variables no test sets"
    # (This module's own NOT_SET_BY_TESTS reads as a setter of what it lists.)
    stale = [
        v
        for v in NOT_SET_BY_TESTS
        if v not in variables or set(setters(v)) - {"tests/test_settings_doc.py"}
    ]
    assert stale == [], (
        "NOT_SET_BY_TESTS lists a variable undocumented or set by a test"
    )


@pytest.fixture(scope="module")
def configured(iris_base, tmp_path_factory):
    """One real server with the variables no other test sets, set."""
    work = tmp_path_factory.mktemp("settings")
    nginx = shutil.which("nginx")
    assert nginx, "nginx is needed (scripts/bootstrap.sh installs it)"
    wrapper = work / "nginx-wrapper"
    wrapper.write_text(f'#!/bin/sh\ntouch "{work}/wrapper-ran"\nexec {nginx} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    ignored = str(work / "not-used")
    env = {
        "SMSERVE_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SMSERVE_ADMIN_ENABLED": "true",
        "SMSERVE_SECURE_COOKIES": "true",
        "SMSERVE_CSRF_TRUSTED_ORIGINS": "https://proxy.example",
        "SMSERVE_NGINX_ACCESS_LOG": str(work / "access.log"),
        "SMSERVE_SQLITE_PATH": str(work / "elsewhere.sqlite3"),
        "SECRET_KEY": "",
        "DJANGO_SECRET_KEY": "a key from the environment, not the state dir",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "7",
        "MODEL_SERVER_TIMEOUT": "3",
        "SMSERVE_NGINX": str(wrapper),
        "SMSERVE_COMPILED_THREADS": "1",
        "SMSERVE_DEFAULT_CONTENT_TYPE": "application/json",
        # Set by serve itself, whatever the caller says.
        "SMSERVE_MME_REGISTRY_DIR": ignored,
        "SMSERVE_READY_FILE": ignored,
        "SMSERVE_GUNICORN_BIND": ignored,
        "SMSERVE_APP_DIR": str(ROOT),
        "DATABASE_URL": "",
    }
    server = ServeProcess(iris_base, work, env=env)
    server.start()
    server.work = work
    yield server
    server.stop()


def csrf(server) -> tuple[str, dict[str, str]]:
    status, headers, body = server.request("GET", "/admin/login/")
    assert status == HTTPStatus.OK
    cookie = headers["set-cookie"]
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)
    return token.decode(), {"cookie": cookie}


def test_security_settings_through_the_real_server(configured):
    """docs/settings.md: `SMSERVE_ALLOWED_HOSTS` (a Host not listed is a JSON 400;
    docs/admin.md, Admin variables: "required with the admin on: the names the container
    is reached by"; "comma-separated (e.g. `models.internal,localhost`)"),
    `SMSERVE_SECURE_COOKIES` (the admin's cookies are `Secure`; docs/reliability.md,
    `security.W012`: "set `SMSERVE_SECURE_COOKIES=true` when the admin is reached over
    HTTPS"; `security.W016`: "the same"), `SMSERVE_CSRF_TRUSTED_ORIGINS` (a login posted
    from a listed origin passes the CSRF check, another origin is refused; docs/admin.md:
    "when the admin is reached through HTTPS on another origin")."""
    server = configured
    status, headers, body = server.request(
        "POST",
        "/invocations",
        b"5.1,3.5,1.4,0.2\n",
        {"Host": "evil.example", "Content-Type": "text/csv"},
    )
    assert (status, headers["content-type"]) == (
        HTTPStatus.BAD_REQUEST,
        "application/json",
    )
    assert json.loads(body)["code"] == "bad_request"
    assert server.invoke(b"5.1,3.5,1.4,0.2\n")[0] == HTTPStatus.OK
    _, headers, _ = server.request("GET", "/admin/login/")
    assert "secure" in headers["set-cookie"].lower().replace(" ", "").split(";")
    for origin, expected in (
        ("https://proxy.example", {HTTPStatus.OK}),
        ("https://elsewhere.example", {HTTPStatus.FORBIDDEN}),
    ):
        token, cookies = csrf(server)
        cookie = cookies["cookie"].split(";")[0]
        status, _, _ = server.request(
            "POST",
            "/admin/login/?next=/admin/",
            f"csrfmiddlewaretoken={token}&username=x&password=y".encode(),
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": cookie,
                "Origin": origin,
            },
        )
        assert status in expected, (origin, status)
    assert "security.W018" not in server.log


def test_debug_is_djangos_debug(iris_base, serve_factory):
    """docs/settings.md: `SMSERVE_DEBUG` is Django's DEBUG: `check --deploy` (which serve
    runs) warns security.W018, and a Host not in `SMSERVE_ALLOWED_HOSTS` gets Django's
    debug page instead of the JSON 400."""
    server = serve_factory(
        iris_base,
        env={"SMSERVE_DEBUG": "true", "SMSERVE_ALLOWED_HOSTS": "127.0.0.1"},
        workers=1,
    )
    status, headers, body = server.request(
        "GET", "/execution-parameters", headers={"Host": "evil.example"}
    )
    assert (status, headers["content-type"]) == (
        HTTPStatus.BAD_REQUEST,
        "text/html; charset=utf-8",
    )
    assert b"DisallowedHost" in body
    assert "security.W018" in server.log


def test_process_settings_through_the_real_server(configured):
    """docs/settings.md: `SMSERVE_NGINX` as a path (that binary runs nginx),
    `SMSERVE_NGINX_ACCESS_LOG` (requests other than /invocations are logged there),
    `SMSERVE_SQLITE_PATH` (the database is that file), `DJANGO_SECRET_KEY` (used when
    `SECRET_KEY` is unset: no key is generated into the state dir),
    `SAGEMAKER_MODEL_SERVER_TIMEOUT` (wins over `MODEL_SERVER_TIMEOUT`: nginx waits 7 s),
    `SMSERVE_COMPILED_THREADS` (accepted; the engine's threads), and the internal
    `SMSERVE_READY_FILE`, `SMSERVE_GUNICORN_BIND`, `SMSERVE_MME_REGISTRY_DIR` (serve sets
    them itself: a caller's values are not used), `SMSERVE_APP_DIR`, and
    `SMSERVE_DEFAULT_CONTENT_TYPE` (a body without Content-Type is read as JSON). Like
    every ``ServeProcess``, it also sets `SAGEMAKER_BIND_TO_PORT` and `SMSERVE_BIND_HOST`
    (the server answers on that loopback port) and `SMSERVE_PYTHON` (serve runs the
    suite's interpreter).
    docs/settings.md, Settings: "`SECRET_KEY` (or `DJANGO_SECRET_KEY`)".
    """
    server, work = configured, configured.work
    assert (work / "wrapper-ran").exists()
    assert server.request("GET", "/ping")[0] == HTTPStatus.OK
    assert "GET /ping" in (work / "access.log").read_text()
    assert (work / "elsewhere.sqlite3").stat().st_size > 0
    assert not (work / "state" / "smserve.sqlite3").exists()
    assert not (work / "state" / "secret_key").exists()
    run_dir = server.run_dir
    rendered = (run_dir / "nginx.conf").read_text()
    assert "proxy_read_timeout 7s;" in rendered
    assert not (work / "not-used").exists()
    status, _, body = server.invoke(
        b"[[5.1, 3.5, 1.4, 0.2]]", None, Accept="application/json"
    )
    assert (status, json.loads(body)) == (HTTPStatus.OK, {"predictions": [0]})
