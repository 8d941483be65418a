"""Script mode: the real ``train`` runs a user's script the way SageMaker's scikit-learn
container does, on real /opt/ml trees, with the hyperparameters the SDK writes.

Sources come from a ``file://`` tarball, a directory, a plain path and ``s3://`` on a
local S3-compatible server; the scripts are our versions of the SDK docs' examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import pytest
from sklearn.tree import DecisionTreeClassifier

from modelapp.paths import SageMakerPaths
from modelapp.training import ClientError, run
from modelapp.training.script import (
    failure_message,
    last_exception_line,
    program_name,
)
from tests.support.script_mode import (
    BROKEN_PY,
    BUCKET,
    HELPER_PY,
    SLOW_PY,
    TRAIN_PY,
    TRAIN_SH,
    escaping_tarball,
    s3_client,
    s3_server,
    sdk_hyperparameters,
    source_dir,
    tarball,
)
from tests.support.servers import ServerDatabase
from tests.support.training import (
    file_channel,
    run_train,
    sagemaker_tree,
    sigterm_train,
    write_csv,
)

USER_HPS = {"max_leaf_nodes": 5, "min-samples-leaf": 2, "criterion": "entropy"}


@pytest.fixture(scope="module")
def iris_csv(iris):
    X, y = iris
    return X, y


def job(tmp_path: Path, iris_csv, submit: str | None, **kwargs) -> Path:
    """An /opt/ml tree for an SDK SKLearn job whose code is at ``submit``."""
    X, y = iris_csv
    hps = sdk_hyperparameters(
        kwargs.pop("program", "train.py"), submit, **kwargs.pop("hps", USER_HPS)
    )
    base = sagemaker_tree(
        tmp_path / "ml",
        hyperparameters=hps,
        channels={"train": file_channel("text/csv"), "test": file_channel()},
        **kwargs,
    )
    write_csv(base / "input/data/train/iris.csv", X, y)
    write_csv(base / "input/data/test/iris.csv", X[:10], y[:10])
    return base


def example_source(tmp_path: Path, **extra: str) -> Path:
    files = {"train.py": TRAIN_PY, "helper.py": HELPER_PY}
    files.update(extra)
    return source_dir(tmp_path / "src", files)


def seen(base: Path) -> dict:
    return json.loads((base / "output/data/seen.json").read_text())


@pytest.mark.database
def test_sdk_job_from_a_file_tarball_runs_the_script_like_the_toolkit(
    tmp_path, iris_csv
):
    """The SDK's hyperparameters with a ``file://`` sourcedir.tar.gz (local mode): the
    requirements are installed, the script gets the toolkit's arguments and SM_*
    variables, runs in the source dir, and its model is what the same tree fits here."""
    src = example_source(tmp_path, **{"requirements.txt": "scikit-learn\njoblib\n"})
    archive = tarball(src, tmp_path / "sourcedir.tar.gz")
    base = job(tmp_path, iris_csv, f"file://{archive}")
    db = ServerDatabase.create(tmp_path)
    try:
        done = run_train(base, env={"TRAINING_JOB_NAME": "iris-script", **db.env})
        rows = db.query(
            "SELECT status, estimator, hyperparameters, duration_seconds "
            "FROM modelapp_trainingrun"
        )
    finally:
        db.drop()

    assert done.returncode == 0, done.stderr
    assert "Requirement already satisfied: scikit-learn" in done.stdout
    assert "train-accuracy=" in done.stdout
    assert "to stderr, unbuffered" in done.stderr
    assert (base / "output/success").exists()
    assert not (base / "output/failure").exists()

    X, y = iris_csv
    expected = DecisionTreeClassifier(
        max_leaf_nodes=5, min_samples_leaf=2, criterion="entropy", random_state=0
    ).fit(X, y)
    model = joblib.load(base / "model/model.joblib")
    assert model.predict(X).tolist() == expected.predict(X).tolist()

    info = seen(base)
    code = base / "code"
    assert info["argv"] == [
        "--criterion",
        "entropy",
        "--max_leaf_nodes",
        "5",
        "--min-samples-leaf",
        "2",
    ]
    assert info["cwd"] == str(code)
    assert info["pythonpath"].split(os.pathsep)[0] == str(code)
    assert info["unbuffered"] == "1"
    assert info["helper"] == "imported from the source directory"

    status, estimator, hyperparameters, duration = rows[0]
    assert len(rows) == 1
    assert status == "succeeded"
    assert estimator == "script:train.py"
    if isinstance(
        hyperparameters, str
    ):  # SQLite gives the JSON text, PostgreSQL a dict
        hyperparameters = json.loads(hyperparameters)
    assert hyperparameters["sagemaker_program"] == '"train.py"'
    assert duration > 0


def test_the_script_sees_every_sm_variable_of_the_toolkit(tmp_path, iris_csv):
    """SM_* values are formatted as the toolkit's to_env_vars does: strings bare, the
    rest compact JSON with sorted keys; SM_HP_<NAME> keeps dashes. Every host runs the
    script: here the second of two (the built-in trainer would skip it)."""
    src = example_source(tmp_path)
    base = job(
        tmp_path,
        iris_csv,
        str(src),
        hosts=["algo-1", "algo-2"],
        current_host="algo-2",
    )
    done = run_train(base, env={"TRAINING_JOB_NAME": "iris-env"})
    assert done.returncode == 0, done.stderr
    env = seen(base)["env"]

    assert env["SM_MODEL_DIR"] == str(base / "model")
    assert env["SM_CHANNELS"] == '["test","train"]'
    assert env["SM_CHANNEL_TRAIN"] == str(base / "input/data/train")
    assert env["SM_CHANNEL_TEST"] == str(base / "input/data/test")
    assert json.loads(env["SM_HPS"]) == USER_HPS
    assert env["SM_HP_MAX_LEAF_NODES"] == "5"
    assert env["SM_HP_MIN-SAMPLES-LEAF"] == "2"
    assert env["SM_HP_CRITERION"] == "entropy"
    assert env["SM_CURRENT_HOST"] == "algo-2"
    assert env["SM_HOSTS"] == '["algo-1","algo-2"]'
    assert env["SM_NUM_CPUS"] == str(os.cpu_count())
    assert env["SM_NUM_GPUS"] == "0"
    assert env["SM_LOG_LEVEL"] == "20"
    assert env["SM_NETWORK_INTERFACE_NAME"] == "eth0"
    assert json.loads(env["SM_USER_ARGS"]) == seen(base)["argv"]
    assert env["SM_INPUT_DIR"] == str(base / "input")
    assert env["SM_INPUT_CONFIG_DIR"] == str(base / "input/config")
    assert env["SM_OUTPUT_DIR"] == str(base / "output")
    assert env["SM_OUTPUT_DATA_DIR"] == str(base / "output/data")
    assert env["SM_OUTPUT_INTERMEDIATE_DIR"] == str(base / "output/intermediate")
    assert json.loads(env["SM_RESOURCE_CONFIG"])["hosts"] == ["algo-1", "algo-2"]
    assert json.loads(env["SM_INPUT_DATA_CONFIG"])["train"]["ContentType"] == "text/csv"
    assert env["SM_MODULE_NAME"] == "train"
    assert env["SM_MODULE_DIR"] == str(src)
    assert env["SM_USER_ENTRY_POINT"] == "train.py"
    assert env["SM_FRAMEWORK_PARAMS"] == "{}"
    assert env["SM_FRAMEWORK_MODULE"] == ""
    assert env["SM_CURRENT_INSTANCE_TYPE"] == "ml.m5.large"
    assert env["SM_CURRENT_INSTANCE_GROUP"] == "homogeneousCluster"
    assert env["SM_IS_HETERO"] == "false"
    training = json.loads(env["SM_TRAINING_ENV"])
    assert training["hyperparameters"] == USER_HPS
    assert training["job_name"] == "iris-env"
    assert training["is_master"] is False
    assert training["master_hostname"] == "algo-1"
    assert (base / "model/model.joblib").exists()
    assert training["channel_input_dirs"]["train"] == env["SM_CHANNEL_TRAIN"]


def test_source_from_s3_on_a_local_server(tmp_path, iris_csv):
    """``s3://`` sourcedir.tar.gz downloaded by a real boto3 client from a local
    S3-compatible server, reached through AWS_ENDPOINT_URL."""
    src = example_source(tmp_path)
    archive = tarball(src, tmp_path / "sourcedir.tar.gz")
    key = "sklearn-2026/source/sourcedir.tar.gz"
    with s3_server() as aws:
        client = s3_client(aws)
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(archive), BUCKET, key)
        base = job(tmp_path, iris_csv, f"s3://{BUCKET}/{key}")
        done = run_train(base, env=aws)

    assert done.returncode == 0, done.stderr
    assert (base / "model/model.joblib").exists()
    assert seen(base)["env"]["SM_MODULE_DIR"] == f"s3://{BUCKET}/{key}"


def test_a_broken_script_fails_the_job_with_its_exception_first(tmp_path, iris_csv):
    """The script's exit code is the job's; output/failure starts with its last
    exception line, then the end of its stderr; its stderr reaches the log unchanged."""
    src = source_dir(tmp_path / "src", {"train.py": BROKEN_PY})
    base = job(tmp_path, iris_csv, str(src))
    done = run_train(base)

    assert done.returncode == 1
    assert "starting" in done.stdout
    assert "a warning first\nTraceback (most recent call last):" in done.stderr
    reason = (base / "output/failure").read_text()
    first, second, *rest = reason.splitlines()
    assert first == "ValueError: no training data in /nowhere"
    assert second == "train.py exited with code 1; the end of its stderr:"
    assert "Traceback (most recent call last):" in rest
    assert 'load("/nowhere")' in reason
    assert not (base / "output/success").exists()


def test_a_shell_script_runs_with_the_shell_and_its_exit_code(tmp_path, iris_csv):
    """A ``.sh`` entry point (here in a subdirectory of the source) runs with /bin/sh
    from the source directory, arguments quoted as the toolkit passes them; its exit code
    (3) is the job's."""
    src = source_dir(tmp_path / "src", {"scripts/train.sh": TRAIN_SH})
    base = job(
        tmp_path,
        iris_csv,
        f"file://{src}",
        program="scripts/train.sh",
        hps={"a": "two words", "flag": True},
    )
    done = run_train(base)

    assert done.returncode == 3, done.stderr
    assert "args: -a two words --flag True" in done.stdout
    args = (base / "model/args.txt").read_text().splitlines()
    assert args == ["-a", "two words", "--flag", "True"]
    assert (base / "output/failure").read_text().startswith("shell says no\n")


