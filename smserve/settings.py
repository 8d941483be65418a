"""smserve settings: every environment variable is read here, once, and nowhere else.

Platform variables (``SAGEMAKER_*``, ``MODEL_SERVER_*``) and our own (``SMSERVE_*``) become
Django settings; our knobs live in the ``SMSERVE`` dict, whose defaults and checks are in
``modelapp.conf``. The README lists every variable.
"""

import os
import secrets
import sys
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    """``true``/``1``/``yes``/``on`` in any case is true; SageMaker sends ``"True"``."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(*names: str, default: int) -> int:
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


# --- SageMaker contract -------------------------------------------------------------------
SAGEMAKER_BASE_DIR = Path(os.environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml")
BATCH_MODE = env_bool("SAGEMAKER_BATCH")
# 6 MB is SageMaker's real-time limit; batch transform allows up to 100 MB, and 0 means the
# body may be of any size (MaxPayloadInMB=0, chunked encoding).
MAX_PAYLOAD_MB = env_int("SAGEMAKER_MAX_PAYLOAD_IN_MB", default=6)
if not 0 <= MAX_PAYLOAD_MB <= 100:
    raise ValueError(
        f"SAGEMAKER_MAX_PAYLOAD_IN_MB must be 0..100, got {MAX_PAYLOAD_MB}"
    )
MAX_PAYLOAD_BYTES = MAX_PAYLOAD_MB * 1024 * 1024 or None
MODEL_SERVER_WORKERS = env_int(
    "SAGEMAKER_MODEL_SERVER_WORKERS",
    "MODEL_SERVER_WORKERS",
    default=os.cpu_count() or 1,
)
MODEL_SERVER_TIMEOUT = env_int(
    "SAGEMAKER_MODEL_SERVER_TIMEOUT",
    "MODEL_SERVER_TIMEOUT",
    default=3600 if BATCH_MODE else 60,
)

INVOCATION_LOG = os.environ.get("SMSERVE_INVOCATION_LOG") or "app"
if INVOCATION_LOG not in ("app", "nginx"):
    raise ValueError(
        f"SMSERVE_INVOCATION_LOG must be 'app' or 'nginx', got {INVOCATION_LOG!r}"
    )

SMSERVE = {
    "BASE_DIR": SAGEMAKER_BASE_DIR,
    # Where nginx listens (gunicorn alone when nginx is missing).
    "PORT": env_int("SAGEMAKER_BIND_TO_PORT", default=8080),
    "HOST": os.environ.get("SMSERVE_BIND_HOST") or "0.0.0.0",
    "BATCH": BATCH_MODE,
    "MAX_PAYLOAD_BYTES": MAX_PAYLOAD_BYTES,
    "MAX_PAYLOAD_MB": MAX_PAYLOAD_MB,
    "WORKERS": MODEL_SERVER_WORKERS,
    "TIMEOUT": MODEL_SERVER_TIMEOUT,
    # Content-Type assumed when a request has none or says application/octet-stream.
    "DEFAULT_CONTENT_TYPE": os.environ.get("SMSERVE_DEFAULT_CONTENT_TYPE")
    or "text/csv",
    # Accept assumed when a request has none or says */*; empty = the request's own type.
    "DEFAULT_ACCEPT": os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or "",
    # Written by the process that loaded and warmed the model; nginx answers /ping from it.
    "READY_FILE": os.environ.get("SMSERVE_READY_FILE") or "",
    "STATS_FLUSH_SECONDS": float(os.environ.get("SMSERVE_STATS_FLUSH_SECONDS") or 5),
    # Who writes the line for a successful invocation: the app, or nginx in front of it
    # (``serve`` says "nginx" when it runs nginx). Errors are always logged by the app too.
    "INVOCATION_LOG": INVOCATION_LOG,
    # Set by SageMaker in training containers; recorded in metadata.json.
    "TRAINING_JOB_NAME": os.environ.get("TRAINING_JOB_NAME") or None,
}

# --- Django -------------------------------------------------------------------------------
STATE_DIR = Path(os.environ.get("SMSERVE_STATE_DIR") or BASE_DIR / "var")
DEBUG = env_bool("SMSERVE_DEBUG")
ADMIN_ENABLED = env_bool("SMSERVE_ADMIN_ENABLED")


def _secret_key() -> str:
    """From the environment, else generated once and kept beside the database."""
    key = os.environ.get("SECRET_KEY") or os.environ.get("DJANGO_SECRET_KEY")
    if key:
        return key
    key_file = STATE_DIR / "secret_key"
    try:
        return key_file.read_text().strip()
    except OSError:
        pass  # not there yet (or no state dir at all): make one below
    key = secrets.token_urlsafe(50)
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        # Written under a temp name and linked into place: of two processes starting at
        # once, one key wins and both use it.
        tmp = key_file.with_name(f".secret_key.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        try:
            os.link(tmp, key_file)
        except FileExistsError:
            key = key_file.read_text().strip()
        finally:
            os.unlink(tmp)
    except OSError as exc:
        # A read-only state dir (e.g. a locked-down training container): a key for this
        # process only. Only admin sessions depend on it, and they then last one process.
        print(
            f"smserve: cannot keep a secret key in {STATE_DIR} ({exc}); using one for this process",
            file=sys.stderr,
        )
    return key


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = [
    h for h in os.environ.get("SMSERVE_ALLOWED_HOSTS", "*").split(",") if h
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "modelapp",
]

# The inference paths (/invocations, /ping, /execution-parameters) leave the chain right
# after SecurityMiddleware: the layers below serve the admin only and measured 0.06 ms per
# request (16% of an iris invocation in-process).
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "modelapp.middleware.InferenceMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
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
            or STATE_DIR / "smserve.sqlite3",
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
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_PAYLOAD_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = MAX_PAYLOAD_BYTES or 2621440

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

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_THROTTLE_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "modelapp.exceptions.exception_handler",
}

LOG_LEVEL = (os.environ.get("SMSERVE_LOG_LEVEL") or "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
        },
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        # Our 4xx/5xx are logged once by modelapp.invocations; Django's duplicate goes.
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "WARNING"},
    },
}
APPEND_SLASH = False  # unknown paths are a JSON 404, never a redirect
