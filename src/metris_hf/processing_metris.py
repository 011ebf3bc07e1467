"""`MetrisProcessor`: one call turns (image, referring expression) pairs into the model's inputs.

It pairs a `MetrisImageProcessor` with a BERT tokenizer. Expressions are padded and truncated to a fixed
`max_length` (20 tokens by default, the setting of the peers METRIS compares with; RefCOCOg's longer
expressions may want more), so every batch has the same shape and batching never changes a prediction.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

from .image_processing_metris import MetrisImageProcessor, MetrisImageProcessorPil, make_list

DEFAULT_MAX_LENGTH = 20


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


def _one_per_sample(inputs: Any, what: str) -> None:
    """Nested per-sample lists (`[[image], [image]]`, the layout of multimodal processors) hold one item each.

    METRIS segments one image per expression: a sample with no image, or with several, has no meaning for it.
    """
    if not isinstance(inputs, (list, tuple)) or not any(isinstance(item, (list, tuple)) for item in inputs):
        return
    for index, sample in enumerate(inputs):
        count = len(sample) if isinstance(sample, (list, tuple)) else 1
        if count != 1:
            raise ValueError(
                f"sample {index} has {count} {what}: METRIS pairs every expression with exactly one image "
                "(give one per sample, or one for all expressions)"
            )


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def check_tokenizer_vocabulary(tokenizer: Any, where: str, vocab_size: int | None = None) -> None:
    """A ValueError when the tokenizer cannot be the model's: it knows only its special tokens (its vocabulary
    file was missing, so every word would become [UNK] and the model would answer a plausible wrong mask), or its
    ids reach past the text encoder's `vocab_size` embeddings (it belongs to another model)."""
    vocabulary = tokenizer.get_vocab()
    if not set(vocabulary) - set(tokenizer.all_special_tokens):
        raise ValueError(
            f"{where}: the tokenizer knows only its special tokens {sorted(vocabulary)}: its vocabulary "
            f"({' or '.join(TOKENIZER_FILES)}) is missing, so every word would become {tokenizer.unk_token}"
        )
    if vocab_size is not None and max(vocabulary.values()) >= vocab_size:
        raise ValueError(
            f"{where}: the tokenizer's ids reach {max(vocabulary.values())} but the model's text encoder has "
            f"{vocab_size} embeddings (text_config.vocab_size): the tokenizer belongs to another model"
        )


# The largest side `check_processor_for_model` lets a processor resize to: 4096² is 36× the paper's 480² input (a
# 10⁶ size would ask the backbone for terabytes).
MAX_INPUT_SIDE = 4096
JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "processor_config.json")


def check_json_files(folder: Path) -> None:
    """A ValueError naming the file when one of a checkpoint folder's processor files is not valid JSON (truncated
    by an interrupted copy, say), where transformers would raise a bare `JSONDecodeError`."""
    for name in (*JSON_FILES, "preprocessor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                json.load(handle)
        except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
            raise ValueError(f"{path}: not valid JSON ({reason}); the file is truncated or corrupt") from error


def check_processor_for_model(processor: Any, config: Any, where: str) -> None:
    """A ValueError naming the file and field when a processor's settings cannot feed `config`'s model, checked once
    when a pipeline (or the app, or `metris-segment`) is built rather than found as a tensor-size error, NaN logits
    or a terabyte allocation at the first call:

    - the expression length (`max_length`, tokenizer_config.json): at least 2 ([CLS] and [SEP]), at most the text
      encoder's position table (`text_config.max_position_embeddings`);
    - the input size (processor_config.json, `image_processor.size`): whole, 1 … `MAX_INPUT_SIDE` pixels a side,
      and one the backbone was built for (`MetrisConfig.check_input_size`);
    - `image_mean`, `image_std` (finite, the std > 0) and `rescale_factor` (finite, in (0, 1]): anything else makes
      NaN or huge pixel values and so NaN logits.
    """
    tokenizer = getattr(processor, "tokenizer", None)
    max_length = getattr(tokenizer, "init_kwargs", {}).get("max_length")  # 0 is read as unset by `max_length`
    max_length = getattr(processor, "max_length", None) if max_length is None else max_length
    text_config = getattr(config, "text_config", None)
    positions = getattr(text_config, "max_position_embeddings", None)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(
            f"{where}: tokenizer_config.json max_length is {max_length!r}; an expression needs at least 2 tokens "
            "([CLS] and [SEP])"
        )
    if positions is not None and max_length > positions:
        raise ValueError(
            f"{where}: tokenizer_config.json max_length {max_length} is longer than the text encoder's position "
            f"table (config.json text_config.max_position_embeddings = {positions})"
        )
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return
    field = "processor_config.json image_processor"
    size = getattr(image_processor, "size", None) or {}
    height, width = size.get("height"), size.get("width")
    if getattr(image_processor, "do_resize", True):
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INPUT_SIDE:
                raise ValueError(
                    f"{where}: {field}.size[{name!r}] is {value!r}; a whole number of pixels in 1 … {MAX_INPUT_SIDE} "
                    "is needed"
                )
        try:
            config.check_input_size(height, width)
        except ValueError as error:
            raise ValueError(f"{where}: {field}.size {height}×{width}: {error}") from error
    checks = [("image_mean", lambda v: math.isfinite(v)), ("image_std", lambda v: math.isfinite(v) and v > 0)]
    if getattr(image_processor, "do_normalize", True):
        for name, good in checks:
            values = getattr(image_processor, name, None)
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            if not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and good(v) for v in values
            ):
                raise ValueError(
                    f"{where}: {field}.{name} is {getattr(image_processor, name, None)!r}; finite numbers are "
                    f"needed{' (and > 0: the pixels are divided by it)' if name == 'image_std' else ''}"
                )
    factor = getattr(image_processor, "rescale_factor", None)
    if getattr(image_processor, "do_rescale", True) and not (
        isinstance(factor, (int, float)) and not isinstance(factor, bool) and 0 < factor <= 1 and math.isfinite(factor)
    ):
        raise ValueError(
            f"{where}: {field}.rescale_factor is {factor!r}; it must lie in (0, 1] (1/255 maps uint8 pixels to [0, 1])"
        )


