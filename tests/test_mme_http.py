"""Multi-model endpoints through the real server (nginx + 2 gunicorn workers): every call
and error of SageMaker's model API, invocations spread over the workers, loads and
unloads racing invocations, and memory given back after an unload."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import joblib
import numpy as np
import psycopg
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import ExtraTreesClassifier

from tests.support.models import WarmUpFailingClassifier, write_model
from tests.support.packages import OFFLINE_PIP, local_package
from tests.support.script_mode import source_dir, tarball
from tests.support.servers import ServeProcess, ServerDatabase, wait_for

pytestmark = pytest.mark.server

IRIS_ROW = b"5.1,3.5,1.4,0.2\n"


def constant_model_dir(base: Path, constant: int) -> Path:
    model = DummyClassifier(strategy="constant", constant=constant)
    model.fit(np.zeros((2, 4)), [constant, constant + 1])
    write_model(base, model)
    return base / "model"


class MMEClient:
    """SageMaker's calls to a multi-model container."""

    def __init__(self, server: ServeProcess) -> None:
        self.server = server

    def load(self, name: str, url: Path | str) -> tuple[int, dict]:
        body = json.dumps({"model_name": name, "url": str(url)}).encode()
        status, _, data = self.server.request(
            "POST", "/models", body, {"Content-Type": "application/json"}
        )
        return status, json.loads(data)

    def unload(self, name: str) -> int:
        return self.server.request("DELETE", f"/models/{name}")[0]

    def get(self, path: str) -> tuple[int, dict]:
        status, _, data = self.server.request("GET", path)
        return status, json.loads(data)

    def invoke(self, name: str, body: bytes = IRIS_ROW, **headers: str):
        return self.server.request(
            "POST",
            f"/models/{name}/invoke",
            body,
            {"Content-Type": "text/csv", **headers},
        )

    @property
    def registry_dir(self) -> Path:
        run_dir = self.server.run_dir
        return run_dir / "mme"

    def holders(self, name: str) -> set[int]:
        """The worker PIDs whose copy of ``name``'s current load is in memory."""
        status, _ = self.get(f"/models/{name}")
        entries = {
            json.loads(p.read_text())["name"]: json.loads(p.read_text())["token"]
            for p in (self.registry_dir / "entries").iterdir()
        }
        token = entries.get(name)
        return {
            int(p.name)
            for p in (self.registry_dir / "workers").iterdir()
            if p.name.isdigit() and token in json.loads(p.read_text())
        }


@pytest.fixture(scope="module")
def mme(tmp_path_factory):
    """A multi-model server with no /opt/ml/model, as SageMaker starts one, with a
    database of its own."""
    base = tmp_path_factory.mktemp("mme_base")  # empty: no model dir at all
    work = tmp_path_factory.mktemp("mme_server")
    db = ServerDatabase.create(work)
    env = {
        **db.env,
        "SAGEMAKER_MULTI_MODEL": "TRUE",
        # The tests' models are all in pytest's temp dirs.
        "SMSERVE_MME_MODEL_ROOT": str(tmp_path_factory.getbasetemp()),
        "SMSERVE_MME_MEMORY_MB": "2048",
        "SMSERVE_STATS_FLUSH_SECONDS": "0.3",
    }
    server = ServeProcess(base, work, env=env)
    server.start()
    client = MMEClient(server)
    client.db = db
    yield client
    server.stop()
    db.drop()


def test_ping_and_list_answer_from_the_first_moment(mme):
    status, _, body = mme.server.request("GET", "/ping")
    assert status == HTTPStatus.OK
    assert json.loads(body) == {"status": "alive"}
    assert mme.get("/models") == (HTTPStatus.OK, {"models": []})


