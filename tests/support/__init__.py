"""Helpers for the tests (fixtures live in ``tests/conftest.py``, helpers only here)."""

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` now (the tests' servers never use a fixed one)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]
