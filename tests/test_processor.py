"""Image processors (both backends), MetrisProcessor and post-processing; all offline and on small images."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import ModelOutput

from helpers import KINDS, build_tiny_tokenizer, expressions, make_image, natural_image, register_auto_classes
from metris_hf.image_io import load_local_image
from metris_hf.image_processing_metris import MetrisImageProcessor, MetrisImageProcessorPil
from metris_hf.processing_metris import MetrisProcessor

SIZE = 64
BACKENDS = [MetrisImageProcessor, MetrisImageProcessorPil]
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
ONE_LEVEL = 1 / 255 / min(IMAGENET_DEFAULT_STD)  # one grey level after normalisation (≈ 0.0175)


def colour_of(pixel_values: torch.Tensor) -> torch.Tensor:
    """Mean RGB (0-255) of one processed image, undoing the normalisation."""
    return ((pixel_values[0] * STD + MEAN) * 255).mean(dim=(1, 2))


def uniform_pil(mode: str, value, size=(7, 5)) -> Image.Image:
    return Image.new(mode, size, value)


def palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (7, 5), 3)
    image.putpalette([0, 0, 0] * 3 + [200, 40, 10] + [0, 0, 0] * 252)
    if transparent:
        image.info["transparency"] = 3
    return image


def sixteen_bit_big_endian(value: int) -> Image.Image:
    return Image.frombytes("I;16B", (7, 5), np.full((5, 7), value, dtype=">u2").tobytes())


# (name, image builder, expected RGB in 0..255, tolerance in grey levels)
UNIFORM_CASES = [
    ("RGB", lambda: uniform_pil("RGB", (10, 120, 250)), (10, 120, 250), 0),
    ("L", lambda: uniform_pil("L", 100), (100, 100, 100), 0),
    ("1", lambda: uniform_pil("1", 1), (255, 255, 255), 0),
    ("P", lambda: palette_image(False), (200, 40, 10), 0),
    ("P+transparency", lambda: palette_image(True), (255, 255, 255), 0),
    ("LA opaque", lambda: uniform_pil("LA", (100, 255)), (100, 100, 100), 0),
    ("LA transparent", lambda: uniform_pil("LA", (100, 0)), (255, 255, 255), 0),
    ("RGBA half", lambda: uniform_pil("RGBA", (0, 0, 200, 128)), (127, 127, 227), 1),
    ("RGBa", lambda: uniform_pil("RGBa", (0, 0, 128, 128)), (0, 0, 255), 0),  # no "A" band: PIL's own conversion
    ("CMYK", lambda: uniform_pil("CMYK", (0, 255, 255, 0)), (255, 0, 0), 0),
    ("YCbCr", lambda: uniform_pil("RGB", (10, 120, 250)).convert("YCbCr"), (10, 120, 250), 3),
    ("HSV", lambda: uniform_pil("HSV", (0, 255, 255)), (255, 0, 0), 0),
    ("I 8-bit values", lambda: Image.fromarray(np.full((5, 7), 100, np.int32)), (100, 100, 100), 0),
    # wide PIL modes holding 8-bit values become RGB by PIL's own conversion, as in transformers
    ("I;16 8-bit values", lambda: Image.fromarray(np.full((5, 7), 100, np.uint16)), (100, 100, 100), 0),
    ("I;16B 8-bit values", lambda: sixteen_bit_big_endian(100), (100, 100, 100), 0),
    ("F", lambda: Image.fromarray(np.full((5, 7), 0.5, np.float32)), (0, 0, 0), 0),
    ("np HxW uint8", lambda: np.full((5, 7), 100, np.uint8), (100, 100, 100), 0),
    ("np HxWx1", lambda: np.full((5, 7, 1), 100, np.uint8), (100, 100, 100), 0),
    # floats are taken as given (transformers' convention): a [0, 1] image wants do_rescale=False
    ("np HxWx3 float [0,1]", lambda: np.broadcast_to(np.float32([0.0, 0.5, 1.0]), (5, 7, 3)), (0, 0.5, 1), 0.01),
    ("np HxWx3 float [0,255]", lambda: np.broadcast_to(np.float64([3.0, 128.0, 255.0]), (5, 7, 3)), (3, 128, 255), 0),
    ("np HxWx4 opaque", lambda: np.broadcast_to(np.uint8([10, 20, 30, 255]), (5, 7, 4)), (10, 20, 30), 0),
    # a NumPy strip 3 rows high is H×W×C (PIL's layout), though its first axis could be channels too
    ("np 3xWx3 strip", lambda: np.broadcast_to(np.uint8([10, 20, 30]), (3, 7, 3)), (10, 20, 30), 0),
    ("np bool", lambda: np.ones((5, 7), bool), (1, 1, 1), 0),
    (
        "tensor CHW uint8",
        lambda: torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 5, 7),
        (10, 20, 30),
        0,
    ),
    ("tensor 1xHxW float", lambda: torch.full((1, 5, 7), 0.5), (0.5, 0.5, 0.5), 0.01),
    ("tensor HxW int64", lambda: torch.full((5, 7), 100), (100, 100, 100), 0),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return MetrisProcessor(
        image_processor=MetrisImageProcessor(size={"height": SIZE, "width": SIZE}), tokenizer=tokenizer
    )


# --------------------------------------------------------------------------------------------------------------
# Image processors
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_defaults_are_the_papers(backend):
    image_processor = backend()
    assert dict(image_processor.size) == {"height": 480, "width": 480}
    out = image_processor([Image.new("RGB", (517, 333), "white"), natural_image(20, 30)], return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 480, 480) and out["pixel_values"].dtype == torch.float32
    white = (1 - MEAN) / STD  # rescaled to [0, 1], then ImageNet-normalised
    assert torch.allclose(out["pixel_values"][0], white.expand(3, 480, 480), atol=1e-6)


def test_backends_agree():
    """The two backends agree within 1e-2 except on rare pixels, which differ by exactly one grey level
    (≈ 0.0175 after normalisation): PIL and torchvision both resize uint8 with an antialiased bilinear filter and
    round the result, and their fixed-point arithmetic rounds a few ties differently. Smooth images agree to 1e-6.
    """
    yy, xx = np.mgrid[0:333, 0:517]
    smooth = np.stack([xx * 255 / 517, yy * 255 / 333, (xx + yy) * 255 / 850], -1).astype(np.uint8)
    a = MetrisImageProcessor()(smooth, return_tensors="pt")["pixel_values"]
    b = MetrisImageProcessorPil()(smooth, return_tensors="pt")["pixel_values"]
    assert (a - b).abs().max() < 1e-6
    for image in (natural_image(333, 517), np.random.default_rng(1).integers(0, 256, (333, 517, 3), dtype=np.uint8)):
        a = MetrisImageProcessor()(image, return_tensors="pt")["pixel_values"]
        b = MetrisImageProcessorPil()(image, return_tensors="pt")["pixel_values"]
        difference = (a - b).abs()
        assert (difference > 1e-2).float().mean() < 1e-3 and difference.mean() < 1e-4
        assert difference.max() <= ONE_LEVEL + 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_container_gives_the_same_pixels(backend, tmp_path):
    photo = natural_image(41, 67)
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    inputs = [
        Image.fromarray(photo),
        photo,
        chw,
        np.ascontiguousarray(photo.transpose(2, 0, 1)),  # CHW NumPy: recognised, its last axis cannot be channels
        photo[::-1].copy()[::-1],  # a view with negative strides
        str(path),
        path,
    ]
    image_processor = backend(size={"height": SIZE, "width": SIZE})
    reference = image_processor(inputs[0], return_tensors="pt")["pixel_values"]
    for value in inputs[1:]:
        assert torch.equal(image_processor(value, return_tensors="pt")["pixel_values"], reference)
    # floats are resized as floats, not rounded to uint8 first: within a grey level of the uint8 result
    for value, kwargs in [(photo.astype(np.float32), {}), (chw.float() / 255, {"do_rescale": False})]:
        floats = image_processor(value, return_tensors="pt", **kwargs)["pixel_values"]
        assert (floats - reference).abs().max() <= ONE_LEVEL + 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "image",
    [
        np.full((5, 7), 257 * 100, np.uint16),
        torch.full((1, 5, 7), 40000, dtype=torch.int32),
        Image.fromarray(np.full((5, 7), 40000, np.int32)),  # PIL "I"
        Image.fromarray(np.full((5, 7), 65535, np.uint16)),  # PIL "I;16"
        lambda: sixteen_bit_big_endian(257 * 100),
    ],
    ids=["uint16 array", "int32 tensor", "I", "I;16", "I;16B"],
)
def test_pixels_beyond_eight_bits_are_refused(backend, image):
    """A 16-bit scan would be clipped to white by the RGB conversion (or read out of range by the torchvision
    backend): refused by both backends with the same message, naming the image and the largest value."""
    image = image() if callable(image) else image
    processor = backend(size={"height": 8, "width": 8})
    with pytest.raises(ValueError, match=r"image 0: the image has pixel values up to \d+, beyond 8 bits"):
        processor(image)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,build,expected,tolerance", UNIFORM_CASES, ids=[c[0] for c in UNIFORM_CASES])
def test_image_modes_become_the_right_rgb(backend, name, build, expected, tolerance):
    out = backend(size={"height": 8, "width": 8})(build(), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 8, 8)
    assert torch.allclose(colour_of(out), torch.tensor(expected, dtype=torch.float32), atol=tolerance + 1e-3), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_do_convert_rgb_false_keeps_the_channels_given(backend):
    """As in every transformers image processor: no RGB conversion, no alpha compositing, a palette image's indices."""
    processor = backend(size={"height": 8, "width": 8}, do_normalize=False)
    rgba = np.broadcast_to(np.uint8([10, 20, 30, 128]), (5, 7, 4))
    kept = processor(rgba, do_convert_rgb=False, return_tensors="pt")["pixel_values"]
    assert kept.shape == (1, 4, 8, 8)  # PIL resizes RGBA premultiplied: a grey level of rounding on the colours
    assert torch.allclose(kept[0, :, 0, 0] * 255, torch.tensor([10.0, 20, 30, 128]), atol=1.01)
    grey = processor(uniform_pil("L", 100), do_convert_rgb=False, return_tensors="pt")["pixel_values"]
    assert grey.shape == (1, 1, 8, 8)
    palette = processor(palette_image(False), do_convert_rgb=False, return_tensors="pt")["pixel_values"]
    assert palette.shape == (1, 1, 8, 8) and torch.allclose(palette * 255, torch.tensor(3.0))  # the index
    assert processor(rgba, return_tensors="pt")["pixel_values"].shape == (1, 3, 8, 8)  # the default converts


