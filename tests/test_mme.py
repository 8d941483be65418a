"""Multi-model endpoints in-process: SageMaker's model API through Django's test client,
and the shared registry seen by several ``WorkerModels`` (as gunicorn's workers would)."""

from __future__ import annotations

import json
import os
from http import HTTPStatus

import joblib
import numpy as np
import pytest
from django.conf import settings
from django.test import Client, override_settings
from sklearn.dummy import DummyClassifier

from modelapp import multimodel
from modelapp.exceptions import InsufficientMemory, ModelNotFound, ModelNotReady
from modelapp.multimodel import SharedRegistry, WorkerModels
from modelapp.stats import collector
from tests.support.models import write_model
from tests.test_settings import load_settings, settings_with

IRIS_ROW = b"5.1,3.5,1.4,0.2\n"


def constant_model_dir(tmp_path, name: str, constant: int):
    """A model directory whose model answers ``constant`` for any 4-feature record."""
    model = DummyClassifier(strategy="constant", constant=constant)
    model.fit(np.zeros((2, 4)), [constant, constant + 1])
    base = tmp_path / name
    write_model(base, model)
    return base / "model"


@pytest.fixture(autouse=True)
def model_root(tmp_path_factory):
    """Models load from pytest's temp dirs (SMSERVE_MME_MODEL_ROOT)."""
    root = tmp_path_factory.getbasetemp()
    with override_settings(SMSERVE={**settings.SMSERVE, "MME_MODEL_ROOT": root}):
        yield


@pytest.fixture
def mme(tmp_path):
    """Multi-model mode with a registry of its own, a generous budget, two workers."""
    values = {
        **settings.SMSERVE,
        "MULTI_MODEL": True,
        "MME_REGISTRY_DIR": tmp_path / "mme",
        "MME_MEMORY_MB": 512,
        "WORKERS": 2,
    }
    with override_settings(SMSERVE=values):
        yield Client()


def load(client, name, url):
    return client.post(
        "/models", json.dumps({"model_name": name, "url": str(url)}), "application/json"
    )


def invoke(client, name, body=IRIS_ROW):
    return client.post(f"/models/{name}/invoke", body, "text/csv")


def test_settings_from_the_environment(tmp_path):
    """SAGEMAKER_MULTI_MODEL in any case; the budget from SMSERVE_MME_MEMORY_MB, else
    computed from the machine; a budget under 1 MB stops start-up."""
    state = {"SMSERVE_STATE_DIR": str(tmp_path)}
    default = settings_with(state)["smserve"]
    assert default["MULTI_MODEL"] == "False"
    assert int(default["MME_MEMORY_MB"]) >= 64
    assert default["MME_REGISTRY_DIR"] == str(tmp_path / "mme")
    mme = settings_with(
        {**state, "SAGEMAKER_MULTI_MODEL": "True", "SMSERVE_MME_MEMORY_MB": "512"}
    )["smserve"]
    assert (mme["MULTI_MODEL"], mme["MME_MEMORY_MB"]) == ("True", "512")
    result = load_settings({**state, "SMSERVE_MME_MEMORY_MB": "0"})
    assert result.returncode != 0
    assert "SMSERVE_MME_MEMORY_MB must be at least 1, got 0" in result.stderr


def test_models_api_answers_404_in_single_model_mode(client):
    response = client.get("/models")
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.json()["code"] == "not_multi_model"


def test_empty_list_and_alive_ping_from_the_start(mme):
    """No model loaded: the list is empty and /ping says the server is alive."""
    assert mme.get("/models").json() == {"models": []}
    ping = mme.get("/ping")
    assert ping.status_code == HTTPStatus.OK
    assert ping.json() == {"status": "alive"}


