"""``SAGEMAKER_INFERENCE_OUTPUT``: the keys a deployment names, in every format, through
the real server; the unset variable's answers unchanged; Clarify's request and answer
shapes; a multi-model endpoint. Every combination of keys is covered in-process (the
inference core, ``predictor.invoke`` and the renderers), where starting a server for each
would cost minutes.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from http import HTTPStatus

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LinearRegression, LogisticRegression

from modelapp import outputs
from modelapp.parsers import CSVParser, JSONLinesParser
from modelapp.predictors import ModelLoadError, SklearnPredictor
from modelapp.renderers import CSVRenderer, JSONLinesRenderer, JSONRenderer, NPYRenderer
from tests.support.inference_scripts import DEFAULTS_PY
from tests.support.models import write_model
from tests.support.script_mode import source_dir
from tests.support.servers import ServeProcess

CSV, JSON, JSONL, NPY = (
    "text/csv",
    "application/json",
    "application/jsonlines",
    "application/x-npy",
)
RENDERERS = {
    CSV: CSVRenderer,
    JSON: JSONRenderer,
    JSONL: JSONLinesRenderer,
    NPY: NPYRenderer,
}
ALL_KEYS = "labels,probabilities,transform,predicted_label,probability"
KEYS_ALL = ("predicted_label", "probability", "probabilities", "labels", "transform")

X, Y = load_iris(return_X_y=True)
SPECIES = np.array(["setosa", "versicolor", "virginica"])[Y]
ROWS = X[[0, 50, 100, 120]]
CSV_BODY = "".join(",".join(map(repr, row)) + "\n" for row in ROWS.tolist()).encode()
# Clarify's records: ContentTemplate '{"features":$features}', one per line.
CLARIFY_BODY = b"".join(
    json.dumps({"features": row}).encode() + b"\n" for row in ROWS.tolist()
)


def species_model() -> LinearDiscriminantAnalysis:
    """Three text labels, predict_proba and transform."""
    return LinearDiscriminantAnalysis().fit(X, SPECIES)


def binary_model() -> LogisticRegression:
    """Labels 0 and 1."""
    return LogisticRegression(max_iter=500).fit(X, (Y == 1).astype(int))


def regressor() -> LinearRegression:
    return LinearRegression().fit(X[:, 1:], X[:, 0])


def start(factory, name: str, model, env: dict[str, str], expect: int = 200):
    base = factory.mktemp(f"{name}b")
    write_model(base, model)
    server = ServeProcess(base, factory.mktemp(f"{name}w"), env=env, workers=1)
    return server.start(expect)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The species model, the variable unset."""
    server = start(tmp_path_factory, "plain", species_model(), {})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def species(tmp_path_factory):
    """The species model answering every key, in an order of the deployment's; with
    the speed tricks off (DRF's own Response renders), where the other servers have
    them on."""
    env = {"SAGEMAKER_INFERENCE_OUTPUT": ALL_KEYS, "SMSERVE_FAST_PATHS_OFF": "all"}
    server = start(tmp_path_factory, "spec", species_model(), env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clarify(tmp_path_factory):
    """A binary classifier set up for Clarify: the label, then its probability; an
    upper-case, spaced list as a user might write it; SUPPORTED listing more."""
    env = {
        "SAGEMAKER_INFERENCE_OUTPUT": "PREDICTED_LABEL, probability",
        "SAGEMAKER_INFERENCE_SUPPORTED": "predicted_label,probability,probabilities",
    }
    server = start(tmp_path_factory, "clar", binary_model(), env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    # A body over 1 KB is read, predicted and rendered a chunk at a time.
    env = {"SAGEMAKER_INFERENCE_OUTPUT": "predicted_label", "SMSERVE_CHUNK_KB": "1"}
    server = start(tmp_path_factory, "reg", regressor(), env)
    yield server
    server.stop()


def invoke(server, body: bytes, content_type: str, accept: str, **headers: str):
    return server.request(
        "POST",
        "/invocations",
        body,
        {"Content-Type": content_type, "Accept": accept, **headers},
    )


def read_npy(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body), allow_pickle=False)


@pytest.mark.server
def test_unset_answers_are_byte_for_byte_unchanged(plain):
    """The variable unset: the label alone, in each format exactly as before."""
    labels = species_model().predict(ROWS).tolist()
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(labels), allow_pickle=False)
    expected = {
        CSV: "".join(f"{label}\n" for label in labels).encode(),
        JSON: json.dumps({"predictions": labels}, separators=(",", ":")).encode(),
        JSONL: "".join(f'"{label}"\n' for label in labels).encode(),
        NPY: buffer.getvalue(),
    }
    for accept, body in expected.items():
        status, headers, data = invoke(plain, CSV_BODY, CSV, accept)
        assert status == HTTPStatus.OK, data
        assert headers["content-type"] == accept
        assert headers["x-amzn-sagemaker-custom-attributes"] == "method=predict"
        assert data == body, accept


