"""`referring_iou`: the referring-segmentation figures of LAVT/METRIS and of gRefCOCO, as one `evaluate` metric.

Two configurations, chosen as GLUE chooses its tasks (`evaluate.load(path, "grefcoco")`); both are computed from
the same four integers per sample (intersection, union, prediction area, reference area), reduced from the masks
as soon as they are added, so the Arrow cache that `evaluate` writes (and gathers across processes in distributed
evaluation) holds 32 bytes per sample whatever the mask size. Users pass masks: `add`, `add_batch` and `compute`
do the reduction before `evaluate` stores anything.

`refcoco` (the default; RefCOCO, RefCOCO+, RefCOCOg): LAVT's protocol, reused by METRIS; one sample per sentence.
- **oIoU** = Σ intersections / Σ unions over all samples (large objects weigh more); **mIoU** = the mean
  per-sample IoU.
- **P@t** = the share of samples whose IoU is **≥ t** (LAVT's `seg_correct += (iou >= t)`; METRIS reports LAVT's
  numbers next to its own, so the comparison must be the same). CGFormer/CRIS count IoU > t instead.
- A sample whose prediction and reference are both empty has an empty union: its IoU is **0** (LAVT's guard,
  which METRIS's evaluation keeps). If every union is empty, oIoU is 0 for the same reason.

`grefcoco`: ReLA/GRES's evaluator (Liu et al., CVPR 2023), with the "no target" decision read off the predicted
mask: **an empty predicted mask means "nothing is referred"** (METRIS's no-target head zeroes the mask). A sample
whose reference is empty is a *no-target* sample.
- **gIoU**: the mean per-sample score; a target sample scores its IoU, a no-target sample 1 if the prediction is
  empty, else 0. **cIoU** = Σ I / Σ U over all samples; a no-target sample adds 0 to Σ I and its predicted area
  to Σ U, so a wrong non-empty prediction there is penalised, as in ReLA.
- **N-acc** = TP / (TP + FN) over no-target samples (an empty prediction is a positive); **T-acc** = TN / (TN +
  FP) over target samples (a non-empty prediction is a negative).
- Undefined ratios are **NaN** (N-acc without no-target samples, T-acc without target samples, cIoU when every
  union is empty): ReLA prints 0, NaN keeps "not measured" apart from "all wrong".

All values are fractions in [0, 1]. The file imports nothing from `metris_hf`: `evaluate.load(path)` copies a
metric script into its own module cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

_CITATION = """\
@misc{metris,
  title  = {METRIS: Multi-Expressions for Transformer-based Referring Image Segmentation},
  author = {Anonymous},
  note   = {ICLR-style submission under double-blind review},
}
@inproceedings{yang2022lavt,
  title     = {LAVT: Language-Aware Vision Transformer for Referring Image Segmentation},
  author    = {Yang, Zhao and Wang, Jiaqi and Tang, Yansong and Chen, Kai and Zhao, Hengshuang and Torr, Philip H. S.},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}
@inproceedings{liu2023gres,
  title     = {GRES: Generalized Referring Expression Segmentation},
  author    = {Liu, Chang and Ding, Henghui and Jiang, Xudong},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}
"""

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of H x W masks, or an N x H x W array/tensor): predicted binary masks, numpy arrays
        or torch tensors (any device) of bool or of 0/1 values; for "grefcoco" an empty mask is the "no target"
        answer. Probability maps are accepted when `threshold` is given.
    references (`list` of H x W masks, or an N x H x W array/tensor): ground-truth binary masks, always bool
        or 0/1 (never thresholded); for "grefcoco" an empty mask marks a no-target sample. Each must have the
        shape of its prediction; shapes may differ between samples.
    threshold (`float`, *optional*): when set, a non-boolean prediction pixel is foreground if its value is
        > threshold (e.g. 0.5 on sigmoid probabilities). Can be given to `evaluate.load(..., threshold=...)`
        or per call to `add`, `add_batch` and `compute`. Default None: predictions must be binary.
    iou_thresholds (`sequence` of `float`, *optional*, "refcoco", `compute` only): the t of P@t, default
        (0.5, 0.7, 0.9).
Returns:
    `dict` of `float` in [0, 1] (see the description): "refcoco" gives oIoU, mIoU and P@t per threshold ("P@0.5",
    "P@0.7", "P@0.9"); "grefcoco" gives cIoU, gIoU, N-acc and T-acc (NaN where undefined).
Examples:
    >>> import numpy as np, evaluate
    >>> metric = evaluate.load("src/metris_hf/metrics/referring_iou/referring_iou.py")
    >>> pred = np.zeros((4, 4), dtype=bool); pred[:2] = True      # 8 pixels
    >>> ref = np.zeros((4, 4), dtype=bool); ref[:, :2] = True     # 8 pixels, 4 shared
    >>> metric.compute(predictions=[pred, ref], references=[ref, ref])
    {'oIoU': 0.6, 'mIoU': 0.6666666666666666, 'P@0.5': 0.5, 'P@0.7': 0.5, 'P@0.9': 0.5}
    >>> gres = evaluate.load("src/metris_hf/metrics/referring_iou/referring_iou.py", "grefcoco")
    >>> empty = np.zeros((4, 4), dtype=bool)
    >>> wrong = empty.copy(); wrong[0, :2] = True                 # 2 pixels on a no-target sample
    >>> gres.compute(predictions=[pred, empty, wrong], references=[pred, empty, empty])
    {'cIoU': 0.8, 'gIoU': 0.6666666666666666, 'N-acc': 0.5, 'T-acc': 1.0}
"""

