"""``method=explain``: per record, how much each raw input column moved the model's output
away from its base value.

Three explainers, chosen by the model (the final step of a pipeline), built once where the
model loads (gunicorn's master, before the fork, so the workers share their arrays):

| explainer | models | explains | exact |
|---|---|---|---|
| ``tree`` | DecisionTree, RandomForest, ExtraTrees (classifiers: the probability) | ``probability`` / ``value`` | yes: path-dependent TreeSHAP (``explain_tree.py``) |
| ``tree`` | GradientBoosting, HistGradientBoosting | ``raw_score`` (log-odds) / ``value`` | yes |
| ``linear`` | linear models (``coef_``, ``intercept_``) | ``raw_score`` (``decision_function``) / ``value`` | yes: ``coef * (x - mean of the background)`` |
| ``sampling`` | anything else taking numbers | the predicted class's probability / ``value`` | no: permutation sampling, with its error bound |

A pipeline's steps before the final estimator are applied first; the attributions of the
columns they make are summed back onto the raw column each came from (one-hot and ordinal
encodings, imputers, scalers: ``fold_matrix``). The background (the linear model's means,
the sampling explainer's replacement values) is ``verification.npy`` when ``train`` left
it beside the model, else records built from the input schema. At load the attributions
of the warm-up records must add up to the model's own output (``ADDITIVITY_RTOL``); a
model that fails keeps serving its other methods and refuses ``explain`` saying why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelapp.predictors.explain_tree import (
    PROBABILITY,
    RAW_SCORE,
    VALUE,
    NotExplainable,
    TreeShap,
)

logger = logging.getLogger(__name__)

ADDITIVITY_RTOL = 1e-6
# The sampling explainer: background rows, permutations per record (antithetic pairs),
# and the z-score of the stated bound (a 95% interval).
BACKGROUND_ROWS = 32
PERMUTATIONS = 16
Z95 = 1.96
# Warm-up records whose attributions are checked at load.
CHECKED_RECORDS = 4
# Pipeline steps that make one column of each input column, in order.
ONE_TO_ONE = frozenset(
    {
        "OrdinalEncoder",
        "SimpleImputer",
        "StandardScaler",
        "MinMaxScaler",
        "MaxAbsScaler",
        "RobustScaler",
        "PowerTransformer",
        "QuantileTransformer",
    }
)


@dataclass
class Explained:
    """One explained output of one record: the output's ``value``, the ``base_value``
    (its mean over the background or the training cover) and the attributions, one per
    raw column, which add up to ``value - base_value``."""

    index: int  # which of the model's outputs (a class's column)
    value: float
    base_value: float
    attributions: np.ndarray
    error_bound: float | None = None


class Explainer:
    """Attributions for the model's encoded input (the final estimator's columns);
    ``kind`` names it in the answer, ``output`` what it explains."""

    kind = ""
    output = VALUE

    def explain(
        self, encoded: np.ndarray, all_outputs: bool, deadline: float
    ) -> list[list[Explained]]:
        """Per record, each explained output: all of them, or the largest (the
        predicted class's probability or raw score; the one output of a regressor or
        of a binary raw score, which is the positive class's)."""
        raise NotImplementedError(".explain() must be overridden.")

    def model_output(self, encoded: np.ndarray) -> np.ndarray:
        """The model's own value of every output for each record (the additivity check)."""
        raise NotImplementedError(".model_output() must be overridden.")


def _chosen(values: np.ndarray, all_outputs: bool) -> list[int]:
    return list(range(len(values))) if all_outputs else [int(values.argmax())]


class TreeExplainer(Explainer):
    kind = "tree"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.shap = TreeShap(model)
        self.output = self.shap.output

    def explain(
        self, encoded: np.ndarray, all_outputs: bool, deadline: float
    ) -> list[list[Explained]]:
        wanted = list(range(self.shap.n_outputs)) if all_outputs else None
        answers = []
        for x in encoded:
            outputs, phis, values = self.shap.explain(x, wanted)
            answers.append(
                [
                    Explained(k, float(v), float(self.shap.expected[k]), phi)
                    for k, v, phi in zip(outputs, values, phis, strict=True)
                ]
            )
        return answers

    def model_output(self, encoded: np.ndarray) -> np.ndarray:
        if self.output == PROBABILITY:
            return np.asarray(self.model.predict_proba(encoded))
        if self.output == VALUE:
            values = self.model.predict(encoded)
        elif hasattr(self.model, "classes_"):
            values = self.model.decision_function(encoded)
        else:  # a regressor whose loss has a log link: its raw score is log(value)
            values = np.log(self.model.predict(encoded))
        return np.asarray(values, dtype=np.float64).reshape(len(encoded), -1)


class LinearExplainer(Explainer):
    kind = "linear"

    def __init__(self, model: Any, background: np.ndarray) -> None:
        self.model = model
        self.coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))
        self.intercept = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
        self.mean = background.mean(axis=0)
        self.output = RAW_SCORE if hasattr(model, "classes_") else VALUE
        self.base = self.coef @ self.mean + self.intercept

    def explain(
        self, encoded: np.ndarray, all_outputs: bool, deadline: float
    ) -> list[list[Explained]]:
        answers = []
        for x in encoded:
            phis = self.coef * (x - self.mean)
            values = self.base + phis.sum(axis=1)
            answers.append(
                [
                    Explained(k, float(values[k]), float(self.base[k]), phis[k])
                    for k in _chosen(values, all_outputs)
                ]
            )
        return answers

    def model_output(self, encoded: np.ndarray) -> np.ndarray:
        method = "decision_function" if self.output == RAW_SCORE else "predict"
        values = np.asarray(getattr(self.model, method)(encoded), dtype=np.float64)
        return values.reshape(len(encoded), -1)