@pytest.mark.server
def test_the_method_attribute_still_overrides_the_keys(plain, species):
    """A request's ``method=...`` answers that method alone, byte for byte what the
    server without the variable answers."""
    for accept, method in itertools.product(RENDERERS, ("predict", "predict_proba")):
        attribute = {"X-Amzn-SageMaker-Custom-Attributes": f"method={method}"}
        answered = invoke(species, CSV_BODY, CSV, accept, **attribute)
        assert answered[0] == HTTPStatus.OK
        assert answered[2] == invoke(plain, CSV_BODY, CSV, accept, **attribute)[2]


@pytest.mark.server
def test_every_key_in_the_deployments_order(species):
    """CSV one line per record, the keys in the order given, a list one quoted field
    in Python's notation; JSON ``{"predictions": [{key: value}]}``; JSON Lines one
    object per record; NPY refuses several keys with a 406 that says so: "a format
    that cannot carry the keys SAGEMAKER_INFERENCE_OUTPUT names (NPY: one key of
    numbers)".

    Each key (docs/serving.md): predicted_label "the model's predict (a label or a
    regressor's value)"; probability with "more labels: the predicted label's (the
    largest)"; probabilities "predict_proba's row in labels order"; labels "the
    classifier's labels (classes_) on every record"; transform "the model's transform
    row"."""
    model = species_model()
    proba = model.predict_proba(ROWS)
    keys = ALL_KEYS.split(",")
    status, headers, data = invoke(species, CSV_BODY, CSV, JSON)
    assert status == HTTPStatus.OK, data
    assert (
        headers["x-amzn-sagemaker-custom-attributes"]
        == "method=predict_proba+transform+predict"
    )
    predictions = json.loads(data)["predictions"]
    assert [list(p) for p in predictions] == [keys] * len(ROWS)
    for record, p, label, row in zip(
        predictions, proba, model.predict(ROWS), model.transform(ROWS), strict=True
    ):
        assert record["labels"] == ["setosa", "versicolor", "virginica"]
        assert record["probabilities"] == pytest.approx(p.tolist(), abs=1e-6)
        assert record["transform"] == pytest.approx(row.tolist(), abs=1e-6)
        assert record["predicted_label"] == label
        # Three labels: the predicted one's probability.
        assert record["probability"] == pytest.approx(p.max(), abs=1e-6)

    status, headers, data = invoke(species, CSV_BODY, CSV, JSONL)
    assert headers["content-type"] == JSONL
    lines = data.decode().splitlines()
    assert [json.loads(line) for line in lines] == predictions

    status, headers, data = invoke(species, CSV_BODY, CSV, CSV)
    assert headers["content-type"] == CSV
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert len(rows) == len(ROWS)
    assert all(len(row) == 5 for row in rows)
    first = data.decode().splitlines()[0]
    assert first.startswith("\"['setosa', 'versicolor', 'virginica']\",\"[")
    for row, record in zip(rows, predictions, strict=True):
        assert row[0] == str(record["labels"])
        assert json.loads(row[1]) == record["probabilities"]
        assert json.loads(row[2]) == record["transform"]
        assert row[3] == record["predicted_label"]
        assert float(row[4]) == record["probability"]

    status, headers, data = invoke(species, CSV_BODY, CSV, NPY)
    assert status == HTTPStatus.NOT_ACCEPTABLE
    assert json.loads(data) == {
        "detail": "application/x-npy carries one output of numbers, but "
        f"SAGEMAKER_INFERENCE_OUTPUT names {', '.join(keys)}: ask for text/csv, "
        "application/json or application/jsonlines.",
        "code": "not_acceptable",
    }


