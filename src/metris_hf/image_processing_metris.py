"""Image processors for METRIS: images → `pixel_values`, masks → `labels`, mask logits → boolean masks.

Two backends, as every transformers v5 model ships them: `MetrisImageProcessor` (torchvision, the default,
batched and device-aware) and `MetrisImageProcessorPil` (PIL/NumPy, what `AutoImageProcessor` falls back to
without torchvision). What is METRIS-specific lives in `MetrisImageProcessingMixin`, so both backends share it:

- every input becomes an RGB uint8 image first (`to_rgb_uint8`), whatever arrives: any PIL mode (palette,
  alpha, CMYK, 16-bit), NumPy arrays (H×W, H×W×C) and tensors (C×H×W), uint8, 16-bit or float. The same
  picture therefore gives the same `pixel_values` whichever container it came in. `do_convert_rgb=False`
  keeps the channels the image came with (uint8 all the same), as in every transformers image processor;
- then the paper's recipe (appendix A, as LAVT): resize to 480×480 without keeping the aspect ratio,
  rescale to [0, 1], normalise with the ImageNet mean/std;
- `segmentation_maps` are binarised and resized with nearest neighbour into `labels` (B, S, S) 0/1 int64,
  the ground truth of the evaluation protocol (predictions at 480×480 against the nearest-resized mask);
- `post_process_referring_segmentation` turns stride-4 mask logits into one boolean mask per example at the
  size of the original image.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
)
from transformers.utils import TensorType, is_torchvision_available

from .image_io import load_local_image, reduce_for, to_rgb

if is_torchvision_available():
    from torchvision.transforms.v2 import functional as tvF

# Elements of the upsampled logits scored at once: bounds the scratch memory for huge images (16 MB).
_SCORE_CHUNK_ELEMENTS = 1 << 22
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# The largest mask `post_process_referring_segmentation` makes (2^28 pixels, e.g. 16384×16384: a 256 MB boolean
# mask): past PIL's own decompression-bomb limit (2 × 89,478,485 pixels), so no image PIL opens is refused.
MAX_TARGET_PIXELS = 1 << 28


# ----------------------------------------------------------------------------------------------------------------
# Input normalisation shared by both backends
# ----------------------------------------------------------------------------------------------------------------


def _pil_to_array(
    image: PIL.Image.Image, reduce_to: tuple[int, int] | None = None, convert_rgb: bool = True
) -> np.ndarray:
    """PIL image → H×W×3 uint8 RGB (or, for 16-bit / 32-bit / float modes, the raw H×W array for `to_rgb_uint8`).

    With `convert_rgb=False` the image keeps its own bands (H×W for "L", H×W×4 for "RGBA", ...); only a palette
    image is expanded through its palette, its values being indices rather than intensities.

    With `reduce_to` (the resize target), an image at least 6× larger on both sides is first shrunk by an
    integer factor with PIL's box filter, keeping it ≥ 3× the target: the two-step resize of PIL's own
    `Image.resize(reducing_gap=3)`. A 10000×10000 photo then costs no memory beyond itself (the direct path
    holds ~1 GB of copies); the result differs from a direct resize by < 0.5 grey level on average.
    """
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image has zero size ({image.width}×{image.height})")
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.uint16)  # native byte order; read as 16-bit by dtype
    if image.mode in ("I", "F"):
        # PIL's own convert("RGB") clips these at 255, which turns a 16-bit scan white: scale them instead.
        return np.asarray(image)
    if not convert_rgb:
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
        return np.asarray(reduce_for(image, reduce_to))
    return np.asarray(reduce_for(to_rgb(image), reduce_to))


def _to_uint8(values: torch.Tensor, sixteen_bit: bool) -> torch.Tensor:
    """Any numeric tensor → uint8 in [0, 255], by these rules (documented in `to_rgb_uint8`)."""
    if values.dtype == torch.uint8:
        return values
    if values.dtype == torch.bool:
        return values.to(torch.uint8) * 255
    if values.is_complex():
        raise ValueError(f"unsupported image dtype {values.dtype}")
    if values.is_floating_point():
        values = values.float()
        if not bool(torch.isfinite(values).all()):
            raise ValueError("the image contains NaN or infinite values")
        if values.min() >= 0 and values.max() <= 1:
            values = values * 255
        return values.clamp_(0, 255).round_().to(torch.uint8)
    values = values.to(torch.int64) if values.dtype != torch.int32 else values
    if sixteen_bit or values.min() < 0 or values.max() > 255:
        # 16-bit data (uint16, PIL "I;16", or an integer image with values above 255): 65535 → 255.
        return ((values.clamp(0, 65535) * 255 + 32767) // 65535).to(torch.uint8)
    return values.to(torch.uint8)


def _composite_on_white(color: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Blends C×H×W uint8 colour over white with a 1×H×W uint8 alpha (skipped when fully opaque)."""
    if bool((alpha == 255).all()):
        return color
    weight = alpha.float() / 255
    blended = color.float() * weight + 255 * (1 - weight)
    return blended.round_().to(torch.uint8)


