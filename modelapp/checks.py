"""System checks: a misconfigured SMSERVE fails ``manage.py check`` (run by ``serve``), not
the first request."""

import ipaddress
from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from modelapp import conf
from modelapp.parsers import BaseBatchParser
from modelapp.predictors import BasePredictor
from modelapp.renderers import BaseBatchRenderer
from smserve.fastpaths import TRICKS


@register()
def check_smserve_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors = []
    for check_id, setting, base in (
        ("modelapp.E001", "PARSERS", BaseBatchParser),
        ("modelapp.E002", "RENDERERS", BaseBatchRenderer),
        ("modelapp.E003", "PREDICTORS", BasePredictor),
    ):
        try:
            conf.import_classes(setting, base)
        except ImproperlyConfigured as exc:
            errors.append(
                Error(
                    str(exc),
                    hint=f"Fix SMSERVE[{setting!r}] in smserve/settings.py.",
                    id=check_id,
                )
            )
    unknown = sorted(set(conf.get("FAST_PATHS_OFF")) - {"all", *TRICKS})
    if unknown:
        errors.append(
            Error(
                f"SMSERVE_FAST_PATHS_OFF names unknown fast path(s) {', '.join(unknown)}.",
                hint=f"Known: all, {', '.join(TRICKS)} (smserve/fastpaths.py).",
                id="modelapp.E005",
            )
        )
    if not errors:
        media_types = [
            cls.media_type for cls in conf.import_classes("PARSERS", BaseBatchParser)
        ]
        default = conf.get("DEFAULT_CONTENT_TYPE")
        if default not in media_types:
            errors.append(
                Error(
                    f"The default Content-Type {default!r} has no parser.",
                    hint=f"Set SMSERVE_DEFAULT_CONTENT_TYPE to one of {', '.join(media_types)}.",
                    id="modelapp.E004",
                )
            )
    return errors


@register(deploy=True)
def check_admin_hosts(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """With the admin on, the Host header must be checked: it shares its origin with
    the inference API, and a page a colleague visits could otherwise reach both by DNS
    rebinding."""

    if not conf.get("ADMIN_ENABLED") or "*" not in settings.ALLOWED_HOSTS:
        return []
    return [
        Error(
            "The admin is on (SMSERVE_ADMIN_ENABLED) and any Host header is accepted.",
            hint=(
                "Set SMSERVE_ALLOWED_HOSTS to the names the container is reached by, "
                "comma-separated (e.g. models.internal,localhost), without '*'."
            ),
            id="modelapp.E006",
        )
    ]


@register(deploy=True)
def check_debug_stays_local(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """DEBUG turns every 500 and 404 into a page with the traceback, the settings and
    the request's headers: only for a server that listens on loopback."""
    host = conf.get("HOST")
    if not settings.DEBUG or _is_loopback(host):
        return []
    return [
        Error(
            f"SMSERVE_DEBUG is on and the server listens on {host}: every caller "
            "would see tracebacks, settings and headers.",
            hint="Unset SMSERVE_DEBUG, or set SMSERVE_BIND_HOST=127.0.0.1.",
            id="modelapp.E011",
        )
    ]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
