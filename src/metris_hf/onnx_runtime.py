"""METRIS on onnxruntime with neither PyTorch nor transformers: onnxruntime, NumPy, Pillow and `tokenizers` only.

    from metris_hf.onnx_runtime import OnnxReferringSegmenter
    segmenter = OnnxReferringSegmenter("exported/")     # a folder written by scripts/export_onnx.py
    result = segmenter("scene.png", "the red star")      # {"mask": PIL "L" 0/255, "score": float}
    results = segmenter(image, ["the red star", "the lowest shape"])

    pip install "metris-hf[onnxruntime]"                 # this module's four dependencies, no torch

This module does what the processor does around the graph, from the files the export saved beside it:
- images: RGB uint8 (transparency on white, EXIF orientation applied), the processor's integer pre-reduction of
  huge images, PIL's resize to the exported size with the saved `resample`, then rescale and normalise in
  float32 with the fused constants the torchvision image processor uses, so `pixel_values` equal the
  processor's (tests/test_onnx_runtime.py compares them);
- expressions: `tokenizers.Tokenizer` from the saved `tokenizer.json`, padded and truncated to the saved
  `max_length` with [SEP] kept, the transformers tokenizer's ids;
- masks: the stride-4 logits upsampled bilinearly (`align_corners=True`, as in training) to the image's size,
  thresholded as `logit > logit(threshold)`, in bands of rows so that the memory is the mask's plus a constant;
  the score is the mean probability inside the mask (the highest one when it is empty); where the graph has a
  `no_target_logits` output and it is positive, the mask is empty (the model says nothing is referred).

`import metris_hf.onnx_runtime` loads no torch in an environment without transformers (the package's
`__init__` registers the transformers classes only when transformers is installed). Every problem with the folder
(missing or corrupt `model.onnx`, a graph without a `logits` output, a processor size the graph was not exported
for, unreadable processor or tokenizer files) raises `OnnxModelError`, a `ValueError` naming the file and field.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .image_io import (
    check_eight_bit,
    check_expressions,
    check_finite,
    check_image_settings,
    check_image_size,
    check_threshold,
    logit_cut,
    open_local_image,
    reduce_for,
    to_rgb,
)

ONNX_FILE = "model.onnx"
METADATA_FILE = "onnx_export.json"
PROCESSOR_FILE = "processor_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask")
# The processor's default expression length, used only when neither the export's metadata nor the tokenizer's
# config says (tests/test_onnx_runtime.py checks it equals processing_metris.DEFAULT_MAX_LENGTH).
DEFAULT_MAX_LENGTH = 20
STEPS = ("resize", "rescale", "normalize")
# What the image processor assumes for a setting its saved config leaves out.
_IMAGE_DEFAULTS = {
    "size": {"height": 480, "width": 480},
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
_ROWS_PER_BAND = 1 << 10  # rows of the upsampled logit field held at once


class OnnxModelError(ValueError):
    """An exported folder that cannot be run: the message names the file and, where there is one, the field."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise OnnxModelError(f"{path} is missing: export the model with scripts/export_onnx.py")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise OnnxModelError(f"{path} is not readable JSON ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise OnnxModelError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


