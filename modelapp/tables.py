"""Moved to ``modelapp.predictors.schema``. This name is kept for one release, for dotted
paths already in settings (``SMSERVE['PREDICTORS']``) and imports."""

import warnings
from typing import Any

from modelapp.predictors import schema as _moved

warnings.warn(
    "modelapp.tables is now modelapp.predictors.schema; "
    "the old name goes in the next release.",
    DeprecationWarning,
    stacklevel=2,
)
# ``Table`` is now ``InputSchema``.
Table = _moved.InputSchema


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
