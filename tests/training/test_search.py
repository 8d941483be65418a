"""A hyperparameter search inside one training job, on one host: the real ``train`` on
real SageMaker trees, and the search hyperparameters' checks."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV

from modelapp.paths import SageMakerPaths
from modelapp.registry import load_model
from modelapp.training import ClientError
from modelapp.training.environment import TrainingEnvironment
from modelapp.training.search import SearchSpec
from tests.support.training import file_channel, run_train, sagemaker_tree, write_csv

METRIC = re.compile(r"^#metric (\w+):(\w+)=([-+0-9.eE]+|nan)$", re.M)
GRID = {"max_depth": [1, 3], "min_samples_leaf": [1, 10]}
FOREST = {
    "smserve_estimator": "random_forest",
    "n_estimators": "8",
    "smserve_random_seed": "0",
}


@pytest.fixture(scope="module")
def iris_split():
    X, y = load_iris(return_X_y=True)
    order = np.random.default_rng(1).permutation(len(y))
    X, y = X[order], y[order]
    return (X[:120], y[:120]), (X[120:], y[120:])


def job(
    tmp_path, data, validation=None, estimator=FOREST, space=None, **hyperparameters
):
    """A job's tree; ``space``, a file's text, is ``config/space.json`` in a ``config``
    channel."""
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={**estimator, **hyperparameters},
        channels={
            "train": file_channel(),
            **({"validation": file_channel()} if validation else {}),
            **({"config": file_channel("application/json")} if space else {}),
        },
    )
    write_csv(base / "input/data/train/d.csv", *data)
    if validation:
        write_csv(base / "input/data/validation/d.csv", *validation)
    if space is not None:
        (base / "input/data/config").mkdir(parents=True)
        (base / "input/data/config/space.json").write_text(space)
    return base


def test_grid_search_saves_the_best_estimator_and_the_search(tmp_path, iris_split):
    """The best candidate, refitted on all of train, is the model; metadata.json holds
    every candidate's scores; #metric gains the best cross-validation score; validation
    metrics are computed as without a search.
    docs/training.md, Reserved keys: "a hyperparameter search: `grid`"; "—"; "the
    space"; "JSON: `{"max_depth": [2, 4, 8]}` (names as `set_params` takes them)";
    "`accuracy` (classifier)".
    """
    train, validation = iris_split
    base = job(
        tmp_path,
        train,
        validation,
        smserve_search="grid",
        smserve_search_space=json.dumps(GRID),
        smserve_search_folds="3",
    )

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    expected = GridSearchCV(
        RandomForestClassifier(n_estimators=8, random_state=0),
        GRID,
        cv=3,
        scoring="accuracy",
    ).fit(*train)
    metadata = json.loads(SageMakerPaths(base).metadata_file.read_text())
    search = metadata["search"]
    assert search["kind"] == "grid"
    assert search["scoring"] == "accuracy"
    assert search["folds"] == 3
    assert search["candidates"] == 4
    assert search["hosts"] == 1
    assert search["best_params"] == expected.best_params_
    assert search["best_score"] == pytest.approx(expected.best_score_)
    assert search["seconds"] > 0
    assert [r["rank"] for r in search["results"]] == sorted(
        expected.cv_results_["rank_test_score"]
    )
    assert {"params", "mean", "std", "rank"} <= set(search["results"][0])
    assert metadata["estimator"] == "sklearn.ensemble.RandomForestClassifier"
    for name, value in expected.best_params_.items():
        assert metadata["params"][name] == value
    model = load_model(SageMakerPaths(base).model_dir)
    assert type(model.predictor.model).__name__ == "RandomForestClassifier"
    printed = {f"{c}:{m}": float(v) for c, m, v in METRIC.findall(proc.stdout)}
    assert printed["cv:accuracy"] == pytest.approx(expected.best_score_, abs=1e-6)
    assert printed["validation:accuracy"] == pytest.approx(
        expected.best_estimator_.score(*validation), abs=1e-6
    )


def test_random_search_with_distributions_in_a_pipeline(tmp_path, iris_split):
    """A random search samples the given number of candidates from distributions, with
    pipeline steps' parameters named as set_params takes them, and a chosen scorer.
    docs/training.md, Reserved keys: "`{"loguniform": [a, b]}`"; "candidates the random
    kinds draw"; "a scikit-learn scorer name".
    """
    base = job(
        tmp_path,
        iris_split[0],
        estimator={"smserve_estimator": '["standard_scaler", "logistic_regression"]'},
        smserve_search="random",
        smserve_search_space=json.dumps(
            {"logisticregression__C": {"loguniform": [0.01, 10]}}
        ),
        smserve_search_candidates="3",
        smserve_search_folds="2",
        smserve_search_scoring="f1_macro",
    )

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    search = json.loads(SageMakerPaths(base).metadata_file.read_text())["search"]
    assert search["candidates"] == 3
    assert search["scoring"] == "f1_macro"
    assert 0.01 <= search["best_params"]["logisticregression__C"] <= 10
    assert "#metric cv:f1_macro=" in proc.stdout


def test_successive_halving(tmp_path, iris_split):
    """A halving search runs round by round; each kept result says its round.
    docs/training.md, Reserved keys: "`halving_grid`".
    """
    base = job(
        tmp_path,
        iris_split[0],
        smserve_search="halving_grid",
        smserve_search_space=json.dumps(GRID),
        smserve_search_folds="2",
    )

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    search = json.loads(SageMakerPaths(base).metadata_file.read_text())["search"]
    assert search["kind"] == "halving_grid"
    assert {r["iteration"] for r in search["results"]} >= {0}


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        (
            {"smserve_search": "grid", "smserve_search_space": '{"max_depth": [1, 3}'},
            "smserve_search_space is not valid JSON",
        ),
        (
            {"smserve_search": "grid", "smserve_search_space": '{"max_dept": [1, 3]}'},
            "smserve_search_space names 'max_dept', which RandomForestClassifier does "
            "not have",
        ),
        (
            {"smserve_search": "grid", "smserve_search_space": '{"max_depth": []}'},
            "'max_depth' must be a non-empty list of values",
        ),
        (
            {
                "smserve_search": "grid",
                "smserve_search_space": json.dumps(GRID),
                "smserve_search_scoring": "acuracy",
            },
            "'acuracy' is not a scikit-learn scorer",
        ),
        ({"smserve_search_space": json.dumps(GRID)}, "smserve_search is not set"),
    ],
)
def test_bad_search_hyperparameters_fail_with_exit_1(
    tmp_path, iris_split, hyperparameters, message
):
    """A mistake in the search's hyperparameters is the user's to fix: exit 1, the
    message in output/failure, no model.
    docs/training.md, Distributed failures: "a search hyperparameter is wrong (malformed
    JSON, unknown parameter name, empty list, unknown scorer or kind)"; "before any data
    is read"; "the message says what to fix". And, through ``./train`` too: "a path
    that is not `<channel>/<file>`: no channel"; "absolute"; "or with `..`"; ""must be
    <channel>/<path to a JSON file in it>""; "a channel the job does not have";
    ""names the channel 'x', which the job does not have (its channels: ...)"";
    "`train`"; ""whose every file smserve reads as data: put the space in a channel of
    its own""; "the JSON is not a space (e.g. a list of numbers, an empty list of
    values)"; "as for `smserve_search_space`"; "naming the file".
    """
    base = job(tmp_path, iris_split[0], **hyperparameters)

    proc = run_train(base)

    assert proc.returncode == 1, proc.stderr
    failure = (base / "output/failure").read_text()
    assert message in failure
    assert "Traceback" not in failure
    assert not (base / "model/model.joblib").exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"smserve_search": "bayes"}, "must be one of grid, random, halving_grid"),
        ({"smserve_search": "grid"}, "smserve_search_space is missing"),
        (
            {"smserve_search": "grid", "smserve_search_space": [1, 2]},
            "must be a JSON object of parameter -> values",
        ),
        (
            {
                "smserve_search": "random",
                "smserve_search_space": {"C": {"loguniform": [0, 1]}},
            },
            "'C' must be a non-empty list of values, or",
        ),
        (
            {
                "smserve_search": "grid",
                "smserve_search_space": {"C": [1]},
                "smserve_search_folds": 1,
            },
            "smserve_search_folds must be a whole number >= 2",
        ),
        (
            {
                "smserve_search": "random",
                "smserve_search_space": {"C": [1]},
                "smserve_search_candidates": "many",
            },
            "smserve_search_candidates must be a whole number >= 1",
        ),
    ],
)
def test_search_spec_checks(values, message):
    """Every search hyperparameter is checked before any data is read."""
    with pytest.raises(ClientError, match=re.escape(message)):
        SearchSpec.from_hyperparameters(values)


def test_no_search_without_its_hyperparameters():
    assert SearchSpec.from_hyperparameters({}) is None


def test_grid_of_several_spaces():
    """A list of objects is several grids, as GridSearchCV takes them."""
    spec = SearchSpec.from_hyperparameters(
        {"smserve_search": "grid", "smserve_search_space": [{"C": [1]}, {"C": [2]}]}
    )
    assert spec.space == [{"C": [1]}, {"C": [2]}]


def test_the_admin_shows_a_search():
    """The training run's page renders the search: settings, then a row per candidate."""
    from modelapp.admin import search_table

    html = search_table(
        {
            "kind": "grid",
            "best_params": {"max_depth": 3},
            "results": [
                {"params": {"max_depth": 3}, "mean": 0.96, "std": 0.01, "rank": 1},
                {"params": {"max_depth": 1}, "mean": 0.66, "std": 0.02, "rank": 2},
            ],
        }
    )

    assert "best_params.max_depth" in html
    assert html.count("<tr><td>") == 2
    assert "{&quot;max_depth&quot;: 3}" in html
    assert search_table({}) == "no search"