def test_sigterm_reaches_the_script_and_ends_the_job(tmp_path, iris_csv):
    """StopTrainingJob's SIGTERM is passed on: the script's handler saves its checkpoint,
    the job ends as stopped (143) with a failure file saying so."""
    src = source_dir(tmp_path / "src", {"train.py": SLOW_PY})
    base = job(tmp_path, iris_csv, str(src))
    proc, stderr = sigterm_train(base, base / "model/started")

    assert proc.returncode == 143, stderr
    assert (base / "model/checkpoint.txt").read_text() == "saved on SIGTERM"
    reason = (base / "output/failure").read_text()
    assert reason.startswith(
        "Training was stopped (SIGTERM): train.py was sent SIGTERM"
    )


def test_a_failing_requirement_is_named(tmp_path, iris_csv):
    """requirements.txt is installed before the script; a requirement pip cannot install
    fails the job before the script runs, naming it."""
    src = example_source(
        tmp_path,
        **{"requirements.txt": "--no-index\njoblib\nsmserve-no-such-package==1.0\n"},
    )
    base = job(tmp_path, iris_csv, str(src))
    done = run_train(base)

    assert done.returncode == 1, done.stderr
    reason = (base / "output/failure").read_text()
    assert reason.startswith(
        "Could not install requirement 'smserve-no-such-package==1.0' from "
    )
    assert "No matching distribution found" in reason
    assert not (base / "model/model.joblib").exists()


