"""Helpers for the training tests: real /opt/ml trees and channel files, the real
``train`` executable, and two deliberately odd estimators (one slow to fit, one broken)
importable by dotted path."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from tests.support import ROOT
from tests.support.servers import wait_for

TRAIN = ROOT / "train"


def sagemaker_tree(
    base: Path,
    *,
    hyperparameters: dict[str, str] | None = None,
    channels: dict[str, dict[str, str]] | None = None,
    hosts: list[str] | None = None,
    current_host: str = "algo-1",
) -> Path:
    """``base`` laid out as SageMaker does before ``train`` starts; ``channels`` maps a
    channel to its inputdataconfig entry (None: no inputdataconfig.json at all)."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (base / "input" / "data").mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters or {}))
    if channels is not None:
        (config / "inputdataconfig.json").write_text(json.dumps(channels))
    hosts = hosts or [current_host]
    (config / "resourceconfig.json").write_text(
        json.dumps(
            {
                "current_host": current_host,
                "current_instance_type": "ml.m5.large",
                "current_group_name": "homogeneousCluster",
                "hosts": hosts,
                "instance_groups": [
                    {
                        "instance_group_name": "homogeneousCluster",
                        "instance_type": "ml.m5.large",
                        "hosts": hosts,
                    }
                ],
                "network_interface_name": "eth0",
            }
        )
    )
    return base


def file_channel(content_type: str | None = None, **extra: str) -> dict[str, str]:
    """An inputdataconfig.json entry as SageMaker writes it for a File-mode channel."""
    entry = {
        "TrainingInputMode": "File",
        "S3DistributionType": "FullyReplicated",
        "RecordWrapperType": "None",
    }
    if content_type:
        entry["ContentType"] = content_type
    entry.update(extra)
    return entry


def write_csv(
    path: Path,
    X: np.ndarray,
    y: np.ndarray,
    *,
    header: list[str] | None = None,
    compress: bool = False,
) -> Path:
    """Target first, then the features; gzipped when ``compress``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] if header else []
    lines += [
        ",".join([str(t), *(repr(float(v)) for v in row)])
        for t, row in zip(y, X, strict=True)
    ]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_channel(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """Label first, two numeric features: SageMaker's built-in CSV layout."""
    rng = np.random.default_rng(seed)
    X = rng.random((rows, 2))
    y = (X.sum(axis=1) > 1).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            f"{label},{a:.4f},{b:.4f}\n" for label, (a, b) in zip(y, X, strict=True)
        )
    )
    return path


def frame(X: np.ndarray, y: np.ndarray, names: list[str]) -> pd.DataFrame:
    """A DataFrame with the target first, as the channel files hold it."""
    return pd.DataFrame({names[0]: y, **{n: X[:, i] for i, n in enumerate(names[1:])}})


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    return buffer.getvalue()


def run_train(
    base: Path | None,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """The real ``train`` executable, as SageMaker runs it (``--base-dir`` when given),
    recording its run in a database of its own (``train_env``) unless ``env`` names one."""
    command = [str(TRAIN), *(["--base-dir", str(base)] if base else []), *args]
    with tempfile.TemporaryDirectory(prefix="train-state-") as state:
        return subprocess.run(
            command,
            env=train_env(env, Path(state)),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def sigterm_train(
    base: Path, ready: Path, deadline: float = 60
) -> tuple[subprocess.Popen, str]:
    """Start the real ``train`` on ``base``, wait for ``ready`` to appear, send SIGTERM
    (SageMaker's StopTrainingJob); returns the ended process and its stderr (``deadline``
    guards against a hang; it is not a figure). The process never outlives the call."""
    proc = subprocess.Popen(
        [str(TRAIN), "--base-dir", str(base)],
        env=train_env(None, base.parent / f"{base.name}-state"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(ready.exists, deadline=deadline, what=f"{ready} to appear")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=deadline)
        return proc, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def train_env(extra: dict[str, str] | None, state_dir: Path) -> dict[str, str]:
    """The test's environment for ``train``: a SQLite database in ``state_dir`` (never
    the checkout's ``var/`` nor the suite's PostgreSQL database), no SageMaker variables
    of the caller's; ``extra`` last, so a test can name another database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SAGEMAKER_BASE_DIR", "TRAINING_JOB_NAME"}
    }
    env["SMSERVE_PYTHON"] = sys.executable
    env["SMSERVE_STATE_DIR"] = str(state_dir)
    env["DATABASE_URL"] = ""  # empty: SQLite under the state dir
    env.update(extra or {})
    return env


class SlowFitClassifier(ClassifierMixin, BaseEstimator):
    """Touches ``started_file`` and then sleeps in one C call: a fit that only a kill ends."""

    def __init__(self, seconds: float = 60.0, started_file: str = "") -> None:
        self.seconds = seconds
        self.started_file = started_file

    def fit(self, X: Any, y: Any) -> SlowFitClassifier:
        if self.started_file:
            Path(self.started_file).touch()
        time.sleep(self.seconds)
        self.classes_ = np.unique(y)
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.full(len(X), self.classes_[0])


class BrokenClassifier(ClassifierMixin, BaseEstimator):
    """Its fit has a bug (not a data problem): the job must say so with a traceback."""

    def fit(self, X: Any, y: Any) -> BrokenClassifier:
        raise ZeroDivisionError("a bug inside fit")

    def predict(self, X: Any) -> np.ndarray:
        raise NotImplementedError


def small_forest() -> Any:
    """A function returning an estimator, for ``smserve_estimator`` by dotted path."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=3, max_depth=2)


def own_column_transformer_pipeline() -> Any:
    """A user's pipeline that encodes the churn table's text columns itself."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    return make_pipeline(
        ColumnTransformer(
            [
                ("text", OneHotEncoder(handle_unknown="ignore"), ["plan", "country"]),
                ("numbers", SimpleImputer(), ["tenure", "spend", "calls"]),
            ]
        ),
        LogisticRegression(max_iter=500),
    )
