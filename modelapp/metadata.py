"""``metadata.json``: the one record that travels with a model from training to serving.

SageMaker trains and serves in different containers and only ``/opt/ml/model`` travels, so
this file is the contract between them. ``ModelMetadata`` is its one definition: training
writes it (``modelapp.training.run``), the registry reads it, the predictors take the
model's input schema from it and the admin shows it. Everything else in the codebase goes
through this class, never through the file's keys.

Schema versions:

- 1 (no ``schema_version`` key; smserve 0.1): ``n_features`` and ``feature_names``
  (``null`` for headerless data).
- 2: adds ``schema_version`` and ``features``, one object per input column in the model's
  order: ``name`` (``null`` when the training data had no header), ``kind``
  (``numeric`` or ``categorical``), and for categorical columns the ``categories`` seen
  (capped) with their ``n_categories``. ``n_features`` and ``feature_names`` are still
  written, so a reader of version 1 reads version 2 files too. Optional, per feature:
  ``missing``, the share of missing values in the training data, and ``typical``, a
  typical number (the training median) that serving's warm-up record uses.
- 3: adds the training distributions drift is measured against (``modelapp/drift.py``):
  per feature an optional ``distribution`` (numeric: quantile ``edges``, ``counts`` per
  bin and ``missing``; categorical: the most frequent ``categories`` with their
  ``counts``, ``other``, ``missing`` and every ``known`` category), and ``outputs``, the
  distribution of the model's own outputs on the validation data (else the training
  data): ``labels``, ``probability`` (the predicted class's, in ten bins) or
  ``values`` (a regressor's, in quantile bins). Files of versions 1 and 2 have none.
  Optional in version 3 (no new version: an older reader keeps it as an unknown key):
  ``report``, the model report (``modelapp/report.py``) on the validation data or a
  held-out split of train; absent or empty in files written before it.

A model trained elsewhere (a bare joblib) has no file: ``ModelMetadata.from_estimator``
derives its schema from the model (``schema_of``). A third kind, ``any``, is for columns
the model says nothing about: a field that parses as a number is a number, anything
else is text.

Keys this module does not know are kept (``extra``) and written back unchanged, so a newer
writer's fields survive an older reader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
METADATA_FILE = "metadata.json"
NUMERIC, CATEGORICAL, ANY = "numeric", "categorical", "any"
# Categories kept per feature in metadata.json (n_categories counts them all).
MAX_CATEGORIES_KEPT = 100
# More features than a dense model served over HTTP takes: a larger ``n_features`` is a
# broken file (10**9 would be 10**9 objects), so the width comes from the model instead.
MAX_FEATURES = 100_000


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON: numpy scalars and arrays unwrapped, tuples and sets as
    lists, NaN/infinity as strings (JSON has none), estimators and classes by dotted path,
    functions by qualified name, anything else by ``repr``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, type) or callable(getattr(value, "get_params", None)):
        return dotted_path(value)
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def dotted_path(obj: Any) -> str:
    """The public dotted path of ``obj``'s class: ``sklearn.tree.DecisionTreeClassifier``
    rather than its private home ``sklearn.tree._classes``, when the package exports it."""
    import sys

    cls = obj if isinstance(obj, type) else type(obj)
    module = cls.__module__
    parts = module.split(".")
    while len(parts) > 1 and parts[-1].startswith("_"):
        parent = sys.modules.get(".".join(parts[:-1]))
        if getattr(parent, cls.__qualname__, None) is not cls:
            break
        parts.pop()
        module = ".".join(parts)
    return f"{module}.{cls.__qualname__}"


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes: the identity of a model artifact."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Feature:
    """One input column of the model, in the model's order."""

    name: str | None = None
    kind: str = NUMERIC
    categories: list[Any] | None = None
    n_categories: int | None = None
    # Share of missing values in the training data (0..1); None: not known.
    missing: float | None = None
    # A typical value of a numeric feature (its training median); None: not known.
    typical: float | None = None
    # The training values' bins and counts (modelapp/drift.py); None: not recorded.
    distribution: dict[str, Any] | None = None

    @property
    def numeric_categories(self) -> bool:
        """Categories that are numbers (an encoder fitted on a numeric column): the
        column's fields are read as numbers, not as text."""
        return bool(self.categories) and all(
            isinstance(c, int | float) and not isinstance(c, bool)
            for c in self.categories or ()
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.categories is not None:
            out["categories"] = json_safe(self.categories)
            out["n_categories"] = self.n_categories
        if self.missing is not None:
            out["missing"] = round(float(self.missing), 6)
        if self.typical is not None:
            out["typical"] = json_safe(self.typical)
        if self.distribution is not None:
            out["distribution"] = json_safe(self.distribution)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Feature:
        if not isinstance(data, dict):
            return cls(name=str(data))
        name = data.get("name")
        return cls(
            name=None if name is None else str(name),
            kind=str(data.get("kind") or NUMERIC),
            categories=data.get("categories"),
            n_categories=data.get("n_categories"),
            missing=_number(data.get("missing")),
            typical=_number(data.get("typical")),
            distribution=(
                data["distribution"]
                if isinstance(data.get("distribution"), dict)
                else None
            ),
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def category_value(value: Any) -> Any:
    """A categorical field as the text training saw: ``"pro"``, ``3`` and ``3.0`` as
    ``"3"``, ``True`` as ``"True"`` (pandas' spelling); a missing one (None, NaN, blank)
    as NaN. Training and serving both go through here, so a category is spelt one way."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return math.nan
    if isinstance(value, str):
        return value if value.strip() else math.nan
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return math.nan
        if float(value).is_integer():
            return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    return str(value)


@dataclass
class ModelMetadata:
    """What is known about one model artifact (see the module docstring for the file)."""

    estimator: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    features: list[Feature] | None = None
    target: str | int | None = None
    classes: list[Any] | None = None
    task: str | None = None
    # What training put before the estimator for a table: encoding, imputation.
    preprocessing: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    training_job_name: str | None = None
    duration_seconds: float | None = None
    sha256: str | None = None
    # What train compiled beside the model (model.onnx, verification.npy;
    # predictors/compiled.py).
    compiled: dict[str, Any] = field(default_factory=dict)
    # The distribution of the model's outputs on its validation (else training) data.
    outputs: dict[str, Any] = field(default_factory=dict)
    # How good the model is on data it was not fitted on (modelapp/report.py).
    report: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # Keys of a newer (or foreign) writer, kept as they were.
    extra: dict[str, Any] = field(default_factory=dict)

    # --- the input schema ---
    @property
    def n_features(self) -> int | None:
        return len(self.features) if self.features is not None else None

    @property
    def feature_names(self) -> list[str] | None:
        """The column names, when the model was trained on named columns."""
        names = [f.name for f in self.features or ()]
        if not names or None in names:
            return None
        return [name for name in names if name is not None]

    # --- the file ---
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in fields(self):
            if f.name in ("schema_version", "extra", "features"):
                continue
            out[f.name] = getattr(self, f.name)
        out["n_features"] = self.n_features
        out["feature_names"] = self.feature_names
        out["features"] = (
            [feature.to_dict() for feature in self.features]
            if self.features is not None
            else None
        )
        return json_safe({**self.extra, **out})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        """Any version of the file (an unversioned one is version 1)."""
        data = dict(data)
        version = data.pop("schema_version", 1)
        n_features = data.pop("n_features", None)
        names = data.pop("feature_names", None)
        raw_features = data.pop("features", None)
        if isinstance(raw_features, list):
            features = [Feature.from_dict(item) for item in raw_features]
        elif isinstance(names, list):
            features = [Feature(name=str(name)) for name in names]
        elif isinstance(n_features, int) and 0 < n_features <= MAX_FEATURES:
            features = [Feature() for _ in range(n_features)]
        else:
            features = None
        known = {f.name for f in fields(cls)} - {"extra", "features", "schema_version"}
        values = {key: data.pop(key) for key in list(data) if key in known}
        for key in (
            "params",
            "hyperparameters",
            "preprocessing",
            "metrics",
            "rows",
            "channels",
            "compiled",
            "outputs",
            "report",
        ):
            if not isinstance(values.get(key), dict):
                values.pop(key, None)
        if not isinstance(values.get("versions"), dict):
            values.pop("versions", None)
        values["estimator"] = str(values.get("estimator") or "")
        return cls(
            **values,
            features=features,
            schema_version=int(version) if isinstance(version, int) else 1,
            extra=data,
        )

    @classmethod
    def from_estimator(cls, estimator: Any) -> ModelMetadata:
        """What a model trained elsewhere (a bare joblib) says about itself."""
        get_params = getattr(estimator, "get_params", None)
        classes = getattr(estimator, "classes_", None)
        return cls(
            estimator=dotted_path(estimator),
            params=json_safe(get_params(deep=False)) if callable(get_params) else {},
            features=schema_of(estimator),
            classes=json_safe(classes) if classes is not None else None,
        )

    @classmethod
    def read(cls, model_dir: Path) -> ModelMetadata | None:
        """``model_dir/metadata.json``, or None when it is absent or unreadable (logged)."""
        path = Path(model_dir) / METADATA_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            logger.error("Ignoring %s: it is not UTF-8 (%s).", path, exc)
            return None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            logger.error("Ignoring %s: it is not valid JSON (%s).", path, exc)
            return None
        if not isinstance(data, dict):
            logger.error("Ignoring %s: it is not a JSON object.", path)
            return None
        n_features = data.get("n_features")
        if isinstance(n_features, int) and n_features > MAX_FEATURES:
            logger.error(
                "Ignoring n_features=%d in %s: more than %d; the model itself says "
                "how many it takes.",
                n_features,
                path,
                MAX_FEATURES,
            )
        return cls.from_dict(data)


# --- the schema of a model trained elsewhere -------------------------------------------------
def schema_of(estimator: Any) -> list[Feature] | None:
    """The input columns of a fitted model, as far as the model tells.

    Names from ``feature_names_in_``, the width from ``n_features_in_``. The kinds from the
    model's first step: a ``ColumnTransformer`` tells per column (an encoder's columns are
    categorical with its ``categories_``; a column an imputer fitted as numbers is numeric;
    a passed-through or dropped column, or one a transformer of its own takes, is ``any``);
    an encoder first makes every column categorical; any other estimator (a tree, a
    scaler) takes numbers only.
    """
    names = getattr(estimator, "feature_names_in_", None)
    width = getattr(estimator, "n_features_in_", None)
    if names is not None:
        features = [Feature(name=str(name)) for name in names]
    elif width:
        features = [Feature() for _ in range(int(width))]
    else:
        return None
    try:
        first = _first_step(estimator)
        if hasattr(first, "transformers_"):
            indices = getattr(first, "_transformer_to_input_indices", None) or {}
            for name, transformer, _ in first.transformers_:
                columns = [int(i) for i in indices.get(name, [])]
                _describe_columns(transformer, [features[i] for i in columns])
        else:
            _describe_columns(first, features)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        # A model built in a way this does not foresee is still served, by the rule
        # for columns nothing is known about.
        logger.warning("Could not derive the model's column types.", exc_info=True)
        features = [Feature(name=f.name, kind=ANY) for f in features]
    return features


def _first_step(estimator: Any) -> Any:
    while hasattr(estimator, "steps") and estimator.steps:
        estimator = estimator.steps[0][1]
    return estimator


def _describe_columns(transformer: Any, features: list[Feature]) -> None:
    """Set the kind of ``features``, the columns ``transformer`` was fitted on, in order."""
    if isinstance(transformer, str):  # "drop" or "passthrough": no word on the type
        kind = ANY
        for feature in features:
            feature.kind = kind
        return
    steps = [s for _, s in getattr(transformer, "steps", [])] or [transformer]
    for step in steps:
        categories = getattr(step, "categories_", None)
        if categories is not None and len(categories) == len(features):
            for feature, values in zip(features, categories, strict=True):
                known = [v for v in np.asarray(values).tolist() if v == v]  # not NaN
                feature.kind = CATEGORICAL
                feature.categories = json_safe(known[:MAX_CATEGORIES_KEPT])
                feature.n_categories = len(known)
            return
        fit_dtype = getattr(step, "_fit_dtype", None)  # SimpleImputer keeps it
        if fit_dtype is not None:
            if np.dtype(fit_dtype).kind in "OUSb":
                kind = CATEGORICAL
            else:
                kind = NUMERIC
                typical = getattr(step, "statistics_", None)
            for i, feature in enumerate(features):
                feature.kind = kind
                if (
                    kind == NUMERIC
                    and typical is not None
                    and len(typical) == len(features)
                ):
                    feature.typical = _number(float(typical[i]))
            if kind == CATEGORICAL:
                continue  # an encoder may follow with the categories
            return
        if step.__module__.startswith("sklearn.") and not _takes_text(step):
            for feature in features:
                feature.kind = NUMERIC
            return
        break
    for feature in features:
        if feature.kind == NUMERIC and feature.categories is None:
            feature.kind = ANY


def _takes_text(step: Any) -> bool:
    """Whether a scikit-learn estimator may be fitted on text (its tags, else its
    module: feature extraction and function transformers take anything)."""
    try:
        from sklearn.utils import get_tags

        tags = get_tags(step).input_tags
        if tags.string or tags.categorical:
            return True
    except (ImportError, AttributeError, TypeError, ValueError):
        return True
    return step.__module__.startswith(
        ("sklearn.feature_extraction", "sklearn.preprocessing._function_transformer")
    )


def allows_nan(estimator: Any) -> bool:
    """Whether ``estimator`` takes missing values (NaN). A pipeline does when an imputer
    comes before any step that cannot (scikit-learn tags every pipeline as refusing
    them)."""
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list):
        for _, step in steps:
            if step is None or step == "passthrough":
                continue
            if type(step).__module__.startswith("sklearn.impute"):
                return True
            if not allows_nan(step):
                return False
        return True
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(estimator).input_tags.allow_nan)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