def test_invocations_is_a_404_that_names_the_model_api(mme, iris_base):
    """A multi-model container has no default model that could become ready: POST
    /invocations is a 404 saying how to invoke a model (it was a 503 "not loaded",
    which tells SageMaker to retry; found by schemathesis), in the negotiated format."""
    load(mme, "iris", iris_base / "model")
    response = mme.post("/invocations", IRIS_ROW, "application/json")
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.json()["code"] == "multi_model"
    assert "POST /models/<name>/invoke" in response.json()["detail"]
    csv = mme.post("/invocations", IRIS_ROW, "text/csv")
    assert csv.status_code == HTTPStatus.NOT_FOUND
    assert csv["Content-Type"] == "text/csv"


def test_load_get_invoke_unload(mme, iris_base):
    url = iris_base / "model"
    response = load(mme, "iris", url)
    assert response.status_code == HTTPStatus.OK
    assert response.json() == {
        "modelName": "iris",
        "modelUrl": str(url),
        "status": "loaded",
    }
    assert mme.get("/models/iris").json() == {"modelName": "iris", "modelUrl": str(url)}
    assert mme.get("/models").json() == {
        "models": [{"modelName": "iris", "modelUrl": str(url)}]
    }
    answer = invoke(mme, "iris")
    assert answer.status_code == HTTPStatus.OK
    assert answer["Content-Type"] == "text/csv"
    assert answer.content == b"0\n"
    del answer  # the response keeps the view: nothing of the model, but be plain
    assert mme.delete("/models/iris").status_code == HTTPStatus.OK
    assert invoke(mme, "iris").status_code == HTTPStatus.NOT_FOUND
    assert mme.get("/models/iris").status_code == HTTPStatus.NOT_FOUND
    assert mme.delete("/models/iris").status_code == HTTPStatus.NOT_FOUND


def test_invoke_is_the_invocations_pipeline(mme, iris_base):
    """Negotiation, formats and custom attributes work as on /invocations."""
    load(mme, "iris", iris_base / "model")
    response = mme.post(
        "/models/iris/invoke",
        b"[[5.1,3.5,1.4,0.2]]",
        "application/json",
        headers={
            "Accept": "application/jsonlines",
            "X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba",
            "X-Amzn-SageMaker-Target-Model": "iris.tar.gz",
        },
    )
    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "application/jsonlines"
    assert response.content == b"[1.0,0.0,0.0]\n"
    bad = mme.post("/models/iris/invoke", b"1,2\n", "text/csv")
    assert bad.status_code == HTTPStatus.BAD_REQUEST
    assert "Expected 4 features" in bad.content.decode()


def test_invoking_an_unknown_model_is_a_404_in_the_negotiated_format(mme):
    response = invoke(mme, "nope")
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response["Content-Type"] == "text/csv"
    assert b"No model is loaded under the name 'nope'" in response.content


def test_the_target_model_is_logged_with_the_load(mme, iris_base, caplog):
    mme.post(
        "/models",
        json.dumps({"model_name": "a1b2", "url": str(iris_base / "model")}),
        "application/json",
        headers={"X-Amzn-SageMaker-Target-Model": "customers/7/model.tar.gz"},
    )
    assert "Loaded model 'a1b2' (TargetModel customers/7/model.tar.gz)" in caplog.text


def test_second_load_of_a_name_is_a_409(mme, iris_base):
    assert load(mme, "iris", iris_base / "model").status_code == HTTPStatus.OK
    response = load(mme, "iris", iris_base / "model")
    assert response.status_code == HTTPStatus.CONFLICT
    assert response.json()["code"] == "model_already_loaded"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"model_name": "x"}',
        b'{"model_name": "", "url": "/a"}',
        # Found by schemathesis, each a 500: a NUL in the path, an unpaired surrogate
        # in the path or in the name.
        b'{"model_name": "x", "url": "/tmp/a\\u0000b"}',
        b'{"model_name": "x", "url": "/tmp/\\ud800"}',
        b'{"model_name": "\\ud800", "url": "/tmp"}',
        b'{"model_name": "x\\u0000", "url": "/tmp"}',
    ],
)
def test_malformed_load_request_is_a_400(mme, body):
    response = mme.post("/models", body, "application/json")
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["code"] == "invalid_load_request"


