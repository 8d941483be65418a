"""Drift: the training data's distributions, served records counted into the same bins,
and the distances between the two.

One set of functions on both sides, so a value falls in the same bin whether training or
serving counts it:

- ``numeric_reference`` / ``count_numeric``: quantile bin edges of the training values
  (``NUMERIC_BINS``, fewer when values repeat) and counts per bin, plus the missing
  ones. A served value below the first edge or above the last is counted in the first or
  last bin and also as ``below`` / ``above`` (out of the training range).
- ``categorical_reference`` / ``count_categorical``: the ``CATEGORIES_KEPT`` most frequent
  categories and their counts, an ``other`` bucket for the rest, and the missing ones. A
  served category training never saw goes to ``other`` and is also counted ``unknown``.
- ``output_reference`` / ``count_outputs``: the model's own outputs: labels (a
  classifier's ``predict``), the predicted class's probability in ``OUTPUT_BINS`` equal
  bins of [0, 1] (``predict_proba``), or a regressor's values in quantile bins.

Every comparison is between two count vectors over the same bins, the missing values
being a bin of their own (``vector``): ``psi`` (population stability index) and
``js_distance`` (Jensen–Shannon distance, base 2, in [0, 1]). ``compare`` turns a model's
reference and a window's counts into one row per feature, flagged against the
thresholds in ``SMSERVE['DRIFT_PSI']`` / ``['DRIFT_JS']`` once the window holds
``['DRIFT_MIN_RECORDS']`` records.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelapp.metadata import (
    CATEGORICAL,
    NUMERIC,
    Feature,
    ModelMetadata,
    category_value,
)

# Where a model's reference comes from: its training data (metadata.json), or, for a
# model trained elsewhere, the first records it served.
TRAINING, SERVED = "training", "served"
NUMERIC_BINS = 10
CATEGORIES_KEPT = 20
OUTPUT_BINS = 10
# A share of 0 on either side would make PSI infinite: shares are floored at this.
PSI_FLOOR = 1e-4
PROBABILITY_EDGES = [i / OUTPUT_BINS for i in range(OUTPUT_BINS + 1)]


# --- building the reference (training, or the first served records) ---------------------------
def numeric_reference(values: Any, bins: int = NUMERIC_BINS) -> dict[str, Any]:
    """Quantile edges and counts of ``values`` (NaN: missing)."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    if present.size == 0:
        return {"edges": [], "counts": [], "missing": int(values.size)}
    edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, bins + 1)))
    reference = {"edges": edges.tolist(), "counts": [0] * n_numeric_bins(edges)}
    counted = count_numeric(reference, values)
    reference["counts"] = counted["counts"]
    reference["missing"] = counted["missing"]
    return reference


def n_numeric_bins(edges: Any) -> int:
    return max(len(edges) - 1, 1)


def categorical_reference(values: Any, kept: int = CATEGORIES_KEPT) -> dict[str, Any]:
    """The ``kept`` most frequent categories (ties by name) with their counts, the rest in
    ``other``; ``values`` are category texts, NaN for missing (``category_value``)."""
    missing = 0
    counter: Counter[str] = Counter()
    for value in values:
        if _is_missing(value):
            missing += 1
        else:
            counter[str(value)] += 1
    ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    top = ordered[:kept]
    return {
        "categories": [name for name, _ in top],
        "counts": [count for _, count in top],
        "other": sum(count for _, count in ordered[kept:]),
        "missing": missing,
        # Every category seen, so a served one is known or unseen (capped: beyond it,
        # a rare training category counts as unseen).
        "known": [name for name, _ in ordered[:1000]],
    }


