"""Our converter of scikit-learn's trees and forests (``modelapp/predictors/tree_onnx.py``):
its graph answers as skl2onnx's and as scikit-learn do, on held-out records and on both
sides of every split; what it does not cover is converted by skl2onnx."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from http import HTTPStatus
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from modelapp.predictors import compiled, tree_onnx
from tests.support import ROOT
from tests.support.models import write_model

RNG = np.random.default_rng(0)
N_FEATURES = 6
X_TRAIN = RNG.standard_normal((400, N_FEATURES))
X_HELD_OUT = RNG.standard_normal((300, N_FEATURES))
SCORE = X_TRAIN[:, 0] + X_TRAIN[:, 1] * X_TRAIN[:, 2]
BINARY = (SCORE > 0).astype(int)
NAMES = np.array(["low", "middle", "high"])[np.digitize(SCORE, [-0.5, 0.5])]
VALUES = SCORE * 3 + X_TRAIN[:, 3]

SMALL = {"max_depth": 7, "random_state": 0}
FOREST = {"n_estimators": 7, **SMALL}
# Each supported kind: binary, multiclass with string labels, regression.
MODELS = {
    "tree-binary": (DecisionTreeClassifier(**SMALL), BINARY),
    "tree-strings": (DecisionTreeClassifier(**SMALL), NAMES),
    "tree-regressor": (DecisionTreeRegressor(**SMALL), VALUES),
    "forest-binary": (RandomForestClassifier(**FOREST), BINARY),
    "forest-strings": (RandomForestClassifier(**FOREST), NAMES),
    "forest-regressor": (RandomForestRegressor(**FOREST), VALUES),
    "extra-binary": (ExtraTreesClassifier(**FOREST), BINARY),
    "extra-strings": (ExtraTreesClassifier(**FOREST), NAMES),
    "extra-regressor": (ExtraTreesRegressor(**FOREST), VALUES),
}


def skl2onnx_graph(model: Any) -> bytes:
    """skl2onnx's graph of ``model``, as ``compiled.convert`` asked it before."""
    from skl2onnx import to_onnx

    options = (
        {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = to_onnx(model, np.zeros((1, N_FEATURES), np.float32), options=options)
    return graph.SerializeToString()


def run(graph: bytes, X: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session.run(None, {"X": X.astype(np.float32)})


def signature(graph: bytes) -> list[Any]:
    """The graph's inputs and outputs: names, element types and shapes."""
    model = onnx.load_from_string(graph)
    return [list(model.graph.input), list(model.graph.output)]


@pytest.mark.parametrize("name", MODELS)
def test_answers_as_skl2onnx_and_scikit_learn(name):
    """Labels identical and probabilities (or values) within the engine's tolerance, from
    our graph, skl2onnx's and scikit-learn, on held-out records and on records at and
    just above every split's threshold; the graph has skl2onnx's inputs and outputs."""
    model, y = MODELS[name]
    model.fit(X_TRAIN, y)
    assert tree_onnx.supports(model, N_FEATURES)
    ours = compiled.convert(model, N_FEATURES)
    assert onnx.load_from_string(ours).producer_name == "smserve"
    theirs = skl2onnx_graph(model)
    assert signature(ours) == signature(theirs)
    leaves = compiled.leaf_records(compiled._trees(model), N_FEATURES)
    for X in (X_HELD_OUT, leaves):
        # scikit-learn sees the float32 values the graph sees.
        X32 = X.astype(np.float32).astype(np.float64)
        got, expected = run(ours, X), run(theirs, X)
        for mine, skl2onnx in zip(got, expected, strict=True):
            np.testing.assert_array_equal(mine, skl2onnx)
        if hasattr(model, "classes_"):
            labels, probabilities = got
            np.testing.assert_array_equal(labels, model.predict(X32))
            np.testing.assert_allclose(
                probabilities,
                model.predict_proba(X32),
                rtol=compiled.RTOL,
                atol=compiled.ATOL,
            )
        else:
            np.testing.assert_allclose(
                got[0].ravel(),
                model.predict(X32),
                rtol=compiled.RTOL,
                atol=compiled.ATOL,
            )


def attributes(graph: bytes) -> dict[str, Any]:
    """The tree operator's attributes, but ``nodes_hitrates`` (all 1.0, unused)."""
    (node,) = onnx.load_from_string(graph).graph.node
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    values.pop("nodes_hitrates", None)
    return {"op_type": node.op_type, **values}


EDGES = {
    "a single leaf": (
        DecisionTreeClassifier(),
        np.zeros_like(X_TRAIN),
        BINARY,
    ),
    "fitted with missing values": (
        RandomForestClassifier(**FOREST),
        np.where(X_TRAIN > 1.2, np.nan, X_TRAIN),
        NAMES,
    ),
    "sample weights": (ExtraTreesRegressor(**FOREST), X_TRAIN, VALUES),
}


@pytest.mark.parametrize("name", [*MODELS, *EDGES])
def test_the_operator_is_skl2onnx_s_attribute_for_attribute(name):
    """The same operator with the same attributes as skl2onnx's, value for value (the
    thresholds, the leaves' weights in float32), so it answers bit for bit the same."""
    if name in MODELS:
        model, y = MODELS[name]
        model.fit(X_TRAIN, y)
    else:
        model, X, y = EDGES[name]
        model.fit(X, y, sample_weight=RNG.uniform(0.5, 2.0, len(y)))
    assert tree_onnx.supports(model, N_FEATURES)
    assert attributes(tree_onnx.to_onnx(model, N_FEATURES)) == attributes(
        skl2onnx_graph(model)
    )


def test_thresholds_round_down_to_float32():
    """Every float32 ``x`` is at or below the float32 threshold exactly when it is at or
    below the float64 one, including the float32 values right beside it."""
    thresholds = RNG.standard_normal(2000) * 10.0 ** RNG.integers(-6, 6, 2000)
    rounded = tree_onnx.float32_thresholds(thresholds)
    near = np.stack(
        [
            np.nextafter(rounded, np.float32(-np.inf)),
            rounded,
            np.nextafter(rounded, np.float32(np.inf)),
        ]
    )
    assert np.array_equal(near <= rounded, near.astype(np.float64) <= thresholds)


UNSUPPORTED = {
    "multi-output regressor": (
        RandomForestRegressor(n_estimators=3, max_depth=4, random_state=0),
        np.column_stack([VALUES, -VALUES]),
    ),
    "one class": (
        DecisionTreeClassifier(max_depth=4, random_state=0),
        np.ones(len(X_TRAIN), int),
    ),
    "pipeline": (
        make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=4)),
        BINARY,
    ),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_other_kinds_are_converted_by_skl2onnx(name):
    """A model the converter does not cover is skl2onnx's to convert."""
    model, y = UNSUPPORTED[name]
    model.fit(X_TRAIN, y)
    assert not tree_onnx.supports(model, N_FEATURES)
    graph = compiled.convert(model, N_FEATURES)
    assert onnx.load_from_string(graph).producer_name == "skl2onnx"


@pytest.mark.server
def test_a_bare_joblib_forest_is_served_by_onnx_runtime(tmp_path, serve_factory):
    """A forest saved as a bare ``model.joblib`` (no ``model.onnx``) is converted at
    start-up and its predict and predict_proba are served by ONNX Runtime, answering as
    scikit-learn does."""
    model = RandomForestClassifier(**FOREST).fit(X_TRAIN, NAMES)
    write_model(tmp_path / "ml", model)
    server = serve_factory(tmp_path / "ml")
    body = "".join(",".join(map(repr, row)) + "\n" for row in X_HELD_OUT.tolist())
    status, _, answer = server.invoke(body.encode(), Accept="text/csv")
    assert status == HTTPStatus.OK
    X32 = X_HELD_OUT.astype(np.float32).astype(np.float64)
    assert answer.decode().split() == model.predict(X32).tolist()
    assert re.search(
        r"Engines for RandomForestClassifier: predict by onnxruntime, predict_proba by "
        r"onnxruntime, .*converted at start-up",
        server.log,
    )


def test_converting_a_forest_imports_no_skl2onnx(tmp_path):
    """The converter needs onnx alone: converting a forest leaves skl2onnx unimported.
    docs/speed.md, Compiled predictions: "and skl2onnx is not imported"."""
    path = write_model(tmp_path, RandomForestClassifier(**FOREST).fit(X_TRAIN, NAMES))
    code = (
        "import sys, joblib\n"
        "from modelapp.predictors import compiled\n"
        f"compiled.convert(joblib.load({str(path)!r}), {N_FEATURES})\n"
        "print('onnx' in sys.modules, 'skl2onnx' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["True", "False"]


class ShiftedRegressor(DecisionTreeRegressor):
    """A subclass that predicts otherwise than its tree."""

    def predict(self, X, check_input=True):
        return super().predict(X, check_input) + 1.0


def test_a_subclass_is_not_converted_as_its_base():
    """A subclass of a supported tree may predict otherwise: the converter leaves it
    (skl2onnx, which does not know it either, then refuses it: not compiled)."""
    model = ShiftedRegressor(max_depth=3).fit(X_TRAIN, VALUES)
    assert not tree_onnx.supports(model, N_FEATURES)
    with pytest.raises(compiled.CompileError, match="skl2onnx cannot convert it"):
        compiled.convert(model, N_FEATURES)
