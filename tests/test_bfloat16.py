"""bfloat16 inference is one switch away (`pipeline(..., dtype=torch.bfloat16)`, `metris-segment --dtype bf16`)
and gives the masks float32 gives, on the shipped checkpoint and the demo's scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import pipeline

import metris_hf
from metris_hf.cli import main as segment_main
from metris_hf.data import iter_synthetic

DEMO_SEED = 2024  # the scenes `make demo` draws: never seen in training
NUM_EXPRESSIONS = 18  # as many as the demo shows (6 scenes × 3)
# A pixel may change class only where float32 puts its logit this close to the decision boundary: bfloat16
# keeps 8 significant bits, and the logits of these scenes reach ±100, so a logit of a few tenths is rounding.
BOUNDARY = 1.0


@pytest.fixture(scope="module")
def demo_examples() -> list[tuple[Image.Image, str]]:
    examples = []
    for scene, row in iter_synthetic(NUM_EXPRESSIONS, 128, DEMO_SEED, "test"):
        sentence = row["sentences"][0]
        examples.append((Image.fromarray(scene.image), sentence["raw"] if isinstance(sentence, dict) else sentence))
    return examples


def logit_field(segmenter, image: Image.Image, text: str) -> torch.Tensor:
    """The mask logits at the image's size (the field the pipeline thresholds at 0), in float32."""
    inputs = segmenter.preprocess({"image": image, "text": text})
    size = tuple(inputs.pop("target_size")[0].tolist())
    with torch.no_grad():
        logits = segmenter.model(**inputs).logits.float()
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)[0, 0]


@pytest.mark.slow  # bfloat16 runs on a reference path on CPUs without bf16 units: about a minute here
def test_bfloat16_pipeline_gives_the_float32_masks(demo_examples):
    checkpoint = str(metris_hf.embedded_checkpoint())
    full = pipeline("referring-image-segmentation", model=checkpoint)
    half = pipeline("referring-image-segmentation", model=checkpoint, dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16 and full.model.dtype == torch.float32

    images, texts = zip(*demo_examples)
    full_results = full(list(images), list(texts), batch_size=6)
    half_results = half(list(images), list(texts), batch_size=6)
    ious = []
    for (image, text), a, b in zip(demo_examples, full_results, half_results):
        assert np.isfinite(b["score"]) and abs(a["score"] - b["score"]) < 0.05, (text, a["score"], b["score"])
        mask_a, mask_b = np.asarray(a["mask"]) > 0, np.asarray(b["mask"]) > 0
        union = (mask_a | mask_b).sum()
        iou = 1.0 if union == 0 else (mask_a & mask_b).sum() / union
        ious.append(iou)
        if iou < 1.0:  # every pixel that changed class lies where float32 is itself within rounding of 0
            field = logit_field(full, image, text)
            assert np.array_equal((field > 0).numpy(), mask_a), text  # the field is the one the pipeline cut
            changed = torch.from_numpy(mask_a != mask_b)
            assert field[changed].abs().max() < BOUNDARY, (text, iou, field[changed])
    print("IoU per mask:", np.round(ious, 4))
    assert np.mean(ious) >= 0.99 and min(ious) >= 0.95, ious
    assert sum(iou >= 0.99 for iou in ious) >= len(ious) - 2, ious


def test_cli_dtype_switch(demo_examples, tmp_path, capsys):
    image, text = demo_examples[0]
    image.save(tmp_path / "scene.png")
    masks = {}
    for dtype in ("float32", "bf16"):
        output = tmp_path / f"mask_{dtype}.png"
        assert (
            segment_main(
                ["--image", str(tmp_path / "scene.png"), "--text", text, "--dtype", dtype, "--output", str(output)]
            )
            == 0
        )
        masks[dtype] = np.asarray(Image.open(output)) > 0
    assert masks["float32"].any()
    union = (masks["float32"] | masks["bf16"]).sum()
    assert (masks["float32"] & masks["bf16"]).sum() / union >= 0.95
    with pytest.raises(SystemExit):
        segment_main(["--image", str(tmp_path / "scene.png"), "--text", text, "--dtype", "int8"])
    assert "--dtype: invalid choice" in capsys.readouterr().err
