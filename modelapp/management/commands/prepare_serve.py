"""``manage.py prepare_serve RUN_DIR``: everything ``serve`` does before starting servers.

One Python process instead of several (start-up time counts): the system checks (the deploy
set), the secret key file, the migrations, and nginx.conf rendered from ``docker/nginx.conf`` with the values
Django itself uses (port, payload limit, timeout), so nginx and the app cannot disagree.

With ``--started-file``, what gunicorn needs (the checks, the key, the admin's password
checked, nginx.conf, the secrets file) comes first and the file is created once it is
done: ``serve`` starts gunicorn then, and the migrations run while the model loads.
gunicorn's master waits for this process to end before it answers ``/ping``
(``docker/gunicorn.conf.py``), so a 200 still means the admin's tables and login exist.
"""

import io
import json
import logging
import os
import re
import resource
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from modelapp import conf
from modelapp.state import keep_secret_key, make_private_file, make_state_dir

logger = logging.getLogger("modelapp.serve")

TEMPLATE = Path(settings.BASE_DIR) / "docker" / "nginx.conf"
# What a gunicorn started by serve reads from a file it deletes, not from its environment
# (docker/gunicorn.conf.py): the settings read them at import, nothing reads them later.
SECRETS = ("SECRET_KEY", "DJANGO_SECRET_KEY", "DATABASE_URL")
# nginx's open files: every client connection is one, every proxied request another.
# Enough for thousands of idle or slow clients, never above what the system allows.
NGINX_MAX_FILES = 16384


def nginx_file_limits() -> tuple[int, int]:
    """(worker_rlimit_nofile, worker_connections) within the hard limit of open files,
    which nginx (without CAP_SYS_RESOURCE in a container) cannot raise."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = (
        NGINX_MAX_FILES
        if hard == resource.RLIM_INFINITY
        else min(hard, NGINX_MAX_FILES)
    )
    # A few files stay for the logs, the listening socket and the temp files.
    return files, max(512, files - 64)


def access_log_directives(access_log: str) -> str:
    """nginx logs each invocation at INFO (the app's own lines obey the same level) when
    ``serve`` has left that to it, and every other request too when ``access_log`` names
    a path."""
    directives = []
    # JSON (smserve/logs.py): one line per invocation, nginx's or the app's.
    json_lines = conf.get("LOG_FORMAT") == "json"
    if conf.get("INVOCATION_LOG") == "nginx" and logging.getLogger(
        "modelapp.invocations"
    ).isEnabledFor(logging.INFO):
        # JSON: serve's stderr as fd 3, past the filter nginx's stderr goes through.
        directives.append(
            "access_log /dev/fd/3 invocation_json if=$invocation_unlogged;"
            if json_lines
            else "access_log /dev/stderr invocation if=$invocation;"
        )
    if access_log != "off":
        log_format = "access_json" if json_lines else "combined"
        directives.append(f"access_log {access_log} {log_format} if=$not_invocation;")
    # Without any, nginx would write logs/access.log under the run dir.
    return "\n    ".join(directives) or "access_log off;"


def nginx_user_directive(nginx_user: str) -> str:
    """As root, nginx's workers run as ``nginx_user`` (``serve`` gives them the run dir
    and the socket through its group), else as root: nginx's default, nobody, could not
    read the run dir. Not root, they run as the user nginx runs as; nginx ignores the
    directive then."""
    if os.geteuid() != 0:
        return ""
    return f"user {nginx_user};" if nginx_user else "user root;"


def render_nginx_conf(
    run_dir: Path, access_log: str, client_timeout: int = 60, nginx_user: str = ""
) -> str:
    """The template with every placeholder filled; an unknown one is an error."""
    max_bytes = conf.max_payload_bytes()
    host, port = conf.get("HOST"), conf.get("PORT")
    files, connections = nginx_file_limits()
    values = {
        "RUN_DIR": str(run_dir),
        "SOCKET": str(run_dir / "gunicorn.sock"),
        "LISTEN": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "MAX_BODY": str(max_bytes or 0),
        # A body up to the payload limit stays in memory, never more than 8 MB of it
        # (a larger batch body goes to a temp file in the run dir).
        "BODY_BUFFER": str(min(max_bytes or 8 << 20, 8 << 20)),
        "MAX_FILES": str(files),
        "MAX_CONNECTIONS": str(connections),
        # A client has less time for its headers than for its body: a slow body is a
        # large batch on a slow link, slow headers only ever hold a connection.
        "HEADER_TIMEOUT": str(min(client_timeout, 10)),
        "MAX_MB": str(conf.get("MAX_PAYLOAD_MB")),
        "TIMEOUT": str(conf.get("TIMEOUT")),
        "CLIENT_TIMEOUT": str(client_timeout),
        "ACCESS_LOG": access_log_directives(access_log),
        "USER": nginx_user_directive(nginx_user),
    }
    text = TEMPLATE.read_text()

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise CommandError(
                f"{TEMPLATE} uses @@{name}@@, which prepare_serve does not know."
            )
        return values[name]

    return re.sub(r"@@([A-Z_]+)@@", fill, text)


def run_checks() -> None:
    """Django's deploy checks (gunicorn runs none). The check command prints its report
    as text: with JSON logs the report becomes a log record instead (smserve/logs.py)."""
    if conf.get("LOG_FORMAT") != "json":
        call_command("check", deploy=True, fail_level="ERROR", verbosity=0)
        return
    report = io.StringIO()
    call_command(
        "check",
        deploy=True,
        fail_level="ERROR",
        verbosity=0,
        stdout=report,
        stderr=report,
    )
    text = report.getvalue().strip()
    if text:
        logger.log(logging.INFO if "no issues" in text else logging.WARNING, "%s", text)


def create_superuser() -> None:
    """The admin's login from Django's own ``DJANGO_SUPERUSER_*`` variables (the ones
    ``createsuperuser --noinput`` reads), when set; an existing user is left as it is.
    A password Django's validators refuse stops start-up with their reasons."""
    from django.contrib.auth import get_user_model

    username = os.environ.get("DJANGO_SUPERUSER_USERNAME")
    if not username or not os.environ.get("DJANGO_SUPERUSER_PASSWORD"):
        return
    check_superuser_password()
    User = get_user_model()
    if User._default_manager.filter(**{User.USERNAME_FIELD: username}).exists():
        return
    call_command("createsuperuser", interactive=False, verbosity=0)
    logger.info("Created the superuser %s.", username)


