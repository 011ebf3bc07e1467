"""The `referring-image-segmentation` pipeline: (image, expression) → the mask of what the expression means.

    import metris_hf
    from transformers import pipeline
    segmenter = pipeline("referring-image-segmentation", model="path/to/checkpoint")
    segmenter(image, "the dog on the left")      # {"mask": PIL "L" image 0/255 at the image size, "score": float}
    segmenter(image, ["the dog", "the man"])     # one result per expression
    segmenter([{"image": ..., "text": ...}, ...], batch_size=8)

transformers has no such task, so it is registered here (`register_pipeline`, called on `import metris_hf`).
Model, processor, device and dtype are handled as by every transformers pipeline; batching does not change a
prediction, because every expression is padded to the processor's fixed `max_length`. On CPU the pipeline applies
`metris_hf.cpu_kernels.optimize_for_cpu_inference` to its model (in place: same weights, same results).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import AutoModel
from transformers.image_utils import get_image_size
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline
from transformers.utils import logging

from .cpu_kernels import optimize_for_cpu_inference
from .image_io import check_threshold, load_local_image, open_local_image, reduce_for
from .image_processing_metris import image_layout
from .processing_metris import check_processor_for_model, check_tokenizer_vocabulary

logger = logging.get_logger(__name__)

TASK = "referring-image-segmentation"
_IMAGE_TYPES = (PIL.Image.Image, np.ndarray, torch.Tensor, str, os.PathLike)


def _check_expression(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{where}: the expression must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{where}: the expression is empty or whitespace-only")
    return text


class ReferringImageSegmentationPipeline(Pipeline):
    """Segments the object a referring expression describes, with any METRIS checkpoint.

    Call with `(image, text)`, `(image, [texts])`, `([images], [texts])`, `{"image": ..., "text": ...}`, a
    list of such dicts, or a generator / dataset of them. Images: PIL, a local path (no URLs), a NumPy array
    (H×W or H×W×C) or a tensor (C×H×W); see `MetrisImageProcessor` for the modes and dtypes accepted.

    Each result is `{"mask": PIL.Image (mode "L", 0 or 255, the image's size), "score": float}`. The score is
    the mean probability inside the predicted mask (how sure the model is of what it segmented), or, when
    the mask is empty, the highest probability anywhere (how close it came to segmenting something).
    Parameters: `threshold` (default 0.5) on the pixel probability; `max_length` of the tokenised expression
    (default: the processor's).
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(f"the {TASK} pipeline needs the checkpoint's processor (MetrisProcessor)")
        text_config = getattr(self.model.config, "text_config", None)
        where = f"pipeline ({self.model.name_or_path})" if getattr(self.model, "name_or_path", "") else "pipeline"
        check_tokenizer_vocabulary(self.processor.tokenizer, where, getattr(text_config, "vocab_size", None))
        check_processor_for_model(self.processor, self.model.config, where)
        check_finite_weights(self.model)
        if self.device.type == "cpu":
            optimize_for_cpu_inference(self.model)  # CPU kernels for METRIS's own linears and GELUs, same weights

    def __call__(self, image: Any, text: str | list[str] | None = None, **kwargs: Any) -> Any:
        """Returns one result dict for one (image, expression), else a list of them (see the class docstring)."""
        if isinstance(image, dict):
            if text is not None:
                raise ValueError("give the expression inside the dict ({'image': ..., 'text': ...}), not beside it")
            return super().__call__(self._checked(image, "input"), **kwargs)
        if isinstance(image, (list, tuple)) and image and all(isinstance(item, dict) for item in image):
            if text is not None:
                raise ValueError(
                    "give the expressions inside the dicts ({'image': ..., 'text': ...}), not beside them"
                )
            examples = [self._checked(item, f"example {index}") for index, item in enumerate(image)]
            return super().__call__(examples, **kwargs)
        if isinstance(image, (list, tuple)) or (isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4):
            images = list(image)
            if not images:
                raise ValueError("no image given (empty list)")
            texts = [text] if isinstance(text, str) else text
            if not isinstance(texts, (list, tuple)):
                raise ValueError("give one expression (a string) per image")
            if len(images) == 1 and len(texts) > 1:
                images = images * len(texts)
            if len(images) != len(texts):
                raise ValueError(
                    f"got {len(images)} images and {len(texts)} expressions: give one expression per image"
                )
            examples = [
                self._checked({"image": i, "text": t}, f"example {n}") for n, (i, t) in enumerate(zip(images, texts))
            ]
            return super().__call__(examples, **kwargs)
        if isinstance(image, _IMAGE_TYPES):
            if text is None:
                raise ValueError("a referring expression is needed: pipe(image, 'the dog on the left')")
            if isinstance(text, str):
                return super().__call__(self._checked({"image": image, "text": text}, "input"), **kwargs)
            if not isinstance(text, (list, tuple)) or not text:
                raise ValueError("text must be a string or a non-empty list of strings")
            image, original = self._open(image, "input")  # read a path once, not once per expression
            examples = [
                {**self._checked({"image": image, "text": t}, f"expression {n}"), _ORIGINAL_SIZE: original}
                for n, t in enumerate(text)
            ]
            return super().__call__(examples, **kwargs)
        # generators and datasets of {"image", "text"} dicts stream through; each item is checked in preprocess
        return super().__call__(image, **kwargs)

    def _open(self, image: Any, where: str) -> tuple[Any, tuple[int, int] | None]:
        """A path → (the image decoded no larger than the model needs, reduced in uint8, and its own (H, W)); any
        other image → (itself, None). One image's peak memory is then its decoded uint8 bytes (a JPEG's much
        less, decoded at a reduced scale) plus a constant, whatever its size."""
        if not isinstance(image, (str, os.PathLike)):
            return self._load(image, where), None
        target = _model_size(self.processor)
        draft_to = None if target is None else (3 * target[1], 3 * target[0])
        try:
            opened, original = open_local_image(image, draft_to)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        return _reduced_early(opened, target), original

    @staticmethod
    def _load(image: Any, where: str, decode: bool = True) -> Any:
        """Checks an image; a path is read (or, with `decode=False`, only checked: a long list of paths is
        decoded one by one as the batches are built, not all up front)."""
        if isinstance(image, (str, os.PathLike)):
            try:
                if decode:
                    return load_local_image(image)
                text = os.fspath(image)
                if text.lower().startswith(("http://", "https://")) or not os.path.isfile(text):
                    load_local_image(text)  # raises the explanatory error
                return image
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from error
        if not isinstance(image, _IMAGE_TYPES):
            raise ValueError(
                f"{where}: unsupported image type {type(image).__name__} (a PIL image, NumPy array, tensor or "
                "local path is expected)"
            )
        shape = (image.height, image.width) if isinstance(image, PIL.Image.Image) else tuple(image.shape)
        if 0 in shape:
            raise ValueError(f"{where}: the image has zero size (shape {shape})")
        return image

    def _checked(self, example: dict[str, Any], where: str) -> dict[str, Any]:
        """Validates one example up front, so that a bad one in a batch is named before anything runs."""
        if "image" not in example or "text" not in example:
            raise ValueError(f"{where}: a dict input needs the keys 'image' and 'text', got {sorted(example)}")
        image = self._load(example["image"], where, decode=False)
        return {"image": image, "text": _check_expression(example["text"], where)}

    def _sanitize_parameters(
        self, threshold: float | None = None, max_length: int | None = None, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            logger.warning(f"{type(self).__name__} ignores the argument(s) {sorted(kwargs)}")
        preprocess_params: dict[str, Any] = {}
        postprocess_params: dict[str, Any] = {}
        if max_length is not None:
            preprocess_params["max_length"] = max_length
        if threshold is not None:
            postprocess_params["threshold"] = check_threshold(threshold)
        return preprocess_params, {}, postprocess_params

    def preprocess(self, inputs: dict[str, Any], max_length: int | None = None) -> dict[str, torch.Tensor]:
        if not isinstance(inputs, dict) or "image" not in inputs or "text" not in inputs:
            raise ValueError(f"each input must be a dict with 'image' and 'text', got {type(inputs).__name__}")
        image, original = self._open(inputs["image"], "input")
        original = inputs.get(_ORIGINAL_SIZE) or original
        text = _check_expression(inputs["text"], "input")
        if isinstance(image, PIL.Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"input: the image has zero size ({image.width}×{image.height})")
            original = original or (image.height, image.width)
            image = _reduced_early(image, _model_size(self.processor))
        else:
            try:  # arrays and tensors: the size the image processor reads
                original = get_image_size(image, image_layout(image))
            except ValueError as error:
                raise ValueError(f"input: {error}") from error
        text_kwargs = {} if max_length is None else {"max_length": max_length}
        encoded = self.processor(images=image, text=text, return_tensors="pt", **text_kwargs)
        model_inputs = {key: encoded[key] for key in ("pixel_values", "input_ids", "attention_mask")}
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)
        model_inputs["target_size"] = torch.tensor([original], dtype=torch.long)
        return model_inputs

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        target_size = model_inputs.pop("target_size")
        outputs = self.model(**model_inputs)
        result = {"target_size": target_size, "logits": outputs.logits}
        if getattr(outputs, "no_target_logits", None) is not None:
            result["no_target_logits"] = outputs.no_target_logits
        return result

    def postprocess(self, model_outputs: dict[str, torch.Tensor], threshold: float = 0.5) -> dict[str, Any]:
        (result,) = self.processor.post_process_referring_segmentation(
            model_outputs, target_sizes=model_outputs["target_size"], threshold=threshold, return_scores=True
        )
        # 0/1 → 0/255 in place on the mask's own bytes (a bool is a byte): the H×W mask is the only copy made
        values = result.pop("mask").cpu().contiguous().view(torch.uint8).mul_(255)
        mask = PIL.Image.fromarray(values.numpy())  # mode "L", 0/255
        return {"mask": mask, "score": result["score"]}


_ORIGINAL_SIZE = "_original_size"  # (H, W) of an image decoded at a reduced scale, carried to the mask's size
_REDUCIBLE_MODES = ("L", "RGB", "RGBA", "LA", "I", "F", "I;16")


def _model_size(processor: Any) -> tuple[int, int] | None:
    """(height, width) the image processor resizes to, or None when it does not resize to a fixed size."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None) or {}
    height, width = size.get("height"), size.get("width")
    if not getattr(image_processor, "do_resize", True) or not height or not width:
        return None
    return int(height), int(width)


def _reduced_early(image: Any, target: tuple[int, int] | None) -> Any:
    """A PIL image at least 6× the model's input on both sides, shrunk in uint8 by an integer factor that keeps it
    ≥ 3× the input (PIL's box filter, the first step of `Image.resize(reducing_gap=3)` and the same reduction the
    image processor makes): done here, before any mode conversion or float copy, it bounds what follows."""
    if target is None or not isinstance(image, PIL.Image.Image) or image.mode not in _REDUCIBLE_MODES:
        return image
    return reduce_for(image, target)


def check_finite_weights(model: torch.nn.Module) -> None:
    """A ValueError naming the parameters and buffers that hold NaN or inf: such a model answers an empty mask
    with score NaN for every input, which must not pass for an answer."""
    bad = [
        name
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise ValueError(
            f"the model's weights hold non-finite values (NaN or inf) in {len(bad)} tensor(s): "
            f"{', '.join(bad[:5])}{', …' if len(bad) > 5 else ''}; the checkpoint is corrupt (re-save or re-train it)"
        )


def register_pipeline() -> None:
    """Makes `pipeline("referring-image-segmentation", model=...)` work (idempotent)."""
    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if registered is not None and registered.get("impl") is ReferringImageSegmentationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=ReferringImageSegmentationPipeline, pt_model=AutoModel, type="multimodal"
    )


__all__ = ["ReferringImageSegmentationPipeline", "register_pipeline", "TASK"]
