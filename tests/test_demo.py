"""The embedded default: the shipped checkpoint, `make demo`'s script, `metris-segment`, visualize.py, ablate.py."""

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import metris_hf
from metris_hf import embedded_checkpoint
from metris_hf.visualization import BAR_WIDTH, FIGURE_OUTLINE, figure_panels, render_row, stack_rows

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CARD = ROOT / "model_cards" / "metris-tiny-synthetic" / "README.md"
WITH_TRUTH = ["ground truth", "prediction", "attention", "colourbar", "attention", "colourbar"]
WITHOUT_TRUTH = ["image", "prediction", "attention", "colourbar", "attention", "colourbar"]
CHECK_REFS = 60  # the first refs of the synthetic test split (seed 0): a prefix of the set the card reports on


pytestmark = pytest.mark.usefixtures("datasets_cache")


def run(args, expect=0):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if expect is not None:
        assert result.returncode == expect, (
            f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def card_oiou() -> float:
    """The test-split oIoU the model card states, from its `model-index` front matter."""
    front_matter = CARD.read_text().split("---")[1]
    match = re.search(r"type: oIoU\s*\n\s*value: ([0-9.]+)", front_matter)
    assert match, "the card's model-index has no oIoU value"
    return float(match.group(1))


def test_checkpoint_is_package_data_and_small():
    folder = embedded_checkpoint()
    assert folder.is_relative_to(Path(metris_hf.__file__).parent)
    assert {"config.json", "model.safetensors", "processor_config.json"} <= {p.name for p in folder.iterdir()}
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 20 * 2**20


def test_checkpoint_reaches_the_oiou_on_its_card():
    from transformers import AutoModel, AutoProcessor

    from metris_hf.data import make_synthetic, sentence_rows
    from metris_hf.evaluation import evaluate_referring

    model = AutoModel.from_pretrained(embedded_checkpoint()).eval()
    processor = AutoProcessor.from_pretrained(embedded_checkpoint())
    test = sentence_rows(make_synthetic(0, 0, CHECK_REFS, image_size=128, seed=0)["test"])
    result = evaluate_referring(model, processor, test, batch_size=32, progress=False)
    assert result["oIoU"] >= card_oiou() - 0.05, result


def test_checkpoint_through_the_pipeline_segments_synthetic_scenes():
    from transformers import pipeline

    from metris_hf.data import make_synthetic

    rows = make_synthetic(0, 0, 20, image_size=128, seed=0)["test"]
    segmenter = pipeline("referring-image-segmentation", model=str(embedded_checkpoint()))
    results = segmenter([{"image": row["image"], "text": row["sentences"][0]} for row in rows], batch_size=10)
    ious = []
    for row, result in zip(rows, results):
        assert result["mask"].size == row["image"].size
        predicted, target = np.asarray(result["mask"]) > 0, np.asarray(row["mask"]) > 0
        ious.append((predicted & target).sum() / (predicted | target).sum())
    assert np.mean(ious) > 0.5, ious  # the card's test mIoU is well above; random masks score near 0


def test_demo_script_writes_one_picture_per_scene(tmp_path):
    demo_main = runpy.run_path(str(SCRIPTS / "demo.py"), run_name="demo")["main"]  # a script, not a module
    result = demo_main(["--num_scenes", "2", "--expressions_per_scene", "2", "--output_dir", str(tmp_path)])
    assert len(result["ious"]) == 4 and all(0.0 <= iou <= 1.0 for iou in result["ious"])
    pictures = sorted(tmp_path.glob("scene_*.png"))
    assert [p.name for p in pictures] == ["scene_00.png", "scene_01.png"]
    panels = figure_panels(pictures[0])
    assert [[p["kind"] for p in panels if p["row"] == row] for row in (0, 1)] == [WITH_TRUTH, WITH_TRUTH]
    figure = np.asarray(Image.open(pictures[0]).convert("RGB"))
    for panel in panels:
        left, top, right, bottom = panel["box"]
        pixels = figure[top:bottom, left:right]
        if panel["kind"] == "ground truth":  # the target is outlined: every demo expression has one
            assert (pixels == FIGURE_OUTLINE).all(-1).sum() > 20
        if panel["kind"] == "colourbar":  # high (red) at the top, low (blue) at the bottom
            assert pixels[2, 4, 0] > 200 > pixels[2, 4, 2] and pixels[-3, 4, 2] > 200 > pixels[-3, 4, 0]


def test_console_script_writes_a_mask_of_the_image_size(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8)).save(image)
    console = Path(sys.executable).with_name("metris-segment")
    result = run(
        [str(console), "--image", str(image), "--text", "the red circle", "--output", str(tmp_path / "m.png")]
    )
    mask = Image.open(tmp_path / "m.png")
    assert mask.size == (100, 70) and mask.mode == "L" and "score" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--image", "/no/such.png", "--text", "the star"], "does not exist"), (["--text", "  "], "--text is empty")],
)
def test_console_script_refuses_bad_input(tmp_path, args, message):
    image = tmp_path / "photo.png"
    Image.new("RGB", (20, 20)).save(image)
    args = args if "--image" in args else ["--image", str(image), *args]
    result = run([str(Path(sys.executable).with_name("metris-segment")), *args], expect=2)
    assert message in result.stderr


