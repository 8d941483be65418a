"""``manage.py demo_traffic``: a little traffic for the demo's drift page.

Records are drawn from the served model's own training distributions (``metadata.json``:
a random training bin, a value within it; a category by its training frequency), so the
first half looks like the training data; the second half has one feature shifted (the
first numeric one, by three times its training range, unless ``--shift`` names another),
which the drift page then flags.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError, CommandParser

from modelapp import conf
from modelapp.metadata import CATEGORICAL, NUMERIC, ModelMetadata
from modelapp.paths import SageMakerPaths


def draw(distribution: dict[str, Any], kind: str, rows: int, rng: Any) -> list[Any]:
    """``rows`` values distributed like the training ones (missing ones left blank)."""
    counts = np.asarray(
        [*distribution.get("counts", []), distribution.get("missing", 0)], dtype=float
    )
    if counts.sum() == 0:
        return [""] * rows
    picks = rng.choice(len(counts), size=rows, p=counts / counts.sum())
    values: list[Any] = []
    for pick in picks:
        if pick == len(counts) - 1:
            values.append("")
        elif kind == CATEGORICAL:
            values.append(distribution["categories"][pick])
        else:
            edges = distribution["edges"]
            low, high = edges[pick], edges[min(pick + 1, len(edges) - 1)]
            values.append(repr(float(rng.uniform(low, high))))
    return values


class Command(BaseCommand):
    help = (
        "Send the demo's traffic (half of it with one feature shifted) to /invocations."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-dir", type=Path, help="Default: SAGEMAKER_BASE_DIR."
        )
        parser.add_argument("--port", type=int, help="Default: SAGEMAKER_BIND_TO_PORT.")
        parser.add_argument("--records", type=int, default=400)
        parser.add_argument("--shift", help="The feature to shift (by name).")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:
        paths = SageMakerPaths.from_settings(options["base_dir"])
        metadata = ModelMetadata.read(paths.model_dir)
        features = (metadata.features if metadata else None) or []
        if not any(f.distribution for f in features):
            raise CommandError(
                f"{paths.model_dir}/metadata.json has no training distributions: "
                "train the model with this version's ./train first."
            )
        rng = np.random.default_rng(options["seed"])
        half = max(options["records"] // 2, 1)
        columns = [draw(f.distribution or {}, f.kind, 2 * half, rng) for f in features]
        shifted = next(
            (
                j
                for j, f in enumerate(features)
                if (
                    f.name == options["shift"]
                    if options["shift"]
                    else f.kind == NUMERIC
                )
                and f.distribution
            ),
            None,
        )
        if shifted is None:
            raise CommandError(
                f"No feature to shift ({options['shift'] or 'numeric'})."
            )
        edges = features[shifted].distribution.get("edges") or []  # type: ignore[union-attr]
        if edges:
            width = (edges[-1] - edges[0]) or 1.0
            for i in range(half, 2 * half):
                if columns[shifted][i] != "":
                    columns[shifted][i] = repr(float(columns[shifted][i]) + 3 * width)
        else:  # a categorical feature: one category training never saw
            for i in range(half, 2 * half):
                columns[shifted][i] = "demo-unseen"
        lines = [",".join(str(c[i]) for c in columns) for i in range(2 * half)]
        port = options["port"] or conf.get("PORT")
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url)
        for start in range(0, len(lines), 20):
            body = ("\n".join(lines[start : start + 20]) + "\n").encode()
            request = urllib.request.Request(
                f"{url}/invocations", body, {"Content-Type": "text/csv"}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        name = features[shifted].name or f"column {shifted}"
        self.stdout.write(
            f"Sent {2 * half} records to {url}/invocations, the last {half} with "
            f"{name} shifted."
        )


def wait_until_up(url: str, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.3)
    raise CommandError(f"{url}/ping did not answer 200 in {deadline:.0f}s.")
