"""Who is logging in to the admin, and when they are locked out (django-axes): the
client's IP address, and the failures counted for a login attempt."""

from __future__ import annotations

from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, from nothing the client can forge.

    Behind our nginx, gunicorn listens on a unix socket (``REMOTE_ADDR`` is empty) and
    nginx sets ``X-Real-IP`` to the address of the connection it accepted, replacing
    whatever the client sent. Without nginx, gunicorn takes the port itself and
    ``REMOTE_ADDR`` is the connection's address; ``X-Real-IP`` and ``X-Forwarded-For``
    are then the client's own words and are ignored.
    """
    return request.META.get("REMOTE_ADDR") or request.META.get("HTTP_X_REAL_IP")


class LockoutHandler(AxesDatabaseHandler):
    """Two limits where axes has one: ``AXES_FAILURE_LIMIT`` failures of one username
    from one IP, or ``AXES_IP_FAILURE_LIMIT`` failures of any usernames from one IP.

    ``AXES_LOCKOUT_PARAMETERS`` lists the pair, then the IP alone; axes compares the
    larger count with its one limit, so the IP's count is scaled to it here.
    """

    def get_failures(self, request: HttpRequest, credentials: Any = None) -> int:
        pair, ip = (
            attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0
            for attempts in self.get_user_attempts(request, credentials)
        )
        scaled = ip * settings.AXES_FAILURE_LIMIT // settings.AXES_IP_FAILURE_LIMIT
        return max(pair, scaled)
