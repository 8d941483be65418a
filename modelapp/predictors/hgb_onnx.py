"""``HistGradientBoostingClassifier`` and ``HistGradientBoostingRegressor`` as ONNX graphs:
our own skl2onnx converter, registered in place of skl2onnx's (which fails on them with
scikit-learn 1.9: "Expected an int, got a boolean").

The graph computes what scikit-learn's ``_raw_predict`` does, from float64 input (HGB
computes in float64 itself; ``compiled.input_dtype`` gives float64 for it):

- **Trees**: one ``ai.onnx.ml`` ``TreeEnsembleRegressor`` (``SUM``, one target per tree
  of an iteration, the baseline as ``base_values``) over the fitted ``_predictors``' node
  arrays. A numeric split goes left when ``x <= num_threshold``; thresholds, leaf values
  and the baseline are float64 tensors (``*_as_tensor``) compared to float64 input, so
  every record takes scikit-learn's path (float32 thresholds would send values between
  the two roundings the other way). NaN follows ``missing_go_to_left``
  (``nodes_missing_value_tracks_true``). The operator's output is float32 (opset 3 has
  no double output): raw scores carry float32's rounding (~6e-8 relative), well within
  ``compiled.RTOL``; the rest is computed in double from them.
- **Outputs**, laid out as skl2onnx's classifiers with ``zipmap`` off: ``label`` (the
  class of the largest probability) then ``probabilities``; the binomial loss gives
  ``[1 - sigmoid(raw), sigmoid(raw)]``, the multinomial one ``softmax(raw)``. A regressor
  has one output, ``raw`` through the loss's inverse link: identity (``squared_error``,
  ``absolute_error``, ``quantile``) or ``exp`` (``poisson``, ``gamma``).

Categorical features (numeric categories) are converted: scikit-learn codes them with an
internal ``OrdinalEncoder`` (unknown categories become missing) and puts them first; the
graph reads the input's own columns and tests each categorical split's raw category
values (``tree_ensemble_attributes``). Text categories are refused (the graph takes
numbers): such a model stays with scikit-learn (``compiled.convert`` raises
``CompileError`` with the reason).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# skl2onnx 1.20 writes ai.onnx.ml up to opset 3 (opset 5's all-double TreeEnsemble is
# refused by its model builder).
ML_OPSET = 3


NODE_FIELDS = (
    "nodes_featureids",
    "nodes_modes",
    "nodes_values",
    "nodes_truenodeids",
    "nodes_falsenodeids",
    "nodes_missing_value_tracks_true",
)


class NotConvertible(ValueError):
    """A HistGradientBoosting model this converter cannot express exactly."""


@functools.cache
def register() -> None:
    """Put our converters in skl2onnx's registry in place of its own (once)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )

    update_registered_converter(
        HistGradientBoostingClassifier,
        "SklearnHistGradientBoostingClassifier",
        calculate_linear_classifier_output_shapes,
        convert_classifier,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
    )
    update_registered_converter(
        HistGradientBoostingRegressor,
        "SklearnHistGradientBoostingRegressor",
        calculate_linear_regressor_output_shapes,
        convert_regressor,
    )


