"""The `referring_iou` evaluate metric in its `refcoco` and `grefcoco` configurations: hand-computed values,
properties against a direct numpy computation, streaming, stored-state size, distributed gathering, input errors
and loading."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metris_hf import metrics

REFERRING_KEYS = ("oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9")
GREFCOCO_KEYS = ("cIoU", "gIoU", "N-acc", "T-acc")
NAN = math.nan


@pytest.fixture(scope="module")
def referring() -> evaluate.EvaluationModule:
    return metrics.load("refcoco", keep_in_memory=True)


@pytest.fixture(scope="module")
def grefcoco() -> evaluate.EvaluationModule:
    return metrics.load("grefcoco", keep_in_memory=True)


@pytest.fixture(scope="module")
def both(referring, grefcoco) -> dict[str, evaluate.EvaluationModule]:
    return {"refcoco": referring, "grefcoco": grefcoco}


def assert_results(actual: dict[str, float], expected: dict[str, float]) -> None:
    """Same keys, same values; NaN equals NaN."""
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), f"{key}: expected NaN, got {actual[key]}"
        else:
            assert actual[key] == pytest.approx(value, abs=1e-12), key
        assert isinstance(actual[key], float), key


# --- hand-computed cases ------------------------------------------------------------------------------------

EMPTY = np.zeros((4, 4), dtype=bool)
TOP = EMPTY.copy()
TOP[:2] = True  # 8 pixels
BOTTOM = EMPTY.copy()
BOTTOM[2:] = True  # 8 pixels, disjoint from TOP
LEFT = EMPTY.copy()
LEFT[:, :2] = True  # 8 pixels, 4 shared with TOP
ROW0 = EMPTY.copy()
ROW0[0] = True  # 4 pixels, inside TOP

# name: (prediction, reference, refcoco result, grefcoco result)
CASES = {
    # I = U = 8
    "identical": (
        TOP,
        TOP,
        dict(oIoU=1.0, mIoU=1.0, **{"P@0.5": 1.0, "P@0.7": 1.0, "P@0.9": 1.0}),
        {"cIoU": 1.0, "gIoU": 1.0, "N-acc": NAN, "T-acc": 1.0},
    ),
    # I = 0, U = 16
    "disjoint": (
        TOP,
        BOTTOM,
        dict(oIoU=0.0, mIoU=0.0, **{"P@0.5": 0.0, "P@0.7": 0.0, "P@0.9": 0.0}),
        {"cIoU": 0.0, "gIoU": 0.0, "N-acc": NAN, "T-acc": 1.0},
    ),
    # I = 4, U = 8: IoU exactly 0.5 counts for P@0.5 (>=)
    "nested": (
        ROW0,
        TOP,
        dict(oIoU=0.5, mIoU=0.5, **{"P@0.5": 1.0, "P@0.7": 0.0, "P@0.9": 0.0}),
        {"cIoU": 0.5, "gIoU": 0.5, "N-acc": NAN, "T-acc": 1.0},
    ),
    # I = 4, U = 12
    "half-overlap": (
        TOP,
        LEFT,
        dict(oIoU=1 / 3, mIoU=1 / 3, **{"P@0.5": 0.0, "P@0.7": 0.0, "P@0.9": 0.0}),
        {"cIoU": 1 / 3, "gIoU": 1 / 3, "N-acc": NAN, "T-acc": 1.0},
    ),
    # U = 0: IoU 0 for refcoco (LAVT's guard); a correct no-target answer for grefcoco
    "empty/empty": (
        EMPTY,
        EMPTY,
        dict(oIoU=0.0, mIoU=0.0, **{"P@0.5": 0.0, "P@0.7": 0.0, "P@0.9": 0.0}),
        {"cIoU": NAN, "gIoU": 1.0, "N-acc": 1.0, "T-acc": NAN},
    ),
    # I = 0, U = 8: a target sample answered "no target" (false positive of the no-target class)
    "empty/non-empty": (
        EMPTY,
        TOP,
        dict(oIoU=0.0, mIoU=0.0, **{"P@0.5": 0.0, "P@0.7": 0.0, "P@0.9": 0.0}),
        {"cIoU": 0.0, "gIoU": 0.0, "N-acc": NAN, "T-acc": 0.0},
    ),
    # I = 0, U = 8: a no-target sample with a mask: its area goes into the union
    "non-empty/empty": (
        TOP,
        EMPTY,
        dict(oIoU=0.0, mIoU=0.0, **{"P@0.5": 0.0, "P@0.7": 0.0, "P@0.9": 0.0}),
        {"cIoU": 0.0, "gIoU": 0.0, "N-acc": 0.0, "T-acc": NAN},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_single_sample_cases(case, referring, grefcoco):
    prediction, reference, expected_referring, expected_grefcoco = CASES[case]
    assert_results(referring.compute(predictions=[prediction], references=[reference]), expected_referring)
    assert_results(grefcoco.compute(predictions=[prediction], references=[reference]), expected_grefcoco)


def test_referring_iou_over_several_samples(referring):
    names = ["identical", "disjoint", "nested", "half-overlap", "empty/empty", "empty/non-empty"]
    result = referring.compute(predictions=[CASES[n][0] for n in names], references=[CASES[n][1] for n in names])
    # I = 8+0+4+4+0+0, U = 8+16+8+12+0+8; IoUs 1, 0, 1/2, 1/3, 0, 0
    assert_results(
        result,
        {"oIoU": 16 / 52, "mIoU": (1 + 0.5 + 1 / 3) / 6, "P@0.5": 2 / 6, "P@0.7": 1 / 6, "P@0.9": 1 / 6},
    )


def test_grefcoco_iou_over_several_samples(grefcoco):
    two_pixels = EMPTY.copy()
    two_pixels[0, :2] = True
    predictions = [TOP, ROW0, EMPTY, two_pixels, EMPTY]
    references = [TOP, TOP, EMPTY, EMPTY, TOP]
    result = grefcoco.compute(predictions=predictions, references=references)
    # I = 8+4+0+0+0, U = 8+8+0+2+8; scores 1, 1/2, 1 (TP), 0 (FN), 0 (FP)
    assert_results(result, {"cIoU": 12 / 26, "gIoU": 2.5 / 5, "N-acc": 1 / 2, "T-acc": 2 / 3})


def test_precision_counts_iou_equal_to_the_threshold(referring):
    """LAVT counts IoU >= t: IoUs of exactly 0.7 and 0.9 count for P@0.7 and P@0.9."""
    prediction = np.ones((2, 5), dtype=bool)
    seven, nine = np.zeros((2, 5), dtype=bool), np.zeros((2, 5), dtype=bool)
    seven.flat[:7] = True
    nine.flat[:9] = True
    result = referring.compute(predictions=[prediction, prediction], references=[seven, nine])
    assert_results(result, {"oIoU": 16 / 20, "mIoU": 0.8, "P@0.5": 1.0, "P@0.7": 1.0, "P@0.9": 0.5})


def test_custom_iou_thresholds(referring):
    result = referring.compute(predictions=[TOP, ROW0], references=[LEFT, TOP], iou_thresholds=[0.3, 0.75])
    assert set(result) == {"oIoU", "mIoU", "P@0.3", "P@0.75"}
    assert result["P@0.3"] == 1.0 and result["P@0.75"] == 0.0
    with pytest.raises(ValueError, match="iou_thresholds"):
        referring.compute(predictions=[TOP], references=[TOP], iou_thresholds=[1.5])


# --- properties against a direct numpy computation ------------------------------------------------------------


def numpy_referring(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    inter = np.array([np.logical_and(p, r).sum() for p, r in pairs], dtype=float)
    union = np.array([np.logical_or(p, r).sum() for p, r in pairs], dtype=float)
    iou = np.array([i / u if u else 0.0 for i, u in zip(inter, union)])
    result = {"oIoU": inter.sum() / union.sum() if union.sum() else 0.0, "mIoU": iou.mean()}
    result.update({f"P@{t}": float(np.mean(iou >= t)) for t in (0.5, 0.7, 0.9)})
    return result


def numpy_grefcoco(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    scores, total_i, total_u = [], 0, 0
    tp = fn = tn = fp = 0
    for p, r in pairs:
        i, u = int(np.logical_and(p, r).sum()), int(np.logical_or(p, r).sum())
        total_i, total_u = total_i + i, total_u + u
        if not r.any():  # no-target sample
            scores.append(1.0 if not p.any() else 0.0)
            tp, fn = tp + (not p.any()), fn + bool(p.any())
        else:
            scores.append(i / u)
            tn, fp = tn + bool(p.any()), fp + (not p.any())
    return {
        "cIoU": total_i / total_u if total_u else NAN,
        "gIoU": float(np.mean(scores)),
        "N-acc": tp / (tp + fn) if tp + fn else NAN,
        "T-acc": tn / (tn + fp) if tn + fp else NAN,
    }


@st.composite
def mask_pairs(draw, max_samples: int = 6, max_side: int = 6):
    pairs = []
    for _ in range(draw(st.integers(1, max_samples))):
        shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
        pairs.append((draw(arrays(bool, shape)), draw(arrays(bool, shape))))
    return pairs


@settings(max_examples=60, deadline=None)
@given(pairs=mask_pairs())
def test_referring_iou_matches_numpy_and_stays_in_unit_interval(referring, pairs):
    result = referring.compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
    assert all(0.0 <= result[key] <= 1.0 for key in REFERRING_KEYS)
    assert_results(result, numpy_referring(pairs))


@settings(max_examples=40, deadline=None)
@given(pairs=mask_pairs())
def test_referring_iou_is_one_for_perfect_predictions(referring, pairs):
    masks = []
    for prediction, _ in pairs:
        mask = prediction.copy()
        mask[0, 0] = True  # non-empty
        masks.append(mask)
    result = referring.compute(predictions=masks, references=[m.copy() for m in masks])
    assert_results(result, dict.fromkeys(REFERRING_KEYS, 1.0))


@settings(max_examples=60, deadline=None)
@given(pairs=mask_pairs())
def test_grefcoco_iou_matches_numpy(grefcoco, pairs):
    # empty masks are rare among random ones: empty some references and predictions on purpose
    pairs = [(p if k % 3 else np.zeros_like(p), r if k % 2 else np.zeros_like(r)) for k, (p, r) in enumerate(pairs)]
    result = grefcoco.compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
    assert all(math.isnan(result[key]) or 0.0 <= result[key] <= 1.0 for key in GREFCOCO_KEYS)
    assert_results(result, numpy_grefcoco(pairs))


# --- streaming and input types -----------------------------------------------------------------------------


def random_pairs(seed: int, count: int, empty_every: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(count):
        shape = tuple(rng.integers(3, 12, size=2))
        reference = rng.random(shape) < rng.random()
        if empty_every and k % empty_every == 0:
            reference[:] = False
        pairs.append((rng.random(shape) < rng.random(), reference))
    return pairs


@pytest.mark.parametrize("name", metrics.CONFIG_NAMES)
def test_streaming_equals_one_compute(both, name):
    metric = both[name]
    pairs = random_pairs(seed=1, count=23, empty_every=4)
    predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
    expected = metric.compute(predictions=predictions, references=references)

    metric.add_batch(predictions=predictions[:5], references=references[:5])
    metric.add_batch(
        predictions=[torch.from_numpy(p) for p in predictions[5:12]],  # torch tensors
        references=[r.astype(np.uint8) for r in references[5:12]],  # 0/1 integers
    )
    for p, r in zip(predictions[12:15], references[12:15]):
        metric.add(prediction=p.astype(np.float32), reference=torch.from_numpy(r))
    metric.add_batch(predictions=[], references=[])
    streamed = metric.compute(predictions=predictions[15:], references=references[15:])
    assert_results(streamed, expected)


def test_stacked_batches_and_probabilities_with_threshold(referring):
    predictions = np.stack([TOP, ROW0])
    expected = referring.compute(predictions=list(predictions), references=[LEFT, TOP])
    assert_results(referring.compute(predictions=predictions, references=np.stack([LEFT, TOP])), expected)
    probabilities = torch.from_numpy(predictions).float() * 0.8 + 0.1  # 0.9 inside, 0.1 outside
    assert_results(referring.compute(predictions=probabilities, references=[LEFT, TOP], threshold=0.5), expected)
    thresholded = metrics.load("refcoco", keep_in_memory=True, threshold=0.5)
    assert_results(thresholded.compute(predictions=probabilities.numpy(), references=[LEFT, TOP]), expected)


# --- stored state -------------------------------------------------------------------------------------------


def stored_bytes_after_adding(size: int, samples: int = 5000, batch: int = 50) -> tuple[int, int, dict]:
    """Adds `samples` random size x size pairs; returns the bytes of the metric's Arrow buffer, the Python/
    numpy heap the metric kept (tracemalloc), and the result."""
    rng = np.random.default_rng(size)
    pool = [(rng.random((size, size)) < 0.4, rng.random((size, size)) < 0.4) for _ in range(batch)]
    predictions, references = [p for p, _ in pool], [r for _, r in pool]
    metric = metrics.load("refcoco", keep_in_memory=True)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(samples // batch):
        metric.add_batch(predictions=predictions, references=references)
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(metric) == samples
    writer = metric.writer
    pending = len(writer.current_examples) + len(writer.current_rows)
    stored = metric.buf_writer.tell() + 8 * 4 * pending
    return stored, kept, metric.compute()


def test_stored_state_does_not_grow_with_mask_size():
    stored_480, kept_480, result_480 = stored_bytes_after_adding(480)
    stored_16, _, _ = stored_bytes_after_adding(16)
    # 5,000 pairs of 480x480 masks are 2.3 GB as bool; the metric keeps four int64 per sample
    assert stored_480 < 1_000_000, stored_480
    assert kept_480 < 50_000_000, kept_480
    assert stored_480 == stored_16
    assert 0.2 < result_480["oIoU"] < 0.3  # two independent 40 % masks: IoU ~ 0.16 / 0.64 = 0.25


# --- distributed ------------------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, sys
    import evaluate, numpy as np

    path, config, shards, process_id, cache_dir, experiment_id, out = sys.argv[1:]
    data = np.load(shards)
    keys = sorted({k[1:] for k in data.files}, key=int)
    predictions, references = [data["p" + k] for k in keys], [data["r" + k] for k in keys]
    metric = evaluate.load(path, config, num_process=2, process_id=int(process_id), cache_dir=cache_dir,
                           experiment_id=experiment_id)
    if predictions:
        half = len(predictions) // 2
        metric.add_batch(predictions=predictions[:half], references=references[:half])
        for p, r in zip(predictions[half:-1], references[half:-1]):
            metric.add(prediction=p, reference=r)
        result = metric.compute(predictions=predictions[-1:], references=references[-1:])
    else:  # an empty shard: nothing added, compute() must still take part in the gathering
        result = metric.compute()
    with open(out, "w") as f:
        json.dump(result, f)
    """
)