@pytest.mark.server
def test_clarify_requests_and_answers(clarify):
    """Clarify's JSON Lines records: "{"features": [...]} is read as its array
    (Clarify's records; the key is SMSERVE_JSONLINES_FEATURES_KEY)"; the answer with
    ``predicted_label,probability`` is what ``LabelAttribute``/``ProbabilityAttribute``
    (JSON Lines) and ``LabelIndex`` 0 / ``ProbabilityIndex`` 1 (CSV) read; probability
    with "two labels: the probability of the second (classes_[1]: 1 or True)".
    SAGEMAKER_INFERENCE_SUPPORTED lists more keys than asked for: loaded."""
    model = binary_model()
    labels = model.predict(ROWS).tolist()
    positive = model.predict_proba(ROWS)[:, 1].tolist()
    status, headers, data = invoke(clarify, CLARIFY_BODY, JSONL, JSONL)
    assert status == HTTPStatus.OK, data
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert [r["predicted_label"] for r in records] == labels
    assert [r["probability"] for r in records] == pytest.approx(positive, abs=1e-6)
    assert all(list(r) == ["predicted_label", "probability"] for r in records)

    status, headers, data = invoke(clarify, CSV_BODY, CSV, CSV)
    assert status == HTTPStatus.OK, data
    rows = [line.split(",") for line in data.decode().splitlines()]
    assert [int(row[0]) for row in rows] == labels
    assert [float(row[1]) for row in rows] == pytest.approx(positive, abs=1e-6)

    # The same records as CSV and as Clarify's JSON Lines: the same answers.
    by_csv = invoke(clarify, CSV_BODY, CSV, JSONL)[2]
    assert by_csv == invoke(clarify, CLARIFY_BODY, JSONL, JSONL)[2]


@pytest.mark.server
def test_a_regressors_label_in_every_format(regression):
    """A regressor gives ``predicted_label``, "the model's predict (a label or a
    regressor's value)"; one numeric key is an NPY answer too."""
    expected = regressor().predict(ROWS[:, 1:])
    body = "".join(",".join(map(repr, row)) + "\n" for row in ROWS[:, 1:].tolist())
    answers = {
        accept: invoke(regression, body.encode(), CSV, accept) for accept in RENDERERS
    }
    assert all(status == HTTPStatus.OK for status, _, _ in answers.values())
    csv_values = [float(v) for v in answers[CSV][2].decode().splitlines()]
    assert csv_values == pytest.approx(expected.tolist())
    json_records = json.loads(answers[JSON][2])["predictions"]
    assert [r["predicted_label"] for r in json_records] == csv_values
    jsonl = [json.loads(line) for line in answers[JSONL][2].decode().splitlines()]
    assert jsonl == json_records
    assert read_npy(answers[NPY][2]).tolist() == csv_values


@pytest.mark.server
def test_a_chunked_body_answers_the_keys_of_the_whole(regression):
    """A body larger than SMSERVE_CHUNK_KB: every record's keys, in order."""
    rows = np.repeat(X[:, 1:], 3, axis=0)
    body = "".join(",".join(map(repr, row)) + "\n" for row in rows.tolist()).encode()
    assert len(body) > 4 * 1024
    status, _, data = invoke(regression, body, CSV, JSONL)
    assert status == HTTPStatus.OK, data
    values = [json.loads(line)["predicted_label"] for line in data.splitlines()]
    assert values == pytest.approx(regressor().predict(rows).tolist())


@pytest.mark.server
def test_script_mode_is_unchanged(tmp_path_factory):
    """A script-mode model's output_fn owns its answer: the variable does not apply."""
    model = species_model()
    base = tmp_path_factory.mktemp("scrb")
    write_model(base, model)
    source_dir(base / "model" / "code", {"inference.py": DEFAULTS_PY})
    env = {
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_INFERENCE_OUTPUT": "predicted_label,probability",
    }
    server = ServeProcess(base, tmp_path_factory.mktemp("scrw"), env=env, workers=1)
    server.start()
    try:
        status, _, data = invoke(server, json.dumps(ROWS.tolist()).encode(), JSON, JSON)
        assert status == HTTPStatus.OK, data
        # The official container's default output_fn: a bare JSON list of predict's.
        assert json.loads(data) == model.predict(ROWS).tolist()
        assert "SAGEMAKER_INFERENCE_OUTPUT is not applied" in server.log
    finally:
        server.stop()


