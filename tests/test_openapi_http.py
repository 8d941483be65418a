"""schemathesis against the real server (nginx + gunicorn): every operation of
docs/openapi.yaml, generated from a fixed seed and deterministically, with its
server-error and conformance checks (status code, content type, headers and body), on a
single-model server and on a multi-model one. A failure names the operation and the
check, with a curl line that reproduces it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from tests.support.openapi import Run, run_schemathesis
from tests.support.servers import ServeProcess, ServerDatabase

pytestmark = pytest.mark.server

SEED = 20261128
# Examples per operation and phase: about 550 requests per server, ~5 s each.
MAX_EXAMPLES = 30
OPERATIONS = {
    "GET /ping",
    "GET /execution-parameters",
    "POST /invocations",
    "GET /models",
    "POST /models",
    "GET /models/{name}",
    "DELETE /models/{name}",
    "POST /models/{name}/invoke",
}


def schemathesis_on(server: ServeProcess, **selection: Any) -> Run:
    return run_schemathesis(
        f"http://127.0.0.1:{server.port}", SEED, MAX_EXAMPLES, **selection
    )


def operations(run: Run) -> set[str]:
    return {label for label, _ in run.statuses}


def assert_clean(run: Run) -> None:
    if run.errors or run.failures:
        pytest.fail(f"{run.summary()}:\n" + "\n".join(run.errors + run.failures))


def serve(base: Path, work: Path, **env: str) -> Iterator[ServeProcess]:
    """The real server on a database of its own (the stats of fuzzed requests stay
    there), stopped and dropped afterwards."""
    db = ServerDatabase.create(work)
    server = ServeProcess(base, work, env={**db.env, **env})
    try:
        yield server.start()
    finally:
        server.stop()
        db.drop()


@pytest.fixture(scope="module")
def single_server(tmp_path_factory, iris_base) -> Iterator[ServeProcess]:
    yield from serve(iris_base, tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def multi_model_server(tmp_path_factory, iris_base) -> Iterator[ServeProcess]:
    """A multi-model server (no /opt/ml/model) with the iris tree loaded as ``iris``,
    the name the document's examples use."""
    for server in serve(
        tmp_path_factory.mktemp("mme_base"),
        tmp_path_factory.mktemp("mme"),
        SAGEMAKER_MULTI_MODEL="TRUE",
        SMSERVE_MME_MODEL_ROOT=str(tmp_path_factory.getbasetemp()),
        SMSERVE_MME_MEMORY_MB="2048",
    ):
        body = json.dumps({"model_name": "iris", "url": str(iris_base / "model")})
        status, _, answer = server.request(
            "POST", "/models", body.encode(), {"Content-Type": "application/json"}
        )
        assert status == HTTPStatus.OK, answer
        yield server


def test_a_single_model_server_answers_as_documented(single_server):
    """Every operation (the /models API answers 404 here), no 5xx and no answer the
    document does not describe."""
    run = schemathesis_on(single_server)
    print(f"schemathesis, single-model server: {run.summary()}")
    assert_clean(run)
    assert operations(run) == OPERATIONS
    assert run.requests >= 300
    # Successes were checked too, not only errors.
    assert run.statuses["POST /invocations", 200] > 0
    assert run.statuses["GET /ping", 200] > 0


def test_a_multi_model_server_answers_as_documented(multi_model_server):
    """Every operation, the unloads last (schemathesis reuses the names GET /models
    lists, so an unload would leave nothing loaded to check the other successes
    against); every invocation of a named model goes to the loaded one, so the
    formats and errors of a model's own pipeline are checked, not only the 404."""
    run = schemathesis_on(
        multi_model_server,
        exclude={"method": "DELETE"},
        operations=[
            {
                "include-name": "POST /models/{name}/invoke",
                "parameters": {"path.name": "iris"},
            }
        ],
    )
    run += schemathesis_on(multi_model_server, include={"method": "DELETE"})
    print(f"schemathesis, multi-model server: {run.summary()}")
    assert_clean(run)
    assert operations(run) == OPERATIONS
    assert run.requests >= 300
    for operation in (
        "GET /models",
        "GET /models/{name}",
        "DELETE /models/{name}",
        "POST /models/{name}/invoke",
    ):
        assert run.statuses[operation, 200] > 0, operation
    assert run.statuses["POST /models/{name}/invoke", 400] > 0