PACKAGE_SETUP_PY = """\
from setuptools import setup

setup(name="smserve-setup-example", version="1.2.3", py_modules=["pkgtool"])
"""

PACKAGE_TRAIN_PY = """\
import importlib.metadata
import json
import os
import subprocess
import sys
import sys

import pkgtool

with open(os.path.join(os.environ["SM_MODEL_DIR"], "how.json"), "w") as fh:
    json.dump(
        {
            "spec": __spec__.name if __spec__ else None,
            "version": importlib.metadata.version("smserve-setup-example"),
            "tool": pkgtool.VALUE,
            "args": sys.argv[1:],
        },
        fh,
    )
"""


@pytest.fixture
def uninstalls_example_package():
    """The package test installs into this Python, as the toolkit would in the image;
    removed again afterwards."""
    yield
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "--yes", "smserve-setup-example"],
        capture_output=True,
        check=False,
    )


def test_a_source_with_setup_py_is_installed_and_run_as_a_module(
    tmp_path, iris_csv, uninstalls_example_package
):
    """A ``setup.py`` makes the source directory a package, as in the training toolkit:
    ``pip install .`` first, then the entry point runs as ``python -m train``."""
    src = source_dir(
        tmp_path / "src",
        {
            "setup.py": PACKAGE_SETUP_PY,
            "pkgtool.py": 'VALUE = "from the package"\n',
            "train.py": PACKAGE_TRAIN_PY,
        },
    )
    base = job(tmp_path, iris_csv, str(src), hps={"depth": 3})
    done = run_train(base)

    assert done.returncode == 0, done.stderr
    assert json.loads((base / "model/how.json").read_text()) == {
        "spec": "train",
        "version": "1.2.3",
        "tool": "from the package",
        "args": ["--depth", "3"],
    }


