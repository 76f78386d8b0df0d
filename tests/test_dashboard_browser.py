"""The dashboard in a real browser: headless Chromium (Debian's, driven by selenium through
/usr/bin/chromedriver) loads a running devnet node's page and sees its peer table and charts
fill with live data. A screenshot is kept in ``test-artefacts/`` (git-ignored).

Outside CI a machine without Chromium skips this test (``bash .ci/browser.sh`` installs it); in
CI (``CI=true``) a missing browser fails it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.util import CLI

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("training_processes")]  # one at a time

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TRAIN = ["--preset", "micro", "--round-seconds", "3", "--inner-steps", "2"]
ARTEFACTS = Path(__file__).resolve().parents[1] / "test-artefacts"


def _browser_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: run `bash .ci/browser.sh` (apt: chromium chromium-driver)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _scores(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#peers tbody tr td.num:nth-child(2)")]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _chrome(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_dashboard_fills_with_live_data_in_chromium(tmp_path: Path) -> None:
    _browser_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    args = ["--nodes", "3", "--rounds", "0", "--json", "--out", str(tmp_path / "devnet"), *TRAIN]
    devnet = subprocess.Popen(
        [*CLI, "devnet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert devnet.stdout is not None
        for line in devnet.stdout:
            try:
                events.put(json.loads(line))
            except json.JSONDecodeError:
                continue

    threading.Thread(target=read, daemon=True).start()
    driver = None
    try:
        deadline = time.monotonic() + 90
        url = ""
        while not url:
            event = events.get(timeout=max(0.01, deadline - time.monotonic()))
            if event.get("node") == 0 and event.get("event") == "metrics":
                url = str(event["url"])
        assert url.startswith("http://127.0.0.1:")

        driver = _chrome(tmp_path / "chromium-profile")
        driver.set_page_load_timeout(30)
        driver.get(url)
        wait = WebDriverWait(driver, 120, poll_frequency=0.5)
        # the peer table: the two other nodes, each with a gossip score
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#peers tbody tr[data-peer]")) == 2)
        # the charts: loss and bytes of at least two rounds, drawn from live data
        wait.until(lambda d: int(d.find_element(By.ID, "loss-chart").get_attribute("data-points")) >= 2)
        assert int(driver.find_element(By.ID, "bytes-chart").get_attribute("data-points")) >= 4
        assert driver.find_element(By.ID, "conn").text == "live"
        assert driver.find_element(By.ID, "round").text.isdigit()
        # each peer's gossip score, once its gossip stream is up
        wait.until(lambda d: len(_scores(d)) == 2 and all(_is_number(s) for s in _scores(d)))
        # the checkpoint hash majority, from the three nodes' views of one moment
        wait.until(lambda d: "of 3 nodes" in d.find_element(By.ID, "majority-detail").text)
        # the chart is drawn: the canvas holds more than a blank background
        drawn = driver.execute_script(
            "const c = document.getElementById('loss-chart');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;"
        )
        assert drawn > 500, drawn
        ARTEFACTS.mkdir(exist_ok=True)
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        shutil.copy(shot, ARTEFACTS / "dashboard.png")
    finally:
        if driver is not None:
            driver.quit()
        if devnet.poll() is None:
            os.kill(devnet.pid, signal.SIGINT)
        try:
            devnet.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(devnet.pid, signal.SIGKILL)
            devnet.wait()
