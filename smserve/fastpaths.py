"""The serving process's speed tricks, and the protocol between nginx and the app.

Every trick below changes a library's default behaviour, so each has a name and a switch:
``SMSERVE_FAST_PATHS_OFF=name,name`` (or ``all``) leaves them out, to rule one out when
debugging something strange. They are installed only where they pay, in the serving
processes (gunicorn's master before the fork, and its workers); ``manage.py train``,
``migrate`` and the test process run stock Django. The measured gains are in
``bench/RESULTS.md`` (the section named in brackets); comments in the code point here
instead of quoting figures.

| name | what it does | where |
|---|---|---|
| ``exclusive_accept`` | gunicorn's sync worker, but idle workers wait in ``epoll`` with ``EPOLLEXCLUSIVE``: one wakes per connection, not all [round 3] | ``smserve/workers.py``, ``docker/gunicorn.conf.py`` |
| ``request_signals`` | Django's per-request DB/cache receivers disconnected until a thread opens a DB connection [round 2] | ``modelapp/request_signals.py``, installed by ``install()`` from ``smserve/wsgi.py`` |
| ``inference_middleware`` | views marked ``inference = True`` skip the admin's middleware layers [round 2] | ``modelapp/middleware.py`` |
| ``tree_check_input`` | single decision trees predict with ``check_input=False`` on the float32 batch our checks made [round 3] | ``modelapp/predictors/sklearn.py`` |
| ``numeric_csv`` | unquoted numeric CSV parsed by orjson + numpy, no Python per value [round 1] | ``modelapp/parsers.py`` |
| ``plain_response`` | predictions rendered into a plain ``HttpResponse``, not DRF's ``Response`` [round 3] | ``modelapp/views.py`` |
| ``gc_freeze`` | the preloaded model moved out of the garbage collector's reach before the fork, so workers do not copy its pages [round 1] | ``docker/gunicorn.conf.py`` |
| ``nginx_log`` | nginx, not Python's logging, writes the line of each successful invocation [round 3] | ``docker/serve``, ``modelapp/invocation_log.py`` |

The nginx <-> app protocol (``docker/serve`` sets it up; these are its only sites):

- **Ready file** (``SMSERVE_READY_FILE`` = ``RUN_DIR/ready.json``): nginx answers
  ``GET /ping`` with 200 from this file, so health checks never queue behind busy workers;
  without it nginx proxies ``/ping`` to the app, which answers 503 with the reason.
  gunicorn's master writes it (``write_ready_file``, from ``when_ready`` in
  ``docker/gunicorn.conf.py``) once its socket is bound and the model is loaded: a 200
  promises that an invocation reaches the app. In multi-model mode it is written once
  the socket is bound: /ping then means "server alive". ``docker/nginx.conf`` names the same path.
- **gunicorn's socket** (``SMSERVE_GUNICORN_BIND`` = ``unix:RUN_DIR/gunicorn.sock``):
  nginx proxies to it; ``serve`` starts nginx once it exists.
- **Invocation log** (``SMSERVE_INVOCATION_LOG`` = ``nginx`` when ``serve`` runs nginx and
  nginx can write to stderr): the view sends the record count in ``X-Smserve-Records``
  (``modelapp.invocation_log.RECORDS_HEADER``); nginx logs it with ``log_format
  invocation`` and hides the header from the client (``proxy_hide_header``). With JSON
  logs the view also sends the model and the engine, and the app marks an error it
  logged itself (``X-Smserve-Logged``), which nginx then does not log (``log_format
  invocation_json``; ``modelapp/invocation_log.py``), writing its lines to fd 3 (``serve``'s
  stderr) while its own stderr goes through the filter of ``smserve/logs.py``.
- **Limits**: nginx's ``client_max_body_size`` and ``proxy_read_timeout`` are rendered
  from the same settings the app uses (``prepare_serve``), so the two cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelapp import conf, request_signals
from modelapp.files import atomic_write

TRICKS = (
    "exclusive_accept",
    "request_signals",
    "inference_middleware",
    "tree_check_input",
    "numeric_csv",
    "plain_response",
    "gc_freeze",
    "nginx_log",
)


def enabled(name: str) -> bool:
    """Whether trick ``name`` is on (``SMSERVE['FAST_PATHS_OFF']`` does not name it)."""
    if name not in TRICKS:
        raise ValueError(f"Unknown fast path {name!r}; known: {', '.join(TRICKS)}.")
    return conf.fast_path(name)


def install() -> None:
    """The tricks that change Django's global state, for a serving process only."""
    if enabled("request_signals"):
        request_signals.install()


def write_ready_file(registry: Any) -> None:
    """Write the ready file nginx answers /ping from (see the protocol above); nothing
    for a model that did not load, or when ``serve`` asked for no file."""
    target = conf.get("READY_FILE")
    if not target:
        return
    if conf.get("MULTI_MODEL"):
        # /ping says the server is alive; each model's load answers for itself.
        body = json.dumps({"status": "alive"}).encode()
    elif registry.loaded is None:
        return
    else:
        body = json.dumps(
            {"status": "ready", "sha256": registry.loaded.sha256}
        ).encode()
    atomic_write(Path(target), body)
