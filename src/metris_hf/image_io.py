"""Opening local image files, the checks of images, expressions and thresholds, with Pillow alone: shared by the
image processor (so the pipeline, `metris-segment` and the app) and by the torch-free `onnx_runtime`, so that both
refuse the same input with the same messages. Imports neither torch nor transformers."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

_EXIF_ORIENTATION = 0x0112
# The largest side an image processor may resize to: 4096² is 36× the paper's 480² input (a 10⁶ side would ask the
# backbone for terabytes).
MAX_INPUT_SIDE = 4096


def open_local_image(
    path: str | os.PathLike, draft_to: tuple[int, int] | None = None
) -> tuple[PIL.Image.Image, tuple[int, int]]:
    """A local image file with its EXIF orientation applied, and the (height, width) it has once oriented.

    URLs are refused: nothing here touches the network, so a model folder can be used offline and a service
    built on it cannot be made to fetch arbitrary addresses.

    With `draft_to` (width, height), a JPEG is decoded at the smallest of 1/1 … 1/8 of its size that still covers
    it (PIL's `draft`, done by the JPEG decoder itself): a 12000×12000 photo needed at 1440×1440 costs 6.75 MB
    instead of 432 MB. A file past PIL's decompression-bomb limit is a ValueError naming it and the limit.
    """
    text = os.fspath(path)
    if text.lower().startswith(("http://", "https://")):
        raise ValueError(f"Images given by URL are not supported (got {text!r}); download the file and pass its path.")
    if not os.path.isfile(text):
        raise ValueError(f"Image path {text!r} is not an existing file.")
    try:
        image = PIL.Image.open(text)
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # turned by a quarter: the sides swap
            width, height = height, width
        if draft_to is not None and image.format == "JPEG" and image.mode in ("RGB", "L"):
            image.draft(image.mode, draft_to)
        image.load()  # reads the pixels and closes the file (single-frame images)
        PIL.ImageOps.exif_transpose(image, in_place=True)  # no copy of the photo
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(
            f"Image {text!r} is too large: {error} (PIL's decompression-bomb limit is 2 × PIL.Image.MAX_IMAGE_PIXELS "
            f"= {2 * PIL.Image.MAX_IMAGE_PIXELS:,} pixels; raise PIL.Image.MAX_IMAGE_PIXELS for files you trust)"
        ) from error
    except (OSError, SyntaxError) as error:  # PIL signals undecodable files with these
        raise ValueError(f"Could not read an image from {text!r}: {error}") from error
    return image, (height, width)


def load_local_image(path: str | os.PathLike) -> PIL.Image.Image:
    """`open_local_image` without the size: the file decoded at full scale, oriented as a viewer shows it."""
    return open_local_image(path)[0]


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """A PIL image → RGB, transparent pixels on white, as transformers' `convert_to_rgb` does (for `onnx_runtime`,
    which cannot import it); a mode PIL cannot convert is PIL's ValueError naming it."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def reduce_for(
    image: PIL.Image.Image,
    target: tuple[int, int] | None,
    convert: Callable[[PIL.Image.Image], PIL.Image.Image] | None = None,
) -> PIL.Image.Image:
    """An image at least 6× `target` (height, width) on both sides, shrunk by an integer factor with PIL's box
    filter so that it stays ≥ 3× the target: the first step of `Image.resize(reducing_gap=3)`; else the image.
    A 10000² photo then costs no float copy at full size. `convert` is applied first, only to images reduced."""
    if target is not None:
        factor = min(image.height // (3 * target[0]), image.width // (3 * target[1]))
        if factor >= 2:
            return (convert(image) if convert else image).reduce(factor)
    return image


def check_image_size(height: int, width: int, what: str = "image") -> None:
    if height == 0 or width == 0:
        raise ValueError(f"the {what} has zero size ({width}×{height})")


def check_finite(values: Any, what: str = "image") -> None:
    """NaN or inf in a float NumPy array or torch tensor (duck-typed: torch is not imported) is a ValueError; two
    reductions, no copy (NaN propagates through min and max and fails both comparisons)."""
    if "float" in str(values.dtype) and not (bool(values.min() > -math.inf) and bool(values.max() < math.inf)):
        raise ValueError(f"the {what} contains NaN or infinite values")


def check_eight_bit(image: Any, what: str = "image") -> None:
    """Integer pixels above 255 (a 16-bit scan, PIL's "I;16" / "I" modes, a uint16 array) are a ValueError naming
    the largest: converting to RGB clips them to white, and a backend would read them as out-of-range intensities,
    either way a mask of a picture the user never gave. Floats follow transformers' convention (taken as given)."""
    if isinstance(image, PIL.Image.Image):
        if image.mode != "I" and not image.mode.startswith("I;16"):
            return
        image = np.asarray(image)
    dtype = getattr(image, "dtype", None)  # integers wider than 8 bits only; the rest is left to the processor
    if isinstance(dtype, np.dtype):
        wide = dtype.kind in "iu" and dtype.itemsize > 1
    else:  # a torch dtype (torch is not imported here)
        wide = "int" in str(dtype) and not str(dtype).endswith("uint8")
    if not wide or 0 in tuple(image.shape):
        return
    largest = int(image.max())
    if largest > 255:
        raise ValueError(
            f"the {what} has pixel values up to {largest}, beyond 8 bits (0 … 255): a 16-bit image would come out "
            "white; scale it to 0 … 255 first"
        )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_image_settings(settings: Mapping[str, Any], where: str) -> None:
    """A ValueError naming the field (`where` + `.size`, `.image_std`, ...) when an image processor's settings would
    make wrong pixels or a terabyte allocation rather than an error: the input size whole, 1 … `MAX_INPUT_SIDE` a
    side; `image_mean`, `image_std` (> 0) one or three finite numbers; `rescale_factor` in (0, 1]. Checked once,
    when a pipeline or the torch-free `onnx_runtime` is built from a checkpoint's files."""
    if settings.get("do_resize", True):
        size = settings.get("size")
        for name in ("height", "width"):
            value = size.get(name) if hasattr(size, "get") else None  # a dict, or the processor's SizeDict
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INPUT_SIDE:
                raise ValueError(
                    f"{where}.size[{name!r}] is {value!r}; a whole number of pixels in 1 … {MAX_INPUT_SIDE} is needed"
                )
    for name, positive in (("image_mean", False), ("image_std", True)) if settings.get("do_normalize", True) else ():
        values = settings.get(name)
        listed = list(values) if isinstance(values, (list, tuple)) else [values]
        if len(listed) not in (1, 3) or not all(_finite(v) and (v > 0 or not positive) for v in listed):
            needed = " (and > 0: the pixels are divided by it)" if positive else ""
            raise ValueError(f"{where}.{name} is {values!r}; one or three finite numbers are needed{needed}")
    factor = settings.get("rescale_factor")
    if settings.get("do_rescale", True) and not (_finite(factor) and 0 < factor <= 1):
        raise ValueError(
            f"{where}.rescale_factor is {factor!r}; it must lie in (0, 1] (1/255 maps uint8 pixels to [0, 1])"
        )


def check_expression(text: Any, where: str) -> str:
    """One referring expression: a string with something in it, else a ValueError starting with `where`."""
    if not isinstance(text, str):
        raise ValueError(f"{where}: the expression must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{where}: the expression is empty or whitespace-only")
    return text


def check_expressions(text: Any) -> list[str]:
    """A string or a non-empty list of them → the list; each item checked by `check_expression`, named by index."""
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)) or not texts:
        kind = "an empty list" if isinstance(texts, (list, tuple)) else type(text).__name__
        raise ValueError(f"text must be a string or a non-empty list of strings, got {kind}")
    return [check_expression(item, f"expression {index}") for index, item in enumerate(texts)]


def check_threshold(threshold: Any) -> float:
    """A probability threshold: a real number in [0, 1] (not a string, bool or NaN), else a ValueError."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number in [0, 1], got {type(threshold).__name__} {threshold!r}")
    if not 0.0 <= threshold <= 1.0:  # also refuses NaN
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    return float(threshold)


def logit_cut(threshold: Any) -> float:
    """`sigmoid(x) > threshold` tested as `x > logit(threshold)` (±inf at 0 and 1): no full-size probability map."""
    probability = check_threshold(threshold)
    if probability in (0.0, 1.0):
        return math.inf if probability else -math.inf
    return math.log(probability / (1.0 - probability))


__all__ = [
    "check_eight_bit",
    "check_expression",
    "check_expressions",
    "check_finite",
    "check_image_settings",
    "check_image_size",
    "check_threshold",
    "load_local_image",
    "logit_cut",
    "open_local_image",
    "reduce_for",
    "to_rgb",
]