def test_a_url_the_file_system_refuses_is_a_400_that_says_why(mme, tmp_path):
    """A path too long for the file system is not a model directory (found by
    schemathesis: it was a 500)."""
    response = load(mme, "long", tmp_path / ("x" * 300))
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["code"] == "model_load_failed"
    assert "cannot be read: File name too long" in response.json()["detail"]


def test_missing_or_corrupt_artifact_says_why(mme, tmp_path):
    missing = load(mme, "gone", tmp_path / "nowhere")
    assert missing.status_code == HTTPStatus.BAD_REQUEST
    assert "does not exist" in missing.json()["detail"]
    corrupt_dir = tmp_path / "corrupt"
    corrupt_dir.mkdir()
    (corrupt_dir / "model.joblib").write_bytes(b"this is not a pickle")
    corrupt = load(mme, "corrupt", corrupt_dir)
    assert corrupt.status_code == HTTPStatus.BAD_REQUEST
    assert corrupt.json()["code"] == "model_load_failed"
    assert "Could not load model.joblib" in corrupt.json()["detail"]
    assert mme.get("/models").json() == {"models": []}
    assert mme.get("/ping").status_code == HTTPStatus.OK


def test_a_model_over_the_budget_is_a_507(mme, tmp_path):
    """Each worker's share is MME_MEMORY_MB / WORKERS; a model that does not fit is
    refused before it is loaded."""
    big = tmp_path / "big"
    big.mkdir()
    joblib.dump(np.zeros(3 * (1 << 20) // 8), big / "model.joblib")  # 3 MB
    with override_settings(SMSERVE={**settings.SMSERVE, "MME_MEMORY_MB": 4}):
        response = load(mme, "big", big)
    assert response.status_code == HTTPStatus.INSUFFICIENT_STORAGE
    assert response.json()["code"] == "insufficient_memory"
    assert "2 MB each worker may hold" in response.json()["detail"]


def test_list_is_paginated(mme, iris_base):
    names = [f"m{i}" for i in range(5)]
    for name in names:
        load(mme, name, iris_base / "model")
    seen, token, pages = [], None, 0
    while True:
        query = {"limit": 2, **({"next_page_token": token} if token else {})}
        page = mme.get("/models", query).json()
        seen += [m["modelName"] for m in page["models"]]
        pages += 1
        token = page.get("nextPageToken")
        if token is None:
            break
    assert seen == names
    assert pages == 3
    bad = mme.get("/models", {"next_page_token": "%%%"})
    assert bad.status_code == HTTPStatus.BAD_REQUEST


def test_invocations_counted_per_model(mme, iris_base, tmp_path):
    load(mme, "iris", iris_base / "model")
    load(mme, "seven", constant_model_dir(tmp_path, "seven", 7))
    before = collector.pending()
    invoke(mme, "iris")
    invoke(mme, "seven")
    invoke(mme, "seven")
    after = collector.pending()
    sha = {r.name: r.sha256 for r in multimodel.worker_models().shared.all()}

    def requests(model):
        return sum(
            b[0] - before.get(k, [0])[0] for k, b in after.items() if k[0] == sha[model]
        )

    assert requests("iris") == 1
    assert requests("seven") == 2


@pytest.mark.django_db(transaction=True)  # the flusher closes a connection in atomic
def test_loads_and_unloads_are_recorded(mme, iris_base):
    from modelapp.models import ModelEvent, TrainedModel

    load(mme, "iris", iris_base / "model")
    mme.delete("/models/iris")
    collector.flush()
    events = list(ModelEvent.objects.order_by("at").values_list("kind", "name"))
    assert events == [("load", "iris"), ("unload", "iris")]
    event = ModelEvent.objects.get(kind="load")
    assert event.seconds > 0
    assert event.memory_bytes > 0
    assert TrainedModel.objects.get(sha256=event.model_id).loaded_from.endswith(
        "model.joblib"
    )


# --- several workers over one registry ---------------------------------------------------
def workers(tmp_path, count=2, share=64 << 20):
    shared = SharedRegistry(tmp_path / "registry").make()
    return [WorkerModels(shared, share) for _ in range(count)]


def test_other_workers_load_lazily_and_drop_unloaded_models(tmp_path, iris_base):
    a, b = workers(tmp_path)
    a.load("iris", str(iris_base / "model"))
    assert b.held_names() == []
    assert b.get("iris").predictor.n_features == 4  # loaded on first use
    assert b.held_names() == ["iris"]
    a.unload("iris", wait=0)
    with pytest.raises(ModelNotFound):
        b.get("iris")
    assert b.held_names() == []


def test_a_reload_under_the_same_name_is_never_answered_by_the_old_copy(tmp_path):
    """Unload + load under one name (even the same url, rewritten): each worker notices
    the new load's token, whatever the timing."""
    a, b = workers(tmp_path)
    url = constant_model_dir(tmp_path, "m", 1)
    a.load("m", str(url))
    assert b.get("m").predictor.model.constant == 1
    a.unload("m", wait=0)
    url = constant_model_dir(tmp_path, "m", 2)  # the same directory, a new model
    a.load("m", str(url))
    assert b.get("m").predictor.model.constant == 2


def test_sweep_drops_unloaded_copies_and_publishes_what_is_held(tmp_path, iris_base):
    a, b = workers(tmp_path)
    a.load("iris", str(iris_base / "model"))
    b.get("iris")
    token = a.shared.get("iris").token
    a.shared.remove("iris")  # as another worker's unload would
    b.sweep()
    assert b.held_names() == []
    assert token not in json.loads((a.shared.workers / str(os.getpid())).read_text())


def test_a_worker_keeps_its_share_least_recently_used_dropped(tmp_path, iris_base):
    """When copies outgrow a worker's share (sizes measured elsewhere were low), the
    least recently used copy goes; the model stays loaded for the container."""
    (a,) = workers(tmp_path, count=1)
    for name in ("one", "two", "three"):
        a.load(name, str(iris_base / "model"))
    one, two, three = (a.shared.get(n).size for n in ("one", "two", "three"))
    small = WorkerModels(a.shared, share_bytes=one + max(two, three))
    small.get("one")
    small.get("two")
    small.get("one")  # "two" is now the least recently used
    small.get("three")
    assert small.held_names() == ["one", "three"]
    assert [r.name for r in a.shared.all()] == ["one", "three", "two"]


def test_the_budget_counts_every_loaded_model(tmp_path, iris_base):
    (a,) = workers(tmp_path, count=1)
    a.load("one", str(iris_base / "model"))
    a.share_bytes = a.shared.get("one").size + 1
    with pytest.raises(InsufficientMemory, match="unload one first"):
        a.load("two", str(iris_base / "model"))


def test_a_worker_that_cannot_load_a_registered_model_answers_503(tmp_path):
    """The files went away after the load: the other worker says why, no 500."""
    a, b = workers(tmp_path)
    url = constant_model_dir(tmp_path, "gone", 1)
    a.load("gone", str(url))
    (url / "model.joblib").unlink()
    with pytest.raises(ModelNotReady, match="this worker cannot load it"):
        b.get("gone")
    assert b.held_names() == []
    assert a.get("gone").predictor.model.constant == 1  # the loading worker's copy


def test_an_unload_during_a_lazy_load_is_not_answered_by_it(tmp_path, monkeypatch):
    """Worker b is loading when a unloads: a waits for b, b answers 404, keeps nothing."""
    a, b = workers(tmp_path)
    url = constant_model_dir(tmp_path, "m", 1)
    a.load("m", str(url))
    a.shared.publish_held(os.getpid(), set())  # in-process, a and b share one pid file
    real_load = multimodel.load_model
    seen = {}

    def load_while_unloaded(model_dir):
        loaded = real_load(model_dir)
        token = a.shared.get("m").token
        seen["held while loading"] = a.shared.holders(token)
        a.shared.remove("m")  # the unload's first step, in the middle of b's load
        return loaded

    monkeypatch.setattr(multimodel, "load_model", load_while_unloaded)
    with pytest.raises(ModelNotFound):
        b.get("m")
    assert seen["held while loading"] == [os.getpid()]
    assert b.held_names() == []
