"""The real ``train`` executable on real SageMaker trees: formats, modes, outputs, stop.

Each test builds an ``/opt/ml`` tree in a temp dir, runs ``./train`` in a subprocess and
checks what SageMaker (and the serving side) would see afterwards.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import threading
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_regression
from sklearn.tree import DecisionTreeClassifier

from modelapp.metadata import sha256_of
from modelapp.parsers import Batch
from modelapp.paths import SageMakerPaths
from modelapp.registry import load_model
from tests.support.training import (
    file_channel,
    frame,
    parquet_bytes,
    run_train,
    sagemaker_tree,
    sigterm_train,
    write_csv,
)

METRIC_LINE = re.compile(r"^#metric (\w+):(\w+)=([-+0-9.eE]+|nan|inf)$", re.M)
METADATA_KEYS = {
    "estimator",
    "params",
    "hyperparameters",
    "n_features",
    "feature_names",
    "classes",
    "task",
    "metrics",
    "rows",
    "versions",
    "sha256",
    "started_at",
    "finished_at",
    "training_job_name",
    "duration_seconds",
}


@pytest.fixture(scope="module")
def splits(iris):
    """Iris, shuffled once, as 120 train and 30 validation rows."""
    X, y = iris
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order], y[order]
    return (X[:120], y[:120]), (X[120:], y[120:])


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(n_samples=80, n_features=3, noise=0.1, random_state=0)
    return X, np.round(y, 4)


def served(base: Path):
    """The model as the serving side loads it."""
    return load_model(SageMakerPaths(base).model_dir)


def metric_lines(stdout: str) -> dict[str, float]:
    return {f"{c}:{m}": float(v) for c, m, v in METRIC_LINE.findall(stdout)}


def test_csv_classification_end_to_end(tmp_path, splits):
    """A headerless CSV job with SageMaker-style string hyperparameters trains the model
    serving loads, predicting exactly as the same estimator fitted in-process.

    README Failure semantics: exit 0 "trained", ``output/success`` exists (empty).
    docs/training.md, What it reads: "`{"key": "string", ...}`". docs/training.md,
    Reserved keys: "`sklearn.tree.DecisionTreeClassifier`"; "`0` (the first column)".
    docs/training.md, Channel ContentType: "one record per line"; "the label in the
    first column (as SageMaker's built-in algorithms expect)". docs/training.md, What it
    writes: "the fitted estimator (`joblib.dump`)"; "`estimator` (dotted path)";
    "`params` (`get_params()`)"; "`hyperparameters` (as given)"; "`n_features`";
    "`feature_names`"; "`classes`"; "`task` (`classification`/`regression`)";
    "`metrics`"; "`rows` (`{"train": n, "validation": n or null}`)"; "`versions`
    (`python`, `sklearn`, `numpy`, `smserve`)"; "`sha256` (of model.joblib)";
    "`started_at`"; "`finished_at` (ISO 8601, UTC)"; "`training_job_name`";
    "`duration_seconds`"; "`{"train:accuracy": 0.98, "validation:accuracy": 0.96,
    ...}`"; "when the job succeeded". docs/training.md, Failure semantics: "—
    (`output/success` exists)".
    """
    (X, y), (X_val, y_val) = splits
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={
            "max_depth": "3",
            "criterion": '"entropy"',  # JSON-encoded, as the SDK's framework estimators do
            "smserve_random_seed": "7",
            "sagemaker_container_log_level": "20",  # the SDK adds sagemaker_* keys
            "_tuning_objective_metric": "validation:accuracy",
        },
        channels={"train": file_channel("text/csv"), "validation": file_channel()},
    )
    write_csv(base / "input/data/train/part-0.csv", X[:60], y[:60])
    write_csv(base / "input/data/train/sub/part-1.csv", X[60:], y[60:])
    write_csv(base / "input/data/validation/val.csv", X_val, y_val)
    (base / "input/data/train-manifest").write_text("not data\n")

    proc = run_train(base, env={"TRAINING_JOB_NAME": "iris-42"})

    assert proc.returncode == 0, proc.stderr
    paths = SageMakerPaths(base)
    expected = DecisionTreeClassifier(
        max_depth=3, criterion="entropy", random_state=7
    ).fit(X, y)
    model = served(base)
    predictions = model.predictor.predict(Batch(values=X_val))
    assert predictions.tolist() == expected.predict(X_val).tolist()
    assert type(joblib.load(paths.model_file).tree_) is type(expected.tree_)
    assert paths.success_file.read_bytes() == b""
    assert not paths.failure_file.exists()

    metadata = json.loads(paths.metadata_file.read_text())
    assert METADATA_KEYS <= set(metadata)
    assert metadata["estimator"] == "sklearn.tree.DecisionTreeClassifier"
    assert metadata["params"]["max_depth"] == 3
    assert metadata["params"]["criterion"] == "entropy"
    assert metadata["hyperparameters"]["criterion"] == '"entropy"'
    assert metadata["n_features"] == 4
    assert metadata["feature_names"] is None
    assert metadata["classes"] == [0, 1, 2]
    assert metadata["task"] == "classification"
    assert metadata["rows"] == {"train": 120, "validation": 30}
    assert metadata["sha256"] == sha256_of(paths.model_file) == model.sha256
    assert metadata["training_job_name"] == "iris-42"
    assert set(metadata["versions"]) == {"python", "sklearn", "numpy", "smserve"}
    assert metadata["started_at"].endswith("Z")
    assert metadata["finished_at"] >= metadata["started_at"]
    assert metadata["duration_seconds"] >= 0

    accuracy = float((expected.predict(X_val) == y_val).mean())
    printed = metric_lines(proc.stdout)
    assert printed["validation:accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert set(printed) == {
        "train:accuracy",
        "train:f1",
        "validation:accuracy",
        "validation:f1",
    }
    written = json.loads(paths.metrics_file.read_text())
    assert written == pytest.approx(metadata["metrics"])
    assert written["validation:accuracy"] == pytest.approx(accuracy)
    assert "Ignoring hyperparameters set by SageMaker" in proc.stderr
    assert "_tuning_objective_metric" in proc.stderr


def test_header_csv_gzip_regression(tmp_path, regression):
    """A gzipped CSV with a header trains a regressor on named features, the target found
    by name; serving knows the names, and R², RMSE and MAE are reported.
    docs/training.md, Reserved keys: "when the data has column names"; "a name".
    """
    X, y = regression
    names = ["price", "rooms", "area", "age"]
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={
            "smserve_estimator": "sklearn.linear_model.Ridge",
            "smserve_target_column": "price",
            "alpha": "0.5",
        },
        channels={"train": file_channel("text/csv", CompressionType="Gzip")},
    )
    # The target does not have to come first when it is named.
    df = frame(X, y, names)[["rooms", "price", "area", "age"]]
    (base / "input/data/train").mkdir(parents=True)
    (base / "input/data/train/houses.csv.gz").write_bytes(
        gzip.compress(df.to_csv(index=False).encode())
    )

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    model = served(base)
    assert model.predictor.feature_names == ["rooms", "area", "age"]
    assert list(model.predictor.model.feature_names_in_) == ["rooms", "area", "age"]
    from sklearn.linear_model import Ridge

    features = df[["rooms", "area", "age"]]
    expected = Ridge(alpha=0.5).fit(features, df["price"])
    got = model.predictor.predict(Batch(values=features.to_numpy()))
    assert np.allclose(got, expected.predict(features))
    metadata = json.loads((base / "model/metadata.json").read_text())
    assert metadata["task"] == "regression"
    assert metadata["classes"] is None
    assert metadata["feature_names"] == ["rooms", "area", "age"]
    assert metadata["target"] == "price"
    assert set(metric_lines(proc.stdout)) == {"train:r2", "train:rmse", "train:mae"}
    assert metric_lines(proc.stdout)["train:r2"] > 0.99


@pytest.mark.parametrize("fmt", ["parquet", "jsonl-objects", "jsonl-arrays-gzip"])
def test_parquet_and_json_lines(tmp_path, splits, fmt):
    """Parquet and JSON Lines (objects: named features; arrays: positional), with or
    without ContentType, gzipped or not, train the same model as the CSV would.
    docs/training.md, What it reads: "optional `ContentType`"; "`CompressionType`".
    docs/training.md, Channel ContentType: "one or more Parquet files"; "column names
    are the feature names"; "one JSON array (positional) or object (named features) per
    line".
    """
    (X, y), _ = splits
    names = ["species", "sl", "sw", "pl", "pw"]
    df = frame(X, y, names)
    channel = file_channel()
    data = base = None
    if fmt == "parquet":
        channel = file_channel("application/x-parquet")
        data, filename, named = parquet_bytes(df), "iris.parquet", True
    elif fmt == "jsonl-objects":
        data = df.to_json(orient="records", lines=True).encode()
        filename, named = "iris.jsonl", True
    else:
        rows = [[int(t), *map(float, r)] for t, r in zip(y, X, strict=True)]
        data = gzip.compress("\n".join(json.dumps(r) for r in rows).encode())
        filename, named = "iris.jsonl.gz", False
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={"smserve_random_seed": "0"},
        channels={"train": channel},
    )
    (base / "input/data/train").mkdir(parents=True)
    (base / "input/data/train" / filename).write_bytes(data)

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    model = served(base)
    expected = DecisionTreeClassifier(random_state=0).fit(X, y)
    assert (
        model.predictor.predict(Batch(values=X)).tolist()
        == expected.predict(X).tolist()
    )
    assert model.predictor.feature_names == (names[1:] if named else None)
    metadata = json.loads((base / "model/metadata.json").read_text())
    assert metadata["rows"] == {"train": 120, "validation": None}


def test_pipe_mode_reads_the_fifo_once_as_a_stream(tmp_path, splits):
    """Pipe mode reads input/data/train_0, a real FIFO fed by a writer, in one pass.
    docs/training.md, What it reads: "channels: `TrainingInputMode` (`File`, `Pipe`,
    `FastFile`)"; "Pipe data: a FIFO"; "read once"; "as a stream".
    """
    (X, y), (X_val, y_val) = splits
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={"smserve_random_seed": "0"},
        channels={
            "train": {"TrainingInputMode": "Pipe", "ContentType": "text/csv"},
            "validation": {"TrainingInputMode": "Pipe"},
        },
    )
    payloads = {}
    for name, (features, labels) in {
        "train": (X, y),
        "validation": (X_val, y_val),
    }.items():
        path = write_csv(tmp_path / f"{name}.csv", features, labels)
        payloads[name] = path.read_bytes()
        if name == "validation":
            payloads[name] = gzip.compress(payloads[name])
        os.mkfifo(base / f"input/data/{name}_0")

    def feed(name: str) -> None:
        with open(base / f"input/data/{name}_0", "wb") as fifo:
            data = payloads[name]
            for start in range(0, len(data), 512):  # in pieces, as a stream arrives
                fifo.write(data[start : start + 512])
                fifo.flush()

    writers = [threading.Thread(target=feed, args=(n,), daemon=True) for n in payloads]
    for writer in writers:
        writer.start()
    proc = run_train(base)
    for writer in writers:
        writer.join(timeout=5)

    assert proc.returncode == 0, proc.stderr
    assert not any(w.is_alive() for w in writers)
    metadata = json.loads((base / "model/metadata.json").read_text())
    assert metadata["rows"] == {"train": 120, "validation": 30}
    assert metadata["channels"]["train"]["mode"] == "Pipe"
    expected = DecisionTreeClassifier(random_state=0).fit(X, y)
    got = served(base).predictor.predict(Batch(values=X_val))
    assert got.tolist() == expected.predict(X_val).tolist()


def test_pipeline_with_nested_params(tmp_path, splits):
    """A JSON list of estimators is a pipeline; ``step__param`` keys reach its steps.
    docs/training.md, Reserved keys: "a short name (below)"; "or a JSON list of those: a
    pipeline".
    """
    (X, y), (X_val, _) = splits
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={
            "smserve_estimator": '["standard_scaler", "logistic_regression"]',
            "logisticregression__C": "0.05",
            "standardscaler__with_mean": "false",
        },
        channels={"train": file_channel("text/csv")},
    )
    write_csv(base / "input/data/train/iris.csv", X, y)

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    model = served(base).predictor.model
    assert [name for name, _ in model.steps] == [
        "standardscaler",
        "logisticregression",
    ]
    assert model.named_steps["logisticregression"].C == 0.05
    assert model.named_steps["standardscaler"].with_mean is False
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    expected = make_pipeline(
        StandardScaler(with_mean=False), LogisticRegression(C=0.05)
    ).fit(X, y)
    assert np.allclose(model.predict_proba(X_val), expected.predict_proba(X_val))
    metadata = json.loads((base / "model/metadata.json").read_text())
    assert metadata["estimator"] == "sklearn.pipeline.Pipeline"
    assert metadata["params"]["logisticregression__C"] == 0.05
    assert metadata["params"]["logisticregression"] == (
        "sklearn.linear_model.LogisticRegression"
    )


def test_second_host_exits_0_and_writes_nothing(tmp_path, splits):
    """With several hosts only the first writes the model; the others log and exit 0,
    writing nothing: no model, no ``output/`` (so no ``output/success`` either).

    README Failure semantics: exit 0 "not the first host" row; What it writes: "only
    the first in ``hosts`` trains and writes".
    docs/training.md, What it reads: "`current_host`". docs/training.md, Failure
    semantics: "not the first host (several hosts)"; "— (nothing is written: no
    `model/`, no `output/`)".
    """
    (X, y), _ = splits
    base = sagemaker_tree(
        tmp_path,
        channels={"train": file_channel()},
        hosts=["algo-1", "algo-2"],
        current_host="algo-2",
    )
    write_csv(base / "input/data/train/iris.csv", X, y)

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    assert "algo-1, the first of the hosts algo-1, algo-2, writes the model" in (
        proc.stderr
    )
    assert not (base / "model").exists()
    assert not (base / "output").exists()
    assert proc.stdout == ""


def test_base_dir_from_environment_and_inferred_channels(tmp_path, splits):
    """SAGEMAKER_BASE_DIR is used without --base-dir; with no inputdataconfig.json the
    channels are inferred from input/data, skipping manifests, hidden files and extra
    config files.
    docs/training.md, What it reads: "missing = channels inferred from `input/data`
    (directories are File channels, FIFOs `<name>_<n>` Pipe channels)"; "recursively";
    "in sorted order".
    """
    (X, y), (X_val, y_val) = splits
    base = sagemaker_tree(tmp_path, channels=None)
    (base / "input/config/trainingjobconfig.json").write_text(
        '{"TrainingJobName": "x"}'
    )
    (base / "input/config/checkpointconfig.json").write_text("{}")
    write_csv(base / "input/data/train/iris.csv", X, y)
    (base / "input/data/train/.iris.csv.crc").write_bytes(b"\x00garbage")
    (base / "input/data/train/_SUCCESS").write_text("")
    write_csv(base / "input/data/validation/val.csv", X_val, y_val)
    (base / "input/data/validation-manifest").write_text('[{"prefix": "s3://x/"}]')

    proc = run_train(None, env={"SAGEMAKER_BASE_DIR": str(base)})

    assert proc.returncode == 0, proc.stderr
    metadata = json.loads((base / "model/metadata.json").read_text())
    assert metadata["rows"] == {"train": 120, "validation": 30}
    assert metadata["channels"]["train"]["sources"] == ["iris.csv"]
    assert "validation:accuracy" in metric_lines(proc.stdout)


def test_options_override_files(tmp_path, splits):
    """``--hp`` overrides hyperparameters.json and ``--channel`` points a channel at any
    file, for local runs."""
    (X, y), _ = splits
    base = sagemaker_tree(
        tmp_path / "ml", hyperparameters={"max_depth": "1"}, channels={}
    )
    data = write_csv(tmp_path / "elsewhere" / "iris.csv", X, y)

    proc = run_train(base, "--hp", "max_depth=2", "--channel", f"train={data}")

    assert proc.returncode == 0, proc.stderr
    model = served(base).predictor.model
    assert model.max_depth == 2
    metadata = json.loads((base / "model/metadata.json").read_text())
    assert metadata["hyperparameters"] == {"max_depth": "2"}


def _no_train_channel(base: Path) -> None:
    (base / "input/config/inputdataconfig.json").write_text(
        json.dumps({"validation": file_channel()})
    )


def _empty_channel(base: Path) -> None:
    (base / "input/data/train/data.csv").unlink()


def _other_column_count(base: Path) -> None:
    (base / "input/data/train/extra.csv").write_text("0,1.5,2.5,3.5\n")


def _non_numeric(base: Path) -> None:
    (base / "input/data/train/data.csv").write_text("0,1.5,2\n1,abc,3\n0,2.5,1\n")


def _hyperparameters(**values: str):
    def apply(base: Path) -> None:
        (base / "input/config/hyperparameters.json").write_text(json.dumps(values))

    return apply


def _corrupt_gzip(base: Path) -> None:
    (base / "input/data/train/data.csv").write_bytes(gzip.compress(b"0,1,2\n")[:-6])


def _nan_for_an_estimator_that_refuses_it(base: Path) -> None:
    (base / "input/data/train/data.csv").write_text(
        "0,1.0,2.0\n1,,1.0\n0,3.0,4.0\n1,4.0,3.0\n"
    )
    # smserve_impute=none: by default the gap would be filled (the median) for it.
    _hyperparameters(smserve_estimator="logistic_regression", smserve_impute="none")(
        base
    )


def _typed_differently_across_files(base: Path) -> None:
    (base / "input/data/train/data.csv").write_text("y,a,b\n0,1.0,2.0\n1,2.0,1.0\n")
    (base / "input/data/train/more.csv").write_text("y,a,b\n0,low,2.0\n1,high,1.0\n")


def _record_wrapped(base: Path) -> None:
    (base / "input/config/inputdataconfig.json").write_text(
        json.dumps({"train": file_channel("text/csv", RecordWrapperType="RecordIO")})
    )


EXIT_1 = [
    (
        "missing channel",
        _no_train_channel,
        "No 'train' channel: the job has validation",
    ),
    ("empty channel", _empty_channel, "Channel 'train' is empty:"),
    (
        "wrong column count",
        _other_column_count,
        "Channel 'train': extra.csv has 4 columns but data.csv has 3;",
    ),
    (
        "non-numeric data",
        _non_numeric,
        "Channel 'train' has non-numeric data: column 1 (0 is the first) holds 'abc'",
    ),
    (
        "bad hyperparameter",
        _hyperparameters(max_depth="-3"),
        "Invalid hyperparameter: The 'max_depth' parameter of DecisionTreeClassifier",
    ),
    (
        "unknown hyperparameter",
        _hyperparameters(max_dept="3"),
        "Unknown hyperparameter 'max_dept' for DecisionTreeClassifier.",
    ),
    ("unreadable file", _corrupt_gzip, "data.csv is not a valid gzip file:"),
    (
        "typed differently across files",
        _typed_differently_across_files,
        "Channel 'train': column 'a' holds numbers in data.csv but text in more.csv",
    ),
    (
        "record wrapper",
        _record_wrapped,
        "Channel 'train' uses RecordWrapperType RecordIO; smserve reads unwrapped",
    ),
    (
        "fit raising ValueError",
        _nan_for_an_estimator_that_refuses_it,
        "LogisticRegression could not be fitted: Input X contains NaN.",
    ),
]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [case[1:] for case in EXIT_1],
    ids=[case[0] for case in EXIT_1],
)
def test_job_to_fix_exits_1_through_the_executable(tmp_path, breakage, message):
    """Each kind of configuration or data mistake, through ``./train``: exit 1, the
    failure file is the message alone (also on stderr), no traceback, no model, no
    success file. ``tests/test_training_errors.py`` has every message in-process.

    README Failure semantics: exit 1 "missing or empty channel, wrong column count,
    non-numeric data, bad or unknown hyperparameter, unknown estimator (below),
    unreadable file"; exit 2's "``fit`` raising something other than ``ValueError``" read
    the other way: ``fit`` raising ``ValueError`` on the data is the job's to fix.
    docs/training.md, What it writes: "the reason"; "when it failed". docs/training.md,
    Failure semantics: "the job's configuration or data needs fixing: missing or empty
    channel"; "text in a column of numbers"; "an estimator's `fit` raising `ValueError`
    on the data (e.g. NaN for one that refuses it)"; "what to fix first"; "a column typed
    differently across files". docs/training.md, What it reads: "`RecordWrapperType`
    (must be `None`)".
    docs/training.md, Reserved keys: "`none` never".
    """
    base = sagemaker_tree(tmp_path, channels={"train": file_channel("text/csv")})
    (base / "input/data/train").mkdir(parents=True)
    (base / "input/data/train/data.csv").write_text(
        "0,1.0,2.0\n1,2.0,1.0\n0,3.0,4.0\n1,4.0,3.0\n"
    )
    breakage(base)

    proc = run_train(base)

    failure_file = base / "output/failure"
    assert proc.returncode == 1, (proc.stderr, failure_file.exists())
    failure = failure_file.read_text()
    assert failure.startswith(message), failure
    assert "Traceback" not in failure
    assert failure in proc.stderr
    assert not (base / "output/success").exists()
    assert not (base / "model/model.joblib").exists()


def test_usage_error_exits_2_without_a_failure_file(tmp_path):
    """A command-line mistake is argparse's: exit 2, the usage on stderr, and no
    ``output/failure`` (SageMaker passes no arguments, so this is a person's typo).

    README Failure semantics: "A command-line usage error (``--hp novalue``) exits 2
    from argparse, with the usage on stderr and no failure file"."""
    base = sagemaker_tree(tmp_path, channels={"train": file_channel()})

    proc = run_train(base, "--hp", "novalue")

    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    assert "novalue" in proc.stderr
    assert not (base / "output").exists()
    assert not (base / "model").exists()


def test_user_mistake_exits_1_with_only_the_message(tmp_path, splits):
    """An unknown estimator exits 1; output/failure says what to fix, no traceback.

    README Failure semantics: exit 1 "unknown estimator"; a previous run's
    ``output/success`` does not survive."""
    (X, y), _ = splits
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={"smserve_estimator": "sklearn.ensemble.RandomForrest"},
        channels={"train": file_channel()},
    )
    write_csv(base / "input/data/train/iris.csv", X, y)
    (base / "output").mkdir()
    (base / "output/success").write_text("")  # a previous run's; must not survive

    proc = run_train(base)

    assert proc.returncode == 1
    failure = (base / "output/failure").read_text()
    assert failure.startswith("Unknown estimator 'sklearn.ensemble.RandomForrest'")
    assert "random_forest" in failure
    assert "Traceback" not in failure
    assert failure in proc.stderr
    assert not (base / "output/success").exists()
    assert not (base / "model/model.joblib").exists()


def test_bug_exits_2_with_the_traceback(tmp_path, splits):
    """An error that is not the data's or the configuration's exits 2, and the failure
    file carries the traceback after the one-line reason.

    README Failure semantics: exit 2 "an estimator's ``fit`` raising something other
    than ``ValueError``", "a one-line reason, then the traceback".
    docs/training.md, Failure semantics: "a bug (in smserve, or an estimator's `fit`
    raising something other than `ValueError`)".
    """
    (X, y), _ = splits
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={
            "smserve_estimator": "tests.support.training.BrokenClassifier"
        },
        channels={"train": file_channel()},
    )
    write_csv(base / "input/data/train/iris.csv", X, y)

    proc = run_train(base)

    assert proc.returncode == 2
    failure = (base / "output/failure").read_text()
    first_line = failure.splitlines()[0]
    assert first_line == (
        "BrokenClassifier.fit failed with ZeroDivisionError: a bug inside fit. "
        "The traceback follows."
    )
    assert "Traceback (most recent call last)" in failure
    assert "ZeroDivisionError: a bug inside fit" in failure
    assert list((base / "model").iterdir()) == []


def test_sigterm_mid_fit_stops_within_seconds_and_leaves_no_model(tmp_path, splits):
    """SIGTERM during a fit stuck in one long (120 s) C call ends the job long before the
    fit would have: exit 143, no model, no temporary file, a failure file saying it was
    stopped. (No bound in seconds here: this machine's load is not the product's.)

    README Failure semantics: 143 "stopped by SIGTERM" with its ``output/failure`` text.
    docs/training.md, Failure semantics: "stopped by SIGTERM (SageMaker's
    StopTrainingJob)"; "`Training was stopped (SIGTERM) before it finished; no model was
    written.`".
    """
    (X, y), _ = splits
    started = tmp_path / "fit-started"
    base = sagemaker_tree(
        tmp_path / "ml",
        hyperparameters={
            "smserve_estimator": "tests.support.training.SlowFitClassifier",
            "seconds": "120",
            "started_file": str(started),
        },
        channels={"train": file_channel()},
    )
    write_csv(base / "input/data/train/iris.csv", X, y)
    proc, stderr = sigterm_train(base, started, deadline=30)

    assert proc.returncode == 143, stderr
    assert (base / "output/failure").read_text() == (
        "Training was stopped (SIGTERM) before it finished; no model was written."
    )
    assert list((base / "model").iterdir()) == []
    assert not (base / "output/success").exists()
    assert not (base / "output/data/metrics.json").exists()


@pytest.mark.parametrize(
    ("header", "first_line", "outcome"),
    [
        ("present", "9,9.5", {"rows": 4, "feature_names": ["9.5"]}),
        ("auto", "label,size", {"rows": 4, "feature_names": ["size"]}),
        ("absent", "label,size", "column 1 (0 is the first) holds 'size'"),
    ],
)
def test_header_present_and_absent(tmp_path, header, first_line, outcome):
    """docs/training.md, Reserved keys, ``smserve_header``: "`auto`"; "CSV header
    handling: `auto` (a first line with no number in it, above a line with numbers, is
    a header)"; "`present`" (even a line of numbers is the header); "`absent`" (the
    first line is a record, so a header line is text in a column of numbers). Channel
    ContentType, CSV: "with or without a header"."""
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={"smserve_header": header},
        channels={"train": file_channel("text/csv")},
    )
    data = base / "input/data/train/data.csv"
    data.parent.mkdir(parents=True)
    data.write_text(f"{first_line}\n0,1.0\n1,2.0\n0,1.5\n1,2.5\n")

    proc = run_train(base)

    if isinstance(outcome, str):
        assert proc.returncode == 1, proc.stderr
        assert outcome in (base / "output/failure").read_text()
        return
    assert proc.returncode == 0, proc.stderr
    metadata = json.loads((base / "model/metadata.json").read_text())
    assert metadata["rows"]["train"] == outcome["rows"]
    assert metadata["feature_names"] == outcome["feature_names"]


def test_fast_file_mode_reads_like_file_mode(tmp_path, splits):
    """docs/training.md, What it reads: "channels: `TrainingInputMode` (`File`, `Pipe`,
    `FastFile`)"; "File/FastFile data: every file below"; "recursively"; "in sorted
    order" (a FastFile channel is a directory, read as File mode reads it)."""
    (X, y), _ = splits
    base = sagemaker_tree(
        tmp_path,
        channels={"train": file_channel("text/csv", TrainingInputMode="FastFile")},
    )
    write_csv(base / "input/data/train/b/part.csv", X[60:], y[60:])
    write_csv(base / "input/data/train/a.csv", X[:60], y[:60])

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    metadata = json.loads((base / "model/metadata.json").read_text())
    assert metadata["rows"]["train"] == 120
    assert metadata["channels"]["train"]["sources"] == ["a.csv", "b/part.csv"]


def test_a_factory_function_is_an_estimator(tmp_path, splits):
    """docs/training.md, Reserved keys, ``smserve_estimator``: "a dotted path to an
    estimator class or to a function returning an estimator" (here a function of the
    test suite's), its parameters then set as hyperparameters. Without
    ``smserve_random_seed`` (Reserved keys: "unset") its ``random_state`` stays None."""
    (X, y), _ = splits
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={
            "smserve_estimator": "tests.support.training.small_forest",
            "n_estimators": "4",
        },
    )
    write_csv(base / "input/data/train/iris.csv", X, y)

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    model = served(base).predictor.model
    assert type(model).__name__ == "RandomForestClassifier"
    assert (model.n_estimators, model.max_depth) == (4, 2)
    assert model.random_state is None  # no smserve_random_seed: left unset


@pytest.mark.parametrize(
    ("content_type", "layout"),
    [
        ("application/csv", "csv"),
        ("text/plain", "csv"),
        ("application/parquet", "parquet"),
        ("application/vnd.apache.parquet", "parquet"),
        ("application/x-ndjson", "jsonl"),
        ("application/json", "jsonl"),
    ],
)
def test_channel_content_type_aliases_and_the_last_column_as_label(
    tmp_path, splits, content_type, layout
):
    """docs/training.md, Channel ContentType: "`text/csv` (also `application/csv`,
    `text/plain`)"; "`application/x-parquet` (also `application/parquet`,
    `application/vnd.apache.parquet`)"; "`application/jsonlines` (also
    `application/x-jsonlines`, `application/jsonl`, `application/x-ndjson`,
    `application/json`)" (one alias of each group and two of JSON Lines here; every
    alias is in ``modelapp/formats.py``'s table); and Reserved keys,
    ``smserve_target_column``: "the label column: an index (`0` first, `-1` last) or"
    (here -1: the label is the last column)."""
    (X, y), _ = splits
    table = np.column_stack([X, y])
    data = base = None
    if layout == "csv":
        data = "".join(",".join(map(repr, row)) + "\n" for row in table.tolist())
        data = data.encode()
    elif layout == "parquet":
        names = ["sl", "sw", "pl", "pw", "species"]
        data = parquet_bytes(pd.DataFrame(table, columns=names))
    else:
        data = "".join(json.dumps(row) + "\n" for row in table.tolist()).encode()
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={"smserve_random_seed": "0", "smserve_target_column": "-1"},
        channels={"train": file_channel(content_type)},
    )
    (base / "input/data/train").mkdir(parents=True)
    (base / "input/data/train/data").write_bytes(data)

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    expected = DecisionTreeClassifier(random_state=0).fit(X, y)
    predicted = served(base).predictor.predict(Batch(values=X))
    assert predicted.tolist() == expected.predict(X).tolist()
    metadata = json.loads((base / "model/metadata.json").read_text())
    assert metadata["rows"]["train"] == 120
    assert metadata["n_features"] == 4


def test_random_seed_seeds_numpy(tmp_path, splits):
    """docs/training.md, Reserved keys, ``smserve_random_seed``: "and seeds numpy": a
    forest whose ``random_state`` the job sets to ``null`` draws its trees' seeds from
    numpy's global generator, so two jobs with one seed give the same trees and another
    seed gives others."""
    (X, y), _ = splits

    def tree_seeds(name: str, seed: str) -> list[int]:
        base = sagemaker_tree(
            tmp_path / name,
            hyperparameters={
                "smserve_estimator": "random_forest",
                "n_estimators": "5",
                "random_state": "null",
                "smserve_random_seed": seed,
            },
        )
        write_csv(base / "input/data/train/iris.csv", X, y)
        proc = run_train(base)
        assert proc.returncode == 0, proc.stderr
        model = served(base).predictor.model
        assert model.random_state is None
        return [tree.random_state for tree in model.estimators_]

    first = tree_seeds("first", "7")
    assert tree_seeds("again", "7") == first
    assert tree_seeds("other", "8") != first


def test_random_seed_reaches_nested_random_states(tmp_path, splits):
    """docs/training.md, Reserved keys, ``smserve_random_seed``: "sets every
    `random_state` parameter (nested ones too) that is not set explicitly": a pipeline's
    forest gets the seed, its PCA keeps the ``random_state`` the job set; and without
    ``hyperparameters.json`` or ``resourceconfig.json`` (What it reads: "missing = no
    hyperparameters"; "missing = one host") the job trains with the defaults on one
    host (here with ``--hp`` only)."""
    (X, y), _ = splits
    base = sagemaker_tree(tmp_path)
    (base / "input/config/hyperparameters.json").unlink()
    (base / "input/config/resourceconfig.json").unlink()
    write_csv(base / "input/data/train/iris.csv", X, y)
    plain = tmp_path / "plain"
    sagemaker_tree(plain)
    (plain / "input/config/hyperparameters.json").unlink()
    (plain / "input/config/resourceconfig.json").unlink()
    write_csv(plain / "input/data/train/iris.csv", X, y)

    proc = run_train(
        base,
        "--hp",
        'smserve_estimator=["pca", "random_forest"]',
        "--hp",
        "smserve_random_seed=5",
        "--hp",
        "pca__random_state=1",
        "--hp",
        "randomforestclassifier__n_estimators=3",
    )
    default = run_train(plain)

    assert proc.returncode == 0, proc.stderr
    model = served(base).predictor.model
    assert model.named_steps["randomforestclassifier"].random_state == 5
    assert model.named_steps["pca"].random_state == 1
    assert default.returncode == 0, default.stderr
    assert type(served(plain).predictor.model).__name__ == "DecisionTreeClassifier"
    metadata = json.loads((plain / "model/metadata.json").read_text())
    assert metadata["hyperparameters"] == {}
