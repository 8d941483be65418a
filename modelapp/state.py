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
    """Create the state dir, owner-only (it holds password hashes, session keys and the
    key that signs them), if it is missing; False (logged) when it cannot be. One that
    exists keeps its mode: it may be a volume set up by its owner."""
    try:
        Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("Cannot create the state dir %s (%s).", state_dir, exc)
        return False
    return True


def make_private_file(path: Path) -> None:
    """Create ``path`` owner-only if it is missing, or make it so: the SQLite database,
    before SQLite creates it with the umask's mode (its -wal and -shm files then take
    the database's). Logged, not raised, when it cannot be."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError as exc:
        logger.warning("Cannot make %s owner-only (%s).", path, exc)


def read_secret_key(state_dir: Path) -> str | None:
    """The kept key, or None when there is none (yet) or it cannot be read."""
    try:
        return (Path(state_dir) / KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def keep_secret_key(state_dir: Path) -> str | None:
    """The key kept in ``state_dir``, generated and written (owner-only) if there is none
    (one others may read is logged); None when the state dir cannot be written (logged: sessions then last one process)."""
    state_dir = Path(state_dir)
    key = read_secret_key(state_dir)
    if key:
        _warn_if_readable(state_dir / KEY_FILE)
        return key
    key = secrets.token_urlsafe(50)
    key_file = state_dir / KEY_FILE
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written under a temp name and linked into place: of two processes starting at
        # once, one key wins and both use it. The temp name is predictable: a file or a
        # symlink already there is refused, never written through.
        tmp = key_file.with_name(f".{KEY_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
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


def _warn_if_readable(key_file: Path) -> None:
    """A key other users may read is used, with a warning: whoever reads it can sign an
    admin session."""
    try:
        mode = key_file.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        logger.warning(
            "%s can be read by other users (mode %o): chmod 600 it, or anyone who "
            "reads it can sign an admin session.",
            key_file,
            mode,
        )
