"""A training job's configuration: hyperparameters (typed), channels and hosts.

SageMaker writes ``input/config/*.json`` before ``train`` starts; ``--hp`` and ``--channel``
override them for local runs. Every path comes from ``SageMakerPaths``.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelapp import conf
from modelapp.formats import base_type
from modelapp.paths import SageMakerPaths
from modelapp.training.errors import ClientError

logger = logging.getLogger(__name__)

# Our own hyperparameters; every other key is an estimator parameter.
ESTIMATOR = "smserve_estimator"
TARGET_COLUMN = "smserve_target_column"
HEADER = "smserve_header"
RANDOM_SEED = "smserve_random_seed"
# Tables with text columns and gaps (training/encoding.py says what each choice does).
CATEGORICAL_ENCODING = "smserve_categorical_encoding"
IMPUTE = "smserve_impute"
CATEGORICAL_COLUMNS = "smserve_categorical_columns"
# A hyperparameter search (training/search.py checks these).
SEARCH = "smserve_search"
SEARCH_SPACE = "smserve_search_space"
SEARCH_SPACE_FILE = "smserve_search_space_file"
SEARCH_CANDIDATES = "smserve_search_candidates"
SEARCH_FOLDS = "smserve_search_folds"
SEARCH_SCORING = "smserve_search_scoring"
# Training across hosts: how long hosts wait for each other, seconds (training/cluster.py).
CLUSTER_TIMEOUT = "smserve_cluster_timeout"
# The model report (modelapp/report.py): where its data comes from, or off.
REPORT = "smserve_report"
REPORT_CHOICES = ("auto", "validation", "off")
# Every reserved key and its default: the one table.
RESERVED: dict[str, Any] = {
    ESTIMATOR: "sklearn.tree.DecisionTreeClassifier",
    TARGET_COLUMN: 0,
    HEADER: "auto",
    RANDOM_SEED: None,
    CATEGORICAL_ENCODING: "auto",
    IMPUTE: "auto",
    CATEGORICAL_COLUMNS: [],
    SEARCH: None,
    SEARCH_SPACE: None,
    SEARCH_SPACE_FILE: None,
    SEARCH_CANDIDATES: 10,
    SEARCH_FOLDS: 5,
    SEARCH_SCORING: None,
    CLUSTER_TIMEOUT: 300,
    REPORT: "auto",
}
# The reserved keys the module that uses them checks (``Hyperparameters.owned``).
OWNED = (
    SEARCH,
    SEARCH_SPACE,
    SEARCH_SPACE_FILE,
    SEARCH_CANDIDATES,
    SEARCH_FOLDS,
    SEARCH_SCORING,
    CLUSTER_TIMEOUT,
)
ENCODING_CHOICES = ("auto", "onehot", "ordinal", "native", "none")
IMPUTE_CHOICES = ("auto", "median", "mean", "most_frequent", "none")
RESERVED_PREFIX = "smserve_"
HEADER_CHOICES = ("auto", "present", "absent")
# Added by the SageMaker SDK and by tuning jobs; they are not estimator parameters.
IGNORED_PREFIX = "sagemaker_"
IGNORED_KEYS = {"_tuning_objective_metric"}

INPUT_MODES = ("File", "Pipe", "FastFile")
TRAIN, VALIDATION, TEST = "train", "validation", "test"
EVALUATION_CHANNELS = (VALIDATION, TEST)
KNOWN_CHANNELS = (TRAIN, *EVALUATION_CHANNELS)
_PIPE_NAME = re.compile(r"^(?P<channel>.+)_(?P<epoch>\d+)$")


def convert_value(raw: Any) -> Any:
    """A hyperparameter's string as the Python value it spells.

    JSON first (``"5"`` -> 5, ``"true"`` -> True, ``"null"`` -> None, ``"[1, 2]"`` -> a list,
    ``"\\"gini\\""`` -> ``"gini"``), as SageMaker's training toolkit decodes them. A string left
    over (not JSON, or JSON-encoded) gets one more chance: ``True``/``False``/``None`` in any
    case, then a Python literal (``"(100, 50)"``, ``"1e-3"``, ``"{'a': 1}"``); else it stays
    the string it is (``"gini"``, ``"sqrt"``).
    """
    if not isinstance(raw, str):
        return raw  # a local run may write typed JSON; keep it
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if not isinstance(value, str):
        return value
    return _convert_string(value)


def _convert_string(text: str) -> Any:
    stripped = text.strip()
    words = {"true": True, "false": False, "none": None, "null": None}
    if stripped.lower() in words:
        return words[stripped.lower()]
    if stripped != text or not stripped:
        return text  # spaces around a value are deliberate; keep the string as given
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


@dataclass
class Hyperparameters:
    """The job's hyperparameters, split into our reserved keys and estimator parameters."""

    raw: dict[str, Any]
    estimator: Any = RESERVED[ESTIMATOR]
    # None (``none``): no label column, for an estimator fitted without one (a
    # featurizer, a clusterer).
    target_column: int | str | None = RESERVED[TARGET_COLUMN]
    header: str = RESERVED[HEADER]
    random_seed: int | None = RESERVED[RANDOM_SEED]
    categorical_encoding: str = RESERVED[CATEGORICAL_ENCODING]
    impute: str = RESERVED[IMPUTE]
    categorical_columns: list[int | str] = field(default_factory=list)
    report: str = RESERVED[REPORT]
    params: dict[str, Any] = field(default_factory=dict)
    # Reserved keys other modules check (``OWNED``: the search, the cluster), as given
    # (converted); their defaults are in ``RESERVED``.
    owned: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Hyperparameters:
        hp = cls(raw=dict(raw))
        for key in sorted(raw):
            if key.startswith(IGNORED_PREFIX) or key in IGNORED_KEYS:
                hp.ignored.append(key)
                continue
            value = convert_value(raw[key])
            if key == ESTIMATOR:
                hp.estimator = value
            elif key == TARGET_COLUMN:
                hp.target_column = _target_column(value)
            elif key == HEADER:
                hp.header = _header(value)
            elif key == RANDOM_SEED:
                hp.random_seed = _random_seed(value)
            elif key == CATEGORICAL_ENCODING:
                hp.categorical_encoding = _choice(key, value, ENCODING_CHOICES)
            elif key == IMPUTE:
                hp.impute = _choice(key, value, IMPUTE_CHOICES)
            elif key == CATEGORICAL_COLUMNS:
                hp.categorical_columns = _columns(value)
            elif key == REPORT:
                hp.report = _choice(key, value, REPORT_CHOICES)
            elif key in OWNED:
                hp.owned[key] = value
            elif key.startswith(RESERVED_PREFIX):
                raise ClientError(
                    f"Unknown hyperparameter {key!r}: the keys starting with "
                    f"{RESERVED_PREFIX!r} are smserve's own, and they are "
                    f"{', '.join(sorted(RESERVED))}."
                )
            else:
                hp.params[key] = value
        if hp.ignored:
            logger.info(
                "Ignoring hyperparameters set by SageMaker, not for the estimator: %s",
                ", ".join(hp.ignored),
            )
        return hp