# Hand-picked candidates: a space longer than SageMaker's 256 characters for a value.
CANDIDATES = [
    {"max_depth": [1], "min_samples_leaf": [1], "max_features": ["sqrt"]},
    {"max_depth": [3], "min_samples_leaf": [10], "max_features": ["sqrt"]},
    {"max_depth": [3], "min_samples_leaf": [1], "max_features": [None]},
    {"max_depth": [None], "min_samples_leaf": [5], "max_features": [0.5]},
]


def test_the_space_from_a_file_in_a_channel(tmp_path, iris_split):
    """``smserve_search_space_file`` reads a space too long for a hyperparameter from a
    channel of its own (``config/space.json``); the search is the one the file spells,
    and the channel is not taken for data.
    docs/training.md, Reserved keys: "unset"; "the space from a JSON file instead (same
    content as `smserve_search_space`)"; "for a space longer than SageMaker's 256
    characters per hyperparameter value: `<channel>/<path>`"; "a file of a File-mode
    channel of its own"; "e.g. `config/space.json` ([The search space in a
    file](#the-search-space-in-a-file))".
    """
    space = json.dumps(CANDIDATES)
    assert len(space) > 256
    base = job(
        tmp_path,
        iris_split[0],
        space=space,
        smserve_search="grid",
        smserve_search_space_file="config/space.json",
        smserve_search_folds="3",
    )

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    expected = GridSearchCV(
        RandomForestClassifier(n_estimators=8, random_state=0),
        CANDIDATES,
        cv=3,
        scoring="accuracy",
    ).fit(*iris_split[0])
    search = json.loads(SageMakerPaths(base).metadata_file.read_text())["search"]
    assert search["candidates"] == len(CANDIDATES)
    assert search["best_params"] == expected.best_params_
    assert search["best_score"] == pytest.approx(expected.best_score_)
    assert "Search space read from" in proc.stderr
    assert "Ignoring channel" not in proc.stderr