def _columns(model: Any) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The input column of each of the trees' features, and for each categorical one
    its known categories (raw values, indexed by scikit-learn's code).

    With categorical features scikit-learn puts them first (its internal
    ``OrdinalEncoder``, then the numeric columns in order) and codes each known
    category by its rank; an unknown category or NaN becomes missing."""
    n_features = int(model.n_features_in_)
    is_categorical = getattr(model, "is_categorical_", None)
    if is_categorical is None:
        return np.arange(n_features), {}
    encoded = np.flatnonzero(is_categorical)
    if model._preprocessor.output_indices_["encoder"] != slice(0, len(encoded)):
        raise NotConvertible("the categorical columns are not encoded first")
    order = np.concatenate([encoded, np.flatnonzero(~np.asarray(is_categorical))])
    encoder = model._preprocessor.named_transformers_["encoder"]
    categories: dict[int, np.ndarray] = {}
    for position, values in enumerate(encoder.categories_):
        values = np.asarray(values)
        if values.dtype.kind not in "biuf":
            raise NotConvertible(
                "HistGradientBoosting with categories that are not numbers is not "
                "converted (the graph takes numbers); scikit-learn serves it"
            )
        known = values.astype(np.float64)
        categories[position] = known[~np.isnan(known)]
    return order, categories


def tree_ensemble_attributes(model: Any) -> dict[str, Any]:
    """The ``TreeEnsembleRegressor`` attributes: ``model``'s trees summed per target
    from its baseline, thresholds, leaf values and baseline as float64 tensors.

    A categorical split becomes a chain of ``BRANCH_EQ`` nodes, one per category
    listed: the categories on the side missing values do not take, each going there;
    anything else (the other known categories, unknown ones, NaN) falls through to the
    side missing values take, as scikit-learn sends them. The chain's nodes share
    their children (ONNX Runtime follows node ids, so a subtree is not repeated)."""
    from onnx import numpy_helper

    order, categories = _columns(model)
    columns: dict[str, list[Any]] = {
        key: []
        for key in (
            "nodes_treeids",
            "nodes_nodeids",
            *NODE_FIELDS,
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    }
    tree = 0

    def add(node: int, *fields: Any) -> None:
        columns["nodes_treeids"].append(tree)
        columns["nodes_nodeids"].append(node)
        for key, value in zip(NODE_FIELDS, fields, strict=True):
            columns[key].append(value)

    for iteration in model._predictors:
        for target, predictor in enumerate(iteration):
            nodes = predictor.nodes
            next_id = len(nodes)  # ids for the chains' extra nodes
            for i, node in enumerate(nodes):
                left, right = int(node["left"]), int(node["right"])
                feature = int(order[node["feature_idx"]]) if not node["is_leaf"] else 0
                if node["is_leaf"]:
                    add(i, 0, "LEAF", 0.0, 0, 0, 0)
                    columns["target_treeids"].append(tree)
                    columns["target_nodeids"].append(i)
                    columns["target_ids"].append(target)
                    columns["target_weights"].append(float(node["value"]))
                elif not node["is_categorical"]:
                    missing_left = int(bool(node["missing_go_to_left"]))
                    threshold = float(node["num_threshold"])
                    add(i, feature, "BRANCH_LEQ", threshold, left, right, missing_left)
                else:
                    known = categories[int(node["feature_idx"])]
                    bits = predictor.raw_left_cat_bitsets[int(node["bitset_idx"])]
                    codes = np.arange(len(known))
                    goes_left = (bits[codes // 32] >> (codes % 32)) & 1 == 1
                    if node["missing_go_to_left"]:
                        listed, to, otherwise = known[~goes_left], right, left
                    else:
                        listed, to, otherwise = known[goes_left], left, right
                    # Nothing listed: one test no value passes (x == NaN).
                    values = listed.tolist() or [float("nan")]
                    ids = [i, *range(next_id, next_id + len(values) - 1)]
                    next_id += len(values) - 1
                    for k, value in enumerate(values):
                        fall = ids[k + 1] if k + 1 < len(ids) else otherwise
                        add(ids[k], feature, "BRANCH_EQ", value, to, fall, 0)
            tree += 1
    attributes: dict[str, Any] = {
        "n_targets": int(model.n_trees_per_iteration_),
        "aggregate_function": "SUM",
        "post_transform": "NONE",
    }
    for key, values in columns.items():
        if key in ("nodes_values", "target_weights"):
            attributes[key + "_as_tensor"] = numpy_helper.from_array(
                np.asarray(values, dtype=np.float64)
            )
        else:
            attributes[key] = values
    baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
    attributes["base_values_as_tensor"] = numpy_helper.from_array(baseline)
    return attributes


def _raw_scores(scope: Any, operator: Any, container: Any) -> str:
    """Add the nodes computing the raw score, float64 ``(N, n_trees_per_iteration)``."""
    from onnx import TensorProto

    model = operator.raw_operator
    name = scope.get_unique_operator_name
    X = operator.inputs[0].full_name
    if (
        operator.inputs[0].type.to_onnx_type().tensor_type.elem_type
        != TensorProto.DOUBLE
    ):
        cast = scope.get_unique_variable_name("X_double")
        container.add_node("Cast", X, cast, to=TensorProto.DOUBLE, name=name("Cast"))
        X = cast
    sums = scope.get_unique_variable_name("raw_float")
    container.add_node(
        "TreeEnsembleRegressor",
        X,
        sums,
        op_domain="ai.onnx.ml",
        op_version=ML_OPSET,
        name=name("TreeEnsembleRegressor"),
        **tree_ensemble_attributes(model),
    )
    raw = scope.get_unique_variable_name("raw")
    container.add_node("Cast", sums, raw, to=TensorProto.DOUBLE, name=name("Cast"))
    return raw


def convert_classifier(scope: Any, operator: Any, container: Any) -> None:
    """skl2onnx converter: ``label`` then ``probabilities`` (module docstring)."""
    from onnx import TensorProto

    model = operator.raw_operator
    raw = _raw_scores(scope, operator, container)
    loss = type(model._loss).__name__
    name = scope.get_unique_operator_name
    probabilities = operator.outputs[1].full_name
    if loss == "HalfBinomialLoss":
        p1 = scope.get_unique_variable_name("p1")
        p0 = scope.get_unique_variable_name("p0")
        one = scope.get_unique_variable_name("one")
        container.add_initializer(one, TensorProto.DOUBLE, [], [1.0])
        container.add_node("Sigmoid", raw, p1, name=name("Sigmoid"))
        container.add_node("Sub", [one, p1], p0, name=name("Sub"))
        both = scope.get_unique_variable_name("proba")
        container.add_node("Concat", [p0, p1], both, axis=1, name=name("Concat"))
    elif loss == "HalfMultinomialLoss":
        both = scope.get_unique_variable_name("proba")
        container.add_node("Softmax", raw, both, axis=1, name=name("Softmax"))
    else:
        raise NotConvertible(f"no probabilities for the loss {loss}")
    out_type = operator.outputs[1].type.to_onnx_type().tensor_type.elem_type
    container.add_node("Cast", both, probabilities, to=out_type, name=name("Cast"))

    index = scope.get_unique_variable_name("class_index")
    container.add_node("ArgMax", both, index, axis=1, keepdims=0, name=name("ArgMax"))
    classes = scope.get_unique_variable_name("classes")
    labels = np.asarray(model.classes_)
    if labels.dtype.kind in "US" or labels.dtype == object:
        if not all(isinstance(c, str) for c in labels.tolist()):
            raise NotConvertible("class labels must be all numbers or all strings")
        container.add_initializer(
            classes,
            TensorProto.STRING,
            [len(labels)],
            [str(c).encode() for c in labels],
        )
    else:
        as_int = labels.astype(np.int64)
        if not np.array_equal(as_int, labels):
            raise NotConvertible("numeric class labels must be whole numbers")
        container.add_initializer(classes, TensorProto.INT64, [len(labels)], as_int)
    container.add_node(
        "Gather",
        [classes, index],
        operator.outputs[0].full_name,
        axis=0,
        name=name("Gather"),
    )


def convert_regressor(scope: Any, operator: Any, container: Any) -> None:
    """skl2onnx converter: the prediction, ``raw`` through the loss's inverse link."""

    model = operator.raw_operator
    link = type(model._loss.link).__name__
    if link not in ("IdentityLink", "LogLink"):
        raise NotConvertible(f"no inverse in the graph for the link {link}")
    raw = _raw_scores(scope, operator, container)
    name = scope.get_unique_operator_name
    value = raw
    if link == "LogLink":
        value = scope.get_unique_variable_name("exp")
        container.add_node("Exp", raw, value, name=name("Exp"))
    out_type = operator.outputs[0].type.to_onnx_type().tensor_type.elem_type
    container.add_node(
        "Cast", value, operator.outputs[0].full_name, to=out_type, name=name("Cast")
    )