@pytest.mark.parametrize(
    "bad,message",
    [
        (Image.new("La", (4, 4)), "conversion from La"),
        (np.zeros((7, 7, 5), np.uint8), "Unable to infer channel dimension"),
        (torch.zeros(6, 7, 7), "Unable to infer channel dimension"),
        (
            np.zeros((5, 7, 2), np.uint8),
            "Unable to infer channel dimension",
        ),  # grey + alpha: not a transformers layout
        (np.zeros((2, 2, 2, 2, 2)), "dimensions"),
        (np.zeros((4, 4, 3), np.complex64), "dtype"),
        (np.array([[object()]]), "dtype"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (Image.new("RGB", (0, 10)), "zero size"),
        (np.zeros((0, 5, 3), np.uint8), "zero size"),
        (torch.zeros(3, 7, 0), "zero size"),
        (42, "unsupported image type int"),
        (b"\x89PNG", "unsupported image type bytes"),
        ("https://example.com/cat.png", "URL"),
        ("/no/such/file.png", "not an existing file"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_images_are_refused_clearly(backend, bad, message):
    with pytest.raises(ValueError, match=message):
        backend(size={"height": 8, "width": 8})(bad)


def test_errors_name_the_image(tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with pytest.raises(ValueError, match="image 1: .*zero size"):
        MetrisImageProcessor()([Image.new("RGB", (3, 3)), Image.new("RGB", (3, 0))])
    with pytest.raises(ValueError, match="image 0: Could not read an image"):
        MetrisImageProcessor()(str(not_an_image))
    with pytest.raises(ValueError, match="empty list"):
        MetrisImageProcessor()([])


def test_paths_follow_exif_orientation(tmp_path):
    """A phone photo stored sideways with an EXIF rotation is read the way viewers show it (and the mask too)."""
    stored = Image.new("RGB", (40, 20), "white")
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    loaded = load_local_image(tmp_path / "phone.jpg")
    assert loaded.size == (20, 40)  # displayed portrait: red on top
    top, bottom = np.asarray(loaded)[5, 10], np.asarray(loaded)[35, 10]
    assert top[0] > 200 > top[1] and bottom.min() > 200


def test_size_set_after_construction(tokenizer, tmp_path):
    """scripts/train.py sets `image_processor.size` to a plain dict after construction: it must act everywhere."""
    processor = MetrisProcessor(tokenizer=tokenizer)
    processor.image_processor.size = {"height": 32, "width": 32}
    assert processor(images=natural_image(10, 20), text="a", return_tensors="pt")["pixel_values"].shape[-2:] == (
        32,
        32,
    )
    (mask,) = processor.post_process_referring_segmentation(outputs_with(torch.randn(1, 1, 8, 8)))
    assert mask.shape == (32, 32)
    processor.save_pretrained(tmp_path)
    register_auto_classes()
    assert dict(MetrisProcessor.from_pretrained(tmp_path).image_processor.size) == {"height": 32, "width": 32}


def test_a_huge_image_is_resized_without_copies():
    """10000² RGB: PIL's integer `reduce` shrinks it first, so nothing full-size is copied."""
    huge = Image.new("RGB", (10000, 10000), (10, 200, 30))
    for backend in BACKENDS:
        out = backend(size={"height": SIZE, "width": SIZE})(huge, return_tensors="pt")["pixel_values"]
        assert torch.allclose(colour_of(out), torch.tensor([10.0, 200.0, 30.0]), atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masks_become_nearest_resized_binary_labels(backend):
    image_processor = backend(size={"height": SIZE, "width": SIZE})
    left = np.zeros((32, 48), np.uint8)
    left[:, :24] = 255  # a 0/255 mask: the left half
    masks = [
        Image.fromarray(left),  # "L"
        left > 0,  # bool
        left.astype(np.float32) / 255 * 0.8,  # soft: foreground above 0.5
        torch.from_numpy(left > 0)[None],  # 1×H×W tensor
        np.repeat(left[..., None], 3, -1),  # an RGB drawing
    ]
    out = image_processor([np.zeros((32, 48, 3), np.uint8)] * len(masks), segmentation_maps=masks, return_tensors="pt")
    labels = out["labels"]
    assert labels.shape == (len(masks), SIZE, SIZE) and labels.dtype == torch.int64
    expected = torch.zeros(SIZE, SIZE, dtype=torch.int64)
    expected[:, : SIZE // 2] = 1
    assert all(torch.equal(label, expected) for label in labels)
    with pytest.raises(ValueError, match="2 images but 1 segmentation maps"):
        image_processor([left, left], segmentation_maps=[left])


def test_both_backends_resize_masks_alike():
    yy, xx = np.mgrid[0:333, 0:517]
    disc = ((yy - 150) ** 2 + (xx - 250) ** 2 < 100**2).astype(np.uint8)
    image = np.zeros((333, 517, 3), np.uint8)
    a = MetrisImageProcessor()(image, segmentation_maps=disc, return_tensors="pt")["labels"]
    b = MetrisImageProcessorPil()(image, segmentation_maps=disc, return_tensors="pt")["labels"]
    assert torch.equal(a, b) and a.sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_processor_round_trip(backend, tmp_path):
    register_auto_classes()
    image_processor = backend(size={"height": 96, "width": 96})
    image_processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "MetrisImageProcessor" and saved["size"] == {"height": 96, "width": 96}
    photo = natural_image(50, 70)
    expected = image_processor(photo, return_tensors="pt")["pixel_values"]
    for loaded in (
        backend.from_pretrained(tmp_path),
        AutoImageProcessor.from_pretrained(tmp_path, backend=image_processor.backend),
    ):
        assert type(loaded) is backend and dict(loaded.size) == {"height": 96, "width": 96}
        assert torch.equal(loaded(photo, return_tensors="pt")["pixel_values"], expected)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is MetrisImageProcessor  # torchvision: the default


# --------------------------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------------------------


def outputs_with(logits, no_target_logits=None):
    return ModelOutput(logits=logits, no_target_logits=no_target_logits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_post_processing_sizes(backend):
    image_processor = backend(size={"height": SIZE, "width": SIZE})
    outputs = outputs_with(torch.randn(3, 1, 16, 16))
    masks = image_processor.post_process_referring_segmentation(outputs, target_sizes=[(333, 517), (1, 1), (64, 7)])
    assert [tuple(m.shape) for m in masks] == [(333, 517), (1, 1), (64, 7)]
    assert all(m.dtype == torch.bool for m in masks)
    default = image_processor.post_process_referring_segmentation(outputs)  # the processed size: 64×64
    assert [tuple(m.shape) for m in default] == [(SIZE, SIZE)] * 3
    as_tensor = image_processor.post_process_referring_segmentation(outputs, target_sizes=torch.tensor([[5, 9]] * 3))
    assert [tuple(m.shape) for m in as_tensor] == [(5, 9)] * 3


def test_post_processing_is_bilinear_on_logits_then_threshold():
    logits = torch.full((1, 1, 16, 16), -4.0)
    logits[..., :8] = 4.0  # left half in
    (mask,) = MetrisImageProcessor().post_process_referring_segmentation(outputs_with(logits), [(64, 64)])
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[:, :32] = True  # the interpolated logit crosses 0 exactly between the two halves
    assert torch.equal(mask, expected)
    # an odd size and a threshold other than 0.5: sigmoid(upsampled logits) > t, pixel for pixel
    logits = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    (mask,) = MetrisImageProcessor().post_process_referring_segmentation(outputs_with(logits), [(333, 517)], 0.7)
    reference = torch.sigmoid(F.interpolate(logits, size=(333, 517), mode="bilinear", align_corners=True))[0, 0] > 0.7
    assert (mask != reference).float().mean() < 1e-4  # only float ties at the boundary may differ
    assert 0 < mask.float().mean() < 1


def test_threshold_extremes_and_errors():
    image_processor = MetrisImageProcessor()
    outputs = outputs_with(torch.randn(2, 1, 8, 8))
    assert all(m.all() for m in image_processor.post_process_referring_segmentation(outputs, [(9, 9)] * 2, 0.0))
    assert not any(m.any() for m in image_processor.post_process_referring_segmentation(outputs, [(9, 9)] * 2, 1.0))
    with pytest.raises(ValueError, match="threshold"):
        image_processor.post_process_referring_segmentation(outputs, threshold=1.5)
    with pytest.raises(ValueError, match="1 target sizes for a batch of 2"):
        image_processor.post_process_referring_segmentation(outputs, target_sizes=[(9, 9)])
    with pytest.raises(ValueError, match="positive"):
        image_processor.post_process_referring_segmentation(outputs, target_sizes=[(0, 9), (9, 9)])
    with pytest.raises(ValueError, match=r"\(B, 1, h, w\)"):
        image_processor.post_process_referring_segmentation(outputs_with(torch.randn(2, 2, 8, 8)))


def test_no_target_empties_the_mask_and_scores_are_defined():
    logits = torch.full((2, 1, 8, 8), 2.0)
    logits[1, 0, :4] = -2.0  # top half out
    outputs = outputs_with(logits, no_target_logits=torch.tensor([3.0, -3.0]))
    first, second = MetrisImageProcessor().post_process_referring_segmentation(
        outputs, target_sizes=[(16, 16), (8, 8)], return_scores=True
    )
    assert not first["mask"].any()  # "nothing is referred": empty, whatever the mask logits say
    assert math.isclose(first["score"], torch.sigmoid(torch.tensor(2.0)).item(), rel_tol=1e-6)  # empty: the max
    assert torch.equal(second["mask"][:4], torch.zeros(4, 8, dtype=torch.bool)) and second["mask"][4:].all()
    assert math.isclose(second["score"], torch.sigmoid(torch.tensor(2.0)).item(), rel_tol=1e-6)  # mean inside
    half = MetrisImageProcessor().post_process_referring_segmentation(
        outputs_with(torch.tensor([[[[0.0, 4.0]]]])), target_sizes=[(1, 2)], return_scores=True
    )[0]
    assert half["mask"].tolist() == [[False, True]]
    assert math.isclose(half["score"], torch.sigmoid(torch.tensor(4.0)).item(), rel_tol=1e-6)


def test_half_precision_logits():
    logits = torch.randn(1, 1, 16, 16, dtype=torch.bfloat16)
    (mask,) = MetrisImageProcessorPil().post_process_referring_segmentation({"logits": logits}, [(30, 40)])
    assert mask.shape == (30, 40) and mask.dtype == torch.bool


# --------------------------------------------------------------------------------------------------------------
# MetrisProcessor
# --------------------------------------------------------------------------------------------------------------


def test_processor_outputs(processor):
    out = processor(images=natural_image(40, 50), text="the red circle on the left", return_tensors="pt")
    assert set(out) == {"pixel_values", "input_ids", "attention_mask"}  # no token_type_ids: the model takes none
    assert out["pixel_values"].shape == (1, 3, SIZE, SIZE)
    assert out["input_ids"].shape == out["attention_mask"].shape == (1, 20)
    tokenizer = processor.tokenizer
    assert out["input_ids"][0, 0] == tokenizer.cls_token_id
    length = int(out["attention_mask"].sum())
    assert out["input_ids"][0, length - 1] == tokenizer.sep_token_id
    assert torch.all(out["input_ids"][0, length:] == tokenizer.pad_token_id)


def test_one_image_several_expressions_and_several_images(processor):
    photo = natural_image(40, 50)
    texts = ["the red circle", "a big square on the left", "the star"]
    repeated = processor(images=photo, text=texts, return_tensors="pt")
    assert repeated["pixel_values"].shape == (3, 3, SIZE, SIZE)
    assert all(torch.equal(row, repeated["pixel_values"][0]) for row in repeated["pixel_values"])
    images = [natural_image(40, 50, seed) for seed in range(3)]
    batched = processor(images=images, text=texts, return_tensors="pt")
    for index, (image, text) in enumerate(zip(images, texts)):  # batching changes nothing
        single = processor(images=image, text=text, return_tensors="pt")
        for key in batched:
            assert torch.equal(batched[key][index], single[key][0]), key
    assert torch.equal(repeated["input_ids"], batched["input_ids"])


def test_max_length_defaults_and_overrides(tokenizer):
    long_text = " ".join(["the big red circle on the left"] * 10)
    processor = MetrisProcessor(tokenizer=tokenizer)
    assert processor(text=long_text, return_tensors="pt")["input_ids"].shape == (1, 20)
    assert processor(text=long_text, return_tensors="pt", max_length=8)["input_ids"].shape == (1, 8)
    assert processor(text=long_text, return_tensors="pt", text_kwargs={"max_length": 9})["input_ids"].shape == (1, 9)
    longer = MetrisProcessor(tokenizer=build_tiny_tokenizer())
    longer.max_length = 32  # RefCOCOg-style longer expressions: a tokenizer init kwarg, above the default
    assert longer.tokenizer.init_kwargs["max_length"] == 32
    ids = longer(text=long_text, return_tensors="pt")["input_ids"]
    assert ids.shape == (1, 32) and ids[0, -1] == tokenizer.sep_token_id  # truncated, [SEP] kept
    assert longer(text=long_text, return_tensors="pt", max_length=8)["input_ids"].shape == (1, 8)  # the call wins
    with pytest.raises(TypeError, match="max_length"):  # not an __init__ argument: the call or the tokenizer sets it
        MetrisProcessor(tokenizer=tokenizer, max_length=32)


def test_processor_labels(processor):
    photo = natural_image(40, 50)
    masks = [np.zeros((40, 50), np.uint8), np.ones((40, 50), np.uint8)]
    out = processor(images=photo, text=["the star", "the square"], segmentation_maps=masks, return_tensors="pt")
    assert out["labels"].shape == (2, SIZE, SIZE) and out["labels"].dtype == torch.int64
    assert out["labels"][0].sum() == 0 and out["labels"][1].sum() == SIZE * SIZE
    assert out["pixel_values"].shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"text": ["the star", ""]}, "expression 1: the expression is empty"),
        ({"text": ["the star", "the circle", " \t\n"]}, "expression 2: the expression is empty or whitespace-only"),
        ({"text": "   "}, "expression 0: the expression is empty"),
        ({"text": ["the star", 3]}, "expression 1: the expression must be a string, got int"),
        ({"text": []}, "empty list"),
        ({"text": {"a": 1}}, "string or a non-empty list of strings"),
        ({"images": [np.zeros((4, 4, 3), np.uint8)] * 2, "text": ["a", "b", "c"]}, "2 images and 3 expressions"),
        ({"text": ["a", "b"], "segmentation_maps": [np.zeros((4, 4))]}, "1 segmentation maps for 2 examples"),
        ({"images": None, "text": None}, "needs images, text or both"),
        (
            {"images": [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 0, 3), np.uint8)], "text": ["a", "b"]},
            "image 1: the image has zero size",
        ),
    ],
)
def test_processor_errors(processor, kwargs, message):
    kwargs = {"images": np.zeros((4, 4, 3), np.uint8), **kwargs}
    with pytest.raises(ValueError, match=message):
        processor(**kwargs)


def test_processor_round_trip(tmp_path):
    register_auto_classes()
    processor = MetrisProcessor(
        image_processor=MetrisImageProcessor(size={"height": 96, "width": 96}), tokenizer=build_tiny_tokenizer()
    )
    processor(text="the star", max_length=8)  # a used tokenizer saves its last settings: they must not leak back
    processor.max_length = 12
    processor.save_pretrained(tmp_path)
    assert MetrisProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["image_processor"]["size"] == {"height": 96, "width": 96} and "max_length" not in saved
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["max_length"] == 12
    photo = natural_image(40, 50)
    expected = processor(images=photo, text="the big red star on the left", return_tensors="pt")
    for loaded in (MetrisProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is MetrisProcessor and loaded.max_length == 12
        assert isinstance(loaded.image_processor, MetrisImageProcessor)
        got = loaded(images=photo, text="the big red star on the left", return_tensors="pt")
        assert got["input_ids"].shape == (1, 12)
        for key in expected:
            assert torch.equal(got[key], expected[key]), key
    pil = MetrisProcessor.from_pretrained(tmp_path, backend="pil")  # the torchvision-free variant loads too
    assert isinstance(pil.image_processor, MetrisImageProcessorPil)
    got = pil(images=photo, text="the big red star on the left", return_tensors="pt")
    assert (got["pixel_values"] - expected["pixel_values"]).abs().max() < 1e-2


def test_nested_per_sample_images_and_masks(processor):
    """`[[image], [image]]`, the per-sample layout of multimodal processors, acts as the flat list: one image each."""
    images = [natural_image(40, 50, seed) for seed in range(2)]
    masks = [np.zeros((40, 50), np.uint8), np.ones((40, 50), np.uint8)]
    texts = ["the star", "the square"]
    flat = processor(images=images, text=texts, segmentation_maps=masks, return_tensors="pt")
    nested = processor(
        images=[[image] for image in images], text=texts, segmentation_maps=[[m] for m in masks], return_tensors="pt"
    )
    assert all(torch.equal(flat[key], nested[key]) for key in flat)
    with pytest.raises(ValueError, match="sample 0 has 0 images"):
        processor(images=[[], [images[1]]], text=texts)
    with pytest.raises(ValueError, match="sample 1 has 2 images"):
        processor(images=[[images[0]], images], text=texts)
    image_processor = processor.image_processor  # alone, it flattens whatever nesting it gets
    assert torch.equal(
        image_processor([[images[0]], [images[1]]], return_tensors="pt")["pixel_values"],
        image_processor(images, return_tensors="pt")["pixel_values"],
    )


def test_processor_loads_with_remote_code_in_a_process_without_the_package(tmp_path):
    register_auto_classes()
    processor = MetrisProcessor(
        image_processor=MetrisImageProcessor(size={"height": SIZE, "width": SIZE}), tokenizer=build_tiny_tokenizer()
    )
    processor.max_length = 12
    processor.save_pretrained(tmp_path / "ckpt")
    assert {"processing_metris.py", "image_processing_metris.py"} <= {p.name for p in (tmp_path / "ckpt").iterdir()}
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from transformers import AutoProcessor\n"
        f"p = AutoProcessor.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)\n"
        "assert 'metris_hf' not in sys.modules, 'the package was imported'\n"
        "assert type(p).__module__.startswith('transformers_modules'), type(p).__module__\n"
        "out = p(images=Image.new('RGB', (10, 7)), text='the star', return_tensors='pt')\n"
        f"assert out['input_ids'].shape == (1, 12) and out['pixel_values'].shape == (1, 3, {SIZE}, {SIZE})\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_processor_delegates_post_processing(processor):
    outputs = outputs_with(torch.randn(2, 1, 16, 16))
    ours = processor.post_process_referring_segmentation(outputs, target_sizes=[(7, 9), (9, 7)])
    theirs = processor.image_processor.post_process_referring_segmentation(outputs, target_sizes=[(7, 9), (9, 7)])
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_default_processor_defaults(tokenizer):
    processor = MetrisProcessor(tokenizer=tokenizer)  # scripts/train.py builds it like this
    assert isinstance(processor.image_processor, MetrisImageProcessor) and processor.max_length == 20
    with pytest.raises(ValueError, match="needs a tokenizer"):
        MetrisProcessor()


# --------------------------------------------------------------------------------------------------------------
# Property test: any size, any kind of image, any expression
# --------------------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.integers(1, 600),
    width=st.integers(1, 600),
    kind=st.sampled_from(KINDS),
    text=expressions,
    seed=st.integers(0, 2**16),
)
def test_processor_never_crashes(processor, height, width, kind, text, seed):
    image = make_image(kind, height, width, seed)
    if not text.strip():
        with pytest.raises(ValueError, match="expression 0: the expression is empty"):
            processor(images=image, text=text, return_tensors="pt")
        return
    out = processor(images=image, text=text, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, SIZE, SIZE) and torch.isfinite(out["pixel_values"]).all()
    assert out["input_ids"].shape == out["attention_mask"].shape == (1, 20)
    assert out["attention_mask"][0, 0] == 1 and out["input_ids"][0, 0] == processor.tokenizer.cls_token_id
    masks = processor.post_process_referring_segmentation(outputs_with(torch.randn(1, 1, 16, 16)), [(height, width)])
    assert masks[0].shape == (height, width)
