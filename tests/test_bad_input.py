"""Bad input to the model-side entry points (config, processor/tokenizer, weights, pipeline, metrics): each ends in
a clear error or a visible warning, never in a silently wrong answer."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from PIL import Image
from transformers import AutoProcessor, BertTokenizer, pipeline
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

from helpers import build_tiny_tokenizer, save_tiny_checkpoint
from metris_hf import MetrisConfig, MetrisForReferringSegmentation, MetrisModel
from metris_hf import metrics as metris_metrics
from metris_hf.folders import check_model_source
from metris_hf.image_processing_metris import MetrisImageProcessor
from metris_hf.pipeline_metris import TASK
from metris_hf.processing_metris import MetrisProcessor
from metris_hf.testing_utils import tiny_metris_config

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------------------
# Tokenizer: missing vocabulary, another model's vocabulary
# --------------------------------------------------------------------------------------------------------------


def test_checkpoint_without_tokenizer_vocabulary_is_an_error(checkpoint, tmp_path):
    broken = Path(shutil.copytree(checkpoint, tmp_path / "no-vocab"))
    (broken / "tokenizer.json").unlink()
    (broken / "vocab.txt").unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"no-vocab: no tokenizer vocabulary \(tokenizer\.json or vocab\.txt\)"):
        AutoProcessor.from_pretrained(broken)
    with pytest.raises(ValueError, match=r"no tokenizer vocabulary"):
        pipeline(TASK, model=str(broken))


def test_tokenizer_with_only_special_tokens_is_refused():
    """Refused when the processor is built (so before any pipeline), as when loaded from a folder without it."""
    specials_only = BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])})
    with pytest.raises(ValueError, match=r"knows only its special tokens .*every word would become \[UNK\]"):
        MetrisProcessor(
            image_processor=MetrisImageProcessor(size={"height": SIZE, "width": SIZE}), tokenizer=specials_only
        )


def test_tokenizer_of_another_model_is_refused(tmp_path):
    words = [f"word{i}" for i in range(300)]  # ids past the tiny text encoder's 256 embeddings
    big = BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])})
    folder = save_tiny_checkpoint(tmp_path / "mismatch", tokenizer=big)
    with pytest.raises(ValueError, match=r"tokenizer's ids reach 304 but the model's text encoder has 256 embeddings"):
        pipeline(TASK, model=str(folder))


# --------------------------------------------------------------------------------------------------------------
# A local folder that does not exist
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [MetrisConfig, MetrisForReferringSegmentation, MetrisModel, MetrisProcessor, MetrisImageProcessor],
    ids=lambda cls: cls.__name__,
)
def test_from_pretrained_of_a_missing_local_folder_names_it(cls, tmp_path):
    """transformers' own error, as for every transformers class: the path is read as a Hub id, and the OSError (or,
    from the processor, huggingface_hub's HFValidationError, a ValueError) names it."""
    with pytest.raises((OSError, ValueError), match="nope"):
        cls.from_pretrained(str(tmp_path / "nope"))


def test_pipeline_on_a_missing_folder_is_transformers_message_and_check_model_source_names_it(tmp_path):
    """`pipeline()` resolves the config with AutoConfig before it looks up the task, so no code of ours runs
    first: its message stays transformers' (docs/errors.md says so); `check_model_source` is the clear check."""
    missing = str(tmp_path / "nope")
    with pytest.raises(OSError, match=r"Repo id must"):
        pipeline(TASK, model=missing)
    with pytest.raises(FileNotFoundError, match=r"nope: no such folder \(expected a model checkpoint"):
        check_model_source(missing, "model")


# --------------------------------------------------------------------------------------------------------------
# Non-finite weights and logits; the pipeline's threshold
# --------------------------------------------------------------------------------------------------------------


def test_non_finite_weights_are_reported_by_the_pipeline(tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "nan", poison=True)
    with pytest.raises(ValueError, match=r"weights hold non-finite values \(NaN or inf\) in 1 tensor\(s\): "):
        pipeline(TASK, model=str(folder))


def test_non_finite_logits_are_an_error_not_an_empty_mask():
    processor = MetrisProcessor(
        image_processor=MetrisImageProcessor(size={"height": SIZE, "width": SIZE}), tokenizer=build_tiny_tokenizer()
    )
    logits = torch.zeros(3, 1, 16, 16)
    logits[1, 0, 2, 3] = float("nan")
    logits[2, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) for example\(s\) \[1, 2\]"):
        processor.post_process_referring_segmentation({"logits": logits}, target_sizes=[(8, 8)] * 3)


