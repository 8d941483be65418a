"""scikit-learn's decision trees and their forests as ONNX graphs, built from the fitted
``tree_`` arrays with numpy: no per-node Python loop, so a forest of a few hundred
thousand nodes converts in a fraction of a second (skl2onnx walks every node in Python).

Covered: ``DecisionTree``, ``RandomForest`` and ``ExtraTrees``, each ``Classifier`` and
``Regressor``, with a single output, and classes that are all integers or all strings
(``supports``). Anything else (multi-output, a subclass, a pipeline, float or mixed labels,
a single class) is converted by skl2onnx (``compiled.convert``).

The graph is the one skl2onnx makes with ``zipmap`` off, attribute for attribute (its
``nodes_hitrates``, all 1.0 and unused, aside), so it answers bit for bit as skl2onnx's:

- **Input** ``X``: float32 ``[None, n_features]``. **Outputs**: a classifier's ``label``
  (int64, or string for string classes) and ``probabilities`` float32 ``[None,
  n_classes]``; a regressor's ``variable`` float32 ``[None, 1]``. One ``ai.onnx.ml``
  ``TreeEnsembleClassifier`` or ``TreeEnsembleRegressor`` (opset 1) computes them.
- **Thresholds**: scikit-learn sends a float32 value left when ``x <= threshold`` in
  float64. The float32 threshold that decides every float32 ``x`` the same way is the
  float64 one rounded down to float32 (skl2onnx's ``sklearn_threshold``).
- **Leaves**: a classifier's leaf holds its class distribution normalised to sum 1 and
  divided by the number of trees, so the sum over trees is the forest's average
  (``predict_proba``); a binary classifier keeps the second class only, as skl2onnx does.
  A regressor's leaf holds its value divided by the number of trees.
- **Missing values** go nowhere in particular (as in skl2onnx's graph): records holding
  NaN are scikit-learn's (``compiled.CompiledMethods``).

The attributes are set in place from ``tolist()`` lists: ``helper.make_attribute`` looks
at every element's type and ``make_node``/``make_graph`` copy the message, which together
cost several times the building itself. ``ai.onnx.ml`` 5's ``TreeEnsemble`` (tensor
attributes) was not used: it keeps one target per leaf, so a multiclass forest would need
its leaves repeated per class, plus extra nodes for the labels; it would not be skl2onnx's
graph, and on a 100-tree forest it predicts no faster.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 1
ONNX_OPSET = 22
IR_VERSION = 10


# The estimators converted here, by the public package that exports them.
SUPPORTED = {
    "sklearn.tree": frozenset({"DecisionTreeClassifier", "DecisionTreeRegressor"}),
    "sklearn.ensemble": frozenset(
        {
            "RandomForestClassifier",
            "RandomForestRegressor",
            "ExtraTreesClassifier",
            "ExtraTreesRegressor",
        }
    ),
}


def _supported_type(model: Any) -> bool:
    """Whether ``model`` is one of ``SUPPORTED`` itself (a subclass may predict
    otherwise), without importing a package the model's own class did not."""
    cls = type(model)
    package = ".".join(cls.__module__.split(".")[:2])
    if cls.__name__ not in SUPPORTED.get(package, ()):
        return False
    return getattr(sys.modules.get(package), cls.__name__, None) is cls


def supports(model: Any, n_features: int) -> bool:
    """Whether ``to_onnx`` converts ``model`` (else skl2onnx does)."""
    if not _supported_type(model):
        return False
    if getattr(model, "n_outputs_", None) != 1:
        return False
    if getattr(model, "n_features_in_", None) != n_features:
        return False
    trees = _trees(model)
    if not trees or any(tree.n_outputs != 1 for tree in trees):
        return False
    if hasattr(model, "classes_") and _class_labels(model) is None:
        return False
    # Without onnx, skl2onnx's import fails too, and convert() says so.
    return importlib.util.find_spec("onnx") is not None


def to_onnx(model: Any, n_features: int) -> bytes:
    """``model`` (one ``supports`` accepts) as a serialized ONNX graph (module doc)."""
    from onnx import ModelProto, TensorProto, helper

    trees = _trees(model)
    attributes = _node_attributes(trees)
    leaves = attributes.pop("_leaves")
    weight = 1.0 / len(trees)
    onx = ModelProto(ir_version=IR_VERSION, producer_name="smserve")
    onx.opset_import.extend(
        [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    )
    graph = onx.graph
    graph.name = type(model).__name__
    graph.input.append(
        helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_features])
    )
    # Built in place: each copy of a message this size (make_node, make_graph) costs
    # as much as building it.
    node = graph.node.add(domain=ML_DOMAIN)
    if hasattr(model, "classes_"):
        labels = _class_labels(model)
        assert labels is not None  # supports() checked it
        node.op_type = node.name = "TreeEnsembleClassifier"
        node.output.extend(["label", "probabilities"])
        attributes.update(_class_attributes(trees, leaves, weight, len(labels)))
        if labels.dtype.kind == "U":
            attributes["classlabels_strings"] = [c.encode() for c in labels.tolist()]
            label_type = TensorProto.STRING
        else:
            attributes["classlabels_int64s"] = labels.tolist()
            label_type = TensorProto.INT64
        graph.output.extend(
            [
                helper.make_tensor_value_info("label", label_type, [None]),
                helper.make_tensor_value_info(
                    "probabilities", TensorProto.FLOAT, [None, len(labels)]
                ),
            ]
        )
    else:
        node.op_type = node.name = "TreeEnsembleRegressor"
        node.output.append("variable")
        attributes["n_targets"] = 1
        attributes.update(_target_attributes(trees, leaves, weight))
        graph.output.append(
            helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])
        )
    node.input.append("X")
    attributes["post_transform"] = b"NONE"
    for name in sorted(attributes):
        _set_attribute(node.attribute.add(), name, attributes[name])
    return onx.SerializeToString()