class OnnxPreprocessor:
    """The processor's steps in NumPy and Pillow, read from an exported folder's `processor_config.json`,
    `tokenizer.json`, `tokenizer_config.json` and `onnx_export.json`."""

    def __init__(self, folder: str | os.PathLike):
        from tokenizers import Tokenizer

        folder = Path(folder)
        config_path = folder / PROCESSOR_FILE
        config = {**_IMAGE_DEFAULTS, **_read_json(config_path).get("image_processor", {})}
        try:
            check_image_settings(config, f"{config_path}: image_processor")
        except ValueError as error:
            raise OnnxModelError(str(error)) from None
        self.height, self.width = config["size"]["height"], config["size"]["width"]
        self.resample = int(config.get("resample", PIL.Image.Resampling.BILINEAR))
        self.do_resize, self.do_rescale, self.do_normalize = (bool(config[f"do_{step}"]) for step in STEPS)
        self.rescale_factor = config["rescale_factor"]
        # The torchvision image processor fuses rescale and normalise: (x - mean/factor) / (std/factor), float32.
        mean = np.broadcast_to(np.asarray(config["image_mean"], dtype=np.float32), 3)
        std = np.broadcast_to(np.asarray(config["image_std"], dtype=np.float32), 3)
        if self.do_rescale and self.do_normalize:
            scale = np.float32(1.0 / self.rescale_factor)
            mean, std = mean * scale, std * scale
        self.mean, self.std = mean.reshape(3, 1, 1), std.reshape(3, 1, 1)

        tokenizer_path = folder / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise OnnxModelError(f"{tokenizer_path} is missing: export the model with scripts/export_onnx.py")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as error:  # noqa: BLE001 - tokenizers raises plain Exceptions for unreadable files
            message = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise OnnxModelError(f"{tokenizer_path} is not a readable tokenizer ({message})") from None
        tokenizer_config_path = folder / TOKENIZER_CONFIG_FILE
        tokenizer_config = _read_json(tokenizer_config_path) if tokenizer_config_path.is_file() else {}
        metadata_path = folder / METADATA_FILE
        metadata = _read_json(metadata_path) if metadata_path.is_file() else {}
        max_length = metadata.get("max_length") or tokenizer_config.get("max_length") or DEFAULT_MAX_LENGTH
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 2 <= max_length <= 4096:
            raise OnnxModelError(
                f"{tokenizer_config_path}: max_length must be an integer in 2..4096 ([CLS] and [SEP]), got "
                f"{max_length!r}"
            )
        self.max_length = max_length
        pad = tokenizer_config.get("pad_token", "[PAD]")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        pad_id = self.tokenizer.token_to_id(pad) if isinstance(pad, str) else None
        if pad_id is None:
            raise OnnxModelError(f"{tokenizer_config_path}: pad_token {pad!r} is not in {tokenizer_path}")
        self.tokenizer.enable_truncation(max_length=max_length, strategy="longest_first", direction="right")
        self.tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad, direction="right")

    def rgb(self, image: Any) -> tuple[PIL.Image.Image, tuple[int, int]]:
        """A PIL image, an array (H×W, H×W×3, H×W×4) or a local path → (an RGB PIL image, the (height, width) the
        mask is wanted at). A path is opened as the pipeline opens it (`image_io`): a JPEG decoded by PIL's `draft`
        at the smallest scale still ≥ 3× the input size, so that size is the file's own."""
        size = None
        if isinstance(image, (str, os.PathLike)):
            draft_to = (3 * self.width, 3 * self.height) if self.do_resize else None
            image, size = open_local_image(image, draft_to)
        if isinstance(image, np.ndarray):
            image = _array_to_pil(image)
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(
                f"unsupported image type {type(image).__name__}: expected a PIL image, a NumPy array or a local path"
            )
        check_image_size(image.height, image.width)
        check_eight_bit(image)
        return to_rgb(image), size or (image.height, image.width)

    def pixel_values(self, image: Any) -> np.ndarray:
        """One image → (3, height, width) float32, as the image processor's `pixel_values`."""
        rgb = self.rgb(image)[0]  # an RGB PIL image is itself
        if self.do_resize:
            # the processor's two-step resize of huge images: an integer box reduction keeping ≥ 3× the target
            rgb = reduce_for(rgb, (self.height, self.width))
            if rgb.size != (self.width, self.height):
                rgb = rgb.resize((self.width, self.height), resample=self.resample)
        values = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)
        if self.do_normalize:  # mean and std already carry the rescale factor when both steps are on
            return (values - self.mean) / self.std
        if self.do_rescale:
            return values * np.float32(self.rescale_factor)
        return np.ascontiguousarray(values)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Expressions → (input_ids, attention_mask), int64 (B, max_length), as the processor's tokenizer."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.asarray([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        return ids, mask


