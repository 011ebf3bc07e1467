"""`grefcoco_iou`: cIoU, gIoU, N-acc and T-acc for generalized referring segmentation (gRefCOCO), as an
`evaluate` metric.

Definitions are ReLA/GRES's (Liu et al., CVPR 2023, `gres_model/evaluation/refer_evaluation.py`), with the
"no target" decision read off the predicted mask: **an empty predicted mask means "nothing is referred"**
(zero the mask when a no-target classifier fires, as METRIS's `no_target_head` does). A sample whose
reference is empty is a *no-target* sample.

- **gIoU**: the mean per-sample score; a target sample scores its IoU, a no-target sample scores 1 if the
  prediction is empty, else 0.
- **cIoU** = Σ intersections / Σ unions over all samples. A no-target sample adds 0 to Σ I and its predicted
  area to Σ U (0 when correctly empty), so a wrong non-empty prediction there is penalised, as in ReLA.
- **N-acc** = TP / (TP + FN) over no-target samples (an empty prediction is a positive).
- **T-acc** = TN / (TN + FP) over target samples (a non-empty prediction is a negative).
- Undefined ratios are **NaN**: N-acc when there is no no-target sample, T-acc when there is no target
  sample, cIoU when every union is empty. ReLA prints 0 for both accuracies when a split has no no-target
  sample; NaN keeps "not measured" apart from "all wrong".
- Values are fractions in [0, 1] (ReLA prints gIoU and cIoU in percent).

Memory: masks are reduced to four integers per sample (intersection, union, prediction area, reference
area) as soon as they are added; that is all `evaluate` stores and gathers across processes.

This file is self-contained on purpose: `evaluate.load(path)` copies a metric script into its own module
cache, so it cannot import helpers from elsewhere in `metris_hf` (the same helpers live in
`referring_iou.py`; the tests check that both agree).
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
@inproceedings{liu2023gres,
  title     = {GRES: Generalized Referring Expression Segmentation},
  author    = {Liu, Chang and Ding, Henghui and Jiang, Xudong},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}
"""

_DESCRIPTION = """\
Cumulative IoU (cIoU), generalized IoU (gIoU), no-target accuracy (N-acc) and target accuracy (T-acc) for
generalized referring expression segmentation (gRefCOCO), following ReLA/GRES's evaluator. An empty reference
marks a no-target sample; an empty prediction means "no target". Masks are reduced to per-sample counts when
added, so the memory held does not grow with the mask size.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of H x W masks, or an N x H x W array/tensor): predicted binary masks, numpy arrays
        or torch tensors (any device) of bool or of 0/1 values; an empty mask is the "no target" answer.
        Probability maps are accepted when `threshold` is given.
    references (`list` of H x W masks, or an N x H x W array/tensor): ground-truth binary masks, always bool
        or 0/1 (never thresholded); an empty mask marks a no-target sample. Each must have the shape of its
        prediction; shapes may differ between samples.
    threshold (`float`, *optional*): when set, a non-boolean prediction pixel is foreground if its value is
        > threshold. Can be given to `evaluate.load(..., threshold=...)` or per call to `add`, `add_batch` and
        `compute`. Default None: predictions must be binary.
Returns:
    cIoU (`float`): sum of intersections / sum of unions (NaN if every union is empty).
    gIoU (`float`): mean per-sample score: IoU on target samples, 1 or 0 on no-target samples.
    N-acc (`float`): share of no-target samples predicted empty (NaN without no-target samples).
    T-acc (`float`): share of target samples predicted non-empty (NaN without target samples).
Examples:
    >>> import numpy as np, evaluate
    >>> metric = evaluate.load("src/metris_hf/metrics/grefcoco_iou/grefcoco_iou.py")
    >>> empty = np.zeros((4, 4), dtype=bool)
    >>> ref = empty.copy(); ref[:2] = True                        # 8 pixels
    >>> wrong = empty.copy(); wrong[0, :2] = True                 # 2 pixels on a no-target sample
    >>> metric.compute(predictions=[ref, empty, wrong], references=[ref, empty, empty])
    {'cIoU': 0.8, 'gIoU': 0.6666666666666666, 'N-acc': 0.5, 'T-acc': 1.0}
"""

_COUNT_COLUMNS = ("intersection", "union", "prediction_area", "reference_area")


# --- masks -> counts (identical in referring_iou.py: each evaluate script must stand alone) -------------------


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
        if masks.ndim == 2:
            raise ValueError(
                f"{name} is a single 2-D mask of shape {tuple(masks.shape)}: pass a list of H x W masks "
                "(or use add(prediction=..., reference=...) for one sample)"
            )
        if masks.ndim != 3:
            raise ValueError(
                f"{name} must be a list of H x W masks or an N x H x W array, got shape {tuple(masks.shape)}"
            )
        return list(masks)
    if isinstance(masks, (str, bytes)) or not isinstance(masks, Sequence):
        raise ValueError(f"{name} must be a list of H x W masks or an N x H x W array, got {type(masks).__name__}")
    return list(masks)


