"""Models with text columns, in process: the schema a model trained elsewhere gives, the
DataFrame a request becomes, the 400s that name record, feature and value, the warm-up,
and the admin's schema table."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from modelapp.admin import schema_table
from modelapp.batch import Batch
from modelapp.exceptions import InvalidInput
from modelapp.metadata import Feature, ModelMetadata, allows_nan, category_value
from modelapp.parsers import CSVParser, JSONParser, NPYParser
from modelapp.predictors import SklearnPredictor
from modelapp.registry import load_model
from tests.support.models import write_model
from tests.support.tables import FEATURES, churn_frame, fitted_elsewhere


@pytest.fixture(scope="module")
def foreign():
    return fitted_elsewhere()


def csv(body: bytes, header: bool = False) -> Batch:
    return CSVParser().parse(
        io.BytesIO(body), "text/csv; header=present" if header else "text/csv"
    )


def test_schema_of_a_column_transformer(foreign):
    """Encoder columns are categorical with their categories; imputed numbers are
    numeric with the imputer's value as typical; the order is feature_names_in_."""
    features = ModelMetadata.from_estimator(foreign).features
    assert [f.name for f in features] == FEATURES
    kinds = {f.name: f.kind for f in features}
    assert kinds == {
        "tenure": "numeric",
        "plan": "categorical",
        "spend": "numeric",
        "country": "categorical",
        "calls": "numeric",
        "payment": "categorical",
    }
    plan = features[1]
    assert plan.categories == ["basic", "enterprise", "pro"]  # NaN is not a category
    assert plan.n_categories == 3
    assert features[0].typical == pytest.approx(
        foreign[0].named_transformers_["num"].statistics_[0]
    )


def test_schema_of_a_plain_estimator_is_numeric(iris_model):
    """A tree fitted on an array: unnamed numeric columns, as before."""
    features = ModelMetadata.from_estimator(iris_model).features
    assert [(f.name, f.kind) for f in features] == [(None, "numeric")] * 4


def test_bare_column_transformer_pipeline_becomes_ready(tmp_path, foreign):
    """A bare model.joblib of the issue's pipeline warms up on a record built from its
    schema (it never became ready on a record of zeros)."""
    write_model(tmp_path, foreign)
    loaded = load_model(tmp_path / "model")
    assert loaded.metadata is None
    assert loaded.predictor.schema.is_frame


@pytest.mark.parametrize("header", [False, True])
def test_csv_records_become_the_training_frame(foreign, header):
    """Positional CSV, or with a header in another order: the model's own predict on
    the same rows as a DataFrame, text columns as strings, blanks as NaN."""
    frame = churn_frame(30, seed=4)[FEATURES]
    columns = FEATURES[::-1] if header else FEATURES
    body = frame[columns].to_csv(index=False, header=header).encode()
    got = SklearnPredictor(foreign).predict(csv(body, header), "predict_proba")
    assert np.allclose(got, foreign.predict_proba(frame), rtol=0, atol=1e-12)


def test_json_objects_with_nulls_and_quoted_commas(foreign):
    """JSON objects by name (null is missing); a quoted CSV field keeps its comma."""
    predictor = SklearnPredictor(foreign)
    record = {
        "tenure": None,
        "plan": "pro",
        "spend": 20.5,
        "country": "DE",
        "calls": 2,
        "payment": "card",
    }
    body = pd.Series(record).to_frame().T.to_json(orient="records").encode()
    batch = JSONParser().parse(io.BytesIO(body), "application/json")
    expected = foreign.predict(pd.DataFrame([record], columns=FEATURES))
    assert predictor.predict(batch).tolist() == expected.tolist()
    quoted = csv(b'1,"pro, legacy",2,DE,1,card\n')
    frame = predictor.to_input(quoted)
    assert frame["plan"].tolist() == ["pro, legacy"]
    assert predictor.predict(quoted).shape == (1,)  # an unknown category, ignored