def test_every_call_and_error(mme, iris_base):
    """docs/serving.md, Multi-model API: "409 `model_already_loaded`"; "200 `{"modelName",
    "modelUrl"}`"; "exactly `/invocations`: the same negotiation"; "formats"; "errors
    and custom attributes".
    """
    url = str(iris_base / "model")
    assert mme.load("iris", url) == (
        HTTPStatus.OK,
        {"modelName": "iris", "modelUrl": url, "status": "loaded"},
    )
    status, body = mme.load("iris", url)
    assert (status, body["code"]) == (HTTPStatus.CONFLICT, "model_already_loaded")
    assert mme.get("/models/iris") == (
        HTTPStatus.OK,
        {"modelName": "iris", "modelUrl": url},
    )
    assert {"modelName": "iris", "modelUrl": url} in mme.get("/models")[1]["models"]
    status, headers, body = mme.invoke(
        "iris",
        b"[[5.1,3.5,1.4,0.2]]",
        **{
            "Content-Type": "application/json",
            "Accept": "text/csv",
            "X-Amzn-SageMaker-Custom-Attributes": "method=predict_proba",
            "X-Amzn-SageMaker-Target-Model": "customers/iris.tar.gz",
        },
    )
    assert (status, headers["content-type"], body) == (
        200,
        "text/csv",
        b"1.0,0.0,0.0\n",
    )
    assert headers["x-amzn-sagemaker-custom-attributes"] == "method=predict_proba"
    status, headers, body = mme.invoke("nope")
    assert status == HTTPStatus.NOT_FOUND
    assert b"No model is loaded under the name 'nope'" in body
    status, body = mme.load("bad", iris_base / "nowhere")
    assert (status, body["code"]) == (HTTPStatus.BAD_REQUEST, "model_load_failed")
    status, _, body = mme.server.request("POST", "/models", b"{", {})
    assert status == HTTPStatus.BAD_REQUEST
    assert mme.unload("iris") == HTTPStatus.OK
    assert mme.invoke("iris")[0] == HTTPStatus.NOT_FOUND
    assert mme.get("/models/iris")[0] == HTTPStatus.NOT_FOUND
    assert mme.unload("iris") == HTTPStatus.NOT_FOUND


def test_load_requests_that_are_refused(mme, iris_base, tmp_path):
    """400 ``invalid_load_request``, and nothing loaded: JSON nested 50,000 deep; a
    name or url with a control character; a url outside SMSERVE_MME_MODEL_ROOT, also
    through ``..`` or a symlink (a load would run the directory's inference.py).
    docs/serving.md, Multi-model API, `POST /models`: "400 `invalid_load_request` for a
    body that is not that JSON (nested too deep included)"; "whose `model_name` or `url`
    holds a control character (`\\n`, NUL) or an unpaired surrogate" (here `\\n`); "or
    whose `url` is not inside `SMSERVE_MME_MODEL_ROOT` (default `/opt/ml/models`, checked
    after resolving symlinks and `..`)".
    docs/settings.md, Settings: "`SMSERVE_MME_MODEL_ROOT`".
    """
    status, _, body = mme.server.request(
        "POST", "/models", b"[" * 50_000, {"Content-Type": "application/json"}
    )
    assert status == HTTPStatus.BAD_REQUEST, body
    assert json.loads(body)["code"] == "invalid_load_request"
    (tmp_path / "etc").symlink_to("/etc")
    model = iris_base / "model"
    for name, url in (
        ("x\ny", model),
        ("x", f"{model}\n"),
        ("etc", "/etc"),
        ("etc", f"{tmp_path}/../../../../../../etc"),
        ("etc", tmp_path / "etc"),
    ):
        status, body = mme.load(name, url)
        assert status == HTTPStatus.BAD_REQUEST, (name, url, body)
        assert body["code"] == "invalid_load_request", body
    assert "where models are loaded from (SMSERVE_MME_MODEL_ROOT)" in body["detail"]
    assert mme.get("/models")[1] == {"models": []}
    assert "Traceback" not in mme.server.log


