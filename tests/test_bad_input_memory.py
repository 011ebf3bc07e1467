"""Memory bounded by the output: a 12000×12000 photo through the pipeline (and so `metris-segment`) in a process
whose address space may grow by little more than the photo's decoded bytes and the mask's."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import save_tiny_checkpoint
from metris_hf.image_io import load_local_image
from metris_hf.image_processing_metris import MAX_TARGET_PIXELS, MetrisImageProcessorPil

ROOT = Path(__file__).resolve().parents[1]
SIDE = 12_000
MB = 1 << 20

_RUNNER = textwrap.dedent(
    """
    import json, resource, sys, warnings
    warnings.simplefilter("ignore")
    import metris_hf
    from transformers import pipeline
    segmenter = pipeline("referring-image-segmentation", model=sys.argv[1])
    segmenter(sys.argv[2], "the red star")  # warm: the first forward's own allocations are not the image's
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[4]), resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        result = segmenter(sys.argv[3], "the red star")
        print(json.dumps({"size": list(result["mask"].size), "score": result["score"]}))
    except MemoryError:
        print(json.dumps({"error": "MemoryError"}))
    """
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("huge")
    save_tiny_checkpoint(folder / "model")
    Image.new("RGB", (32, 32), "red").save(folder / "small.png")
    photo = Image.new("RGB", (SIDE, SIDE), (200, 30, 30))
    photo.save(folder / "photo.jpg", quality=80)
    photo.save(folder / "photo.png")
    del photo
    return {
        "model": folder / "model",
        "small": folder / "small.png",
        "jpg": folder / "photo.jpg",
        "png": folder / "photo.png",
    }


def run_capped(files: dict[str, Path], image: str, headroom: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    command = [
        sys.executable,
        "-c",
        _RUNNER,
        str(files["model"]),
        str(files["small"]),
        str(files[image]),
        str(headroom),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "image,headroom",
    [
        # a JPEG is decoded at 1/8 scale (PIL's draft): the 144 MB mask and a constant
        ("jpg", SIDE * SIDE + 256 * MB),
        # a PNG is decoded whole (432 MB of uint8 RGB), then reduced in uint8; the mask; a constant.
        # Before: 1.1 GB resident (a copy for the EXIF orientation, a float32 field at full size), MemoryError
        ("png", 3 * SIDE * SIDE + SIDE * SIDE + 64 * MB),
    ],
)
def test_a_12000_pixel_photo_under_a_memory_cap(files, image, headroom):
    outcome = run_capped(files, image, headroom)
    assert outcome.get("size") == [SIDE, SIDE], outcome
    assert 0.0 <= outcome["score"] <= 1.0


def test_post_processing_refuses_a_target_past_the_limit():
    processor = MetrisImageProcessorPil(size={"height": 64, "width": 64})
    outputs = {"logits": torch.zeros(1, 1, 16, 16)}
    with pytest.raises(ValueError, match=r"100000×100000 .* past the limit of 268,435,456 pixels"):
        processor.post_process_referring_segmentation(outputs, target_sizes=[(100_000, 100_000)])
    side = int(MAX_TARGET_PIXELS**0.5)
    assert side * side <= MAX_TARGET_PIXELS  # a 16384² mask is still allowed (not made here: 256 MB)


def test_large_targets_are_upsampled_in_bands_exactly():
    """Past 4 M pixels the mask is built a band of rows at a time: the same mask and score as one interpolation."""
    import metris_hf.image_processing_metris as module

    processor = MetrisImageProcessorPil(size={"height": 64, "width": 64})
    torch.manual_seed(0)
    outputs = {"logits": torch.randn(1, 1, 40, 40) * 3}
    banded = processor.post_process_referring_segmentation(outputs, [(2100, 2050)], return_scores=True)[0]
    limit = module._SCORE_CHUNK_ELEMENTS
    module._SCORE_CHUNK_ELEMENTS = 1 << 40
    try:
        whole = processor.post_process_referring_segmentation(outputs, [(2100, 2050)], return_scores=True)[0]
    finally:
        module._SCORE_CHUNK_ELEMENTS = limit
    assert torch.equal(banded["mask"], whole["mask"]) and 0.1 < banded["mask"].float().mean() < 0.9
    assert banded["score"] == pytest.approx(whole["score"], rel=1e-6)


def test_a_decompression_bomb_is_named(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the error comes at twice the limit: 2000 < 90000
    with pytest.raises(ValueError, match=r"bomb\.png.* too large.*decompression-bomb limit .* 2,000 pixels"):
        load_local_image(path)


def test_a_rotated_jpeg_decoded_at_a_reduced_scale_gets_a_mask_at_its_own_size(files, tmp_path):
    """EXIF orientation 6 (turned a quarter): the mask has the oriented size, though the decoder read 1/2 scale."""
    from transformers import pipeline

    photo = Image.new("RGB", (800, 400), (30, 30, 200))
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    segmenter = pipeline("referring-image-segmentation", model=str(files["model"]))  # 64² input: draft to 192²
    result = segmenter(str(tmp_path / "rotated.jpg"), ["the blue square", "the star"])
    assert [r["mask"].size for r in result] == [(400, 800), (400, 800)]
    assert segmenter(str(tmp_path / "rotated.jpg"), "the blue square")["mask"].size == (400, 800)
