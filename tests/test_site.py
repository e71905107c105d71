"""The built documentation site renders in a real browser (headless Chromium driven by Selenium).

Opens the front page, an API page, the mathematics page and the gallery of ``docs/_build/html``
(built by ``./docs.sh``) over HTTP on the loopback interface and checks what a reader sees: the
title, a working search box (it finds ``infinite_kernel`` through the site's JavaScript index),
every image loaded, the equations typeset.

Needs the built site, Chromium and ChromeDriver (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them). Without them the tests are skipped -- unless
``NTKIT_SITE_TEST=1`` (set by ``.ci/run``), which turns a missing prerequisite into a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SITE = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"
REQUIRED = os.environ.get("NTKIT_SITE_TEST") == "1"
CHROMIUM = os.environ.get("NTKIT_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NTKIT_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
TIMEOUT = 30.0


def _missing() -> str:
    if not (SITE / "index.html").is_file():
        return f"no built site at {SITE} (run ./docs.sh)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            return f"{path} not found (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'ntkit[test]')"
    return ""


def _need_prerequisites() -> None:
    why = _missing()
    if why and REQUIRED:
        pytest.fail(f"NTKIT_SITE_TEST=1 but {why}")
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The site on http://127.0.0.1:<free port>/, served from a thread."""
    _need_prerequisites()
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never look for drivers online
    profile = tempfile.mkdtemp(prefix="ntkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--no-first-run", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT).until(condition, message=f"timed out waiting for {what}")


def _broken_images(driver: Any) -> list[str]:
    """Images that did not load (after waiting for all of them to finish)."""
    _wait(driver, lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"),
          "the images to load")
    return list(driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)"
    ))


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", f"{url} to load")


def test_front_page_renders_and_search_works(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(browser, server + "index.html")
    assert "ntkit" in browser.title
    assert browser.find_element(By.CSS_SELECTOR, "h1").text.startswith("ntkit")
    images = browser.find_elements(By.TAG_NAME, "img")
    assert images, "the front page shows no image (the logo is missing)"
    assert _broken_images(browser) == []
    links = {a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a")}
    for page in ("getting_started.html", "mathematics.html", "api/index.html", "auto_examples/index.html"):
        assert any(str(h).endswith(page) for h in links), f"no link to {page}"

    # the search box: open it, type, and get results from the site's JavaScript search index
    button = browser.find_element(By.CSS_SELECTOR, ".search-button-field, .search-button")
    button.click()
    field = _wait(browser, lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, "input[name='q']")
                                           if e.is_displayed()), False), "the search box")
    field.send_keys("infinite_kernel", Keys.ENTER)
    _wait(browser, lambda d: "search.html" in d.current_url, "the search page")
    hits = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li a") or False,
                 "search results")
    assert any("ntkit.infinite_kernel" in str(a.get_attribute("href")) for a in hits)


def test_api_page_renders(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, server + "api/generated/ntkit.infinite_kernel.html")
    assert "infinite_kernel" in browser.title and "ntkit" in browser.title
    signature = browser.find_element(By.CSS_SELECTOR, "dl.py.function dt.sig")
    assert "infinite_kernel" in signature.text
    body = browser.find_element(By.CSS_SELECTOR, "dl.py.function dd").text
    for section in ("Parameters", "Returns", "Raises", "Examples"):
        assert section in body, f"no {section} section"
    assert browser.find_elements(By.CSS_SELECTOR, ".search-button-field, .search-button, input[name='q']")
    assert _broken_images(browser) == []


def test_mathematics_is_typeset(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, server + "mathematics.html")
    assert "mathematics" in browser.title.lower()
    offline = (SITE / "_static" / "mathjax" / "tex-svg.js").is_file()
    if offline:  # MathJax is served by the site itself: every equation must be typeset
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "mjx-container svg"), "MathJax")
        assert len(browser.find_elements(By.CSS_SELECTOR, "mjx-container")) > 20
        errors = browser.find_elements(By.CSS_SELECTOR, "[data-mml-node='merror']")
        assert not errors, f"MathJax reports errors: {[e.get_attribute('data-mjx-error') for e in errors]}"
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a.reference.internal")]
    assert any("ntkit.fc_kernel" in str(h) for h in links), "the equations do not link to the functions"


def test_gallery_shows_its_figures(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, server + "auto_examples/index.html")
    thumbs = browser.find_elements(By.CSS_SELECTOR, ".sphx-glr-thumbcontainer img")
    assert len(thumbs) >= 6
    assert _broken_images(browser) == []
    _open(browser, server + "auto_examples/plot_convergence.html")
    figures = browser.find_elements(By.CSS_SELECTOR, "img.sphx-glr-single-img")
    assert figures and all(int(f.get_attribute("naturalWidth")) > 300 for f in figures)
    assert _broken_images(browser) == []
