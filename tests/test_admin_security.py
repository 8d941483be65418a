"""The admin locked down: login throttling (django-axes) on the client's real address,
Django's password validators on the superuser ``serve`` creates, security headers and
cookie flags, and ``check --deploy`` clean with the admin on (and its Host checked)."""

from __future__ import annotations

import os
import subprocess
from http import HTTPStatus

import pytest
from django.core.management.base import CommandError

from modelapp.management.commands.prepare_serve import create_superuser
from modelapp.middleware import ADMIN_HEADERS
from tests.support import ROOT
from tests.support.admin import AdminClient
from tests.support.faults import UnwaitedServe
from tests.support.servers import PYTHON, ServeProcess, ServerDatabase

USER, PASSWORD = "operator", "a-long-operator-passphrase-7"
DEPLOY_KEY = "k" * 20 + "-a-random-enough-secret-key-for-the-check-0123456789"
FAILURE_LIMIT = 5  # settings.AXES_FAILURE_LIMIT
IP_FAILURE_LIMIT = 20  # settings.AXES_IP_FAILURE_LIMIT
SANDBOX = "sandbox; default-src 'none'"  # every answer but the admin's


@pytest.fixture(scope="module")
def locked_server(iris_base, tmp_path_factory):
    """The iris tree served with the admin on and a superuser, on its own database."""
    work = tmp_path_factory.mktemp("admin_security")
    db = ServerDatabase.create(work / "db")
    server = ServeProcess(
        iris_base,
        work,
        env={
            **db.env,
            "SMSERVE_ADMIN_ENABLED": "1",
            "SMSERVE_ALLOWED_HOSTS": "127.0.0.1",
            "DJANGO_SUPERUSER_USERNAME": USER,
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "operator@example.com",
            "SMSERVE_STATIC_ROOT": str(work / "static"),
        },
    )
    server.start()
    yield server
    server.stop()
    db.drop()


@pytest.mark.server
def test_admin_headers_come_from_the_app_with_or_without_nginx(
    iris_base, serve_factory
):
    """The admin's Content-Security-Policy and Permissions-Policy are the app's own: with
    gunicorn alone on the port (no nginx) the login page carries them too, and an
    inference answer has the sandbox instead."""
    server = serve_factory(
        iris_base,
        env={
            "SMSERVE_NGINX": "off",
            "SMSERVE_ADMIN_ENABLED": "1",
            "SMSERVE_ALLOWED_HOSTS": "127.0.0.1",
        },
    )
    assert "nginx not found" in server.log
    status, headers, _ = AdminClient(server.port).get("/admin/login/")
    assert status == HTTPStatus.OK
    assert (
        headers["Content-Security-Policy"] == ADMIN_HEADERS["Content-Security-Policy"]
    )
    assert headers["Permissions-Policy"] == ADMIN_HEADERS["Permissions-Policy"]
    status, headers, _ = server.request("GET", "/ping")
    assert status == HTTPStatus.OK
    assert headers["content-security-policy"] == SANDBOX
    assert "permissions-policy" not in headers


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.server
def test_admin_pages_carry_security_headers_and_strict_cookies(locked_server):
    """The login page forbids framing, sniffing, foreign scripts and caching; its CSRF
    cookie is HttpOnly and SameSite=Strict, and so is the session cookie after login.
    docs/settings.md, Settings: "`SMSERVE_ADMIN_ENABLED`";
    "`DJANGO_SUPERUSER_USERNAME`"; "`_PASSWORD`"; "`_EMAIL`"; "`SMSERVE_STATIC_ROOT`".
    """
    client = AdminClient(locked_server.port)
    status, headers, _ = client.get("/admin/login/")
    assert status == HTTPStatus.OK
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["Permissions-Policy"] == ADMIN_HEADERS["Permissions-Policy"]
    assert "no-store" in headers["Cache-Control"]
    csrf = [c for c in headers.get_all("Set-Cookie") if c.startswith("csrftoken=")]
    assert csrf
    assert "HttpOnly" in csrf[0]
    assert "SameSite=Strict" in csrf[0]
    status, headers, _ = client.login(USER, PASSWORD)
    assert status == HTTPStatus.FOUND
    session = [c for c in headers.get_all("Set-Cookie") if c.startswith("sessionid=")]
    assert session
    assert "HttpOnly" in session[0]
    assert "SameSite=Strict" in session[0]


