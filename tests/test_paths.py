"""``modelapp.paths.SageMakerPaths``: the container contract's layout below one base dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from modelapp.paths import SageMakerPaths

BASE = Path("/opt/ml")


@pytest.mark.parametrize(
    ("name", "relative"),
    [
        ("input_dir", "input"),
        ("config_dir", "input/config"),
        ("hyperparameters_file", "input/config/hyperparameters.json"),
        ("inputdataconfig_file", "input/config/inputdataconfig.json"),
        ("resourceconfig_file", "input/config/resourceconfig.json"),
        ("data_dir", "input/data"),
        ("code_dir", "code"),
        ("model_dir", "model"),
        ("model_file", "model/model.joblib"),
        ("metadata_file", "model/metadata.json"),
        ("output_dir", "output"),
        ("output_data_dir", "output/data"),
        ("output_intermediate_dir", "output/intermediate"),
        ("metrics_file", "output/data/metrics.json"),
        ("failure_file", "output/failure"),
        ("success_file", "output/success"),
    ],
)
def test_layout_below_the_base(name, relative):
    """Each path is where SageMaker puts (or looks for) it below /opt/ml."""
    assert getattr(SageMakerPaths(BASE), name) == BASE / relative


def test_channels_and_pipes():
    """A channel is a directory of input/data; in Pipe mode a FIFO per epoch beside it."""
    paths = SageMakerPaths(BASE)
    assert paths.channel_dir("train") == BASE / "input/data/train"
    assert paths.pipe_path("train") == BASE / "input/data/train_0"
    assert paths.pipe_path("validation", 3) == BASE / "input/data/validation_3"


def test_any_base_dir_gives_the_same_layout(tmp_path):
    """A local tree (``.ml/``, a test's tmp dir) has the same shape; nothing is created."""
    paths = SageMakerPaths(tmp_path / "ml")
    assert paths.model_file == tmp_path / "ml" / "model" / "model.joblib"
    assert paths.failure_file == tmp_path / "ml" / "output" / "failure"
    assert not (tmp_path / "ml").exists()


def test_from_settings_uses_the_argument_else_base_dir(tmp_path):
    """``from_settings`` takes the given base dir, else ``SMSERVE['BASE_DIR']``
    (``SAGEMAKER_BASE_DIR``)."""
    assert SageMakerPaths.from_settings(tmp_path).base == tmp_path
    assert SageMakerPaths.from_settings(str(tmp_path)).base == tmp_path
    with override_settings(
        SMSERVE={**settings.SMSERVE, "BASE_DIR": str(tmp_path / "x")}
    ):
        assert SageMakerPaths.from_settings().base == tmp_path / "x"


def test_paths_are_values():
    """Frozen and compared by base: safe to share and to use as a key."""
    assert SageMakerPaths(BASE) == SageMakerPaths(Path("/opt/ml"))
    assert len({SageMakerPaths(BASE), SageMakerPaths(BASE)}) == 1
    with pytest.raises(AttributeError):
        SageMakerPaths(BASE).base = Path("/tmp")  # type: ignore[misc]