class MetrisProcessor(ProcessorMixin):
    """Image processor + BERT tokenizer for METRIS.

    `processor(images=..., text=..., segmentation_maps=None, return_tensors="pt")` → `BatchFeature` with
    `pixel_values` (B, 3, 480, 480), `input_ids` and `attention_mask` (B, max_length), and `labels`
    (B, 480, 480) when masks are given. Pairing: one image per expression (flat, or nested per sample as
    `[[image], [image]]`), or one image with several expressions (the image is processed once and repeated);
    masks, when given, are one per expression.

    Tokenizer settings, by priority as everywhere in transformers: the call's kwargs (`max_length=32`,
    `text_kwargs={"max_length": 32}`), then the tokenizer's init kwargs (what it was loaded or built with, saved
    in its `tokenizer_config.json`; `processor.max_length = 32` sets that one), then the defaults below: pad to and
    truncate at 20 tokens, no `token_type_ids` (the model takes none).
    """

    text_kwargs: ClassVar[dict[str, Any]] = {
        "padding": "max_length",
        "truncation": True,
        "max_length": DEFAULT_MAX_LENGTH,
        "return_token_type_ids": False,
    }

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any):
        if tokenizer is None:
            raise ValueError("MetrisProcessor needs a tokenizer (a BERT tokenizer for the default text encoder)")
        if image_processor is None:
            image_processor = MetrisImageProcessor() if is_torchvision_available() else MetrisImageProcessorPil()
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def max_length(self) -> int:
        """Tokens per expression when a call does not say: the tokenizer's init `max_length`, else 20."""
        return self.tokenizer.init_kwargs.get("max_length") or self.text_kwargs["max_length"]

    @max_length.setter
    def max_length(self, value: int) -> None:
        # A tokenizer init kwarg: it outranks the processor default, loses to a call's kwargs, and is saved in the
        # tokenizer's config, so a checkpoint keeps its expression length.
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
        return_tensors = text_kwargs.pop("return_tensors", None) or images_kwargs.get("return_tensors")
        images_kwargs.pop("return_tensors", None)

        data: dict[str, Any] = {}
        texts = _expressions(text) if text is not None else None
        if texts is not None:
            # Always ask for tensors or lists of rows: a single string would otherwise come back 1-D.
            encoding = self.tokenizer(texts, return_tensors="pt", **text_kwargs)
            data["input_ids"], data["attention_mask"] = encoding["input_ids"], encoding["attention_mask"]
        if images is not None:
            _one_per_sample(images, "images")
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
                _one_per_sample(segmentation_maps, "segmentation maps")
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

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> Any:
        """Saves as `ProcessorMixin` does, without the two side effects that would break a save/load round trip.

        - A tokenizer keeps the padding/truncation of its last call in `tokenizer.json`, and loading turns them
          into init kwargs, which outrank the processor defaults: one `processor(..., max_length=8)` before saving
          would make 8 the saved length. They are cleared first (every call sets its own anyway).
        - `register_for_auto_class` makes saving write `auto_map` into the instance as well as the file, so the
          instance would no longer equal the one loaded back (which drops it); it is removed again afterwards,
          as transformers does for the tokenizers' copy.
        """
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None and hasattr(backend, "no_truncation"):
            backend.no_truncation()
            backend.no_padding()
        had_auto_map = "auto_map" in self.__dict__
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            if not had_auto_map:
                self.__dict__.pop("auto_map", None)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Loads as `ProcessorMixin` does, then refuses a tokenizer without its vocabulary: transformers builds
        one from `tokenizer_config.json` alone, which knows only the special tokens (see
        `check_tokenizer_vocabulary`)."""
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise ValueError(
                f"{folder}: no tokenizer vocabulary ({' or '.join(TOKENIZER_FILES)}) in the checkpoint folder; "
                "save the processor with the model (`processor.save_pretrained(folder)`) or copy the file there"
            )
        if folder.is_dir():
            check_json_files(folder)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        processor = loaded[0] if isinstance(loaded, tuple) else loaded
        check_tokenizer_vocabulary(processor.tokenizer, str(pretrained_model_name_or_path))
        return loaded

    def post_process_referring_segmentation(self, *args: Any, **kwargs: Any) -> list[Any]:
        """See `MetrisImageProcessor.post_process_referring_segmentation`."""
        return self.image_processor.post_process_referring_segmentation(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["MetrisProcessor", "check_processor_for_model", "check_tokenizer_vocabulary"]