def output_reference(
    outputs: dict[str, Any], classes: list[Any] | None
) -> dict[str, Any]:
    """The distribution of a model's outputs on its training (or validation) data:
    ``outputs`` maps a method (``predict``, ``predict_proba``) to its result."""
    out: dict[str, Any] = {}
    predicted = outputs.get("predict")
    if predicted is not None and classes:
        out["labels"] = {
            "classes": [_label(c) for c in classes],
            "counts": [0] * len(classes),
            "other": 0,
        }
        out["labels"].update(count_outputs(out, "predict", predicted)["labels"])
    elif predicted is not None:
        out["values"] = numeric_reference(
            np.asarray(predicted, dtype=np.float64).ravel()
        )
    probabilities = outputs.get("predict_proba")
    if probabilities is not None:
        out["probability"] = {
            "edges": PROBABILITY_EDGES,
            "counts": [0] * OUTPUT_BINS,
            "missing": 0,
        }
        counted = count_outputs(out, "predict_proba", probabilities)["probability"]
        out["probability"]["counts"] = counted["counts"]
    return out


# --- counting served records into the reference's bins ---------------------------------------
def count_numeric(reference: dict[str, Any], values: Any) -> dict[str, Any]:
    """``values`` counted into the bins of a numeric ``reference``."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.asarray(reference.get("edges") or [], dtype=np.float64)
    nan = np.isnan(values)
    present = values[~nan]
    n_bins = n_numeric_bins(edges)
    if edges.size:
        index = np.searchsorted(edges[1:-1], present, side="right")
        counts = np.bincount(index, minlength=n_bins)[:n_bins]
        below = int(np.count_nonzero(present < edges[0]))
        above = int(np.count_nonzero(present > edges[-1]))
    else:
        counts = np.zeros(n_bins, dtype=np.int64)
        below, above = 0, int(present.size)
    return {
        "counts": [int(c) for c in counts],
        "missing": int(np.count_nonzero(nan)),
        "below": below,
        "above": above,
    }


def count_categorical(reference: dict[str, Any], values: Any) -> dict[str, Any]:
    """Category texts (NaN: missing) counted into a categorical ``reference``'s bins."""
    index = {name: i for i, name in enumerate(reference.get("categories") or [])}
    known = set(reference.get("known") or index)
    counts = [0] * len(index)
    other = unknown = missing = 0
    for value in values:
        if _is_missing(value):
            missing += 1
            continue
        value = str(value)
        position = index.get(value)
        if position is not None:
            counts[position] += 1
            continue
        other += 1
        if value not in known:
            unknown += 1
    return {"counts": counts, "other": other, "missing": missing, "unknown": unknown}


def count_outputs(
    reference: dict[str, Any], method: str, result: Any
) -> dict[str, Any]:
    """A method's results counted into the output reference's bins (None where the
    method does not feed a distribution)."""
    counted: dict[str, Any] = {"labels": None, "probability": None, "values": None}
    if method == "predict" and "labels" in reference:
        labels = reference["labels"]
        index = {name: i for i, name in enumerate(labels["classes"])}
        counts = [0] * len(index)
        other = 0
        for value in np.asarray(result).ravel().tolist():
            position = index.get(_label(value))
            if position is None:
                other += 1
            else:
                counts[position] += 1
        counted["labels"] = {"counts": counts, "other": other}
    elif method == "predict" and "values" in reference:
        counted["values"] = count_numeric(
            reference["values"], np.asarray(result, dtype=np.float64).ravel()
        )
    elif method == "predict_proba" and "probability" in reference:
        matrix = np.asarray(result, dtype=np.float64)
        top = matrix.max(axis=1) if matrix.ndim == 2 else matrix.ravel()
        counted["probability"] = count_numeric(reference["probability"], top)
    return counted


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def add(total: Any, more: Any) -> Any:
    """Two counts of the same shape (dicts, lists, numbers) added; a key or list only
    one side has is kept."""
    if isinstance(total, dict) and isinstance(more, dict):
        out = dict(total)
        for key, value in more.items():
            out[key] = add(out[key], value) if key in out else value
        return out
    if isinstance(total, list) and isinstance(more, list):
        if len(total) != len(more):
            return list(more) if len(more) > len(total) else list(total)
        return [add(a, b) for a, b in zip(total, more, strict=True)]
    if isinstance(total, int | float) and isinstance(more, int | float):
        return total + more
    return more if total is None else total


