"""The state dir (``SMSERVE_STATE_DIR``): the SQLite database and the admin's
session-signing key, kept there when none is configured.

Importing the settings writes nothing: the processes that use the state dir make it
(``make_state_dir``: ``serve`` through ``manage.py prepare_serve``, ``train`` before it
records its run), and ``serve`` keeps the key (``keep_secret_key``) once before gunicorn
starts, so every worker of a container reads the same one (``read_secret_key``, from the
settings). Plain Python, no Django, as the settings module imports it.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

KEY_FILE = "secret_key"


def make_state_dir(state_dir: Path) -> bool:
    """Create the state dir if it is missing; False (logged) when it cannot be."""
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("Cannot create the state dir %s (%s).", state_dir, exc)
        return False
    return True


def read_secret_key(state_dir: Path) -> str | None:
    """The kept key, or None when there is none (yet) or it cannot be read."""
    try:
        return (Path(state_dir) / KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def keep_secret_key(state_dir: Path) -> str | None:
    """The key kept in ``state_dir``, generated and written (owner-only) if there is none;
    None when the state dir cannot be written (logged: sessions then last one process)."""
    state_dir = Path(state_dir)
    key = read_secret_key(state_dir)
    if key:
        return key
    key = secrets.token_urlsafe(50)
    key_file = state_dir / KEY_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        # Written under a temp name and linked into place: of two processes starting at
        # once, one key wins and both use it.
        tmp = key_file.with_name(f".{KEY_FILE}.{os.getpid()}")
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
        logger.warning(
            "Cannot keep a secret key in %s (%s): each process uses its own.",
            state_dir,
            exc,
        )
        return None
    return key
