"""The paper's evaluation protocol, shared by `scripts/train.py` (validation) and `scripts/run_evaluation.py`.

Protocol (LAVT, METRIS, ReLA): every sentence of every object is one sample; the prediction is made at
480×480 and compared with the ground truth resized to 480×480 with nearest neighbour (`resolution="model"`).
`resolution="original"` compares at the image's own size instead (CGFormer/CRIS style), and says so.

Distributed: each process evaluates its own contiguous shard (no sample is duplicated to even out batches)
and the `evaluate` metric combines the per-sample counts of all processes.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import metrics as metris_metrics

RESOLUTIONS = ("model", "original")


class EvalCollator:
    """Rows with `image`, `sentence`, `mask` → model inputs, plus the original masks for `resolution="original"`."""

    def __init__(self, processor: Any, keep_original: bool):
        self.processor = processor
        self.keep_original = keep_original

    def __call__(self, rows: list[dict]) -> dict:
        images = [row["image"].convert("RGB") for row in rows]
        masks = [np.asarray(row["mask"], dtype=np.uint8) for row in rows]
        batch = self.processor(
            images=images, text=[row["sentence"] for row in rows], segmentation_maps=masks, return_tensors="pt"
        )
        batch = dict(batch)
        if self.keep_original:
            batch["original_masks"] = masks
        return batch


@torch.no_grad()
def evaluate_referring(
    model: torch.nn.Module,
    processor: Any,
    dataset,
    *,
    metric_name: str = "referring_iou",
    resolution: str = "model",
    batch_size: int = 16,
    num_workers: int = 0,
    threshold: float = 0.5,
    accelerator=None,
    experiment_id: str | None = None,
    progress: bool = True,
) -> dict[str, float] | None:
    """Runs the model over one row per sentence and returns the metric's figures (None on non-main processes).

    `dataset` rows need `image` (PIL), `sentence` (str) and `mask` (H×W binary); see `metris_hf.data`.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    num_processes = accelerator.num_processes if accelerator is not None else 1
    process_index = accelerator.process_index if accelerator is not None else 0
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    # A fresh id per call keeps concurrent evaluations apart; every process of one call must share it so the
    # metric finds the others' shards, hence the broadcast from the main process.
    token = [uuid.uuid4().hex]
    if num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(token)
        dataset = dataset.shard(num_shards=num_processes, index=process_index, contiguous=True)
    metric = metris_metrics.load(
        metric_name,
        num_process=num_processes,
        process_id=process_index,
        experiment_id=f"{experiment_id or 'metris-eval'}-{token[0]}",
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=EvalCollator(processor, keep_original=resolution == "original"),
    )
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    for batch in tqdm(loader, desc="evaluating", disable=not progress or process_index != 0):
        outputs = model(
            pixel_values=batch["pixel_values"].to(device, dtype),
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        if resolution == "model":
            references = [label.bool().cpu().numpy() for label in batch["labels"]]
        else:
            references = [mask.astype(bool) for mask in batch["original_masks"]]
        sizes = [ref.shape for ref in references]
        predictions = processor.post_process_referring_segmentation(outputs, target_sizes=sizes, threshold=threshold)
        metric.add_batch(predictions=[p.cpu().numpy() for p in predictions], references=references)
    model.train(was_training)
    result = metric.compute()
    if result is not None:
        result = {key: float(value) for key, value in result.items()}
        result["resolution"] = resolution
    return result
