"""Image processors for METRIS: images → `pixel_values`, masks → `labels`, mask logits → boolean masks.

`MetrisImageProcessor` (torchvision) and `MetrisImageProcessorPil` read inputs with the backends' own `process_image`
(PIL modes converted to RGB, transparency on white; arrays H×W or with 1, 3 or 4 channels) and follow transformers'
value convention: uint8 as is, floats as given (a [0, 1] image wants `do_rescale=False`), nothing quantised to uint8.
METRIS-specific (`MetrisImageProcessingMixin`): the paper's recipe (appendix A, as LAVT: 480×480 without keeping the
aspect ratio, rescale, ImageNet mean/std; a PIL image ≥ 6× that size box-reduced first); local paths only; empty,
non-finite and beyond-8-bit images refused by index; `segmentation_maps` → binary `labels` (nearest resize, the
evaluation protocol's ground truth); `post_process_referring_segmentation` (stride-4 logits → a mask at the original
size).
"""

from __future__ import annotations

import math
import os
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
    infer_channel_dimension_format,
)
from transformers.utils import TensorType, is_torchvision_available

from .image_io import (
    check_eight_bit,
    check_finite,
    check_image_size,
    load_local_image,
    logit_cut,
    reduce_for,
    to_rgb,
)

if is_torchvision_available():
    from torchvision.transforms.v2 import functional as tvF

# Elements of the upsampled logits scored at once: bounds the scratch memory for huge images (16 MB).
_SCORE_CHUNK_ELEMENTS = 1 << 22
# The largest mask `post_process_referring_segmentation` makes (2^28 pixels, e.g. 16384×16384: a 256 MB boolean
# mask): past PIL's own decompression-bomb limit (2 × 89,478,485 pixels), so no image PIL opens is refused.
MAX_TARGET_PIXELS = 1 << 28


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


def image_layout(image: np.ndarray | torch.Tensor) -> ChannelDimension:
    """transformers' channel-axis rule (C ∈ {1, 3, 4}; channels-first if both axes could be), except that a NumPy
    array is H×W×C, PIL's layout, whenever it can be. The pipeline reports mask sizes by it."""
    if image.ndim == 2:
        return ChannelDimension.FIRST
    if isinstance(image, np.ndarray) and image.shape[-1] in (1, 3, 4):
        return ChannelDimension.LAST
    return infer_channel_dimension_format(image, (1, 3, 4))


