"""The demo page tells the whole story, in headless Chromium against a real stack with keys on:
what a missing key means, which field an error names, signed maps on a diverging scale, the
window a DICOM file was shown through, and activation maximisation."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from browser import chromium, screenshot  # type: ignore[import-not-found]
from dicom_files import ct_file  # type: ignore[import-not-found]
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.auth import hash_key
from service.devstack import DevStack, free_port
from workers.demo.data import LABELS, make_sample, to_png_bytes
from workers.render import apply_colormap

ROOT = Path(__file__).resolve().parents[2]
SCOPES = {"viewer": ["explain"], "ops": ["admin"]}
BLACK_COLUMNS = 24  # the left columns of the image set to 0, the black baseline's own value

# The pixels of an <img> or a <canvas>, read back through a canvas: [x][y] → [r, g, b].
READ_PIXELS = """
const [source, points] = arguments;
const canvas = document.createElement("canvas");
canvas.width = source.naturalWidth || source.width;
canvas.height = source.naturalHeight || source.height;
const context = canvas.getContext("2d");
context.drawImage(source, 0, 0);
return points.map(([x, y]) => Array.from(context.getImageData(x, y, 1, 1).data.slice(0, 3)));
"""


def secret(name: str) -> str:
    return f"{name}-demo-page-key"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Gateway, worker and a private Redis serving the demo model, an API key required."""
    root = tmp_path_factory.mktemp("demo-story")
    repository = root / "models"
    repository.mkdir()
    (repository / "demo-lesions").symlink_to(ROOT / "models" / "demo-lesions")
    keys_file = root / "keys.json"
    entries = [{"name": n, "sha256": hash_key(secret(n)), "scopes": s} for n, s in SCOPES.items()]
    keys_file.write_text(json.dumps({"keys": entries}))
    running = DevStack(
        port=free_port(),
        log_dir=root / "logs",
        env={
            "GLIMPSE_AUTH": "on",
            "GLIMPSE_API_KEYS_FILE": str(keys_file),
            "GLIMPSE_MODEL_REPOSITORY": str(repository),
            "GLIMPSE_DEVICE": "cpu",
        },
    )
    try:
        running.start()
        running.wait_ready(timeout_s=180)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as session:
        yield session


