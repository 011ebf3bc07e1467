"""The Gradio app's logic without a browser: overlays, masks, scores and the messages for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from metris_hf import embedded_checkpoint
from metris_hf.app import EMBEDDED, example_scenes, outline_overlay, parse_expressions, segment
from metris_hf.visualization import DISPLAY_SIDE, OUTLINE_COLOUR


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return example_scenes(tmp_path_factory.mktemp("examples"), count=2)


def test_expressions_are_one_per_non_blank_line():
    assert parse_expressions(" the red star \n\n  \nthe big circle\n") == ["the red star", "the big circle"]
    assert parse_expressions(None) == [] and parse_expressions(" \n ") == []


def test_overlay_keeps_the_objects_colour_and_outlines_it():
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    shown = np.asarray(outline_overlay(image, mask, width=1))
    assert (shown[mask] == (200, 30, 30)).all()  # the whole object untouched, its border included
    assert (shown[0:10, 0:10] < (200, 30, 30)).all()  # outside: dimmed
    assert (shown[15, 16:48] == (255, 255, 0)).all()  # the outline, just outside


def test_examples_are_scenes_with_their_expressions(examples):
    assert len(examples) == 2
    for path, text in examples:
        assert Image.open(path).size == (256, 256) and 1 <= len(parse_expressions(text)) <= 3


def test_segment_gives_one_overlay_and_mask_per_expression_like_the_pipeline(examples, tmp_path):
    path, text = examples[0]
    expressions = parse_expressions(text)
    overlays, files, sheet, status = segment(path, text, 0.5, EMBEDDED, True, tmp_path)
    assert status.startswith("Done:") and len(overlays) == len(files) == len(expressions)
    reference = pipeline("referring-image-segmentation", model=str(embedded_checkpoint()))(path, expressions)
    for (overlay, caption), file, expected, expression in zip(overlays, files, reference, expressions):
        assert overlay.size == (256, 256) and caption.startswith(expression)
        assert np.array_equal(np.asarray(Image.open(file)), np.asarray(expected["mask"]))
        assert f"{expected['score']:.3f}" in caption
    assert np.asarray(Image.open(files[0])).any()
    assert sheet is not None and sheet.width > 256  # image, mask and the two attention panels side by side


@pytest.mark.parametrize(
    ("image", "text", "message"),
    [
        (None, "the red star", "Upload an image"),
        ("EXAMPLE", "  \n ", "Type at least one expression"),
        ("BROKEN", "the red star", "Could not read the image"),
    ],
)
def test_bad_input_gives_a_message_not_an_exception(examples, tmp_path, image, text, message):
    if image == "EXAMPLE":
        image = examples[0][0]
    elif image == "BROKEN":
        image = tmp_path / "broken.png"
        image.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        image = str(image)
    overlays, files, sheet, status = segment(image, text, 0.5, EMBEDDED, False, tmp_path)
    assert overlays == [] and files == [] and sheet is None
    assert status.startswith("Error:") and message in status and "Traceback" not in status


def test_a_model_that_does_not_load_is_reported(examples, tmp_path):
    *_, status = segment(examples[0][0], "the red star", 0.5, str(tmp_path / "missing"), False, tmp_path)
    assert status.startswith("Error: Could not load the model")


def test_overlay_of_a_large_photo_is_drawn_at_display_size():
    """A 12000² photo (phone cameras take 50-200 MP) is outlined at display size: the picture shown is at most
    `DISPLAY_SIDE` on its longer side, and the work is bounded by that picture, not by the photo."""
    image = Image.new("RGB", (12000, 9000), (40, 90, 200))
    mask = np.zeros((9000, 12000), bool)
    mask[3000:6000, 4000:8000] = True
    shown = outline_overlay(image, mask)
    assert shown.size == (DISPLAY_SIDE, 960)
    pixels = np.asarray(shown)
    assert (pixels[480, 640] == (40, 90, 200)).all()  # inside the object: its own colour
    assert (pixels[100, 100] < (40, 90, 200)).all() and (pixels[100, 100] > 0).any()  # outside: dimmed, not black
    assert ((pixels == OUTLINE_COLOUR).all(-1)).any()  # the outline is there
