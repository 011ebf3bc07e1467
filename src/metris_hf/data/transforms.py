"""The training transform: one sentence per object per epoch, resized and tokenised by the METRIS processor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class RefTrainTransform:
    """`train_dataset.with_transform(transform)` + `DataLoader(..., collate_fn=transform.collate)`.

    For each object row it draws one of the object's sentences, as LAVT does, but from `(seed, epoch, ref_id)`
    rather than from a global random state: the draw does not depend on the worker, the batch or what ran
    before, so a run resumed mid-training sees exactly the sentences the uninterrupted run saw. Call
    `set_epoch(epoch)` before each epoch (DataLoader workers copy the transform when an epoch's iterator starts).

    The image is resized to `image_size`² (passed to the processor call; the processor itself is not changed),
    rescaled and normalised; the sentence is tokenised to `max_length` tokens; the mask becomes `labels`
    (image_size², int64 0/1, nearest neighbour). No augmentation beyond that, and in particular no horizontal
    flip: flipping the image would turn "the man on the left" into a wrong label unless every "left" and
    "right" in the text were swapped too, which LAVT and METRIS do not do.
    """

    def __init__(self, processor: Any, image_size: int = 480, max_length: int = 20, seed: int = 0):
        if image_size <= 0 or max_length <= 0 or seed < 0:
            raise ValueError(
                f"need image_size > 0, max_length > 0 and seed >= 0, got {image_size}, {max_length}, {seed}"
            )
        self.processor = processor
        self.image_size = int(image_size)
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose sentences `__call__` draws."""
        self.epoch = int(epoch)

    def sentence_index(self, ref_id: int, num_sentences: int) -> int:
        """Which of an object's `num_sentences` sentences this epoch uses: a pure function of (seed, epoch, ref_id)."""
        if num_sentences <= 0:
            raise ValueError(f"ref {ref_id} has no sentences")
        entropy = [self.seed, self.epoch, int(ref_id) & 0xFFFFFFFFFFFFFFFF]
        return int(np.random.default_rng(np.random.SeedSequence(entropy)).integers(num_sentences))

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """A batch of object rows (decoded by `datasets`) → per-row `pixel_values`, `input_ids`,
        `attention_mask`, `labels` tensors."""
        texts = [
            sentences[self.sentence_index(ref_id, len(sentences))]
            for ref_id, sentences in zip(batch["ref_id"], batch["sentences"])
        ]
        images = [image.convert("RGB") for image in batch["image"]]
        masks = [np.asarray(mask) for mask in batch["mask"]]
        encoded = self.processor(
            images=images,
            text=texts,
            segmentation_maps=masks,
            size={"height": self.image_size, "width": self.image_size},
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": list(encoded["pixel_values"]),
            "input_ids": list(encoded["input_ids"]),
            "attention_mask": list(encoded["attention_mask"]),
            "labels": list(encoded["labels"]),
        }

    @staticmethod
    def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Rows from `__call__` → one batch: each field stacked along a new first dimension."""
        if not rows:
            raise ValueError("cannot collate an empty batch")
        return {key: torch.stack([row[key] for row in rows]) for key in ("pixel_values", "input_ids",
                                                                           "attention_mask", "labels")}