def test_a_setup_py_that_fails_to_install_fails_the_job(tmp_path, iris_csv):
    """A package pip cannot install fails the job before the script runs, saying so."""
    src = source_dir(
        tmp_path / "src",
        {
            "setup.py": "raise SystemExit('this package cannot be built')\n",
            "train.py": PACKAGE_TRAIN_PY,
        },
    )
    base = job(tmp_path, iris_csv, str(src))
    done = run_train(base)

    assert done.returncode == 1, done.stderr
    reason = (base / "output/failure").read_text()
    assert reason.startswith(
        f"Could not install {base / 'code'} as a package (its setup.py; "
    )
    assert "this package cannot be built" in done.stdout
    assert not (base / "model/how.json").exists()


def test_an_archive_escaping_its_directory_is_refused(tmp_path, iris_csv):
    """A sourcedir.tar.gz with a ``../`` member fails the run before anything runs and
    writes nothing outside the code directory."""
    archive = escaping_tarball(tmp_path / "bad/sourcedir.tar.gz", "dotdot")
    base = job(tmp_path, iris_csv, f"file://{archive}")
    result = run.train(SageMakerPaths(base))

    assert result.exit_code == 1
    assert result.failure_reason.startswith(
        f"Refusing to extract file://{archive}: '../escaped.py'"
    )
    assert not (base / "escaped.py").exists()
    assert not (base / "code").exists()


def test_a_script_whose_interpreter_is_missing_is_the_users_to_fix(tmp_path, iris_csv):
    """A ``#!`` line naming an interpreter the image lacks: a ClientError, not a bug."""
    src = source_dir(tmp_path / "src", {"train.sh": "#!/no/such/shell\necho hi\n"})
    base = job(tmp_path, iris_csv, str(src), program="train.sh")
    result = run.train(SageMakerPaths(base))

    assert result.exit_code == 1
    assert result.failure_reason.startswith(
        f"Cannot start ./train.sh in {base / 'code'}: No such file or directory."
    )
    assert result.channels["train"] == {"mode": "File", "content_type": "text/csv"}


