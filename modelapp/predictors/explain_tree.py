"""Exact path-dependent TreeSHAP over the fitted arrays of a scikit-learn tree ensemble.

The Shapley value of feature ``i`` for record ``x`` under the path-dependent value
function (what ``shap.TreeExplainer`` computes without background data) is, summed over
the leaves ``l`` whose path splits on ``i``::

    phi_i = sum_l v_l (o_li - z_li) * integral_0^1 prod_{j on l's path, j != i}
                                                   (t o_lj + (1 - t) z_lj) dt

where, per feature ``j`` of the path, ``z_lj`` is the product of the cover ratios of the
path's edges on ``j`` and ``o_lj`` is 1 when ``x`` takes all of them, else 0 (the Beta
integral of ``|S|! (d - |S| - 1)! / d!`` turns the sum over subsets into this product:
Linear TreeSHAP, Yu et al. 2022). The integrand is a polynomial of degree below the
path's number of distinct features, so Gauss-Legendre quadrature with half as many points
is exact.

The leaves are not visited one by one. Each edge ``c`` carries its feature's factor
``f_c(t) = t o_c + (1 - t) z_c``, merged with the previous edge on the same feature
(``prev``); a downward pass makes the path products ``P_c``, an upward pass sums
``H_c = sum of v_l P_l`` over the leaves under ``c``, and the terms telescope along each
feature's edges: ``phi_i = sum_{c on i} Q[H_c ((o_c - z_c) / f_c - (o_prev - z_prev) /
f_prev)]``. Every array the record does not change (structure, cover products, the
quadrature) is built once per model (``TreeShap.from_model``, in gunicorn's master before
the fork, shared copy-on-write); a record costs a few passes over (nodes x points)
arrays, a level of the trees at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Tree ensembles explained exactly, and what their explained output is.
PROBABILITY, RAW_SCORE, VALUE = "probability", "raw_score", "value"


class NotExplainable(Exception):
    """Why a model is not explained by TreeSHAP (it then gets another explainer)."""


@dataclass
class _Tree:
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    cover: np.ndarray
    values: np.ndarray  # (nodes, outputs)


def _sklearn_tree(tree: Any, normalize: bool) -> _Tree:
    values = np.asarray(tree.value, dtype=np.float64)
    if values.shape[1] != 1:
        raise NotExplainable("a tree with several outputs")
    values = values[:, 0, :]
    if normalize:
        totals = values.sum(axis=1, keepdims=True)
        values = values / np.where(totals == 0, 1, totals)
    missing = getattr(tree, "missing_go_to_left", None)
    return _Tree(
        left=np.asarray(tree.children_left, dtype=np.int64),
        right=np.asarray(tree.children_right, dtype=np.int64),
        feature=np.asarray(tree.feature, dtype=np.int64),
        threshold=np.asarray(tree.threshold, dtype=np.float64),
        missing_left=(
            np.zeros(tree.node_count, bool)
            if missing is None
            else np.asarray(missing, dtype=bool)
        ),
        cover=np.asarray(tree.weighted_n_node_samples, dtype=np.float64),
        values=values,
    )


def _hgb_tree(nodes: np.ndarray) -> _Tree:
    if nodes["is_categorical"].any():
        raise NotExplainable("a HistGradientBoosting model with categorical splits")
    leaf = nodes["is_leaf"].astype(bool)
    return _Tree(
        left=np.where(leaf, -1, nodes["left"].astype(np.int64)),
        right=np.where(leaf, -1, nodes["right"].astype(np.int64)),
        feature=np.where(leaf, -2, nodes["feature_idx"].astype(np.int64)),
        threshold=nodes["num_threshold"].astype(np.float64),
        missing_left=nodes["missing_go_to_left"].astype(bool),
        cover=nodes["count"].astype(np.float64),
        values=nodes["value"].astype(np.float64)[:, None],
    )


def ensemble_of(model: Any) -> tuple[list[tuple[_Tree, float, int]], np.ndarray, str]:
    """The trees of ``model`` as ``(tree, scale, output column)``, the constant added to
    their sum (per output) and what that sum is; ``NotExplainable`` for any other model."""
    from sklearn import ensemble, tree

    name = type(model).__name__
    if isinstance(model, tree.BaseDecisionTree):
        classifier = isinstance(model, tree.DecisionTreeClassifier)
        kind = PROBABILITY if classifier else VALUE
        one = _sklearn_tree(model.tree_, classifier)
        return [(one, 1.0, -1)], np.zeros(one.values.shape[1]), kind
    if isinstance(
        model, ensemble.RandomForestClassifier | ensemble.ExtraTreesClassifier
    ):
        return _forest(model, True), np.zeros(len(model.classes_)), PROBABILITY
    if isinstance(model, ensemble.RandomForestRegressor | ensemble.ExtraTreesRegressor):
        if getattr(model, "n_outputs_", 1) != 1:
            raise NotExplainable(f"a {name} with several outputs")
        return _forest(model, False), np.zeros(1), VALUE
    if isinstance(
        model, ensemble.GradientBoostingRegressor | ensemble.GradientBoostingClassifier
    ):
        if model.init_ == "zero":
            base = np.zeros(model.estimators_.shape[1])
        else:
            from sklearn.dummy import DummyClassifier, DummyRegressor

            if not isinstance(model.init_, DummyClassifier | DummyRegressor):
                raise NotExplainable(f"a {name} with an init estimator")
            probe = np.zeros((1, model.n_features_in_))
            base = np.asarray(model._raw_predict_init(probe), dtype=np.float64)[0]
        trees = [
            (_sklearn_tree(est.tree_, False), float(model.learning_rate), k)
            for stage in model.estimators_
            for k, est in enumerate(stage)
        ]
        regressor = isinstance(model, ensemble.GradientBoostingRegressor)
        return trees, base, VALUE if regressor else RAW_SCORE
    if isinstance(
        model,
        ensemble.HistGradientBoostingRegressor
        | ensemble.HistGradientBoostingClassifier,
    ):
        base = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
        trees = [
            (_hgb_tree(predictor.nodes), 1.0, k)
            for stage in model._predictors
            for k, predictor in enumerate(stage)
        ]
        # A regressor whose loss has a link (Poisson, gamma) predicts exp(raw score).
        identity = isinstance(model, ensemble.HistGradientBoostingRegressor) and (
            model.loss not in ("poisson", "gamma")
        )
        return trees, base, VALUE if identity else RAW_SCORE
    raise NotExplainable(f"{name} is not a tree ensemble")


def _forest(model: Any, classifier: bool) -> list[tuple[_Tree, float, int]]:
    scale = 1.0 / len(model.estimators_)
    return [(_sklearn_tree(e.tree_, classifier), scale, -1) for e in model.estimators_]


class TreeShap:
    """The precomputed arrays of one ensemble; ``explain`` gives a record's attributions.

    Nodes of all trees are numbered together, ordered by depth, within a depth internal
    nodes first, so a level of every tree is one slice. Arrays built from the record are
    indexed by these numbers; index ``n`` (one past the last node) is a sentinel edge
    whose factor is 1 (``o = 1, z = 1``): "no previous edge on this feature".
    """

    def __init__(self, model: Any) -> None:
        trees, self.base_offset, self.output = ensemble_of(model)
        self.n_features = int(model.n_features_in_)
        self.n_outputs = len(self.base_offset)
        self._float32 = not type(model).__name__.startswith("HistGradientBoosting")
        self._build(trees)

    def _build(self, trees: list[tuple[_Tree, float, int]]) -> None:
        # Gather every tree's nodes in global numbering (tree order, then node order).
        sizes = [len(t.left) for t, _, _ in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        n = int(offsets[-1])
        left = np.concatenate(
            [
                np.where(t.left >= 0, t.left + o, -1)
                for (t, _, _), o in zip(trees, offsets[:-1], strict=True)
            ]
        )
        right = np.concatenate(
            [
                np.where(t.right >= 0, t.right + o, -1)
                for (t, _, _), o in zip(trees, offsets[:-1], strict=True)
            ]
        )
        feature = np.concatenate([t.feature for t, _, _ in trees])
        threshold = np.concatenate([t.threshold for t, _, _ in trees])
        missing_left = np.concatenate([t.missing_left for t, _, _ in trees])
        cover = np.concatenate([t.cover for t, _, _ in trees])
        leaf = left < 0
        # Leaf values per output: a tree adds only to its own output column (-1: all).
        values = np.zeros((n, self.n_outputs))
        for (t, scale, column), o in zip(trees, offsets[:-1], strict=True):
            block = slice(o, o + len(t.left))
            if column < 0:
                values[block] = t.values * scale
            else:
                values[block, column] = t.values[:, 0] * scale
        values[~leaf] = 0.0
        self.expected = self.base_offset + _expected(trees, self.n_outputs)

        # Walk the levels: parent, depth, and for each edge the previous edge on its
        # feature ("prev", n for none) and the product of that feature's cover ratios.
        parent = np.full(n, -1)
        depth = np.zeros(n, np.int64)
        prev = np.full(n, n)
        z = np.ones(n)
        # Per edge, the values of its feature that take it and every edge before it on
        # that feature: the interval (low, high].
        low = np.full(n + 1, -np.inf)
        high = np.full(n + 1, np.inf)
        distinct = np.zeros(n, np.int64)
        roots = offsets[:-1].astype(np.int64)
        level = roots
        last = np.full(
            (len(level), self.n_features), n
        )  # per node: last edge per feature
        d = 0
        while len(level):
            inner = level[~leaf[level]]
            inner_last = last[~leaf[level]]
            children = np.concatenate([left[inner], right[inner]])
            parents = np.concatenate([inner, inner])
            rows = np.concatenate([inner_last, inner_last])
            feats = feature[parents]
            before = rows[np.arange(len(children)), feats]
            parent[children] = parents
            depth[children] = d + 1
            prev[children] = before
            ratio = cover[children] / cover[parents]
            z[children] = (
                np.where(before < n, z[np.minimum(before, n - 1)], 1.0) * ratio
            )
            distinct[children] = distinct[parents] + (before == n)
            went_left = np.arange(len(children)) < len(inner)
            low[children] = np.where(
                went_left, low[before], np.maximum(low[before], threshold[parents])
            )
            high[children] = np.where(
                went_left, np.minimum(high[before], threshold[parents]), high[before]
            )
            rows = rows.copy()
            rows[np.arange(len(children)), feats] = children
            level, last, d = children, rows, d + 1
        self.max_distinct = int(distinct.max()) if n else 0
        points = max(1, (self.max_distinct + 1) // 2)
        nodes, weights = np.polynomial.legendre.leggauss(points)
        # The quadrature on [0, 1].
        self._t: np.ndarray = (nodes + 1) / 2
        self._w: np.ndarray = weights / 2

        # Renumber by (depth, leaf): a level is a slice, its internal nodes first.
        order = np.lexsort((leaf, depth))
        new = np.empty(n + 1, np.int64)
        new[order] = np.arange(n)
        new[n] = n
        remap = lambda a: np.where(a >= 0, new[np.where(a >= 0, a, n)], -1)  # noqa: E731
        self._left = remap(left[order])
        self._right = remap(right[order])
        self._parent = remap(parent[order])
        self._prev = new[prev[order]]
        self._edge_feature = np.where(
            self._parent >= 0, feature[np.where(parent >= 0, parent, 0)][order], -1
        )
        self._is_left = np.zeros(n, bool)
        has_parent = self._parent >= 0
        self._is_left[has_parent] = (
            self._left[self._parent[has_parent]] == np.arange(n)[has_parent]
        )
        self._feature = feature[order]
        self._threshold = threshold[order]
        self._missing_left = missing_left[order]
        self._z = np.append(z[order], 1.0)
        self._low = low[order]
        self._high = high[order]
        self._roots = new[roots]
        # Per output, contiguous (zero for internal nodes).
        self._leaf_values = np.ascontiguousarray(values[order].T)
        self._leaf = leaf[order]
        depth = depth[order]
        bounds = np.searchsorted(depth, np.arange(depth.max() + 2 if n else 1))
        self._levels = []
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            m = s + int(np.count_nonzero(~self._leaf[s:e]))
            self._levels.append((int(s), int(m), int(e)))
        self._inner = np.flatnonzero(~self._leaf)
        self.n_nodes = n
        self._tables()

    def _tables(self) -> None:
        """The per-edge quantities at the quadrature points for each case of an edge
        and its previous edge on the feature, taken or not (a taken edge's previous one
        is taken too): the ratio of the path products across the edge (``ratio``: per
        node the rows both taken, edge not taken, neither) and the term's weight times
        the quadrature weights (``weight_taken``, ``weight_not``; zero for neither)."""
        n, t, z = self.n_nodes, self._t, self._z
        zc, zp = z[:n, None], z[self._prev, None]
        taken_c, taken_p = t + (1 - t) * zc, t + (1 - t) * zp
        not_c = (1 - t) * zc
        g_p = (1 - zp) / taken_p
        neither = np.broadcast_to(zc / zp, (n, len(t)))
        # A node's three rows side by side: a level's gather reads forward.
        self._ratio = np.stack(
            [taken_c / taken_p, not_c / taken_p, neither], axis=1
        ).reshape(3 * n, len(t))
        self._weight_taken = ((1 - zc) / taken_c - g_p) * self._w
        self._weight_not = (-1 / (1 - t) - g_p) * self._w
        self._rows3 = np.arange(n) * 3

    def explain(
        self, x: np.ndarray, outputs: list[int] | None
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The attributions of record ``x`` (float64, the model's features) to each of
        ``outputs`` (None: the largest output, e.g. the predicted class's probability):
        the outputs, an (outputs, features) array, and the outputs' values."""
        n, points = self.n_nodes, len(self._t)
        if self._float32:
            # What scikit-learn compares with its thresholds.
            x = x.astype(np.float32).astype(np.float64)
        own = self.base_offset + self._leaf_values[:, self._leaves_reached(x)].sum(
            axis=1
        )
        if outputs is None:
            outputs = [int(own.argmax())]
        # Whether the record takes each edge and every edge before it on its feature.
        prev = self._prev
        o = np.ones(n + 1, bool)
        if np.isnan(x).any():
            goes_left = np.zeros(n + 1, bool)
            values = x[self._feature[self._inner]]
            goes_left[self._inner] = np.where(
                np.isnan(values),
                self._missing_left[self._inner],
                values <= self._threshold[self._inner],
            )
            takes_edge = goes_left[self._parent] == self._is_left
            for s, _, e in self._levels[1:]:
                o[s:e] = o[prev[s:e]] & takes_edge[s:e]
        else:
            values = np.take(x, self._edge_feature, mode="clip")
            o[:n] = (values > self._low) & (values <= self._high)
        s0, _, e0 = self._levels[0]
        o[s0:e0] = True
        # (mode="clip": the indices are ours, always in range; numpy skips its checks.)
        o_prev = np.take(o, prev, mode="clip")
        case = np.where(o[:n], 0, np.where(o_prev, 1, 2))
        ratio_rows = self._rows3 + case
        # Downward: path products, a level at a time (gathered into scratch rows).
        product = np.empty((n, points))
        widest = max(e - s for s, _, e in self._levels)
        above, across = np.empty((widest, points)), np.empty((widest, points))
        product[s0:e0] = 1.0
        for s, _, e in self._levels[1:]:
            np.take(product, self._parent[s:e], axis=0, out=above[: e - s], mode="clip")
            np.take(
                self._ratio, ratio_rows[s:e], axis=0, out=across[: e - s], mode="clip"
            )
            np.multiply(above[: e - s], across[: e - s], out=product[s:e])
        # Upward per output: sums over the leaves under each node, then the terms.
        phis = np.zeros((len(outputs), self.n_features))
        h = np.empty_like(product)
        edges = self._edge_feature[e0:]
        for row, k in enumerate(outputs):
            for s, m, e in reversed(self._levels):
                np.multiply(product[m:e], self._leaf_values[k, m:e, None], out=h[m:e])
                np.take(h, self._left[s:m], axis=0, out=above[: m - s], mode="clip")
                np.take(h, self._right[s:m], axis=0, out=across[: m - s], mode="clip")
                np.add(above[: m - s], across[: m - s], out=h[s:m])
            taken = np.einsum("nq,nq->n", h, self._weight_taken)
            not_taken = np.einsum("nq,nq->n", h, self._weight_not)
            # Neither taken: no term.
            terms = np.where(o[:n], taken, not_taken * o_prev)
            phis[row] = np.bincount(edges, terms[e0:], self.n_features)
        return outputs, phis, own[outputs]

    def _leaves_reached(self, x: np.ndarray) -> np.ndarray:
        """The leaf each tree sends ``x`` to (as scikit-learn predicts)."""
        node = self._roots
        for _ in self._levels:
            inner = ~self._leaf[node]
            if not inner.any():
                break
            at = node[inner]
            value = x[self._feature[at]]
            left = np.where(
                np.isnan(value), self._missing_left[at], value <= self._threshold[at]
            )
            node = node.copy()
            node[inner] = np.where(left, self._left[at], self._right[at])
        return node


def _expected(trees: list[tuple[_Tree, float, int]], n_outputs: int) -> np.ndarray:
    """Each output's mean over the training cover: a path's cover ratios multiply to
    the leaf's share of the root's cover."""
    total = np.zeros(n_outputs)
    for t, scale, column in trees:
        leaf = t.left < 0
        mean = (t.cover[leaf, None] / t.cover[0] * t.values[leaf]).sum(axis=0) * scale
        if column < 0:
            total += mean
        else:
            total[column] += mean[0]
    return total