class MetrisImageProcessingMixin:
    """METRIS-specific steps and defaults common to both backends (here, so the two cannot drift apart)."""

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

    def preprocess(self, images: Any, segmentation_maps: Any = None, **kwargs: Any) -> BatchFeature:
        """Images (and optional ground-truth masks, one per image) → `pixel_values` (and `labels`)."""
        return super().preprocess(images, segmentation_maps, **kwargs)

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """Local paths → PIL images; URLs are refused (see `image_io.open_local_image`)."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return load_local_image(image_url_or_urls)
        return image_url_or_urls

    def process_image(
        self, image: Any, do_convert_rgb: bool | None = None, reduce_to: tuple[int, int] | None = None, **kwargs: Any
    ) -> Any:
        if isinstance(image, PIL.Image.Image):
            image = reduce_for(image, reduce_to, convert=to_rgb) if do_convert_rgb else image
            if image.mode == "RGB":  # as is: the backend would first copy it through PIL's convert("RGB")
                image, kwargs["input_data_format"] = np.array(image), ChannelDimension.LAST
        elif not isinstance(image, (np.ndarray, torch.Tensor)):
            raise ValueError(f"unsupported image type {type(image).__name__}: expected a PIL image, array or path")
        elif image.is_complex() if isinstance(image, torch.Tensor) else image.dtype.kind not in "biuf":
            raise ValueError(f"unsupported image dtype {image.dtype}")
        elif image.ndim not in (2, 3):
            raise ValueError(f"an image must have 2 or 3 dimensions, got shape {tuple(image.shape)}")
        elif image.ndim == 2:  # grey H×W: PilBackend would convert it to RGB before it adds the channel axis
            image, kwargs["input_data_format"] = image[None], ChannelDimension.FIRST
        elif kwargs.get("input_data_format") is None:
            kwargs["input_data_format"] = image_layout(image)
        if isinstance(image, np.ndarray):  # torch.from_numpy refuses negative strides (a flipped view)
            image = np.ascontiguousarray(image)
        return super().process_image(image, do_convert_rgb=do_convert_rgb, **kwargs)

    def _prepare_image_like_inputs(self, images: Any, *args: Any, what: str = "image", **kwargs: Any) -> list[Any]:
        """Flat list of images → backend format (C×H×W), each checked once; errors name the image's index."""
        prepared = []
        for index, image in enumerate(make_list(images, f"{what}s")):
            try:
                image = self.fetch_images(image)
                if what == "image":  # masks are binarised (> 0): label values above 255 are fine there
                    check_eight_bit(image)
                image = self.process_image(image, *args, **kwargs)
                check_image_size(*image.shape[-2:], what=what)
                check_finite(image, what=what)
            except (ValueError, TypeError) as error:  # the backends raise TypeError for unusable dtypes
                raise ValueError(f"{what} {index}: {error}") from error
            prepared.append(image)
        return prepared

    def _preprocess_image_like_inputs(
        self,
        images: Any,
        segmentation_maps: Any = None,
        return_tensors: str | TensorType | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Images → `pixel_values`; masks (one per image) → binary `labels`, resized with nearest neighbour."""
        size = kwargs["size"]
        reduce_to = (size.height, size.width) if kwargs["do_resize"] and size.height and size.width else None
        prepare = {"input_data_format": kwargs.pop("input_data_format"), "device": device}
        do_convert_rgb = kwargs.pop("do_convert_rgb")
        images = self._prepare_image_like_inputs(images, do_convert_rgb=do_convert_rgb, reduce_to=reduce_to, **prepare)
        data = {"pixel_values": self._preprocess(images, return_tensors=None, **kwargs)["pixel_values"]}
        if segmentation_maps is not None:
            masks = self._prepare_image_like_inputs(segmentation_maps, what="segmentation map", device=device)
            if len(masks) != len(images):
                raise ValueError(f"got {len(images)} images but {len(masks)} segmentation maps")
            mask_kwargs = dict(kwargs, do_rescale=False, do_normalize=False, resample=self._mask_resample)
            # foreground: > 0 (bool, 0/1, 0/255, palette index), > 0.5 for floats (soft masks), in any channel
            masks = [self._cast((m > (0.5 if "float" in str(m.dtype) else 0)).any(0)[None], "uint8") for m in masks]
            masks = self._preprocess(masks, return_tensors=None, **mask_kwargs)["pixel_values"]
            data["labels"] = [self._cast(mask[0], "int64") for mask in masks]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_referring_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        threshold: float = 0.5,
        return_scores: bool = False,
    ) -> list[torch.Tensor] | list[dict[str, Any]]:
        """Mask logits (B, 1, h, w) → one boolean mask (H, W) per example at `target_sizes[i]`.

        Bilinear on the logits (`align_corners=True`), then the threshold: the way the loss reads them in training,
        with a sub-pixel boundary (thresholding first would give stride-4 staircases; interpolating probabilities
        would move the contour, the sigmoid not being linear).

        Args:
            outputs: the model output (or a dict) with `logits` (B, 1, h, w) and optionally `no_target_logits` (B,):
                where it is > 0 the model says nothing is referred and the mask is all False.
            target_sizes: (height, width) per example (pairs or a (B, 2) tensor); `None` = the processor's `size`,
                the resolution of `pixel_values` and `labels`, at which the paper's protocol evaluates.
            threshold: probability above which a pixel is foreground.
            return_scores: also return each mask's score: the mean probability inside the mask, or the highest one
                when it is empty (how close the model came to finding something).

        Returns: boolean tensors (H, W) on the logits' device; with `return_scores`, `{"mask", "score"}` dicts.
        """
        logits = outputs["logits"]
        if logits.ndim == 3:
            logits = logits.unsqueeze(1)
        if logits.ndim != 4 or logits.shape[1] != 1:
            raise ValueError(f"expected mask logits of shape (B, 1, h, w), got {tuple(logits.shape)}")
        finite = torch.isfinite(logits).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(
                f"the model's mask logits hold non-finite values (NaN or inf) for example(s) {bad}: no mask can be "
                "read from them. Its weights are probably corrupt, or the input overflowed its dtype"
            )
        no_target = outputs.get("no_target_logits")
        sizes, cut = self._target_sizes(target_sizes, logits.shape[0]), logit_cut(threshold)
        results: list[Any] = []
        for index, (height, width) in enumerate(sizes):
            empty = no_target is not None and float(no_target.reshape(-1)[index]) > 0
            mask, score = _mask_and_score(logits[index : index + 1].float(), height, width, cut, empty)
            results.append({"mask": mask, "score": score} if return_scores else mask)
        return results

    def _target_sizes(self, target_sizes: Any, batch: int) -> list[tuple[int, int]]:
        if target_sizes is None:
            if not (self.size.get("height") and self.size.get("width")):
                raise ValueError("target_sizes is required when the processor's size is not a fixed height×width")
            target_sizes = [(self.size["height"], self.size["width"])] * batch
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


def _mask_and_score(
    field: torch.Tensor, height: int, width: int, cut: float, empty: bool
) -> tuple[torch.Tensor, float]:
    """One (1, 1, h, w) logit field → its mask at height×width and score (mean probability inside, or the highest one
    if empty). Bilinear (align_corners=True) is separable: upsampled along the width (h × width floats), then a band
    of rows at a time, so memory is the mask plus 16 MB, not a float32 field (576 MB at 12000²). A target smaller
    than h×w (a tiny image) is resized whole, antialiased, to average the logits it covers."""
    rows_in = field.shape[-2]
    if height < rows_in or width < field.shape[-1]:
        field = F.interpolate(field, size=(height, width), mode="bilinear", align_corners=True, antialias=True)
        rows_in = height
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


class MetrisImageProcessor(MetrisImageProcessingMixin, TorchvisionBackend):
    """METRIS image processor, torchvision backend (the default): batched resizing, optionally on a GPU."""

    @property
    def _mask_resample(self) -> Any:
        # torchvision's NEAREST is the legacy floor rule; NEAREST_EXACT samples pixel centres, as PIL's NEAREST does
        return tvF.InterpolationMode.NEAREST_EXACT

    @staticmethod
    def _cast(mask: torch.Tensor, dtype: str) -> torch.Tensor:
        return mask.to(getattr(torch, dtype))


class MetrisImageProcessorPil(MetrisImageProcessingMixin, PilBackend):
    """METRIS image processor, PIL/NumPy backend: the same steps without torchvision (PIL does the resizing)."""

    @staticmethod
    def _cast(mask: np.ndarray, dtype: str) -> np.ndarray:
        return mask.astype(dtype)


__all__ = [
    "MetrisImageProcessingMixin",
    "MetrisImageProcessor",
    "MetrisImageProcessorPil",
    "image_layout",
    "make_list",
]
