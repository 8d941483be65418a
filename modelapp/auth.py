"""Who is logging in to the admin: the client's IP address for django-axes' lockout."""

from __future__ import annotations

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
