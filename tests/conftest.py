"""Shared fixtures: tiny real models, SageMaker base dirs, and the real server.

Fixtures only; helpers live in ``tests/support/``. Every test that uses a fixture which
starts the real ``serve`` (``SERVER_FIXTURES``) is marked ``server`` here, so
``pytest -m "not server"`` is a fast run that starts no nginx or gunicorn.

The suite is hermetic: pip never reaches a package index (``PIP_NO_INDEX``; what a
``setup.py`` build needs is in the wheel directory ``scripts/bootstrap.sh`` fills), and
every file a test writes is under pytest's temporary directories.

Under pytest-xdist (``scripts/test.sh`` runs ``-n 2 --dist loadgroup``) the tests of a
module that share a fixture wider than one test run on one worker, so that fixture (a
server, a trained model, the container image) is made once; every other test is handed
out on its own, and the longest modules first, so they run beside the rest rather than
after it.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression
from sklearn.tree import DecisionTreeClassifier

from tests.support.models import write_model
from tests.support.servers import ServeProcess

# The suite's own estimators (tests/support) are user code that its models name: trusted
# as an operator trusts theirs (SMSERVE_TRUSTED_MODULES), in the servers it starts and here.
os.environ.setdefault("SMSERVE_TRUSTED_MODULES", "tests.support")
settings.SMSERVE.setdefault("TRUSTED_MODULES", ("tests.support",))

# Fixtures that start the real serve (nginx + gunicorn); a test using one, directly or
# through another fixture, is a ``server`` test.
SERVER_FIXTURES = frozenset(
    {"server", "serve_factory", "serve_process", "admin_server"}
)


# Fixtures that give a test the database; such a test, and one marked ``django_db``, is a
# ``database`` test: the PostgreSQL pass of scripts/test.sh runs those (modules whose
# servers or jobs write rows that the tests read mark themselves).
DATABASE_FIXTURES = frozenset(
    {"db", "transactional_db", "admin_server", "server_db", "locked_server"}
)


# Wheels for pip's build isolation (setuptools, wheel), filled by scripts/bootstrap.sh: with
# them and no index, a test that pip-installs a ``setup.py`` source needs no network.
BUILD_WHEELS = Path(sys.prefix) / "build-wheels"
os.environ["PIP_NO_INDEX"] = "1"
os.environ["PIP_FIND_LINKS"] = str(BUILD_WHEELS)
# Hypothesis (schemathesis) keeps its files here, not in .hypothesis/ of the checkout.
HYPOTHESIS_HOME = Path(tempfile.mkdtemp(prefix="smserve-hypothesis-"))
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(HYPOTHESIS_HOME)

# Fixture scopes that tie a module's tests to one xdist worker (``session`` fixtures are
# made once per worker instead).
SHARED_SCOPES = frozenset({"module", "class", "package"})
# pytest-django's autouse class-scoped fixture, on every test and only acting for unittest
# classes: it shares nothing between our tests, so it groups none of them.
NOT_SHARED = frozenset({"_django_setup_unittest"})

# The modules whose tests take longest (a container build and runs; several training hosts;
# many `train` jobs or servers; a shared server's group), longest first: started first, so
# that the last tests handed out are short and neither worker idles at the end.
LONG_MODULES = (
    "tests/test_image.py",
    "tests/training/test_cluster.py",
    "tests/test_train.py",
    "tests/test_mme_http.py",
    "tests/training/test_search.py",
    "tests/test_tables_serving.py",
    "tests/test_serve_under_load.py",
    "tests/training/test_tables.py",
    "tests/training/test_script.py",
    "tests/test_sdk_predictor.py",
    "tests/test_serve_process.py",
)


def long_rank(item: pytest.Item) -> int:
    """The item's module's place in ``LONG_MODULES``; after them all if absent."""
    module = item.nodeid.split("::")[0]
    return LONG_MODULES.index(module) if module in LONG_MODULES else len(LONG_MODULES)


def shared_fixture_group(item: pytest.Item) -> str | None:
    """The test's module when it uses a fixture shared by more than one test, else None."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    for name, definitions in info.name2fixturedefs.items():
        if name in NOT_SHARED:
            continue
        if definitions and definitions[-1].scope in SHARED_SCOPES:
            return item.nodeid.split("::")[0]
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if SERVER_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.server)
        if DATABASE_FIXTURES.intersection(fixtures) or item.get_closest_marker(
            "django_db"
        ):
            item.add_marker(pytest.mark.database)
        if item.get_closest_marker("image"):
            item.add_marker(pytest.mark.root)
        group = shared_fixture_group(item)
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_unconfigure() -> None:
    shutil.rmtree(HYPOTHESIS_HOME, ignore_errors=True)