@pytest.mark.parametrize("threshold", ["0.5", 1.5, -0.1, float("nan"), True, None])
def test_pipeline_threshold_is_checked_up_front(checkpoint, photo, threshold):
    segmenter = pipeline(TASK, model=str(checkpoint))
    if threshold is None:  # the default: a correct answer
        result = segmenter(photo, "the red box")
        assert result["mask"].size == photo.size and 0 <= result["score"] <= 1
        return
    with pytest.raises(ValueError, match=r"threshold must (be a number in|lie in) \[0, 1\]"):
        segmenter(photo, "the red box", threshold=threshold)


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------

MASK = np.zeros((4, 4), dtype=bool)
MASK[1:3, 1:3] = True


@pytest.mark.parametrize("name", ["refcoco", "grefcoco"])
def test_metrics_refuse_nan_probabilities_and_thresholds_outside_0_1(name):
    metric = metris_metrics.load(name, keep_in_memory=True)
    probabilities = MASK * 0.9
    probabilities[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"prediction of sample 0 holds NaN or inf"):
        metric.compute(predictions=[probabilities], references=[MASK], threshold=0.5)
    with pytest.raises(ValueError, match=r"prediction of sample 0 holds NaN or inf"):
        metric.compute(predictions=[torch.from_numpy(probabilities)], references=[MASK], threshold=0.5)
    for threshold in (1.5, -0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\]"):
            metric.compute(predictions=[MASK * 0.9], references=[MASK], threshold=threshold)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\]"):
        metris_metrics.load(name, keep_in_memory=True, threshold=2)
    result = metric.compute(predictions=[MASK * 0.9], references=[MASK], threshold=0.5)  # the valid call works
    assert result[{"refcoco": "oIoU", "grefcoco": "cIoU"}[name]] == 1.0


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------

config_logger = hf_logging.get_logger("metris_hf.configuration_metris")


def test_unknown_config_keys_warn_naming_them(tmp_path):
    with CaptureLogger(config_logger) as captured:
        tiny_metris_config(guidence="full")
    assert "unknown key(s) 'guidence' (did you mean 'guidance'?)" in captured.out
    tiny_metris_config().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["curation_ration"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(data))
    with CaptureLogger(config_logger) as captured:
        MetrisConfig.from_pretrained(tmp_path)
    assert "unknown key(s) 'curation_ration' (did you mean 'curation_ratio'?)" in captured.out
    with CaptureLogger(config_logger) as captured:  # a clean round trip warns about nothing
        tiny_metris_config().save_pretrained(tmp_path / "clean")
        MetrisConfig.from_pretrained(tmp_path / "clean")
    assert "unknown key" not in captured.out


@pytest.mark.parametrize(
    "field, value, cause",
    [
        ("use_curation", "no", "expected bool"),
        ("curation_ratio", "0.3", "doesn't match any type"),
        ("hidden_size", 32.5, "expected int"),
        ("guidance", "bogus", "expected one of"),
        ("mask_loss", "dice", "expected one of"),
        ("linguistic_cues", "some", "expected one of"),
        ("article_token_ids", ["a"], "doesn't match any type"),
        ("no_target_head", 1, "expected bool"),
        ("curation_ratio", math.nan, "greater than 0 and smaller or equal to 1, got nan"),
        ("curation_ratio", 1.5, "greater than 0 and smaller or equal to 1, got 1.5"),
        ("curation_ratio", 0.0, "greater than 0 and smaller or equal to 1, got 0.0"),
        ("contrastive_loss_weight", -1.0, "greater or equal to 0"),
        ("dropout", 5, "probability between 0.0 and 1.0, got 5"),
        ("attention_dropout", 2, "probability between 0.0 and 1.0, got 2"),
        ("drop_path_rate", 3, "smaller than 1, got 3"),
        ("initializer_range", -1, "greater or equal to 0 and smaller or equal to 1, got -1"),
        ("initializer_range", math.nan, "got nan"),
        ("temperature_min", 1e-300, "greater or equal to 0.0001"),
        ("hidden_size", 10**6, "smaller or equal to 8192, got 1000000"),
        ("enhancer_rounds", 10**6, "smaller or equal to 64, got 1000000"),
        ("enhancer_rounds", -1, "greater or equal to 0"),
        ("ce_class_weights", [math.nan, 1.0], "2 finite weights >= 0"),
        ("ce_class_weights", [-1.0, 1.0], "2 finite weights >= 0"),
        ("ce_class_weights", [0.0, 0.0], "not both 0, got [0.0, 0.0]"),
        ("ce_class_weights", [1.0], "must hold 2 finite weights"),
        ("mask_loss_weight", math.inf, "smaller or equal to 1000"),
    ],
)
def test_a_bad_config_field_is_refused_at_construction_and_on_assignment(field, value, cause):
    """`@strict`'s field validators: the error names the field and the reason; a refused value is never stored."""
    message = f"Validation error for field '{field}':"
    with pytest.raises(StrictDataclassFieldValidationError, match=re.escape(message)) as caught:
        tiny_metris_config(**{field: value})
    assert cause in str(caught.value)
    config = tiny_metris_config()
    before = getattr(config, field)
    with pytest.raises(StrictDataclassFieldValidationError, match=re.escape(message)):
        setattr(config, field, value)
    assert getattr(config, field) == before