class SamplingExplainer(Explainer):
    """Interventional Shapley values estimated from ``PERMUTATIONS`` antithetic
    permutations per record over ``BACKGROUND_ROWS`` background rows; each permutation's
    contributions add up exactly, so their mean does too. The error bound is ``Z95``
    standard errors of the least certain attribution (fewer permutations, and a wider
    bound, when the request's deadline comes first)."""

    kind = "sampling"

    def __init__(self, model: Any, background: np.ndarray) -> None:
        self.model = model
        if len(background) > BACKGROUND_ROWS:
            rng = np.random.default_rng(0)
            picked = rng.choice(len(background), BACKGROUND_ROWS, replace=False)
            background = background[np.sort(picked)]
        self.background = background
        self.proba = callable(getattr(model, "predict_proba", None))
        self.output = PROBABILITY if self.proba else VALUE
        self.base = self.model_output(background).mean(axis=0)

    def model_output(self, encoded: np.ndarray) -> np.ndarray:
        method = "predict_proba" if self.proba else "predict"
        values = np.asarray(getattr(self.model, method)(encoded), dtype=np.float64)
        return values.reshape(len(encoded), -1)

    def explain(
        self, encoded: np.ndarray, all_outputs: bool, deadline: float
    ) -> list[list[Explained]]:
        return [self._one(x, all_outputs, deadline) for x in encoded]

    def _one(
        self, x: np.ndarray, all_outputs: bool, deadline: float
    ) -> list[Explained]:
        n, bg = len(x), self.background
        value = self.model_output(x[None])[0]
        wanted = _chosen(value, all_outputs)
        rng = np.random.default_rng(0)
        pairs: list[np.ndarray] = []  # per antithetic pair: (outputs, features)
        for _ in range(PERMUTATIONS // 2):
            if len(pairs) >= 2 and time.monotonic() > deadline:
                break
            order = rng.permutation(n)
            both = []
            for permutation in (order, order[::-1]):
                # Block j: the background with the permutation's first j features of x.
                hybrid = np.repeat(bg[None], n + 1, axis=0)
                for j in range(1, n + 1):
                    hybrid[j:, :, permutation[j - 1]] = x[permutation[j - 1]]
                values = self.model_output(hybrid.reshape(-1, n))
                means = values.reshape(n + 1, len(bg), -1).mean(axis=1)[:, wanted]
                phi = np.empty((len(wanted), n))
                phi[:, permutation] = (means[1:] - means[:-1]).T
                both.append(phi)
            pairs.append((both[0] + both[1]) / 2)
        samples = np.stack(pairs)
        phis = samples.mean(axis=0)
        spread = samples.std(axis=0, ddof=1).max(axis=1) / np.sqrt(len(samples))
        return [
            Explained(k, float(value[k]), float(self.base[k]), phi, float(Z95 * e))
            for k, phi, e in zip(wanted, phis, spread, strict=True)
        ]


class AdditivityError(NotExplainable):
    """The attributions do not add up to what the model answers."""


# --- which explainer, and the fold onto raw columns ---------------------------------------
def split_pipeline(model: Any) -> tuple[Any, Any]:
    """``(the steps before the final estimator, or None; the final estimator)``."""
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline) and len(model.steps) > 1:
        return model[:-1], model.steps[-1][1]
    if isinstance(model, Pipeline):
        return None, model.steps[-1][1]
    return None, model