def test_npy_numbers_to_a_model_with_text_columns():
    """A numeric NPY array reaches a model with a categorical column of numbers: 3.0 is
    the category "3", as training spelt it."""
    frame = pd.DataFrame({"size": [1.0, 2.0, 3.0, 4.0], "code": ["3", "3", "7", "7"]})
    model = make_pipeline(
        ColumnTransformer([("c", OneHotEncoder(), ["code"])], remainder="passthrough"),
        LogisticRegression(),
    ).fit(frame, [0, 0, 1, 1])
    body = io.BytesIO()
    np.save(body, np.array([[1.0, 3.0], [4.0, 7.0]]))
    batch = NPYParser().parse(io.BytesIO(body.getvalue()), "application/x-npy")
    predictor = SklearnPredictor(model)
    assert predictor.to_input(batch)["code"].tolist() == ["3", "7"]
    assert (
        predictor.predict(batch).tolist()
        == model.predict(
            pd.DataFrame({"size": [1.0, 4.0], "code": ["3", "7"]})
        ).tolist()
    )


def test_text_in_a_number_column_names_record_feature_and_value(foreign):
    with pytest.raises(InvalidInput, match=r"Record 2, feature 'tenure': 'old' is not"):
        SklearnPredictor(foreign).predict(
            csv(b"1,pro,2,DE,1,card\nold,pro,2,DE,1,card\n")
        )


def test_wrong_width_is_a_400_whatever_the_fields(foreign):
    """Too few fields, all numbers (the float batch) or with text: a 400, never a 500."""
    for body in (b"1,2,3\n", b"1,pro,3\n"):
        with pytest.raises(InvalidInput, match="Expected 6 features per record, got 3"):
            SklearnPredictor(foreign).predict(csv(body))


def test_infinity_in_a_number_column(foreign):
    with pytest.raises(InvalidInput, match=r"Record 1, feature 'spend' is inf"):
        SklearnPredictor(foreign).predict(csv(b"1,pro,inf,DE,1,card\n"))


def test_unknown_category_refused_by_the_model_names_the_record():
    """An encoder that refuses unknown categories: the 400 names the record (found by
    halving the batch), the feature, the value and the known categories."""
    predictor = SklearnPredictor(fitted_elsewhere(handle_unknown="error"))
    rows = [[1, "pro", 2, "DE", 1, "card"]] * 5
    rows[3] = [1, "pro", 2, "NZ", 1, "card"]
    with pytest.raises(
        InvalidInput,
        match=r"Record 4, feature 'country': 'NZ' is not a category the model was "
        r"trained with \('DE', 'ES'",
    ):
        predictor.predict(Batch(rows=rows))


def test_numeric_models_keep_the_float_path(iris_model):
    """A numeric model gets a float matrix; text is refused as before, by position."""
    predictor = SklearnPredictor(iris_model)
    assert isinstance(predictor.to_input(csv(b"1,2,3,4\n")), np.ndarray)
    with pytest.raises(InvalidInput, match=r"Record 1, feature 2: 'a' is not a number"):
        predictor.predict(csv(b"1,a,3,4\n"))


def test_pipeline_with_an_imputer_takes_nan():
    """scikit-learn tags every pipeline as refusing NaN; one that imputes first takes it."""
    X = np.array([[1.0, np.nan], [2.0, 3.0], [3.0, 1.0]])
    model = make_pipeline(SimpleImputer(), LogisticRegression()).fit(X, [0, 1, 0])
    assert allows_nan(model)
    assert not allows_nan(make_pipeline(LogisticRegression()))
    assert allows_nan(make_pipeline(RandomForestClassifier()))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("pro", "pro"), (3, "3"), (3.0, "3"), (True, "True"), (2.5, "2.5")],
)
def test_category_value_spells_a_category_one_way(value, expected):
    assert category_value(value) == expected


@pytest.mark.parametrize("value", [None, "", " ", math.nan, pd.NA])
def test_category_value_missing(value):
    assert math.isnan(category_value(value))


def test_admin_schema_table():
    """The admin's model page shows a row per feature: kind, categories, missing."""
    html = schema_table(
        [
            Feature(name="age", kind="numeric", missing=0.25, typical=41.0),
            Feature(
                name="plan",
                kind="categorical",
                categories=["basic", "pro"],
                n_categories=2,
                missing=0.0,
            ),
        ]
    )
    assert "<code>plan</code></td><td>categorical</td><td>basic, pro (2 in all)" in html
    assert "typical 41</td><td>25.0%" in html
