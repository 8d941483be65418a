"""The SageMaker directory layout, derived from one base dir.

SageMaker mounts everything under ``/opt/ml``; locally the same tree lives under ``.ml/``.
No other module spells one of these paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelapp import conf


@dataclass(frozen=True)
class SageMakerPaths:
    """Every path of the container contract, below ``base``."""

    base: Path

    @classmethod
    def from_settings(cls, base_dir: str | Path | None = None) -> SageMakerPaths:
        """``base_dir`` when given, else ``SMSERVE['BASE_DIR']`` (``SAGEMAKER_BASE_DIR``)."""
        return cls(Path(base_dir if base_dir is not None else conf.get("BASE_DIR")))

    # --- input ---
    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def config_dir(self) -> Path:
        return self.input_dir / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def inputdataconfig_file(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resourceconfig_file(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.input_dir / "data"

    def channel_dir(self, channel: str) -> Path:
        return self.data_dir / channel

    def pipe_path(self, channel: str, epoch: int = 0) -> Path:
        """Pipe mode: SageMaker streams a channel through the FIFO ``<channel>_<epoch>``."""
        return self.data_dir / f"{channel}_{epoch}"

    # --- a user's script (script mode), where SageMaker's training toolkit puts it ---
    @property
    def code_dir(self) -> Path:
        return self.base / "code"

    # --- model ---
    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def model_file(self) -> Path:
        return self.model_dir / "model.joblib"

    @property
    def metadata_file(self) -> Path:
        return self.model_dir / "metadata.json"

    # --- output ---
    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def output_intermediate_dir(self) -> Path:
        return self.output_dir / "intermediate"

    @property
    def metrics_file(self) -> Path:
        return self.output_data_dir / "metrics.json"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def success_file(self) -> Path:
        return self.output_dir / "success"
