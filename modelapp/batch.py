"""``Batch``: the records of one request, as the parsers hand them to the predictors.

The core type of the serving path, independent of HTTP and of any one format: parsers
(``parsers.py``) make batches from bytes, predictors (``predictors.py``) check them against
the model and predict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modelapp.exceptions import InvalidInput


@dataclass
class Batch:
    """Records from one request, in order.

    Exactly one of ``values`` and ``records`` is set. ``values`` is a float array, 2-D
    (records x features) or 1-D when the body was a flat list (``flat``): one record, or one
    value per record for a single-feature model, which only the model can tell apart.
    ``records`` holds ``{feature: value}`` objects. ``columns`` are a CSV header's names.
    """

    values: np.ndarray | None = None
    records: list[dict[str, Any]] | None = None
    columns: list[str] | None = None

    @property
    def flat(self) -> bool:
        return self.values is not None and self.values.ndim == 1

    def __len__(self) -> int:
        if self.records is not None:
            return len(self.records)
        return 1 if self.flat else len(self.values)


def to_float_rows(rows: list[list[Any]], what: str) -> np.ndarray:
    """Rows of equal width -> float array; blank CSV fields are missing values (NaN)."""
    widths = {len(row) for row in rows}
    if len(widths) > 1:
        first = len(rows[0])
        for number, row in enumerate(rows, 1):
            if len(row) != first:
                raise InvalidInput(
                    f"Every record must have the same number of features: record 1 has "
                    f"{first}, record {number} has {len(row)}."
                )
    try:
        return np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        pass
    for number, row in enumerate(rows, 1):
        for column, value in enumerate(row, 1):
            if isinstance(value, str) and value.strip() == "":
                continue
            try:
                float(value)
            except (ValueError, TypeError):
                raise InvalidInput(
                    f"Record {number}, feature {column}: {value!r} is not a number; {what} "
                    f"must hold numbers only."
                ) from None
    # Only blank fields were in the way: they are missing values.
    return np.array(
        [
            [np.nan if isinstance(v, str) and not v.strip() else v for v in row]
            for row in rows
        ],
        dtype=np.float64,
    )