def fold_matrix(prefix: Any, n_raw: int) -> np.ndarray:
    """(encoded columns, raw columns): 1 where an encoded column comes from a raw one,
    through each step of ``prefix``; ``NotExplainable`` for a step whose columns cannot
    be traced back (e.g. a PCA)."""
    fold = np.eye(n_raw)
    for _, step in prefix.steps:
        if step is None or step == "passthrough":
            continue
        fold = _step_fold(step, fold.shape[0]) @ fold
    return fold


def _step_fold(step: Any, n_in: int) -> np.ndarray:
    """(step's output columns, its input columns) for one step of a pipeline."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    if isinstance(step, ColumnTransformer):
        fold = np.zeros(
            (sum(s.stop - s.start for s in step.output_indices_.values()), n_in)
        )
        for name, transformer, _ in step.transformers_:
            where = step.output_indices_.get(name)
            if transformer == "drop" or where is None or where.stop == where.start:
                continue
            index = np.asarray(step._transformer_to_input_indices[name], dtype=int)
            inner = (
                np.eye(len(index))
                if transformer == "passthrough"
                else _step_fold(transformer, len(index))
            )
            if inner.shape[0] != where.stop - where.start:
                raise NotExplainable(f"the columns of {name!r} cannot be traced back")
            fold[where.start : where.stop, index] = inner
        return fold
    if isinstance(step, OneHotEncoder):
        counts = getattr(step, "_n_features_outs", None) or [
            len(c) for c in step.categories_
        ]
        return np.repeat(np.eye(n_in), counts, axis=0)
    one_to_one = getattr(step, "feature_names_out", None) == "one-to-one"
    if type(step).__name__ in ONE_TO_ONE or one_to_one:
        # (A ColumnTransformer's remainder="passthrough" is a one-to-one
        # FunctionTransformer.)
        return np.eye(n_in)
    raise NotExplainable(
        f"the columns {type(step).__name__} makes cannot be traced back to the input's"
    )


def build(
    model: Any, background: Any, n_raw: int, takes_numbers: bool
) -> tuple[Any, Explainer, np.ndarray]:
    """``(prefix, explainer, fold)`` for ``model``: the steps applied before explaining
    (None), the explainer of the final estimator, and the fold onto the raw columns;
    ``NotExplainable`` says why there is none."""
    prefix, final = split_pipeline(model)
    reason = ""
    fold: np.ndarray | None
    try:
        fold = fold_matrix(prefix, n_raw) if prefix is not None else np.eye(n_raw)
    except NotExplainable as exc:
        fold, reason = None, str(exc)
    if fold is not None:
        try:
            return prefix, TreeExplainer(final), fold
        except NotExplainable as exc:
            reason = str(exc)
        if _is_linear(final):
            encoded = prefix.transform(background) if prefix is not None else background
            return prefix, LinearExplainer(final, _dense(encoded)), fold
    if not takes_numbers:
        raise NotExplainable(
            f"{type(final).__name__} is neither a tree ensemble nor a linear model "
            f"({reason}), and the sampling explainer takes numeric records only"
        )
    return None, SamplingExplainer(model, _dense(background)), np.eye(n_raw)


def _dense(values: Any) -> np.ndarray:
    if hasattr(values, "toarray"):
        values = values.toarray()
    return np.asarray(values, dtype=np.float64)


def _is_linear(model: Any) -> bool:
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel
    from sklearn.svm import LinearSVC, LinearSVR

    return isinstance(
        model, LinearModel | LinearClassifierMixin | LinearSVC | LinearSVR
    ) and hasattr(model, "coef_")


class ModelExplainer:
    """What a predictor holds: the explainer of its model and the fold onto the raw
    columns, or why there is none (``reason``)."""

    def __init__(
        self,
        model: Any,
        background: Any,
        n_raw: int,
        takes_numbers: bool,
    ) -> None:
        self.prefix, self.explainer, self.fold = build(
            model, background, n_raw, takes_numbers
        )
        encoded = self.encode(background[:CHECKED_RECORDS])
        if encoded.shape[1] != self.fold.shape[0]:
            raise NotExplainable(
                f"the pipeline makes {encoded.shape[1]} columns, not the "
                f"{self.fold.shape[0]} traced back to the input's"
            )
        self.check_additivity(background[:CHECKED_RECORDS])

    def encode(self, matrix: Any) -> np.ndarray:
        return _dense(
            self.prefix.transform(matrix) if self.prefix is not None else matrix
        )

    def explain(
        self, matrix: Any, all_outputs: bool, deadline: float
    ) -> list[list[Explained]]:
        """Per record, each explained output with its attributions on the raw columns."""
        answers = self.explainer.explain(self.encode(matrix), all_outputs, deadline)
        for explained in answers:
            for one in explained:
                one.attributions = one.attributions @ self.fold
        return answers

    def check_additivity(self, matrix: Any) -> None:
        """The attributions of ``matrix``'s records must add up to the model's output."""
        encoded = self.encode(matrix)
        own = self.explainer.model_output(encoded)
        answers = self.explainer.explain(encoded, True, time.monotonic() + 60)
        for r, explained in enumerate(answers):
            for one in explained:
                total = one.base_value + one.attributions.sum()
                expected = own[r, one.index]
                if abs(total - expected) > ADDITIVITY_RTOL * max(1.0, abs(expected)):
                    raise AdditivityError(
                        f"the {self.explainer.kind} explainer's attributions of warm-up "
                        f"record {r + 1} add up to {total:.9g}, but the model answers "
                        f"{expected:.9g}"
                    )


def dump_json(value: Any) -> bytes:
    """JSON of plain values (NaN, which no explainer gives, would be null)."""
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


class Explanations:
    """The answer to ``method=explain``, which every renderer writes (``as_format``):
    JSON ``{"explanations": [...]}`` and JSON Lines one object per record; CSV one line
    per record, per explained output ``label, value, base_value``, the attributions in
    the model's column order, then ``error_bound`` from the sampling explainer."""

    def __init__(
        self,
        answers: list[list[Explained]],
        explainer: Explainer,
        names: list[str],
        classes: list[Any] | None,
        all_outputs: bool,
    ) -> None:
        self.answers = answers
        self.kind = explainer.kind
        self.output = explainer.output
        self.names = names
        self.classes = classes
        self.all_outputs = all_outputs

    def __len__(self) -> int:
        return len(self.answers)

    def label(self, index: int) -> Any:
        """The class an output is of (None for a regressor's value); a binary raw score
        is the positive class's."""
        if not self.classes:
            return None
        if self.output == RAW_SCORE and len(self.classes) == 2:
            index = 1
        label = self.classes[index]
        return label.item() if isinstance(label, np.generic) else label

    def _item(self, one: Explained) -> dict[str, Any]:
        item = {
            "label": self.label(one.index),
            "value": one.value,
            "base_value": one.base_value,
            "attributions": dict(
                zip(self.names, one.attributions.tolist(), strict=True)
            ),
        }
        if one.error_bound is not None:
            item["error_bound"] = one.error_bound
        return item

    def objects(self) -> list[dict[str, Any]]:
        records = []
        for explained in self.answers:
            head = {"explainer": self.kind, "output": self.output}
            if self.all_outputs:
                records.append({**head, "classes": [self._item(o) for o in explained]})
            else:
                records.append({**head, **self._item(explained[0])})
        return records

    def as_format(self, format: str) -> bytes:
        if format == "json":
            return dump_json({"explanations": self.objects()})
        if format == "jsonl":
            return b"".join(dump_json(record) + b"\n" for record in self.objects())
        if format == "csv":
            return self._csv().encode()
        raise ValueError(f"explanations are not written as {format}")

    def _csv(self) -> str:
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for explained in self.answers:
            row: list[Any] = []
            for one in explained:
                label = self.label(one.index)
                row += [
                    "" if label is None else label,
                    repr(one.value),
                    repr(one.base_value),
                ]
                row += [repr(v) for v in one.attributions.tolist()]
                if one.error_bound is not None:
                    row.append(repr(one.error_bound))
            writer.writerow(row)
        return out.getvalue()
