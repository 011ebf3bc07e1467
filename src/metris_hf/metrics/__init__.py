"""The project's `evaluate` metrics, each a folder with its script and card.

`load("referring_iou")` is `evaluate.load(<this folder>/referring_iou/referring_iou.py)`: the scripts ship
inside the package (package data), so no Hub access is needed and the installed copy is the one used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluate

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("referring_iou", "grefcoco_iou")


def metric_path(name: str) -> str:
    """The local script path of a metric, for `evaluate.load` (or for copying it to a Hub space)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}")
    return str(METRICS_DIR / name / f"{name}.py")


def load(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """`evaluate.load` on the local copy of a metric; kwargs go to `evaluate.load` (e.g. `num_process`,
    `process_id`, `experiment_id`, `cache_dir`, `keep_in_memory`) or to the metric (`threshold`)."""
    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRICS_DIR", "METRIC_NAMES", "load", "metric_path"]