def _array_to_pil(array: np.ndarray) -> PIL.Image.Image:
    """H×W grey, H×W×3 RGB or H×W×4 RGBA → PIL. Floats are read as the image processors read them, on the 0-255
    scale (transformers' convention), and rounded to uint8 for Pillow's resize."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image array must be H×W, H×W×3 or H×W×4, got shape {array.shape}")
    check_image_size(*array.shape[:2])  # before Pillow, whose older releases fail on it with an unrelated message
    if array.dtype.kind == "f":
        check_finite(array)
        array = np.round(np.clip(array, 0, 255)).astype(np.uint8)
    try:  # uint8 and bool as they are; 16- and 32-bit grey become PIL's "I;16" / "I", as in a file
        return PIL.Image.fromarray(np.ascontiguousarray(array))
    except TypeError as error:
        raise ValueError(f"unsupported image array of dtype {array.dtype}, shape {array.shape}: {error}") from None


def _axis_weights(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of a linear interpolation with align_corners=True, in float32 as torch computes them."""
    scale = np.float32((source - 1) / (target - 1)) if target > 1 else np.float32(0.0)
    position = np.arange(target, dtype=np.float32) * scale
    low = np.minimum(position.astype(np.int64), source - 1)
    high = np.minimum(low + 1, source - 1)
    weight_high = (position - low.astype(np.float32)).astype(np.float32)
    return low, high, (np.float32(1.0) - weight_high).astype(np.float32), weight_high


def logits_to_mask(
    field: np.ndarray, height: int, width: int, threshold: float, no_target: bool = False
) -> tuple[np.ndarray, float]:
    """One (h, w) logit map → (the boolean mask at height×width, its score), band by band of rows; with
    `no_target` the mask is empty (its score is then the highest probability, as for any empty mask).

    Upsampling is bilinear with align_corners=True, as the image processor's post-processing (and training) do.
    A target smaller than h×w is resized with PIL's antialiased bilinear filter instead (the image processor
    uses torch's antialiased bilinear there: the masks of such tiny images may differ at a few edge pixels).
    """
    cut = logit_cut(threshold)
    cut = math.inf if no_target else cut
    field = np.asarray(field, dtype=np.float32)
    source_h, source_w = field.shape
    if height < source_h or width < source_w:
        full = np.asarray(PIL.Image.fromarray(field, mode="F").resize((width, height), PIL.Image.Resampling.BILINEAR))
        mask = full > cut
        inside = int(mask.sum())
        score = float(_sigmoid(full[mask]).sum() / inside) if inside else float(_sigmoid(full.max()))
        return mask, score
    col_low, col_high, col_w0, col_w1 = _axis_weights(source_w, width)
    row_low, row_high, row_w0, row_w1 = _axis_weights(source_h, height)
    columns = col_w0 * field[:, col_low] + col_w1 * field[:, col_high]  # (h, width)
    mask = np.empty((height, width), dtype=bool)
    total, inside, highest = 0.0, 0, -math.inf
    for start in range(0, height, _ROWS_PER_BAND):
        rows = slice(start, min(start + _ROWS_PER_BAND, height))
        band = row_w0[rows, None] * columns[row_low[rows]] + row_w1[rows, None] * columns[row_high[rows]]
        band_mask = band > cut
        mask[rows] = band_mask
        inside += int(band_mask.sum())
        total += float(_sigmoid(band[band_mask]).sum(dtype=np.float64))
        highest = max(highest, float(band.max()))
    score = total / inside if inside else float(_sigmoid(np.float32(highest)))
    return mask, score


def _sigmoid(values: Any) -> Any:
    return 1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float64)))


