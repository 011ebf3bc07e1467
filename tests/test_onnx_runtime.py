"""metris_hf.onnx_runtime without an export: its preprocessing against the processor's, and the one-line errors
of a folder that cannot be run (graphs built in a few lines with `onnx.helper`). The end-to-end checks, with a
real export and a venv without torch, are in test_onnx.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from metris_hf import MetrisImageProcessorPil, embedded_checkpoint
from metris_hf.cli import main as cli_main
from metris_hf.image_io import open_local_image
from metris_hf.processing_metris import DEFAULT_MAX_LENGTH

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")

from metris_hf import onnx_runtime  # noqa: E402
from metris_hf.onnx_runtime import OnnxModelError, OnnxPreprocessor, OnnxReferringSegmenter  # noqa: E402


@pytest.fixture
def folder(tmp_path):
    """The shipped checkpoint's processor files, as an export writes them beside the graph."""
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_checkpoint() / name, tmp_path / name)
    return tmp_path


def write_graph(path, output="logits", size=128):
    """A stand-in for an export: the right inputs, mask logits of a quarter of the size (a strided slice)."""
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, size, size]),
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
    ]
    constants = {
        "starts": [0, 0],
        "ends": [size, size],
        "axes": [2, 3],
        "steps": [4, 4],
        "channel_starts": [0],
        "channel_ends": [1],
        "channel_axes": [1],
    }
    nodes = [helper.make_node("Constant", [], [name], value_ints=value) for name, value in constants.items()]
    nodes.append(
        helper.make_node("Slice", ["pixel_values", "channel_starts", "channel_ends", "channel_axes"], ["one"])
    )
    nodes.append(helper.make_node("Slice", ["one", "starts", "ends", "axes", "steps"], [output]))
    result = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 1, size // 4, size // 4])
    model = helper.make_model(
        helper.make_graph(nodes, "stand_in", inputs, [result]), opset_imports=[helper.make_opsetid("", 18)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))


def test_default_max_length_is_the_processors():
    assert onnx_runtime.DEFAULT_MAX_LENGTH == DEFAULT_MAX_LENGTH


@pytest.mark.parametrize("size", [(128, 128), (301, 77), (900, 1000), (4000, 3000), (17, 31)])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_pixel_values_equal_the_image_processors(folder, size, mode):
    """Equal to the PIL backend's (same resize, float rounding apart: 1e-6 is 1/17000 of a grey level); the
    torchvision backend's resize rounds a few values (< 1 %) one grey level apart."""
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)))
    ours = OnnxPreprocessor(folder).pixel_values(image)
    pil = MetrisImageProcessorPil.from_pretrained(folder)(image, return_tensors="np")["pixel_values"][0]
    torchvision = AutoProcessor.from_pretrained(embedded_checkpoint()).image_processor(image, return_tensors="np")
    assert ours.dtype == np.float32 and ours.shape == pil.shape == (3, 128, 128)
    np.testing.assert_allclose(ours, pil, rtol=0, atol=1e-6)
    apart = np.abs(ours - torchvision["pixel_values"][0])
    assert apart.max() <= 1 / 255 / 0.224 + 1e-5 and (apart > 1e-5).mean() < 0.01


@pytest.mark.parametrize("max_length", [None, 21, 9])
def test_ids_equal_the_tokenizers(folder, max_length):
    """Padding, truncation with [SEP] kept, lower-casing and accents: the saved length or the one a folder says."""
    if max_length is not None:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["max_length"] = max_length
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    texts = ["the red star", "THE Lowest shape, left of the big blue circle " * 4, "élan naïve café 東京", "a"]
    processor = AutoProcessor.from_pretrained(folder)
    expected = processor(text=texts, return_tensors="np")
    ids, mask = OnnxPreprocessor(folder).tokenize(texts)
    assert ids.shape == (len(texts), max_length or DEFAULT_MAX_LENGTH)
    assert np.array_equal(ids, expected["input_ids"]) and np.array_equal(mask, expected["attention_mask"])
    assert ids[1, -1] == processor.tokenizer.sep_token_id  # truncated, [SEP] kept


def test_stand_in_graph_runs_and_masks_follow_the_logits(folder):
    write_graph(folder / "model.onnx")
    segmenter = OnnxReferringSegmenter(folder)
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    image[:, 150:] = 255  # logits: the normalised red channel, positive on the white half
    result = segmenter(image, "the right half")
    mask = np.asarray(result["mask"])
    assert mask.shape == (200, 300) and mask[:, :140].sum() == 0 and mask[:, 160:].all()
    assert 0.5 < result["score"] <= 1.0


