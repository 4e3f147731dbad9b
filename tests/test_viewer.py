"""The /viewer page in real headless Chromium (Debian's chromium and chromedriver) against a live service.

A real chest X-ray goes through the page as a person would send it: key, file picker, model, methods,
submit; the page follows the job's event stream, draws the heatmap over the input on a canvas and
tabulates the metrics. Screenshots go to tests/artifacts/viewer/ for a person to look at.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import REPO, SHARED_DATA
from tests.live import KEYS, live_service  # noqa: F401 - the fixture

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
if missing:
    pytest.skip(f"the viewer tests need Debian's chromium and chromium-driver ({', '.join(missing)} missing; "
                "scripts/setup.sh installs them when run as root)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

# A real NIH ChestX-ray14 frontal image (AP) with cardiomegaly, from the shared developer data set.
XRAY = SHARED_DATA / "nih_cxr14_bbox" / "images" / "00000032_037.png"
MODEL = "nih-cardiomegaly"
ARTIFACTS = REPO / "tests" / "artifacts" / "viewer"
WAIT_S = 60


@pytest.fixture(scope="module")
def browser():
    if not XRAY.exists():
        pytest.skip(f"the shared chest X-ray {XRAY} is missing")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to look for CSP refusals
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver or a browser
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        if offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = offline


def screenshot(driver, name: str) -> None:
    """The whole page (beyond the viewport) as tests/artifacts/viewer/<name>.png."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def wait(driver, condition, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def open_viewer(driver, service) -> None:
    """Load the page, type the key (it is kept in sessionStorage) and wait for the catalogue."""
    driver.get(f"{service.url}/viewer")
    key = driver.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys(KEYS["alice"], Keys.ENTER)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#model option[value='{MODEL}']")
         and d.find_elements(By.CSS_SELECTOR, "#methods input[value='grad_cam']"))
    Select(driver.find_element(By.ID, "model")).select_by_value(MODEL)


def choose(driver, file: Path, methods: list[str]) -> None:
    driver.find_element(By.ID, "file-input").send_keys(str(file))
    for box in driver.find_elements(By.CSS_SELECTOR, "#methods input[type=checkbox]"):
        if box.is_selected() != (box.get_attribute("value") in methods):
            box.click()


def submit_and_wait(driver, panels: int) -> None:
    driver.find_element(By.ID, "submit").click()
    wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed()
         or (d.find_element(By.ID, "result").is_displayed()
             and len(d.find_elements(By.CSS_SELECTOR, "#panels .panel")) == panels))
    error = driver.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text


def job_of_page(driver, service) -> dict:
    """The job the page shows, read back from the API (its id is in the download links)."""
    link = driver.find_element(By.CSS_SELECTOR, "#downloads a").get_attribute("href")
    job_id = re.fullmatch(r"/v1/jobs/([0-9a-f]{32})/.+", urlsplit(link).path).group(1)
    with service.client() as client:
        return client.get(f"/v1/jobs/{job_id}").json()


CANVAS_STATS = """
const canvas = arguments[0], threshold = arguments[1];
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let coloured = 0, lit = 0;
const colours = new Set();
for (let i = 0; i < data.length; i += 4) {
  const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
  if (Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured++;  // the input is grey: colour is heatmap
  if (r + g + b > 60) lit++;
  if (i % 64 === 0) colours.add((r << 16) | (g << 8) | b);
}
return {width: canvas.width, height: canvas.height, pixels: data.length / 4, coloured, lit, colours: colours.size};
"""


OVERLAY_DIFFERENCE = """
const [canvas, url, done] = arguments;
const image = new Image();
image.onerror = () => done({error: 'overlay.png did not load'});
image.onload = () => {
  const other = document.createElement('canvas');
  other.width = image.naturalWidth; other.height = image.naturalHeight;
  other.getContext('2d').drawImage(image, 0, 0);
  const same_size = other.width === canvas.width && other.height === canvas.height;
  const a = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const b = other.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const diffs = [];
  for (let i = 0; i < a.length; i += 4) for (let c = 0; c < 3; c++) diffs.push(Math.abs(a[i + c] - b[i + c]));
  diffs.sort((x, y) => x - y);
  done({same_size, mean: diffs.reduce((s, d) => s + d, 0) / diffs.length, p99: diffs[Math.floor(diffs.length * 0.99)]});
};
image.src = url;
"""


def canvas_stats(driver, canvas) -> dict:
    return driver.execute_script(CANVAS_STATS, canvas)