def test_a_path_cannot_forge_a_log_line(mme):
    """A percent-encoded newline in a model name is logged escaped, on its line."""
    forged = "2026-01-01T00:00:00+00:00 ERROR forged line"
    status, _, _ = mme.invoke(f"x%0A{forged.replace(' ', '%20')}")
    assert status == HTTPStatus.NOT_FOUND
    assert f"POST /models/x\\n{forged}/invoke 404" in mme.server.log
    assert not [line for line in mme.server.log.splitlines() if line.startswith(forged)]


SCRIPT_WITH_A_SIBLING = """\
import json
import os

import joblib
from helper import LABEL


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def output_fn(prediction, accept):
    return json.dumps({"who": LABEL, "predictions": prediction.tolist()}), accept
"""


def scripted_model_dir(base: Path, constant: int, label: str) -> Path:
    """A model whose ``code/`` holds an ``inference.py`` and a sibling ``helper.py``
    (the same file names in every such model, as the SDK's repacking makes them)."""
    model_dir = constant_model_dir(base, constant)
    code = model_dir / "code"
    code.mkdir()
    (code / "inference.py").write_text(SCRIPT_WITH_A_SIBLING)
    (code / "helper.py").write_text(f"LABEL = {label!r}\n")
    return model_dir


def test_each_model_runs_its_own_inference_script(mme, tmp_path, iris_base):
    """Script mode on a multi-model endpoint: each model's own ``code/inference.py``
    (no SAGEMAKER_PROGRAM: the toolkit's default name), with its own sibling modules,
    beside a plain model; in every worker, whichever model it loaded first."""
    a = scripted_model_dir(tmp_path / "a", 1, "model a")
    b = scripted_model_dir(tmp_path / "b", 2, "model b")
    for name, url in (("script-a", a), ("script-b", b), ("plain", iris_base / "model")):
        assert mme.load(name, url)[0] == HTTPStatus.OK

    answers = set()
    for _ in range(6):  # two workers, each loading on its first invocation
        for name in ("script-b", "script-a", "plain"):
            status, headers, body = mme.invoke(name, Accept="application/json")
            assert status == HTTPStatus.OK, body
            answers.add((name, body))
    assert answers == {
        ("script-a", b'{"who": "model a", "predictions": [1]}'),
        ("script-b", b'{"who": "model b", "predictions": [2]}'),
        ("plain", b'{"predictions":[0]}'),
    }
    for name in ("script-a", "script-b", "plain"):
        assert mme.unload(name) == HTTPStatus.OK


@pytest.mark.database
def test_loads_unloads_and_invocations_are_recorded(mme, iris_base):
    """The admin's rows: the model, its load and unload, its invocations."""
    assert mme.load("recorded", iris_base / "model")[0] == HTTPStatus.OK
    for _ in range(3):
        assert mme.invoke("recorded")[0] == HTTPStatus.OK
    assert mme.unload("recorded") == HTTPStatus.OK

    def recorded():
        try:
            events = mme.db.query(
                "SELECT kind, model_sha256 FROM modelapp_modelevent "
                "WHERE name = 'recorded' ORDER BY at"
            )
        except (sqlite3.Error, psycopg.Error):  # not migrated yet
            return None
        if [kind for kind, _ in events] != ["load", "unload"]:
            return None
        sha = events[0][1]
        requests = mme.db.query(
            "SELECT COALESCE(SUM(requests), 0) FROM modelapp_invocationstat "
            f"WHERE model_sha256 = '{sha}'"
        )[0][0]
        models = mme.db.query(
            f"SELECT COUNT(*) FROM modelapp_trainedmodel WHERE sha256 = '{sha}'"
        )[0][0]
        return requests >= 3 and models == 1

    wait_for(recorded, deadline=30, what="the load, unload and invocations recorded")