def test_a_jpeg_path_is_drafted_as_the_pipeline_drafts_it(folder, tmp_path):
    """A 2000×1500 JPEG for a 128² graph is decoded at 1/2 scale (≥ 3× the input), as `open_local_image` does for
    the pipeline: the same pixel values as the image processor's on that decoding, and a mask at the file's size."""
    write_graph(folder / "model.onnx")
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(path)
    preprocessor = OnnxPreprocessor(folder)
    rgb, size = preprocessor.rgb(path)
    assert rgb.size == (1000, 750) and size == (1500, 2000)
    drafted, _ = open_local_image(path, (384, 384))
    pil = MetrisImageProcessorPil.from_pretrained(folder)(drafted, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(preprocessor.pixel_values(path), pil, rtol=0, atol=1e-6)
    assert OnnxReferringSegmenter(folder)(path, "x")["mask"].size == (2000, 1500)


def test_a_decompression_bomb_is_named_with_the_limit(folder, tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels: past 2 × 1000
    with pytest.raises(
        ValueError, match=r"bomb\.png' is too large: .* limit is 2 × PIL\.Image\.MAX_IMAGE_PIXELS = 2,000"
    ):
        OnnxPreprocessor(folder).rgb(path)


def test_arrays_are_read_as_the_image_processor_reads_them(folder):
    """Floats on the 0-255 scale (transformers' convention, rounded to uint8 for Pillow), grey and RGBA arrays; a
    NaN, an unsupported dtype, an empty array or 16-bit values is a ValueError naming it."""
    preprocessor = OnnxPreprocessor(folder)
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    expected = preprocessor.pixel_values(rgb)
    np.testing.assert_array_equal(preprocessor.pixel_values(rgb.astype(np.float32)), expected)
    grey = preprocessor.pixel_values(rgb[..., 0])
    np.testing.assert_array_equal(grey, preprocessor.pixel_values(np.repeat(rgb[..., :1], 3, -1)))
    opaque = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(preprocessor.pixel_values(opaque), expected)
    for bad, message in [
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 3), np.complex64), "dtype complex64"),
        (np.zeros((0, 4, 3), np.uint8), "zero size"),
        (np.full((4, 4), 40000, np.uint16), "pixel values up to 40000, beyond 8 bits"),
    ]:
        with pytest.raises(ValueError, match=message):
            preprocessor.pixel_values(bad)


def test_a_mode_pil_cannot_convert_is_named_as_by_the_image_processor(folder):
    image = Image.new("La", (8, 8))  # PIL converts La to nothing
    with pytest.raises(ValueError, match=r"conversion from La to L not supported"):
        OnnxPreprocessor(folder).pixel_values(image)
    with pytest.raises(ValueError, match=r"conversion from La to L not supported"):
        MetrisImageProcessorPil.from_pretrained(folder)(image)


def corrupt(folder):
    (folder / "model.onnx").write_bytes(b"\x08\x07not a protobuf" * 10)


def wrong_output(folder):
    write_graph(folder / "model.onnx", output="mask")


def other_size(folder):
    write_graph(folder / "model.onnx", size=64)


def truncated_tokenizer(folder):
    write_graph(folder / "model.onnx")
    text = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(text[: len(text) // 2])


def zero_std(folder):
    write_graph(folder / "model.onnx")
    config = json.loads((folder / "processor_config.json").read_text())
    config["image_processor"]["image_std"] = [0.2, 0.0, 0.2]
    (folder / "processor_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: None, "no ONNX model at .*model.onnx"),
        (corrupt, "model.onnx is not a loadable ONNX model"),
        (wrong_output, "no output named 'logits' .*'mask'"),
        (other_size, "image_processor.size is 128×128 but .*exported for 64×64"),
        (truncated_tokenizer, "tokenizer.json is not a readable tokenizer"),
        (zero_std, r"image_processor.image_std is \[0.2, 0.0, 0.2\]; .* > 0"),
    ],
)
def test_a_folder_that_cannot_run_gets_one_line_naming_the_file(folder, tmp_path_factory, capsys, damage, message):
    damage(folder)
    with pytest.raises(OnnxModelError, match=message):
        OnnxReferringSegmenter(folder)
    image = tmp_path_factory.mktemp("image") / "scene.png"
    Image.new("RGB", (40, 30)).save(image)
    argv = ["--backend", "onnx", "--model", str(folder), "--image", str(image), "--text", "x"]
    with pytest.raises(SystemExit) as exit_:
        cli_main([*argv, "--output", str(image.with_name("mask.png"))])
    error = capsys.readouterr().err
    assert exit_.value.code == 1 and error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("metris-segment: error: ")


@pytest.mark.parametrize("threshold", ["0.5", None, True, float("nan"), 1.5])
def test_threshold_must_be_a_number_in_the_unit_interval(folder, threshold):
    write_graph(folder / "model.onnx")
    with pytest.raises(ValueError, match="threshold must"):
        OnnxReferringSegmenter(folder)(np.zeros((8, 8, 3), dtype=np.uint8), "x", threshold=threshold)


def test_upsampling_equals_the_image_processors(folder):
    """The logits → mask step against the image processor's post-processing on random fields, several sizes."""
    import torch

    processor = AutoProcessor.from_pretrained(embedded_checkpoint())
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 1, 32, 32)).astype(np.float32) * 4
    for height, width in [(32, 32), (128, 128), (480, 640), (1999, 33)]:
        expected = processor.post_process_referring_segmentation(
            {"logits": torch.from_numpy(logits)}, target_sizes=[(height, width)], return_scores=True
        )[0]
        mask, score = onnx_runtime.logits_to_mask(logits[0, 0], height, width, 0.5)
        assert np.array_equal(mask, expected["mask"].numpy())
        assert score == pytest.approx(expected["score"], abs=1e-6)
