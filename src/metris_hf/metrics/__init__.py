"""The project's `evaluate` metric, `referring_iou`, shipped as package data (no Hub access): `load("refcoco")`
gives LAVT's oIoU, mIoU and P@t, `load("grefcoco")` ReLA's cIoU, gIoU, N-acc and T-acc."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluate

METRIC_PATH = str(Path(__file__).resolve().parent / "referring_iou" / "referring_iou.py")
CONFIG_NAMES = ("refcoco", "grefcoco")


def load(config_name: str = "refcoco", **kwargs: Any) -> evaluate.EvaluationModule:
    """`evaluate.load` on the installed metric; kwargs go to `evaluate.load` or to the metric (`threshold`)."""
    return evaluate.load(METRIC_PATH, config_name, **kwargs)


__all__ = ["CONFIG_NAMES", "METRIC_PATH", "load"]