def test_a_model_over_the_budget_is_a_507(mme, tmp_path):
    """docs/serving.md, Multi-model API: "507 `insufficient_memory` (SageMaker then unloads
    idle models and retries)".
    docs/settings.md, Settings: "`SMSERVE_MME_MEMORY_MB`".
    """
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "model.joblib", "wb") as fh:
        fh.truncate(3 << 30)  # sparse: 3 GB on paper, over each worker's 1 GB
    status, body = mme.load("big", big)
    assert status == HTTPStatus.INSUFFICIENT_STORAGE
    assert body["code"] == "insufficient_memory"
    # A url of a whole tree (the 3 GB file in it): measured only as far as the
    # budget, not walked to its end under the registry's lock.
    status, body = mme.load("everything", tmp_path.parent)
    assert status == HTTPStatus.INSUFFICIENT_STORAGE
    assert body["code"] == "insufficient_memory"
    assert mme.get("/models/everything")[0] == HTTPStatus.NOT_FOUND


def test_corrupt_artifact_fails_only_its_own_load(mme, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.joblib").write_bytes(b"\x80\x05 truncated pickle")
    status, body = mme.load("corrupt", corrupt)
    assert status == HTTPStatus.BAD_REQUEST
    assert "Could not load model.joblib" in body["detail"]
    assert mme.server.request("GET", "/ping")[0] == HTTPStatus.OK
    assert mme.get("/models/corrupt")[0] == HTTPStatus.NOT_FOUND


def test_forty_invocations_spread_over_the_workers(mme, iris_base):
    """Every worker answers a model loaded through another one.
    docs/serving.md, Multi-model API: "warmed up and registered for every worker".
    """
    assert mme.load("spread", iris_base / "model")[0] == HTTPStatus.OK
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: mme.invoke("spread"), range(40)))
    assert {(status, body) for status, _, body in answers} == {(200, b"0\n")}

    def both_hold():
        if len(mme.holders("spread")) < 2:
            with ThreadPoolExecutor(4) as pool:  # until the second worker takes one
                list(pool.map(lambda _: mme.invoke("spread"), range(4)))
            return False
        return True

    wait_for(both_hold, deadline=30, what="both workers holding the model")
    assert mme.unload("spread") == HTTPStatus.OK
    assert mme.holders("spread") == set()


def test_concurrent_loads_of_one_name_load_it_once(mme, iris_base):
    """Several loads of one name at once, over both workers: one 200, the rest 409."""
    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(
            pool.map(lambda _: mme.load("twice", iris_base / "model")[0], range(4))
        )
    assert statuses == [HTTPStatus.OK] + [HTTPStatus.CONFLICT] * 3
    assert mme.unload("twice") == HTTPStatus.OK


def test_list_is_paginated(mme, iris_base):
    """SageMaker calls again with nextPageToken until there is none.
    docs/serving.md, Multi-model API: "200 `{"models": [{"modelName", "modelUrl"}, ...],
    "nextPageToken"?}`"; "100 a page".
    """
    names = [f"page{i:03d}" for i in range(105)]
    for name in names:
        assert mme.load(name, iris_base / "model")[0] == HTTPStatus.OK
    status, first = mme.get("/models")
    assert len(first["models"]) == 100
    status, second = mme.get(f"/models?next_page_token={first['nextPageToken']}")
    assert "nextPageToken" not in second
    listed = [m["modelName"] for m in first["models"] + second["models"]]
    assert [n for n in listed if n.startswith("page")] == names
    for name in names:
        assert mme.unload(name) == HTTPStatus.OK