def test_fields_that_contradict_each_other_are_refused_on_validate_save_and_build(tmp_path):
    """Changed one by one, each field passes its own check; `validate()`, `save_pretrained` and building a model
    then refuse the config (`validate_architecture`), naming the fields, and nothing is written."""
    config = tiny_metris_config()
    config.temperature_min = 0.9  # above temperature_init (0.1)
    match = r"`temperature_init` must lie in \[`temperature_min`, `temperature_max`\], got 0\.1 in \[0\.9, 0\.5\]"
    for action in (config.validate, lambda: config.save_pretrained(tmp_path / "saved")):
        with pytest.raises(StrictDataclassClassValidationError, match=match):
            action()
    assert not (tmp_path / "saved" / "config.json").exists()
    config = tiny_metris_config()
    config.num_attention_heads = 5
    with pytest.raises(StrictDataclassClassValidationError, match=r"`hidden_size` \(32\) must be divisible by"):
        MetrisForReferringSegmentation(config)


def _inputs() -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.tensor([[2, 10, 11, 12, 3]])
    return {"pixel_values": torch.randn(1, 3, SIZE, SIZE, generator=generator), "input_ids": input_ids}


@pytest.fixture(scope="module")
def loaded(checkpoint) -> tuple[MetrisForReferringSegmentation, torch.Tensor]:
    """The checkpoint's model and its logits on `_inputs()`; a test that changes the config puts it back."""
    model = MetrisForReferringSegmentation.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return model, model(**_inputs()).logits


def test_a_loaded_model_runs_what_it_was_built_for(loaded):
    """`guidance` and `mask_loss` are read when the modules are built: changing them on a built model changes
    nothing (a "pure_le" run of a "full" model would still feed the decoder enhanced pixels; BCE would read a
    two-class head's background logit), so the loss and logits stay the model's own."""
    model, expected = loaded
    labels = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    with torch.no_grad():
        loss = model(**_inputs(), labels=labels).loss
    saved = model.config.guidance, model.config.mask_loss
    assert saved == ("full", "weighted_ce")
    try:
        model.config.guidance, model.config.mask_loss = "pure_le", "bce"
        with torch.no_grad():
            changed = model(**_inputs(), labels=labels)
    finally:
        model.config.guidance, model.config.mask_loss = saved
    torch.testing.assert_close(changed.logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(changed.loss, loss, rtol=0, atol=0)


def test_runtime_switches_still_change_a_loaded_model(loaded):
    """Fields a forward reads (the VEE's curation switch, τ's clamp) take effect on a built model."""
    model, before = loaded
    changes = {"use_curation": False, "temperature_min": 0.05, "temperature_max": 0.2}  # τ's init (0.1) inside
    saved = {field: getattr(model.config, field) for field in changes}
    try:
        for field, value in changes.items():
            setattr(model.config, field, value)
        with torch.no_grad():
            after = model(**_inputs()).logits
    finally:
        for field, value in saved.items():
            setattr(model.config, field, value)
    assert not torch.equal(before, after)
