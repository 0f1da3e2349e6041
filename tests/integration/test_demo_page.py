"""The demo page in a real browser (headless Chromium) against the real stack."""

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
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


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