@pytest.mark.parametrize(("name", "split"), [("refcoco", 13), ("grefcoco", 13), ("grefcoco", 31)], ids=str)
@pytest.mark.slow
def test_two_processes_give_the_same_numbers_as_one(both, name, split, tmp_path):
    pairs = random_pairs(seed=7, count=31, empty_every=3)
    # contiguous shards like Dataset.shard(contiguous=True): uneven (13 + 18), or all + none
    shards = [pairs[:split], pairs[split:]]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    experiment_id = uuid.uuid4().hex
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    workers = []
    for process_id, shard in enumerate(shards):
        arrays_file = tmp_path / f"shard{process_id}.npz"
        np.savez(
            arrays_file,
            **{f"p{k}": p for k, (p, _) in enumerate(shard)},
            **{f"r{k}": r for k, (_, r) in enumerate(shard)},
        )
        command = [
            sys.executable,
            str(script),
            metrics.METRIC_PATH,
            name,
            str(arrays_file),
            str(process_id),
            str(tmp_path / "cache"),
            experiment_id,
            str(tmp_path / f"result{process_id}.json"),
        ]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for worker in workers:
        output, _ = worker.communicate(timeout=180)
        assert worker.returncode == 0, output

    distributed = json.loads((tmp_path / "result0.json").read_text())
    assert json.loads((tmp_path / "result1.json").read_text()) is None  # only process 0 computes
    single = both[name].compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])
    assert_results({k: float(v) for k, v in distributed.items()}, single)
    assert not list((tmp_path / "cache").rglob("*.arrow"))  # process 0 cleaned the shared cache


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", metrics.CONFIG_NAMES)
def test_shape_mismatch_names_the_sample(both, name):
    with pytest.raises(ValueError, match=r"sample 1: prediction shape \(4, 4\) differs from reference shape \(4, 5\)"):
        both[name].compute(predictions=[TOP, TOP], references=[TOP, np.zeros((4, 5), dtype=bool)])


