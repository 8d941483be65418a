"""System checks: a misconfigured SMSERVE fails ``manage.py check`` (run by ``serve``), not
the first request."""

from typing import Any

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
    from django.conf import settings

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