def _target_column(value: Any) -> int | str | None:
    if value is None:
        return None  # ``none``: the data has no label column
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ClientError(
            f"Hyperparameter {TARGET_COLUMN} must be a column index (0 is the first "
            f"column, -1 the last), a column name from the header, or none (no label "
            f"column, for a featurizer), got {value!r}."
        )
    return value


def _header(value: Any) -> str:
    text = str(value).lower() if value is not None else ""
    if text not in HEADER_CHOICES:
        raise ClientError(
            f"Hyperparameter {HEADER} must be one of {', '.join(HEADER_CHOICES)}, "
            f"got {value!r}."
        )
    return text


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).lower() if value is not None else "none"
    if text not in choices:
        raise ClientError(
            f"Hyperparameter {key} must be one of {', '.join(choices)}, got {value!r}."
        )
    return text


def _columns(value: Any) -> list[int | str]:
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in value
    ):
        raise ClientError(
            f"Hyperparameter {CATEGORICAL_COLUMNS} must be a JSON list of column names "
            f'or indices (0 is the first column), e.g. ["zip", "store"], got {value!r}.'
        )
    return value


def _random_seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ClientError(
            f"Hyperparameter {RANDOM_SEED} must be a whole number >= 0, got {value!r}."
        )
    return value


@dataclass(frozen=True)
class ChannelConfig:
    """One channel of ``inputdataconfig.json`` (or of ``--channel``)."""

    name: str
    input_mode: str = "File"
    content_type: str | None = None
    record_wrapper: str | None = None
    # A local override from --channel: a file or a directory read in File mode.
    override: Path | None = None

    def source(self, paths: SageMakerPaths) -> Path:
        """The directory (File, FastFile), the file, or the FIFO (Pipe) to read."""
        if self.override is not None:
            return self.override
        if self.input_mode == "Pipe":
            return paths.pipe_path(self.name, 0)
        return paths.channel_dir(self.name)

    @property
    def media_type(self) -> str | None:
        """``ContentType`` without parameters, lower case (``text/csv; label_size=1``)."""
        if not self.content_type:
            return None
        return base_type(self.content_type) or None


