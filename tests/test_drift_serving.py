"""Drift end to end: the real ``train`` records the churn table's distributions, the
real ``serve`` samples its traffic (SMSERVE_CAPTURE_PERCENT) into the database, and the
admin's drift page flags exactly the feature that was shifted, for one model, for two
models on a multi-model endpoint, and for a model trained elsewhere against its first
served records; a database outage loses no request."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, free_port
from tests.support.admin import ADMIN_PASSWORD, ADMIN_USER, AdminClient
from tests.support.models import write_model
from tests.support.servers import PYTHON, ServeProcess, ServerDatabase, wait_for
from tests.support.tables import FEATURES, TARGET, churn_frame, fitted_elsewhere
from tests.support.training import train_env

pytestmark = pytest.mark.server

BATCH = 100
ROW = re.compile(r'<tr class="feature (drifting|steady)" data-feature="([^"]+)"')


def capture_env(db: ServerDatabase, work: Path) -> dict[str, str]:
    """Capture of every request, the admin on with a superuser, quick flushes."""
    return {
        **db.env,
        "SMSERVE_CAPTURE_PERCENT": "100",
        "SMSERVE_DRIFT_PSI": "0.25",
        "SMSERVE_DRIFT_JS": "0.2",
        "SMSERVE_DRIFT_MIN_RECORDS": "200",
        "SMSERVE_STATS_FLUSH_SECONDS": "0.3",
        "SMSERVE_ADMIN_ENABLED": "1",
        "SMSERVE_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SUPERUSER_USERNAME": ADMIN_USER,
        "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
        "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
        "SMSERVE_STATIC_ROOT": str(work / "static"),
    }


def train(base: Path, work: Path, seed: int) -> str:
    """The real ``train`` on the churn table; the model's sha256."""
    channels = work / "channels"
    if not channels.exists():
        channels.mkdir()
        churn_frame(600, seed=0).to_csv(channels / "train.csv", index=False)
        churn_frame(150, seed=1).to_csv(channels / "validation.csv", index=False)
    done = subprocess.run(
        [str(ROOT / "train"), "--base-dir", str(base)]
        + ["--channel", f"train={channels / 'train.csv'}"]
        + ["--channel", f"validation={channels / 'validation.csv'}"]
        + ["--hp", f"smserve_target_column={TARGET}"]
        + ["--hp", "smserve_estimator=random_forest", "--hp", "n_estimators=20"]
        + ["--hp", f"smserve_random_seed={seed}"],
        cwd=ROOT,
        env=train_env(None, work / f"train-state-{seed}"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((base / "model" / "metadata.json").read_text())["sha256"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Two models trained on the same table (other seeds, other artifacts)."""
    work = tmp_path_factory.mktemp("drift_models")
    out = {}
    for name, seed in (("a", 3), ("b", 4)):
        base = work / name
        out[name] = (base, train(base, work, seed))
    return out


# --- traffic ----------------------------------------------------------------------------------
def traffic(seed: int, rows: int = 1000, shift: str | None = None) -> pd.DataFrame:
    """Records drawn like the training data; ``shift`` moves one feature."""
    frame = churn_frame(rows, seed=seed)[FEATURES].copy()
    if shift == "spend":
        frame["spend"] = frame["spend"] * 4 + 100
    elif shift == "country":
        frame["country"] = np.where(np.arange(rows) % 2, "US", "NZ")
    return frame


def send(server: ServeProcess, frame: pd.DataFrame, path: str = "/invocations") -> None:
    for start in range(0, len(frame), BATCH):
        body = frame.iloc[start : start + BATCH].to_csv(index=False, header=False)
        status, _, answer = server.request(
            "POST", path, body.encode(), {"Content-Type": "text/csv"}
        )
        assert status == HTTPStatus.OK, answer


def counted(db: ServerDatabase, sha: str) -> int:
    return int(
        db.query(
            "SELECT COALESCE(SUM(records), 0) FROM modelapp_driftcount "
            f"WHERE model_sha256 = '{sha}'"
        )[0][0]
    )


def forget_counts(db: ServerDatabase) -> None:
    """A fresh window: the counts of earlier traffic deleted (all of it flushed)."""
    conn = sqlite3.connect(db.sqlite_path, timeout=20)
    try:
        conn.execute("DELETE FROM modelapp_driftcount")
        conn.commit()
    finally:
        conn.close()


def sent_and_counted(
    server: ServeProcess, db: ServerDatabase, sha: str, frame: pd.DataFrame, path: str
) -> None:
    before = counted(db, sha)
    send(server, frame, path)
    wait_for(
        lambda: counted(db, sha) == before + len(frame),
        what=f"{len(frame)} records counted",
    )


def drift_page(server: ServeProcess, db: ServerDatabase, sha: str) -> str:
    (pk,) = db.query(f"SELECT id FROM modelapp_trainedmodel WHERE sha256 = '{sha}'")[0]
    client = AdminClient(server.port)
    client.login(ADMIN_USER, ADMIN_PASSWORD)
    status, _, page = client.get(
        f"/admin/modelapp/trainedmodel/{pk}/drift/?window=hour"
    )
    assert status == HTTPStatus.OK, page[:500]
    return page


def drifting(page: str) -> list[str]:
    """The features the page flags; every feature of the model is on it."""
    rows = ROW.findall(page)
    assert sorted(name for _, name in rows) == sorted(FEATURES)
    return [name for state, name in rows if state == "drifting"]


# --- one model -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single(models, tmp_path_factory) -> Iterator:
    work = tmp_path_factory.mktemp("drift_single")
    db = ServerDatabase(work / "db")  # SQLite: forget_counts deletes rows in it
    base, sha = models["a"]
    env = {
        **capture_env(db, work),
        "SMSERVE_METRICS_HOST": "127.0.0.1",
        "SMSERVE_METRICS_PORT": str(free_port("127.0.0.1")),
    }
    server = ServeProcess(base, work, env=env).start()
    yield server, db, sha
    server.stop()


@pytest.mark.parametrize(
    ("shift", "flagged"), [(None, []), ("spend", ["spend"]), ("country", ["country"])]
)
def test_one_shifted_feature_is_flagged_and_no_other(single, shift, flagged):
    """Traffic drawn from the training distribution flags nothing; traffic with one
    feature shifted (numeric: spend; categorical: country, half unseen) flags that
    feature and no other.

    docs/settings.md: `SMSERVE_CAPTURE_PERCENT` (every request sampled), the thresholds
    `SMSERVE_DRIFT_PSI`, `SMSERVE_DRIFT_JS` and `SMSERVE_DRIFT_MIN_RECORDS`.
    docs/training.md, What it writes, metadata.json: "outputs and each feature's
    distribution (the training distributions that drift is measured against)".
    docs/metrics.md: `smserve_drift_psi`, `smserve_drift_js_distance` and
    `smserve_model_drifting` give the page's verdict to a scraper."""
    server, db, sha = single
    forget_counts(db)
    sent_and_counted(server, db, sha, traffic(5, shift=shift), "/invocations")
    page = drift_page(server, db, sha)
    assert drifting(page) == flagged
    assert "Reference: the training data (600 rows" in page
    if flagged:
        assert f"Drifting: {flagged[0]}" in page
    else:
        assert "No drift" in page
    # The same verdict as Prometheus gauges (docs/metrics.md: smserve_drift_psi,
    # smserve_drift_js_distance, smserve_model_drifting): the window is the last day,
    # and forget_counts left only this traffic in it.
    gauges = drift_gauges(server)
    verdict = 1 if flagged else 0
    assert gauges["smserve_model_drifting"] == {("model", sha[:12], ""): verdict}
    psi = {f: v for (_, _, f), v in gauges["smserve_drift_psi"].items()}
    js = {f: v for (_, _, f), v in gauges["smserve_drift_js_distance"].items()}
    assert set(FEATURES) <= set(psi)
    assert set(FEATURES) <= set(js)
    over = [f for f in FEATURES if psi[f] > 0.25 or js[f] > 0.2]  # the env's thresholds
    assert sorted(over) == flagged


def drift_gauges(single_server: ServeProcess) -> dict[str, dict[tuple, float]]:
    """The drift gauges the server's metrics port exposes, by (model, sha256, feature)."""
    port = single_server.env["SMSERVE_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("smserve_drift_", "smserve_model_drifting")):
                key = tuple(
                    sample.labels.get(k, "") for k in ("model", "sha256", "feature")
                )
                out.setdefault(sample.name, {})[key] = sample.value
    return out


def test_demo_traffic_shows_drift(single, models):
    """``manage.py demo_traffic`` (scripts/demo.sh's traffic) draws records from the
    model's training distributions and shifts the first numeric feature in half of
    them: the drift page flags that feature only."""
    server, db, sha = single
    forget_counts(db)
    base, _ = models["a"]
    done = subprocess.run(
        [PYTHON, "manage.py", "demo_traffic", "--base-dir", str(base)]
        + ["--port", str(server.port), "--records", "600"],
        cwd=ROOT,
        env=train_env(None, base.parent / "demo-state"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "the last 300 with tenure shifted" in done.stdout
    wait_for(lambda: counted(db, sha) == 600, what="the demo's records counted")
    assert drifting(drift_page(server, db, sha)) == ["tenure"]


@pytest.mark.browser
def test_drift_page_in_chromium(single, tmp_path):
    """In a real browser: the model list says which feature drifts, the model's page
    links to its drift page, which marks spend as drifting, first, and draws its PSI
    per hour; nothing is fetched from the internet."""
    from playwright.sync_api import expect, sync_playwright

    from tests.test_admin_browser import CHROMIUM, CHROMIUM_ARGS

    server, db, sha = single
    forget_counts(db)
    sent_and_counted(server, db, sha, traffic(13, shift="spend"), "/invocations")
    base = f"http://127.0.0.1:{server.port}"
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.on(
                "request",
                lambda r: None if r.url.startswith(base) else outside.append(r.url),
            )
            page.goto(f"{base}/admin/login/?next=/admin/")
            page.fill("#id_username", ADMIN_USER)
            page.fill("#id_password", ADMIN_PASSWORD)
            page.click("input[type=submit]")
            page.click("text=Trained models")
            expect(page.locator("td.field-drift")).to_have_text("drifting: spend")
            page.click(f"text={sha[:12]}")
            page.click("a.smserve-drift-link")
            rows = page.locator("table.smserve-drift-features tbody tr")
            expect(rows).to_have_count(len(FEATURES))
            expect(rows.first).to_have_attribute("data-feature", "spend")
            expect(rows.first).to_have_class("feature drifting")
            expect(page.locator("tr.feature.drifting")).to_have_count(1)
            chart = page.locator("figure.smserve-drift-chart svg")
            expect(chart).to_be_visible()
            assert chart.locator("rect.psi.drifting").count() >= 1
            page.click("text=last week")
            expect(page.locator("tr.feature.drifting")).to_have_count(1)
            page.screenshot(path=str(tmp_path / "drift.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []


# --- a multi-model endpoint ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mme(models, tmp_path_factory) -> Iterator:
    """Models a and b (trained here) and c (trained elsewhere: no distributions)
    loaded on one multi-model server."""
    work = tmp_path_factory.mktemp("drift_mme")
    db = ServerDatabase(work / "db")
    elsewhere = work / "elsewhere"
    write_model(elsewhere, fitted_elsewhere())
    env = {
        **capture_env(db, work),
        "SAGEMAKER_MULTI_MODEL": "TRUE",
        "SMSERVE_MME_MODEL_ROOT": str(tmp_path_factory.getbasetemp()),
        "SMSERVE_DRIFT_REFERENCE_RECORDS": "300",
    }
    server = ServeProcess(work / "empty", work, env=env).start()
    shas = {}
    for name, model_dir in (
        ("a", models["a"][0] / "model"),
        ("b", models["b"][0] / "model"),
        ("c", elsewhere / "model"),
    ):
        body = json.dumps({"model_name": name, "url": str(model_dir)}).encode()
        status, _, answer = server.request(
            "POST", "/models", body, {"Content-Type": "application/json"}
        )
        assert status == HTTPStatus.OK, answer
    shas = {"a": models["a"][1], "b": models["b"][1]}
    yield server, db, shas
    server.stop()


def test_two_models_on_a_multi_model_endpoint(mme):
    """Each model is counted against its own training data: a's traffic is drawn like
    it, b's has spend shifted; only b's spend is flagged."""
    server, db, shas = mme
    sent_and_counted(server, db, shas["a"], traffic(6), "/models/a/invoke")
    sent_and_counted(
        server, db, shas["b"], traffic(7, shift="spend"), "/models/b/invoke"
    )
    assert drifting(drift_page(server, db, shas["a"])) == []
    assert drifting(drift_page(server, db, shas["b"])) == ["spend"]


def test_a_model_trained_elsewhere_uses_its_first_served_records(mme):
    """A bare model.joblib has no training distributions: its first sampled records
    (SMSERVE_DRIFT_REFERENCE_RECORDS) become the reference, labelled as such; traffic
    after it with country shifted flags country only."""
    server, db, _ = mme

    def reference() -> list:
        send(server, traffic(8, rows=BATCH), "/models/c/invoke")
        return db.query("SELECT model_sha256, records FROM modelapp_driftreference")

    ((sha, records),) = wait_for(reference, what="a served reference")
    assert records >= 300
    page = drift_page(server, db, sha)
    assert f"Reference: the first {records} served records" in page
    seeds = iter(range(100, 200))

    def shifted_counted() -> bool:
        # A worker that did not write the reference adopts it at its next flush; what
        # it served before that is not counted, so send until enough is.
        shifted = traffic(next(seeds), rows=BATCH, shift="country")
        send(server, shifted, "/models/c/invoke")
        return counted(db, sha) >= 400

    wait_for(shifted_counted, what="shifted records counted")
    assert drifting(drift_page(server, db, sha)) == ["country"]


# --- a database outage -------------------------------------------------------------------------
def test_database_outage_loses_counts_never_a_request(models, tmp_path):
    """With the database gone, every invocation still answers 200 while the drift
    flushes fail (logged); the counts kept in memory arrive once it is back."""
    db = ServerDatabase(tmp_path / "db")
    base, sha = models["a"]
    server = ServeProcess(base, tmp_path, env=capture_env(db, tmp_path)).start()
    try:
        sent_and_counted(server, db, sha, traffic(10, rows=200), "/invocations")
        away = db.state_dir.with_name("state-away")
        db.state_dir.rename(away)
        try:
            send(server, traffic(11, rows=300), "/invocations")
            wait_for(
                lambda: "Drift counts not flushed" in server.log,
                what="a failed drift flush logged",
            )
            send(server, traffic(12, rows=300), "/invocations")
        finally:
            away.rename(db.state_dir)
        wait_for(lambda: counted(db, sha) == 800, what="counts after the outage")
    finally:
        assert server.stop() == 0
    assert counted(db, sha) == 800
