"""Rebuilds the pictures of the README, the docs and the model card from the current checkpoint, so they cannot
show an older model than the one shipped.

    python scripts/dev/screenshots.py [--model DIR] [--parts demo app]

- `demo`: `model_cards/metris-tiny-synthetic/demo.png`, the README's first picture: `make demo`'s rows (ground
  truth, prediction, the decoder's attention over visual and linguistic expression tokens) for three
  expressions on the Quick start scene (`scripts/demo.py --write_scene`); prints each IoU and score.
- `app`: `docs/app_screenshot.png`, the app in headless Chromium (selenium and Debian's chromium and
  chromium-driver, as tests/test_app_browser.py) with the Quick start scene and two expressions. Where no
  browser is installed, the same view is not available: the script then draws the app's overlays for those
  expressions with Pillow (the app's own `outline_overlay`) and says so, which is the panel the page shows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from transformers import AutoModel, AutoProcessor, pipeline

from metris_hf import embedded_checkpoint
from metris_hf.data import iter_synthetic
from metris_hf.visualization import explain, load_font, outline_overlay, render_row, save_figure, stack_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo import DEMO_SEED, QUICK_START_SCENE, iou, write_scene  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEMO_PICTURE = ROOT / "model_cards" / "metris-tiny-synthetic" / "demo.png"
APP_PICTURE = ROOT / "docs" / "app_screenshot.png"
DEMO_EXPRESSIONS = ["the red circle", "the blue triangle", "the small yellow object"]
APP_EXPRESSIONS = ["the diamond", "the lowest big red one"]


def quick_start_scene(folder: Path) -> tuple[Path, Image.Image]:
    path = folder / "scene.png"
    write_scene(path)
    return path, Image.open(path).convert("RGB")


def target_mask(expression: str) -> np.ndarray | None:
    """The generator's mask for `expression` on the Quick start scene, when it wrote that very sentence."""
    first = None
    for scene, row in iter_synthetic(10**9, 128, DEMO_SEED, "test"):
        first = scene.image_id if first is None else first
        if scene.image_id > first + QUICK_START_SCENE:
            return None
        if scene.image_id == first + QUICK_START_SCENE and expression in row["sentences"]:
            return scene.masks[[obj.ann_id for obj in scene.objects].index(row["ann_ids"][0])]
    return None


def rebuild_demo(model_path: str, folder: Path) -> None:
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()  # for the attention maps
    processor = AutoProcessor.from_pretrained(model_path)
    segmenter = pipeline("referring-image-segmentation", model=model, processor=processor)
    _, image = quick_start_scene(folder)
    results = segmenter(image, DEMO_EXPRESSIONS)
    rows = []
    for expression, result, (_, attention) in zip(
        DEMO_EXPRESSIONS, results, explain(model, processor, image, DEMO_EXPRESSIONS)
    ):
        predicted = np.asarray(result["mask"]) > 0
        target = target_mask(expression)
        score = iou(predicted, target) if target is not None else None
        print(
            f"demo: {expression!r:<28} score {result['score']:.3f}"
            + (f", IoU {score:.3f}" if target is not None else "")
        )
        rows.append(render_row(image, expression, predicted, attention, iou=score, target=target))
    save_figure(stack_rows(rows), DEMO_PICTURE)
    print(f"wrote {DEMO_PICTURE}")


def find_browser() -> tuple[str | None, str | None]:
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    return browser, shutil.which("chromedriver")


def rebuild_app(model_path: str, folder: Path) -> None:
    path, image = quick_start_scene(folder)
    browser, driver_path = find_browser()
    try:
        from selenium import webdriver  # noqa: F401
    except ImportError:
        browser = None
    if browser is None or driver_path is None:
        print("no headless browser (chromium, chromedriver and selenium): drawing the app's overlays with Pillow")
        draw_app_overlays(model_path, image)
        return
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from metris_hf.app import build_demo

    demo = build_demo(examples_dir=folder / "examples")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1000,760")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#input-image input[type=file]")).send_keys(str(path))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image img"))
        driver.find_element(By.CSS_SELECTOR, "#expressions textarea").send_keys("\n".join(APP_EXPRESSIONS))
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(("Done:", "Error:")))
        status = driver.find_element(By.ID, "status").text
        if not status.startswith("Done:"):
            raise SystemExit(f"the app answered: {status}")
        time.sleep(2)  # the gallery's images load after the status line
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(APP_PICTURE))
        print(f"app: {status.splitlines()[0]}\nwrote {APP_PICTURE} (headless Chromium)")
    finally:
        driver.quit()
        demo.close()


def draw_app_overlays(model_path: str, image: Image.Image) -> None:
    segmenter = pipeline("referring-image-segmentation", model=model_path)
    panels = []
    font = load_font(14)
    for expression, result in zip(APP_EXPRESSIONS, segmenter(image, APP_EXPRESSIONS)):
        overlay = outline_overlay(image, np.asarray(result["mask"]) > 0).resize((320, 320), Image.Resampling.NEAREST)
        panel = Image.new("RGB", (320, 346), "white")
        panel.paste(overlay, (0, 0))
        ImageDraw.Draw(panel).text((4, 326), f"{expression} — score {result['score']:.3f}", fill="black", font=font)
        panels.append(panel)
        print(f"app: {expression!r:<28} score {result['score']:.3f}")
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 10 * (len(panels) - 1), 346), "white")
    for index, panel in enumerate(panels):
        sheet.paste(panel, (index * (panel.width + 10), 0))
    sheet.save(APP_PICTURE)
    print(f"wrote {APP_PICTURE} (Pillow: the app's overlay panel, not a browser screenshot)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the embedded one)")
    parser.add_argument("--parts", nargs="+", choices=("demo", "app"), default=["demo", "app"])
    args = parser.parse_args(argv)
    model_path = args.model or str(embedded_checkpoint())
    with tempfile.TemporaryDirectory() as folder:
        if "demo" in args.parts:
            rebuild_demo(model_path, Path(folder))
        if "app" in args.parts:
            rebuild_app(model_path, Path(folder))


if __name__ == "__main__":
    main()