@pytest.mark.parametrize("name", metrics.CONFIG_NAMES)
def test_non_binary_masks_are_refused(both, name):
    metric = both[name]
    with pytest.raises(ValueError, match=r"reference of sample 2 is not binary \(found value 255\)"):
        metric.compute(predictions=[TOP] * 3, references=[TOP, TOP, TOP.astype(np.uint8) * 255])
    with pytest.raises(ValueError, match=r"prediction of sample 0 is not binary \(found value 0\.5\).*threshold"):
        metric.compute(predictions=[TOP * 0.5], references=[TOP])
    with pytest.raises(ValueError, match=r"prediction of sample 1 is not binary"):
        metric.compute(predictions=[TOP, torch.full((4, 4), 2)], references=[TOP, TOP])
    # references are never thresholded
    with pytest.raises(ValueError, match="reference of sample 0 is not binary"):
        metric.compute(predictions=[TOP], references=[TOP * 0.5], threshold=0.4)
    with pytest.raises(ValueError, match="threshold must be a number"):
        metric.compute(predictions=[TOP], references=[TOP], threshold="0.5")


@pytest.mark.parametrize("name", metrics.CONFIG_NAMES)
def test_count_mismatch(both, name):
    with pytest.raises(ValueError, match="got 2 predictions and 3 references"):
        both[name].compute(predictions=[TOP, TOP], references=[TOP, TOP, TOP])


