"""/docs in a real headless Chromium: Swagger UI renders every operation of /openapi.json from
the files the package bundles, and no request leaves the host.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); skipped, saying
so, where they are absent.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from feature_store.db import connect
from recsys.core.config import load_settings
from serving.writer import EventWriter
from tests.factories import load_into_store, make_catalog, make_events
from tests.integration.test_server import RunningServer, running_server

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def docs_server(
    tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path
) -> Iterator[RunningServer]:
    """``recsys serve`` over a tiny published store (the docs need no models)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "headless browser test needs Debian's chromium and chromedriver "
            "(apt-get install -y chromium chromium-driver; .ci/run installs them)"
        )
    home = tmp_path_factory.mktemp("docs-home")
    settings = load_settings(overrides={"home": str(home)}, environ={})
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    EventWriter(settings).flush()
    with running_server(home, real_data_dir, workers=1) as srv:
        yield srv


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
        # any host but this one fails to resolve: a CDN asset could not render the page
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def test_swagger_ui_renders_every_operation_offline(
    docs_server: RunningServer, browser: Any
) -> None:
    doc = httpx.get(f"{docs_server.base_url}/openapi.json", timeout=30).json()
    expected = {
        (method.upper(), path, op["operationId"])
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert len(expected) == 10

    browser.get(f"{docs_server.base_url}/docs")
    # the first load parses ~1.7 MB of JavaScript: generous on a loaded 2-core machine
    WebDriverWait(browser, 120).until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, ".opblock .opblock-summary-operation-id"))
            >= len(expected)
        )
    )
    rendered = {
        (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.strip(),
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"),
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-operation-id").text.strip(),
        )
        for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")
    }
    assert rendered == expected
    # Swagger UI resolved the whole document: no "Resolver error" or parse error box
    assert not browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper .error-wrapper")
    assert "Resolver error" not in browser.page_source
    # the schemas section renders the contract's models
    top_level = (
        '.models article[data-json-schema-level="0"] > div > button .json-schema-2020-12__title'
    )
    models = {e.text for e in browser.find_elements(By.CSS_SELECTOR, top_level)}
    assert set(doc["components"]["schemas"]) <= models

    requested = _requested_urls(browser)
    assert f"{docs_server.base_url}/openapi.json" in requested
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in requested)
    outside = [u for u in requested if not _local(u)]
    assert outside == [], f"the docs page made requests off the host: {outside}"


def _requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for: the DevTools log plus the page's resource timings."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    urls += driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return urls


def _local(url: str) -> bool:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("data", "blob", "about", "chrome", "chrome-extension"):
        return True
    return parsed.scheme in ("http", "https", "ws") and parsed.hostname in LOCAL_HOSTS