def test_loads_and_unloads_racing_invocations(mme, tmp_path):
    """One name loaded with model 1, unloaded, loaded with model 2, ... while three
    threads invoke it: every answer is a 200 from the model loaded at that time, or a
    404 — never the other model, never a 5xx.
    docs/serving.md, Multi-model choices: "and exact".
    """
    dirs = {1: constant_model_dir(tmp_path / "one", 1)}
    dirs[2] = constant_model_dir(tmp_path / "two", 2)
    loaded_spans: list[
        tuple[float, float, bytes]
    ] = []  # (loaded, unload starts, model)
    done = threading.Event()
    calls: list[tuple[float, float, int, bytes]] = []

    def churn():
        try:
            for round_ in range(12):
                constant = 1 + round_ % 2
                assert mme.load("race", dirs[constant])[0] == HTTPStatus.OK
                loaded = time.monotonic()
                for _ in range(3):
                    mme.invoke("race")  # let the invokers in
                unloading = time.monotonic()
                assert mme.unload("race") == HTTPStatus.OK
                loaded_spans.append((loaded, unloading, b"%d\n" % constant))
        finally:
            done.set()

    def invoke_until_done():
        while not done.is_set():
            started = time.monotonic()
            status, _, body = mme.invoke("race")
            calls.append((started, time.monotonic(), status, body))

    invokers = [threading.Thread(target=invoke_until_done) for _ in range(3)]
    for thread in invokers:
        thread.start()
    churn()
    for thread in invokers:
        thread.join()
    assert {status for _, _, status, _ in calls} <= {200, 404}
    assert {body for _, _, status, body in calls if status == 200} <= {b"1\n", b"2\n"}
    checked = 0
    for started, ended, status, body in calls:
        for loaded, unloading, expected in loaded_spans:
            if loaded <= started and ended <= unloading:
                assert (status, body) == (200, expected)
                checked += 1
    assert checked > 0
    assert mme.get("/models/race")[0] == HTTPStatus.NOT_FOUND


# --- memory ---------------------------------------------------------------------------
def tree_pss_kb(root: int) -> int:
    """PSS of ``root`` and every process below it, kB."""
    rows = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True
    ).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for row in rows:
        if row.strip():
            pid, ppid = (int(v) for v in row.split())
            children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += sum(
            int(line.split()[1])
            for line in text.splitlines()
            if line.startswith("Pss:")
        )
    return total


@pytest.fixture(scope="module")
def big_forest_dir(tmp_path_factory) -> Path:
    """~60 MB of trees: one fully grown tree on noise, copied (each copy pickled and
    loaded on its own)."""
    rng = np.random.default_rng(0)
    X = rng.random((20000, 4))
    forest = ExtraTreesClassifier(n_estimators=1, random_state=0)
    forest.fit(X, rng.integers(0, 2, 20000))
    forest.estimators_ = [copy.deepcopy(forest.estimators_[0]) for _ in range(40)]
    forest.n_estimators = 40
    base = tmp_path_factory.mktemp("forest")
    joblib.dump(forest, base / "model.joblib")
    return base


def load_in_both_workers(mme: MMEClient, name: str, url: Path) -> None:
    assert mme.load(name, url)[0] == HTTPStatus.OK

    def both_hold():
        # Concurrent calls: one at a time, the same warm worker would take them all.
        with ThreadPoolExecutor(4) as pool:
            statuses = set(pool.map(lambda _: mme.invoke(name)[0], range(4)))
        assert statuses == {HTTPStatus.OK}
        return len(mme.holders(name)) == 2

    wait_for(both_hold, deadline=60, what=f"both workers holding {name}")


def test_unloading_gives_the_memory_back(
    serve_factory, tmp_path, tmp_path_factory, big_forest_dir, iris_base
):
    """A large forest held by both workers; after DELETE answers, the server's PSS is
    back near where it was before the load.
    docs/serving.md, Multi-model API: "200 once no worker holds the model's memory any
    more". docs/serving.md, Multi-model choices: "unload frees it in every worker before
    answering".
    """
    size_kb = (big_forest_dir / "model.joblib").stat().st_size // 1024
    assert size_kb > 40_000
    base = tmp_path / "empty"
    base.mkdir()
    env = {
        "SAGEMAKER_MULTI_MODEL": "true",
        "SMSERVE_MME_MODEL_ROOT": str(tmp_path_factory.getbasetemp()),
    }
    mme = MMEClient(serve_factory(base, env=env))
    root = mme.server.proc.pid
    # A small model first: what any first load imports is not the forest's memory.
    load_in_both_workers(mme, "iris", iris_base / "model")
    assert mme.unload("iris") == HTTPStatus.OK
    before = tree_pss_kb(root)
    load_in_both_workers(mme, "forest", big_forest_dir)
    loaded = tree_pss_kb(root)
    assert loaded - before > 1.5 * size_kb, (before, loaded)  # a copy per worker
    assert mme.unload("forest") == HTTPStatus.OK
    after = tree_pss_kb(root)
    assert loaded - after > 0.9 * (loaded - before), (before, loaded, after)