def make_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for `path` (a `.onnx` file or a folder holding `model.onnx`); an unreadable
    file raises `OnnxModelError` naming it."""
    import onnxruntime as ort

    path = Path(path)
    if path.is_dir():
        path = path / ONNX_FILE
    if not path.is_file():
        raise OnnxModelError(f"no ONNX model at {path} (export one with scripts/export_onnx.py)")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's pybind errors share no useful base class
        message = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise OnnxModelError(f"{path} is not a loadable ONNX model ({message})") from None


class OnnxReferringSegmenter:
    """The `referring-image-segmentation` pipeline's results, computed by onnxruntime on an exported folder.

    Call with `(image, text)` for one result dict or `(image, [texts])` for a list of them (one batch); images as
    PIL images, local paths or arrays. Results: `{"mask": PIL "L" 0/255, "score": float}`, plus `"no_target"`
    (bool) when the graph has the no-target head's output.
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise OnnxModelError(f"{self.folder} is not a folder (give the folder scripts/export_onnx.py wrote)")
        self.session = make_session(self.folder, threads)
        onnx_path = self.folder / ONNX_FILE
        inputs = {node.name: node for node in self.session.get_inputs()}
        missing = [name for name in INPUT_NAMES if name not in inputs]
        if missing:
            raise OnnxModelError(f"{onnx_path}: the graph lacks the input(s) {missing} (it has {sorted(inputs)})")
        self.output_names = [node.name for node in self.session.get_outputs()]
        if "logits" not in self.output_names:
            raise OnnxModelError(
                f"{onnx_path}: the graph has no output named 'logits' (its outputs: {self.output_names}); export "
                "METRIS with scripts/export_onnx.py"
            )
        self.preprocessor = OnnxPreprocessor(self.folder)
        exported = inputs["pixel_values"].shape[2:]
        wanted = [self.preprocessor.height, self.preprocessor.width]
        if all(isinstance(dim, int) for dim in exported) and list(exported) != wanted:
            raise OnnxModelError(
                f"{self.folder / PROCESSOR_FILE}: image_processor.size is {wanted[0]}×{wanted[1]} but {onnx_path} "
                f"was exported for {exported[0]}×{exported[1]} images; re-export, or restore the size"
            )

    def logits(
        self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The graph's raw outputs by name (`logits` (B, 1, h, w), maybe `no_target_logits` (B,))."""
        feeds = {
            "pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32),
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def __call__(
        self, image: Any, text: str | list[str], threshold: float = 0.5
    ) -> dict[str, Any] | list[dict[str, Any]]:
        threshold = check_threshold(threshold)
        single, texts = isinstance(text, str), check_expressions(text)
        rgb, (height, width) = self.preprocessor.rgb(image)
        pixels = self.preprocessor.pixel_values(rgb)
        input_ids, attention_mask = self.preprocessor.tokenize(texts)
        batch = np.broadcast_to(pixels, (len(texts), *pixels.shape))
        outputs = self.logits(batch, input_ids, attention_mask)
        logits = outputs["logits"]
        if logits.ndim == 3:
            logits = logits[:, None]
        if logits.ndim != 4 or logits.shape[1] != 1 or logits.shape[0] != len(texts):
            raise OnnxModelError(f"{self.folder / ONNX_FILE}: 'logits' has shape {logits.shape}, not (B, 1, h, w)")
        if not np.isfinite(logits).all():
            raise ValueError(
                "the model's mask logits hold non-finite values (NaN or inf): its weights are probably corrupt"
            )
        no_target = outputs.get("no_target_logits")
        results = []
        for index in range(len(texts)):
            flagged = no_target is not None and float(np.asarray(no_target).reshape(-1)[index]) > 0
            mask, score = logits_to_mask(logits[index, 0], height, width, threshold, flagged)
            result = {"mask": PIL.Image.fromarray(mask.astype(np.uint8) * 255), "score": score}
            if no_target is not None:
                result["no_target"] = flagged
            results.append(result)
        return results[0] if single else results


__all__ = [
    "ONNX_FILE",
    "OnnxModelError",
    "OnnxPreprocessor",
    "OnnxReferringSegmenter",
    "logits_to_mask",
    "make_session",
]
