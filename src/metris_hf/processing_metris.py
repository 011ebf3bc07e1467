"""`MetrisProcessor`: one call turns (image, referring expression) pairs into the model's inputs.

It pairs a `MetrisImageProcessor` with a BERT tokenizer. Expressions are padded and truncated to a fixed
`max_length` (20 tokens by default, the setting of the peers METRIS compares with; RefCOCOg's longer
expressions may want more), so every batch has the same shape and batching never changes a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

from .image_processing_metris import MetrisImageProcessor, MetrisImageProcessorPil, make_list


def _expressions(text: Any) -> list[str]:
    """`text` → a non-empty list of non-blank strings, or a ValueError saying which one is wrong."""
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"text must be a string or a list of strings, got {type(text).__name__}")
    if len(texts) == 0:
        raise ValueError("no referring expression given (empty list)")
    for index, expression in enumerate(texts):
        if not isinstance(expression, str):
            raise ValueError(f"expression {index} is a {type(expression).__name__}, not a string")
        if not expression.strip():
            raise ValueError(f"expression {index} is empty or whitespace-only: a referring expression is needed")
    return list(texts)


class MetrisProcessor(ProcessorMixin):
    """Image processor + BERT tokenizer for METRIS.

    `processor(images=..., text=..., segmentation_maps=None, return_tensors="pt")` → `BatchFeature` with
    `pixel_values` (B, 3, 480, 480), `input_ids` and `attention_mask` (B, max_length), and `labels`
    (B, 480, 480) when masks are given. Pairing: one image per expression, or one image with several
    expressions (the image is processed once and repeated); masks, when given, are one per expression.

    Tokenizer defaults (lowest priority, as transformers v5 processors declare them): pad to and truncate at
    `self.max_length`, no `token_type_ids` (the model takes none). Any of them can be overridden per call,
    e.g. `processor(..., max_length=32)` or `text_kwargs={"max_length": 32}`; `max_length` set on the
    processor is saved with it.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, max_length: int = 20, **kwargs: Any):
        if tokenizer is None:
            raise ValueError("MetrisProcessor needs a tokenizer (a BERT tokenizer for the default text encoder)")
        if image_processor is None:
            image_processor = MetrisImageProcessor() if is_torchvision_available() else MetrisImageProcessorPil()
        super().__init__(image_processor, tokenizer, **kwargs)
        self.max_length = max_length

    @property
    def text_kwargs(self) -> dict[str, Any]:
        """The processor-level tokenizer defaults (`_merge_kwargs` gives them the lowest priority)."""
        return {
            "padding": "max_length",
            "truncation": True,
            "max_length": self.max_length,
            "return_token_type_ids": False,
        }

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        segmentation_maps: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Images and referring expressions (and optional ground-truth masks) → model inputs."""
        if images is None and text is None:
            raise ValueError("MetrisProcessor needs images, text or both")
        merged = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        # A tokenizer saved after use stores its last padding/truncation settings (e.g. `max_length`) in its
        # config, and `_merge_kwargs` ranks those above processor defaults: restore ours unless the call set them.
        given = set(kwargs) | set(kwargs.get("text_kwargs", {}))
        text_kwargs.update({key: value for key, value in self.text_kwargs.items() if key not in given})
        return_tensors = text_kwargs.pop("return_tensors", None) or images_kwargs.get("return_tensors")
        images_kwargs.pop("return_tensors", None)

        data: dict[str, Any] = {}
        texts = _expressions(text) if text is not None else None
        if texts is not None:
            # Always ask for tensors or lists of rows: a single string would otherwise come back 1-D.
            encoding = self.tokenizer(texts, return_tensors="pt", **text_kwargs)
            data["input_ids"], data["attention_mask"] = encoding["input_ids"], encoding["attention_mask"]
        if images is not None:
            image_list = make_list(images, "images")
            repeat = 1
            if texts is not None and len(image_list) != len(texts):
                if len(image_list) != 1:
                    raise ValueError(
                        f"got {len(image_list)} images and {len(texts)} expressions: give one expression per image, "
                        "or one image with several expressions"
                    )
                repeat = len(texts)
            if segmentation_maps is not None:
                masks = make_list(segmentation_maps, "segmentation maps")
                if len(masks) != len(image_list) * repeat:
                    raise ValueError(
                        f"got {len(masks)} segmentation maps for {len(image_list) * repeat} examples: "
                        "give one mask per (image, expression) pair"
                    )
                # masks differ per expression, so the image goes in once per mask
                processed = self.image_processor(image_list * repeat, segmentation_maps=masks, **images_kwargs)
                data["pixel_values"], data["labels"] = processed["pixel_values"], processed["labels"]
            else:
                processed = self.image_processor(image_list, **images_kwargs)
                data["pixel_values"] = list(processed["pixel_values"]) * repeat
        elif segmentation_maps is not None:
            raise ValueError("segmentation_maps need their images")

        if return_tensors is None and texts is not None:  # plain lists, as a tokenizer gives them
            data["input_ids"], data["attention_mask"] = data["input_ids"].tolist(), data["attention_mask"].tolist()
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_referring_segmentation(self, *args: Any, **kwargs: Any) -> list[Any]:
        """See `MetrisImageProcessor.post_process_referring_segmentation`."""
        return self.image_processor.post_process_referring_segmentation(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["MetrisProcessor"]
