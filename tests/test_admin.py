"""The admin through the real server (nginx + gunicorn): off unless enabled, login always
required, every page renders real rows, and nothing can be written."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

import pytest

from modelapp.admin import chart_geometry, traffic_chart
from modelapp.management.commands.prepare_serve import create_superuser
from modelapp.models import InvocationStat, TrainedModel
from tests.support.admin import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    AdminClient,
    start_admin_server,
)
from tests.support.servers import ServeProcess, ServerDatabase


@pytest.fixture(scope="module")
def admin_server(
    tmp_path_factory,
) -> Iterator[tuple[ServeProcess, ServerDatabase, str]]:
    server, db, sha = start_admin_server(tmp_path_factory.mktemp("admin"))
    yield server, db, sha
    server.stop()
    db.drop()


@pytest.fixture
def client(admin_server) -> AdminClient:
    client = AdminClient(admin_server[0].port)
    status, headers, _ = client.login(ADMIN_USER, ADMIN_PASSWORD)
    assert status == HTTPStatus.FOUND
    assert headers["Location"] == "/admin/"
    return client


def model_pk(db: ServerDatabase, sha: str) -> int:
    rows = db.query(f"SELECT id FROM modelapp_trainedmodel WHERE sha256 = '{sha}'")
    return rows[0][0]


ADMIN_PAGES = [
    "/admin/",
    "/admin/modelapp/trainedmodel/",
    "/admin/modelapp/trainingrun/",
    "/admin/modelapp/invocationstat/",
]


# --- access ------------------------------------------------------------------------------------
def test_admin_is_off_unless_enabled(server):
    """Without SMSERVE_ADMIN_ENABLED there is no /admin/: a JSON 404 like any unknown path.

    README admin: ``SMSERVE_ADMIN_ENABLED`` "off by default: ``/admin/`` is then a JSON
    404 like any unknown path".
    docs/admin.md, Admin variables: "mounts `/admin/` (off by default: `/admin/` is then
    a JSON 404 like any unknown path)".
    """
    for path in ("/admin/", "/admin/login/"):
        status, headers, body = server.request("GET", path)
        assert status == HTTPStatus.NOT_FOUND
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["code"] == "not_found"


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_every_page_needs_a_login(admin_server, path):
    """Anonymous requests are sent to the login page."""
    status, headers, _ = AdminClient(admin_server[0].port).get(path)
    assert status == HTTPStatus.FOUND
    assert headers["Location"].startswith("/admin/login/")


def test_wrong_password_is_refused(admin_server):
    """A wrong password gets the login form again, not a session."""
    client = AdminClient(admin_server[0].port)
    status, _, page = client.login(ADMIN_USER, "wrong")
    assert status == HTTPStatus.OK
    assert "Please enter the correct username and password" in page
    assert client.get("/admin/")[0] == HTTPStatus.FOUND


# --- pages -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_pages_render_for_a_staff_login(client, path):
    """Every page renders once logged in."""
    status, _, page = client.get(path)
    assert status == HTTPStatus.OK
    assert "smserve" in page


def test_trained_model_list_and_page(client, admin_server):
    """The served model is listed (recorded from its metadata.json at start-up); its page
    shows metrics, hyperparameters, features, classes and the traffic chart.
    docs/admin.md, Admin pages: "model artifact (its sha256)"; "the serving side"; "from
    `model/metadata.json` (or from the estimator itself when there is none)".
    """
    _, db, sha = admin_server
    _, _, listing = client.get("/admin/modelapp/trainedmodel/")
    assert sha[:12] in listing
    assert "sklearn.tree.DecisionTreeClassifier" in listing
    assert "validation:accuracy = " in listing
    status, _, page = client.get(
        f"/admin/modelapp/trainedmodel/{model_pk(db, sha)}/change/"
    )
    assert status == HTTPStatus.OK
    assert sha in page
    assert '<th scope="row">validation:accuracy</th>' in page
    assert '<th scope="row">max_depth</th><td><code>3</code></td>' in page
    assert '<ol class="smserve-list"' in page
    assert "metadata.json" in page
    assert "<svg" in page
    assert 'class="requests"' in page
    assert 'class="errors"' in page


def test_stats_list_shows_requests_and_records(client, admin_server):
    """The stats list has a requests and a records column with the flushed numbers (the
    database's, whatever other tests sent), and the chart above it."""
    totals = admin_server[1].totals()
    assert totals["requests"] >= 45  # start_admin_server's own traffic at least
    _, _, page = client.get("/admin/modelapp/invocationstat/")
    assert "column-requests" in page
    assert "column-records" in page
    requests = [int(v) for v in re.findall(r'class="field-requests">(\d+)<', page)]
    records = [int(v) for v in re.findall(r'class="field-records">(\d+)<', page)]
    assert sum(requests) == totals["requests"]
    assert sum(records) == totals["records"]
    assert f"{totals['requests']} in all" in page


def test_training_run_list_and_page(client, admin_server):
    """The training run that produced the model is listed as succeeded, with its rows.
    docs/admin.md, Admin pages: "`train` run"; "`manage.py train`"; "when a database
    answers".
    """
    _, db, sha = admin_server
    _, _, listing = client.get("/admin/modelapp/trainingrun/?status__exact=succeeded")
    assert "succeeded" in listing
    assert 'class="field-train_rows">120<' in listing
    run_id = db.query(
        f"SELECT id FROM modelapp_trainingrun WHERE model_sha256 = '{sha}'"
    )[0][0]
    _, _, page = client.get(f"/admin/modelapp/trainingrun/{run_id}/change/")
    assert '<th scope="row">max_depth</th><td><code>3</code></td>' in page
    assert '<th scope="row">train.rows</th><td><code>120</code></td>' in page


def test_search_and_filters(client, admin_server):
    """Search by checksum finds the model; a filter that matches nothing lists nothing."""
    sha = admin_server[2]
    _, _, page = client.get(f"/admin/modelapp/trainedmodel/?q={sha[:10]}")
    assert 'class="field-__str__"><a href' in page
    assert sha[:12] in page
    _, _, page = client.get("/admin/modelapp/trainedmodel/?q=no-such-model")
    assert "0 results" in page
    assert sha[:12] not in page
    _, _, page = client.get("/admin/modelapp/trainingrun/?status__exact=failed")
    assert "0 training runs" in page


# --- no writes -------------------------------------------------------------------------------
def test_no_write_actions(client, admin_server):
    """No add link, no actions, no save or delete button; the add, change-by-POST and
    delete URLs are refused."""
    _, db, sha = admin_server
    pk = model_pk(db, sha)
    for path in ADMIN_PAGES[1:]:
        _, _, page = client.get(path)
        assert not re.search(r"/admin/modelapp/\w+/add/", page)
        assert 'name="action"' not in page
    _, _, page = client.get(f"/admin/modelapp/trainedmodel/{pk}/change/")
    assert 'name="_save"' not in page
    assert "deletelink" not in page
    assert client.get("/admin/modelapp/trainedmodel/add/")[0] == HTTPStatus.FORBIDDEN
    assert (
        client.get(f"/admin/modelapp/trainedmodel/{pk}/delete/")[0]
        == HTTPStatus.FORBIDDEN
    )
    token = client.csrf_token(f"/admin/modelapp/trainedmodel/{pk}/change/")
    status, _, _ = client.request(
        "POST",
        f"/admin/modelapp/trainedmodel/{pk}/change/",
        {"csrfmiddlewaretoken": token, "estimator": "changed"},
    )
    assert status == HTTPStatus.FORBIDDEN
    assert db.query(f"SELECT estimator FROM modelapp_trainedmodel WHERE id = {pk}") == [
        ("sklearn.tree.DecisionTreeClassifier",)
    ]


def test_no_users_groups_or_lockout_pages(client):
    """Only smserve's tables: no page adds a user, changes a password or lists groups or
    axes' attempts (logins come from DJANGO_SUPERUSER_* and createsuperuser)."""
    for path in (
        "/admin/auth/user/add/",
        "/admin/auth/user/",
        "/admin/auth/group/",
        "/admin/auth/group/add/",
        "/admin/axes/accessattempt/",
        "/admin/axes/accesslog/",
    ):
        status, _, _ = client.get(path)
        assert status == HTTPStatus.NOT_FOUND, path
    _, _, page = client.get("/admin/")
    tables = set(re.findall(r'<a href="/admin/(\w+/\w+)/"', page))
    assert tables == {
        "modelapp/trainedmodel",
        "modelapp/trainingrun",
        "modelapp/invocationstat",
        "modelapp/modelevent",
    }


def test_static_files_are_served_compressed(client):
    """The admin's CSS comes from whitenoise (hashed name, gzip when asked)."""
    _, _, page = client.get("/admin/")
    css = re.search(r'href="(/static/admin/css/base\.[0-9a-f]+\.css)"', page)
    assert css, "no hashed stylesheet link"
    status, headers, body = client.request(
        "GET", css.group(1), headers={"Accept-Encoding": "gzip"}
    )
    assert status == HTTPStatus.OK
    assert headers["Content-Type"].startswith("text/css")
    assert headers["Content-Encoding"] == "gzip"


# --- in-process ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_superuser_creation_is_idempotent(monkeypatch):
    """DJANGO_SUPERUSER_* creates the login once; a second start leaves it (and its
    password) as it is."""
    from django.contrib.auth import get_user_model

    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "boss")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "first-password-1")
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "boss@example.com")
    create_superuser()
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "second-password-2")
    create_superuser()
    user = get_user_model().objects.get()
    assert user.is_superuser
    assert user.is_staff
    assert user.check_password("first-password-1")