def _binarize(mask: Any, kind: str, index: int, threshold: float | None):
    """A boolean H x W mask (numpy, or torch on the mask's device); raises on anything that is not one."""
    if _is_tensor(mask):
        if mask.ndim != 2:
            raise ValueError(f"{kind} of sample {index} must be a 2-D (H x W) mask, got shape {tuple(mask.shape)}")
        if str(mask.dtype) == "torch.bool":
            return mask
        if mask.is_complex():
            raise ValueError(f"{kind} of sample {index} has complex dtype {mask.dtype}")
        if threshold is not None:
            if mask.is_floating_point() and not bool(mask.isfinite().all()):
                raise ValueError(f"{kind} of sample {index} holds NaN or inf: probabilities must be finite")
            return mask > threshold
        bad = (mask != 0) & (mask != 1)
        if bool(bad.any()):
            example = mask[bad].flatten()[0].item()
            raise ValueError(
                f"{kind} of sample {index} is not binary (found value {example!r}); "
                "masks must hold only 0/1/True/False"
                + (", or pass threshold=... for probability maps" if kind == "prediction" else "")
            )
        return mask != 0
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
        example = array[bad].flat[0].item()
        raise ValueError(
            f"{kind} of sample {index} is not binary (found value {example!r}); masks must hold only 0/1/True/False"
            + (", or pass threshold=... for probability maps" if kind == "prediction" else "")
        )
    return array != 0


def _pair_counts(prediction: Any, reference: Any, index: int, threshold: float | None) -> tuple[int, int, int, int]:
    """(intersection, union, prediction area, reference area) of one sample: all the metric ever keeps."""
    pred = _binarize(prediction, "prediction", index, threshold)
    ref = _binarize(reference, "reference", index, None)  # ground truth is never thresholded
    if tuple(pred.shape) != tuple(ref.shape):
        raise ValueError(
            f"sample {index}: prediction shape {tuple(pred.shape)} differs from reference shape {tuple(ref.shape)}"
        )
    if _is_tensor(pred) and _is_tensor(ref):
        ref = ref.to(pred.device)
        inter, pred_area, ref_area = int((pred & ref).sum()), int(pred.sum()), int(ref.sum())
    else:
        pred = pred.detach().cpu().numpy() if _is_tensor(pred) else pred
        ref = ref.detach().cpu().numpy() if _is_tensor(ref) else ref
        inter = int(np.count_nonzero(pred & ref))
        pred_area, ref_area = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
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
class GrefcocoIou(evaluate.Metric):
    """cIoU / gIoU / N-acc / T-acc of ReLA's protocol; see the module docstring for the conventions and why."""

    _compute_kwargs = ()

    def __init__(self, *args: Any, threshold: float | None = None, **kwargs: Any) -> None:
        self.threshold = _check_threshold(threshold)
        super().__init__(*args, **kwargs)

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
        row = _pair_counts(prediction, reference, 0, self._threshold(threshold))
        super().add(**dict(zip(_COUNT_COLUMNS, row)))

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
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({name: datasets.Value("int64") for name in _COUNT_COLUMNS}),
            format="numpy",
            codebase_urls=["https://github.com/henghuiding/ReLA"],
            reference_urls=["https://arxiv.org/abs/2306.00968"],
        )

    def _compute(
        self,
        intersection: np.ndarray,
        union: np.ndarray,
        prediction_area: np.ndarray,
        reference_area: np.ndarray,
    ) -> dict[str, float]:
        inter = np.asarray(intersection, dtype=np.int64)
        uni = np.asarray(union, dtype=np.int64)
        if inter.size == 0:
            raise ValueError("no samples to evaluate: add predictions and references first")
        has_target = np.asarray(reference_area, dtype=np.int64) > 0
        predicted_empty = np.asarray(prediction_area, dtype=np.int64) == 0
        # a target sample's union holds its reference, so it is never 0 there
        iou = np.divide(inter, uni, out=np.zeros(inter.shape, dtype=np.float64), where=uni > 0)
        score = np.where(has_target, iou, predicted_empty.astype(np.float64))
        no_target = ~has_target
        return {
            # no-target samples have I = 0 and U = predicted area: ReLA's rule, with no special case needed
            "cIoU": _ratio(int(inter.sum()), int(uni.sum())),
            "gIoU": float(score.mean()),
            "N-acc": _ratio(int(np.count_nonzero(no_target & predicted_empty)), int(np.count_nonzero(no_target))),
            "T-acc": _ratio(int(np.count_nonzero(has_target & ~predicted_empty)), int(np.count_nonzero(has_target))),
        }
