"""Training on tables with text columns and gaps (in process, the real pipeline): every
channel format, the encoding chosen per estimator, the overrides, and the data mistakes
that must still fail with a message naming them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelapp.metadata import ModelMetadata
from modelapp.parsers import CSVParser
from modelapp.paths import SageMakerPaths
from modelapp.predictors import load_pickle
from modelapp.registry import load_model
from modelapp.training.run import train
from tests.support.tables import FEATURES, TARGET, churn_frame, own_answer
from tests.support.training import run_train


def run(tmp_path: Path, channel: Path, real: bool = False, **hp: str):
    """One training job on ``channel``: the result (None for a ``real`` one, the train
    executable in a subprocess), the model and its metadata."""
    paths = SageMakerPaths(tmp_path / "ml")
    hp = {"smserve_target_column": TARGET, **hp}
    if real:
        done = run_train(
            paths.base,
            "--channel",
            f"train={channel}",
            *(arg for key, value in hp.items() for arg in ("--hp", f"{key}={value}")),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = None
    else:
        result = train(paths, hp_overrides=hp, channel_overrides={"train": channel})
        if not result.succeeded:
            return result, None, None
    model = load_pickle(paths.model_dir / "model.joblib")
    return result, model, ModelMetadata.read(paths.model_dir)


def csv_channel(tmp_path: Path, table: pd.DataFrame, header: bool = True) -> Path:
    path = tmp_path / "train.csv"
    table.to_csv(path, index=False, header=header)
    return path


def steps(model) -> list[str]:
    return [type(step).__name__ for _, step in getattr(model, "steps", [])]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return churn_frame(200, seed=2)


def test_parquet_with_category_string_and_boolean_dtypes(tmp_path, frame):
    """Parquet's category, string and boolean columns are categorical features. (The
    real ``train``: in process, train forks its fit, and HistGradientBoosting's OpenMP
    loop hangs in a child forked from a process that ran OpenMP before, as the suite's
    process has.)"""
    table = frame.astype({"plan": "category", "country": "string"})
    table["paperless"] = np.arange(len(table)) % 3 == 0
    path = tmp_path / "train.parquet"
    table.to_parquet(path)
    _, model, metadata = run(
        tmp_path, path, real=True, smserve_estimator="hist_gradient_boosting"
    )
    kinds = {f.name: f.kind for f in metadata.features}
    assert kinds["plan"] == kinds["country"] == kinds["paperless"] == "categorical"
    assert kinds["tenure"] == "numeric"
    assert metadata.features[-1].categories == ["False", "True"]
    assert metadata.preprocessing == {"encoding": "native", "impute": "none"}
    assert steps(model) == ["ColumnTransformer", "HistGradientBoostingClassifier"]
    assert list(model.feature_names_in_) == [*FEATURES, "paperless"]


def test_metadata_records_kinds_categories_and_missing(tmp_path, frame):
    path = csv_channel(tmp_path, frame)
    result, model, metadata = run(tmp_path, path, smserve_estimator="random_forest")
    assert result.succeeded, result.failure_reason
    plan = metadata.features[FEATURES.index("plan")]
    assert plan.kind == "categorical"
    assert set(plan.categories) == {"basic", "pro", "enterprise"}
    assert plan.n_categories == 3
    assert plan.missing == pytest.approx(frame["plan"].isna().mean())
    tenure = metadata.features[0]
    assert tenure.typical == pytest.approx(frame["tenure"].median())
    # A tree ensemble: ordinal codes, NaN left to the forest (it takes NaN).
    assert metadata.preprocessing == {"encoding": "ordinal", "impute": "none"}
    raw = json.loads((tmp_path / "ml/model/metadata.json").read_text())
    assert raw["features"][1]["kind"] == "categorical"


@pytest.mark.parametrize(
    ("estimator", "encoder", "imputer"),
    [
        ("logistic_regression", "OneHotEncoder", "SimpleImputer"),
        ('["standard_scaler", "knn"]', "OneHotEncoder", "SimpleImputer"),
        ("gradient_boosting", "OrdinalEncoder", "SimpleImputer"),
    ],
)
def test_encoding_suits_the_estimator(tmp_path, frame, estimator, encoder, imputer):
    """One-hot for linear models and kNN, ordinal for trees; gaps imputed only for
    estimators that refuse NaN. Unseen categories get a prediction."""
    path = tmp_path / "train.jsonl"
    frame.to_json(path, orient="records", lines=True)
    result, model, _ = run(tmp_path, path, smserve_estimator=estimator)
    assert result.succeeded, result.failure_reason
    transformer = model.steps[0][1]
    assert type(transformer.named_transformers_["categorical"]).__name__ == encoder
    assert type(transformer.named_transformers_["numeric"]).__name__ == imputer
    unseen = frame[FEATURES].head(2).copy()
    unseen["country"] = "NZ"
    unseen.loc[unseen.index[0], "plan"] = np.nan
    assert len(own_answer(model, "predict", unseen)) == 2


def test_overrides(tmp_path, frame):
    """smserve_categorical_encoding and smserve_impute override the choice."""
    result, model, metadata = run(
        tmp_path,
        csv_channel(tmp_path, frame),
        smserve_estimator="random_forest",
        smserve_categorical_encoding="onehot",
        smserve_impute="mean",
        n_estimators="5",
    )
    assert result.succeeded, result.failure_reason
    assert metadata.preprocessing == {"encoding": "onehot", "impute": "mean"}
    assert model.steps[0][1].named_transformers_["numeric"].strategy == "mean"


def test_headerless_text_columns_by_position(tmp_path, frame):
    """A headerless CSV: text columns are categorical too, the columns by position."""
    result, model, metadata = run(
        tmp_path,
        csv_channel(tmp_path, frame, header=False),
        smserve_target_column="0",
        smserve_estimator="decision_tree",
    )
    assert result.succeeded, result.failure_reason
    assert metadata.feature_names is None
    assert [f.kind for f in metadata.features][:2] == ["numeric", "categorical"]
    assert not hasattr(model, "feature_names_in_")
    # Served by position: the same answers as the model on a positional DataFrame.
    rows = frame[FEATURES].head(5)
    body = rows.to_csv(index=False, header=False).encode()
    served = load_model(tmp_path / "ml" / "model").predictor.predict(
        CSVParser().parse(io.BytesIO(body), "text/csv")
    )
    expected = model.predict(rows.set_axis(range(len(FEATURES)), axis=1))
    assert served.tolist() == expected.tolist()


def test_declared_categorical_columns(tmp_path, frame):
    """smserve_categorical_columns makes a numeric column categorical."""
    _, _, metadata = run(
        tmp_path,
        csv_channel(tmp_path, frame),
        smserve_estimator="decision_tree",
        smserve_categorical_columns='["calls"]',
    )
    calls = metadata.features[FEATURES.index("calls")]
    assert calls.kind == "categorical"
    assert "0" in calls.categories


def test_mostly_numbers_with_a_typo_fails(tmp_path, frame):
    """A number column with one text value is a mistake, not a category."""
    table = frame.astype({"tenure": object})
    table.loc[5, "tenure"] = "ten"
    result, _, _ = run(tmp_path, csv_channel(tmp_path, table))
    assert result.failure_reason.startswith(
        "Channel 'train' has non-numeric data: column 'tenure' holds 'ten' "
        "(train.csv, record 6). Most of its values are numbers"
    )


def test_a_quoted_value_is_cut_short_in_the_failure_reason(tmp_path, frame):
    """The failure reason becomes the job's FailureReason, readable by anyone allowed to
    describe the job: a data value is quoted by its first 40 characters only, with the
    record that holds it."""
    table = frame.astype({"tenure": object})
    table.loc[5, "tenure"] = "alice.liddell@example.com, 12 Wonderland Road, Oxford"
    result, _, _ = run(tmp_path, csv_channel(tmp_path, table))
    assert result.failure_reason.startswith(
        "Channel 'train' has non-numeric data: column 'tenure' holds "
        "'alice.liddell@example.com, 12 Wonderlan… (15 more characters) "
        "(train.csv, record 6)."
    )
    assert "Oxford" not in result.failure_reason


def test_text_in_one_file_numbers_in_another_names_both(tmp_path, frame):
    directory = tmp_path / "train"
    directory.mkdir()
    frame.iloc[:100].to_csv(directory / "a.csv", index=False)
    other = frame.iloc[100:].copy()
    other["calls"] = "many"
    other.to_csv(directory / "b.csv", index=False)
    result, _, _ = run(tmp_path, directory)
    assert result.failure_reason.startswith(
        "Channel 'train': column 'calls' holds numbers in a.csv but text in b.csv "
        "('many')"
    )