# --- the distances -----------------------------------------------------------------------------
def vector(counted: dict[str, Any], like: dict[str, Any] | None = None) -> list[float]:
    """A distribution's counts as one vector: the bins, then ``other`` (categories and
    labels), then ``missing``, as far as ``like`` (the reference; default: ``counted``
    itself) has them."""
    like = counted if like is None else like
    size = len(like.get("counts") or [])
    counts = list(counted.get("counts") or [])[:size]
    out = [float(c) for c in counts] + [0.0] * (size - len(counts))
    for key in ("other", "missing"):
        if key in like:
            out.append(float(counted.get(key) or 0))
    return out


def _shares(counts: Any) -> np.ndarray:
    array = np.asarray(counts, dtype=np.float64)
    total = array.sum()
    return array / total if total > 0 else array


def psi(expected: Any, actual: Any) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), the shares
    floored at ``PSI_FLOOR``."""
    e = np.maximum(_shares(expected), PSI_FLOOR)
    a = np.maximum(_shares(actual), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(expected: Any, actual: Any) -> float:
    """Jensen–Shannon distance (the square root of the divergence, base 2): 0 for equal
    distributions, 1 for disjoint ones."""
    p, q = _shares(expected), _shares(actual)
    m = (p + q) / 2
    divergence = 0.5 * _kl2(p, m) + 0.5 * _kl2(q, m)
    return float(math.sqrt(max(divergence, 0.0)))


def _kl2(p: np.ndarray, m: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / m[mask])))


# --- a model's reference and a window's counts, compared ------------------------------------
@dataclass
class Thresholds:
    psi: float
    js: float
    min_records: int

    @classmethod
    def from_settings(cls) -> Thresholds:
        from modelapp import conf

        return cls(
            psi=float(conf.get("DRIFT_PSI")),
            js=float(conf.get("DRIFT_JS")),
            min_records=int(conf.get("DRIFT_MIN_RECORDS")),
        )


@dataclass
class FeatureDrift:
    """One feature (or output) of the model, a window against its reference."""

    position: int | None
    name: str
    kind: str
    psi: float
    js: float
    missing_reference: float
    missing_window: float
    # Unseen categories (categorical) or values outside the training range (numeric).
    unseen_window: float
    records: int
    drifting: bool
    # The two count vectors compared (bins, other, missing).
    reference: list[int] = field(default_factory=list)
    window: list[int] = field(default_factory=list)


def compare_one(
    position: int | None,
    name: str,
    kind: str,
    reference: dict[str, Any],
    counted: dict[str, Any] | None,
    thresholds: Thresholds,
) -> FeatureDrift:
    """One distribution, reference against window (``counted`` None: no records)."""
    counted = counted or {}
    expected = vector(reference)
    actual = vector(counted, like=reference)
    records = int(sum(actual))
    measured = records > 0 and sum(expected) > 0
    distance_psi = psi(expected, actual) if measured else 0.0
    distance_js = js_distance(expected, actual) if measured else 0.0
    unseen = int(counted.get("unknown", 0)) + int(counted.get("below", 0))
    unseen += int(counted.get("above", 0))
    return FeatureDrift(
        position=position,
        name=name,
        kind=kind,
        psi=distance_psi,
        js=distance_js,
        missing_reference=_share(reference.get("missing"), sum(expected)),
        missing_window=_share(counted.get("missing"), records),
        unseen_window=_share(unseen, records),
        records=records,
        drifting=records >= thresholds.min_records
        and (distance_psi >= thresholds.psi or distance_js >= thresholds.js),
        reference=[int(c) for c in expected],
        window=[int(c) for c in actual],
    )


def _share(part: Any, whole: float) -> float:
    return float(part or 0) / whole if whole else 0.0


def compare(
    reference: dict[str, Any],
    counts: dict[str, Any],
    thresholds: Thresholds,
) -> tuple[list[FeatureDrift], list[FeatureDrift]]:
    """Every feature and every output distribution of ``reference`` (``Reference``'s
    dict) against a window's ``counts``; features sorted by drift, most first."""
    features = []
    window = counts.get("features") or {}
    for position, feature in enumerate(reference.get("features") or []):
        if not feature or not feature.get("distribution"):
            continue
        features.append(
            compare_one(
                position,
                feature.get("name") or f"column {position}",
                feature.get("kind") or "numeric",
                feature["distribution"],
                window.get(str(position)),
                thresholds,
            )
        )
    features.sort(key=lambda f: (-f.psi, -f.js, f.position or 0))
    outputs = []
    served = counts.get("outputs") or {}
    for key, distribution in (reference.get("outputs") or {}).items():
        outputs.append(
            compare_one(None, key, "output", distribution, served.get(key), thresholds)
        )
    return features, outputs


