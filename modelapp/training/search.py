"""A hyperparameter search inside one training job: its hyperparameters, the scikit-learn
search they build, and what the job keeps of it.

``smserve_search`` picks the kind (``grid``, ``random``, ``halving_grid``,
``halving_random``); ``smserve_search_space`` is the space as JSON, parameter names as
``set_params`` takes them (``max_depth``, ``randomforestclassifier__max_depth``); values
are lists, or for the random kinds also ``{"uniform": [low, high]}``,
``{"loguniform": [low, high]}``, ``{"randint": [low, high]}`` (high excluded).
SageMaker caps a hyperparameter's value at 256 characters, so a wide space can come from a
JSON file instead: ``smserve_search_space_file`` is ``<channel>/<path>``, a file of one of
the job's File-mode channels other than the data's (``config/space.json``).
``smserve_search_candidates`` is the random kinds' number of candidates,
``smserve_search_folds`` the cross-validation folds, ``smserve_search_scoring`` a
scikit-learn scorer name (default: ``accuracy`` for a classifier, ``r2`` for a regressor).

The search is a plain ``GridSearchCV`` (or its siblings) with ``n_jobs=-1``: on one host
joblib runs it on every core; on several, ``cluster`` puts joblib's calls on the Dask
cluster. The best estimator, refitted on all of ``train``, is the model; ``summary()`` is
what ``metadata.json`` keeps under ``search``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modelapp.metadata import json_safe
from modelapp.training.environment import (
    KNOWN_CHANNELS,
    RESERVED,
    SEARCH,
    SEARCH_CANDIDATES,
    SEARCH_FOLDS,
    SEARCH_SCORING,
    SEARCH_SPACE,
    SEARCH_SPACE_FILE,
    TrainingEnvironment,
)
from modelapp.training.errors import ClientError
from modelapp.training.estimators import valid_parameters

logger = logging.getLogger(__name__)

# The search's hyperparameters (their defaults: environment.RESERVED).
KIND, SPACE, SPACE_FILE = SEARCH, SEARCH_SPACE, SEARCH_SPACE_FILE
CANDIDATES, FOLDS, SCORING = SEARCH_CANDIDATES, SEARCH_FOLDS, SEARCH_SCORING
KEYS = (KIND, SPACE, SPACE_FILE, CANDIDATES, FOLDS, SCORING)
KINDS = ("grid", "random", "halving_grid", "halving_random")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
DEFAULT_SCORING = {"classification": "accuracy", "regression": "r2"}
# The key of metadata.json (and of the admin's training run) that holds summary().
METADATA_KEY = "search"
# metadata.json keeps the best candidates, not all of a wide search.
KEPT_RESULTS = 50


@dataclass(frozen=True)
class SearchSpec:
    """A search as the hyperparameters describe it, checked."""

    kind: str
    space: list[dict[str, Any]]
    candidates: int = RESERVED[CANDIDATES]
    folds: int = RESERVED[FOLDS]
    scoring: str | None = None
    # The channel smserve_search_space_file read the space from, if any.
    space_channel: str | None = None

    @property
    def random(self) -> bool:
        return self.kind.endswith("random")

    @classmethod
    def of(cls, env: TrainingEnvironment) -> SearchSpec | None:
        """The job's search: its hyperparameters, the space read from the channel file
        ``smserve_search_space_file`` names when given."""
        return cls.from_hyperparameters(env.hyperparameters.owned, env)

    @classmethod
    def from_hyperparameters(
        cls, values: dict[str, Any], env: TrainingEnvironment | None = None
    ) -> SearchSpec | None:
        """None when the job has no search; a ``ClientError`` saying what to fix when the
        values are wrong. ``env`` finds the file of ``smserve_search_space_file``."""
        given = {key: value for key, value in values.items() if value is not None}
        kind = given.get(KIND)
        if kind is None:
            others = sorted(set(given) & (set(KEYS) - {KIND}))
            if others:
                raise ClientError(
                    f"Hyperparameter(s) {', '.join(others)} describe a search, but "
                    f"{KIND} is not set: set it to one of {', '.join(KINDS)}."
                )
            return None
        if kind not in KINDS:
            raise ClientError(
                f"Hyperparameter {KIND} must be one of {', '.join(KINDS)}, got {kind!r}."
            )
        random = kind.endswith("random")
        space_channel = None
        if SPACE_FILE in given:
            if SPACE in given:
                raise ClientError(
                    f"Hyperparameters {SPACE} and {SPACE_FILE} are both set: give the "
                    f"space one way, {SPACE_FILE} when it is longer than SageMaker's "
                    "256 characters for a hyperparameter."
                )
            if env is None:
                raise ValueError(f"{SPACE_FILE} needs the training environment")
            space_channel, path = space_file(given[SPACE_FILE], env)
            space = _grids(
                read_space_file(path), random, f"The file {path} ({SPACE_FILE})"
            )
        else:
            space = _space(given.get(SPACE), random)
        spec = cls(
            kind=kind,
            space=space,
            space_channel=space_channel,
            candidates=_whole(given, CANDIDATES, minimum=1),
            folds=_whole(given, FOLDS, minimum=2),
            scoring=given.get(SCORING),
        )
        if spec.scoring is not None and not isinstance(spec.scoring, str):
            raise ClientError(
                f"Hyperparameter {SCORING} must be a scikit-learn scorer name such as "
                f"accuracy, f1_macro, r2, neg_root_mean_squared_error; got "
                f"{spec.scoring!r}."
            )
        return spec

    def build(self, estimator: Any, task: str | None, random_seed: int | None) -> Any:
        """The scikit-learn search over ``estimator``; parameter names and the scorer are
        checked here, so a typo fails before any fit."""
        from sklearn.experimental import enable_halving_search_cv  # noqa: F401
        from sklearn.model_selection import (
            GridSearchCV,
            HalvingGridSearchCV,
            HalvingRandomSearchCV,
            RandomizedSearchCV,
        )

        known = set(estimator.get_params(deep=True))
        for grid in self.space:
            unknown = sorted(set(grid) - known)
            if unknown:
                raise ClientError(
                    f"{SPACE} names {', '.join(map(repr, unknown))}, which "
                    f"{type(estimator).__name__} does not have. "
                    f"{valid_parameters(estimator)}"
                )
        scoring = self.scoring or DEFAULT_SCORING.get(task or "")
        if scoring is not None:
            _check_scorer(scoring)
        space: Any = self.space if len(self.space) > 1 else self.space[0]
        common = {"scoring": scoring, "cv": self.folds, "n_jobs": -1, "refit": True}
        if self.kind == "grid":
            return GridSearchCV(estimator, space, **common)
        if self.kind == "random":
            return RandomizedSearchCV(
                estimator,
                space,
                n_iter=self.candidates,
                random_state=random_seed,
                **common,
            )
        if self.kind == "halving_grid":
            return HalvingGridSearchCV(
                estimator, space, random_state=random_seed, **common
            )
        return HalvingRandomSearchCV(
            estimator,
            space,
            n_candidates=self.candidates,
            random_state=random_seed,
            **common,
        )


EXAMPLE = '{"max_depth": [2, 4, 8], "min_samples_leaf": [1, 5]}'


def _space(value: Any, random: bool) -> list[dict[str, Any]]:
    example = EXAMPLE
    if value is None:
        raise ClientError(
            f"Hyperparameter {SPACE} is missing: give the parameters to search as a "
            f"JSON object, e.g. {example} (or, longer than 256 characters, in a file: "
            f"{SPACE_FILE})."
        )
    if isinstance(value, str):
        # Not JSON, else the hyperparameter's conversion would have decoded it.
        try:
            json.loads(value)
        except ValueError as exc:
            raise ClientError(
                f"Hyperparameter {SPACE} is not valid JSON: {exc}. Give a JSON object "
                f"such as {example}."
            ) from exc
    return _grids(value, random, f"Hyperparameter {SPACE}")


def _grids(value: Any, random: bool, where: str) -> list[dict[str, Any]]:
    """The space's grids checked; ``where`` names its source in messages."""
    grids = value if isinstance(value, list) and value else [value]
    if not all(isinstance(grid, dict) and grid for grid in grids):
        raise ClientError(
            f"{where} must be a JSON object of parameter -> values (or a list of such "
            f"objects), e.g. {EXAMPLE}; got {_short(value)}."
        )
    return [
        {name: _values(name, values, random, where) for name, values in grid.items()}
        for grid in grids
    ]


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def space_file(value: Any, env: TrainingEnvironment) -> tuple[str, Path]:
    """``smserve_search_space_file`` checked: ``<channel>/<path>`` inside one of the
    job's File-mode channels that is not a data channel; (channel, file path)."""
    example = "config/space.json (the file space.json of a channel named config)"
    parts = PurePosixPath(value).parts if isinstance(value, str) else ()
    if len(parts) < 2 or parts[0] == "/" or ".." in parts:
        raise ClientError(
            f"Hyperparameter {SPACE_FILE} must be <channel>/<path to a JSON file in "
            f"it>, e.g. {example}; got {value!r}."
        )
    channel, *rest = parts
    config = env.channels.get(channel)
    if config is None:
        raise ClientError(
            f"Hyperparameter {SPACE_FILE} names the channel {channel!r}, which the job "
            f"does not have (its channels: {', '.join(sorted(env.channels)) or 'none'}). "
            f"Give the file as a channel of its own, e.g. {example}."
        )
    if channel in KNOWN_CHANNELS:
        raise ClientError(
            f"Hyperparameter {SPACE_FILE} names the channel {channel!r}, whose every "
            f"file smserve reads as data: put the space in a channel of its own, e.g. "
            f"{example}."
        )
    if config.input_mode == "Pipe":
        raise ClientError(
            f"Hyperparameter {SPACE_FILE}: channel {channel!r} is in Pipe mode, a "
            "stream with no files: give it TrainingInputMode File."
        )
    return channel, config.source(env.paths).joinpath(*rest)