@pytest.mark.server
def test_a_key_the_model_cannot_give_is_a_503_naming_it(tmp_path_factory):
    """``SAGEMAKER_INFERENCE_OUTPUT`` with a key the model cannot give: /ping 503
    `model_not_ready`, "unable to give a key SAGEMAKER_INFERENCE_OUTPUT names (naming it
    and the keys the model supports)"."""
    env = {"SAGEMAKER_INFERENCE_OUTPUT": "predicted_label,probability"}
    server = start(tmp_path_factory, "bad", regressor(), env, expect=503)
    try:
        status, _, data = server.request("GET", "/ping")
        assert status == HTTPStatus.SERVICE_UNAVAILABLE
        body = json.loads(data)
        assert body["code"] == "model_not_ready"
        assert body["detail"] == (
            "The model is not loaded: SAGEMAKER_INFERENCE_OUTPUT names 'probability', "
            "which this model (a LinearRegression) cannot give; it supports "
            "predicted_label."
        )
        status, _, data = invoke(server, b"1,2,3\n", CSV, JSON)
        assert status == HTTPStatus.SERVICE_UNAVAILABLE
    finally:
        server.stop()


@pytest.mark.server
def test_a_multi_model_endpoint_checks_and_honours_the_keys_for_every_model(
    tmp_path_factory,
):
    """Every model a multi-model endpoint loads answers the keys; one that cannot give
    them fails its own load (400 ``model_load_failed``, naming the key). Its
    SMSERVE_JSONLINES_FEATURES_KEY names another key for Clarify's records."""
    root = tmp_path_factory.mktemp("mmer")
    write_model(root / "clf", binary_model())
    write_model(root / "reg", regressor())
    env = {
        "SAGEMAKER_MULTI_MODEL": "true",
        "SMSERVE_MME_MODEL_ROOT": str(root),
        "SAGEMAKER_INFERENCE_OUTPUT": "predicted_label,probability",
        "SMSERVE_JSONLINES_FEATURES_KEY": "row",
    }
    server = ServeProcess(root, tmp_path_factory.mktemp("mmew"), env=env, workers=1)
    server.start()
    try:
        for name in ("clf", "reg"):
            load = json.dumps({"model_name": name, "url": str(root / name / "model")})
            status, _, data = server.request(
                "POST", "/models", load.encode(), {"Content-Type": JSON}
            )
            if name == "reg":
                assert status == HTTPStatus.BAD_REQUEST
                assert json.loads(data)["code"] == "model_load_failed"
                assert "names 'probability', which this model" in data.decode()
            else:
                assert status == HTTPStatus.OK, data
        status, _, data = server.request(
            "POST",
            "/models/clf/invoke",
            CLARIFY_BODY.replace(b'"features"', b'"row"'),
            {"Content-Type": JSONL, "Accept": JSONL},
        )
        assert status == HTTPStatus.OK, data
        records = [json.loads(line) for line in data.decode().splitlines()]
        positive = binary_model().predict_proba(ROWS)[:, 1]
        assert [r["probability"] for r in records] == pytest.approx(
            positive.tolist(), abs=1e-6
        )
    finally:
        server.stop()


# --- in-process: every combination, the rules of each key --------------------------------
MODELS = {
    "binary": (binary_model, ROWS),
    "species": (species_model, ROWS),
    "regressor": (regressor, ROWS[:, 1:]),
}


def predictor_with(settings, model, keys: tuple[str, ...]) -> SklearnPredictor:
    settings.SMSERVE = {"INFERENCE_OUTPUT": keys, "COMPILED_ENGINE": False}
    predictor = SklearnPredictor(model)
    outputs.configure(predictor)
    return predictor


def csv_batch(rows: np.ndarray):
    text = "".join(",".join(map(repr, row)) + "\n" for row in rows.tolist())
    return CSVParser().parse_bytes(text.encode(), {})


@pytest.mark.parametrize("kind", MODELS)
def test_every_combination_of_keys_in_every_format(settings, kind):
    """Each ordered combination of the keys the model offers: each format's shape, and
    NPY only for one key of numbers (else a 406)."""
    make, rows = MODELS[kind]
    model = make()
    offered = outputs.offered_keys(SklearnPredictor(model))
    assert (
        offered
        == {
            "binary": ("predicted_label", "probability", "probabilities", "labels"),
            "species": KEYS_ALL,
            "regressor": ("predicted_label",),
        }[kind]
    )
    batch = csv_batch(rows)
    for size in range(1, len(offered) + 1):
        for keys in itertools.permutations(offered, size):
            predictor = predictor_with(settings, model, keys)
            result = predictor.invoke(batch, {}, CSV, JSON)
            for accept, renderer in RENDERERS.items():
                numeric = len(keys) == 1 and not (
                    kind == "species" and keys[0] in ("predicted_label", "labels")
                )
                refusal = renderer().keyed_refusal(result.predictions)
                if accept == NPY and not numeric:
                    assert refusal is not None
                    assert refusal.startswith("application/x-npy carries one output")
                    continue
                assert refusal is None
                body = renderer().render(result.predictions)
                check_shape(accept, body, keys, len(rows))