# --- a script model's requirements: installed once per load, never on the invocation path
PROBE_SCRIPT = """\
import json
import os

import joblib
import smserve_probe


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def output_fn(prediction, accept):
    body = {"probe": smserve_probe.VERSION, "predictions": prediction.tolist()}
    return json.dumps(body), accept
"""


@pytest.fixture(scope="module")
def mme_code(tmp_path_factory):
    """A multi-model server whose script (SAGEMAKER_SUBMIT_DIRECTORY, a tarball) requires
    a local package; pip has no index. The package's build counts pip's installs in
    ``marker`` and writes the names of its environment to ``environ``."""
    work = tmp_path_factory.mktemp("mme_code")
    marker, environ = work / "pip-runs.txt", work / "environ.json"
    probe = local_package(
        work / "probe", "smserve-probe", "7.1", marker=marker, environ=environ
    )
    src = source_dir(
        work / "src",
        {"inference.py": PROBE_SCRIPT, "requirements.txt": f"{probe}\n"},
    )
    archive = tarball(src, work / "sourcedir.tar.gz")
    base = work / "base"
    base.mkdir()
    server_dir = work / "server"
    server_dir.mkdir()
    env = {
        **OFFLINE_PIP,
        "SAGEMAKER_MULTI_MODEL": "TRUE",
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": f"file://{archive}",
        "SMSERVE_MME_MODEL_ROOT": str(tmp_path_factory.getbasetemp()),
        "SECRET_KEY": "not-for-pip-" * 4,
        "DATABASE_URL": "",
    }
    server = ServeProcess(base, server_dir, env=env)
    server.start()
    client = MMEClient(server)
    client.marker, client.environ, client.tmpdir = marker, environ, server_dir
    yield client
    server.stop()


def pip_runs(mme: MMEClient) -> int:
    return len(mme.marker.read_text().split()) if mme.marker.exists() else 0


def test_a_script_models_requirements_install_once_for_every_worker(mme_code, tmp_path):
    """pip runs once, in the worker that answers POST /models, into the load's own site
    directory; the other worker's lazy load imports the package from there, on the
    invocation path without pip. pip's environment has no SECRET_KEY nor DATABASE_URL.
    The unload removes the fetched source and the site."""
    before = pip_runs(mme_code)
    load_in_both_workers(mme_code, "probe", constant_model_dir(tmp_path / "probe", 1))
    status, _, body = mme_code.invoke("probe", Accept="application/json")
    assert (status, json.loads(body)) == (
        HTTPStatus.OK,
        {"probe": "7.1", "predictions": [1]},
    )
    assert pip_runs(mme_code) == before + 1
    names = set(json.loads(mme_code.environ.read_text()))
    assert "PATH" in names
    assert names & {"SECRET_KEY", "DATABASE_URL"} == set()
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("smserve-probe")  # not in the venv
    code = mme_code.registry_dir / "code"
    assert [p.name for p in code.iterdir() if p.is_dir()] != []
    assert mme_code.unload("probe") == HTTPStatus.OK
    assert [p.name for p in code.iterdir() if p.is_dir()] == []


def test_loads_and_unloads_leave_no_source_directories_behind(mme_code, tmp_path):
    """Five loads and unloads of a model whose script is fetched from a tarball: at
    most one ``smserve-code-*`` directory remains in the server's temp dir."""
    model_dir = constant_model_dir(tmp_path / "cycled", 2)
    for _ in range(5):
        load_in_both_workers(mme_code, "cycled", model_dir)
        assert mme_code.unload("cycled") == HTTPStatus.OK
    left = list(mme_code.tmpdir.glob("smserve-code-*"))
    assert len(left) <= 1, left


