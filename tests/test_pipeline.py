"""The referring-image-segmentation pipeline on a tiny METRIS saved to disk (README's quick start: test_docs.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import pipeline

from helpers import (
    CHECKPOINT_SIZE,
    KINDS,
    build_tiny_tokenizer,
    expressions,
    make_image,
    natural_image,
    save_tiny_checkpoint,
)
from metris_hf import MetrisForReferringSegmentation
from metris_hf.cpu_kernels import MetrisCpuConvLinear, MetrisInplaceGELU
from metris_hf.image_processing_metris import MetrisImageProcessor
from metris_hf.pipeline_metris import TASK, ReferringImageSegmentationPipeline, register_pipeline
from metris_hf.processing_metris import MetrisProcessor
from metris_hf.testing_utils import tiny_metris_config

SIZE = CHECKPOINT_SIZE


def tiny_processor() -> MetrisProcessor:
    return MetrisProcessor(
        image_processor=MetrisImageProcessor(size={"height": SIZE, "width": SIZE}), tokenizer=build_tiny_tokenizer()
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-metris"))


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return pipeline(TASK, model=str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(natural_image(333, 517))


def assert_result(result, width, height):
    assert set(result) == {"mask", "score"}
    mask = result["mask"]
    assert isinstance(mask, Image.Image) and mask.mode == "L" and mask.size == (width, height)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert isinstance(result["score"], float) and 0.0 <= result["score"] <= 1.0


def same_results(a, b):
    """Equal masks (a float tie at the threshold may flip one pixel in 10⁴) and scores."""
    mismatch = (np.asarray(a["mask"]) != np.asarray(b["mask"])).mean()
    return mismatch <= 1e-4 and abs(a["score"] - b["score"]) < 1e-5


def test_registration_is_idempotent(segmenter):
    register_pipeline()
    assert isinstance(segmenter, ReferringImageSegmentationPipeline)
    assert isinstance(segmenter.processor, MetrisProcessor)


def test_a_cpu_pipeline_runs_the_cpu_kernels(segmenter):
    kinds = {type(module) for module in segmenter.model.modules()}
    assert MetrisCpuConvLinear in kinds and MetrisInplaceGELU in kinds


def test_single_pair_matches_model_and_processor(segmenter, checkpoint, photo):
    result = segmenter(photo, "the red circle on the left")
    assert_result(result, 517, 333)
    # the pipeline is exactly processor → model → post-processing at the original size
    processor = MetrisProcessor.from_pretrained(checkpoint)
    model = MetrisForReferringSegmentation.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        outputs = model(**processor(images=photo, text="the red circle on the left", return_tensors="pt"))
    (expected,) = processor.post_process_referring_segmentation(outputs, [(333, 517)], return_scores=True)
    assert np.array_equal(np.asarray(result["mask"]) > 0, expected["mask"].numpy())
    assert result["score"] == pytest.approx(expected["score"], abs=1e-6)
    probabilities = torch.sigmoid(
        torch.nn.functional.interpolate(outputs.logits, size=(333, 517), mode="bilinear", align_corners=True)
    )[0, 0]
    inside = expected["mask"]
    score = probabilities[inside].mean() if inside.any() else probabilities.max()
    assert result["score"] == pytest.approx(float(score), abs=1e-5)  # the documented definition


def test_lists_and_batching_give_the_same_masks(segmenter, photo):
    texts = ["the red circle", "a big square on the left", "the star"]
    images = [photo, Image.fromarray(natural_image(120, 90, 1)), Image.fromarray(natural_image(45, 300, 2))]
    one_by_one = [segmenter(image, text) for image, text in zip(images, texts)]
    pairs = segmenter(images, texts)
    dicts = segmenter([{"image": i, "text": t} for i, t in zip(images, texts)], batch_size=2)
    streamed = list(segmenter(({"image": i, "text": t} for i, t in zip(images, texts)), batch_size=3))
    for results in (pairs, dicts, streamed):
        assert len(results) == 3
        for single, other, image in zip(one_by_one, results, images):
            assert_result(other, *image.size)
            assert same_results(single, other)
    several = segmenter(photo, texts)  # one image, several expressions
    assert len(several) == 3
    assert all(same_results(result, segmenter(photo, text)) for result, text in zip(several, texts))


def test_threshold(segmenter, photo):
    assert np.asarray(segmenter(photo, "the star", threshold=0.0)["mask"]).min() == 255
    assert np.asarray(segmenter(photo, "the star", threshold=1.0)["mask"]).max() == 0
    with pytest.raises(ValueError, match="threshold"):
        segmenter(photo, "the star", threshold=1.5)


def test_max_length_reaches_the_model(segmenter, photo):
    lengths = []
    handle = segmenter.model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        segmenter(photo, "the star")
        segmenter(photo, "the star", max_length=8)
    finally:
        handle.remove()
    assert lengths == [20, 8]


def test_image_inputs(segmenter, tmp_path, photo):
    path = tmp_path / "photo.png"
    photo.save(path)
    reference = segmenter(photo, "the star")
    array = np.asarray(photo)
    for image in (str(path), path, array, torch.from_numpy(array).permute(2, 0, 1)):
        result = segmenter(image, "the star")
        assert_result(result, 517, 333)
        assert same_results(result, reference)
    # floats on the 0-255 scale (transformers' convention) are resized as floats: within a grey level of uint8's
    result = segmenter(array.astype(np.float32), "the star")
    assert_result(result, 517, 333)
    assert (np.asarray(result["mask"]) != np.asarray(reference["mask"])).mean() < 1e-2
    assert abs(result["score"] - reference["score"]) < 1e-2
    for image, size in [
        (Image.new("RGB", (1, 1), "red"), (1, 1)),
        (Image.new("P", (5, 3)), (5, 3)),
        (Image.new("RGBA", (9, 4)), (9, 4)),
        (Image.fromarray(np.full((6, 7), 200, np.uint16)), (7, 6)),  # 8-bit values in a 16-bit mode
        (Image.fromarray(np.full((400, 390), 200, np.uint16)), (390, 400)),  # ≥ 6× the input: PIL cannot reduce it
        (np.zeros((11, 13), np.uint8), (13, 11)),
        (np.zeros((3, 11, 13), np.float32), (13, 11)),  # CHW NumPy, the only possible reading
        (np.zeros((3, 11, 4), np.uint8), (11, 3)),  # H×W×C NumPy, though its first axis could be channels
    ]:
        assert_result(segmenter(image, "the star"), *size)


def test_a_huge_image(segmenter):
    result = segmenter(Image.new("RGB", (10000, 10000), (40, 90, 200)), "the blue square")
    assert_result(result, 10000, 10000)


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        (("IMAGE", ["the star", "  "]), {}, "expression 1: the expression is empty or whitespace-only"),
        (("IMAGE", ""), {}, "input: the expression is empty"),
        (("IMAGE",), {}, "a referring expression is needed"),
        (("IMAGE", 7), {}, "must be a string or a non-empty list"),
        ((["IMAGE", "IMAGE"], ["a", "b", "c"]), {}, "2 images and 3 expressions"),
        (
            ([{"image": "IMAGE", "text": "a"}, {"image": "IMAGE", "text": "\n"}],),
            {},
            "example 1: the expression is empty",
        ),
        (([{"image": "IMAGE"}],), {}, "example 0: a dict input needs the keys 'image' and 'text'"),
        (("https://example.com/dog.jpg", "the dog"), {}, "URL"),
        (("http://example.com/dog.jpg", "the dog"), {}, "URL"),
        (("/no/such/photo.jpg", "the dog"), {}, "not an existing file"),
        ((Image.new("RGB", (0, 12)), "the dog"), {}, "zero size"),
        ((np.zeros((12, 0, 3), np.uint8), "the dog"), {}, "zero size"),
        ((Image.new("La", (4, 4)), "the dog"), {}, "conversion from La"),
        (([42], ["the dog"]), {}, "example 0: unsupported image type int"),
        (([Image.new("RGB", (5, 5)), Image.new("L", (5, 0))], ["a", "b"]), {}, "example 1: the image has zero size"),
        ((np.zeros((7, 7, 5), np.uint8), "the dog"), {}, "Unable to infer channel dimension"),
    ],
)
def test_errors_are_clear(segmenter, photo, args, kwargs, message):
    def swap(value):
        if isinstance(value, str) and value == "IMAGE":
            return photo
        if isinstance(value, list):
            return [swap(item) for item in value]
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        return value

    with pytest.raises(ValueError, match=re.escape(message) if "'" in message else message):
        segmenter(*[swap(a) for a in args], **kwargs)


def test_no_target_answer_gives_an_empty_mask(photo):
    """With `no_target_head`, a "nothing is referred" answer empties the mask whatever the mask logits say."""
    torch.manual_seed(0)
    model = MetrisForReferringSegmentation(tiny_metris_config(no_target_head=True)).eval()
    segmenter = ReferringImageSegmentationPipeline(model=model, processor=tiny_processor(), device="cpu")
    answer = {"no_target_logit": 0.0}

    def force_no_target_logit(module, inputs, output):
        output["no_target_logits"] = torch.full_like(output["no_target_logits"], answer["no_target_logit"])
        return output

    handle = model.register_forward_hook(force_no_target_logit)
    try:
        answer["no_target_logit"] = -10.0  # "there is a target": threshold 0 lets every pixel in
        assert np.asarray(segmenter(photo, "the star", threshold=0.0)["mask"]).min() == 255
        answer["no_target_logit"] = 10.0  # "nothing is referred"
        result = segmenter(photo, "the star", threshold=0.0)
    finally:
        handle.remove()
    assert_result(result, 517, 333)
    assert np.asarray(result["mask"]).max() == 0


def test_dtype_and_device(checkpoint, photo):
    segmenter = pipeline(TASK, model=str(checkpoint), device="cpu", dtype=torch.bfloat16)
    assert segmenter.dtype == torch.bfloat16 and segmenter.model.dtype == torch.bfloat16
    assert_result(segmenter(photo, "the star"), 517, 333)
    if torch.cuda.is_available():
        on_gpu = pipeline(TASK, model=str(checkpoint), device=0, dtype=torch.float16)
        assert on_gpu.model.device.type == "cuda"
        results = on_gpu([photo, photo], ["the star", "the red circle"], batch_size=2)
        for result in results:
            assert_result(result, 517, 333)


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 600),
    width=st.integers(1, 600),
    kind=st.sampled_from(KINDS),
    text=expressions,
    seed=st.integers(0, 2**16),
)
def test_pipeline_never_crashes(segmenter, height, width, kind, text, seed):
    image = make_image(kind, height, width, seed)
    if not text.strip():
        with pytest.raises(ValueError, match="empty or whitespace-only"):
            segmenter(image, text)
        return
    assert_result(segmenter(image, text), width, height)
    results = segmenter(image, [text, "the star"], threshold=0.3)
    assert len(results) == 2
    for result in results:
        assert_result(result, width, height)


def test_import_alone_registers_every_auto_class_and_the_pipeline(checkpoint, tmp_path):
    """A fresh interpreter: `import metris_hf` is all a user does before the Auto classes and `pipeline` work."""
    code = (
        "import metris_hf\n"
        "from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor, pipeline\n"
        f"path = {str(checkpoint)!r}\n"
        "assert type(AutoConfig.from_pretrained(path)).__name__ == 'MetrisConfig'\n"
        "assert type(AutoModel.from_pretrained(path)) is metris_hf.MetrisForReferringSegmentation\n"
        "assert type(AutoImageProcessor.from_pretrained(path)) is metris_hf.MetrisImageProcessor\n"
        "assert type(AutoProcessor.from_pretrained(path)) is metris_hf.MetrisProcessor\n"
        "segmenter = pipeline('referring-image-segmentation', model=path)\n"
        "assert type(segmenter) is metris_hf.ReferringImageSegmentationPipeline\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
