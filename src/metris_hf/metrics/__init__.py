"""The project's `evaluate` metric: one script and card, with a configuration per protocol.

`load("refcoco")` is `evaluate.load(<this folder>/referring_iou/referring_iou.py, "refcoco")` (LAVT's oIoU, mIoU,
P@t); `load("grefcoco")` gives ReLA's cIoU, gIoU, N-acc and T-acc. The script ships inside the package (package
data), so no Hub access is needed and the installed copy is the one used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluate

METRIC_PATH = str(Path(__file__).resolve().parent / "referring_iou" / "referring_iou.py")
CONFIG_NAMES = ("refcoco", "grefcoco")


def load(config_name: str = "refcoco", **kwargs: Any) -> evaluate.EvaluationModule:
    """`evaluate.load` on the local copy of the metric; kwargs go to `evaluate.load` (e.g. `num_process`,
    `process_id`, `experiment_id`, `cache_dir`, `keep_in_memory`) or to the metric (`threshold`)."""
    return evaluate.load(METRIC_PATH, config_name, **kwargs)


__all__ = ["CONFIG_NAMES", "METRIC_PATH", "load"]
