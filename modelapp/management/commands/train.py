"""``manage.py train``: SageMaker's training entry point (``docker run IMAGE train``).

The pipeline is ``modelapp.training.run``; this command owns only the command line, the
``output/success`` / ``output/failure`` files and the exit status: 0 done, 1 the job's
configuration or data needs fixing, 2 a bug in smserve, 143 stopped by SIGTERM; in script
mode a failed script's own exit code.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from modelapp.paths import SageMakerPaths
from modelapp.training import artifacts, record, run

logger = logging.getLogger(__name__)


def _assignment(value: str) -> tuple[str, str]:
    key, sep, rest = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected name=value, got {value!r}")
    return key.strip(), rest


class Command(BaseCommand):
    help = (
        "Train a scikit-learn estimator as a SageMaker training job: read "
        "input/config and input/data below the base dir, write model/model.joblib, "
        "model/metadata.json and output/."
    )
    # Training needs neither the database nor the serving configuration.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-dir",
            help="The SageMaker tree (default: SAGEMAKER_BASE_DIR, else /opt/ml).",
        )
        parser.add_argument(
            "--hp",
            action="append",
            type=_assignment,
            default=[],
            metavar="KEY=VALUE",
            help="A hyperparameter, overriding hyperparameters.json (repeatable).",
        )
        parser.add_argument(
            "--channel",
            action="append",
            type=_assignment,
            default=[],
            metavar="NAME=PATH",
            help="Read channel NAME from PATH (a file or directory) (repeatable).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        paths = SageMakerPaths.from_settings(options["base_dir"])
        # A TrainingRun row when a database answers; the training never depends on it.
        recorder = record.RunRecorder.start(paths)
        result = run.train(
            paths,
            hp_overrides=dict(options["hp"]),
            channel_overrides={k: Path(v) for k, v in options["channel"]},
            on_finish=recorder.finish,
        )
        if result.succeeded:
            for name, value in result.metrics.items():
                self.stdout.write(run.format_metric(name, value))
            if result.status == run.COMPLETED:
                artifacts.write_success(paths)
            return
        reason = result.failure_reason
        if result.traceback:
            reason = f"{reason}\n\n{result.traceback}"
        try:
            artifacts.write_failure(paths, reason)
        except OSError:
            logger.exception("Could not write %s.", paths.failure_file)
        raise CommandError(result.failure_reason, returncode=result.exit_code)
