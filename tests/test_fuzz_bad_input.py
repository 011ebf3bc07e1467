"""Fuzz tests for the second round of hostile input (docs/errors.md): a processor against its model, target sizes,
image paths in dataset copies, REFER and Parquet records that contradict themselves, and the converter's loader.
Whatever the input, the outcome is a checked result or a ValueError naming the field, record or file; each test
is bounded (≤ 40 examples, well under 30 s on a CPU)."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import REFCOCO_REFS, build_tiny_tokenizer, instances, load_script
from metris_hf import MetrisImageProcessorPil, MetrisProcessor
from metris_hf.data.parquet import parquet_tasks
from metris_hf.data.refer import build_tasks
from metris_hf.data.schema import image_within
from metris_hf.image_io import MAX_INPUT_SIDE
from metris_hf.image_processing_metris import MAX_TARGET_PIXELS
from metris_hf.processing_metris import check_processor_for_model
from metris_hf.testing_utils import tiny_metris_config

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**7), 10**7),
    st.sampled_from([0, 0.0, 1e-30, 1e30, -1.0, 1 / 255, 0.229, True]),
)


@pytest.fixture(scope="module")
def config():
    return tiny_metris_config()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@FUZZ
@given(
    max_length=st.one_of(st.integers(-3, 200), st.sampled_from([0, 1, 2, 64, 65, 10**6])),
    side=st.one_of(st.integers(-10, 5000), st.sampled_from([0, 64, MAX_INPUT_SIDE, MAX_INPUT_SIDE + 1, 10**6])),
    std=NUMBERS,
    mean=NUMBERS,
    factor=NUMBERS,
)
def test_fuzz_processor_against_model(config, tokenizer, max_length, side, std, mean, factor):
    image_processor = MetrisImageProcessorPil(size={"height": 64, "width": 64})
    image_processor.size = {"height": side, "width": side}
    image_processor.image_std, image_processor.image_mean = [std] * 3, [mean] * 3
    image_processor.rescale_factor = factor
    processor = MetrisProcessor(image_processor=image_processor, tokenizer=copy.deepcopy(tokenizer))
    processor.tokenizer.init_kwargs["max_length"] = max_length

    def finite(value, positive=False):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok and (value > 0 or not positive)

    valid = (
        2 <= max_length <= config.text_config.max_position_embeddings
        and 1 <= side <= MAX_INPUT_SIDE
        and finite(std, positive=True)
        and finite(mean)
        and finite(factor, positive=True)
        and factor <= 1
    )
    try:
        check_processor_for_model(processor, config, "FOLDER")
    except ValueError as error:
        assert not valid, f"refused a valid processor: {error}"
        message = str(error)
        assert message.startswith("FOLDER: ") and ("tokenizer_config.json" in message or "image_processor" in message)
        return
    assert valid, "accepted an invalid processor"


@FUZZ
@given(
    height=st.one_of(st.integers(-3, 2500), st.integers(MAX_TARGET_PIXELS // 1000, 10**9)),
    width=st.one_of(st.integers(-3, 2500), st.integers(1000, 10**9)),
    no_target=st.booleans(),
)
def test_fuzz_target_sizes(height, width, no_target):
    processor = MetrisImageProcessorPil(size={"height": 64, "width": 64})
    outputs = {"logits": torch.linspace(-3, 3, 16 * 16).reshape(1, 1, 16, 16)}
    if no_target:
        outputs["no_target_logits"] = torch.tensor([2.0])
    if height * width > 2500 * 2500 and height > 0 and width > 0 and height * width <= MAX_TARGET_PIXELS:
        height = 2500  # an allowed size, kept small enough to build here
        width = min(width, 2500)
    try:
        (result,) = processor.post_process_referring_segmentation(outputs, [(height, width)], return_scores=True)
    except ValueError as error:
        assert height <= 0 or width <= 0 or height * width > MAX_TARGET_PIXELS, error
        assert f"{height}" in str(error)
        return
    assert result["mask"].shape == (height, width) and 0.0 <= result["score"] <= 1.0
    assert not no_target or not bool(result["mask"].any())


@FUZZ
@given(name=st.one_of(st.text(alphabet="./\\a~:", max_size=12), st.sampled_from(["/etc/passwd", "a/../..", ""])))
def test_fuzz_image_paths_stay_inside_the_root(name):
    root = Path("/data/images")
    try:
        path = image_within(root, name)
    except ValueError as error:
        assert "not inside the image folder" in str(error) or "non-empty text" in str(error)
        return
    assert os.path.normpath(path).startswith(str(root) + os.sep) or os.path.normpath(path) == str(root)


ANN_IDS = st.one_of(st.none(), st.integers(-3, 40), st.lists(st.one_of(st.none(), st.integers(-2, 40)), max_size=3))
SENTENCES = st.lists(
    st.one_of(st.sampled_from(["", "  ", "the box"]), st.fixed_dictionaries({"raw": st.sampled_from(["", " ", "x"])})),
    max_size=3,
)


@FUZZ
@given(
    ann_id=ANN_IDS,
    no_target=st.booleans(),
    sentences=SENTENCES,
    duplicate=st.sampled_from([None, "images", "annotations"]),
    same=st.booleans(),
    file_name=st.sampled_from([None, "x.jpg", "../x.jpg", "/abs.jpg", "a/../b.jpg"]),
)
def test_fuzz_refer_records(ann_id, no_target, sentences, duplicate, same, file_name):
    data = copy.deepcopy(instances())
    if duplicate:
        data[duplicate].append(
            dict(data[duplicate][0], **({} if same else {"bbox" if duplicate == "annotations" else "width": 7}))
        )
    if file_name is not None:
        data["images"][0]["file_name"] = file_name
    ref = dict(REFCOCO_REFS[0], ann_id=ann_id, no_target=no_target, sentences=sentences)
    try:
        tasks = build_tasks([ref], data, Path("/images"), "refs(unc).p")
    except ValueError as error:
        message = str(error)
        assert "refs(unc).p: ref 100: " in message or "instances.json: " in message, message
        return
    (task,) = tasks["train"]
    assert task["sentences"] and all(s.strip() for s in task["sentences"])
    assert os.path.normpath(task["image_path"]).startswith("/images/")
    assert task["no_target"] or task["ann_ids"]
    assert not (duplicate and not same)


@FUZZ
@given(
    ann_id=st.one_of(st.none(), st.integers(-3, 20), st.sampled_from(["11", 1.5, True])),
    sentences=SENTENCES,
    raw_anns=st.sampled_from(["", "[]", "null", "[1]", "[" * 3000 + "]" * 3000, "{bad json"]),
)
def test_fuzz_parquet_records(ann_id, sentences, raw_anns):
    batch = {
        "ref_id": [100],
        "image_id": [1],
        "ann_id": [ann_id],
        "sentences": [sentences],
        "raw_anns": [raw_anns],
        "raw_image_info": [json.dumps({"id": 1, "height": 48, "width": 64})],
        "_image_path": ["/images/x.jpg"],
    }
    try:
        (task,) = parquet_tasks([{key: value for key, (value,) in batch.items()}], source="FILE")
    except ValueError as error:
        assert str(error).startswith("FILE: ref 100: "), error
        return
    assert task["sentences"] and task["no_target"] and task["ann_ids"] == []


def _load_converter():
    return load_script("convert_authors_checkpoint")


@FUZZ
@given(
    head=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x89PNG", b"{}"]),
    body=st.binary(max_size=300),
)
def test_fuzz_converter_input(tmp_path_factory, head, body):
    convert = (
        _load_converter() if not hasattr(test_fuzz_converter_input, "module") else test_fuzz_converter_input.module
    )
    test_fuzz_converter_input.module = convert
    path = tmp_path_factory.mktemp("pth") / "model.pth"
    path.write_bytes(head + body)
    try:
        state = convert.load_authors_state_dict(path)
    except ValueError as error:
        assert str(path) in str(error)
        return
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
