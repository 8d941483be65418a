"""Shared fixtures: tiny real models, SageMaker base dirs, and the real server.

Fixtures only; helpers live in ``tests/support/``. Every test that uses a fixture which
starts the real ``serve`` (``SERVER_FIXTURES``) is marked ``server`` here, so
``pytest -m "not server"`` is a fast run that starts no nginx or gunicorn.
"""

from __future__ import annotations

import os
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
DATABASE_FIXTURES = frozenset({"db", "transactional_db", "admin_server", "server_db"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if SERVER_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.server)
        if DATABASE_FIXTURES.intersection(fixtures) or item.get_closest_marker(
            "django_db"
        ):
            item.add_marker(pytest.mark.database)


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
