"""Moved to ``modelapp.predictors.script``. This name is kept for one release, for dotted
paths already in settings (``SMSERVE['PREDICTORS']``) and imports."""

import warnings
from typing import Any

from modelapp.predictors import script as _moved

warnings.warn(
    "modelapp.script_predictor is now modelapp.predictors.script; "
    "the old name goes in the next release.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
