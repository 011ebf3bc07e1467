"""Fuzz tests, one per entry point: whatever the input, the outcome is a correct result or one of the documented
exceptions (docs/errors.md), and the memory a load takes stays within a small multiple of its input.

Each example's outcome is tallied (correct / clear error); an exception of any other type fails the test. Set
METRIS_FUZZ_TALLY=<file> to have the tallies written there as JSON.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image
from transformers import pipeline

from helpers import REFCOCO_REFS, instances, save_tiny_checkpoint
from metris_hf import MetrisConfig
from metris_hf import metrics as metris_metrics
from metris_hf.data import UnsafePickleError
from metris_hf.data.parquet import parquet_tasks
from metris_hf.data.refer import build_tasks, load_refs
from metris_hf.pipeline_metris import TASK
from metris_hf.testing_utils import tiny_metris_config

TALLY: dict[str, Counter] = {}
FUZZ = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], derandomize=True
)


def outcome(entry: str, run, documented: tuple[type[BaseException], ...] = (ValueError,), names: str = ""):
    """Runs `run()`; counts a return as "correct" (the caller then checks it) and a documented exception as
    "clear error" (its message must say something, and name `names`: the file); anything else propagates and
    fails the test."""
    counts = TALLY.setdefault(entry, Counter())
    try:
        result = run()
    except documented as error:
        assert str(error).strip(), f"{type(error).__name__} without a message"
        assert names in str(error), f"the error does not name {names}: {error}"
        counts["clear error"] += 1
        return None
    counts["correct"] += 1
    return result


@pytest.fixture(scope="module", autouse=True)
def report_tally():
    yield
    path = os.environ.get("METRIS_FUZZ_TALLY")
    if path:
        Path(path).write_text(json.dumps({k: dict(v) for k, v in TALLY.items()}, indent=1, sort_keys=True))


# --------------------------------------------------------------------------------------------------------------
# REFER files: refs pickles (bytes mutated, structures generated) and refs + instances
# --------------------------------------------------------------------------------------------------------------

VALID_REFS = pickle.dumps(REFCOCO_REFS[:3], protocol=2)
PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4) | st.tuples(inner, inner)
    ),
    max_leaves=20,
)


@st.composite
def mutated_pickles(draw) -> bytes:
    data = bytearray(draw(st.sampled_from([VALID_REFS, pickle.dumps(draw(PLAIN), protocol=draw(st.integers(0, 5)))])))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
    return bytes(data)


@settings(FUZZ, max_examples=150)
@given(data=mutated_pickles())
def test_fuzz_refer_pickles(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("p", numbered=True) / "refs(unc).p"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        refs = outcome("REFER refs pickle", lambda: load_refs(path), (ValueError, UnsafePickleError), names=str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 64 * len(data) + (4 << 20), f"{peak} bytes to load {len(data)}"
    if refs is not None:
        assert isinstance(refs, list) and refs and all(isinstance(r, dict) for r in refs)
        assert all(isinstance(r["ref_id"], int) and isinstance(r["image_id"], int) for r in refs)


NUMBER = st.integers(-10, 200) | st.floats(allow_nan=True, allow_infinity=True, width=32) | st.just(1e18)
VALID_POLYGONS = st.lists(
    st.lists(st.integers(0, 60), min_size=6, max_size=12).filter(lambda p: len(p) % 2 == 0), min_size=1, max_size=2
)
SEGMENTATION = st.one_of(
    VALID_POLYGONS,
    VALID_POLYGONS,  # valid ones as often as broken ones
    st.lists(st.lists(NUMBER, max_size=10), max_size=3),
    st.fixed_dictionaries(
        {
            "size": st.lists(st.integers(-2, 70), min_size=2, max_size=2),
            "counts": st.lists(st.integers(-5, 3000), max_size=6)
            | st.text(alphabet=st.characters(min_codepoint=40, max_codepoint=120), max_size=12),
        }
    ),
    st.none(),
    st.text(max_size=5),
    st.integers(),
)
SENTENCES = st.one_of(
    st.lists(st.sampled_from(["the big box", "left thing", "  "]), min_size=1, max_size=3),
    st.lists(st.fixed_dictionaries({"raw": st.sampled_from(["the man", ""]), "sent": st.just("the man")}), min_size=1),
    st.lists(
        st.fixed_dictionaries(
            {"raw": st.none() | st.text(max_size=12) | st.integers(), "sent": st.none() | st.text(max_size=12)}
        ),
        max_size=3,
    ),
    st.lists(st.text(max_size=12) | st.integers() | st.none(), max_size=3),
    st.text(max_size=10),
    st.none(),
)


@st.composite
def refer_inputs(draw) -> tuple[list[dict], dict]:
    data = instances()
    data = {**data, "images": [dict(i) for i in data["images"]], "annotations": [dict(a) for a in data["annotations"]]}
    target = draw(st.sampled_from(data["annotations"]))
    target["segmentation"] = draw(SEGMENTATION)
    corrupt = st.integers(0, 3).map(lambda n: n == 0)  # each other field is broken one time in four
    if draw(corrupt):
        target["bbox"] = draw(st.lists(NUMBER, max_size=5) | st.none())
    image = next(i for i in data["images"] if i["id"] == target["image_id"])
    if draw(corrupt):
        image[draw(st.sampled_from(["height", "width"]))] = draw(NUMBER | st.none() | st.text(max_size=3))
    ref = dict(
        draw(st.sampled_from(REFCOCO_REFS)),
        ann_id=target["id"],
        image_id=target["image_id"],
        sentences=draw(SENTENCES),
    )
    if draw(corrupt):
        ref[draw(st.sampled_from(["ann_id", "image_id", "ref_id"]))] = draw(st.integers(-2, 500) | st.text(max_size=3))
    return [ref], data


@settings(FUZZ, max_examples=200)
@given(case=refer_inputs())
def test_fuzz_refer_refs_and_instances(tmp_path_factory, case):
    refs, data = case
    path = tmp_path_factory.mktemp("r", numbered=True) / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    tracemalloc.start()
    try:
        built = outcome(
            "REFER refs + instances.json",
            lambda: build_tasks(load_refs(path), data, Path("/images"), str(path)),
            names=str(path),
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 32 << 20  # a 64×64 image at most, plus pycocotools' RLEs
    if built is not None:
        for rows in built.values():
            for task in rows:
                assert task["sentences"] and all(isinstance(s, str) and s.strip() for s in task["sentences"])
                assert 1 <= task["height"] <= 16384 and 1 <= task["width"] <= 16384
                assert all(math.isfinite(v) for v in task["bbox"])
                assert not (task["no_target"] and task["degenerate"])


# --------------------------------------------------------------------------------------------------------------
# Parquet rows
# --------------------------------------------------------------------------------------------------------------


@st.composite
def parquet_rows(draw) -> dict:
    box = st.just([1.0, 2.0, 10.0, 10.0]) | st.lists(NUMBER, min_size=4, max_size=4)
    annotation = {"id": 11, "segmentation": draw(SEGMENTATION), "bbox": draw(box)}
    info = {"id": 1, "height": draw(st.just(40) | NUMBER | st.none()), "width": draw(st.just(60) | NUMBER | st.none())}
    row = {
        "ref_id": draw(st.integers(0, 10) | st.integers(0, 10) | st.text(max_size=2) | st.none()),
        "image_id": 1,
        "ann_id": draw(st.none() | st.integers(-1, 20)),
        "sentences": draw(SENTENCES),
        "raw_anns": draw(st.sampled_from([json.dumps(annotation), None, "[1]", "{}", json.dumps([annotation])])),
        "raw_image_info": draw(st.sampled_from([json.dumps(info), None, "[]"])),
        "category_id": 1,
        "bbox": None,
        "_image_path": "/no/such/image.jpg",
    }
    return row


@pytest.fixture(scope="module")
def row_image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("row") / "image.jpg"
    Image.new("RGB", (20, 10)).save(path)
    return str(path)


@settings(FUZZ, max_examples=200)
@given(row=parquet_rows())
def test_fuzz_parquet_rows(row_image, row):
    row["_image_path"] = row_image  # present, as `check_images` guarantees before rows are converted
    tracemalloc.start()
    try:
        out = outcome(
            "Parquet rows",
            lambda: parquet_tasks([row], source="fuzz.parquet"),
            names="fuzz.parquet: ref",
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 32 << 20
    if out is not None:
        (task,) = out
        assert task["ref_id"] == row["ref_id"] and task["sentences"][0]
        assert task["no_target"] == (task["ann_ids"] == [])
        assert not (task["no_target"] and task["degenerate"])  # degenerate: a target that draws nothing


# --------------------------------------------------------------------------------------------------------------
# Metric inputs
# --------------------------------------------------------------------------------------------------------------


@st.composite
def metric_inputs(draw):
    shape = draw(array_shapes(min_dims=2, max_dims=2, max_side=5))
    dtype = draw(st.sampled_from([np.bool_, np.uint8, np.float32, np.float64]))
    floats = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, 1.0, 0.5])
    elements = floats if dtype in (np.float32, np.float64) else None
    prediction = draw(
        arrays(dtype, shape if draw(st.booleans()) else draw(array_shapes(max_dims=3, max_side=5)), elements=elements)
    )
    reference = draw(arrays(np.uint8, shape, elements=st.integers(0, 1) | st.just(2)))
    threshold = draw(st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.5, "0.5", True]))
    return prediction, reference, threshold


@pytest.fixture(scope="module")
def loaded_metrics():
    return {name: metris_metrics.load(name, keep_in_memory=True) for name in metris_metrics.CONFIG_NAMES}


@settings(FUZZ, max_examples=150)
@given(case=metric_inputs(), name=st.sampled_from(metris_metrics.CONFIG_NAMES), as_tensor=st.booleans())
def test_fuzz_metric_inputs(loaded_metrics, case, name, as_tensor):
    prediction, reference, threshold = case
    if as_tensor:
        prediction = torch.from_numpy(np.ascontiguousarray(prediction))
    metric = loaded_metrics[name]
    result = outcome(
        "metric inputs", lambda: metric.compute(predictions=[prediction], references=[reference], threshold=threshold)
    )
    if result is not None:
        for key, value in result.items():
            # gRefCOCO's figures are NaN when nothing was measured (its card says so), never outside [0, 1]
            assert (0.0 <= value <= 1.0) or (math.isnan(value) and name == "grefcoco"), (key, value)


# --------------------------------------------------------------------------------------------------------------
# Config values
# --------------------------------------------------------------------------------------------------------------

CONFIG_FIELDS = [
    "guidance",
    "linguistic_cues",
    "mask_loss",
    "curation_ratio",
    "use_curation",
    "hidden_size",
    "enhancer_rounds",
    "dropout",
    "temperature_init",
    "article_token_ids",
    "ce_class_weights",
    "mlp_ratio",
    "no_target_head",
    "guidence",
    "joint_dim",
]
VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-3, 64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["full", "local", "bce", "0.3"])
    | st.lists(st.integers(0, 9) | st.floats(0, 2) | st.text(max_size=2), max_size=3)
)


@settings(FUZZ, max_examples=150)
@given(field=st.sampled_from(CONFIG_FIELDS), value=VALUES, after=st.booleans())
def test_fuzz_config_values(field, value, after):
    # a wrong type or a bad value is `@strict`'s field error, fields that contradict each other its class error
    # (validate()), as for every transformers config; both are huggingface_hub StrictDataclassErrors
    documented = (StrictDataclassError,)

    def build_and_use() -> MetrisConfig:
        if after:  # an assignment to a built config, then what a model or save_pretrained does with it
            config = tiny_metris_config()
            setattr(config, field, value)
        else:
            config = tiny_metris_config(**{field: value})
        config.validate()
        return config

    result = outcome("config values", build_and_use, documented)
    if result is not None:  # a config that was accepted is a valid one: it loads back equal
        again = MetrisConfig.from_dict(result.to_dict())
        assert again.to_dict() == result.to_dict()


# --------------------------------------------------------------------------------------------------------------
# Pipeline inputs
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return pipeline(TASK, model=str(save_tiny_checkpoint(tmp_path_factory.mktemp("fuzz-model"))))


IMAGES = st.one_of(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3))),  # valid, as often as not
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12))),
    st.builds(lambda w, h: Image.new("RGB", (w, h), "red"), st.integers(1, 12), st.integers(1, 12)),
    arrays(
        st.sampled_from([np.uint8, np.float32, np.float64, np.int32, np.bool_]),
        array_shapes(min_dims=2, max_dims=3, min_side=0, max_side=12),
        elements=None,
    ),
    st.builds(
        lambda w, h, mode: Image.new(mode, (w, h)),
        st.integers(1, 12),
        st.integers(1, 12),
        st.sampled_from(["RGB", "L", "RGBA", "1", "P", "I;16", "F", "CMYK"]),
    ),
    st.text(max_size=10),
    st.none(),
    st.integers(),
)
TEXTS = st.one_of(
    st.sampled_from(["the red box", "a small circle on the left", "x"]),
    st.sampled_from(["the star", "dog"]),
    st.lists(st.sampled_from(["the red box", "the star"]), min_size=1, max_size=3),
    st.text(max_size=30),
    st.lists(st.text(max_size=8), max_size=3),
    st.none(),
    st.integers(),
)
THRESHOLDS = (
    st.none()
    | st.floats(0, 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["0.5", 0.5, 0, 1, True])
)


@settings(FUZZ, max_examples=80)
@given(image=IMAGES, text=TEXTS, threshold=THRESHOLDS)
def test_fuzz_pipeline_inputs(segmenter, image, text, threshold):
    kwargs = {} if threshold is None else {"threshold": threshold}
    result = outcome("pipeline inputs", lambda: segmenter(image, text, **kwargs))
    if result is not None:
        results = result if isinstance(result, list) else [result]
        if isinstance(image, Image.Image):
            size = image.size
        elif image.ndim == 3 and image.shape[-1] not in (1, 2, 3, 4):  # the processor's rule: else C×H×W
            size = (image.shape[2], image.shape[1])
        else:
            size = (image.shape[1], image.shape[0])
        for item in results:
            assert item["mask"].mode == "L" and item["mask"].size == size
            assert set(np.unique(np.asarray(item["mask"]))) <= {0, 255}
            assert 0.0 <= item["score"] <= 1.0