def test_a_requirement_changing_an_image_package_fails_the_load(mme_code, tmp_path):
    """A model whose requirements.txt pins another numpy: 400 model_load_failed naming
    the conflict with the image's pins; the venv's numpy is unchanged and nothing of
    the load is left."""
    numpy_before = importlib.metadata.version("numpy")
    model_dir = constant_model_dir(tmp_path / "old-numpy", 3)
    source_dir(
        model_dir / "code",
        {"inference.py": PROBE_SCRIPT, "requirements.txt": "numpy==1.26.4\n"},
    )
    status, body = mme_code.load("old-numpy", model_dir)
    assert (status, body["code"]) == (HTTPStatus.BAD_REQUEST, "model_load_failed")
    assert "Could not install requirement 'numpy==1.26.4'" in body["detail"]
    assert "conflicting dependencies" in body["detail"]
    assert importlib.metadata.version("numpy") == numpy_before
    assert mme_code.get("/models/old-numpy")[0] == HTTPStatus.NOT_FOUND
    code = mme_code.registry_dir / "code"
    assert not code.exists() or [p for p in code.iterdir() if p.is_dir()] == []


def no_predict_dir(base: Path) -> Path:
    """A pickle that loads but is no model: a dict."""
    (base / "model").mkdir(parents=True)
    joblib.dump({"weights": [1, 2, 3]}, base / "model" / "model.joblib")
    return base / "model"


def test_every_status_of_the_model_api_with_its_code(mme, iris_base, tmp_path):
    """Each answer of docs/serving.md's Multi-model API table with its code, through the
    real server: "200 once the model is loaded"; "400 `model_load_failed` with the reason
    (a path the file system refuses, e.g. too long; no such directory, no artifact, not a
    pickle, a global the safe loader refuses, no `predict`, warm-up failed)" (the safe
    loader's case: tests/test_safeload.py); "400 `invalid_load_request` for a body that
    is not that JSON (nested too deep included)"; "whose `model_name` or `url` holds a
    control character (`\\n`, NUL) or an unpaired surrogate" (here NUL and a surrogate);
    on POST /invocations "404 `multi_model`"; "naming `POST
    /models/<name>/invoke` (in the negotiated format): a multi-model container has no
    default model (it was a 503 "not loaded", which tells a caller to retry)"; GET
    /models/<name> "404 `model_not_found`"; DELETE "404"; invoke "404 when not loaded";
    "in the negotiated format"; the list "by name (`limit=` asks for another page
    size)".
    docs/serving.md, Multi-model API: "200 `{"modelName", "modelUrl", "status":
    "loaded"}` once the model is loaded".
    docs/settings.md, Settings: "`SAGEMAKER_MULTI_MODEL`".
    """
    (tmp_path / "empty" / "model").mkdir(parents=True)
    failing = tmp_path / "failing"
    write_model(failing, WarmUpFailingClassifier().fit(np.zeros((2, 4)), [0, 1]))
    (tmp_path / "garbage" / "model").mkdir(parents=True)
    (tmp_path / "garbage" / "model" / "model.joblib").write_bytes(b"not a pickle")
    reasons = {
        # Inside the test's own directory, so only the file system refuses it.
        str(tmp_path / ("x" * 300)): "File name too long",
        str(tmp_path / "nowhere"): "does not exist",
        str(tmp_path / "empty" / "model"): "model.joblib",
        str(no_predict_dir(tmp_path / "dict")): "no predict",
        str(failing / "model"): "this model was saved broken",
        str(tmp_path / "garbage" / "model"): "model.joblib",
    }
    for url, reason in reasons.items():
        status, body = mme.load("bad", url)
        assert (status, body["code"]) == (HTTPStatus.BAD_REQUEST, "model_load_failed")
        assert reason in body["detail"], (url[:80], body)
    for raw in (
        b"{",
        b'{"model_name": "a"}',
        b'{"model_name": "a\\u0000b", "url": "/x"}',
        b'{"model_name": "a", "url": "/x\\ud800"}',
    ):
        status, _, body = mme.server.request(
            "POST", "/models", raw, {"Content-Type": "application/json"}
        )
        assert (status, json.loads(body)["code"]) == (
            HTTPStatus.BAD_REQUEST,
            "invalid_load_request",
        ), raw
    for accept, parse in (
        ("application/json", lambda b: json.loads(b)["detail"]),
        ("text/csv", bytes.decode),
    ):
        status, headers, body = mme.server.invoke(IRIS_ROW, Accept=accept)
        assert (status, headers["content-type"]) == (HTTPStatus.NOT_FOUND, accept)
        assert "POST /models/<name>/invoke" in parse(body)
    status, _, body = mme.server.invoke(IRIS_ROW, Accept="application/json")
    assert json.loads(body)["code"] == "multi_model"
    status, body = mme.get("/models/nope")
    assert (status, body["code"]) == (HTTPStatus.NOT_FOUND, "model_not_found")
    status, _, body = mme.server.request("DELETE", "/models/nope")
    assert (status, json.loads(body)["code"]) == (
        HTTPStatus.NOT_FOUND,
        "model_not_found",
    )
    status, headers, body = mme.invoke("nope", Accept="text/csv")
    assert (status, headers["content-type"]) == (HTTPStatus.NOT_FOUND, "text/csv")
    assert body.startswith(b"No model is loaded under the name 'nope'")
    url = str(iris_base / "model")
    for name in ("paged-c", "paged-a", "paged-b"):
        assert mme.load(name, url)[0] == HTTPStatus.OK
    try:
        status, page = mme.get("/models?limit=2")
        names = [m["modelName"] for m in page["models"]]
        assert status == HTTPStatus.OK
        assert len(names) == 2
        assert names == sorted(names)
        assert page["nextPageToken"]
    finally:
        for name in ("paged-a", "paged-b", "paged-c"):
            mme.unload(name)