@pytest.mark.parametrize("name", metrics.CONFIG_NAMES)
def test_masks_must_be_2d(both, name):
    metric = both[name]
    with pytest.raises(
        ValueError, match=r"prediction of sample 1 must be a 2-D \(H x W\) mask, got shape \(1, 4, 4\)"
    ):
        metric.compute(predictions=[TOP, TOP[None]], references=[TOP, TOP])
    with pytest.raises(ValueError, match=r"reference of sample 0 must be a 2-D .* got shape \(16,\)"):
        metric.compute(predictions=[TOP], references=[torch.from_numpy(TOP).flatten()])
    with pytest.raises(ValueError, match="single 2-D mask"):
        metric.compute(predictions=TOP, references=TOP)


@pytest.mark.parametrize("name", metrics.CONFIG_NAMES)
def test_a_bad_batch_stores_nothing(both, name):
    metric = both[name]
    metric.add_batch(predictions=[TOP], references=[TOP])
    with pytest.raises(ValueError, match="sample 1"):
        metric.add_batch(predictions=[TOP, TOP, TOP], references=[TOP, TOP[:2], TOP])
    assert len(metric) == 1
    with pytest.raises(ValueError, match="unexpected"):
        metric.add_batch(predictions=[TOP], references=[TOP], intersection=[3])
    metric.compute()  # leaves the module-scoped metric empty for the next test
    with pytest.raises(ValueError, match="no samples"):
        metric.compute()


