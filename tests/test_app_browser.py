"""The app in a real browser: headless Chromium (Debian's package, driven by selenium through chromedriver)
uploads a scene, types expressions, submits, and the masks the page offers for download are the pipeline's.

Skipped, with the reason, where Chromium or chromedriver is missing (`.ci/run` installs both with apt-get).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from metris_hf import embedded_checkpoint

pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from metris_hf.app import build_demo, example_scenes, parse_expressions  # noqa: E402

pytestmark = pytest.mark.slow  # `make test-fast` leaves it out

SCREENSHOT = Path("outputs/app/screenshot.png")


def find_browser() -> tuple[str, str]:
    """Chromium and its driver from the system; never a downloaded build."""
    browser = next(
        (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
    )
    driver = shutil.which("chromedriver") or next(
        (path for path in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.isfile(path)), None
    )
    if browser is None or driver is None:
        pytest.skip(
            f"no headless browser: chromium={browser}, chromedriver={driver} "
            "(apt-get install chromium chromium-driver); the browser test did not run"
        )
    return browser, driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    browser, driver_path = find_browser()
    examples = example_scenes(tmp_path_factory.mktemp("examples"), count=2)
    demo = build_demo(examples_dir=tmp_path_factory.mktemp("page-examples"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,1500",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    os.environ.setdefault("SE_AVOID_STATS", "true")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver, f"http://127.0.0.1:{port}/", examples
    finally:
        driver.quit()
        demo.close()


def status_text(driver) -> str:
    return driver.find_element(By.ID, "status").text


def test_upload_type_submit_gives_the_pipelines_masks_and_an_empty_expression_a_message(served):
    driver, url, examples = served
    start = time.perf_counter()
    wait = WebDriverWait(driver, 60)
    driver.get(url)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#input-image input[type=file]"))
    path, text = examples[0]
    expressions = parse_expressions(text)[:2]
    upload.send_keys(str(Path(path).resolve()))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image img"))  # the upload has landed
    box = driver.find_element(By.CSS_SELECTOR, "#expressions textarea")
    box.send_keys("\n".join(expressions))
    driver.find_element(By.ID, "submit").click()
    wait.until(lambda d: status_text(d).startswith(("Done:", "Error:")))
    assert status_text(driver).startswith("Done:"), status_text(driver)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#overlays img")) >= len(expressions)

    links = wait.until(
        lambda d: [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#masks a[href]")] or None
    )
    links = sorted(set(links), key=lambda link: link.rsplit("mask_", 1)[-1])
    assert len(links) == len(expressions), links
    reference = pipeline("referring-image-segmentation", model=str(embedded_checkpoint()))(path, expressions)
    for link, expected in zip(links, reference):
        with urllib.request.urlopen(link, timeout=30) as response:  # the page's own download link
            downloaded = np.asarray(Image.open(io.BytesIO(response.read()))) > 0
        truth = np.asarray(expected["mask"]) > 0
        assert truth.any() and downloaded.shape == truth.shape
        assert iou(downloaded, truth) >= 0.99
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOT))

    box.send_keys(Keys.CONTROL, "a")  # clear() changes the DOM without the input event the page listens to
    box.send_keys(Keys.DELETE)
    driver.find_element(By.ID, "submit").click()
    wait.until(lambda d: "Type at least one expression" in status_text(d))
    assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    print(f"browser test: {time.perf_counter() - start:.1f} s in the browser")
