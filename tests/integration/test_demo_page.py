"""The demo page and the API docs in a real browser (headless Chromium) against the real stack.

The browser has no network beyond loopback: host names other than 127.0.0.1 do not resolve, and
everything else goes to a proxy that is not there. A page that needed a CDN would not work.
"""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.devstack import DevStack
from workers.demo.data import LABELS, make_sample, to_png_bytes


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "make test installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def requested_urls(browser: webdriver.Chrome) -> set[str]:
    """What the browser asked for since the last call, from its network log."""
    events = (json.loads(entry["message"])["message"] for entry in browser.get_log("performance"))
    return {
        event["params"]["request"]["url"]
        for event in events
        if event["method"] == "Network.requestWillBeSent"
    }


def open_page(browser: webdriver.Chrome, stack: DevStack) -> Select:
    browser.get(stack.url + "/")
    WebDriverWait(browser, 30).until(
        lambda page: page.find_elements(By.CSS_SELECTOR, "#methods option")
    )
    model = Select(browser.find_element(By.ID, "model"))
    model.select_by_value("demo-lesions")
    return Select(browser.find_element(By.ID, "methods"))


def test_explains_an_uploaded_image_and_shows_the_overlay(
    browser: webdriver.Chrome, stack: DevStack, tmp_path: Path
) -> None:
    sample = make_sample(4242)
    image = tmp_path / "lesion.png"
    image.write_bytes(to_png_bytes(sample.image))

    methods = open_page(browser, stack)
    offered = [option.get_attribute("value") for option in methods.options]
    chosen = [option.get_attribute("value") for option in methods.all_selected_options]
    browser.find_element(By.ID, "image").send_keys(str(image))
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 60).until(
        lambda page: page.execute_script(
            "const img = document.querySelector('#maps img');"
            "return img !== null && img.complete && img.naturalWidth > 0;"
        )
    )

    assert "gradcam" in offered and "saliency" in offered
    assert "activation_max" not in offered  # not an explanation method
    assert chosen == ["gradcam"]
    caption = browser.find_element(By.CSS_SELECTOR, "#maps figcaption").text
    assert caption.startswith("gradcam → ")
    assert caption.removeprefix("gradcam → ") in LABELS
    size = browser.execute_script(
        "const img = document.querySelector('#maps img');"
        "return [img.naturalWidth, img.naturalHeight];"
    )
    assert size == [sample.image.shape[1], sample.image.shape[0]]
    status = browser.find_element(By.ID, "status").text
    assert any(status.startswith(label) for label in LABELS), status


def test_shows_an_error_as_text_never_as_html(
    browser: webdriver.Chrome, stack: DevStack, tmp_path: Path
) -> None:
    image = tmp_path / "lesion.png"
    image.write_bytes(to_png_bytes(make_sample(4243).image))

    open_page(browser, stack)
    browser.find_element(By.ID, "image").send_keys(str(image))
    target = browser.find_element(By.ID, "target")
    target.clear()
    target.send_keys('<img id="injected" src="x">')
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 30).until(
        lambda page: page.find_elements(By.CSS_SELECTOR, "#status .error")
    )

    error = browser.find_element(By.CSS_SELECTOR, "#status .error").text
    assert error.startswith("422: ")
    assert not browser.find_elements(By.ID, "injected")


def test_the_browser_reaches_nothing_beyond_loopback(
    browser: webdriver.Chrome, stack: DevStack
) -> None:
    browser.get(stack.url + "/healthz")
    outcome = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('https://example.com/', {mode: 'no-cors'})"
        ".then(() => done('reached'), () => done('failed'));"
    )

    assert outcome == "failed"


def test_api_docs_list_the_operations_and_offer_to_authorize(
    browser: webdriver.Chrome, stack: DevStack
) -> None:
    requested_urls(browser)
    browser.get(stack.url + "/docs")
    WebDriverWait(browser, 30).until(
        lambda page: page.find_elements(
            By.CSS_SELECTOR, '.opblock-post .opblock-summary-path[data-path="/v1/explanations"]'
        )
    )
    operations = {
        (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"),
        )
        for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")
    }
    browser.find_element(By.CSS_SELECTOR, "button.authorize").click()
    WebDriverWait(browser, 10).until(
        lambda page: page.find_elements(By.CSS_SELECTOR, ".auth-container h4")
    )
    schemes = [
        heading.text.split()[0]
        for heading in browser.find_elements(By.CSS_SELECTOR, ".auth-container h4")
    ]
    outside = {
        url
        for url in requested_urls(browser)
        if not url.startswith((stack.url + "/", "data:", "blob:" + stack.url + "/"))
    }

    expected = {("POST", "/v1/explanations"), ("GET", "/v1/jobs/{job_id}"), ("GET", "/healthz")}
    assert expected <= operations
    assert schemes == ["bearer", "apiKey"]
    assert not outside
