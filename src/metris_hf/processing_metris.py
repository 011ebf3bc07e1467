"""`MetrisProcessor`: one call turns (image, referring expression) pairs into the model's inputs.

It pairs a `MetrisImageProcessor` with a BERT tokenizer. Expressions are padded and truncated to a fixed
`max_length` (20 tokens by default, the setting of the peers METRIS compares with; RefCOCOg's longer
expressions may want more), so every batch has the same shape and batching never changes a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

from .image_io import check_expressions, check_image_settings
from .image_processing_metris import MetrisImageProcessor, MetrisImageProcessorPil, make_list

DEFAULT_MAX_LENGTH = 20


def check_processor_for_model(processor: Any, config: Any, where: str) -> None:
    """A ValueError naming the file and field when a processor cannot feed `config`'s model, checked once when a
    pipeline (or `run_evaluation.py`) is built rather than found as an index error, NaN logits or a terabyte
    allocation at the first call: tokenizer ids within the text encoder's embeddings; `max_length` in 2 … the
    position table; the image settings (`image_io.check_image_settings`) and an input size the backbone takes."""
    tokenizer, image_processor, text_config = processor.tokenizer, processor.image_processor, config.text_config
    last_id = max(tokenizer.get_vocab().values())
    if last_id >= text_config.vocab_size:
        raise ValueError(
            f"{where}: the tokenizer's ids reach {last_id} but the model's text encoder has {text_config.vocab_size} "
            "embeddings (text_config.vocab_size): the tokenizer belongs to another model"
        )
    max_length = tokenizer.init_kwargs.get("max_length")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(
            f"{where}: tokenizer_config.json max_length is {max_length!r}; an expression needs at least 2 tokens "
            "([CLS] and [SEP])"
        )
    if max_length > text_config.max_position_embeddings:
        raise ValueError(
            f"{where}: tokenizer_config.json max_length {max_length} is longer than the text encoder's position "
            f"table (config.json text_config.max_position_embeddings = {text_config.max_position_embeddings})"
        )
    field = f"{where}: processor_config.json image_processor"
    names = ("do_resize", "size", "do_normalize", "image_mean", "image_std", "do_rescale", "rescale_factor")
    check_image_settings({name: getattr(image_processor, name, None) for name in names}, field)
    if image_processor.do_resize:
        height, width = image_processor.size["height"], image_processor.size["width"]
        try:
            config.check_input_size(height, width)
        except ValueError as error:
            raise ValueError(f"{field}.size {height}×{width}: {error}") from error


def _flat(inputs: Any, what: str) -> list[Any]:
    """`make_list`, refusing a nested per-sample list (`[[image], [image]]`, the multimodal processors' layout) whose
    sample holds no or several items: METRIS segments exactly one image per expression."""
    if isinstance(inputs, (list, tuple)) and any(isinstance(item, (list, tuple)) for item in inputs):
        for index, sample in enumerate(inputs):
            if isinstance(sample, (list, tuple)) and len(sample) != 1:
                raise ValueError(
                    f"sample {index} has {len(sample)} {what}: METRIS pairs every expression with exactly one image "
                    "(give one per sample, or one for all expressions)"
                )
    return make_list(inputs, what)


class MetrisProcessor(ProcessorMixin):
    """Image processor + BERT tokenizer for METRIS.

    `processor(images=..., text=..., segmentation_maps=None, return_tensors="pt")` → `BatchFeature` with
    `pixel_values` (B, 3, 480, 480), `input_ids` and `attention_mask` (B, max_length), and `labels`
    (B, 480, 480) when masks are given. Pairing: one image per expression (flat, or nested per sample as
    `[[image], [image]]`), or one image with several expressions (the image is processed once and repeated);
    masks, when given, are one per expression.

    Tokenizer settings, as everywhere in transformers: the call's kwargs (`max_length=32`), else the tokenizer's init
    kwargs (`processor.max_length = 32` sets one, saved in `tokenizer_config.json`), else `text_kwargs` below.
    """

    text_kwargs: ClassVar[dict[str, Any]] = {
        "padding": "max_length",
        "truncation": True,
        "return_token_type_ids": False,
    }
    model_input_names: ClassVar[list[str]] = ["pixel_values", "input_ids", "attention_mask"]

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any):
        if tokenizer is None:
            raise ValueError("MetrisProcessor needs a tokenizer (a BERT tokenizer for the default text encoder)")
        vocabulary = tokenizer.get_vocab()
        if not set(vocabulary) - set(tokenizer.all_special_tokens):  # transformers builds one from its config alone
            raise ValueError(
                f"{tokenizer.name_or_path or 'MetrisProcessor'}: no tokenizer vocabulary (tokenizer.json or "
                f"vocab.txt): the tokenizer knows only its special tokens {sorted(vocabulary)}, so every word would "
                f"become {tokenizer.unk_token}"
            )
        # An init kwarg, so it is saved in tokenizer_config.json: a loaded tokenizer would otherwise take the length
        # of its last call (kept in tokenizer.json) as its own.
        tokenizer.init_kwargs.setdefault("max_length", DEFAULT_MAX_LENGTH)
        if image_processor is None:
            image_processor = MetrisImageProcessor() if is_torchvision_available() else MetrisImageProcessorPil()
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def max_length(self) -> int:
        """Tokens per expression when a call does not say (the tokenizer's init `max_length`)."""
        return self.tokenizer.init_kwargs["max_length"]

    @max_length.setter
    def max_length(self, value: int) -> None:
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"max_length must be an integer >= 2 ([CLS] and [SEP]), got {value!r}")
        self.tokenizer.init_kwargs["max_length"] = value

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
        return_tensors = images_kwargs.pop("return_tensors", None) or text_kwargs.get("return_tensors")
        data: dict[str, Any] = {}
        texts = check_expressions(text) if text is not None else None
        if texts is not None:
            data.update(self.tokenizer(texts, **text_kwargs))  # a list, so rows even for one string
        if images is not None:
            image_list = _flat(images, "images")
            repeat = 1
            if texts is not None and len(image_list) != len(texts):
                if len(image_list) != 1:
                    raise ValueError(
                        f"got {len(image_list)} images and {len(texts)} expressions: give one expression per image, "
                        "or one image with several expressions"
                    )
                repeat = len(texts)
            if segmentation_maps is not None:
                masks = _flat(segmentation_maps, "segmentation maps")
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
        return BatchFeature(data=data, tensor_type=return_tensors)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> list[str]:
        """`ProcessorMixin.save_pretrained`, which for a class registered for auto classes also writes `auto_map`
        into the instance; removed again, as transformers does for the tokenizer's copy, so that the instance
        still equals the processor loaded back."""
        try:
            return super().save_pretrained(*args, **kwargs)
        finally:
            self.__dict__.pop("auto_map", None)

    def post_process_referring_segmentation(self, *args: Any, **kwargs: Any) -> list[Any]:
        """See `MetrisImageProcessor.post_process_referring_segmentation`."""
        return self.image_processor.post_process_referring_segmentation(*args, **kwargs)


__all__ = ["MetrisProcessor", "check_processor_for_model"]