def read_space_file(path: Path) -> Any:
    """The JSON in ``path``; a ``ClientError`` when it is missing or not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ClientError(
            f"Hyperparameter {SPACE_FILE}: there is no file {path}. Check the path "
            "inside the channel, and that the channel is FullyReplicated (every host "
            "reads the space)."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(
            f"Hyperparameter {SPACE_FILE}: {path} could not be read as text ({exc})."
        ) from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ClientError(
            f"{SPACE_FILE} ({path}) is not valid JSON: {exc}. It must hold a JSON "
            f"object such as {EXAMPLE}."
        ) from exc
    logger.info("Search space read from %s (%d bytes).", path, len(text))
    return value


def _values(name: str, values: Any, random: bool, where: str) -> Any:
    if isinstance(values, list) and values:
        return values
    if random and isinstance(values, dict) and len(values) == 1:
        ((kind, bounds),) = values.items()
        if (
            kind in DISTRIBUTIONS
            and isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, int | float) and math.isfinite(b) for b in bounds)
            and bounds[0] < bounds[1]
            and (kind != "loguniform" or bounds[0] > 0)
        ):
            from scipy import stats

            low, high = bounds
            if kind == "uniform":
                return stats.uniform(low, high - low)
            if kind == "loguniform":
                return stats.loguniform(low, high)
            return stats.randint(int(low), int(high))
    shapes = "a non-empty list of values"
    if random:
        shapes += (
            ', or {"uniform": [low, high]}, {"loguniform": [low, high]} (low > 0), '
            '{"randint": [low, high]} with low < high'
        )
    raise ClientError(f"{where}: {name!r} must be {shapes}; got {values!r}.")


def _whole(values: dict[str, Any], key: str, minimum: int) -> int:
    value = values.get(key, RESERVED[key])
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ClientError(
            f"Hyperparameter {key} must be a whole number >= {minimum}, got {value!r}."
        )
    return value


def _check_scorer(name: str) -> None:
    from sklearn.metrics import get_scorer, get_scorer_names

    try:
        get_scorer(name)
    except ValueError as exc:
        raise ClientError(
            f"Hyperparameter {SCORING}: {name!r} is not a scikit-learn scorer. Valid "
            f"names: {', '.join(get_scorer_names())}."
        ) from exc


def metric_name(search: Any) -> str:
    """The ``#metric`` name of the best cross-validation score: ``cv:accuracy``."""
    scoring = search.scoring if isinstance(search.scoring, str) else "score"
    return f"cv:{scoring}"


def summary(
    spec: SearchSpec, search: Any, seconds: float, hosts: int
) -> dict[str, Any]:
    """What ``metadata.json`` keeps of a fitted search (JSON-safe): the kind, scoring and
    folds, every candidate's mean and std score (the best ``KEPT_RESULTS`` of them, by
    rank), the best parameters and score, the time it took and on how many hosts."""
    results = search.cv_results_
    order = sorted(
        range(len(results["params"])), key=lambda i: results["rank_test_score"][i]
    )
    kept = [
        {
            "params": results["params"][i],
            "mean": results["mean_test_score"][i],
            "std": results["std_test_score"][i],
            "rank": results["rank_test_score"][i],
            **({"iteration": results["iter"][i]} if "iter" in results else {}),
        }
        for i in order[:KEPT_RESULTS]
    ]
    return json_safe(
        {
            "kind": spec.kind,
            "scoring": search.scoring if isinstance(search.scoring, str) else None,
            "folds": spec.folds,
            "candidates": len(results["params"]),
            "best_params": search.best_params_,
            "best_score": search.best_score_,
            "seconds": round(seconds, 3),
            "hosts": hosts,
            "results": kept,
        }
    )