@pytest.mark.parametrize(
    ("space", "hyperparameters", "message"),
    [
        (
            json.dumps(GRID),
            {"smserve_search_space_file": "config/spaces.json"},
            "smserve_search_space_file: there is no file ",
        ),
        (
            '{"max_depth": [1, 3}',
            {"smserve_search_space_file": "config/space.json"},
            "config/space.json) is not valid JSON: Expecting",
        ),
        (
            json.dumps(GRID),
            {
                "smserve_search_space_file": "config/space.json",
                "smserve_search_space": json.dumps(GRID),
            },
            "smserve_search_space and smserve_search_space_file are both set",
        ),
        *(
            (
                json.dumps(GRID),
                {"smserve_search_space_file": path},
                message,
            )
            for path, message in (
                ("space.json", "must be <channel>/<path to a JSON file in it>"),
                ("/config/space.json", "must be <channel>/<path"),
                ("config/../train/d.csv", "must be <channel>/<path"),
                ("search/space.json", "names the channel 'search', which the job"),
                ("train/d.csv", "whose every file smserve reads as data"),
            )
        ),
        (
            json.dumps({"C": []}),
            {"smserve_search_space_file": "config/space.json"},
            "space.json (smserve_search_space_file): 'C'",
        ),
    ],
    ids=[
        "missing",
        "not-json",
        "both-ways",
        "no-channel",
        "absolute",
        "dot-dot",
        "unknown-channel",
        "data-channel",
        "wrong-shape",
    ],
)
def test_a_bad_space_file_fails_with_exit_1(
    tmp_path, iris_split, space, hyperparameters, message
):
    """A missing file, a file that is not JSON, or the space given both ways: exit 1
    with the reason in output/failure, no model.
    docs/training.md, Space file failures: "both `smserve_search_space` and
    `smserve_search_space_file`"; ""... are both set: give the space one way""; "no such
    file in the channel"; ""there is no file /opt/ml/input/data/config/space.json" (and
    the FullyReplicated hint)"; "the file is not JSON"; ""... (path) is not valid JSON:
    <the JSON error>"". docs/training.md, Distributed failures: "or its
    `smserve_search_space_file` (missing, not JSON, both ways given)"; "before any data
    is read"; "the message says what to fix". And, through ``./train`` too: "a path
    that is not `<channel>/<file>`: no channel"; "absolute"; "or with `..`"; ""must be
    <channel>/<path to a JSON file in it>""; "a channel the job does not have";
    ""names the channel 'x', which the job does not have (its channels: ...)"";
    "`train`"; ""whose every file smserve reads as data: put the space in a channel of
    its own""; "the JSON is not a space (e.g. a list of numbers, an empty list of
    values)"; "as for `smserve_search_space`"; "naming the file".
    """
    base = job(
        tmp_path, iris_split[0], space=space, smserve_search="grid", **hyperparameters
    )

    proc = run_train(base)

    assert proc.returncode == 1, proc.stderr
    failure = (base / "output/failure").read_text()
    assert message in failure
    assert "Traceback" not in failure
    assert not (base / "model/model.joblib").exists()


