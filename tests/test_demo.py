"""The embedded default: the shipped checkpoint, `make demo`'s script, `metris-segment`, visualize.py, ablate.py."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import metris_hf
from metris_hf import embedded_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CARD = ROOT / "model_cards" / "metris-tiny-synthetic" / "README.md"
CHECK_REFS = 60  # the first refs of the synthetic test split (seed 0): a prefix of the set the card reports on


pytestmark = pytest.mark.usefixtures("datasets_cache")


def run(args, expect=0):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if expect is not None:
        assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
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
    sys.path.insert(0, str(SCRIPTS))
    try:
        import demo
    finally:
        sys.path.remove(str(SCRIPTS))
    result = demo.main(["--num_scenes", "2", "--expressions_per_scene", "2", "--output_dir", str(tmp_path)])
    assert len(result["ious"]) == 4 and all(0.0 <= iou <= 1.0 for iou in result["ious"])
    pictures = sorted(tmp_path.glob("scene_*.png"))
    assert [p.name for p in pictures] == ["scene_00.png", "scene_01.png"]
    assert Image.open(pictures[0]).height > 2 * 150  # two rows of panels


def test_console_script_writes_a_mask_of_the_image_size(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8)).save(image)
    console = Path(sys.executable).with_name("metris-segment")
    result = run([str(console), "--image", str(image), "--text", "the red circle", "--output", str(tmp_path / "m.png")])
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
    run([sys.executable, str(SCRIPTS / "visualize.py"), "--image", str(image), "--text", "the red star",
         "the big circle", "--image", str(image), "--text", "the square", "--output", str(tmp_path / "fig.png")])
    figure = Image.open(tmp_path / "fig.png")
    assert figure.width >= 4 * 192  # image, mask, VE attention, LE attention
    assert figure.height >= 3 * 192


@pytest.mark.slow
def test_ablate_runs_rows_and_draws_the_curves(tmp_path):
    out = tmp_path / "ablate"
    run([sys.executable, str(SCRIPTS / "ablate.py"), "--rows", "full", "ve_only", "--config_name", "tiny",
         "--synthetic_size", "16", "4", "8", "--image_size", "64", "--max_train_steps", "2",
         "--per_device_train_batch_size", "4", "--output_dir", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"full", "ve_only"}
    for row in results["rows"].values():
        assert set(row["per_seed"]) == {"P@0.5", "P@0.7", "P@0.9", "mIoU", "oIoU", "AUC-PR"}
        assert all(0.0 <= values[0] <= 1.0 for values in row["per_seed"].values())
    assert "| Table 5: VE only |" in (out / "results.md").read_text()
    assert Image.open(out / "pr_curves.png").size[0] > 100