def open_page(browser: webdriver.Chrome, stack: DevStack, key: str | None) -> None:
    """The page in a tab that holds no key, then `key` entered; waits for the lists or an error."""
    browser.get(stack.url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait_for_access(browser)
    if key is not None:
        shown = browser.find_elements(By.CSS_SELECTOR, "#access .error")
        browser.find_element(By.ID, "api-key").send_keys(key)
        browser.find_element(By.ID, "use-key").click()
        if shown:  # the lists are loaded again: the old message goes, whatever comes next
            WebDriverWait(browser, 30).until(staleness_of(shown[0]))
        wait_for_access(browser)


def wait_for_access(browser: webdriver.Chrome) -> None:
    WebDriverWait(browser, 30).until(
        lambda page: page.find_elements(By.CSS_SELECTOR, "#methods option, #access .error")
    )


def explain(
    browser: webdriver.Chrome,
    image: Path,
    methods: list[str] | None = None,
    target: str | None = None,
) -> None:
    browser.find_element(By.ID, "image").send_keys(str(image))
    if methods is not None:
        chooser = Select(browser.find_element(By.ID, "methods"))
        chooser.deselect_all()
        for method in methods:
            chooser.select_by_value(method)
    if target is not None:
        field = browser.find_element(By.ID, "target")
        field.clear()
        field.send_keys(target)
    browser.find_element(By.CSS_SELECTOR, "#explain button[type=submit]").click()


def wait_for_maps(browser: webdriver.Chrome, count: int) -> list[WebElement]:
    """The map figures once all their images have loaded; fails with the page's error if any."""
    WebDriverWait(browser, 120).until(
        lambda page: (
            page.find_elements(By.CSS_SELECTOR, "#status .error")
            or page.execute_script(
                "const images = [...document.querySelectorAll('#maps img')];"
                f"return images.length === {2 * count} && "
                "images.every((img) => img.complete && img.naturalWidth > 0);"
            )
        )
    )
    errors = browser.find_elements(By.CSS_SELECTOR, "#status .error")
    assert not errors, errors[0].text
    return browser.find_elements(By.CSS_SELECTOR, "#maps figure")


def figure_of(browser: webdriver.Chrome, method: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'#maps figure[data-method="{method}"]')


def pixels(
    browser: webdriver.Chrome, element: WebElement, points: list[tuple[int, int]]
) -> list[list[int]]:
    return list(browser.execute_script(READ_PIXELS, element, [list(p) for p in points]))


def colour(colormap: str, level: float) -> list[int]:
    """The colour the workers give a map value that the colormap reads as `level` in [0, 1]."""
    return [int(c) for c in apply_colormap(np.array([[level]]), colormap)[0, 0]]


def lesion_png(tmp_path: Path, seed: int, black_left: bool = False) -> Path:
    image = make_sample(seed).image.copy()
    if black_left:
        image[:, :BLACK_COLUMNS] = 0.0
    path = tmp_path / f"lesion-{seed}.png"
    path.write_bytes(to_png_bytes(image))
    return path


def test_without_a_key_the_page_says_so_instead_of_empty_lists(
    browser: webdriver.Chrome, secured: DevStack, tmp_path: Path
) -> None:
    open_page(browser, secured, key=None)
    missing = browser.find_element(By.CSS_SELECTOR, "#access .error").text
    screenshot(browser, tmp_path / "no-key.png")

    open_page(browser, secured, key=secret("ops"))
    WebDriverWait(browser, 30).until(lambda page: "403" in page.find_element(By.ID, "access").text)
    lacking = browser.find_element(By.CSS_SELECTOR, "#access .error").text
    screenshot(browser, tmp_path / "key-without-scope.png")

    assert missing.startswith("401: "), missing
    assert "API key" in missing and "Enter a valid API key above." in missing
    assert lacking.startswith("403: ") and "`explain` scope" in lacking, lacking
    assert not browser.find_elements(By.CSS_SELECTOR, "#model option")


def test_with_a_key_models_are_listed_and_the_explained_target_is_named(
    browser: webdriver.Chrome, secured: DevStack, tmp_path: Path
) -> None:
    sample = make_sample(4244)
    other = (sample.label + 1) % len(LABELS)  # a class the model does not predict
    open_page(browser, secured, key=secret("viewer"))
    browser.refresh()  # the key stays with the tab, not with one page load
    wait_for_access(browser)
    stored = browser.execute_script("return sessionStorage.getItem('glimpse.apiKey')")
    listed = Select(browser.find_element(By.ID, "model")).options
    models = [option.get_attribute("value") for option in listed]
    explain(browser, lesion_png(tmp_path, 4244), ["gradcam"], target=str(other))
    (figure,) = wait_for_maps(browser, 1)
    screenshot(browser, tmp_path / "explained-with-key.png")

    assert stored == secret("viewer")
    assert browser.execute_script("return localStorage.length") == 0
    assert models == ["demo-lesions"]
    assert figure.find_element(By.TAG_NAME, "figcaption").text == f"gradcam → {LABELS[other]}"
    meta = figure.find_element(By.CSS_SELECTOR, ".meta").text
    assert meta.startswith(f"Grad-CAM · class {other} · ") and meta.endswith(" ms"), meta
    status = browser.find_element(By.ID, "status").text
    assert status.startswith(f"{LABELS[sample.label]} ("), status  # the top prediction
    predictions = [p.text for p in browser.find_elements(By.CSS_SELECTOR, "#predictions li")]
    assert len(predictions) == len(LABELS)
    assert predictions[0].startswith(f"{LABELS[sample.label]} (class {sample.label})")
    assert {p.split(" (")[0] for p in predictions} == set(LABELS)
    assert all(p.endswith(" %") for p in predictions)


def test_a_field_error_shows_each_loc_and_msg(
    browser: webdriver.Chrome, secured: DevStack, tmp_path: Path
) -> None:
    image = lesion_png(tmp_path, 4245)
    with httpx.Client(base_url=secured.url, timeout=30) as client:
        direct = client.post(
            "/v1/explanations",
            headers={"Authorization": f"Bearer {secret('viewer')}"},
            data={"model": "demo-lesions", "methods": "gradcam", "target": "top9"},
            files={"image": ("lesion.png", image.read_bytes(), "image/png")},
        )
    assert direct.status_code == 422
    problem = direct.json()
    open_page(browser, secured, key=secret("viewer"))
    explain(browser, image, target="top9")
    WebDriverWait(browser, 30).until(
        lambda page: page.find_elements(By.CSS_SELECTOR, "#status .error")
    )
    shown = browser.find_element(By.CSS_SELECTOR, "#status .error").text
    entries = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#status .error li")]
    screenshot(browser, tmp_path / "field-error.png")

    assert shown.startswith(f"422: {problem['detail']}"), shown
    assert problem["errors"], problem
    assert entries == [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in problem["errors"]]
    assert any(entry.startswith("target: ") for entry in entries), entries


def test_a_signed_map_is_diverging_with_zero_at_its_neutral_middle(
    browser: webdriver.Chrome, secured: DevStack, tmp_path: Path
) -> None:
    image = lesion_png(tmp_path, 4246, black_left=True)
    zero = (BLACK_COLUMNS // 2, 64)  # x, y: a black pixel, where DeepLIFT from black is 0
    with httpx.Client(base_url=secured.url, timeout=60) as client:
        direct = client.post(
            "/v1/explanations",
            headers={"Authorization": f"Bearer {secret('viewer')}"},
            data={"model": "demo-lesions", "methods": "deeplift", "output": '{"overlay": false}'},
            files={"image": ("lesion.png", image.read_bytes(), "image/png")},
        )
    assert direct.status_code == 200, direct.text
    scores = direct.json()["explanations"][0]["scores"]
    assert scores["signed"] and scores["values"][zero[1]][zero[0]] == 0.0
    assert scores["min"] < 0 < scores["max"]

    open_page(browser, secured, key=secret("viewer"))
    explain(browser, image, ["gradcam", "deeplift"])
    wait_for_maps(browser, 2)
    browser.execute_script(
        "const slider = document.getElementById('opacity');"
        "slider.value = '0.8'; slider.dispatchEvent(new Event('input'));"
    )
    screenshot(browser, tmp_path / "signed-and-unsigned.png")

    signed, unsigned = figure_of(browser, "deeplift"), figure_of(browser, "gradcam")
    bar = signed.find_element(By.CSS_SELECTOR, "canvas.colorbar")
    width = int(bar.get_attribute("width") or 0)
    middle = (width - 1) // 2
    neutral = colour("coolwarm", 0.5)
    assert bar.get_attribute("data-colormap") == "coolwarm"
    assert width % 2 == 1
    bar_row = pixels(browser, bar, [(x, 0) for x in range(width)])
    assert bar_row == [colour("coolwarm", x / (width - 1)) for x in range(width)]
    assert bar_row[middle] == neutral
    assert [t.text for t in signed.find_elements(By.CSS_SELECTOR, ".ticks span")] == [
        "−1",
        "0",
        "+1",
    ]
    heat = signed.find_element(By.CSS_SELECTOR, "img.heat")
    assert pixels(browser, heat, [zero]) == [neutral]
    assert heat.value_of_css_property("opacity") == "0.8"

    unsigned_bar = unsigned.find_element(By.CSS_SELECTOR, "canvas.colorbar")
    assert unsigned_bar.get_attribute("data-colormap") == "inferno"
    unsigned_row = pixels(browser, unsigned_bar, [(x, 0) for x in range(width)])
    assert unsigned_row == [colour("inferno", x / (width - 1)) for x in range(width)]
    assert [t.text for t in unsigned.find_elements(By.CSS_SELECTOR, ".ticks span")] == ["0", "1"]
    times = [f.find_element(By.CSS_SELECTOR, ".meta").text for f in (unsigned, signed)]
    assert all(t.endswith(" ms") for t in times), times


def test_a_dicom_file_shows_the_window_it_was_shown_through(
    browser: webdriver.Chrome, secured: DevStack, tmp_path: Path
) -> None:
    sample = make_sample(4247)
    scan = tmp_path / "lesion.dcm"
    scan.write_bytes(ct_file(sample.image))

    open_page(browser, secured, key=secret("viewer"))
    explain(browser, scan)
    wait_for_maps(browser, 1)
    from_file = browser.find_element(By.ID, "picture-info").text
    size = browser.execute_script(
        "const img = document.querySelector('#maps img.base');"
        "return [img.naturalWidth, img.naturalHeight];"
    )
    screenshot(browser, tmp_path / "dicom-file-window.png")

    browser.find_element(By.ID, "window-center").send_keys("-600")
    browser.find_element(By.ID, "window-width").send_keys("1500")
    browser.find_element(By.CSS_SELECTOR, "#explain button[type=submit]").click()
    WebDriverWait(browser, 120).until(
        lambda page: (
            "-600" in page.find_element(By.ID, "picture-info").text
            or page.find_elements(By.CSS_SELECTOR, "#status .error")
        )
    )
    chosen = browser.find_element(By.ID, "picture-info").text
    screenshot(browser, tmp_path / "dicom-chosen-window.png")

    assert from_file == "DICOM frame 0, window centre -513.5, width 1021 as applied.", from_file
    assert size == [sample.image.shape[1], sample.image.shape[0]]
    assert chosen == "DICOM frame 0, window centre -600, width 1500 as applied.", chosen


def test_activation_maximisation_shows_the_synthesised_image(
    browser: webdriver.Chrome, secured: DevStack, tmp_path: Path
) -> None:
    open_page(browser, secured, key=secret("viewer"))
    Select(browser.find_element(By.ID, "visual-target")).select_by_value("2")
    steps = browser.find_element(By.ID, "visual-steps")
    steps.clear()
    steps.send_keys("8")
    browser.find_element(By.CSS_SELECTOR, "#visualize button[type=submit]").click()
    WebDriverWait(browser, 120).until(
        lambda page: (
            page.execute_script(
                "const img = document.getElementById('visual-image');"
                "return !document.getElementById('visual-result').hidden && img.complete "
                "&& img.naturalWidth > 0;"
            )
            or page.find_elements(By.CSS_SELECTOR, "#visual-status .error")
        )
    )
    errors = browser.find_elements(By.CSS_SELECTOR, "#visual-status .error")
    assert not errors, errors[0].text
    size = browser.execute_script(
        "const img = document.getElementById('visual-image');"
        "return [img.naturalWidth, img.naturalHeight];"
    )
    caption = browser.find_element(By.ID, "visual-caption").text
    screenshot(browser, tmp_path / "activation-max.png")

    assert size == [128, 128]
    assert caption.startswith(f"{LABELS[2]}: logit ") and " after 8 steps in " in caption, caption