def fail_logins(client: AdminClient, usernames: list[str], **headers: str) -> int:
    """A failed login for each of ``usernames``; the last status."""
    for username in usernames:
        token = client.csrf_token("/admin/login/")
        status, _, page = client.request(
            "POST",
            "/admin/login/",
            {"csrfmiddlewaretoken": token, "username": username, "password": "wrong"},
            headers=headers,
        )
        assert status in (HTTPStatus.OK, HTTPStatus.TOO_MANY_REQUESTS), page
    return status


@pytest.mark.server
def test_repeated_failures_lock_the_client_out_whatever_it_claims(locked_server):
    """Failed logins, each claiming another address in X-Real-IP and X-Forwarded-For,
    still count against the one real address: after the limit even the right password
    is refused with 429 from there, and /invocations is untouched."""
    client = AdminClient(locked_server.port)
    for attempt in range(FAILURE_LIMIT):
        spoofed = f"203.0.113.{attempt + 1}"
        status = fail_logins(
            client, [USER], **{"X-Real-IP": spoofed, "X-Forwarded-For": spoofed}
        )
    assert status == HTTPStatus.TOO_MANY_REQUESTS
    status, _, page = client.login(USER, PASSWORD)
    assert status == HTTPStatus.TOO_MANY_REQUESTS
    assert "locked" in page.lower()
    status, _, _ = locked_server.invoke(b"5.1,3.5,1.4,0.2\n")
    assert status == HTTPStatus.OK


@pytest.mark.server
def test_a_locked_username_still_logs_in_from_elsewhere(locked_server):
    """The lockout is on the username and address together: failures for the known
    login from one address do not lock its owner out at another."""
    attacker = AdminClient(locked_server.port, source="127.0.0.2")
    assert fail_logins(attacker, [USER] * FAILURE_LIMIT) == (
        HTTPStatus.TOO_MANY_REQUESTS
    )
    assert attacker.login(USER, PASSWORD)[0] == HTTPStatus.TOO_MANY_REQUESTS
    status, headers, _ = AdminClient(locked_server.port, source="127.0.0.4").login(
        USER, PASSWORD
    )
    assert status == HTTPStatus.FOUND
    assert headers["Location"] == "/admin/"


@pytest.mark.server
def test_one_address_trying_many_usernames_is_locked_out(locked_server):
    """AXES_IP_FAILURE_LIMIT failures under ever new usernames lock the address out,
    the right password included; other addresses are untouched."""
    client = AdminClient(locked_server.port, source="127.0.0.3")
    guesses = [f"guess{n}" for n in range(IP_FAILURE_LIMIT - 1)]
    assert fail_logins(client, guesses) == HTTPStatus.OK  # one under the limit
    assert fail_logins(client, ["one-more"]) == HTTPStatus.TOO_MANY_REQUESTS
    assert client.login(USER, PASSWORD)[0] == HTTPStatus.TOO_MANY_REQUESTS
    other = AdminClient(locked_server.port, source="127.0.0.5")
    assert other.login(USER, PASSWORD)[0] == HTTPStatus.FOUND


def test_check_deploy_is_clean_with_the_admin_on(tmp_path):
    """``manage.py check --deploy`` reports nothing, warnings included, with the admin
    on (the HTTPS-only checks silenced in settings are the README's list)."""
    done = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SMSERVE_ADMIN_ENABLED="1",
        SMSERVE_ALLOWED_HOSTS="models.internal",
        SMSERVE_STATE_DIR=str(tmp_path),
        SECRET_KEY=DEPLOY_KEY,
    )
    assert done.returncode == 0, done.stderr
    assert "System check identified no issues" in done.stdout


