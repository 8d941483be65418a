"""Script mode test material: the SDK's hyperparameter layout, our own versions of the SDK
documentation's example scripts, source tarballs, and a local S3-compatible server.

The scripts are written the way the "Using scikit-learn with the SageMaker Python SDK"
page shows them: argparse with defaults from ``SM_MODEL_DIR`` / ``SM_CHANNEL_TRAIN``, the
model saved with joblib, ``model_fn`` for serving. They are ours, not copies.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUCKET = "smserve-script-mode"
REGION = "us-east-1"

TRAIN_PY = '''\
"""Iris with a decision tree: the SDK docs' shape of a training script."""
import argparse
import glob
import json
import os
import sys

import joblib
import numpy as np
from sklearn.tree import DecisionTreeClassifier


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    # hyperparameters arrive as command-line arguments
    parser.add_argument("--max_leaf_nodes", type=int, default=None)
    parser.add_argument("--min-samples-leaf", type=int, default=1)
    parser.add_argument("--criterion", type=str, default="gini")
    # SageMaker's directories, from the environment
    parser.add_argument("--output-data-dir", type=str, default=os.environ["SM_OUTPUT_DATA_DIR"])
    parser.add_argument("--model-dir", type=str, default=os.environ["SM_MODEL_DIR"])
    parser.add_argument("--train", type=str, default=os.environ["SM_CHANNEL_TRAIN"])
    args = parser.parse_args()

    files = sorted(glob.glob(os.path.join(args.train, "*.csv")))
    data = np.concatenate([np.loadtxt(f, delimiter=",", ndmin=2) for f in files])
    X, y = data[:, 1:], data[:, 0]
    model = DecisionTreeClassifier(
        max_leaf_nodes=args.max_leaf_nodes,
        min_samples_leaf=args.min_samples_leaf,
        criterion=args.criterion,
        random_state=0,
    ).fit(X, y)
    print(f"train-accuracy={model.score(X, y):.4f};")
    print("to stderr, unbuffered", file=sys.stderr)
    joblib.dump(model, os.path.join(args.model_dir, "model.joblib"))

    # What the script saw, for the tests to read.
    seen = {
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("SM_")},
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "unbuffered": os.environ.get("PYTHONUNBUFFERED", ""),
        "executable": sys.executable,
        "helper": __import__("helper").VALUE,
    }
    with open(os.path.join(args.output_data_dir, "seen.json"), "w") as fh:
        json.dump(seen, fh)
'''

HELPER_PY = 'VALUE = "imported from the source directory"\n'

BROKEN_PY = """\
import sys

def load(path):
    raise ValueError(f"no training data in {path}")

print("starting", flush=True)
print("a warning first", file=sys.stderr)
load("/nowhere")
"""

SLOW_PY = '''\
"""Saves a checkpoint when SageMaker stops the job (SIGTERM), as scripts are told to."""
import os
import signal
import sys
import time

model_dir = os.environ["SM_MODEL_DIR"]


def on_sigterm(signum, frame):
    with open(os.path.join(model_dir, "checkpoint.txt"), "w") as fh:
        fh.write("saved on SIGTERM")
    sys.exit(143)


signal.signal(signal.SIGTERM, on_sigterm)
open(os.path.join(model_dir, "started"), "w").close()
while True:
    time.sleep(0.1)
'''

TRAIN_SH = """\
echo "args: $*"
echo "model dir: $SM_MODEL_DIR"
printf '%s\\n' "$@" > "$SM_MODEL_DIR/args.txt"
echo "shell says no" >&2
exit 3
"""


def sdk_hyperparameters(
    program: str = "train.py",
    submit_directory: str | None = None,
    job_name: str = "sklearn-2026-11-28-10-00-00-000",
    **hyperparameters: Any,
) -> dict[str, str]:
    """hyperparameters.json as the SDK's SKLearn estimator writes it: the user's
    hyperparameters and the ``sagemaker_*`` keys, every value ``json.dumps``-ed."""
    values: dict[str, Any] = dict(hyperparameters)
    values["sagemaker_program"] = program
    if submit_directory is not None:
        values["sagemaker_submit_directory"] = submit_directory
    values["sagemaker_container_log_level"] = 20
    values["sagemaker_job_name"] = job_name
    values["sagemaker_region"] = REGION
    return {str(k): json.dumps(v) for k, v in values.items()}


def source_dir(directory: Path, files: dict[str, str]) -> Path:
    """A source directory holding ``files`` (name -> text)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def tarball(directory: Path, target: Path) -> Path:
    """``sourcedir.tar.gz`` as the SDK packs it: the directory's files at the top."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return target


def escaping_tarball(target: Path, kind: str) -> Path:
    """A tarball with one member that leaves the target: a ``../`` path, an absolute
    path (beside ``target``), or a symlink pointing outside."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        good = tarfile.TarInfo("train.py")
        data = b"print('fine')\n"
        good.size = len(data)
        tar.addfile(good, io.BytesIO(data))
        if kind == "symlink":
            link = tarfile.TarInfo("etc")
            link.type = tarfile.SYMTYPE
            link.linkname = "../../../../../etc"
            tar.addfile(link)
        else:
            outside = target.parent / "escaped-absolute.py"
            name = "../escaped.py" if kind == "dotdot" else str(outside)
            bad = tarfile.TarInfo(name)
            bad.size = len(data)
            tar.addfile(bad, io.BytesIO(data))
    return target


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """A local S3-compatible server (moto) on a free loopback port, always stopped; yields
    the environment a real boto3 client needs to reach it (AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }
    finally:
        server.stop()


def s3_client(env: dict[str, str]):
    """A real boto3 S3 client for the server ``env`` describes."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
