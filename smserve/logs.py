"""Log lines as text or JSON (``SMSERVE_LOG_FORMAT``), for every process ``serve`` runs.

| writer | text (default) | json |
|---|---|---|
| Python: smserve, Django, ``prepare_serve`` | ``LOGGING`` in ``smserve/settings.py`` | ``JSONFormatter`` |
| gunicorn's error and access logs | gunicorn's own format | ``smserve/gunicorn_logger.py``, ``JSONFormatter`` |
| nginx's invocation and access lines | ``log_format invocation`` / ``combined`` | ``log_format ... escape=json`` (``docker/nginx.conf``); the invocation lines to ``serve``'s stderr as fd 3 |
| nginx's error log (it has no JSON form) | as nginx writes it | each line wrapped by ``python -m smserve.logs nginx``, which reads nginx's stderr |
| ``serve``'s own lines | ``date serve: message`` | a JSON object printed by ``serve`` |

A JSON line is one object: ``timestamp`` (ISO 8601, UTC, milliseconds), ``level``,
``logger``, ``message``, ``process``, and whatever fields the call passed as
``extra={FIELDS: {...}}`` (an invocation's: ``modelapp/invocation_log.py``); an exception
adds ``exception``. ``docs/logs.md`` lists every field.

Our own formatter rather than python-json-logger: thirty lines, no dependency in the
image, and the field names and the merging of ``FIELDS`` are exactly what the docs
promise. Nothing here imports Django or gunicorn: gunicorn's logger and the nginx wrapper use it
before (or without) Django.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, BinaryIO

# The ``extra`` key whose dict becomes top-level fields of a JSON line.
FIELDS = "fields"
FORMATS = ("text", "json")
# One encoder for every line (json.dumps with an argument builds a new one per call);
# ASCII only, so no line separator of a message's reaches the line.
_encode = json.JSONEncoder(default=str).encode
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def timestamp(epoch: float) -> str:
    """``2026-12-07T19:05:00.123+00:00``: the form every JSON line uses."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line (non-ASCII and line separators escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _encode(entry)


def formatter_config(log_format: str) -> dict[str, Any]:
    """The ``formatters`` entry of a ``dictConfig`` for ``log_format``."""
    if log_format == "json":
        return {"()": "smserve.logs.JSONFormatter"}
    return {"format": TEXT_FORMAT}


def django_logging(log_format: str, level: str) -> dict[str, Any]:
    """Django's ``LOGGING``: every record to stderr in ``log_format``; the EMF lines
    (``modelapp/emf.py``) always as JSON, whatever the level, for CloudWatch to read."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": formatter_config(log_format),
            "json": formatter_config("json"),
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
            "emf": {"class": "logging.StreamHandler", "formatter": "json"},
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # Our 4xx/5xx are logged once by modelapp.invocations; Django's duplicate goes.
            "django.request": {"level": "ERROR"},
            "django.server": {"level": "WARNING"},
            "modelapp.emf": {"handlers": ["emf"], "level": "INFO", "propagate": False},
        },
    }


# --- nginx's error log: python -m smserve.logs nginx < nginx's stderr ----------------
# "2026/12/07 19:05:00 [error] 41#41: *3 message", or nginx's start-up messages,
# "nginx: [emerg] message".
_NGINX_ERROR = re.compile(
    rb"^(?:(?P<date>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) |nginx: )\[(?P<level>[a-z]+)\] "
    rb"(?:(?P<pid>\d+)#\d+: )?(?P<message>.*)$",
    re.DOTALL,
)
_NGINX_LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "notice": "INFO",
    "warn": "WARNING",
    "error": "ERROR",
    "crit": "CRITICAL",
    "alert": "CRITICAL",
    "emerg": "CRITICAL",
}


def nginx_line(line: bytes) -> bytes:
    """A line nginx wrote to its stderr, as one JSON line: its access lines are JSON
    already (``log_format ... escape=json``) and pass as they are; an error line is
    wrapped, its level and pid kept."""
    line = line.rstrip(b"\r\n")
    if line.startswith(b"{") and line.endswith(b"}"):
        return line + b"\n"
    match = _NGINX_ERROR.match(line)
    entry: dict[str, Any] = {
        "timestamp": timestamp(time.time()),
        "level": "WARNING",
        "logger": "nginx.error",
        "message": line.decode(errors="replace"),
    }
    if match:
        if match["date"]:
            # nginx writes its local time, to the second.
            local = time.strptime(match["date"].decode(), "%Y/%m/%d %H:%M:%S")
            entry["timestamp"] = timestamp(time.mktime(local))
        entry["level"] = _NGINX_LEVELS.get(match["level"].decode(), "WARNING")
        entry["message"] = match["message"].decode(errors="replace")
        if match["pid"]:
            entry["process"] = int(match["pid"])
    return _encode(entry).encode() + b"\n"


def relay_nginx(source: BinaryIO, sink: BinaryIO) -> None:
    """Every line of ``source`` to ``sink`` as JSON, each in one write, until EOF."""
    for line in source:
        sink.write(nginx_line(line))
        sink.flush()


def main(argv: list[str]) -> int:
    if argv != ["nginx"]:
        print("usage: python -m smserve.logs nginx", file=sys.stderr)
        return 2
    relay_nginx(sys.stdin.buffer, sys.stderr.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
