"""``manage.py demo_data``: lay out the iris data set as a SageMaker training job would see it.

Writes ``input/data/train/iris.csv`` (label first, no header, as SageMaker's built-in
algorithms expect), ``input/config/hyperparameters.json`` (string values) and
``inputdataconfig.json`` under the base dir, so ``./train`` then ``docker/serve`` run the
whole contract locally with no download.
"""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from modelapp.paths import SageMakerPaths


class Command(BaseCommand):
    help = (
        "Write the iris demo training job (data + config) under the SageMaker base dir."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-dir", type=Path, help="Default: SAGEMAKER_BASE_DIR."
        )

    def handle(self, *args: Any, base_dir: Path | None = None, **options: Any) -> None:
        from sklearn.datasets import load_iris

        paths = SageMakerPaths.from_settings(base_dir)
        X, y = load_iris(return_X_y=True)
        train_dir = paths.channel_dir("train")
        train_dir.mkdir(parents=True, exist_ok=True)
        lines = (
            ",".join([str(label), *map(repr, row)])
            for label, row in zip(y.tolist(), X.tolist(), strict=True)
        )
        (train_dir / "iris.csv").write_text("\n".join(lines) + "\n")
        paths.config_dir.mkdir(parents=True, exist_ok=True)
        paths.hyperparameters_file.write_text(
            json.dumps({"max_depth": "5", "smserve_random_seed": "0"}, indent=2)
        )
        paths.inputdataconfig_file.write_text(
            json.dumps(
                {"train": {"ContentType": "text/csv", "TrainingInputMode": "File"}},
                indent=2,
            )
        )
        self.stdout.write(f"Wrote the iris demo job under {paths.base}")
