"""The paper's evaluation protocol (LAVT, METRIS, ReLA), shared by `scripts/train.py` and `scripts/run_evaluation.py`:
every sentence of every object is one sample, predicted at the model's input size (480×480) and compared with the
ground truth resized to it with nearest neighbour (`resolution="model"`), or at the image's own size
(`resolution="original"`, CGFormer/CRIS style). Distributed, each process predicts its share and
`gather_for_metrics` (which drops the samples repeated to even out the last batch) brings them to the main process.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics as metris_metrics
from .data.schema import sentence_rows

RESOLUTIONS = ("model", "original")
COLUMNS = {"refcoco": ("P@0.5", "P@0.7", "P@0.9", "mIoU", "oIoU"), "grefcoco": ("cIoU", "gIoU", "N-acc", "T-acc")}


def collate_for_evaluation(rows: list[dict], processor: Any, keep_original: bool = False) -> dict:
    """Rows with `image`, `sentence`, `mask` → model inputs and `labels`, plus `original_masks` if asked."""
    masks = [np.asarray(row["mask"], dtype=np.uint8) for row in rows]
    images, texts = [row["image"].convert("RGB") for row in rows], [row["sentence"] for row in rows]
    batch = dict(processor(images=images, text=texts, segmentation_maps=masks, return_tensors="pt"))
    return {**batch, "original_masks": masks} if keep_original else batch


@torch.no_grad()
def evaluate_referring(
    model: torch.nn.Module,
    processor: Any,
    dataset,
    *,
    metric_config: str = "refcoco",
    resolution: str = "model",
    batch_size: int = 16,
    num_workers: int = 0,
    threshold: float = 0.5,
    accelerator=None,
    progress: bool = True,
) -> dict[str, float] | None:
    """Runs the model over one row per sentence and returns the metric's figures (None on non-main processes).

    `dataset` rows need `image` (PIL), `sentence` (str) and `mask` (H×W binary); see `metris_hf.data`.
    `metric_config` is "refcoco" (oIoU, mIoU, P@t) or "grefcoco" (cIoU, gIoU, N-acc, T-acc).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    is_main = accelerator is None or accelerator.is_main_process
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    metric = metris_metrics.load(metric_config, keep_in_memory=True) if is_main else None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=partial(collate_for_evaluation, processor=processor, keep_original=resolution == "original"),
    )
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    for batch in tqdm(loader, desc="evaluating", disable=not progress or not is_main):
        with accelerator.autocast() if accelerator is not None else nullcontext():
            text = {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}
            outputs = model(pixel_values=batch["pixel_values"].to(device, dtype), **text)
        if resolution == "model":
            references = [label.bool().cpu().numpy() for label in batch["labels"]]
        else:
            references = [mask.astype(bool) for mask in batch["original_masks"]]
        sizes = [ref.shape for ref in references]
        predictions = processor.post_process_referring_segmentation(outputs, target_sizes=sizes, threshold=threshold)
        pairs = [(p.cpu().numpy(), r) for p, r in zip(predictions, references)]
        if accelerator is not None:
            pairs = accelerator.gather_for_metrics(pairs, use_gather_object=True)
        if is_main:
            metric.add_batch(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
    model.train(was_training)
    return {**metric.compute(), "resolution": resolution} if is_main else None


def evaluate_split(
    model: torch.nn.Module, processor: Any, split, dataset: str, max_samples: int | None = None, **kwargs: Any
) -> dict[str, float] | None:
    """`evaluate_referring` on one split of `dataset` (`metris_hf.data` rows, one sample per sentence, the first
    `max_samples` of them) with its metric: gRefCOCO's for "grefcoco", else RefCOCO's. Adds `samples`."""
    data = sentence_rows(split)
    if max_samples:
        data = data.select(range(min(max_samples, len(data))))
    metric = "grefcoco" if dataset == "grefcoco" else "refcoco"
    result = evaluate_referring(model, processor, data, metric_config=metric, **kwargs)
    return None if result is None else {**result, "samples": len(data)}
