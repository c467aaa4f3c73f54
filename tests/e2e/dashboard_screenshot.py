"""Takes the README's screenshot of the admin dashboard with the browser test's set-up
(``scribbleflow serve`` subprocess, Debian's Chromium driven by Playwright) on a stream of
three annotated images, and stores it as a small palette PNG.

    .venv/bin/python -m tests.e2e.dashboard_screenshot docs/dashboard.png
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from clients.client import ScribbleflowClient
from clients.server_process import ServerProcess
from server.storage.datastore import DataStore
from tests.dashboard_stream import build_stream
from tests.e2e.test_dashboard_browser import CHROMIUM, admin_token

PALETTE_COLOURS = 128


def take_screenshot(target: Path, annotated: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data_dir = folder / "data"
        data_dir.mkdir()
        env = dict(os.environ, SCRIBBLEFLOW_DATA_DIR=str(data_dir), SCRIBBLEFLOW_DATABASE_URL="",
                   SCRIBBLEFLOW_COMPUTE_THREADS="1", SCRIBBLEFLOW_LOG_LEVEL="warning")
        token = admin_token(data_dir)
        server = ServerProcess(env, folder / "server.log")
        server.start()
        try:
            with ScribbleflowClient(server.url, token, timeout=300) as client:
                build_stream(client, folder / "stream", DataStore(data_dir).models_dir, annotated=annotated,
                             name="heart", job_timeout=1800)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{server.url}/admin")
                page.fill("#token", token)
                page.click("#login button[type=submit]")
                page.wait_for_selector("#images tbody tr")
                page.wait_for_timeout(500)
                raw = folder / "raw.png"
                page.screenshot(path=str(raw), full_page=True)
                browser.close()
        finally:
            server.stop()
        image = Image.open(raw).convert("RGB").quantize(colors=PALETTE_COLOURS)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("--annotated", type=int, default=3, help="annotated (accepted) training images")
    args = parser.parse_args()
    take_screenshot(args.target, args.annotated)
    print(f"{args.target}: {args.target.stat().st_size} bytes")


if __name__ == "__main__":
    main()
