"""The speed tricks (``smserve/fastpaths.py``): each can be turned off, the server then
answers the same, and none of them is installed outside the serving processes."""

from __future__ import annotations

import json
import re
from http import HTTPStatus

import pytest
from django.core import checks, signals
from django.db import close_old_connections, reset_queries
from django.test import override_settings

from smserve import fastpaths

BODY = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"


def test_django_is_stock_outside_the_serving_processes():
    """Loading the app (pytest, train, migrate) leaves Django's per-request receivers
    connected: only smserve/wsgi.py installs the request_signals trick."""
    started, _ = signals.request_started._live_receivers(None)
    finished, _ = signals.request_finished._live_receivers(None)
    assert reset_queries in started
    assert close_old_connections in started
    assert close_old_connections in finished


def test_unknown_fast_path_name_fails_the_checks():
    from django.conf import settings

    off = frozenset({"numeric_csv", "warp_drive"})
    with override_settings(SMSERVE={**settings.SMSERVE, "FAST_PATHS_OFF": off}):
        errors = checks.run_checks()
        assert fastpaths.enabled("numeric_csv") is False
        assert fastpaths.enabled("plain_response") is True
    assert [e.id for e in errors if e.id.startswith("modelapp")] == ["modelapp.E005"]
    assert "warp_drive" in errors[0].msg
    with pytest.raises(ValueError, match="Unknown fast path"):
        fastpaths.enabled("warp_drive")


@pytest.mark.server
def test_every_trick_off_answers_the_same(serve_factory, server, iris_base):
    """SMSERVE_FAST_PATHS_OFF=all: gunicorn's sync workers (with only their own errors
    in JSON, which is no speed trick), the app writes the invocation lines, and every
    answer is byte for byte what the tuned server says."""
    plain = serve_factory(iris_base, env={"SMSERVE_FAST_PATHS_OFF": "all"})
    for content_type, accept in (
        ("text/csv", "text/csv"),
        ("text/csv", "application/json"),
        ("application/json", "application/jsonlines"),
    ):
        body = BODY if content_type == "text/csv" else b"[[5.1,3.5,1.4,0.2]]"
        tuned = server.invoke(body, content_type, Accept=accept)
        stock = plain.invoke(body, content_type, Accept=accept)
        assert stock[0] == tuned[0] == HTTPStatus.OK
        assert stock[2] == tuned[2]
        assert stock[1]["content-type"] == tuned[1]["content-type"] == accept
    status, _, error = plain.invoke(b"1,2\n", "text/csv", Accept="application/json")
    assert status == HTTPStatus.BAD_REQUEST
    assert json.loads(error)["code"] == "invalid_input"
    log = plain.log
    assert "Using worker: smserve.workers.SyncWorker" in log
    assert re.search(
        r"INFO \[\d+\] modelapp.invocations: POST /invocations 200 records=2 ", log
    )
    assert "[nginx] modelapp.invocations" not in log
