"""The container image, built with podman and run the way SageMaker runs it.

The image is built once per session by ``scripts/build-image.sh`` (the documented way to
build it without a Docker engine); a build that fails fails these tests, it never skips
them. Each container gets a unique name and is always removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from base64 import urlsafe_b64encode
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris

from tests.support import ROOT
from tests.support import cluster as cluster_support
from tests.support.inference_scripts import FOUR_HOOKS_PY, SDK_HOOKS_PY
from tests.support.script_mode import (
    HELPER_PY,
    TRAIN_PY,
    sdk_hyperparameters,
    source_dir,
    tarball,
)
from tests.support.sdk_client import sdk_predict
from tests.support.servers import free_port
from tests.support.training import file_channel, sagemaker_tree

pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

BUILD = ROOT / "scripts" / "build-image.sh"
# A tag of this run's own, untagged at the end: two runs on one podman store (the build
# script locks it while it builds) never test each other's image. The layers stay, as the
# next build's cache.
TAG = f"smserve:test-{uuid.uuid4().hex[:12]}"
IMAGE = f"localhost/{TAG}"
# SageMaker's grace period between SIGTERM and SIGKILL.
GRACE_SECONDS = 30


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """podman on the build script's own store and containers.conf."""
    return subprocess.run(
        [str(BUILD), "podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def http(
    port: int, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request to the container on loopback."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def iris_job(base: Path, hyperparameters: dict[str, str]) -> Path:
    """``base`` as SageMaker lays out /opt/ml before ``train``: config plus a CSV train
    channel (label first, no header)."""
    sagemaker_tree(
        base,
        hyperparameters=hyperparameters,
        channels={"train": file_channel("text/csv")},
    )
    X, y = load_iris(return_X_y=True)
    train_dir = base / "input" / "data" / "train"
    train_dir.mkdir(parents=True)
    np.savetxt(train_dir / "iris.csv", np.column_stack([y, X]), delimiter=",", fmt="%g")
    return base


class Container:
    """A uniquely named container: run it, read its logs, always remove it."""

    def __init__(self) -> None:
        self.name = f"smserve-test-{uuid.uuid4().hex[:12]}"

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return podman("run", "--name", self.name, *args, timeout=timeout)

    def serve(
        self, image: str, port: int, *options: str, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``IMAGE serve``, detached, on the host's network with ``port`` on loopback;
        ``options`` are podman's (volumes), ``env`` the container's environment."""
        env = {
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "SMSERVE_BIND_HOST": "127.0.0.1",
            **env,
        }
        pairs = [
            arg for name, value in env.items() for arg in ("--env", f"{name}={value}")
        ]
        return self.run("--detach", "--network=host", *pairs, *options, image, "serve")

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr

    def state(self) -> dict:
        result = podman("inspect", "--format", "{{json .State}}", self.name)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name)


def wait_for_ping(container: Container, port: int, deadline: float) -> None:
    """Poll /ping until it answers 200, while the container runs, until ``deadline``
    (``time.monotonic()``)."""
    status = None
    while time.monotonic() < deadline:
        try:
            status, _, _ = http(port, "/ping")
        except OSError:
            status = None
        if status == HTTPStatus.OK:
            return
        assert container.state()["Running"], container.logs()
        time.sleep(0.1)
    assert status == HTTPStatus.OK, container.logs()


@pytest.fixture
def container() -> Iterator[Container]:
    created = Container()
    try:
        yield created
    finally:
        created.remove()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image, built by scripts/build-image.sh; a failed build is a test failure.
    The build downloads the image's wheels on the host (the suite's pip has no index)."""
    assert shutil.which("podman"), "podman is not installed (scripts/bootstrap.sh test)"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PIP_NO_INDEX", "PIP_FIND_LINKS"}
    }
    result = subprocess.run(
        [str(BUILD), TAG],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
        env=env,
    )
    assert result.returncode == 0, (
        f"the image did not build:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    yield IMAGE
    untagged = podman("untag", IMAGE, IMAGE)
    assert untagged.returncode == 0, untagged.stderr


@pytest.fixture(scope="module")
def trained(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An /opt/ml tree on the host after ``IMAGE train`` ran on it successfully."""
    base = iris_job(tmp_path_factory.mktemp("opt_ml"), {"max_depth": "3"})
    created = Container()
    try:
        result = created.run(
            "--rm", "--network=host", "-v", f"{base}:/opt/ml", image, "train"
        )
    finally:
        created.remove()
    assert result.returncode == 0, result.stdout + result.stderr
    base.joinpath("train.log").write_text(result.stdout + result.stderr)
    return base


def test_train_writes_the_model_and_metadata_to_the_mounted_tree(trained: Path):
    """`docker run IMAGE train` on a mounted /opt/ml leaves model.joblib and metadata.json
    on the host, and prints its metrics in the form MetricDefinitions match."""
    model_dir = trained / "model"
    assert (model_dir / "model.joblib").stat().st_size > 0
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert "DecisionTreeClassifier" in json.dumps(metadata)
    assert not (trained / "output" / "failure").exists()
    assert "#metric train:accuracy=" in (trained / "train.log").read_text()


def test_train_with_a_bad_hyperparameter_fails_with_the_failure_file(
    image: str, container: Container, tmp_path: Path
):
    """A hyperparameter scikit-learn rejects exits 1 (the container's own status) with
    output/failure naming it, written into the mounted tree.

    README Failure semantics: exit 1 "bad ... hyperparameter", in the image."""
    base = iris_job(tmp_path / "opt_ml", {"max_depth": "banana"})
    result = container.run("--network=host", "-v", f"{base}:/opt/ml", image, "train")
    assert result.returncode == 1, result.stdout + result.stderr
    failure = base / "output" / "failure"
    assert failure.exists(), result.stdout + result.stderr
    assert "max_depth" in failure.read_text()
    assert not (base / "model" / "model.joblib").exists()


@pytest.mark.server  # the real serve (nginx + gunicorn), in the container
def test_serve_answers_ping_and_invocations_then_stops_cleanly_on_sigterm(
    image: str, trained: Path, container: Container
):
    """`docker run IMAGE serve` with the trained model mounted read-only: /ping turns 200,
    CSV and JSON invocations answer from the host, and SIGTERM (`podman stop`) ends it
    with exit code 0 well inside SageMaker's 30 s grace period.
    docs/settings.md, Settings: "`SAGEMAKER_MODEL_SERVER_WORKERS`".
    """
    port = free_port()
    started = time.monotonic()
    result = container.serve(
        image,
        port,
        "-v",
        f"{trained / 'model'}:/opt/ml/model:ro",
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
    )
    assert result.returncode == 0, result.stderr

    wait_for_ping(container, port, deadline=started + 60)
    ready_seconds = time.monotonic() - started

    status, content_type, body = http(
        port,
        "/invocations",
        b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n",
        {"Content-Type": "text/csv", "Accept": "text/csv"},
    )
    assert status == HTTPStatus.OK, body
    assert content_type == "text/csv"
    assert body.decode().split() == ["0", "2"]

    status, content_type, body = http(
        port,
        "/invocations",
        json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode(),
        {"Content-Type": "application/json", "Accept": "application/json"},
    )
    assert status == HTTPStatus.OK, body
    assert content_type == "application/json"
    assert json.loads(body) == {"predictions": [0]}

    stop_started = time.monotonic()
    stopped = podman("stop", "--time", str(GRACE_SECONDS), container.name, timeout=90)
    stop_seconds = time.monotonic() - stop_started
    assert stopped.returncode == 0, stopped.stderr
    state = container.state()
    # 0, not 137: serve stopped by itself inside the grace period, or podman would have
    # killed it. That is the behaviour; the seconds are only printed.
    assert state["ExitCode"] == 0, container.logs()
    print(
        f"serve: /ping 200 after {ready_seconds:.2f} s, stopped in {stop_seconds:.2f} s"
    )


def test_serve_in_multi_model_mode(image: str, trained: Path, container: Container):
    """`docker run IMAGE serve` as a multi-model endpoint: no /opt/ml/model, /ping 200
    at once, the model loaded from /opt/ml/models/<name>/model through POST /models,
    invoked and unloaded."""
    port = free_port()
    result = container.serve(
        image,
        port,
        "-v",
        f"{trained / 'model'}:/opt/ml/models/a1b2/model:ro",
        SAGEMAKER_MULTI_MODEL="true",
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
    )
    assert result.returncode == 0, result.stderr
    wait_for_ping(container, port, deadline=time.monotonic() + 60)
    assert json.loads(http(port, "/models")[2]) == {"models": []}
    load = json.dumps({"model_name": "a1b2", "url": "/opt/ml/models/a1b2/model"})
    status, _, body = http(
        port, "/models", load.encode(), {"Content-Type": "application/json"}
    )
    assert status == HTTPStatus.OK, body
    status, content_type, body = http(
        port,
        "/models/a1b2/invoke",
        b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n",
        {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "iris.tar.gz"},
    )
    assert (status, content_type, body.decode().split()) == (
        200,
        "text/csv",
        ["0", "2"],
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/models/a1b2", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == HTTPStatus.OK
    assert http(port, "/models/a1b2/invoke", b"1,2,3,4\n")[0] == HTTPStatus.NOT_FOUND
    stopped = podman("stop", "--time", str(GRACE_SECONDS), container.name, timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    assert container.state()["ExitCode"] == 0, container.logs()


def test_serve_runs_an_inference_script_from_model_code(
    image: str, trained: Path, container: Container, tmp_path: Path
):
    """Script mode in the image: the trained model with the SDK's repacked layout
    (``code/inference.py`` beside it, mounted read-only) and ``SAGEMAKER_PROGRAM``: the
    script's hooks answer, including a 4xx raised with ``smserve.errors.HTTPError``."""
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    (model / "code").mkdir()
    (model / "code" / "inference.py").write_text(FOUR_HOOKS_PY)
    port = free_port()
    result = container.serve(
        image,
        port,
        "-v",
        f"{model}:/opt/ml/model:ro",
        SAGEMAKER_PROGRAM="inference.py",
    )
    assert result.returncode == 0, result.stderr
    wait_for_ping(container, port, deadline=time.monotonic() + 60)

    status, content_type, body = http(
        port,
        "/invocations",
        json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode(),
        {"Content-Type": "application/vnd.iris+json", "Accept": "application/json"},
    )
    assert status == HTTPStatus.OK, body
    assert content_type == "application/vnd.iris+json"
    assert json.loads(body)["labels"] == [0]

    status, content_type, body = http(
        port, "/invocations", b"{}", {"Content-Type": "application/json"}
    )
    assert status == HTTPStatus.UNPROCESSABLE_ENTITY, body
    assert content_type == "application/json"
    assert json.loads(body)["code"] == "no_instances"


# The SDK's local mode hands the container a file:// source; here it lies in the mounted tree.
SOURCEDIR = "file:///opt/ml/sourcedir/sourcedir.tar.gz"


@pytest.fixture(scope="module")
def script_trained(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An /opt/ml tree after ``IMAGE train`` ran a script-mode job: the hyperparameters
    as the SDK's ``SKLearn`` estimator writes them (``sagemaker_program``,
    ``sagemaker_submit_directory``, every value JSON-encoded), the source directory
    (``train.py``, a module it imports, the ``inference.py`` serving will use and a
    ``requirements.txt`` the image already satisfies) as ``sourcedir.tar.gz``."""
    base = iris_job(
        tmp_path_factory.mktemp("opt_ml_script"),
        sdk_hyperparameters(
            program="train.py",
            submit_directory=SOURCEDIR,
            max_leaf_nodes=5,
            criterion="entropy",
            **{"min-samples-leaf": 2},
        ),
    )
    src = source_dir(
        tmp_path_factory.mktemp("src"),
        {
            "train.py": TRAIN_PY,
            "helper.py": HELPER_PY,
            "inference.py": SDK_HOOKS_PY,
            "requirements.txt": "scikit-learn\n",
        },
    )
    tarball(src, base / "sourcedir" / "sourcedir.tar.gz")
    created = Container()
    try:
        result = created.run(
            "--rm", "--network=host", "-v", f"{base}:/opt/ml", image, "train"
        )
    finally:
        created.remove()
    base.joinpath("train.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    return base


def test_train_runs_a_script_mode_job(script_trained: Path):
    """The user's ``train.py`` ran in the image as the training toolkit runs it: the
    hyperparameters as ``--name value`` arguments, the toolkit's directories, the source
    directory as working directory and import path; its model is in /opt/ml/model."""
    log = (script_trained / "train.log").read_text()
    assert "train-accuracy=" in log
    assert "to stderr, unbuffered" in log
    assert not (script_trained / "output" / "failure").exists()
    seen = json.loads((script_trained / "output" / "data" / "seen.json").read_text())
    assert seen["argv"] == [
        "--criterion",
        "entropy",
        "--max_leaf_nodes",
        "5",
        "--min-samples-leaf",
        "2",
    ]
    assert seen["cwd"] == "/opt/ml/code"
    assert seen["env"]["SM_MODEL_DIR"] == "/opt/ml/model"
    assert seen["env"]["SM_CHANNEL_TRAIN"] == "/opt/ml/input/data/train"
    assert seen["env"]["SM_MODULE_DIR"] == SOURCEDIR
    assert seen["helper"] == "imported from the source directory"
    model = joblib.load(script_trained / "model" / "model.joblib")
    assert type(model).__name__ == "DecisionTreeClassifier"
    params = model.get_params()
    assert (params["max_leaf_nodes"], params["min_samples_leaf"]) == (5, 2)
    assert params["criterion"] == "entropy"
    # The script's own model: smserve writes no metadata.json of its own.
    assert not (script_trained / "model" / "metadata.json").exists()


@pytest.mark.server  # the real serve (nginx + gunicorn), in the container
def test_serve_the_script_trained_model_with_its_inference_py(
    script_trained: Path, container: Container, image: str, tmp_path: Path
):
    """``SKLearnModel(entry_point="inference.py", source_dir=...)``: the model the script
    trained, served by the image with the hooks from the same ``sourcedir.tar.gz``
    (``SAGEMAKER_SUBMIT_DIRECTORY``); the SDK's own ``SKLearnPredictor`` (NPY) and a
    JSON ``Predictor`` get the trained model's probabilities."""
    port = free_port()
    result = container.serve(
        image,
        port,
        "-v",
        f"{script_trained / 'model'}:/opt/ml/model:ro",
        "-v",
        f"{script_trained / 'sourcedir'}:/opt/ml/sourcedir:ro",
        SAGEMAKER_PROGRAM="inference.py",
        SAGEMAKER_SUBMIT_DIRECTORY=SOURCEDIR,
    )
    assert result.returncode == 0, result.stderr
    wait_for_ping(container, port, deadline=time.monotonic() + 60)

    X = load_iris().data[::30]
    from_npy, from_json = sdk_predict(
        port,
        [
            {"predictor": "SKLearnPredictor", "data": X},
            {
                "predictor": "Predictor",
                "serializer": "JSONSerializer",
                "deserializer": "JSONDeserializer",
                "data": X,
            },
        ],
        tmp_path / "sdk",
    )
    expected = joblib.load(script_trained / "model" / "model.joblib").predict_proba(X)
    assert isinstance(from_npy, np.ndarray)
    np.testing.assert_array_equal(from_npy, expected)
    assert from_json == expected.tolist()


def test_image_metadata_is_what_sagemaker_expects(image: str):
    """The image accepts SageMaker's bind-to-port and multi-model endpoints, exposes 8080,
    has no ENTRYPOINT (so
    `train` and `serve` are commands on PATH) and runs as root.
    docs/image-and-sagemaker.md, Image:
    "`com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true` (needed for
    inference pipelines: `serve` listens on `SAGEMAKER_BIND_TO_PORT`)"; "`EXPOSE 8080`
    (the default of `SAGEMAKER_BIND_TO_PORT`)"; "as SageMaker expects".
    """
    result = podman("image", "inspect", image)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)[0]["Config"]
    labels = config["Labels"]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert "8080/tcp" in config["ExposedPorts"]
    assert not config.get("Entrypoint")
    assert config.get("User", "") in ("", "root", "0")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert not env["SMSERVE_STATE_DIR"].startswith("/opt/ml")


def test_image_holds_no_secret_key_test_tools_or_compilers(
    image: str, container: Container
):
    """Nothing secret is baked in (the SECRET_KEY is made per container at start), and
    neither test tools, a pip command nor a compiler are left in the image (pip stays as
    ``python -m pip`` for script mode's requirements.txt); the code is on PATH outside
    /opt/ml.
    docs/image-and-sagemaker.md, Image: "no pip"; "compiler or test tool in the image";
    "`SMSERVE_STATE_DIR=/var/lib/smserve`: the SQLite database and the `SECRET_KEY`
    generated at first start of each container. Nothing secret is in the image".
    """
    script = (
        'ls -A "$SMSERVE_STATE_DIR";'
        "find / -xdev -name secret_key -print;"
        "for tool in gcc cc c++ make pip pytest; do command -v $tool; done;"
        "python -c 'import pytest' 2>/dev/null && echo pytest-importable;"
        'readlink -f "$(command -v train)" "$(command -v serve)"'
    )
    result = container.run("--network=host", image, "sh", "-c", script)
    assert result.stdout.split() == [
        "/opt/program/train",
        "/opt/program/docker/serve",
    ], result.stdout + result.stderr


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (extras dropped), by normalized
    name."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[name.split("[", 1)[0].lower().replace("_", "-")] = version
    return found


def test_image_contents_are_what_the_docs_say(image: str, container: Container):
    """Inside the image as built: Debian bookworm's slim base with its own python3 and
    nginx-light, the pinned packages in /opt/venv first on PATH, the code in
    /opt/program with its static files already collected, and the key and database taken
    from the environment when they are given.
    docs/image-and-sagemaker.md, Image: "`debian:bookworm-slim` (`ARG BASE_IMAGE`)";
    "Debian's `python3` (3.11) and `nginx-light`"; "exactly `requirements.txt`"; "in
    `/opt/venv` (first on `PATH`)"; "`/opt/program` (SageMaker mounts over `/opt/ml`)";
    "static files collected at build time"; "set `SECRET_KEY` or `DATABASE_URL` through
    the environment to share them".
    """
    settings = (
        "import django, modelapp, sys;"
        "django.setup();"
        "from django.conf import settings as s;"
        "print('prefix', sys.prefix, sys.base_prefix, '%d.%d' % sys.version_info[:2]);"
        "print('code', modelapp.__file__);"
        "print('key', s.SECRET_KEY);"
        "print('db', s.DATABASES['default']['NAME'])"
    )
    script = (
        ". /etc/os-release; echo os $ID $VERSION_CODENAME;"
        "echo slim $(grep -c path-exclude /etc/dpkg/dpkg.cfg.d/docker);"
        "echo debs $(dpkg-query -W -f='${Package}=${db:Status-Status} ' python3 nginx-light);"
        'echo path "${PATH%%:*}" "$(command -v python)";'
        'echo static $(ls "$SMSERVE_STATIC_ROOT");'
        f'DJANGO_SETTINGS_MODULE=smserve.settings python -c "{settings}";'
        "python -m pip freeze --disable-pip-version-check | sed 's/^/freeze /'"
    )
    result = container.run(
        "--env",
        "SECRET_KEY=shared-by-every-container",
        "--env",
        "DATABASE_URL=sqlite:////var/lib/smserve/shared.sqlite3",
        image,
        "sh",
        "-c",
        script,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        head, _, rest = line.partition(" ")
        lines.setdefault(head, []).append(rest.strip())
    output = result.stdout + result.stderr
    assert lines["os"] == ["debian bookworm"], output
    # The slim variant drops documentation and man pages at install (its dpkg excludes).
    assert int(lines["slim"][0]) > 0, output
    assert sorted(lines["debs"][0].split()) == [
        "nginx-light=installed",
        "python3=installed",
    ]
    prefix, base_prefix, version = lines["prefix"][0].split()
    assert (prefix, base_prefix, version) == ("/opt/venv", "/usr", "3.11"), output
    assert lines["path"][0].split() == ["/opt/venv/bin", "/opt/venv/bin/python"]
    assert lines["code"] == ["/opt/program/modelapp/__init__.py"], output
    static = lines["static"][0].split()
    assert {"admin", "rest_framework", "staticfiles.json"} <= set(static), output
    assert lines["key"] == ["shared-by-every-container"], output
    assert lines["db"] == ["/var/lib/smserve/shared.sqlite3"], output
    installed = {}
    for entry in lines["freeze"]:
        name, _, version = entry.partition("==")
        installed[name.lower().replace("_", "-")] = version
    wanted = pins(ROOT / "requirements.txt")
    assert {name: installed.get(name) for name in wanted} == wanted
    test_only = pins(ROOT / "requirements-test.txt").keys() - wanted.keys()
    assert test_only, "requirements-test.txt pins test tools of its own"
    assert not test_only & installed.keys(), output


# --- the build installs wheels only --------------------------------------------------------
# What scripts/build-image.sh passes to the build (the same values, so the venv stage's first
# layers come from the image build's cache): a wheel directory mounted at /run/wheels and no
# index.
BASE_IMAGE = "localhost/debian:bookworm-slim"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
WHEELS_ONLY = (
    "docker/Dockerfile: requirements.txt is installed from wheels only (pip"
    " --only-binary=:all:): each package needs a wheel for CPython 3.11 on Linux"
)


def wheel_file(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel of one empty module, written by hand (no build tool)."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": b"",
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: smserve-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(
        f"{path},sha256={urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def sdist_file(directory: Path, name: str, version: str) -> Path:
    """A source distribution (``setup.py``), all pip could install of ``name``."""
    root = f"{name.replace('-', '_')}-{version}"
    members = {
        f"{root}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{root}/setup.py": (
            f"from setuptools import setup\nsetup(name={name!r}, version={version!r})\n"
        ),
    }
    path = directory / f"{root}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member, text in members.items():
            data = text.encode()
            entry = tarfile.TarInfo(member)
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
    return path


def test_the_build_installs_wheels_only(image: str, tmp_path: Path):
    """docker/Dockerfile's venv stage, built as scripts/build-image.sh builds it (its wheel
    directory, no index), from a requirements.txt naming a package the directory has as
    a wheel and one it has only as a source distribution: pip takes the wheel from the
    directory, refuses to build the sdist, and the build fails saying why.
    docs/image-and-sagemaker.md, Image: "from wheels only".
    """
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel_file(wheels, "smserve-test-wheel", "0.1")
    sdist_file(wheels, "smserve-test-sdist", "0.1")
    context = tmp_path / "context"
    context.mkdir()
    context.joinpath("requirements.txt").write_text(
        "smserve-test-wheel==0.1\nsmserve-test-sdist==0.1\n"
    )
    options = [
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--volume",
        f"{wheels}:/run/wheels:ro",
        "--build-arg",
        "PIP_FIND_LINKS=/run/wheels",
        "--build-arg",
        "PIP_NO_INDEX=1",
    ]
    if os.access(HOST_CA, os.R_OK):
        options += [
            "--volume",
            f"{HOST_CA}:/run/host-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/run/host-ca.crt",
        ]
    result = podman(
        "build",
        "--network=host",
        "--isolation=chroot",
        "--layers",
        *options,
        "--target",
        "venv",
        "-f",
        str(ROOT / "docker" / "Dockerfile"),
        str(context),
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "/run/wheels/smserve_test_wheel-0.1-py3-none-any.whl" in output, output
    assert "No matching distribution found for smserve-test-sdist==0.1" in output, (
        output
    )
    # The message itself, not the command podman echoes (which splits it in two).
    assert WHEELS_ONLY in output.splitlines(), output
    assert "Building wheel for smserve-test-sdist" not in output, output


# --- a training job over two hosts: two containers on the host's network ------------------
# The hosts' loopback addresses: a range of this test's own (tests/support/cluster.py has
# 127.0.16.x), told to smserve through the test-only SMSERVE_HOST_ADDRESSES.
TWO_HOSTS = {"algo-1": "127.0.17.1", "algo-2": "127.0.17.2"}
DISTRIBUTED_SEARCH = {
    "smserve_estimator": "random_forest",
    "n_estimators": "8",
    "smserve_random_seed": "0",
    "smserve_search": "grid",
    "smserve_search_space": json.dumps(
        {"max_depth": [1, 3], "min_samples_leaf": [1, 10]}
    ),
    "smserve_search_folds": "3",
    "smserve_cluster_timeout": "120",
}


def host_job(base: Path, current_host: str, hosts: list[str]) -> Path:
    """``iris_job``'s tree for one host of a job over ``hosts``."""
    sagemaker_tree(
        base,
        hyperparameters=DISTRIBUTED_SEARCH,
        channels={"train": file_channel("text/csv")},
        hosts=hosts,
        current_host=current_host,
    )
    X, y = load_iris(return_X_y=True)
    train_dir = base / "input" / "data" / "train"
    train_dir.mkdir(parents=True)
    np.savetxt(train_dir / "iris.csv", np.column_stack([y, X]), delimiter=",", fmt="%g")
    return base


def test_a_search_over_two_hosts_in_two_containers(image: str, tmp_path: Path):
    """Two containers on the host's network, each ``train`` with its own /opt/ml and
    ``resourceconfig.json`` (algo-1, algo-2): both exit 0, only the leader writes the model
    and output/success, its metadata's search ran on two hosts and found the best
    parameters the same search finds in one container."""
    single = host_job(tmp_path / "single", "algo-1", ["algo-1"])
    alone = Container()
    try:
        result = alone.run("--network=host", "-v", f"{single}:/opt/ml", image, "train")
    finally:
        alone.remove()
    assert result.returncode == 0, result.stdout + result.stderr

    names = sorted(TWO_HOSTS)
    port = cluster_support.free_port(TWO_HOSTS["algo-1"])
    env = [
        "--env",
        "SMSERVE_HOST_ADDRESSES="
        + ",".join(f"{name}={address}" for name, address in TWO_HOSTS.items()),
        "--env",
        f"SMSERVE_DASK_SCHEDULER_PORT={port}",
    ]
    bases = {name: host_job(tmp_path / name, name, names) for name in names}
    containers = {name: Container() for name in names}
    try:
        for name in reversed(names):  # the leader last, as a slow leader would be
            started = containers[name].run(
                "--detach",
                "--network=host",
                *env,
                "-v",
                f"{bases[name]}:/opt/ml",
                image,
                "train",
            )
            assert started.returncode == 0, started.stderr
        codes = {}
        for name in names:
            waited = podman("wait", containers[name].name, timeout=300)
            assert waited.returncode == 0, waited.stderr
            codes[name] = int(waited.stdout.strip())
        logs = {name: containers[name].logs() for name in names}
    finally:
        for container in containers.values():
            container.remove()

    assert codes == {"algo-1": 0, "algo-2": 0}, "\n".join(logs.values())
    leader, other = bases["algo-1"], bases["algo-2"]
    search = json.loads((leader / "model" / "metadata.json").read_text())["search"]
    expected = json.loads((single / "model" / "metadata.json").read_text())["search"]
    assert search["hosts"] == 2
    assert expected["hosts"] == 1
    assert search["best_params"] == expected["best_params"]
    assert search["best_score"] == expected["best_score"]
    assert (leader / "model" / "model.joblib").stat().st_size > 0
    assert (leader / "output" / "success").exists()
    assert "Every host joined" in logs["algo-1"]
    assert not (other / "model" / "model.joblib").exists()
    assert not (other / "output" / "success").exists()
    assert not (other / "output" / "failure").exists()
    assert "The leader closed the cluster" in logs["algo-2"]
