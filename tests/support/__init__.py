"""Helpers for the tests (fixtures live in ``tests/conftest.py``, helpers only here)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
