"""The training transform: one sentence per object per epoch, resized and tokenised by the METRIS processor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate


class RefTrainTransform:
    """`train_dataset.with_transform(transform)` + `DataLoader(..., collate_fn=transform.collate)`.

    Draws one sentence per object row, as LAVT does, but from `(seed, epoch, ref_id)` rather than a global random
    state, so a run resumed mid-training sees exactly the sentences the uninterrupted run saw. Call
    `set_epoch(epoch)` before each epoch (DataLoader workers copy the transform when an epoch's iterator starts).
    Sizes come from the processor alone, the one place a checkpoint saves them. No horizontal flip: it would make
    "the man on the left" a wrong label unless the text were swapped too, which LAVT and METRIS do not do.
    """

    def __init__(self, processor: Any, seed: int = 0):
        if seed < 0:
            raise ValueError(f"need seed >= 0, got {seed}")
        self.processor = processor
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose sentences `__call__` draws."""
        self.epoch = int(epoch)

    def sentence_index(self, ref_id: int, num_sentences: int) -> int:
        """Which of an object's `num_sentences` sentences this epoch uses: a pure function of (seed, epoch, ref_id)."""
        entropy = [self.seed, self.epoch, int(ref_id) & 0xFFFFFFFFFFFFFFFF]
        return int(np.random.default_rng(np.random.SeedSequence(entropy)).integers(num_sentences))

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """A batch of object rows (decoded by `datasets`) → per-row `pixel_values`, `input_ids`,
        `attention_mask`, `labels` tensors, and each row's `ref_id` (so a failing batch can be named)."""
        texts = [
            sentences[self.sentence_index(ref_id, len(sentences))]
            for ref_id, sentences in zip(batch["ref_id"], batch["sentences"])
        ]
        images = [image.convert("RGB") for image in batch["image"]]
        masks = [np.asarray(mask) for mask in batch["mask"]]
        encoded = self.processor(images=images, text=texts, segmentation_maps=masks, return_tensors="pt")
        fields = {key: list(encoded[key]) for key in ("pixel_values", "input_ids", "attention_mask", "labels")}
        return {**fields, "ref_id": list(batch["ref_id"])}

    @staticmethod
    def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Rows from `__call__` → one batch: each field stacked, the rows' ref ids as `ref_ids` (int64; not a model
        input: the training loop takes it out before the forward)."""
        batch = default_collate(rows)
        batch["ref_ids"] = batch.pop("ref_id")
        return batch


def training_loader(
    data: Any, processor: Any, batch_size: int, *, num_workers: int = 0, seed: int = 0
) -> tuple[DataLoader, RefTrainTransform]:
    """The loader `scripts/train.py` trains from: `data` through `RefTrainTransform(processor, seed)`, shuffled,
    full batches only, its order and workers' seeds from its own generator (a resumed run creates its iterator at
    another moment and must not shift the global RNG's dropout stream). Call the returned transform's `set_epoch`
    each epoch."""
    transform = RefTrainTransform(processor, seed=seed)
    loader = DataLoader(
        data.with_transform(transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=transform.collate,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, transform
