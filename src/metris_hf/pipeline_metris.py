"""The `referring-image-segmentation` pipeline (transformers has none; `import metris_hf` registers it).

    segmenter = pipeline("referring-image-segmentation", model="path/to/checkpoint")
    segmenter(image, "the dog on the left")      # {"mask": PIL "L" image 0/255 at the image size, "score": float}
    segmenter(image, ["the dog", "the man"])     # one result per expression
    segmenter([{"image": ..., "text": ...}, ...], batch_size=8)

Batching does not change a prediction: every expression is padded to the processor's fixed `max_length`. On CPU
the model gets `cpu_kernels.optimize_for_cpu_inference` (in place: same weights, same results).
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
from .image_io import check_expression, check_threshold, open_local_image, reduce_for
from .image_processing_metris import image_layout
from .processing_metris import check_processor_for_model

logger = logging.get_logger(__name__)

TASK = "referring-image-segmentation"
_IMAGE_TYPES = (PIL.Image.Image, np.ndarray, torch.Tensor, str, os.PathLike)


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
        where = f"pipeline ({self.model.name_or_path})" if getattr(self.model, "name_or_path", "") else "pipeline"
        check_processor_for_model(self.processor, self.model.config, where)
        check_finite_weights(self.model)
        if self.device.type == "cpu":
            optimize_for_cpu_inference(self.model)  # CPU kernels for METRIS's own linears and GELUs, same weights

    def __call__(self, image: Any, text: str | list[str] | None = None, **kwargs: Any) -> Any:
        """Returns one result dict for one (image, expression), else a list of them (see the class docstring).

        Every example of a list is checked here, so that a bad one is named before anything runs; generators and
        datasets stream through and each item is checked in `preprocess`."""
        if isinstance(image, dict):
            if text is not None:
                raise ValueError("give the expression inside the dict ({'image': ..., 'text': ...}), not beside it")
            return super().__call__(self._checked(image, "input"), **kwargs)
        if isinstance(image, (list, tuple)) or (isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4):
            examples = list(image)  # dicts, or images paired with `text`
            if text is not None or not examples or not all(isinstance(example, dict) for example in examples):
                texts = [text] if isinstance(text, str) else text
                if not examples or not isinstance(texts, (list, tuple)):
                    raise ValueError("give a non-empty list of images and one expression (a string) per image")
                if len(examples) == 1 and len(texts) > 1:
                    examples = examples * len(texts)
                if len(examples) != len(texts):
                    raise ValueError(f"got {len(examples)} images and {len(texts)} expressions: give one per image")
                examples = [{"image": i, "text": t} for i, t in zip(examples, texts)]
            return super().__call__([self._checked(e, f"example {n}") for n, e in enumerate(examples)], **kwargs)
        if not isinstance(image, _IMAGE_TYPES):
            return super().__call__(image, **kwargs)  # a generator or dataset of {"image", "text"} dicts
        if text is None:
            raise ValueError("a referring expression is needed: pipe(image, 'the dog on the left')")
        if isinstance(text, str):
            return super().__call__(self._checked({"image": image, "text": text}, "input"), **kwargs)
        if not isinstance(text, (list, tuple)) or not text:
            raise ValueError("text must be a string or a non-empty list of strings")
        self._check_image(image, "input")  # and a path is read once, not once per expression:
        image, original = self._open(image, "input") if isinstance(image, (str, os.PathLike)) else (image, None)
        examples = [self._checked({"image": image, "text": t}, f"expression {n}") for n, t in enumerate(text)]
        return super().__call__([{**example, _ORIGINAL_SIZE: original} for example in examples], **kwargs)

    def _open(self, image: Any, where: str) -> tuple[Any, tuple[int, int]]:
        """→ (the image, its own (H, W)). A path is decoded no larger than the model needs (a JPEG at a reduced
        scale) and a PIL image reduced in uint8 (below), so one image's peak memory is its decoded bytes plus a
        constant; an array's size is read with the layout the image processor will read."""
        target = _model_size(self.processor)
        try:
            if isinstance(image, (str, os.PathLike)):
                image, original = open_local_image(image, None if target is None else (3 * target[1], 3 * target[0]))
            elif isinstance(image, PIL.Image.Image):
                original = (image.height, image.width)
            else:  # arrays and tensors: the size the image processor reads
                return image, get_image_size(image, image_layout(image))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        # A PIL image ≥ 6× the input a side is shrunk in uint8 by an integer factor that keeps it ≥ 3× (PIL's box
        # filter, as the image processor's own first step), before any mode conversion or float copy.
        return (reduce_for(image, target) if image.mode in _REDUCIBLE_MODES else image), original

    @staticmethod
    def _checked(example: Any, where: str) -> dict[str, Any]:
        """One example's keys, expression and image, checked without decoding a path (a long list of paths is
        decoded batch by batch, not all up front)."""
        if not isinstance(example, dict) or "image" not in example or "text" not in example:
            got = sorted(example) if isinstance(example, dict) else type(example).__name__
            raise ValueError(f"{where}: a dict input needs the keys 'image' and 'text', got {got}")
        check_expression(example["text"], where)
        ReferringImageSegmentationPipeline._check_image(example["image"], where)
        return example

    @staticmethod
    def _check_image(image: Any, where: str) -> None:
        if isinstance(image, (str, os.PathLike)):
            try:
                if not os.path.isfile(image):  # a URL or a missing file, named by open_local_image
                    open_local_image(image)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from error
        elif not isinstance(image, _IMAGE_TYPES):
            raise ValueError(
                f"{where}: unsupported image type {type(image).__name__} (a PIL image, NumPy array, tensor or "
                "local path is expected)"
            )
        elif 0 in (shape := (image.height, image.width) if isinstance(image, PIL.Image.Image) else tuple(image.shape)):
            raise ValueError(f"{where}: the image has zero size (shape {shape})")

    def _sanitize_parameters(
        self, threshold: float | None = None, max_length: int | None = None, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            logger.warning(f"{type(self).__name__} ignores the argument(s) {sorted(kwargs)}")
        preprocess_params = {} if max_length is None else {"max_length": max_length}
        postprocess_params = {} if threshold is None else {"threshold": check_threshold(threshold)}
        return preprocess_params, {}, postprocess_params

    def preprocess(self, inputs: Any, **text_kwargs: Any) -> dict[str, torch.Tensor]:
        image, original = self._open(self._checked(inputs, "input")["image"], "input")
        encoded = self.processor(images=image, text=inputs["text"], return_tensors="pt", **text_kwargs)
        return {**encoded.to(self.dtype), "target_size": torch.tensor([inputs.get(_ORIGINAL_SIZE) or original])}

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        target_size = model_inputs.pop("target_size")
        outputs = self.model(**model_inputs)
        return {"target_size": target_size, "logits": outputs.logits, "no_target_logits": outputs.no_target_logits}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], threshold: float = 0.5) -> dict[str, Any]:
        (result,) = self.processor.post_process_referring_segmentation(
            model_outputs, target_sizes=model_outputs["target_size"], threshold=threshold, return_scores=True
        )
        # 0/1 → 0/255 in place on the mask's own bytes (a bool is a byte): the H×W mask is the only copy made
        values = result.pop("mask").cpu().contiguous().view(torch.uint8).mul_(255)
        mask = PIL.Image.fromarray(values.numpy())  # mode "L", 0/255
        return {"mask": mask, "score": result["score"]}


_ORIGINAL_SIZE = "_original_size"  # (H, W) of an image decoded at a reduced scale, carried to the mask's size
_REDUCIBLE_MODES = ("L", "RGB", "RGBA", "LA", "I", "F")  # the modes PIL's `Image.reduce` takes (12.x: not "I;16")


def _model_size(processor: Any) -> tuple[int, int] | None:
    """(height, width) the image processor resizes to, or None when it does not resize to a fixed size."""
    image_processor = processor.image_processor
    size = image_processor.size or {}
    height, width = size.get("height"), size.get("width")
    return (int(height), int(width)) if image_processor.do_resize and height and width else None


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
