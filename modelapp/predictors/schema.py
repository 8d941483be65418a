"""A model's input schema applied to a request's records: parsers stay format-only, the
predictor applies the schema.

``InputSchema`` knows each input column's kind (``metadata.Feature``): a model with a
categorical column takes a DataFrame with the training-time columns, in the model's
order, numbers as float64 (a blank field or ``null`` is NaN) and categories as the text
training saw (``metadata.category_value``). A column of kind ``any`` (a model trained
elsewhere that says nothing about it) reads a field as a number when it parses as one and
as text otherwise. Errors name the record, the feature and the value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelapp.exceptions import InvalidInput
from modelapp.metadata import (
    ANY,
    CATEGORICAL,
    Feature,
    ModelMetadata,
    category_value,
    schema_of,
)
from modelapp.text import brief

# Categories named in an error message, at most.
SHOWN_CATEGORIES = 8


class Columns:
    """A batch of a table, one array per column keyed by the model's column labels
    (numbers as float64 with NaN for a gap, text as objects): what a compiled table
    graph takes, without the cost of a DataFrame (most of a one-record prediction's).
    ``frame()`` is the DataFrame scikit-learn takes; slicing selects records."""

    def __init__(self, data: dict[Any, np.ndarray], n_records: int) -> None:
        self.data = data
        self.n_records = n_records

    def __len__(self) -> int:
        return self.n_records

    def __getitem__(self, rows: Any) -> Columns:
        data = {label: column[rows] for label, column in self.data.items()}
        first = next(iter(data.values()), None)
        return Columns(data, len(first) if first is not None else 0)

    @classmethod
    def concat(cls, parts: list[Columns]) -> Columns:
        """The records of ``parts``, in order, as one batch."""
        data = {
            label: np.concatenate([part.data[label] for part in parts])
            for label in parts[0].data
        }
        return cls(data, sum(part.n_records for part in parts))

    def column(self, position: int) -> np.ndarray:
        """The values of the feature at ``position`` (the schema's order)."""
        return list(self.data.values())[position]

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.data, copy=False)

    @property
    def iloc(self) -> Any:
        """The DataFrame's ``iloc``: where an error names a record, a frame is made."""
        return self.frame().iloc


class InputSchema:
    """The schema of one model's input; ``features`` is None when it is not known."""

    def __init__(self, features: list[Feature] | None, labels: list[Any]) -> None:
        self.features = features
        # The DataFrame's column labels: the names the model was fitted with, else the
        # positions (a model fitted on a headerless table).
        self.labels = labels
        kinds = {f.kind for f in features or ()}
        self.is_frame = CATEGORICAL in kinds
        self.takes_text = bool(kinds & {CATEGORICAL, ANY})

    @classmethod
    def for_model(
        cls,
        model: Any,
        metadata: ModelMetadata | None,
        n_features: int | None,
        feature_names: list[str] | None,
    ) -> InputSchema:
        features = metadata.features if metadata is not None else None
        if not features:
            features = schema_of(model)
        if features is None and n_features:
            features = [Feature() for _ in range(n_features)]
        if features is not None and n_features and len(features) != n_features:
            features = [Feature() for _ in range(n_features)]
        if features is not None and feature_names is not None:
            for feature, name in zip(features, feature_names, strict=False):
                feature.name = name
        named = getattr(model, "feature_names_in_", None) is not None
        labels = (
            list(feature_names)
            if named and feature_names is not None
            else list(range(len(features or ())))
        )
        return cls(features, labels)

    def label(self, j: int) -> str:
        name = self.features[j].name if self.features else None
        return repr(name) if name is not None else str(j + 1)

    # --- records -> DataFrame ---
    def to_frame(self, rows: Any) -> Any:
        """Rows of fields (lists, or a 2-D float array) in the model's order -> the
        DataFrame the model was fitted on, or ``InvalidInput`` naming the field."""
        return self.to_columns(rows).frame()

    def to_columns(self, rows: Any) -> Columns:
        """``to_frame``'s columns, before they become a DataFrame (``Columns``)."""
        data = {}
        array = isinstance(rows, np.ndarray)
        for j, feature in enumerate(self.features or ()):
            cells = rows[:, j] if array else [row[j] for row in rows]
            if feature.kind == CATEGORICAL and not feature.numeric_categories:
                column = _categories(cells)
            elif feature.kind == ANY:
                column = self._numbers_or_text(cells)
            else:
                column = self._numbers(j, cells)
            data[self.labels[j]] = column
        return Columns(data, len(rows))

    def _numbers(self, j: int, cells: Any) -> np.ndarray:
        try:
            column = np.asarray(cells, dtype=np.float64)
        except (ValueError, TypeError):
            column = np.empty(len(cells))
            for i, value in enumerate(cells):
                if value is None or (isinstance(value, str) and not value.strip()):
                    column[i] = math.nan
                    continue
                try:
                    column[i] = float(value)
                except (ValueError, TypeError):
                    raise InvalidInput(
                        f"Record {i + 1}, feature {self.label(j)}: {brief(value)} is not a "
                        "number."
                    ) from None
        if np.isinf(column).any():
            i = int(np.flatnonzero(np.isinf(column))[0])
            raise InvalidInput(
                f"Record {i + 1}, feature {self.label(j)} is {column[i]}: this model "
                "does not accept infinite values."
            )
        return column

    @staticmethod
    def _numbers_or_text(cells: Any) -> np.ndarray:
        try:
            return np.asarray(cells, dtype=np.float64)
        except (ValueError, TypeError):
            pass
        out = []
        for value in cells:
            try:
                out.append(float(value) if not isinstance(value, bool) else value)
            except (ValueError, TypeError):
                out.append(category_value(value))
        return np.array(out, dtype=object)

    # --- warm-up and errors ---
    def typical_record(self) -> list[Any] | None:
        """One record of known categories and typical numbers; None: width unknown."""
        if self.features is None:
            return None
        record = []
        for feature in self.features:
            if feature.kind == CATEGORICAL:
                record.append(feature.categories[0] if feature.categories else None)
            else:
                record.append(feature.typical if feature.typical is not None else 0.0)
        return record

    def rejection(self, frame: Any, record: int, exc: Exception) -> str:
        """What to tell the caller when the model rejected record ``record`` (0-based)."""
        where = f"Record {record + 1}"
        if self.features and hasattr(frame, "iloc"):
            row = frame.iloc[record]
            for j, feature in enumerate(self.features):
                value = row.iloc[j]
                known = feature.categories
                if (
                    feature.kind == CATEGORICAL
                    and known is not None
                    and feature.n_categories == len(known)
                    and _present(value)
                    and value not in known
                ):
                    shown = ", ".join(map(repr, known[:SHOWN_CATEGORIES]))
                    more = ", ..." if len(known) > SHOWN_CATEGORIES else ""
                    return (
                        f"{where}, feature {self.label(j)}: {brief(value)} is not a category "
                        f"the model was trained with ({shown}{more}); the model says: "
                        f"{exc}"
                    )
            for j in range(len(self.features)):
                if not _present(row.iloc[j]):
                    return (
                        f"{where}, feature {self.label(j)} is missing, and the model "
                        f"does not accept that: {exc}"
                    )
        return f"{where}: the model rejected it: {exc}"


def _categories(cells: Any) -> np.ndarray:
    """A column of category text; text fields (CSV, JSON strings) are spelt once per
    distinct value, not once per record."""
    if not isinstance(cells, np.ndarray) and set(map(type, cells)) == {str}:
        spelt = {value: category_value(value) for value in set(cells)}
        if all(spelt[value] is value for value in spelt):
            return np.array(cells, dtype=object)  # no blank among them
        return np.array([spelt[value] for value in cells], dtype=object)
    return np.array([category_value(value) for value in cells], dtype=object)


def _present(value: Any) -> bool:
    return not (value is None or (isinstance(value, float) and math.isnan(value)))