def _set_attribute(attribute: Any, name: str, value: Any) -> None:
    """Fill ``attribute`` with ``value`` (an int, bytes, or a list of ints, floats or
    bytes), in place and without ``helper.make_attribute``'s look at every element."""
    from onnx import AttributeProto

    attribute.name = name
    if isinstance(value, int):
        attribute.type, attribute.i = AttributeProto.INT, value
    elif isinstance(value, bytes):
        attribute.type, attribute.s = AttributeProto.STRING, value
    elif isinstance(value[0], int):
        attribute.type = AttributeProto.INTS
        attribute.ints.extend(value)
    elif isinstance(value[0], float):
        attribute.type = AttributeProto.FLOATS
        attribute.floats.extend(value)
    else:
        attribute.type = AttributeProto.STRINGS
        attribute.strings.extend(value)


def _trees(model: Any) -> list[Any]:
    """The fitted ``tree_`` of each decision tree of ``model``."""
    estimators = getattr(model, "estimators_", None)
    return [e.tree_ for e in (estimators if estimators is not None else [model])]


def _class_labels(model: Any) -> np.ndarray | None:
    """The classes as int64 or str, as skl2onnx writes them; None when neither fits
    (float or mixed labels, a single class)."""
    classes = np.asarray(model.classes_)
    if classes.ndim != 1 or len(classes) < 2:
        return None
    if classes.dtype.kind in "biu":
        return classes.astype(np.int64)
    if classes.dtype.kind in "UO" and all(isinstance(c, str) for c in classes):
        return classes.astype(str)
    return None


def _node_attributes(trees: list[Any]) -> dict[str, Any]:
    """The ``nodes_*`` attributes of every tree, one after the other, and ``_leaves``
    (which nodes are leaves)."""
    counts = np.array([tree.node_count for tree in trees])
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    left = np.concatenate([tree.children_left for tree in trees])
    right = np.concatenate([tree.children_right for tree in trees])
    feature = np.concatenate([tree.feature for tree in trees])
    threshold = np.concatenate([tree.threshold for tree in trees])
    leaves = left == -1
    branch = ~leaves
    return {
        "_leaves": leaves,
        "nodes_treeids": np.repeat(np.arange(len(trees)), counts).tolist(),
        "nodes_nodeids": (np.arange(len(left)) - starts).tolist(),
        "nodes_featureids": np.where(branch, feature, 0).tolist(),
        "nodes_modes": np.where(leaves, b"LEAF", b"BRANCH_LEQ").tolist(),
        "nodes_values": np.where(branch, float32_thresholds(threshold), 0).tolist(),
        "nodes_truenodeids": np.where(branch, left, 0).tolist(),
        "nodes_falsenodeids": np.where(branch, right, 0).tolist(),
        "nodes_missing_value_tracks_true": np.zeros(len(left), np.int64).tolist(),
    }


def float32_thresholds(threshold: np.ndarray) -> np.ndarray:
    """The float32 ``t32`` for each float64 ``t`` such that, for every float32 ``x``,
    ``x <= t32`` exactly when ``x <= t``: ``t`` rounded down to float32."""
    rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def _leaf_positions(
    trees: list[Any], leaves: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each leaf's tree id and node id within its tree."""
    counts = np.array([tree.node_count for tree in trees])
    tree_ids = np.repeat(np.arange(len(trees)), counts)
    node_ids = np.arange(len(leaves)) - np.repeat(np.cumsum(counts) - counts, counts)
    return tree_ids[leaves], node_ids[leaves]


def _class_attributes(
    trees: list[Any], leaves: np.ndarray, weight: float, n_classes: int
) -> dict[str, Any]:
    """``class_*``: each leaf's class distribution, normalised, times ``weight``."""
    tree_ids, node_ids = _leaf_positions(trees, leaves)
    values = np.concatenate([tree.value[:, 0, :] for tree in trees])[leaves]
    totals = values.sum(axis=1)
    # The same operations in the same order as skl2onnx's, for the same float32 weights.
    factors = weight / np.where(totals != 0.0, totals, 1.0)
    weights = values * factors[:, None]
    if n_classes == 2:  # the operator infers the first class's share
        weights = weights[:, 1:]
    per_leaf = weights.shape[1]
    return {
        "class_treeids": np.repeat(tree_ids, per_leaf).tolist(),
        "class_nodeids": np.repeat(node_ids, per_leaf).tolist(),
        "class_ids": np.tile(np.arange(per_leaf), len(tree_ids)).tolist(),
        "class_weights": weights.astype(np.float32).ravel().tolist(),
    }


def _target_attributes(
    trees: list[Any], leaves: np.ndarray, weight: float
) -> dict[str, Any]:
    """``target_*``: each leaf's value times ``weight``."""
    tree_ids, node_ids = _leaf_positions(trees, leaves)
    values = np.concatenate([tree.value[:, 0, 0] for tree in trees])[leaves]
    return {
        "target_treeids": tree_ids.tolist(),
        "target_nodeids": node_ids.tolist(),
        "target_ids": np.zeros(len(tree_ids), np.int64).tolist(),
        "target_weights": (values * weight).astype(np.float32).tolist(),
    }