# --- loading, cards, and the two copies of the shared helpers ------------------------------------------------


@pytest.mark.parametrize("name", metrics.CONFIG_NAMES)
def test_loads_with_evaluate_by_path_and_by_name(name):
    by_file = evaluate.load(metrics.METRIC_PATH, name, keep_in_memory=True)
    by_folder = evaluate.load(str(Path(metrics.METRIC_PATH).parent), name, keep_in_memory=True)
    by_name = metrics.load(name, keep_in_memory=True)
    for metric in (by_file, by_folder, by_name):
        assert isinstance(metric, evaluate.Metric)
        assert (metric.name, metric.config_name) == ("referring_iou", name)
        assert set(metric.features) == {"intersection", "union", "prediction_area", "reference_area"}
        assert "METRIS" in metric.citation and metric.description
    assert by_file.compute(predictions=[TOP], references=[ROW0]) == by_name.compute(
        predictions=[TOP], references=[ROW0]
    )


def test_without_a_configuration_it_is_refcoco():
    metric = evaluate.load(metrics.METRIC_PATH, keep_in_memory=True)
    assert metric.config_name == "refcoco"
    assert set(metric.compute(predictions=[TOP], references=[TOP])) == set(REFERRING_KEYS)


def test_unknown_configuration_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown configuration 'miou'; choose one of refcoco, grefcoco"):
        metrics.load("miou")


def test_iou_thresholds_belong_to_refcoco_only(grefcoco):
    with pytest.raises(ValueError, match="unexpected arguments"):
        grefcoco.compute(predictions=[TOP], references=[TOP], iou_thresholds=[0.5])


def test_metric_card_defines_every_key():
    card = (Path(metrics.METRIC_PATH).parent / "README.md").read_text()
    front_matter = card.split("---")[1]
    for field in ("title:", "tags:", "description:"):
        assert field in front_matter
    for section in (
        "## Metric Description",
        "## How to Use",
        "### Inputs",
        "## Output Values",
        "## Examples",
        "## Limitations",
        "## Citation",
    ):
        assert section in card, section
    outputs = card.split("## Output Values")[1].split("\n## ")[0]
    for key in REFERRING_KEYS + GREFCOCO_KEYS:
        assert f"**{key}**" in outputs, key
    assert "LAVT" in card and "METRIS" in card and "GRES" in card