def to_rgb_uint8(
    image: Any,
    input_data_format: str | ChannelDimension | None = None,
    reduce_to: tuple[int, int] | None = None,
    convert_rgb: bool = True,
) -> torch.Tensor:
    """One image, as anything users hold, → a 3×H×W uint8 RGB tensor (on the input tensor's device).

    Accepted: a `PIL.Image` of any mode PIL can convert (transparency composited on white; 16-bit "I;16"
    scaled 65535 → 255; "I"/"F" by the value rules below); a NumPy array H×W or H×W×C; a torch tensor C×H×W
    or H×W; C ∈ {1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA)}. NumPy arrays are read channels-last and
    tensors channels-first (the conventions of PIL and torchvision); the other layout is recognised when it is
    the only possible reading, and `input_data_format` settles any doubt. `reduce_to`: see `_pil_to_array`.
    Values: uint8 as is; bool ×255; uint16 as 16-bit; other integers as 8-bit if within [0, 255], else as
    16-bit; floats as [0, 1] if they all lie there, else as [0, 255] (clipped). Quantising every input to
    uint8 is what makes both backends and all containers agree.

    `convert_rgb=False` (the image processors' `do_convert_rgb=False`) stops after the value rules: the image
    keeps the channels it came with (C×H×W uint8, alpha not composited), as transformers' processors do.
    """
    sixteen_bit = False
    from_numpy = True
    if isinstance(image, PIL.Image.Image):
        image = _pil_to_array(image, reduce_to, convert_rgb)
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16 or image.dtype == np.dtype(">u2"):
            sixteen_bit = True
            image = image.astype(np.int32)
        elif image.dtype.kind not in "biuf":
            raise ValueError(f"unsupported image dtype {image.dtype}")
        elif not image.dtype.isnative:
            image = image.astype(image.dtype.newbyteorder("="))
        if any(stride < 0 for stride in image.strides):
            image = image.copy()
        with warnings.catch_warnings():  # read-only arrays (np.asarray of a PIL image): the tensor is only read
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(image)
    elif isinstance(image, torch.Tensor):
        from_numpy = False
        tensor = image.detach()
        if tensor.dtype == torch.uint16:
            sixteen_bit = True
            tensor = tensor.to(torch.int32)
    else:
        raise ValueError(
            f"unsupported image type {type(image).__name__}: expected a PIL image, a NumPy array, a torch tensor "
            "or a local path"
        )

    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 3:
        layout = ChannelDimension(input_data_format) if input_data_format is not None else None
        if layout is None:
            first, last = tensor.shape[0] in (1, 2, 3, 4), tensor.shape[-1] in (1, 2, 3, 4)
            if from_numpy:
                layout = ChannelDimension.LAST if last else ChannelDimension.FIRST if first else None
            else:
                layout = ChannelDimension.FIRST if first else ChannelDimension.LAST if last else None
            if layout is None:
                raise ValueError(f"cannot find the channel axis of an image of shape {tuple(tensor.shape)}")
        if layout == ChannelDimension.LAST:
            tensor = tensor.permute(2, 0, 1)
    else:
        raise ValueError(f"an image must have 2 or 3 dimensions, got shape {tuple(tensor.shape)}")

    channels, height, width = tensor.shape
    if height == 0 or width == 0:
        raise ValueError(f"the image has zero size ({width}×{height})")
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"unsupported number of channels {channels} (expected 1, 2, 3 or 4)")
    tensor = _to_uint8(tensor, sixteen_bit)
    if not convert_rgb:
        return tensor
    if channels == 2:
        tensor = _composite_on_white(tensor[:1], tensor[1:])
    elif channels == 4:
        tensor = _composite_on_white(tensor[:3], tensor[3:])
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor


