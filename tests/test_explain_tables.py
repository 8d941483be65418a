"""``method=explain`` on a table model made by the real ``./train``: the one-hot columns
of each text column folded back onto it, equal to the ``shap`` package's attributions of
the encoded columns summed per source column."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http import HTTPStatus

import joblib
import numpy as np
import pytest
import shap

from tests.support.servers import ServeProcess
from tests.support.tables import FEATURES, TARGET, churn_frame
from tests.support.training import run_train

EXPLAIN = {"X-Amzn-SageMaker-Custom-Attributes": "method=explain"}

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Iterator:
    """A forest on the churn table, its text columns one-hot encoded by ``train``."""
    work = tmp_path_factory.mktemp("explain-table")
    churn_frame(300, seed=0).to_csv(work / "train.csv", index=False)
    base = work / "ml"
    hyperparameters = {
        "smserve_estimator": "random_forest",
        "n_estimators": "15",
        "smserve_target_column": TARGET,
        "smserve_categorical_encoding": "onehot",
        "smserve_random_seed": "3",
    }
    hp = [arg for k, v in hyperparameters.items() for arg in ("--hp", f"{k}={v}")]
    done = run_train(base, "--channel", f"train={work / 'train.csv'}", *hp, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    server = ServeProcess(base, work, workers=1).start()
    try:
        yield server, joblib.load(base / "model" / "model.joblib")
    finally:
        server.stop()


def test_one_hot_columns_fold_back_onto_their_text_column(trained):
    """Attributions keyed by the raw columns (plan, country, payment, not plan_basic,
    ...): each text column's is the sum of its one-hot columns' exact TreeSHAP values,
    equal to shap's to 1e-6, and they add up to the predicted class's probability
    (docs/explain.md)."""
    server, model = trained
    rows = churn_frame(6, seed=9, gaps=0.0)[FEATURES]
    body = rows.to_csv(header=False, index=False).encode()
    status, _, answer = server.invoke(
        body, "text/csv", Accept="application/json", **EXPLAIN
    )
    assert status == HTTPStatus.OK, answer
    records = json.loads(answer)["explanations"]

    encoder, forest = model[:-1], model[-1]
    encoded = encoder.transform(rows)
    names = list(encoder.get_feature_names_out())
    assert len(names) > len(FEATURES)  # one-hot made more columns than the table has
    reference = shap.TreeExplainer(forest).shap_values(np.asarray(encoded, float))
    proba = model.predict_proba(rows)
    for r, record in enumerate(records):
        k = int(proba[r].argmax())
        assert list(record["attributions"]) == FEATURES
        for column in FEATURES:
            sources = [
                i
                for i, n in enumerate(names)
                if n == column or n.startswith(column + "_")
            ]
            expected = reference[r, sources, k].sum()
            assert record["attributions"][column] == pytest.approx(expected, abs=1e-6)
        total = record["base_value"] + sum(record["attributions"].values())
        assert total == pytest.approx(proba[r, k], abs=1e-9)
        assert record["label"] == model.classes_[k]