def test_the_page_loads_and_lists_models_and_methods(browser, live_service):
    page = httpx.get(f"{live_service.url}/viewer")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' blob: data:" in policy and "unsafe-inline" not in policy
    assert "<script>" not in page.text and "style=" not in page.text  # no inline script or style
    for asset, kind in (("viewer.js", "text/javascript"), ("viewer.css", "text/css"), ("index.html", "text/html")):
        answer = httpx.get(f"{live_service.url}/viewer/{asset}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind), asset
    for outside in ("main.py", "..%2Fmain.py", "viewer.py", "%2e%2e"):
        refused = httpx.get(f"{live_service.url}/viewer/{outside}")
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found", outside
    assert "/viewer" not in httpx.get(f"{live_service.url}/openapi.json").text

    open_viewer(browser, live_service)
    models = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert {"mnist-3v8", MODEL} <= set(models)
    methods = {b.get_attribute("value") for b in browser.find_elements(By.CSS_SELECTOR, "#methods input")}
    with live_service.client() as client:
        assert methods == set(client.get(f"/v1/models/{MODEL}").json()["methods"])
    targets = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#target option")]
    assert targets[1:] == ["absent", "cardiomegaly"]
    # The key is in this tab's sessionStorage and nowhere else.
    assert browser.execute_script("return sessionStorage.getItem('xai-api-key')") == KEYS["alice"]
    assert browser.execute_script("return localStorage.length") == 0 and browser.get_cookies() == []
    # A parameter form from the method's spec: integers with their range, choices as a select.
    browser.find_element(By.CSS_SELECTOR, "#methods input[value='integrated_gradients']").click()
    steps = browser.find_element(By.ID, "param-integrated_gradients-n_steps")
    assert (steps.get_attribute("type"), steps.get_attribute("min"), steps.get_attribute("max")) == ("number", "2", "1000")
    assert browser.find_element(By.ID, "param-integrated_gradients-baseline").tag_name == "select"
    assert browser.find_element(By.ID, "param-grad_cam-relu").get_attribute("type") == "checkbox"
    assert not browser.find_element(By.ID, "error").is_displayed()
    screenshot(browser, "1-form")


def test_a_chest_xray_is_explained_and_drawn_over_the_input(browser, live_service):
    open_viewer(browser, live_service)
    choose(browser, XRAY, ["grad_cam"])
    browser.find_element(By.ID, "faithfulness").click()  # a single method is scored only when asked
    submit_and_wait(browser, panels=1)
    canvas = wait(browser, EC.visibility_of_element_located((By.ID, "overlay-canvas")))
    assert browser.find_element(By.ID, "panel-grad_cam").is_displayed()
    assert canvas.get_attribute("data-base") in ("input.png", "overlay.png")

    job = job_of_page(browser, live_service)
    assert job["status"] == "finished" and job["request"]["methods"] == ["grad_cam"]
    prediction = job["result"]["metrics"]["prediction"]["class_name"]
    table = browser.find_element(By.ID, "metrics-table").text
    assert f"prediction {prediction} (score" in table and "target" in table and "timing" in table
    rows = browser.find_elements(By.CSS_SELECTOR, "#comparison-table tbody tr")
    assert len(rows) == 1 and "Grad-CAM" in rows[0].text
    deletion = job["result"]["metrics"]["faithfulness"]["deletion_auc"]
    assert f"{deletion:.3f}" in rows[0].text
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "1"
    assert "finished" in browser.find_element(By.ID, "stage").text
    links = {a.text for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
    assert links == set(job["result"]["files"])

    shown = canvas_stats(browser, canvas)
    assert (shown["width"], shown["height"]) == (256, 256)  # the input's display size
    assert shown["lit"] > shown["pixels"] * 0.5 and shown["colours"] > 200, shown  # an image, not a blank
    assert shown["coloured"] > shown["pixels"] * 0.3, shown  # the heatmap drawn over it
    screenshot(browser, "2-grad-cam")
    # At the default 45% opacity the page's own blend (turbo of the .npy values, enlarged bilinearly) is
    # the worker's overlay.png within rounding: the .npy parser, colour map and interpolation agree.
    difference = browser.execute_async_script(OVERLAY_DIFFERENCE, canvas, job["result"]["files"]["overlay.png"])
    assert difference["same_size"] and difference["mean"] < 2.0 and difference["p99"] <= 12, difference

    # The threshold slider hides the low part of the map: fewer coloured pixels, the X-ray shows through.
    browser.execute_script("const s = document.getElementById('threshold'); s.value = '0.8';"
                           "s.dispatchEvent(new Event('input'))")
    assert browser.find_element(By.ID, "threshold-value").text == "80%"
    thresholded = canvas_stats(browser, canvas)
    assert 0 < thresholded["coloured"] < shown["coloured"] * 0.6, (thresholded, shown)
    assert thresholded["lit"] > shown["pixels"] * 0.5
    screenshot(browser, "3-grad-cam-threshold")

    # A result without input.png (jobs from before it was added) is drawn over overlay.png instead.
    older = {**job, "result": {**job["result"], "files": {
        name: url for name, url in job["result"]["files"].items() if name != "input.png"}}}
    base = browser.execute_async_script("showResult(arguments[0]).then(() => arguments[1]("
                                        "document.getElementById('overlay-canvas').dataset.base))", older)
    assert base == "overlay.png"
    fallback = canvas_stats(browser, browser.find_element(By.ID, "overlay-canvas"))
    assert fallback["colours"] > 200 and fallback["coloured"] > 0, fallback


def test_three_methods_compare_side_by_side(browser, live_service):
    open_viewer(browser, live_service)
    methods = ["saliency", "grad_cam", "integrated_gradients"]
    choose(browser, XRAY, methods)
    steps = browser.find_element(By.ID, "param-integrated_gradients-n_steps")
    steps.clear()
    steps.send_keys("8")
    submit_and_wait(browser, panels=3)
    panels = [browser.find_element(By.ID, f"panel-{m}") for m in methods]
    tops = {p.rect["y"] for p in panels}
    assert len(tops) == 1, "three panels in one row at 1280 px"
    for method in methods:
        stats = canvas_stats(browser, browser.find_element(By.ID, f"overlay-canvas-{method}"))
        assert stats["colours"] > 200 and stats["coloured"] > 0, (method, stats)
    rows = browser.find_elements(By.CSS_SELECTOR, "#comparison-table tbody tr")
    job = job_of_page(browser, live_service)
    order = job["request"]["methods"]  # the page's order: the model's method list
    assert sorted(order) == sorted(methods) and [r.get_attribute("data-method") for r in rows] == order
    assert [p.get_attribute("id") for p in browser.find_elements(By.CSS_SELECTOR, "#panels .panel")] == \
        [f"panel-{m}" for m in order]
    assert rows[order.index("grad_cam")].find_element(By.TAG_NAME, "th").text == "Grad-CAM"
    assert job["result"]["metrics"]["methods"]["integrated_gradients"]["method"]["params"]["n_steps"] == 8
    assert "integrated_gradients parameters" in browser.find_element(By.ID, "metrics-table").text
    screenshot(browser, "4-comparison")
    # Nothing the page does was refused by its own Content-Security-Policy, and no script error.
    logs = [entry["message"] for entry in browser.get_log("browser")]
    assert not [m for m in logs if "Content Security Policy" in m or "Uncaught" in m], logs


def test_syce_shows_its_counterfactual_images(browser, live_service):
    open_viewer(browser, live_service)
    choose(browser, XRAY, ["syce"])
    submit_and_wait(browser, panels=1)
    job = job_of_page(browser, live_service)
    expected = {name for name in job["result"]["files"] if name.endswith(".png")} - {
        "overlay.png", "heatmap.png", "input.png"}
    assert expected  # SyCE's adversarial and stable images
    images = browser.find_elements(By.CSS_SELECTOR, "#panel-syce .extras img")
    assert {image.get_attribute("alt") for image in images} == expected
    wait(browser, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                                for i in images))  # loaded by their signed URLs, no key
    screenshot(browser, "7-syce")


def test_a_file_that_is_no_image_shows_its_error_code(browser, live_service, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    open_viewer(browser, live_service)
    choose(browser, bad, ["grad_cam"])
    browser.find_element(By.ID, "submit").click()
    error = wait(browser, EC.visibility_of_element_located((By.ID, "error")))
    wait(browser, lambda d: "unsupported_format" in error.text)
    assert "PNG, JPEG, TIFF or DICOM" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
    screenshot(browser, "5-error")


def test_a_phone_width_window_gets_one_column(browser, live_service):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        open_viewer(browser, live_service)
        assert browser.execute_script("return window.innerWidth") == 390
        choose(browser, XRAY, ["saliency", "grad_cam"])
        submit_and_wait(browser, panels=2)
        first, second = (browser.find_element(By.ID, f"panel-{m}").rect for m in ("saliency", "grad_cam"))
        assert second["y"] >= first["y"] + first["height"], (first, second)
        assert first["width"] > 300  # a full-width column, not a squeezed grid cell
        setup, result = (browser.find_element(By.ID, i).rect for i in ("setup", "result"))
        assert result["y"] >= setup["y"] + setup["height"]
        # Nothing wider than the screen (the tables scroll inside their own box).
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
        screenshot(browser, "6-phone")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