@pytest.mark.django_db
def test_no_superuser_without_the_variables(monkeypatch):
    """Without DJANGO_SUPERUSER_USERNAME and _PASSWORD no user is made."""
    from django.contrib.auth import get_user_model

    monkeypatch.delenv("DJANGO_SUPERUSER_USERNAME", raising=False)
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "x-password-3")
    create_superuser()
    assert not get_user_model().objects.exists()


@pytest.mark.django_db
def test_traffic_chart_bars_per_minute():
    """One bar per minute with traffic, an error bar where errors were, and nothing
    outside the last hours."""
    model = TrainedModel.objects.create(sha256="c" * 64)
    now = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
    minute = now.replace(second=0)
    InvocationStat.objects.create(model=model, minute=minute, requests=10, errors_5xx=2)
    InvocationStat.objects.create(
        model=model, minute=minute - timedelta(minutes=5), requests=4
    )
    InvocationStat.objects.create(
        model=model, minute=minute - timedelta(hours=5), requests=99
    )
    svg = traffic_chart(InvocationStat.objects.all(), hours=3, now=now)
    assert svg.count('class="requests"') == 2
    assert svg.count('class="errors"') == 1
    assert "12:00 UTC: 10 requests, 0 4xx, 2 5xx" in svg
    assert "14 in all" in svg
    assert "99 requests" not in svg


@pytest.mark.django_db
def test_traffic_chart_without_traffic():
    """No traffic is an empty chart, not an error."""
    svg = traffic_chart(InvocationStat.objects.all())
    assert "<svg" in svg
    assert 'class="requests"' not in svg
    assert "0 in all" in svg


def test_chart_geometry_is_drawn_without_a_database():
    """The chart's drawing is a pure function of the counts: the busiest minute fills
    the plot, its errors a share of it, and there is a tick per hour."""
    start = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    busy = {"requests": 4, "errors_4xx": 1, "errors_5xx": 0}
    drawing = chart_geometry({start + timedelta(minutes=30): busy}, start, hours=1)
    (bar,) = drawing["bars"]
    assert float(bar[3]) == drawing["plot_h"]  # the peak's height is the plot's
    assert float(bar[6]) == drawing["plot_h"] / 4  # 1 error in 4 requests
    assert bar[4] == "10:30 UTC: 4 requests, 1 4xx, 0 5xx"
    assert drawing["totals"] == {"requests": 4, "errors": 1}
    assert [label for _, label in drawing["ticks"]] == ["10:00", "11:00"]