def check_superuser_password() -> None:
    """Django's password validators on ``DJANGO_SUPERUSER_PASSWORD`` (``createsuperuser
    --noinput`` skips them): a refused one is a ``CommandError`` with their reasons.
    Needs no database, so it runs before anything starts."""
    from django.contrib.auth import get_user_model

    username = os.environ.get("DJANGO_SUPERUSER_USERNAME")
    if not username or not os.environ.get("DJANGO_SUPERUSER_PASSWORD"):
        return
    User = get_user_model()
    candidate = User(
        **{
            User.USERNAME_FIELD: username,
            User.get_email_field_name(): os.environ.get("DJANGO_SUPERUSER_EMAIL", ""),
        }
    )
    try:
        validate_password(os.environ["DJANGO_SUPERUSER_PASSWORD"], candidate)
    except ValidationError as exc:
        raise CommandError(
            f"DJANGO_SUPERUSER_PASSWORD is refused for the admin login {username!r}: "
            f"{' '.join(exc.messages)} Choose a stronger one: serve does not start with this one."
        ) from None


def collect_static_once() -> None:
    """The image collects the admin's static files at build time; a checkout that never
    ran ``collectstatic`` gets them here, or every admin page would be a 500."""
    manifest = Path(settings.STATIC_ROOT) / "staticfiles.json"
    if manifest.is_file():
        return
    logger.info("No %s: collecting static files for the admin.", manifest)
    call_command("collectstatic", interactive=False, verbosity=0)


class Command(BaseCommand):
    help = (
        "Check the deployment, migrate the database and render nginx.conf into RUN_DIR."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "run_dir", type=Path, help="Where nginx.conf and the socket go."
        )
        parser.add_argument(
            "--access-log",
            default="off",
            help="nginx access_log path for requests other than /invocations, e.g. "
            "'/dev/stdout' (default: off; every invocation is logged regardless).",
        )
        parser.add_argument(
            "--client-timeout",
            type=int,
            default=60,
            help="Seconds nginx waits for a stalled client's body before dropping it, "
            "and at most 10 for its headers (default: 60).",
        )
        parser.add_argument(
            "--nginx-user",
            default="",
            help="As root: the user nginx's workers run as (default: root).",
        )
        parser.add_argument(
            "--secrets-file",
            type=Path,
            help="Write the secrets of the environment (SECRET_KEY, DATABASE_URL) here, "
            "owner-only, for gunicorn to read instead of its environment.",
        )
        parser.add_argument(
            "--started-file",
            type=Path,
            help="Create this file once gunicorn may start (everything but the "
            "migrations and the admin's login is done), then migrate.",
        )

    def handle(
        self,
        *args: Any,
        run_dir: Path,
        access_log: str,
        client_timeout: int,
        nginx_user: str,
        secrets_file: Path | None,
        started_file: Path | None,
        **options: Any,
    ) -> None:
        run_checks()
        make_state_dir(conf.get("STATE_DIR"))
        database = settings.DATABASES["default"]
        if database["ENGINE"].endswith("sqlite3"):
            make_private_file(Path(database["NAME"]))  # password hashes, sessions
        if not (os.environ.get("SECRET_KEY") or os.environ.get("DJANGO_SECRET_KEY")):
            # Read by every worker's settings: one key for the container's sessions.
            keep_secret_key(conf.get("STATE_DIR"))
        check_superuser_password()
        self.write_run_files(run_dir, access_log, client_timeout, nginx_user)
        if secrets_file is not None:
            write_secrets(secrets_file)
        if started_file is not None:
            started_file.touch()
        try:
            call_command("migrate", interactive=False, verbosity=0)
            create_superuser()
        except DatabaseError as exc:
            # Serving never depends on the database: the admin and stats wait for it.
            logger.error("Database not migrated (%s); serving goes on without it.", exc)

    def write_run_files(
        self, run_dir: Path, access_log: str, client_timeout: int, nginx_user: str
    ) -> None:
        """The admin's static files (once) and nginx.conf."""
        if conf.get("ADMIN_ENABLED"):
            collect_static_once()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "nginx.conf").write_text(
            render_nginx_conf(run_dir, access_log, client_timeout, nginx_user)
        )


def write_secrets(secrets_file: Path) -> None:
    """The secrets of the environment, owner-only, for gunicorn (``--secrets-file``)."""
    found = {name: os.environ[name] for name in SECRETS if os.environ.get(name)}
    fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(found, fh)
