"""gunicorn's logger writing JSON lines (``SMSERVE_LOG_FORMAT=json``, ``smserve/logs.py``).

gunicorn's own handlers, their formatter replaced: its error log, and its access log when
someone turns it on (``GUNICORN_CMD_ARGS="--access-logfile -"``). Not ``logconfig_dict``:
with any logging configuration gunicorn counts its access log as on and builds an access
record for every request, even with nobody to write it; measured, that made JSON mode cost
the workers a third more CPU per request than text.
"""

from __future__ import annotations

from typing import Any

from gunicorn import glogging

from smserve.logs import JSONFormatter


class JSONLogger(glogging.Logger):
    """``glogging.Logger`` with every handler it sets up writing JSON."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JSONFormatter())
