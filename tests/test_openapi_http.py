"""schemathesis against the real server (nginx + gunicorn): every operation of
docs/openapi.yaml, generated from a fixed seed and deterministically, with its
server-error and conformance checks (status code, content type, headers and body), on a
single-model server and on a multi-model one. A failure names the operation and the
check, with a curl line that reproduces it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import Status, events, from_schema

from modelapp import formats
from tests.support import ROOT
from tests.support.servers import ServeProcess, ServerDatabase

pytestmark = pytest.mark.server

DOCUMENT = ROOT / "docs" / "openapi.yaml"
SEED = 20261128
# Examples per operation and phase: about 600 requests per server, a few seconds each.
MAX_EXAMPLES = 30
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
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

# schemathesis sends text/* and application/octet-stream bodies as they are; our other
# textual and binary types the same way.
schemathesis.serializer.alias(
    [
        t
        for t, name in formats.ALIASES.items()
        if name in (formats.CSV, formats.JSONLINES) and not t.startswith("text/")
    ],
    "text/plain",
)
schemathesis.serializer.alias([formats.NPY], "application/octet-stream")


@dataclass
class Run:
    """What schemathesis sent and found."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    checks: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __iadd__(self, other: Run) -> Run:
        self.requests += other.requests
        self.statuses += other.statuses
        self.checks += other.checks
        self.failures += other.failures
        self.errors += other.errors
        return self

    def summary(self) -> str:
        return (
            f"{self.requests} requests, {self.checks[Status.SUCCESS]} checks passed, "
            f"{len(self.failures)} failures, {len(self.errors)} errors"
        )


def run_schemathesis(
    server: ServeProcess,
    include: dict[str, Any] | None = None,
    exclude: dict[str, Any] | None = None,
    operations: list[dict[str, Any]] | None = None,
) -> Run:
    """Every phase but the stateful one (examples, coverage, fuzzing) over the
    operations ``include`` and ``exclude`` select (all by default); ``operations`` is
    schemathesis' per-operation configuration."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": f"http://127.0.0.1:{server.port}",
            "cache": {"enabled": False},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "checks": {"enabled": False, **{c: {"enabled": True} for c in CHECKS}},
            "phases": {"stateful": {"enabled": False}},
            "operations": operations or [],
        }
    )
    schema = schemathesis.openapi.from_path(DOCUMENT, config=config)
    if include:
        schema = schema.include(**include)
    if exclude:
        schema = schema.exclude(**exclude)
    run = Run()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            record(run, event.recorder)
        elif isinstance(event, events.NonFatalError):
            run.errors.append(
                f"{event.label}: {event.info.title}: {event.info.message}"
            )
        elif isinstance(event, events.FatalError):
            run.errors.append(f"schemathesis failed: {event.exception!r}")
    return run


def record(run: Run, recorder: Any) -> None:
    for interaction in recorder.interactions.values():
        run.requests += 1
        status = interaction.response.status_code if interaction.response else None
        run.statuses[recorder.label, status] += 1
    for checks in recorder.checks.values():
        for check in checks:
            run.checks[check.status] += 1
            if check.status == Status.FAILURE:
                info = check.failure_info
                run.failures.append(
                    f"{recorder.label} {check.name}: {info.failure.title}: "
                    f"{info.failure.message}\n    {info.code_sample}"
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
    run = run_schemathesis(single_server)
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
    run = run_schemathesis(
        multi_model_server,
        exclude={"method": "DELETE"},
        operations=[
            {
                "include-name": "POST /models/{name}/invoke",
                "parameters": {"path.name": "iris"},
            }
        ],
    )
    run += run_schemathesis(multi_model_server, include={"method": "DELETE"})
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
