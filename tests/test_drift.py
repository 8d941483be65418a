"""Drift's formulas and counts (``modelapp/drift.py``), the metadata.json version that
carries the training distributions, and the capture collector's flush (``capture.py``)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from modelapp import capture, drift
from modelapp.metadata import SCHEMA_VERSION, Feature, ModelMetadata
from modelapp.models import DriftCount

RNG = np.random.default_rng(26)


def numpy_psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI written out from its definition, bin by bin."""
    e = expected / expected.sum()
    a = actual / actual.sum()
    total = 0.0
    for ei, ai in zip(e, a, strict=True):
        ei, ai = max(ei, drift.PSI_FLOOR), max(ai, drift.PSI_FLOOR)
        total += (ai - ei) * math.log(ai / ei)
    return total


def numpy_js(expected: np.ndarray, actual: np.ndarray) -> float:
    """The Jensen–Shannon distance from its definition: entropies, base 2."""
    p, q = expected / expected.sum(), actual / actual.sum()
    m = (p + q) / 2

    def entropy(x: np.ndarray) -> float:
        x = x[x > 0]
        return float(-(x * np.log2(x)).sum())

    return math.sqrt(max(entropy(m) - (entropy(p) + entropy(q)) / 2, 0.0))


@pytest.mark.parametrize("seed", range(6))
def test_psi_and_js_equal_a_numpy_reference(seed):
    """PSI and the Jensen–Shannon distance of the same bins equal the references to
    1e-9, zero bins included (and scipy's distance for JS)."""
    rng = np.random.default_rng(seed)
    expected = rng.integers(0, 50, 12).astype(float)
    actual = rng.integers(0, 50, 12).astype(float)
    expected[seed % 12] = 0  # an empty bin on one side
    assert drift.psi(expected, actual) == pytest.approx(
        numpy_psi(expected, actual), abs=1e-9
    )
    assert drift.js_distance(expected, actual) == pytest.approx(
        numpy_js(expected, actual), abs=1e-9
    )
    assert drift.js_distance(expected, actual) == pytest.approx(
        jensenshannon(expected, actual, base=2), abs=1e-9
    )