def to_binary_mask(mask: Any) -> torch.Tensor:
    """One ground-truth mask → a 1×H×W uint8 0/1 tensor.

    Foreground is: True for bool; > 0 for integers (so 0/1, 0/255 and palette masks with background index 0 all
    work); > 0.5 for floats (soft masks). A multi-channel mask (e.g. an RGB drawing) is foreground where any
    channel is.
    """
    if isinstance(mask, (str, os.PathLike)):
        mask = load_local_image(mask)
    if isinstance(mask, PIL.Image.Image):
        if mask.width == 0 or mask.height == 0:
            raise ValueError(f"the mask has zero size ({mask.width}×{mask.height})")
        mask = np.asarray(mask)
    if isinstance(mask, np.ndarray):
        if mask.dtype.kind not in "biuf":
            raise ValueError(f"unsupported mask dtype {mask.dtype}")
        mask = torch.from_numpy(mask.astype(mask.dtype.newbyteorder("="), copy=False).copy())
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"unsupported mask type {type(mask).__name__}: expected a PIL image, NumPy array or tensor")
    mask = mask.detach()
    if mask.ndim == 3:
        if mask.shape[0] in (1, 3, 4) and mask.shape[-1] not in (1, 3, 4):
            mask = mask.permute(1, 2, 0)
        foreground = _foreground(mask).any(dim=-1)
    elif mask.ndim == 2:
        foreground = _foreground(mask)
    else:
        raise ValueError(f"a mask must be H×W (or H×W×C), got shape {tuple(mask.shape)}")
    if foreground.numel() == 0:
        raise ValueError(f"the mask has zero size {tuple(foreground.shape)}")
    return foreground.to(torch.uint8).unsqueeze(0)