CONFIG_NAMES = ("refcoco", "grefcoco")
_COUNT_COLUMNS = ("intersection", "union", "prediction_area", "reference_area")
_DEFAULT_IOU_THRESHOLDS = (0.5, 0.7, 0.9)


# --- masks -> counts ---------------------------------------------------------------------------------------------


def _is_tensor(x: Any) -> bool:
    """A torch tensor, recognised without importing torch (the metric works without it)."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def _check_threshold(threshold: Any) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number in [0, 1] or None, got {threshold!r}")
    if not 0.0 <= threshold <= 1.0:  # also refuses NaN: predictions are probabilities
        raise ValueError(f"threshold must lie in [0, 1] (predictions are probabilities), got {threshold!r}")
    return float(threshold)


def _as_mask_list(masks: Any, name: str) -> list:
    """A list of per-sample masks from a list/tuple of masks or one N x H x W array or tensor."""
    if masks is None:
        raise ValueError(f"{name} is missing: pass both predictions and references")
    if isinstance(masks, np.ndarray) or _is_tensor(masks):
        if masks.ndim != 3:
            single = " (a single 2-D mask: use add(prediction=..., reference=...) for one sample)" * (masks.ndim == 2)
            raise ValueError(
                f"{name} must be a list of H x W masks or an N x H x W array, got shape {tuple(masks.shape)}{single}"
            )
    elif isinstance(masks, (str, bytes)) or not isinstance(masks, Sequence):
        raise ValueError(f"{name} must be a list of H x W masks or an N x H x W array, got {type(masks).__name__}")
    return list(masks)


def _binarize(mask: Any, kind: str, index: int, threshold: float | None) -> np.ndarray:
    """A boolean H x W numpy mask; raises on anything that is not one."""
    if _is_tensor(mask):  # any device; numpy has no bfloat16 (converted to float32 exactly)
        mask = mask.detach().cpu()
        mask = (mask.float() if str(mask.dtype) == "torch.bfloat16" else mask).numpy()
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{kind} of sample {index} must be a 2-D (H x W) mask, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{kind} of sample {index} has dtype {array.dtype}; expected bool, integer or float")
    if threshold is not None:
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ValueError(f"{kind} of sample {index} holds NaN or inf: probabilities must be finite")
        return array > threshold
    bad = (array != 0) & (array != 1)
    if bad.any():
        raise ValueError(
            f"{kind} of sample {index} is not binary (found value {array[bad].flat[0].item()!r}); masks must hold "
            "only 0/1/True/False" + (", or pass threshold=... for probability maps" if kind == "prediction" else "")
        )
    return array != 0


def _pair_counts(prediction: Any, reference: Any, index: int, threshold: float | None) -> tuple[int, int, int, int]:
    """(intersection, union, prediction area, reference area) of one sample: all the metric ever keeps."""
    pred = _binarize(prediction, "prediction", index, threshold)
    ref = _binarize(reference, "reference", index, None)  # ground truth is never thresholded
    if pred.shape != ref.shape:
        raise ValueError(f"sample {index}: prediction shape {pred.shape} differs from reference shape {ref.shape}")
    inter, pred_area, ref_area = (int(np.count_nonzero(m)) for m in (pred & ref, pred, ref))
    return inter, pred_area + ref_area - inter, pred_area, ref_area


def _batch_counts(predictions: Any, references: Any, threshold: float | None) -> dict[str, list[int]]:
    """Validates a whole batch before anything is stored, so a bad batch leaves the metric unchanged."""
    preds, refs = _as_mask_list(predictions, "predictions"), _as_mask_list(references, "references")
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions and {len(refs)} references: one of each per sample")
    rows = [_pair_counts(p, r, i, threshold) for i, (p, r) in enumerate(zip(preds, refs))]
    return {name: [row[k] for row in rows] for k, name in enumerate(_COUNT_COLUMNS)}


# --- the metric ------------------------------------------------------------------------------------------------


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, NaN when nothing was measured."""
    return numerator / denominator if denominator > 0 else math.nan


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ReferringIou(evaluate.Metric):
    """LAVT's oIoU / mIoU / P@t ("refcoco") or ReLA's cIoU / gIoU / N-acc / T-acc ("grefcoco"); see the module
    docstring for the conventions and why."""

    def __init__(self, config_name: str | None = None, *args: Any, threshold: float | None = None, **kwargs: Any):
        self.threshold = _check_threshold(threshold)
        super().__init__(config_name or "refcoco", *args, **kwargs)
        self._compute_kwargs = ("iou_thresholds",) if self.config_name == "refcoco" else ()

    def _threshold(self, threshold: Any) -> float | None:
        return self.threshold if threshold is None else _check_threshold(threshold)

    def add_batch(
        self,
        *,
        predictions: Any = None,
        references: Any = None,
        threshold: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Adds a batch of (prediction, reference) masks, stored as per-sample counts only."""
        if kwargs:
            raise ValueError(f"unexpected inputs {sorted(kwargs)}: add_batch takes predictions, references, threshold")
        counts = _batch_counts(predictions, references, self._threshold(threshold))
        super().add_batch(**counts)

    def add(
        self, *, prediction: Any = None, reference: Any = None, threshold: float | None = None, **kwargs: Any
    ) -> None:
        """Adds one (prediction, reference) pair of masks, stored as its counts only."""
        if kwargs:
            raise ValueError(f"unexpected inputs {sorted(kwargs)}: add takes prediction, reference, threshold")
        if prediction is None or reference is None:
            raise ValueError("add needs both prediction and reference")
        self.add_batch(predictions=[prediction], references=[reference], threshold=threshold)

    def compute(
        self,
        *,
        predictions: Any = None,
        references: Any = None,
        threshold: float | None = None,
        **kwargs: Any,
    ) -> dict[str, float] | None:
        """Adds the given masks (if any), gathers every process's counts, returns the figures on process 0."""
        unknown = sorted(set(kwargs) - set(self._compute_kwargs))
        if unknown:
            raise ValueError(
                f"unexpected arguments {unknown}; compute takes predictions, references, threshold"
                + "".join(f", {k}" for k in self._compute_kwargs)
            )
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references, threshold=threshold)
        if self.writer is None:
            # an empty shard must still write its (empty) cache file, or process 0 waits for it in vain
            super().add_batch(**{name: [] for name in _COUNT_COLUMNS})
        return super().compute(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in CONFIG_NAMES:
            raise ValueError(f"unknown configuration {self.config_name!r}; choose one of {', '.join(CONFIG_NAMES)}")
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({name: datasets.Value("int64") for name in _COUNT_COLUMNS}),
            format="numpy",
            codebase_urls=["https://github.com/yz93/LAVT-RIS", "https://github.com/henghuiding/ReLA"],
            reference_urls=["https://arxiv.org/abs/2112.02244", "https://arxiv.org/abs/2306.00968"],
        )

    def _compute(
        self,
        intersection: np.ndarray,
        union: np.ndarray,
        prediction_area: np.ndarray,
        reference_area: np.ndarray,
        iou_thresholds: Sequence[float] = _DEFAULT_IOU_THRESHOLDS,
    ) -> dict[str, float]:
        inter = np.asarray(intersection, dtype=np.int64)
        uni = np.asarray(union, dtype=np.int64)
        if inter.size == 0:
            raise ValueError("no samples to evaluate: add predictions and references first")
        iou = np.divide(inter, uni, out=np.zeros(inter.shape, dtype=np.float64), where=uni > 0)
        if self.config_name == "grefcoco":
            has_target = np.asarray(reference_area, dtype=np.int64) > 0  # its union holds it: never 0 there
            predicted_empty = np.asarray(prediction_area, dtype=np.int64) == 0
            no_target, hit = ~has_target, ~predicted_empty
            return {
                # no-target samples have I = 0 and U = predicted area: ReLA's rule, with no special case needed
                "cIoU": _ratio(int(inter.sum()), int(uni.sum())),
                "gIoU": float(np.where(has_target, iou, predicted_empty.astype(np.float64)).mean()),
                "N-acc": _ratio(int(np.count_nonzero(no_target & predicted_empty)), int(np.count_nonzero(no_target))),
                "T-acc": _ratio(int(np.count_nonzero(has_target & hit)), int(np.count_nonzero(has_target))),
            }
        thresholds = [float(t) for t in iou_thresholds]
        if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"iou_thresholds must be a non-empty list of numbers in [0, 1], got {iou_thresholds!r}")
        oiou = int(inter.sum()) / int(uni.sum()) if uni.sum() > 0 else 0.0  # LAVT's guard, as for one sample
        return {"oIoU": oiou, "mIoU": float(iou.mean()), **{f"P@{t:g}": float(np.mean(iou >= t)) for t in thresholds}}