@pytest.hookimpl(wrapper=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_last(items: list[pytest.Item]) -> Iterator[None]:
    """After every other reordering (pytest-django sorts too)."""
    yield
    items.sort(key=long_rank)


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    return load_iris(return_X_y=True)


@pytest.fixture(scope="session")
def iris_model(iris) -> DecisionTreeClassifier:
    X, y = iris
    return DecisionTreeClassifier(random_state=0).fit(X, y)


@pytest.fixture(scope="session")
def iris_base(tmp_path_factory, iris_model) -> Path:
    """A base dir with the iris tree as model.joblib + metadata.json."""
    base = tmp_path_factory.mktemp("iris_base")
    write_model(
        base,
        iris_model,
        {"estimator": "sklearn.tree.DecisionTreeClassifier", "n_features": 4},
    )
    return base


@pytest.fixture(scope="session")
def regressor_1f() -> LinearRegression:
    """A single-feature model: y = 2x + 1."""
    X = np.arange(10, dtype=float).reshape(-1, 1)
    return LinearRegression().fit(X, 2 * X[:, 0] + 1)


@pytest.fixture
def serve_factory(tmp_path) -> Iterator:
    """Start servers with ``serve_factory(base_dir, env=..., workers=...)``; all are
    stopped at the end of the test."""
    started: list[ServeProcess] = []

    def start(
        base_dir: Path, expect_status: int | None = 200, **kwargs: Any
    ) -> ServeProcess:
        work = tmp_path / f"serve{len(started)}"
        work.mkdir()
        server = ServeProcess(base_dir, work, **kwargs)
        started.append(server)
        return server.start(expect_status)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def serve_process(tmp_path) -> Iterator:
    """Make, not start, a ``ServeProcess`` (its environment and free port) for a test that
    runs ``docker/serve`` its own way: ``serve_process(base_dir, workers=...)``; any it
    started through ``.start()`` is stopped at the end of the test."""
    made: list[ServeProcess] = []

    def make(base_dir: Path, **kwargs: Any) -> ServeProcess:
        work = tmp_path / f"p{len(made)}"  # short: the gunicorn socket lives below it
        work.mkdir()
        made.append(ServeProcess(base_dir, work, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture(scope="session")
def server(iris_base, tmp_path_factory) -> Iterator[ServeProcess]:
    """The iris tree served by the real stack, two workers, default settings."""
    server = ServeProcess(iris_base, tmp_path_factory.mktemp("server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def throwaway_python(tmp_path) -> dict[str, str]:
    """``train``'s environment for a job that pip-installs its source (``setup.py``), as
    the training toolkit does into the image's Python: a venv of its own that sees this
    venv's packages (a ``.pth`` line), so pip installs there and the suite's venv stays as
    it was. pip has no index (above): the build takes setuptools from ``BUILD_WHEELS``."""
    assert any(BUILD_WHEELS.glob("setuptools-*.whl")), (
        f"no setuptools wheel in {BUILD_WHEELS}: run scripts/bootstrap.sh test"
    )
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    lines = [
        f"import site; site.addsitedir({path!r})" for path in site.getsitepackages()
    ]
    Path(purelib, "suite-venv.pth").write_text("\n".join(lines) + "\n")
    return {"SMSERVE_PYTHON": str(python)}
