"""The admin flow once in a real headless browser (Debian's chromium via Playwright):
log in, open the trained model, see its metrics and the traffic chart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.support.admin import ADMIN_PASSWORD, ADMIN_USER, start_admin_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory) -> Iterator:
    server, db, sha = start_admin_server(tmp_path_factory.mktemp("admin_browser"))
    yield server, db, sha
    server.stop()
    db.drop()


@pytest.fixture
def screenshots(tmp_path_factory) -> Path:
    """Where the screenshots go: pytest's temporary directory, never the checkout."""
    path = tmp_path_factory.mktemp("screenshots")
    print(f"screenshots in {path}")
    return path


@pytest.mark.browser
def test_admin_flow_in_chromium(admin_server, screenshots):
    """Log in, open the trained model from the list, find its metrics, hyperparameters,
    input schema (a row per feature with its kind) and the traffic chart with bars; every request stays on the server (nothing
    is fetched from the internet); screenshots are saved (``screenshots``)."""
    server, db, sha = admin_server
    requests = db.totals()["requests"]  # what the page must show, whoever sent them
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
            page.goto(f"{base}/admin/")
            expect(page).to_have_url(f"{base}/admin/login/?next=/admin/")
            page.fill("#id_username", ADMIN_USER)
            page.fill("#id_password", ADMIN_PASSWORD)
            page.click("input[type=submit]")
            expect(page.locator("#site-name")).to_have_text("smserve")

            page.click("text=Trained models")
            page.click(f"text={sha[:12]}")
            expect(page.locator("h2", has_text=sha[:12])).to_be_visible()
            expect(page.get_by_text("validation:accuracy").first).to_be_visible()
            expect(page.locator("th", has_text="max_depth")).to_be_visible()
            schema = page.locator("table.smserve-schema")
            expect(schema.locator("th", has_text="kind")).to_be_visible()
            expect(schema.locator("tbody tr")).to_have_count(2)
            expect(schema.locator("tbody tr").first).to_contain_text("numeric")
            chart = page.locator("figure.smserve-chart svg")
            expect(chart).to_be_visible()
            assert chart.locator("rect.requests").count() >= 1
            assert chart.locator("rect.errors").count() >= 1
            expect(page.locator("figure.smserve-chart figcaption")).to_contain_text(
                f"{requests} in all"
            )
            page.screenshot(
                path=str(screenshots / "admin-trained-model.png"), full_page=True
            )

            page.click("text=Invocation stats")
            expect(page.locator("figure.smserve-chart svg")).to_be_visible()
            expect(page.locator("th.column-requests")).to_be_visible()
            page.screenshot(path=str(screenshots / "admin-invocation-stats.png"))
        finally:
            browser.close()
    assert outside == []
    assert Path(screenshots / "admin-trained-model.png").stat().st_size > 10_000


@pytest.mark.browser
def test_model_report_in_chromium(admin_server, screenshots):
    """The model's page draws the report ``train`` wrote (validation channel): the
    confusion matrix as a table, ROC, precision-recall and calibration as SVG with a
    title that says the figures, the permutation importance as a bar per input column."""
    server, db, sha = admin_server
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
            page.click(f"text={sha[:12]}")
            expect(page.locator("p.smserve-report-source")).to_have_text(
                "Measured on the validation channel (40 rows)."
            )
            confusion = page.locator("table.smserve-confusion")
            expect(confusion).to_be_visible()
            expect(confusion.locator("caption")).to_contain_text("Confusion matrix")
            expect(confusion.locator("tbody tr")).to_have_count(2)
            cells = confusion.locator("tbody td").all_inner_texts()
            assert sum(int(c) for c in cells) == 40
            expect(page.locator("table.smserve-per-class tbody tr")).to_have_count(2)
            charts = page.locator("figure.smserve-report-chart svg")
            expect(charts).to_have_count(3)
            for index, name in enumerate(("ROC", "Precision-recall", "Calibration")):
                chart = charts.nth(index)
                expect(chart).to_be_visible()
                expect(chart.locator("> title")).to_contain_text(name)
                assert chart.locator("polyline.curve").count() == 1
            expect(charts.nth(0).locator("> title")).to_contain_text("AUC")
            bars = page.locator("figure.smserve-importance svg g.column")
            expect(bars).to_have_count(2)
            expect(bars.first.locator("title")).to_contain_text("column")
            page.locator("div.smserve-report").screenshot(
                path=str(screenshots / "admin-model-report.png")
            )
        finally:
            browser.close()
    assert outside == []
