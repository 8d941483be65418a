"""schemathesis against a running server, from docs/openapi.yaml: ``run_schemathesis``
runs its examples, coverage and fuzzing phases from a fixed seed, deterministically, and
returns what it sent and found (``Run``), with a curl line for each failure."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis.engine import Status, events, from_schema

from modelapp import formats
from tests.support import ROOT

DOCUMENT = ROOT / "docs" / "openapi.yaml"
# The server-error check, and every conformance check of an answer to the document.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)

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
    base_url: str,
    seed: int,
    max_examples: int,
    include: dict[str, Any] | None = None,
    exclude: dict[str, Any] | None = None,
    operations: list[dict[str, Any]] | None = None,
) -> Run:
    """Every phase but the stateful one (examples, coverage, fuzzing), ``max_examples``
    per operation and phase, over the operations ``include`` and ``exclude`` select
    (all by default); ``operations`` is schemathesis' per-operation configuration."""
    config = schemathesis.Config.from_dict(
        {
            "seed": seed,
            "base-url": base_url,
            "cache": {"enabled": False},
            "generation": {
                "max-examples": max_examples,
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
    """Add one scenario's requests and check results to ``run``."""
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
