"""Tables with text columns as ONNX graphs: a ``Pipeline`` whose first step is a fitted
``ColumnTransformer`` (what ``train`` writes for a table with text columns, or the same
trained elsewhere) becomes one graph that takes the table's own columns.

- **Inputs**: one string tensor ``[None]`` per text column (``c<j>``, ``j`` the column's
  position in the model's order; a missing field is ``MISSING``), and one float tensor
  ``numbers`` ``[None, n_numeric]`` with the numeric columns in the model's order (NaN
  where missing); float32 or float64 as the estimator computes (``compiled.input_dtype``).
- **Encoders** (``OrdinalEncoder``, ``OneHotEncoder``, whatever their options): each
  column's output is read off the fitted encoder itself, by transforming a probe record
  per category, one holding an unseen category and one holding a missing value. An
  encoder's output is a sum of one part per column, so the graph adds a base row (every
  column at its first category) and, per column, the difference its value makes: an
  ``ai.onnx.ml`` ``LabelEncoder`` maps the text to its probe's row, a ``Gather`` picks it.
  Unknown categories and missing values therefore come out as scikit-learn's own rule
  says (NaN, ``-1``, the infrequent column, all zeros).
- **Numbers**: ``passthrough`` as they are, ``SimpleImputer`` (NaN as the missing value,
  no indicator) as ``Where(IsNaN(x), statistic, x)``.
- **The estimator** (the pipeline's remaining steps) is converted as a bare model is
  (``compiled.convert``, passed in) on the transformer's output width, and its graph
  appended.
  A tree or forest (our ``tree_onnx``) sends NaN where scikit-learn does, by each node's
  ``missing_go_to_left``; so the encoders' NaN codes (unknown or missing categories) and
  numeric gaps reach the trees as they reach scikit-learn's.

Anything else (other transformers, sparse output, unknown categories that are an error,
numeric categories) raises ``NotConvertible``, and the model stays with scikit-learn.
Verification (``compiled.py``) decides whether the graph serves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from modelapp.metadata import CATEGORICAL, Feature

# The text a missing field is fed to the graph as, and an unseen category probed as.
MISSING = "\x00missing"
UNSEEN = "\x00unseen"
NUMBERS = "numbers"
ENCODERS = frozenset({"OrdinalEncoder", "OneHotEncoder"})


class NotConvertible(ValueError):
    """A table pipeline this converter cannot express exactly."""


def is_table_pipeline(model: Any) -> bool:
    """A fitted ``Pipeline`` whose first step is a ``ColumnTransformer``."""
    steps = getattr(model, "steps", None)
    if not steps:
        return False
    return hasattr(steps[0][1], "transformers_")


def text_columns(features: list[Feature]) -> list[int]:
    """The positions of the columns fed to the graph as text."""
    return [
        j
        for j, f in enumerate(features)
        if f.kind == CATEGORICAL and not f.numeric_categories
    ]


def _positions(columns: Any, labels: list[Any]) -> list[int]:
    """A transformer's column selection as positions in the model's order."""
    if isinstance(columns, str | int):
        columns = [columns]
    selected = list(np.asarray(columns).tolist()) if len(columns) else []
    if selected and all(isinstance(c, bool) for c in selected):
        return [j for j, keep in enumerate(selected) if keep]
    out = []
    for column in selected:
        if isinstance(column, int):
            out.append(column)
        elif column in labels:
            out.append(labels.index(column))
        else:
            raise NotConvertible(f"column {column!r} is not one of the model's")
    return out


def blocks(model: Any, features: list[Feature], labels: list[Any]) -> list[Any]:
    """The transformer's parts in output order: ``(kind, transformer, positions)``,
    kind ``encoder`` or ``numbers``."""
    transformer = model.steps[0][1]
    if getattr(transformer, "sparse_output_", False):
        raise NotConvertible("the ColumnTransformer's output is sparse")
    text = set(text_columns(features))
    out = []
    for name, part, columns in transformer.transformers_:
        positions = _positions(columns, labels)
        if part == "drop" or not positions:
            continue
        is_text = [j in text for j in positions]
        if all(is_text) and type(part).__name__ in ENCODERS:
            if getattr(part, "handle_unknown", "error") == "error":
                raise NotConvertible(f"{name}: an unknown category is an error")
            out.append(("encoder", part, positions))
        elif not any(is_text) and _passthrough(part):
            out.append(("numbers", "passthrough", positions))
        elif not any(is_text) and type(part).__name__ == "SimpleImputer":
            out.append(("numbers", part, positions))
        else:
            raise NotConvertible(
                f"{name}: {type(part).__name__} on "
                + ("text" if any(is_text) else "numeric")
                + " columns is not converted"
            )
    return out


def _passthrough(part: Any) -> bool:
    """``passthrough``, which a fitted ColumnTransformer holds as a FunctionTransformer
    without a function."""
    if isinstance(part, str):
        return part == "passthrough"
    return type(part).__name__ == "FunctionTransformer" and part.func is None


def _probe(encoder: Any, base: list[Any], i: int, values: list[Any]) -> np.ndarray:
    """``encoder``'s output for ``base`` with its column ``i`` set to each of
    ``values``, dense, float64."""
    rows = np.array([base] * len(values), dtype=object)
    rows[:, i] = np.array(values, dtype=object)
    names = getattr(encoder, "feature_names_in_", None)
    if names is not None:
        import pandas as pd

        probe: Any = pd.DataFrame(rows, columns=list(names))
    else:
        probe = rows
    out = encoder.transform(probe)
    out = out.toarray() if hasattr(out, "toarray") else np.asarray(out)
    return out.astype(np.float64)


def encoder_tables(encoder: Any) -> tuple[np.ndarray, list[tuple[list[str], Any]]]:
    """The base row, and per column its categories (the ``LabelEncoder`` keys) with
    the row each adds to the base; the last two rows are an unseen category's and a
    missing value's."""
    categories = [list(c) for c in encoder.categories_]
    base = []
    for known in categories:
        if not known or not isinstance(known[0], str):
            raise NotConvertible("an encoder's categories are not text")
        base.append(known[0])
    base_row = _probe(encoder, base, 0, [base[0]])[0]
    if np.isnan(base_row).any():
        raise NotConvertible("an encoder codes a known category as missing")
    columns = []
    for i, known in enumerate(categories):
        text = [c for c in known if isinstance(c, str)]
        if len(text) != len(known) - sum(_is_nan(c) for c in known):
            raise NotConvertible("an encoder's categories are not text")
        out = _probe(encoder, base, i, [*text, UNSEEN, math.nan])
        # What the column's value adds to the base row (exact zeros elsewhere).
        delta = np.where(out == base_row, 0.0, out - base_row)
        columns.append((text, delta))
    return base_row, columns


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def to_onnx(
    model: Any,
    features: list[Feature],
    labels: list[Any],
    convert: Callable[[Any, int], bytes],
    dtype: type,
) -> bytes:
    """``model`` as one graph over the table's columns (module doc); ``convert(estimator,
    width)`` converts the estimator after the transformer, fed ``dtype`` numbers
    (``compiled.convert``, ``compiled.input_dtype``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from modelapp.predictors import tree_onnx

    if not is_table_pipeline(model):
        raise NotConvertible("not a Pipeline starting with a ColumnTransformer")
    parts = blocks(model, features, labels)
    rest = model.steps[1][1] if len(model.steps) == 2 else model[1:]
    width = sum(_width(kind, part, positions) for kind, part, positions in parts)
    if getattr(rest, "n_features_in_", width) != width:
        raise NotConvertible("the transformer's output is not what the estimator takes")
    estimator = onnx.load_from_string(convert(rest, width))
    float_type = TensorProto.FLOAT if dtype is np.float32 else TensorProto.DOUBLE
    if tree_onnx.supports(rest, width) and rest.__class__.__name__ != "Pipeline":
        _missing_directions(estimator, rest)

    graph = estimator.graph
    (old_input,) = list(graph.input)
    ml_opset = max(
        [o.version for o in estimator.opset_import if o.domain == "ai.onnx.ml"],
        default=0,
    )
    if ml_opset < 2:  # LabelEncoder's keys/values form
        for o in list(estimator.opset_import):
            if o.domain == "ai.onnx.ml":
                estimator.opset_import.remove(o)
        estimator.opset_import.append(helper.make_opsetid("ai.onnx.ml", 2))
        ml_opset = 2
    numeric = [j for j in range(len(features)) if j not in set(text_columns(features))]
    nodes: list[Any] = []
    inits: list[Any] = []
    inputs: list[Any] = []
    outputs: list[str] = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    fdt = np.dtype(dtype)
    if numeric:
        inputs.append(
            helper.make_tensor_value_info(NUMBERS, float_type, [None, len(numeric)])
        )
    for b, (kind, part, positions) in enumerate(parts):
        out = f"table_block{b}"
        if kind == "numbers":
            index = np.array([numeric.index(j) for j in positions], np.int64)
            taken = f"table_numbers{b}"
            nodes.append(
                helper.make_node(
                    "Gather", [NUMBERS, const(f"table_idx{b}", index)], [taken], axis=1
                )
            )
            if part == "passthrough":
                nodes.append(helper.make_node("Identity", [taken], [out]))
            else:
                fill = _imputer_fill(part, len(positions)).astype(fdt)
                nan = f"table_isnan{b}"
                nodes.append(helper.make_node("IsNaN", [taken], [nan]))
                nodes.append(
                    helper.make_node(
                        "Where", [nan, const(f"table_fill{b}", fill), taken], [out]
                    )
                )
        else:
            base_row, columns = encoder_tables(part)
            total = const(f"table_base{b}", base_row.astype(fdt)[None, :])
            for i, (j, (keys, delta)) in enumerate(
                zip(positions, columns, strict=True)
            ):
                name = f"c{j}"
                if not any(x.name == name for x in inputs):
                    inputs.append(
                        helper.make_tensor_value_info(name, TensorProto.STRING, [None])
                    )
                row = f"table_row{b}_{i}"
                # Known categories map to their rows; MISSING to the last; anything
                # else (an unseen category) to the one before it.
                nodes.append(
                    helper.make_node(
                        "LabelEncoder",
                        [name],
                        [row],
                        domain="ai.onnx.ml",
                        keys_strings=[*keys, MISSING],
                        values_int64s=[*range(len(keys)), len(keys) + 1],
                        default_int64=len(keys),
                    )
                )
                picked = f"table_pick{b}_{i}"
                nodes.append(
                    helper.make_node(
                        "Gather",
                        [const(f"table_delta{b}_{i}", delta.astype(fdt)), row],
                        [picked],
                        axis=0,
                    )
                )
                summed = f"table_sum{b}_{i}"
                nodes.append(helper.make_node("Add", [total, picked], [summed]))
                total = summed
            nodes.append(helper.make_node("Identity", [total], [out]))
        outputs.append(out)
    nodes.append(helper.make_node("Concat", outputs, [old_input.name], axis=1))
    del graph.input[:]
    graph.input.extend(inputs)
    for position, node in enumerate(nodes):
        graph.node.insert(position, node)
    graph.initializer.extend(inits)
    return estimator.SerializeToString()


def _width(kind: str, part: Any, positions: list[int]) -> int:
    if kind == "numbers":
        return len(positions)
    return int(len(part.get_feature_names_out()))


def _imputer_fill(imputer: Any, n: int) -> np.ndarray:
    missing = imputer.missing_values
    if not (isinstance(missing, float) and math.isnan(missing)):
        raise NotConvertible("a SimpleImputer whose missing value is not NaN")
    if getattr(imputer, "add_indicator", False):
        raise NotConvertible("a SimpleImputer with a missing indicator")
    fill = np.asarray(imputer.statistics_, dtype=np.float64)
    if fill.shape != (n,) or np.isnan(fill).any():
        raise NotConvertible("a SimpleImputer that drops an empty column")
    return fill


def _missing_directions(estimator: Any, forest: Any) -> None:
    """Send NaN where each scikit-learn node does (``missing_go_to_left``)."""
    trees = list(getattr(forest, "estimators_", None) or [forest])
    directions = np.concatenate(
        [np.asarray(t.tree_.missing_go_to_left, dtype=np.int64) for t in trees]
    )
    for node in estimator.graph.node:
        if node.op_type.startswith("TreeEnsemble"):
            for attribute in node.attribute:
                if attribute.name == "nodes_missing_value_tracks_true":
                    del attribute.ints[:]
                    attribute.ints.extend(directions.tolist())


def feeds(
    table: Any, features: list[Feature], labels: list[Any], dtype: type
) -> dict[str, np.ndarray]:
    """The graph's inputs from a batch's columns (``schema.Columns``) or a DataFrame."""
    text = set(text_columns(features))
    out: dict[str, np.ndarray] = {}
    numeric = []
    data = table.data if hasattr(table, "data") else table
    for j, label in enumerate(labels):
        column = np.asarray(data[label])
        if j in text:
            values = column.astype(object, copy=True)
            values[values != values] = (
                MISSING  # NaN is the one value not equal to itself
            )
            out[f"c{j}"] = values
        else:
            numeric.append(column)
    if numeric:
        out[NUMBERS] = np.column_stack(numeric).astype(dtype, copy=False)
    return out


def records(
    model: Any, features: list[Feature], labels: list[Any], n: int
) -> list[list[Any]]:
    """``n`` seeded records a table graph is verified on, as a request's fields: every
    category the encoders know, an unseen one and a missing one in each text column;
    numbers around each column's typical value (its training median, else the
    imputer's statistic, else 0), a tenth of them missing."""
    rng = np.random.default_rng(0)
    known: dict[int, list[Any]] = {}
    centre: dict[int, float] = {}
    for kind, part, positions in blocks(model, features, labels):
        if kind == "encoder":
            for j, categories in zip(positions, part.categories_, strict=True):
                known[j] = [c for c in categories if isinstance(c, str)]
        elif part != "passthrough":
            fill = np.asarray(part.statistics_).tolist()
            centre.update(zip(positions, fill, strict=True))
    columns = []
    for j, feature in enumerate(features):
        if j in known:
            values = [*known[j], "unseen category", None]
            columns.append([values[i % len(values)] for i in rng.permutation(n)])
        else:
            middle = feature.typical if feature.typical is not None else centre.get(j)
            middle = float(middle) if middle is not None else 0.0
            spread = max(1.0, abs(middle))
            numbers = middle + spread * rng.standard_normal(n)
            column: list[Any] = np.round(numbers, 3).tolist()
            for i in np.flatnonzero(rng.random(n) < 0.1):
                column[i] = None
            columns.append(column)
    return [list(row) for row in zip(*columns, strict=True)]
