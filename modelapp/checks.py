"""System checks: a misconfigured SMSERVE fails ``manage.py check`` (run by ``serve``), not
the first request."""

from typing import Any

from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from modelapp import conf


@register()
def check_smserve_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors = []
    for check_id, loader, setting in (
        ("modelapp.E001", conf.parser_classes, "PARSERS"),
        ("modelapp.E002", conf.renderer_classes, "RENDERERS"),
        ("modelapp.E003", conf.predictor_classes, "PREDICTORS"),
    ):
        try:
            loader()
        except ImproperlyConfigured as exc:
            errors.append(
                Error(
                    str(exc),
                    hint=f"Fix SMSERVE[{setting!r}] in smserve/settings.py.",
                    id=check_id,
                )
            )
    unknown = sorted(set(conf.get("FAST_PATHS_OFF")) - {"all", *_fast_path_names()})
    if unknown:
        errors.append(
            Error(
                f"SMSERVE_FAST_PATHS_OFF names unknown fast path(s) {', '.join(unknown)}.",
                hint=f"Known: all, {', '.join(_fast_path_names())} (smserve/fastpaths.py).",
                id="modelapp.E005",
            )
        )
    if not errors:
        media_types = [cls.media_type for cls in conf.parser_classes()]
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


def _fast_path_names() -> tuple[str, ...]:
    from smserve.fastpaths import TRICKS

    return TRICKS


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