def test_visualize_draws_a_row_per_expression(tmp_path):
    image = tmp_path / "scene.png"
    from metris_hf.data import make_synthetic

    make_synthetic(0, 0, 1, image_size=128, seed=3)["test"][0]["image"].save(image)
    run(
        [
            sys.executable,
            str(SCRIPTS / "visualize.py"),
            "--image",
            str(image),
            "--text",
            "the red star",
            "the big circle",
            "--image",
            str(image),
            "--text",
            "the square",
            "--output",
            str(tmp_path / "fig.png"),
        ]
    )
    figure = Image.open(tmp_path / "fig.png")
    assert figure.height >= 3 * 192
    panels = figure_panels(tmp_path / "fig.png")  # no ground truth: the image instead
    assert [[p["kind"] for p in panels if p["row"] == row] for row in (0, 1, 2)] == [WITHOUT_TRUTH] * 3
    assert all(p["box"][2] - p["box"][0] == 192 for p in panels if p["kind"] != "colourbar")


def test_attention_maps_need_eager_attention_and_say_so():
    from transformers import AutoModel, AutoProcessor

    from metris_hf.visualization import explain

    folder = embedded_checkpoint()
    processor = AutoProcessor.from_pretrained(folder)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    fused = AutoModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    with pytest.raises(ValueError, match='attn_implementation="eager"'):
        explain(fused, processor, image, ["the red circle"])
    eager = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    ((mask, maps),) = explain(eager, processor, image, ["the red circle"])
    assert mask.shape == (96, 96) and set(maps) == {"linguistic", "visual"}


def test_row_outlines_masks_without_tinting_and_has_colour_bars():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    target, predicted = np.zeros((96, 96), bool), np.zeros((96, 96), bool)
    target[20:60, 20:60] = True
    predicted[30:70, 30:70] = True
    attention = {
        "visual": np.linspace(0.2, 0.9, 64).reshape(8, 8),
        "linguistic": np.linspace(0.8, 0.1, 64).reshape(8, 8),
    }
    row = render_row(image, "the red star", predicted, attention, iou=0.5, target=target, panel_size=96)
    panels = {p["kind"] + str(i): p for i, p in enumerate(row.info["panels"])}
    assert [p["kind"] for p in row.info["panels"]] == WITH_TRUTH
    assert panels["prediction1"]["title"] == "prediction (IoU 0.50)"
    shown, drawn = np.asarray(image), np.asarray(row)
    for key, mask in (("ground truth0", target), ("prediction1", predicted)):
        left, top, right, bottom = panels[key]["box"]
        pixels = drawn[top:bottom, left:right]
        assert (pixels[mask] == shown[mask]).all()  # the object keeps its own colour, to the last pixel
        ring = (np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0) & ~mask
        assert (pixels[ring] == FIGURE_OUTLINE).all()  # a one-pixel outline just outside (96 px panels)
        outside = ~mask & ~ring
        assert (pixels[outside] <= shown[outside]).all() and pixels[outside].mean() < 0.6 * shown[outside].mean()
    for bar in (p for p in row.info["panels"] if p["kind"] == "colourbar"):
        left, top, right, bottom = bar["box"]
        assert (right - left, bottom - top) == (BAR_WIDTH, 96)
        strip = drawn[top:bottom, left + BAR_WIDTH // 2]
        assert strip[1, 0] > 200 > strip[1, 2] and strip[-2, 2] > 200 > strip[-2, 0]  # red (high) over blue (low)
        assert (drawn[top:bottom, right : right + 30] < 100).all(-1).any()  # the end values are written beside it
    sheet = stack_rows([row, row])
    assert [p["row"] for p in sheet.info["panels"]] == [0] * 6 + [1] * 6
    assert sheet.info["panels"][6]["box"][1] == row.height + panels["ground truth0"]["box"][1]


@pytest.mark.slow
def test_ablate_runs_rows_and_draws_the_curves(tmp_path):
    out = tmp_path / "ablate"
    run(
        [
            sys.executable,
            str(SCRIPTS / "ablate.py"),
            "--rows",
            "full",
            "ve_only",
            "--config_name",
            "tiny",
            "--synthetic_size",
            "16",
            "4",
            "8",
            "--image_size",
            "64",
            "--max_train_steps",
            "2",
            "--train_batch_size",
            "4",
            "--output_dir",
            str(out),
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"full", "ve_only"}
    for row in results["rows"].values():
        assert set(row["per_seed"]) == {"P@0.5", "P@0.7", "P@0.9", "mIoU", "oIoU", "AUC-PR"}
        assert all(0.0 <= values[0] <= 1.0 for values in row["per_seed"].values())
    assert "| Table 5: VE only |" in (out / "results.md").read_text()
    assert Image.open(out / "pr_curves.png").size[0] > 100