# --- a model's columns ---------------------------------------------------------------------------
def column(matrix: Any, position: int) -> Any:
    """The values of one feature of a batch (a float matrix, a DataFrame, or a table's
    columns as a compiled table graph takes them: ``schema.Columns``)."""
    if hasattr(matrix, "column"):
        return matrix.column(position)
    if hasattr(matrix, "iloc"):
        return matrix.iloc[:, position].to_numpy()
    return np.asarray(matrix)[:, position]


def distribution_of(kind: str, values: Any) -> dict[str, Any] | None:
    """The reference distribution of one feature's training values (None for a column
    of no known kind)."""
    if kind == CATEGORICAL:
        return categorical_reference([category_value(v) for v in values])
    if kind == NUMERIC:
        return numeric_reference(np.asarray(values, dtype=np.float64))
    return None


def count_feature(
    kind: str, distribution: dict[str, Any], values: Any
) -> dict[str, Any]:
    """One feature's served values counted into its reference's bins."""
    if kind == CATEGORICAL:
        return count_categorical(distribution, [category_value(v) for v in values])
    return count_numeric(distribution, np.asarray(values, dtype=np.float64))


def reference_of(metadata: ModelMetadata | None) -> dict[str, Any] | None:
    """The training reference ``metadata.json`` holds (version 3), or None."""
    if metadata is None or not metadata.features:
        return None
    features = [
        {"name": f.name, "kind": f.kind, "distribution": f.distribution}
        for f in metadata.features
    ]
    if not any(f["distribution"] for f in features):
        return None
    return {"source": TRAINING, "features": features, "outputs": metadata.outputs}


def build_reference(
    matrix: Any,
    features: list[Feature],
    outputs: dict[str, Any],
    classes: list[Any] | None,
    source: str,
) -> dict[str, Any]:
    """A reference from records (``matrix``) and the model's outputs on them."""
    return {
        "source": source,
        "features": [
            {
                "name": feature.name,
                "kind": feature.kind,
                "distribution": distribution_of(feature.kind, column(matrix, j)),
            }
            for j, feature in enumerate(features)
        ],
        "outputs": output_reference(outputs, classes),
    }


def record_distributions(
    estimator: Any,
    features: list[Feature],
    train: Any,
    scored: Any,
    classes: Any,
) -> dict[str, Any]:
    """Training's part (``train``): each feature's ``distribution`` set from the training
    data, and the output distribution returned, from the model's outputs on ``scored``
    (the validation data, else the training data)."""
    if len(features) == train.X.shape[1]:
        for j, feature in enumerate(features):
            feature.distribution = distribution_of(feature.kind, column(train.X, j))
    outputs: dict[str, Any] = {}
    for method in ("predict", "predict_proba"):
        if callable(getattr(estimator, method, None)):
            outputs[method] = getattr(estimator, method)(scored.X)
    listed = (
        [c.item() if hasattr(c, "item") else c for c in classes]
        if classes is not None
        else None
    )
    return output_reference(outputs, listed)