def check_shape(accept: str, body: bytes, keys: tuple[str, ...], records: int) -> None:
    if accept == NPY:
        assert len(read_npy(body)) == records
    elif accept == CSV:
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert [len(row) for row in rows] == [len(keys)] * records
    elif accept == JSON:
        predictions = json.loads(body)["predictions"]
        assert [tuple(p) for p in predictions] == [keys] * records
    else:
        lines = body.decode().splitlines()
        assert [tuple(json.loads(line)) for line in lines] == [keys] * records


def test_autopilots_csv_line_for_a_binary_classifier(settings):
    """``predicted_label,probability,probabilities,labels`` in CSV, as Autopilot writes
    it: ``0,0.11,"[0.88, 0.11]","[0, 1]"``."""
    model = binary_model()
    keys = ("predicted_label", "probability", "probabilities", "labels")
    predictor = predictor_with(settings, model, keys)
    result = predictor.invoke(csv_batch(ROWS[:1]), {}, CSV, CSV)
    p0, p1 = model.predict_proba(ROWS[:1])[0].tolist()
    label = model.predict(ROWS[:1])[0]
    expected = f'{label},{p1!r},"[{p0!r}, {p1!r}]","[0, 1]"\n'
    assert CSVRenderer().render(result.predictions).decode() == expected


def test_supported_must_list_every_key_asked_for(settings):
    """``SAGEMAKER_INFERENCE_SUPPORTED`` set without a key of the output: not loaded."""
    settings.SMSERVE = {
        "INFERENCE_OUTPUT": ("predicted_label", "probabilities"),
        "INFERENCE_SUPPORTED": ("predicted_label", "probability"),
    }
    with pytest.raises(ModelLoadError, match="names probabilities, which SAGEMAKER_"):
        outputs.configure(SklearnPredictor(binary_model()))


def test_an_unknown_key_is_named_with_the_known_ones(settings):
    settings.SMSERVE = {"INFERENCE_OUTPUT": ("predicted_score",)}
    with pytest.raises(ModelLoadError) as raised:
        outputs.configure(SklearnPredictor(regressor()))
    assert str(raised.value) == (
        "SAGEMAKER_INFERENCE_OUTPUT names 'predicted_score', which is not an output "
        "key; the keys are predicted_label, probability, probabilities, labels, "
        "transform, and this model offers predicted_label."
    )


def test_the_features_key_is_a_setting(settings):
    """``SMSERVE_JSONLINES_FEATURES_KEY`` names Clarify's key; empty turns it off, and
    objects with scalar values stay records by feature name."""
    body = b'{"myfeatures": [1, 2]}\n{"myfeatures": [3, 4]}\n'
    settings.SMSERVE = {"JSONLINES_FEATURES_KEY": "myfeatures"}
    assert JSONLinesParser().parse_bytes(body, {}).values.tolist() == [[1, 2], [3, 4]]
    settings.SMSERVE = {"JSONLINES_FEATURES_KEY": ""}
    assert JSONLinesParser().parse_bytes(body, {}).records is not None
    settings.SMSERVE = {}
    named = JSONLinesParser().parse_bytes(b'{"features": 1.5}\n', {})
    assert named.records is not None
    assert len(named.records) == 1


def test_settings_read_from_the_environment(monkeypatch):
    """The variables become SMSERVE entries: keys lowercased and stripped."""
    from smserve.settings import _smserve_from_environment

    monkeypatch.setenv("SAGEMAKER_INFERENCE_OUTPUT", " Predicted_Label ,probability")
    monkeypatch.setenv("SAGEMAKER_INFERENCE_SUPPORTED", "predicted_label")
    monkeypatch.setenv("SMSERVE_JSONLINES_FEATURES_KEY", "myfeatures")
    found = _smserve_from_environment()
    assert found["INFERENCE_OUTPUT"] == ("predicted_label", "probability")
    assert found["INFERENCE_SUPPORTED"] == ("predicted_label",)
    assert found["JSONLINES_FEATURES_KEY"] == "myfeatures"


def test_labels_alone_still_checks_the_records(settings):
    """``labels`` alone still checks the records (``predict`` runs)."""
    predictor = predictor_with(settings, binary_model(), ("labels",))
    result = predictor.invoke(csv_batch(ROWS[:2]), {}, CSV, NPY)
    assert read_npy(NPYRenderer().render(result.predictions)).tolist() == [
        [0, 1],
        [0, 1],
    ]
    assert result.method == "predict"