@dataclass
class TrainingEnvironment:
    """Everything a run needs to know before it reads data."""

    paths: SageMakerPaths
    hyperparameters: Hyperparameters
    channels: dict[str, ChannelConfig]
    current_host: str = "algo-1"
    hosts: list[str] = field(default_factory=lambda: ["algo-1"])
    job_name: str | None = None

    @classmethod
    def load(
        cls,
        paths: SageMakerPaths,
        hp_overrides: dict[str, str] | None = None,
        channel_overrides: dict[str, Path] | None = None,
    ) -> TrainingEnvironment:
        raw = read_json_object(paths.hyperparameters_file, default={})
        raw.update(hp_overrides or {})
        channels = read_channels(paths)
        for name, path in (channel_overrides or {}).items():
            channels[name] = ChannelConfig(name=name, override=Path(path))
        resources = read_json_object(paths.resourceconfig_file, default={})
        current_host = str(resources.get("current_host") or "algo-1")
        hosts = [str(h) for h in resources.get("hosts") or [current_host]]
        return cls(
            paths=paths,
            hyperparameters=Hyperparameters.from_raw(raw),
            channels=channels,
            current_host=current_host,
            hosts=hosts,
            # The one platform variable training reads; SageMaker sets it in the container.
            job_name=conf.get("TRAINING_JOB_NAME"),
        )


def read_json_object(path: Path, default: dict[str, Any]) -> dict[str, Any]:
    """A config file's JSON object; ``default`` when the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return dict(default)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ClientError(f"{path.name} is not valid JSON: {exc} ({path}).") from exc
    if not isinstance(value, dict):
        raise ClientError(
            f"{path.name} must hold a JSON object, got {type(value).__name__} ({path})."
        )
    return value


def read_channels(paths: SageMakerPaths) -> dict[str, ChannelConfig]:
    """Channels from ``inputdataconfig.json``, else inferred from ``input/data``."""
    config = read_json_object(paths.inputdataconfig_file, default={})
    if not paths.inputdataconfig_file.exists():
        return infer_channels(paths)
    channels = {}
    for name, spec in config.items():
        if not isinstance(spec, dict):
            raise ClientError(
                f"inputdataconfig.json: channel {name!r} must be a JSON object, "
                f"got {spec!r}."
            )
        mode = spec.get("TrainingInputMode") or "File"
        if mode not in INPUT_MODES:
            raise ClientError(
                f"Channel {name!r} has TrainingInputMode {mode!r}; expected one of "
                f"{', '.join(INPUT_MODES)}."
            )
        channels[name] = ChannelConfig(
            name=name,
            input_mode=mode,
            content_type=spec.get("ContentType") or None,
            record_wrapper=spec.get("RecordWrapperType") or None,
        )
    return channels


def infer_channels(paths: SageMakerPaths) -> dict[str, ChannelConfig]:
    """No ``inputdataconfig.json``: each directory is a File channel, each FIFO
    ``<name>_<epoch>`` a Pipe channel; manifests and other files are not channels."""
    channels: dict[str, ChannelConfig] = {}
    if not paths.data_dir.is_dir():
        return channels
    for entry in sorted(paths.data_dir.iterdir()):
        if entry.name.endswith("-manifest") or entry.name.startswith("."):
            continue
        if entry.is_dir():
            channels.setdefault(entry.name, ChannelConfig(name=entry.name))
        elif stat.S_ISFIFO(entry.stat().st_mode):
            match = _PIPE_NAME.match(entry.name)
            if match and match["channel"] not in channels:
                name = match["channel"]
                channels[name] = ChannelConfig(name=name, input_mode="Pipe")
    logger.info(
        "No %s: inferred channels %s from %s.",
        paths.inputdataconfig_file.name,
        ", ".join(f"{c.name} ({c.input_mode})" for c in channels.values()) or "none",
        paths.data_dir,
    )
    return channels
