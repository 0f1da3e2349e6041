"""Headless Chromium for the demo page tests: Debian's `chromium` driven by `chromium-driver`."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

WIDTH = 1280


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless browser session, quit on exit."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, "make test installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WIDTH},1000")
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def screenshot(browser: webdriver.Chrome, path: Path) -> Path:
    """A PNG of the whole page, however long: the window grows to the document first."""
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(WIDTH, height + 140)  # the window's frame takes part of its height
    browser.save_screenshot(str(path))
    return path
