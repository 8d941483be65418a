"""smserve's knobs: defaults for ``settings.SMSERVE`` and checked dotted-path resolution.

Settings are read when first asked for, never at import time, and cached; the cache is
cleared when a test changes ``SMSERVE`` (Django's ``setting_changed`` signal).
"""

import functools
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    "BASE_DIR": "/opt/ml",
    "PORT": 8080,
    "HOST": "0.0.0.0",
    "BATCH": False,
    "MAX_PAYLOAD_BYTES": 6 * 1024 * 1024,
    "MAX_PAYLOAD_MB": 6,
    "WORKERS": 1,
    "TIMEOUT": 60,
    "DEFAULT_CONTENT_TYPE": "text/csv",
    "DEFAULT_ACCEPT": "",
    "READY_FILE": "",
    "STATS_FLUSH_SECONDS": 5.0,
    "INVOCATION_LOG": "app",
    "TRAINING_JOB_NAME": None,
    # Request formats, picked by Content-Type. A new format is a class and a line here.
    "PARSERS": [
        "modelapp.parsers.CSVParser",
        "modelapp.parsers.JSONParser",
        "modelapp.parsers.JSONLinesParser",
        "modelapp.parsers.NPYParser",
    ],
    # Response formats, picked by Accept; the first one also renders errors that happen
    # before a format could be chosen (e.g. an unsatisfiable Accept).
    "RENDERERS": [
        "modelapp.renderers.JSONRenderer",
        "modelapp.renderers.CSVRenderer",
        "modelapp.renderers.JSONLinesRenderer",
        "modelapp.renderers.NPYRenderer",
    ],
    "PREDICTOR": "modelapp.predictors.SklearnPredictor",
}


def get(name: str) -> Any:
    """One of smserve's settings: ``settings.SMSERVE[name]``, else its default."""
    return _settings().get(name, DEFAULTS[name])


@functools.cache
def _settings() -> dict[str, Any]:
    user = getattr(settings, "SMSERVE", {})
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown SMSERVE setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(DEFAULTS))}."
        )
    return {**DEFAULTS, **user}


def import_class(path: str, base: type, setting: str) -> type:
    """Import ``path`` and check it subclasses ``base``; errors name the setting to fix."""
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"SMSERVE[{setting!r}] names {path!r}, which cannot be imported: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ImproperlyConfigured(
            f"SMSERVE[{setting!r}] names {path!r}, which is not a subclass of "
            f"{base.__module__}.{base.__qualname__}."
        )
    return cls


@functools.cache
def parser_classes() -> tuple[type, ...]:
    from modelapp.parsers import BaseBatchParser

    return tuple(import_class(p, BaseBatchParser, "PARSERS") for p in get("PARSERS"))


@functools.cache
def renderer_classes() -> tuple[type, ...]:
    from modelapp.renderers import BaseBatchRenderer

    return tuple(
        import_class(p, BaseBatchRenderer, "RENDERERS") for p in get("RENDERERS")
    )


@functools.cache
def predictor_class() -> type:
    from modelapp.predictors import BasePredictor

    return import_class(get("PREDICTOR"), BasePredictor, "PREDICTOR")


@receiver(setting_changed)
def _clear_caches(*, setting: str, **kwargs: Any) -> None:
    if setting == "SMSERVE":
        for cached in (_settings, parser_classes, renderer_classes, predictor_class):
            cached.cache_clear()