@pytest.mark.parametrize("hosts", ["", "*", "models.internal,*"])
def test_check_deploy_fails_with_the_admin_on_and_any_host(tmp_path, hosts):
    """With the admin on, every Host accepted (SMSERVE_ALLOWED_HOSTS unset, or '*')
    stops ``serve``'s ``check --deploy``: DNS rebinding would give a web page the
    admin's origin, and the inference API's."""
    done = manage(
        "check",
        "--deploy",
        "--fail-level",
        "ERROR",
        SMSERVE_ADMIN_ENABLED="1",
        SMSERVE_ALLOWED_HOSTS=hosts,
        SMSERVE_STATE_DIR=str(tmp_path),
        SECRET_KEY=DEPLOY_KEY,
    )
    assert done.returncode == 1
    assert "modelapp.E006" in done.stderr
    assert "Set SMSERVE_ALLOWED_HOSTS" in done.stderr


@pytest.mark.server
def test_serve_stops_at_its_deploy_check_with_the_admin_on_and_any_host(
    tmp_path, iris_base
):
    """The real serve, admin on, every Host accepted: it exits before it listens,
    naming the check. docs/admin.md, Admin variables, `SMSERVE_ALLOWED_HOSTS`: "left at
    `*`"; "`serve` stops at its deploy check (`modelapp.E006`)".
    """
    server = UnwaitedServe(
        iris_base,
        tmp_path,
        env={
            "SMSERVE_ADMIN_ENABLED": "true",
            "SMSERVE_ALLOWED_HOSTS": "*",
            "SECRET_KEY": DEPLOY_KEY,
        },
    ).start()
    try:
        code = server.proc.wait(60)
    finally:
        server.stop()
    assert code != 0, server.log
    assert "modelapp.E006" in server.log
    assert "Set SMSERVE_ALLOWED_HOSTS" in server.log


def test_check_deploy_allows_any_host_without_the_admin(tmp_path):
    done = manage(
        "check",
        "--deploy",
        "--fail-level",
        "ERROR",
        SMSERVE_ADMIN_ENABLED="0",
        SMSERVE_ALLOWED_HOSTS="",
        SMSERVE_STATE_DIR=str(tmp_path),
        SECRET_KEY=DEPLOY_KEY,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short-1", "too short"),
        ("password1234", "too common"),
        ("123456789012345", "entirely numeric"),
        ("operator-example", "too similar to the"),
    ],
)
def test_weak_superuser_password_is_refused(monkeypatch, password, reason):
    """Django's validators judge DJANGO_SUPERUSER_PASSWORD (createsuperuser --noinput
    would not): a weak one is refused with their reasons, and no user is made."""
    from django.contrib.auth import get_user_model

    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", USER)
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", password)
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "operator@example.com")
    with pytest.raises(
        CommandError, match=f"DJANGO_SUPERUSER_PASSWORD is refused.*{reason}"
    ):
        create_superuser()
    assert not get_user_model().objects.exists()


def test_weak_superuser_password_stops_serve_start_up(tmp_path):
    """Through ``prepare_serve`` (what ``serve`` runs first): exit 1 and the reason on
    stderr, before any server starts."""
    done = manage(
        "prepare_serve",
        str(tmp_path / "run"),
        DATABASE_URL="",
        SMSERVE_STATE_DIR=str(tmp_path / "state"),
        SMSERVE_ADMIN_ENABLED="1",
        SMSERVE_ALLOWED_HOSTS="localhost",
        DJANGO_SUPERUSER_USERNAME="admin",
        DJANGO_SUPERUSER_PASSWORD="admin",
        DJANGO_SUPERUSER_EMAIL="admin@example.com",
    )
    assert done.returncode == 1
    assert "DJANGO_SUPERUSER_PASSWORD is refused for the admin login 'admin'" in (
        done.stderr
    )
    assert "This password is too short" in done.stderr
    assert not (tmp_path / "run" / "nginx.conf").exists()