def test_same_distribution_is_zero_and_disjoint_is_one():
    assert drift.psi([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)
    assert drift.js_distance([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-7)
    assert drift.js_distance([1, 0], [0, 1]) == pytest.approx(1.0, abs=1e-12)


def test_numeric_bins_are_quantiles_and_count_out_of_range():
    """Ten quantile bins of equal counts; served values below and above the training
    range land in the end bins and are counted as out of range; NaN is missing."""
    values = np.arange(100, dtype=float)
    reference = drift.numeric_reference(np.append(values, np.nan))
    assert len(reference["edges"]) == drift.NUMERIC_BINS + 1
    assert reference["counts"] == [10] * 10
    assert reference["missing"] == 1
    counted = drift.count_numeric(reference, [-5.0, 0.0, 50.0, 99.0, 500.0, np.nan])
    assert counted["below"] == 1
    assert counted["above"] == 1
    assert counted["missing"] == 1
    assert counted["counts"][0] == 2
    assert counted["counts"][-1] == 2
    assert sum(counted["counts"]) == 5


def test_categories_are_capped_with_other_unknown_and_missing():
    values = [f"c{i}" for i in range(30) for _ in range(30 - i)] + [math.nan]
    reference = drift.categorical_reference(values)
    assert len(reference["categories"]) == drift.CATEGORIES_KEPT
    assert reference["categories"][0] == "c0"
    assert reference["other"] == sum(30 - i for i in range(20, 30))
    assert reference["missing"] == 1
    counted = drift.count_categorical(reference, ["c0", "c25", "new", "", None])
    assert counted["counts"][0] == 1
    assert counted["other"] == 2  # a rare training category, and an unseen one
    assert counted["unknown"] == 1
    assert counted["missing"] == 2


def test_outputs_labels_and_probabilities():
    reference = drift.output_reference(
        {"predict": np.array(["a", "b", "a"]), "predict_proba": np.eye(2)[[0, 1, 0]]},
        ["a", "b"],
    )
    assert reference["labels"]["counts"] == [2, 1]
    assert reference["probability"]["counts"][-1] == 3
    counted = drift.count_outputs(reference, "predict", np.array(["b", "c"]))
    assert counted["labels"] == {"counts": [0, 1], "other": 1}


def test_compare_flags_the_shifted_feature_only():
    """A window drawn like the training data is not flagged; one feature shifted is,
    and it comes first."""
    features = [
        Feature(name="x"),
        Feature(name="y"),
        Feature(name="c", kind="categorical"),
    ]
    train = np.column_stack(
        [RNG.normal(0, 1, 2000), RNG.normal(5, 2, 2000), RNG.integers(0, 4, 2000)]
    ).astype(object)
    reference = drift.build_reference(train, features, {}, None, drift.TRAINING)
    thresholds = drift.Thresholds(psi=0.2, js=0.2, min_records=100)

    def window(shift: float, categories: int) -> dict:
        served = np.column_stack(
            [
                RNG.normal(shift, 1, 1000),
                RNG.normal(5, 2, 1000),
                RNG.integers(0, categories, 1000),
            ]
        ).astype(object)
        return {
            "features": {
                str(j): drift.count_feature(
                    f["kind"], f["distribution"], drift.column(served, j)
                )
                for j, f in enumerate(reference["features"])
            }
        }

    steady, _ = drift.compare(reference, window(0, 4), thresholds)
    assert [f.name for f in steady if f.drifting] == []
    shifted, _ = drift.compare(reference, window(2, 4), thresholds)
    assert [f.name for f in shifted if f.drifting] == ["x"]
    assert shifted[0].name == "x"
    assert shifted[0].unseen_window > 0.02  # beyond the largest training value
    categories, _ = drift.compare(reference, window(0, 8), thresholds)
    assert [f.name for f in categories if f.drifting] == ["c"]
    assert categories[0].unseen_window == pytest.approx(0.5, abs=0.1)


def test_too_few_records_flag_nothing():
    reference = {"counts": [10, 10], "missing": 0}
    few = drift.compare_one(
        0,
        "x",
        "numeric",
        reference,
        {"counts": [0, 5], "missing": 0},
        drift.Thresholds(psi=0.2, js=0.2, min_records=100),
    )
    assert few.psi > 0.2
    assert not few.drifting


def test_metadata_version_3_round_trips_and_older_versions_read():
    """Distributions survive a round trip; a version 2 file reads with none."""
    metadata = ModelMetadata(
        features=[Feature(name="x", distribution={"edges": [0, 1], "counts": [3]})],
        outputs={"labels": {"classes": ["a"], "counts": [3], "other": 0}},
    )
    written = json.loads(json.dumps(metadata.to_dict()))
    assert written["schema_version"] == SCHEMA_VERSION == 3
    read = ModelMetadata.from_dict(written)
    assert read.features[0].distribution == {"edges": [0, 1], "counts": [3]}
    assert read.outputs["labels"]["counts"] == [3]
    assert drift.reference_of(read)["source"] == drift.TRAINING
    older = ModelMetadata.from_dict(
        {"schema_version": 2, "features": [{"name": "x", "kind": "numeric"}]}
    )
    assert older.features[0].distribution is None
    assert older.outputs == {}
    assert drift.reference_of(older) is None


def test_capture_off_attaches_nothing(settings):
    """SMSERVE_CAPTURE_PERCENT=0 (the default): no sampler, so the request path only
    checks one attribute."""
    settings.SMSERVE = {**settings.SMSERVE, "CAPTURE_PERCENT": 0}
    assert capture.sampler_for("a" * 64, object()) is None


def _sampler() -> capture.Sampler:
    reference = drift.build_reference(
        np.arange(100, dtype=float).reshape(-1, 1),
        [Feature(name="x")],
        {},
        None,
        drift.TRAINING,
    )
    return capture.Sampler("d" * 64, 100.0, reference, [Feature(name="x")], None)


def test_failed_flush_keeps_the_counts():
    """A flush that cannot reach the database (pytest-django refuses it) keeps the
    counts, merged with the next ones."""
    collector = capture.CaptureCollector()
    sampler = _sampler()
    collector.queue.append((sampler, np.array([[1.0], [2.0]]), np.zeros(2), "predict"))
    assert collector.flush() is False
    collector.queue.append((sampler, np.array([[3.0]]), np.zeros(1), "predict"))
    collector.drain()
    (counted,) = collector.counts.values()
    assert counted["records"] == 3
    assert sum(counted["features"]["0"]["counts"]) == 3


# transaction=True: the flush closes an old connection first, as the stats' does (in a
# test's own transaction PostgreSQL's would then be gone).
@pytest.mark.django_db(transaction=True)
def test_flush_adds_to_this_writers_row():
    collector = capture.CaptureCollector()
    sampler = _sampler()
    for _ in range(2):
        collector.queue.append((sampler, np.array([[1.0], [99.0]]), None, "x"))
        assert collector.flush() is True
    (row,) = DriftCount.objects.all()
    assert row.records == 4
    assert row.writer == collector.writer
    assert row.counts["features"]["0"]["counts"][0] == 2
    assert row.hour.minute == 0
    assert row.hour <= datetime.now(UTC)


def test_settings_reject_a_capture_share_out_of_range():
    """SMSERVE_CAPTURE_PERCENT is a percentage: 150 stops start-up with its name."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import smserve.settings"],
        env={**os.environ, "SMSERVE_CAPTURE_PERCENT": "150"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "SMSERVE_CAPTURE_PERCENT must be 0..100, got 150.0" in result.stderr
