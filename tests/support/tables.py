"""A synthetic churn table: numbers, text columns, gaps and text labels, as a data
scientist's real table would have them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

PLANS = ["basic", "pro", "enterprise"]
# Skewed on purpose: the last two are rare (grouped by one-hot's min_frequency).
COUNTRIES = ["DE", "FR", "US", "GB", "ES", "IS", "LU"]
COUNTRY_SHARE = [0.3, 0.2, 0.2, 0.15, 0.13, 0.01, 0.01]
PAYMENTS = ["card", "invoice", "paypal"]
FEATURES = ["tenure", "plan", "spend", "country", "calls", "payment"]
CATEGORICAL = ["plan", "country", "payment"]
TARGET = "churn"


def churn_frame(rows: int = 400, seed: int = 0, gaps: float = 0.08) -> pd.DataFrame:
    """``churn`` ("yes"/"no") first, then the features; about ``gaps`` of the tenure,
    spend and plan cells are missing."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, rows).astype(float)
    plan = rng.choice(PLANS, rows, p=[0.5, 0.35, 0.15])
    spend = np.round(rng.gamma(2.0, 30.0, rows), 2)
    country = rng.choice(COUNTRIES, rows, p=COUNTRY_SHARE)
    calls = rng.poisson(1.5, rows).astype(float)
    payment = rng.choice(PAYMENTS, rows)
    score = (
        -0.04 * tenure
        + 0.6 * calls
        + np.where(plan == "basic", 1.0, np.where(plan == "pro", -0.2, -1.0))
        + np.where(np.isin(country, ["US", "GB"]), 0.8, -0.3)
        + np.where(payment == "invoice", 0.7, 0.0)
        + 0.004 * spend
        + rng.normal(0, 0.6, rows)
    )
    churn = np.where(score > np.median(score), "yes", "no")
    frame = pd.DataFrame(
        {
            TARGET: churn,
            "tenure": tenure,
            "plan": plan.astype(object),
            "spend": spend,
            "country": country.astype(object),
            "calls": calls,
            "payment": payment.astype(object),
        }
    )
    for column in ("tenure", "spend", "plan"):
        frame.loc[rng.random(rows) < gaps, column] = np.nan
    return frame


def own_answer(model: Any, method: str, rows: pd.DataFrame) -> Any:
    """``model.method(rows)`` in the test process on one OpenMP thread. A GNU OpenMP pool
    started here would hang the first parallel fit of a later in-process ``train`` (it
    fits in a forked child, and libgomp is not fork-safe): HistGradientBoosting and kNN
    predict with OpenMP."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        return getattr(model, method)(rows)


def fitted_elsewhere(handle_unknown: str = "ignore") -> Any:
    """The issue's pipeline, fitted on a DataFrame and saved by someone else: one-hot
    for the text columns, a mean imputer for the numbers, then a logistic regression."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = churn_frame(300)
    model = make_pipeline(
        ColumnTransformer(
            [
                ("cat", OneHotEncoder(handle_unknown=handle_unknown), CATEGORICAL),
                ("num", SimpleImputer(), ["tenure", "spend", "calls"]),
            ]
        ),
        LogisticRegression(max_iter=1000),
    )
    return model.fit(frame[FEATURES], frame[TARGET])
