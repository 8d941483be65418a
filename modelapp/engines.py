"""Moved to ``modelapp.predictors.compiled``. This name is kept for one release, for dotted
paths already in settings (``SMSERVE['PREDICTORS']``) and imports."""

import warnings
from typing import Any

from modelapp.predictors import compiled as _moved

warnings.warn(
    "modelapp.engines is now modelapp.predictors.compiled; "
    "the old name goes in the next release.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
