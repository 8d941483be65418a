"""Writing a file whole or not at all: the one way smserve writes a file another process
reads (training's artifacts, the multi-model registry, the ready file nginx answers /ping
from)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(
    path: Path,
    content: bytes | str | Callable[[BinaryIO], object],
    mode: int = 0o644,
) -> None:
    """Put ``content`` (bytes, text as UTF-8, or a function writing to the open binary
    file) at ``path``: a temporary file beside it, flushed to disk, then renamed over it,
    so a reader sees the old file or the new one, never half of one. The temporary file
    is removed when the write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, str):
                fh.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