@pytest.mark.parametrize("channel", ["validation", "test"])
def test_a_space_file_in_a_scored_channel_fails_with_exit_1(
    tmp_path, iris_split, channel
):
    """A space file in a channel smserve reads as data, other than train: exit 1 naming
    why, no model.
    docs/training.md, Space file failures: "`validation` or `test`"; ""whose every file
    smserve reads as data: put the space in a channel of its own"".
    """
    base = job(
        tmp_path,
        iris_split[0],
        space=json.dumps(GRID),
        smserve_search="grid",
        smserve_search_space_file=f"{channel}/d.csv",
    )
    config_path = base / "input/config/inputdataconfig.json"
    config = json.loads(config_path.read_text())
    config[channel] = config["train"]
    config_path.write_text(json.dumps(config))
    write_csv(base / f"input/data/{channel}/d.csv", *iris_split[1])

    proc = run_train(base)

    assert proc.returncode == 1, proc.stderr
    failure = (base / "output/failure").read_text()
    assert (
        f"names the channel '{channel}', whose every file smserve reads as data: put"
        " the space in a channel of its own"
    ) in failure, failure
    assert "Traceback" not in failure
    assert not (base / "model/model.joblib").exists()


@pytest.mark.parametrize(
    ("path", "mode", "message"),
    [
        ("space.json", "File", "must be <channel>/<path to a JSON file in it>"),
        ("/config/space.json", "File", "must be <channel>/<path"),
        ("config/../train/d.csv", "File", "must be <channel>/<path"),
        ("search/space.json", "File", "names the channel 'search', which the job"),
        ("train/d.csv", "File", "whose every file smserve reads as data"),
        ("config/space.json", "Pipe", "is in Pipe mode"),
    ],
)
def test_space_file_paths_are_checked(tmp_path, iris_split, path, mode, message):
    """The path is ``<channel>/<file>`` inside a File-mode channel that is not a data
    channel, and never leaves it."""
    base = job(tmp_path, iris_split[0], space=json.dumps(GRID))
    config = json.loads((base / "input/config/inputdataconfig.json").read_text())
    config["config"]["TrainingInputMode"] = mode
    (base / "input/config/inputdataconfig.json").write_text(json.dumps(config))
    env = TrainingEnvironment.load(
        SageMakerPaths(base),
        {"smserve_search": "grid", "smserve_search_space_file": path},
    )

    with pytest.raises(ClientError, match=re.escape(message)):
        SearchSpec.of(env)


