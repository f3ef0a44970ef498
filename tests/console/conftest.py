"""Headless Chromium (Debian's `chromium` and `chromium-driver`) driven through Selenium, and
service instances running the test domain on one nats-server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from app.brokers.embedded import NatsServer
from app.testing import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ADMIN_TOKEN = "console-admin-token-0123"
NODE_TTL = 2.0

Start = Callable[..., ServiceProcess]

NO_BROWSER = (
    "needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver "
    "(.ci/run installs them)"
)
HAS_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with its console and network logs readable (`get_log`)."""
    if not HAS_BROWSER:
        pytest.skip(NO_BROWSER)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(1280, 900)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $QOSMESH_SCREENSHOTS (`dev.py screenshots`), else a temp dir."""
    folder = Path(os.environ.get("QOSMESH_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def instances(
    service_process: Start, nats_server: NatsServer, tmp_path: Path
) -> Callable[..., ServiceProcess]:
    """Start one more instance of the test domain's service on the shared nats-server."""

    def start(**env: str) -> ServiceProcess:
        return service_process(
            {
                "APP_NATS_URL": nats_server.url,
                "APP_DOMAIN": "tests.console.flaky_domain",
                "APP_SERVICE_NAME": "console-test",
                "APP_NODE_TTL": str(NODE_TTL),
                "APP_ADMIN_TOKEN": ADMIN_TOKEN,
                "APP_MAX_DELIVER": "2",
                "FLAKY_FLAG": str(tmp_path / "flag"),
                "FLAKY_EFFECTS": str(tmp_path / "effects"),
                "PYTHONPATH": str(ROOT),
                **env,
            },
            wait="/readyz",
        )

    return start
