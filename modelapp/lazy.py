"""What a serving process imports follows the model and the settings (docs/speed.md).

Our own modules import pandas, pyarrow, psycopg, onnx and skl2onnx inside the functions
that need them. Two libraries import an optional package as soon as it is installed,
although serving a model that does not need it never uses it; both treat the package's
absence (``ImportError``) as a supported case, and ``absent`` lets them see it absent
while they import, and nothing else:

- scikit-learn's ``sklearn.utils.fixes`` imports pandas (and pandas imports pyarrow)
  when ``sklearn`` is first imported, for nothing scikit-learn reads back; its checks for
  DataFrames look for pandas in ``sys.modules`` when they run (``import_sklearn``).
- DRF's ``rest_framework.compat`` imports ``django.contrib.postgres`` for the serializer
  fields of PostgreSQL column types, which our models do not have, and with it psycopg
  (``import_rest_framework``).

After the block the package is importable as ever: pandas arrives with a model fitted on
a table, psycopg with a PostgreSQL ``DATABASE_URL`` (Django's backend imports it on the
first connection), pyarrow with Parquet or pandas.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def absent(*names: str) -> Iterator[None]:
    """Inside the block ``import name`` raises ``ImportError`` for each of ``names`` not
    imported yet (a ``None`` entry in ``sys.modules`` is the import system's way to say
    so); after it they import as usual."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def import_sklearn() -> None:
    """Import scikit-learn without pandas (unless something imported pandas already).
    Called before a pickle is loaded, which imports scikit-learn for its classes."""
    if "sklearn" not in sys.modules:
        with absent("pandas"):
            import sklearn  # noqa: F401


def import_rest_framework() -> None:
    """Import DRF's ``compat`` module without psycopg (unless it is imported already).
    Called from ``modelapp/__init__.py``, which every process of ours imports before
    anything imports DRF (gunicorn's config imports ``modelapp.conf`` first; Django
    imports the apps' packages before their ``ready``)."""
    if "rest_framework.compat" not in sys.modules:
        with absent("psycopg", "psycopg2"):
            import rest_framework.compat  # noqa: F401
