"""The admin dashboard in a real browser: Debian's Chromium driven by Playwright against
``scribbleflow serve`` (uvicorn subprocess on loopback) after a small annotation stream.

Checks: a wrong token, or one without the admin role, shows an error; the right one
(asked once, kept in sessionStorage) draws the charts from the stream's data (one point
per model version in the Dice chart, read from the ECharts instance); a refresh is one
request; the label download link works; the page asks nothing of any host but the server
and logs no error (its Content-Security-Policy would). A screenshot
is saved in the test's temporary folder (``dashboard.png``).

Chromium comes from Debian (``tests/ensure_services.sh`` installs it); Playwright never
downloads a browser here.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import pytest

from clients.client import ScribbleflowClient
from clients.server_process import ServerProcess
from server.auth import create_token
from server.settings import Settings
from server.storage.datastore import DataStore
from server.storage.db import make_engine, make_session_factory
from server.storage.migrate import create_schema
from tests.dashboard_stream import build_stream

CHROMIUM = Path("/usr/bin/chromium")
TOKEN_KEY = "scribbleflow.adminToken"  # server/static/admin.js
PAGE_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.slow


def _require(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI must run the browser test: see tests/ensure_services.sh)")
        pytest.skip(why)


@pytest.fixture
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    _require(sync_playwright is not None, "playwright is not installed (pip install -e '.[dev]')")
    _require(CHROMIUM.is_file(), f"{CHROMIUM} is missing (apt-get install chromium)")
    return sync_playwright


def make_token(data_dir: Path, role: str = "admin", owner: str = "alice") -> str:
    """A token written to the server's own database (before it starts, or beside it)."""
    engine = make_engine(Settings(data_dir=data_dir, database_url=None).resolved_database_url)
    try:
        create_schema(engine)
        with make_session_factory(engine)() as db:
            token, _ = create_token(db, role, owner)
    finally:
        engine.dispose()
    return token


def admin_token(data_dir: Path) -> str:
    return make_token(data_dir)


@pytest.fixture
def server(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = dict(os.environ)
    env.update(
        SCRIBBLEFLOW_DATA_DIR=str(data_dir),
        SCRIBBLEFLOW_DATABASE_URL="",
        SCRIBBLEFLOW_COMPUTE_THREADS="1",
        SCRIBBLEFLOW_VALIDATION_EVERY="0",
        SCRIBBLEFLOW_LOG_LEVEL="warning",
    )
    token = admin_token(data_dir)
    annotator = make_token(data_dir, "annotator", "bob")
    process = ServerProcess(env, tmp_path / "server.log")
    process.start()
    try:
        yield process, token, annotator, DataStore(data_dir)
    finally:
        process.stop()


DICE_POINTS = """() => {
  const chart = echarts.getInstanceByDom(document.getElementById('chart-dice'));
  if (!chart) return null;
  const points = {};
  for (const series of chart.getOption().series) {
    if (!series.id.startsWith('versions-')) continue;
    points[series.id.slice('versions-'.length)] = series.data
      .filter((d) => d.value[1] !== null && d.value[1] !== undefined).map((d) => d.version);
  }
  return points;
}"""

SERIES_LENGTH = """([chartId, seriesId]) => {
  const chart = echarts.getInstanceByDom(document.getElementById(chartId));
  const series = chart.getOption().series.find((s) => s.id === seriesId);
  return series.data.length;
}"""


def test_dashboard_in_chromium(server, sync_playwright, tmp_path):
    process, token, annotator_token, datastore = server
    with ScribbleflowClient(process.url, token, timeout=300) as client:
        stream = build_stream(client, tmp_path / "stream", datastore.models_dir)
        models = client.list_models(stream.project_id)
        jobs = client.list_jobs(stream.project_id)
        label_bytes = client.download_label(stream.accepted_images[-1], tmp_path / "label.nii.gz").read_bytes()
    versions = [v.version for v in models.versions]
    models_by_version = {v.version: v for v in models.versions}
    rejected = [v.version for v in models.versions if v.details["status"] == "rejected"]
    # The gate judged one of a job's fine-tuned version and its average; only the blank candidate failed.
    assert [v for v in rejected if models_by_version[v].metrics.get("judged", True)] == [stream.rejected_version], models

    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            # The network is cut: only the server answers; anything else would fail (and is
            # recorded below either way).
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(process.url)
                          else route.abort("internetdisconnected"))
            page = context.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

            page.goto(f"{process.url}/admin")
            page.wait_for_selector("#login:not([hidden])")
            page.fill("#token", "sf_0000_not-a-real-token")
            page.click("#login button[type=submit]")
            error = page.wait_for_selector("#error:not([hidden])")
            assert "401" in error.inner_text() and "invalid API token" in error.inner_text()
            assert page.is_visible("#login") and not page.is_visible("#dashboard")
            # The refused token is not kept; the browser logs the 401 answer itself.
            assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
            page.fill("#token", annotator_token)
            page.click("#login button[type=submit]")
            page.wait_for_selector("#error:has-text('403')")
            assert "admin" in page.inner_text("#error") and page.is_visible("#login")
            assert all("401" in p or "403" in p for p in problems), problems
            problems.clear()

            page.fill("#token", token)
            page.click("#login button[type=submit]")
            page.wait_for_function(f"() => {{ const p = ({DICE_POINTS})(); return p && "
                                   f"Object.values(p).flat().length === {len(versions)}; }}")
            assert page.is_hidden("#error")
            points = page.evaluate(DICE_POINTS)
            assert sorted(v for vs in points.values() for v in vs) == versions
            assert points["serving"] == [models.serving_version]
            assert points["rejected"] == rejected
            assert page.evaluate(SERIES_LENGTH, ["chart-jobs", "job-seconds"]) == len(jobs)
            assert page.inner_text("#tile-serving") == f"v{models.serving_version}"
            assert page.inner_text("#tile-images") == f"{len(stream.accepted_images)} / 4"

            rows = page.locator("#images tbody tr")
            assert rows.count() == 4
            statuses = [s.strip() for s in page.locator("#images tbody .status").all_inner_texts()]
            assert sorted(statuses) == ["accepted", "accepted", "in progress", "new"]
            links = page.locator("#images a.label-link")
            assert links.count() == len(stream.accepted_images)
            with page.expect_download() as download_info:
                links.nth(len(stream.accepted_images) - 1).click()
            downloaded = Path(download_info.value.path()).read_bytes()
            assert gzip.decompress(downloaded) == gzip.decompress(label_bytes)

            # One request per refresh: the dashboard's JSON, nothing else.
            page.select_option("#interval", "0")
            before = len(requests)
            dashboard_url = f"{process.url}/api/v1/projects/{stream.project_id}/dashboard"
            with page.expect_response(dashboard_url):
                page.click("#refresh")
            page.wait_for_timeout(300)
            assert requests[before:] == [dashboard_url]

            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            # Asked once: a reload draws the dashboard without asking again.
            page.reload()
            page.wait_for_selector("#dashboard:not([hidden])")
            assert page.is_hidden("#login")
        finally:
            browser.close()

    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert not problems, problems
    origin = re.escape(process.url)
    foreign = [u for u in requests if not re.match(rf"({origin}/|data:|blob:{origin}/)", u)]
    assert not foreign, foreign
    assert any(u.endswith("/admin/static/vendor/echarts.min.js") for u in requests)