def test_a_program_missing_from_the_source_says_what_is_there(tmp_path, iris_csv):
    """``sagemaker_program`` naming a file the source does not have: a ClientError
    listing what the source holds."""
    src = source_dir(tmp_path / "src", {"fit.py": "", "utils.py": ""})
    base = job(tmp_path, iris_csv, str(src))
    result = run.train(SageMakerPaths(base))

    assert result.exit_code == 1
    assert result.failure_reason == (
        f"sagemaker_program names 'train.py', which is not in the source directory "
        f"{src} (it holds: fit.py, utils.py)."
    )


# --- explaining a failure, unit by unit -----------------------------------------------------
def test_the_last_exception_line_wins_over_chained_ones():
    """With chained tracebacks the last exception is the one that ended the script."""
    stderr = (
        "Traceback (most recent call last):\n"
        '  File "train.py", line 3, in <module>\n'
        "    open('x')\n"
        "FileNotFoundError: [Errno 2] No such file or directory: 'x'\n"
        "\n"
        "During handling of the above exception, another exception occurred:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "train.py", line 5, in <module>\n'
        "    raise RuntimeError('no data')\n"
        "RuntimeError: no data\n"
    )
    assert last_exception_line(stderr.splitlines()) == "RuntimeError: no data"
    message = failure_message("train.py", 1, stderr)
    assert message.splitlines()[0] == "RuntimeError: no data"


def test_a_failure_without_traceback_leads_with_the_last_line_it_printed():
    """argparse and shell errors have no traceback: their last line says it."""
    stderr = "usage: train.py [-h]\ntrain.py: error: unrecognized arguments: --x 1\n"
    assert failure_message("train.py", 2, stderr).splitlines()[:2] == [
        "train.py: error: unrecognized arguments: --x 1",
        "train.py exited with code 2; the end of its stderr:",
    ]
    assert failure_message("train.py", -9, "") == (
        "train.py was killed by SIGKILL (out of memory?); it printed nothing to stderr."
    )


@pytest.mark.parametrize("program", ["", "/etc/passwd", "../train.py", 5])
def test_a_program_outside_the_source_is_refused(program):
    with pytest.raises(ClientError, match="sagemaker_program"):
        program_name(program)


OWN_FAILURE_PY = """\
import os
import sys

failure = os.path.join(os.path.dirname(os.environ["SM_OUTPUT_DATA_DIR"]), "failure")
with open(failure, "w") as fh:
    fh.write("my reason\\n")
sys.exit(3)
"""


def test_a_failure_file_the_script_wrote_is_kept_with_its_exit_code(tmp_path, iris_csv):
    """The toolkit's rule: a script that writes ``output/failure`` itself and exits
    non-zero keeps its own reason, and its exit code is the job's."""
    src = source_dir(tmp_path / "src", {"train.py": OWN_FAILURE_PY})
    base = job(tmp_path, iris_csv, str(src))
    done = run_train(base)

    assert done.returncode == 3, done.stderr
    assert (base / "output/failure").read_text().startswith("my reason")


ENVIRON_PY = """\
import json
import os

with open(os.path.join(os.environ["SM_MODEL_DIR"], "environ.json"), "w") as fh:
    json.dump(sorted(os.environ), fh)
"""


def test_the_script_runs_without_smserves_secrets(tmp_path, iris_csv):
    """SECRET_KEY, DJANGO_SECRET_KEY, DATABASE_URL and DJANGO_SUPERUSER_* stay with
    smserve: the user's script (and pip before it) never sees them."""
    src = source_dir(tmp_path / "src", {"train.py": ENVIRON_PY})
    base = job(tmp_path, iris_csv, str(src))
    secrets = {
        "SECRET_KEY": "s3cr3t",
        "DJANGO_SECRET_KEY": "s3cr3t",
        "DJANGO_SUPERUSER_PASSWORD": "pw",
    }
    done = run_train(base, env=secrets)

    assert done.returncode == 0, done.stderr
    names = set(json.loads((base / "model/environ.json").read_text()))
    assert "SM_MODEL_DIR" in names
    assert names & {*secrets, "DATABASE_URL"} == set()
