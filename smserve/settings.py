"""smserve settings: every environment variable is read here, once, and nowhere else.

Platform variables (``SAGEMAKER_*``, ``MODEL_SERVER_*``) and our own (``SMSERVE_*``) are
translated, when set, into entries of the ``SMSERVE`` dict, whose defaults (one table) and
derived values live in ``modelapp.conf``; the other uppercase names here are Django's own
settings. Nothing is written at import (the secret key file is kept by ``serve``).
``docs/settings.md`` lists every variable.
"""

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url

from modelapp.conf import DEFAULTS as SMSERVE_DEFAULTS
from modelapp.state import read_secret_key
from smserve.logs import FORMATS as LOG_FORMATS
from smserve.logs import django_logging

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool | None = False) -> bool | None:
    """``true``/``1``/``yes``/``on`` in any case is true; SageMaker sends ``"True"``."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(*names: str, default: int | None = None) -> int | None:
    """The first of ``names`` that is set, as an int; a bad value stops start-up loudly."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(
                    f"{name} must be a whole number, got {value!r}"
                ) from None
    return default


def env_float(name: str) -> float | None:
    value = env_str(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def env_str(name: str) -> str | None:
    """The variable's value, or None when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def _host_addresses(value: str | None) -> dict[str, str] | None:
    """``algo-1=127.0.16.1,algo-2=127.0.16.2`` (test-only) -> a dict."""
    if value is None:
        return None
    pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(
            f"SMSERVE_HOST_ADDRESSES must be host=address,host=address; got {value!r}"
        )
    return {host.strip(): address.strip() for host, address in pairs}


def _keys(value: str | None) -> tuple[str, ...] | None:
    """``predicted_label, probability`` -> a tuple of lowercase keys (Autopilot's)."""
    if value is None:
        return None
    return tuple(key.strip().lower() for key in value.split(",") if key.strip())


def _smserve_from_environment() -> dict[str, Any]:
    """The ``SMSERVE`` entries the environment sets; everything else keeps its default
    (``modelapp.conf.DEFAULTS``)."""
    found: dict[str, Any] = {
        "BASE_DIR": env_str("SAGEMAKER_BASE_DIR"),
        "PORT": env_int("SAGEMAKER_BIND_TO_PORT"),
        "HOST": env_str("SMSERVE_BIND_HOST"),
        "BATCH": env_bool("SAGEMAKER_BATCH", None),
        "MAX_PAYLOAD_MB": env_int("SAGEMAKER_MAX_PAYLOAD_IN_MB"),
        "WORKERS": env_int("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS"),
        "TIMEOUT": env_int("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT"),
        "DEFAULT_CONTENT_TYPE": env_str("SMSERVE_DEFAULT_CONTENT_TYPE"),
        "DEFAULT_ACCEPT": env_str("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"),
        "TRAINING_JOB_NAME": env_str("TRAINING_JOB_NAME"),
        "DASK_SCHEDULER_PORT": env_int("SMSERVE_DASK_SCHEDULER_PORT"),
        "HOST_ADDRESSES": _host_addresses(env_str("SMSERVE_HOST_ADDRESSES")),
        "PROGRAM": env_str("SAGEMAKER_PROGRAM"),
        "SUBMIT_DIRECTORY": env_str("SAGEMAKER_SUBMIT_DIRECTORY"),
        "STATE_DIR": env_str("SMSERVE_STATE_DIR"),
        "ADMIN_ENABLED": env_bool("SMSERVE_ADMIN_ENABLED", None),
        "STATS_FLUSH_SECONDS": env_float("SMSERVE_STATS_FLUSH_SECONDS"),
        "METRICS_PORT": env_int("SMSERVE_METRICS_PORT"),
        "METRICS_HOST": env_str("SMSERVE_METRICS_HOST"),
        "CAPTURE_PERCENT": env_float("SMSERVE_CAPTURE_PERCENT"),
        "DRIFT_PSI": env_float("SMSERVE_DRIFT_PSI"),
        "DRIFT_JS": env_float("SMSERVE_DRIFT_JS"),
        "DRIFT_MIN_RECORDS": env_int("SMSERVE_DRIFT_MIN_RECORDS"),
        "DRIFT_REFERENCE_RECORDS": env_int("SMSERVE_DRIFT_REFERENCE_RECORDS"),
        "CAPTURE_DESTINATION": env_str("SMSERVE_CAPTURE_DESTINATION"),
        "CAPTURE_ROTATE_SECONDS": env_float("SMSERVE_CAPTURE_ROTATE_SECONDS"),
        "CAPTURE_ROTATE_MB": env_int("SMSERVE_CAPTURE_ROTATE_MB"),
        "COMPILED_ENGINE": env_bool("SMSERVE_COMPILED_ENGINE", None),
        "COMPILED_THREADS": env_int("SMSERVE_COMPILED_THREADS"),
        "CHUNK_KB": env_int("SMSERVE_CHUNK_KB"),
        "EXPLAIN_MAX_RECORDS": env_int("SMSERVE_EXPLAIN_MAX_RECORDS"),
        "EXPLAIN_MEMORY_MB": env_int("SMSERVE_EXPLAIN_MEMORY_MB"),
        "READY_FILE": env_str("SMSERVE_READY_FILE"),
        "INVOCATION_LOG": env_str("SMSERVE_INVOCATION_LOG"),
        "GUNICORN_BIND": env_str("SMSERVE_GUNICORN_BIND"),
        "MULTI_MODEL": (
            env_bool("SAGEMAKER_MULTI_MODEL")
            if env_str("SAGEMAKER_MULTI_MODEL")
            else None
        ),
        "MME_MEMORY_MB": env_int("SMSERVE_MME_MEMORY_MB"),
        "MME_REGISTRY_DIR": env_str("SMSERVE_MME_REGISTRY_DIR"),
        "MME_MODEL_ROOT": env_str("SMSERVE_MME_MODEL_ROOT"),
        "DETAILED_ERRORS": env_bool("SMSERVE_DETAILED_ERRORS", None),
        "ALLOW_UNSAFE_DESERIALIZATION": env_bool(
            "SMSERVE_ALLOW_UNSAFE_DESERIALIZATION", None
        ),
        # Logs and CloudWatch metrics (docs/logs.md).
        "LOG_FORMAT": (env_str("SMSERVE_LOG_FORMAT") or "").lower() or None,
        "METRICS_EMF": env_bool("SMSERVE_METRICS_EMF", None),
        "METRICS_EMF_SECONDS": env_float("SMSERVE_METRICS_EMF_SECONDS"),
        "INFERENCE_OUTPUT": _keys(env_str("SAGEMAKER_INFERENCE_OUTPUT")),
        "INFERENCE_SUPPORTED": _keys(env_str("SAGEMAKER_INFERENCE_SUPPORTED")),
        "JSONLINES_FEATURES_KEY": os.environ.get("SMSERVE_JSONLINES_FEATURES_KEY"),
        "PASS_THROUGH_LABEL": env_bool("SMSERVE_PASS_THROUGH_LABEL", None),
    }
    for key in ("BASE_DIR", "STATE_DIR", "MME_REGISTRY_DIR", "MME_MODEL_ROOT"):
        if found[key] is not None:
            found[key] = Path(found[key])
    off = env_str("SMSERVE_FAST_PATHS_OFF")
    if off is not None:
        found["FAST_PATHS_OFF"] = frozenset(
            name.strip().lower() for name in off.split(",") if name.strip()
        )
    trusted = env_str("SMSERVE_TRUSTED_MODULES")
    if trusted is not None:
        found["TRUSTED_MODULES"] = tuple(
            name.strip() for name in trusted.split(",") if name.strip()
        )
    mb = found["MAX_PAYLOAD_MB"]
    if mb is not None and not 0 <= mb <= 100:
        raise ValueError(f"SAGEMAKER_MAX_PAYLOAD_IN_MB must be 0..100, got {mb}")
    capture = found["CAPTURE_PERCENT"]
    if capture is not None and not 0 <= capture <= 100:
        raise ValueError(f"SMSERVE_CAPTURE_PERCENT must be 0..100, got {capture}")
    chunk = found["CHUNK_KB"]
    if chunk is not None and chunk < 1:
        raise ValueError(f"SMSERVE_CHUNK_KB must be at least 1, got {chunk}")
    explain = found["EXPLAIN_MEMORY_MB"]
    if explain is not None and explain < 0:
        raise ValueError(f"SMSERVE_EXPLAIN_MEMORY_MB must be 0 or more, got {explain}")
    memory = found["MME_MEMORY_MB"]
    if memory is not None and memory < 1:
        raise ValueError(f"SMSERVE_MME_MEMORY_MB must be at least 1, got {memory}")
    log = found["INVOCATION_LOG"]
    if log is not None and log not in ("app", "nginx"):
        raise ValueError(
            f"SMSERVE_INVOCATION_LOG must be 'app' or 'nginx', got {log!r}"
        )
    log_format = found["LOG_FORMAT"]
    if log_format is not None and log_format not in LOG_FORMATS:
        raise ValueError(
            f"SMSERVE_LOG_FORMAT must be 'text' or 'json', got {log_format!r}"
        )
    emf_seconds = found["METRICS_EMF_SECONDS"]
    if emf_seconds is not None and not emf_seconds > 0:
        raise ValueError(
            f"SMSERVE_METRICS_EMF_SECONDS must be above 0, got {emf_seconds}"
        )
    return {key: value for key, value in found.items() if value is not None}


SMSERVE = _smserve_from_environment()
# The payload limit, for Django's own upload limits (the same value as nginx's and ours).
_max_payload_bytes = (
    SMSERVE.get("MAX_PAYLOAD_MB", SMSERVE_DEFAULTS["MAX_PAYLOAD_MB"]) * 1024 * 1024
    or None
)

# --- Django -------------------------------------------------------------------------------
_state_dir = SMSERVE.setdefault("STATE_DIR", BASE_DIR / "var")
DEBUG = env_bool("SMSERVE_DEBUG")


def _secret_key() -> str:
    """From the environment, else from the key file ``serve`` keeps in the state dir
    (``modelapp.state``), else one for this process only: only admin sessions
    depend on it, and a training job or a management command has none. Nothing is
    written here."""
    key = env_str("SECRET_KEY") or env_str("DJANGO_SECRET_KEY")
    if key:
        return key
    return read_secret_key(_state_dir) or secrets.token_urlsafe(50)


SECRET_KEY = _secret_key()
# Unset: any Host, which the admin refuses (modelapp.E006, modelapp/checks.py).
ALLOWED_HOSTS = [
    h.strip() for h in (env_str("SMSERVE_ALLOWED_HOSTS") or "*").split(",") if h.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # The OpenAPI description (docs/openapi.yaml): `manage.py spectacular` writes it from
    # the views' extend_schema annotations; the server itself does not serve it.
    "drf_spectacular",
    "modelapp",
]

# The inference paths (/invocations, /ping, /execution-parameters) leave the chain right
# after SecurityMiddleware: the layers below serve the admin only (their cost:
# bench/RESULTS.md, round 2).
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "modelapp.middleware.InferenceMiddleware",
    "modelapp.middleware.AdminHeadersMiddleware",
    # The admin's CSS and JS; without the admin, /static/ would only tell a caller that
    # the container runs Django.
    *(
        ["whitenoise.middleware.WhiteNoiseMiddleware"]
        if SMSERVE.get("ADMIN_ENABLED")
        else []
    ),
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "smserve.urls"
WSGI_APPLICATION = "smserve.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if os.environ.get("DATABASE_URL"):
    DATABASES = {
        "default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60)
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SMSERVE_SQLITE_PATH")
            or _state_dir / "smserve.sqlite3",
            # WAL lets several workers write stats while the admin reads; IMMEDIATE takes the
            # write lock up front so concurrent writers wait (timeout) instead of failing.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("SMSERVE_STATIC_ROOT") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# One value for nginx's client_max_body_size, Django's and our own check.
DATA_UPLOAD_MAX_MEMORY_SIZE = _max_payload_bytes
FILE_UPLOAD_MAX_MEMORY_SIZE = _max_payload_bytes or 2621440

# TLS ends in front of the container (SageMaker's endpoint, or a load balancer); the container
# speaks plain HTTP on loopback to nginx, so the HTTPS-only deploy checks do not apply.
SESSION_COOKIE_SECURE = env_bool("SMSERVE_SECURE_COOKIES")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("SMSERVE_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]
SILENCED_SYSTEM_CHECKS = [
    "security.W004",  # HSTS: set by whatever terminates TLS
    "security.W008",  # SSL redirect: same
    "security.W012",  # secure session cookie: SMSERVE_SECURE_COOKIES when behind HTTPS
    "security.W016",  # secure CSRF cookie: same
]
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_THROTTLE_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "modelapp.exceptions.exception_handler",
    # extend_schema on the views subclasses this when views.py is imported.
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Our negotiation reads the Accept header only, never a ?format= parameter.
    "URL_FORMAT_OVERRIDE": None,
    # OPTIONS is no operation of the contract: 405, rather than DRF's metadata (which
    # would hand out the views' docstrings).
    "DEFAULT_METADATA_CLASS": None,
}
# The OpenAPI description's settings (docs/openapi.yaml, tests/test_openapi.py).
SPECTACULAR_SETTINGS = {
    "TITLE": "smserve",
    "DESCRIPTION": (
        "SageMaker's inference contract for scikit-learn models: /ping, /invocations "
        "and /execution-parameters, and the model API of multi-model endpoints. Every "
        "error answers {detail, code}, nginx's own too: on any path nginx may answer "
        "400, 405, 411, 413, 414, 431, 500, 501, 503, 504 or 505 itself."
    ),
    "VERSION": "1.0",
    "SERVERS": [{"url": "http://localhost:8080", "description": "the container"}],
    # The test checks the document; serve's `check --deploy` need not generate it.
    "ENABLE_DJANGO_DEPLOY_CHECK": False,
    "ENUM_GENERATE_CHOICE_DESCRIPTION": False,
}

_log_level = (env_str("SMSERVE_LOG_LEVEL") or "INFO").upper()
# Text or JSON lines, the same in every process serve starts (smserve/logs.py).
LOGGING: dict[str, Any] = django_logging(
    SMSERVE.get("LOG_FORMAT", SMSERVE_DEFAULTS["LOG_FORMAT"]), _log_level
)
APPEND_SLASH = False  # unknown paths are a JSON 404, never a redirect

# --- the admin's login and pages (docs/reliability.md "Securing the admin") --------------
# django-axes: after AXES_FAILURE_LIMIT failed logins a username from one client IP, and
# after AXES_IP_FAILURE_LIMIT any usernames from one IP, are locked out for
# AXES_COOLOFF_TIME (a 429); a success resets the count. Not the username alone: anyone
# could then keep the known admin login locked.
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_IP_FAILURE_LIMIT = 20  # ours: modelapp.auth.LockoutHandler
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_HANDLER = "modelapp.auth.LockoutHandler"
AXES_RESET_ON_SUCCESS = True
# Its attempts and logs are no admin page of ours (the admin is read-only).
AXES_ENABLE_ADMIN = False
# The client's IP as our nginx saw it, never a header the client could set itself.
AXES_CLIENT_IP_CALLABLE = "modelapp.auth.client_ip"
# Applied to the superuser serve creates from DJANGO_SUPERUSER_PASSWORD too.
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation."
        "UserAttributeSimilarityValidator"
    },
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Cookies scripts cannot read and other sites' requests do not carry.
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Strict"
CSRF_COOKIE_SAMESITE = "Strict"
SESSION_COOKIE_AGE = 8 * 3600
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Its start-up banner in every process (train, manage.py, each worker) says nothing new.
LOGGING["loggers"]["axes.apps"] = {"level": "WARNING"}