def test_a_space_file_of_the_wrong_shape(tmp_path, iris_split):
    """The file's JSON is checked as the hyperparameter's is, naming the file."""
    base = job(tmp_path, iris_split[0], space=json.dumps({"C": []}))
    env = TrainingEnvironment.load(
        SageMakerPaths(base),
        {"smserve_search": "grid", "smserve_search_space_file": "config/space.json"},
    )

    with pytest.raises(
        ClientError, match=r"space\.json \(smserve_search_space_file\): 'C'"
    ):
        SearchSpec.of(env)


def test_halving_random_on_a_regressor_with_the_defaults(tmp_path):
    """docs/training.md, Reserved keys, through the real ``./train``: "`halving_random`
    ([Distributed training](#distributed-training-searches-and-forests-over-the-jobs-hosts))";
    "random kinds also `{"uniform": [a, b]}`"; "`{"randint": [a, b]}`"; and, none of
    them given, the defaults "`10`" candidates, "`5`" folds, "cross-validation folds",
    and the scorer "`r2` (regressor)"."""
    rng = np.random.default_rng(3)
    X = rng.random((200, 3))
    y = X @ np.array([3.0, -2.0, 1.0]) + rng.normal(0, 0.05, 200)
    base = job(
        tmp_path,
        (X, np.round(y, 5)),
        estimator={
            "smserve_estimator": "decision_tree_regressor",
            "smserve_random_seed": "0",
        },
        smserve_search="halving_random",
        smserve_search_space=json.dumps(
            {
                "max_depth": {"randint": [2, 8]},
                "min_impurity_decrease": {"uniform": [0, 0.01]},
            }
        ),
    )

    proc = run_train(base)

    assert proc.returncode == 0, proc.stderr
    metadata = json.loads(SageMakerPaths(base).metadata_file.read_text())
    search = metadata["search"]
    assert (search["kind"], search["scoring"], search["folds"]) == (
        "halving_random",
        "r2",
        5,
    )
    # The first round fits every candidate drawn; later rounds the best of them.
    first_round = [r for r in search["results"] if r["iteration"] == 0]
    assert len(first_round) == 10
    assert search["candidates"] == len(search["results"]) > 10
    for result in search["results"]:
        assert 2 <= result["params"]["max_depth"] <= 9
        assert isinstance(result["params"]["max_depth"], int)
        assert 0 <= result["params"]["min_impurity_decrease"] <= 0.01
    assert len({r["params"]["min_impurity_decrease"] for r in search["results"]}) > 3
    assert "#metric cv:r2=" in proc.stdout


def test_a_bad_search_fails_every_host_alike(tmp_path, iris_split):
    """docs/training.md, Distributed failures: a wrong search hyperparameter gives "exit
    1 on every host": a host that is not the leader (algo-2 of two) fails with the same
    message before it looks for the cluster, instead of exiting 0 as a non-leader
    does."""
    base = sagemaker_tree(
        tmp_path,
        hyperparameters={
            **FOREST,
            "smserve_search": "grid",
            "smserve_search_space": '{"max_depth": []}',
        },
        channels={"train": file_channel()},
        hosts=["algo-1", "algo-2"],
        current_host="algo-2",
    )
    write_csv(base / "input/data/train/d.csv", *iris_split[0])

    proc = run_train(base)

    assert proc.returncode == 1, proc.stderr
    assert (
        "'max_depth' must be a non-empty list of values"
        in (base / "output/failure").read_text()
    )