def test_a_worker_that_cannot_read_a_loaded_model_answers_503(
    mme, iris_model, tmp_path
):
    """docs/serving.md, Multi-model API, invoke: "503 with the reason when this worker
    cannot read a loaded model's files any more". The model is loaded (by one worker), its
    artifact deleted; the other worker, which has no copy yet, answers 503 with the
    reason, while the loading worker answers from its copy."""
    write_model(tmp_path, iris_model)
    assert mme.load("vanishing", tmp_path / "model")[0] == HTTPStatus.OK
    try:
        (tmp_path / "model" / "model.joblib").unlink()
        # Concurrent, so that the worker without a copy takes some (one idle worker
        # wakes per connection: the same one may take every request sent one by one).
        answers: list = []
        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                answers += pool.map(lambda _: mme.invoke("vanishing"), range(40))
                if any(s == HTTPStatus.SERVICE_UNAVAILABLE for s, _, _ in answers):
                    break
        statuses = {status for status, _, _ in answers}
        assert statuses <= {HTTPStatus.OK, HTTPStatus.SERVICE_UNAVAILABLE}
        assert HTTPStatus.SERVICE_UNAVAILABLE in statuses, statuses
        body = next(b for s, _, b in answers if s == HTTPStatus.SERVICE_UNAVAILABLE)
        assert b"is loaded but this worker cannot load it" in body  # CSV: the detail
    finally:
        mme.unload("vanishing")


def test_models_outside_multi_model_mode_are_not_multi_model(server):
    """docs/serving.md, Multi-model endpoints: "Outside this mode the `/models` paths
    answer 404 `not_multi_model`" (the plain iris server)."""
    for method, path in (
        ("GET", "/models"),
        ("GET", "/models/iris"),
        ("DELETE", "/models/iris"),
        ("POST", "/models/iris/invoke"),
    ):
        status, _, body = server.request(
            method, path, b"", {"Accept": "application/json"}
        )
        assert (status, json.loads(body)["code"]) == (
            HTTPStatus.NOT_FOUND,
            "not_multi_model",
        ), (method, path)