def _foreground(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        return mask > 0.5
    return mask > 0


def make_list(inputs: Any, what: str = "images") -> list[Any]:
    """A single image / mask, a list of them, a 4-D batch, or per-sample lists (`[[image], [image]]`, the layout
    multimodal processors pass) → a flat list, one entry per example."""
    if isinstance(inputs, (list, tuple)):
        flat = [item for entry in inputs for item in (entry if isinstance(entry, (list, tuple)) else [entry])]
        if len(flat) == 0:
            raise ValueError(f"no {what} given (empty list)")
        return flat
    if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
        return list(inputs)
    return [inputs]


def check_threshold(threshold: Any) -> float:
    """A probability threshold: a real number in [0, 1] (not a string, bool or NaN), else a ValueError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number in [0, 1], got {type(threshold).__name__} {threshold!r}")
    if not 0.0 <= threshold <= 1.0:  # also refuses NaN
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    return float(threshold)


def _logit(probability: float) -> float:
    probability = check_threshold(probability)
    if probability == 0.0:
        return -math.inf
    if probability == 1.0:
        return math.inf
    return math.log(probability / (1.0 - probability))


# ----------------------------------------------------------------------------------------------------------------
# The mixin: what both backends share
# ----------------------------------------------------------------------------------------------------------------


class MetrisImageProcessingMixin:
    """METRIS-specific steps and defaults common to `MetrisImageProcessor` and `MetrisImageProcessorPil`.

    The defaults live here, not on each backend class, so the two cannot drift apart.
    """

    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 480, "width": 480}  # the paper's input (appendix A); any multiple of 32 works
    default_to_square = True
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_center_crop = None
    crop_size = None
    _mask_resample: Any = PILImageResampling.NEAREST  # ground truth: nearest neighbour (the evaluation protocol)

    def _converts_rgb(self, do_convert_rgb: bool | None) -> bool:
        return bool(self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb)

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """Local paths → PIL images; URLs are refused (see `load_local_image`)."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return load_local_image(image_url_or_urls)
        return image_url_or_urls

    def _prepare_image_like_inputs(self, images: Any, *args: Any, expected_ndims: int = 3, **kwargs: Any) -> list[Any]:
        """Flat list of images → backend format, naming the offending image in any error."""
        prepared = []
        for index, image in enumerate(make_list(images, "images")):
            try:
                prepared.append(self.process_image(self.fetch_images(image), *args, **kwargs))
            except ValueError as error:
                raise ValueError(f"image {index}: {error}") from error
        return prepared

    def _prepare_masks(self, segmentation_maps: Any) -> list[torch.Tensor]:
        masks = []
        for index, mask in enumerate(make_list(segmentation_maps, "segmentation maps")):
            try:
                masks.append(to_binary_mask(mask))
            except ValueError as error:
                raise ValueError(f"segmentation map {index}: {error}") from error
        return masks

    def _preprocess_image_like_inputs(
        self,
        images: Any,
        segmentation_maps: Any = None,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors: str | TensorType | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Images → `pixel_values`; masks (one per image) → `labels`, resized with nearest neighbour."""
        process_kwargs: dict[str, Any] = {"input_data_format": input_data_format, "do_convert_rgb": do_convert_rgb}
        size = kwargs.get("size")
        if kwargs.get("do_resize") and size is not None and size.get("height") and size.get("width"):
            process_kwargs["reduce_to"] = (size["height"], size["width"])
        if device is not None:
            process_kwargs["device"] = device
        images = self._prepare_image_like_inputs(images, **process_kwargs)
        data = {"pixel_values": self._preprocess(images, return_tensors=None, **kwargs)["pixel_values"]}
        if segmentation_maps is not None:
            masks = [self._mask_to_backend(mask, device) for mask in self._prepare_masks(segmentation_maps)]
            if len(masks) != len(images):
                raise ValueError(f"got {len(images)} images but {len(masks)} segmentation maps")
            mask_kwargs = dict(kwargs, do_rescale=False, do_normalize=False, resample=self._mask_resample)
            resized = self._preprocess(masks, return_tensors=None, **mask_kwargs)["pixel_values"]
            data["labels"] = [self._mask_from_backend(mask) for mask in resized]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_referring_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        threshold: float = 0.5,
        return_scores: bool = False,
    ) -> list[torch.Tensor] | list[dict[str, Any]]:
        """Mask logits (B, 1, h, w) → one boolean mask (H, W) per example at `target_sizes[i]`.

        Why bilinear on the logits, then the threshold: the model is trained exactly so, its loss upsamples
        the stride-4 logits bilinearly (`align_corners=True`) to the label size before the BCE, so this reads
        its output the way it was taught. The logit field is smooth and the mask boundary is where the
        interpolated field crosses logit(threshold), a sub-pixel contour; thresholding first and resizing a
        binary mask would give stride-4 staircases instead, and interpolating probabilities would move that
        contour (the sigmoid is not linear). Thresholding `sigmoid(x) > t` is done as `x > logit(t)`: the same
        test, without a second full-size float map (a 10000×10000 image costs one float32 map and one bool mask).

        Args:
            outputs: the model output; needs `.logits` (B, 1, h, w) and optionally `.no_target_logits` (B,): where
                sigmoid(no_target_logits) > 0.5 the model says nothing is referred and the mask is all False.
            target_sizes: (height, width) per example, e.g. the original image sizes; a list of pairs or a
                (B, 2) tensor. `None` = the processor's `size` (480×480), the resolution of `pixel_values` and
                `labels`, at which the paper's protocol evaluates.
            threshold: probability above which a pixel is foreground.
            return_scores: also return each mask's score: the mean probability inside the mask, or the highest
                probability in the image when the mask is empty (how close the model came to finding something).

        Returns:
            a list of boolean tensors (H, W), on the logits' device; with `return_scores`, a list of
            `{"mask": tensor, "score": float}`.
        """
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if logits.ndim == 3:
            logits = logits.unsqueeze(1)
        if logits.ndim != 4 or logits.shape[1] != 1:
            raise ValueError(f"expected mask logits of shape (B, 1, h, w), got {tuple(logits.shape)}")
        finite = torch.isfinite(logits).flatten(1).all(dim=1)
        if not bool(finite.all()):
            raise ValueError(
                f"the model's mask logits hold non-finite values (NaN or inf) for example(s) "
                f"{torch.nonzero(~finite).flatten().tolist()}: no mask can be read from them. Its weights are "
                "probably corrupt (look for non-finite parameters), or the input overflowed its dtype"
            )
        no_target = outputs.get("no_target_logits") if hasattr(outputs, "get") else None
        if no_target is None:
            no_target = getattr(outputs, "no_target_logits", None)
        batch = logits.shape[0]
        sizes = self._target_sizes(target_sizes, batch)
        cut = _logit(threshold)

        results: list[Any] = []
        for index in range(batch):
            field = logits[index : index + 1].float()
            height, width = sizes[index]
            empty = no_target is not None and float(no_target.reshape(-1)[index]) > 0
            if height * width > _SCORE_CHUNK_ELEMENTS and height >= field.shape[-2] and width >= field.shape[-1]:
                mask, score = _large_mask(field, height, width, cut, empty)
                results.append({"mask": mask, "score": score} if return_scores else mask)
                continue
            # upsampling is bilinear with align_corners=True, as in training (and the authors' code); a target
            # smaller than h×w (a tiny image) is antialiased, so that it averages the logits it covers
            shrink = height < field.shape[-2] or width < field.shape[-1]
            field = F.interpolate(field, size=(height, width), mode="bilinear", align_corners=True, antialias=shrink)
            field = field[0, 0]
            mask = torch.zeros((height, width), dtype=torch.bool, device=field.device) if empty else field > cut
            if return_scores:
                results.append({"mask": mask, "score": _mask_score(field, mask)})
            else:
                results.append(mask)
            del field
        return results

    def _target_sizes(self, target_sizes: Any, batch: int) -> list[tuple[int, int]]:
        if target_sizes is None:
            size = self.size
            height, width = size["height"], size["width"]
            if not height or not width:
                raise ValueError("target_sizes is required when the processor's size is not a fixed height×width")
            return [(int(height), int(width))] * batch
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        if len(target_sizes) != batch:
            raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {batch}")
        sizes = []
        for size in target_sizes:
            height, width = (int(v) for v in size)
            if height <= 0 or width <= 0:
                raise ValueError(f"target sizes must be positive, got {tuple(size)}")
            if height * width > MAX_TARGET_PIXELS:
                raise ValueError(
                    f"target size {height}×{width} ({height * width:,} pixels) is past the limit of "
                    f"{MAX_TARGET_PIXELS:,} pixels per mask (MAX_TARGET_PIXELS, 2^28)"
                )
            sizes.append((height, width))
        return sizes


def _large_mask(field: torch.Tensor, height: int, width: int, cut: float, empty: bool) -> tuple[torch.Tensor, float]:
    """The mask and score of a large target, upsampled a band of rows at a time: bilinear with align_corners=True
    is separable, so the logits are first upsampled along the rows' width only (h × width floats), then each band
    of output rows blends its two source rows. Memory: the boolean mask (height × width bytes) plus 16 MB, where a
    whole float32 field would be 4 bytes per pixel more (576 MB for a 12000×12000 image)."""
    rows_in = field.shape[-2]
    wide = F.interpolate(field, size=(rows_in, width), mode="bilinear", align_corners=True)[0, 0]  # (h, width)
    scale = (rows_in - 1) / (height - 1) if height > 1 else 0.0
    mask = torch.zeros((height, width), dtype=torch.bool, device=field.device)
    band = max(1, _SCORE_CHUNK_ELEMENTS // width)
    total, count, best = 0.0, 0, -math.inf
    for start in range(0, height, band):
        source = torch.arange(start, min(start + band, height), device=field.device, dtype=torch.float32) * scale
        below = source.floor().long().clamp_(max=rows_in - 1)
        above = (below + 1).clamp_(max=rows_in - 1)
        weight = (source - below)[:, None]
        values = wide[below] * (1 - weight) + wide[above] * weight
        best = max(best, float(values.max()))
        if empty:
            continue
        inside = values > cut
        mask[start : start + inside.shape[0]] = inside
        count += int(torch.count_nonzero(inside))
        total += float(torch.sigmoid(values).mul_(inside).sum())
    score = total / count if count else float(torch.sigmoid(torch.tensor(best)))
    return mask, score


def _mask_score(field: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean sigmoid inside the mask, or the max if it is empty.

    Computed in chunks of rows, so a huge mask needs no second full-size float map; float32 chunk sums
    (pairwise-summed by torch) added up in Python keep it accurate and fast.
    """
    count = int(torch.count_nonzero(mask))
    if count == 0:
        return float(torch.sigmoid(field.max()))
    rows = max(1, _SCORE_CHUNK_ELEMENTS // field.shape[-1])
    total = 0.0
    for field_rows, mask_rows in zip(field.split(rows), mask.split(rows)):
        total += float(torch.sigmoid(field_rows).mul_(mask_rows).sum())
    return total / count


class MetrisImageProcessor(MetrisImageProcessingMixin, TorchvisionBackend):
    """METRIS image processor, torchvision backend (the default): batched resizing, optionally on a GPU.

    `processor(images, segmentation_maps=None, return_tensors="pt")` → `pixel_values` (B, 3, 480, 480) and,
    with masks, `labels` (B, 480, 480) int64 0/1. See the module docstring for the accepted inputs.
    """

    @property
    def _mask_resample(self) -> Any:
        # torchvision's NEAREST is the legacy floor rule; NEAREST_EXACT samples pixel centres, as PIL's NEAREST does
        return tvF.InterpolationMode.NEAREST_EXACT

    def preprocess(self, images: Any, segmentation_maps: Any = None, **kwargs: Any) -> BatchFeature:
        """Images (and optional ground-truth masks, one per image) → `pixel_values` (and `labels`)."""
        return super().preprocess(images, segmentation_maps, **kwargs)

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        device: str | torch.device | None = None,
        reduce_to: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One raw image → 3×H×W uint8 RGB tensor (the model's three input channels); with `do_convert_rgb=False`,
        C×H×W with the channels as given."""
        rgb = to_rgb_uint8(image, input_data_format, reduce_to, convert_rgb=self._converts_rgb(do_convert_rgb))
        return super().process_image(
            rgb, do_convert_rgb=False, input_data_format=ChannelDimension.FIRST, device=device
        )

    @staticmethod
    def _mask_to_backend(mask: torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
        return mask if device is None else mask.to(device)

    @staticmethod
    def _mask_from_backend(mask: torch.Tensor) -> torch.Tensor:
        return mask[0].to(torch.int64)


class MetrisImageProcessorPil(MetrisImageProcessingMixin, PilBackend):
    """METRIS image processor, PIL/NumPy backend: the same steps without torchvision (PIL does the resizing)."""

    def preprocess(self, images: Any, segmentation_maps: Any = None, **kwargs: Any) -> BatchFeature:
        """Images (and optional ground-truth masks, one per image) → `pixel_values` (and `labels`)."""
        return super().preprocess(images, segmentation_maps, **kwargs)

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        reduce_to: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """One raw image → 3×H×W uint8 RGB array; with `do_convert_rgb=False`, C×H×W with the channels as given."""
        rgb = to_rgb_uint8(image, input_data_format, reduce_to, convert_rgb=self._converts_rgb(do_convert_rgb))
        rgb = rgb.cpu().numpy()
        return super().process_image(rgb, do_convert_rgb=False, input_data_format=ChannelDimension.FIRST)

    @staticmethod
    def _mask_to_backend(mask: torch.Tensor, device: str | torch.device | None) -> np.ndarray:
        return mask.cpu().numpy()

    @staticmethod
    def _mask_from_backend(mask: np.ndarray) -> np.ndarray:
        return np.asarray(mask)[0].astype(np.int64)


__all__ = [
    "MetrisImageProcessingMixin",
    "MetrisImageProcessor",
    "MetrisImageProcessorPil",
    "load_local_image",
    "make_list",
    "to_binary_mask",
    "to_rgb_uint8",
]
