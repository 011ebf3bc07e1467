"""Bad input to the model-side entry points (config, processor/tokenizer, weights, pipeline, metrics): each ends in
a clear error or a visible warning, never in a silently wrong answer."""

from __future__ import annotations

import json
import math
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
from metris_hf.configuration_metris import MetrisConfigTypeError, MetrisConfigValueError
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


def test_tokenizer_with_only_special_tokens_is_refused(checkpoint):
    specials_only = BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])})
    processor = MetrisProcessor(
        image_processor=MetrisImageProcessor(size={"height": SIZE, "width": SIZE}), tokenizer=specials_only
    )
    model = MetrisForReferringSegmentation.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match=r"knows only its special tokens .*every word would become \[UNK\]"):
        pipeline(TASK, model=model, processor=processor)


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
def test_from_pretrained_names_a_missing_local_folder(cls, tmp_path, monkeypatch):
    """Not transformers' "Repo id must use alphanumeric chars": the path is named as a missing local path."""
    monkeypatch.chdir(tmp_path)
    for name in ("./nope", "runs/a/nope", tmp_path / "nope", Path("nope")):
        with pytest.raises(
            FileNotFoundError, match=rf"^{cls.__name__}\.from_pretrained: \S*nope: no such file or folder"
        ):
            cls.from_pretrained(name)


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
    "field, value",
    [
        ("use_curation", "no"),
        ("curation_ratio", "0.3"),
        ("hidden_size", 32.5),
        ("guidance", 3),
        ("article_token_ids", ["a"]),
        ("no_target_head", 1),
    ],
)
def test_wrong_config_types_raise_naming_the_field(field, value):
    with pytest.raises(StrictDataclassFieldValidationError, match=rf"`{field}` must be of type"):
        tiny_metris_config(**{field: value})
    config = tiny_metris_config()
    before = getattr(config, field)
    with pytest.raises(StrictDataclassFieldValidationError, match=rf"`{field}` must be of type"):
        setattr(config, field, value)
    assert getattr(config, field) == before


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("use_curation", "no", "bool"),
        ("curation_ratio", "0.3", "float | int"),
        ("hidden_size", 32.5, "int"),
        ("article_token_ids", ["a"], "list[int] | tuple[int, ...]"),
        ("backbone_kwargs", [1], "dict | None"),
    ],
)
def test_a_wrong_config_type_is_a_type_error_naming_field_value_and_type(field, value, expected):
    """`except TypeError` catches it (Python's exception for a wrong type; huggingface_hub's own derives from
    Exception only), at construction and on assignment, and the message says what was expected."""
    message = f"`{field}` must be of type {expected}, got {type(value).__name__} {value!r}"
    for attempt in ("construction", "assignment"):
        try:
            if attempt == "construction":
                tiny_metris_config(**{field: value})
            else:
                setattr(tiny_metris_config(), field, value)
        except TypeError as error:  # what a user writes
            assert isinstance(error, MetrisConfigTypeError) and isinstance(error, StrictDataclassFieldValidationError)
            assert str(error) == message and error.field == field, attempt
        else:
            pytest.fail(f"{field}={value!r} accepted at {attempt}")


def test_fields_that_contradict_each_other_are_a_value_error_on_validate_and_save(tmp_path):
    """Changed one by one, each field passes; `validate()` / `save_pretrained` then raise a ValueError (also
    huggingface_hub's `StrictDataclassClassValidationError`) naming the fields, and nothing is written."""
    config = tiny_metris_config()
    config.temperature_min = 0.9  # above temperature_init (0.1)
    match = r"^`temperature_init` must lie in \[`temperature_min`, `temperature_max`\] .* got 0\.1 in \[0\.9, 0\.5\]$"
    for action in (config.validate, lambda: config.save_pretrained(tmp_path / "saved")):
        with pytest.raises(ValueError, match=match) as caught:
            action()
        assert isinstance(caught.value, (MetrisConfigValueError, StrictDataclassClassValidationError))
    assert not (tmp_path / "saved" / "config.json").exists()


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("guidance", "bogus", r"`guidance` must be one of"),
        ("curation_ratio", 1.5, r"`curation_ratio` must be in \(0, 1\]"),
        ("curation_ratio", math.nan, r"`curation_ratio` must be a finite number"),
        ("dropout", -0.1, r"`dropout` must be in \[0, inf\]"),
        ("enhancer_rounds", -1, r"`enhancer_rounds` must be an integer >= 0"),
        ("mask_loss", "dice", r"`mask_loss` must be one of"),
    ],
)
def test_bad_config_values_raise_at_construction_and_on_assignment(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_metris_config(**{field: value})
    config = tiny_metris_config()
    before = getattr(config, field)
    with pytest.raises(ValueError, match=match):
        setattr(config, field, value)
    assert getattr(config, field) == before  # the bad value never reaches a model


def test_a_loaded_model_cannot_be_switched_to_a_bogus_guidance(checkpoint):
    model = MetrisForReferringSegmentation.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match=r"`guidance` must be one of"):
        model.config.guidance = "bogus"
    assert model.config.guidance == "full"


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


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"temperature_min": 0.9},
            r"inconsistent state: `temperature_init` must lie in .* got 0\.1 in \[0\.9, 0\.5\]",
        ),
        (
            {"temperature_max": 0.05},
            r"inconsistent state: `temperature_init` must lie in .* got 0\.1 in \[0\.001, 0\.05\]",
        ),
        ({"num_attention_heads": 5}, r"`hidden_size` \(32\) must be divisible by `num_attention_heads` \(5\)"),
        ({"ce_class_weights": [1.0]}, r"`ce_class_weights` must hold 2 weights \(background, object\), got \[1\.0\]"),
        ({"guidance": "pure_le"}, r"guidance was changed to 'pure_le', but this model was built for 'full'"),
        ({"guidance": "enhanced_le"}, r"guidance was changed to 'enhanced_le', but this model was built for 'full'"),
        ({"mask_loss": "bce"}, r"mask_loss was changed to 'bce', but this model was built for 'weighted_ce'"),
    ],
    ids=["t_min_above_init", "t_max_below_init", "heads", "ce_weights", "pure_le", "enhanced_le", "mask_loss"],
)
def test_a_loaded_model_does_not_run_a_config_changed_into_an_inconsistent_state(loaded, changes, match):
    """Each assignment passes its own check; the forward (of the head model and of the base model) refuses to run,
    rather than clamping τ to an empty range, training with BCE on the background logit of a two-class head, or
    running a "pure_le" that still feeds the decoder enhanced pixels. Put back, the model runs as before."""
    model, expected = loaded
    inputs = _inputs()
    saved = {field: getattr(model.config, field) for field in changes}
    try:
        for field, value in changes.items():
            setattr(model.config, field, value)
        labels = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
        with pytest.raises(ValueError, match=match):
            model(**inputs, labels=labels)
        if "mask_loss" not in changes:  # the base model has no classifier
            with pytest.raises(ValueError, match=match):
                model.metris(**inputs)
    finally:
        for field, value in saved.items():
            setattr(model.config, field, value)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)


def test_a_two_class_model_switched_to_bce_does_not_train_on_its_background_logit():
    """A weighted_ce model has two output classes; BCE would read class 0 (background) as the object's logit."""
    torch.manual_seed(0)
    model = MetrisForReferringSegmentation(tiny_metris_config(mask_loss="weighted_ce"))
    model.config.mask_loss = "bce"
    with pytest.raises(
        ValueError, match=r"mask_loss was changed to 'bce', but this model was built for 'weighted_ce' "
    ):
        model(**_inputs(), labels=torch.ones(1, SIZE, SIZE, dtype=torch.long))


def test_runtime_switches_still_change_a_loaded_model(loaded):
    """The check refuses only contradictions: fields a forward reads on their own (the VEE's curation switch, τ's
    clamp) still take effect on a built model."""
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


def test_a_config_changed_after_construction_is_checked_whole_when_a_model_is_built():
    config = tiny_metris_config()
    config.num_attention_heads = 5
    with pytest.raises(ValueError, match=r"`hidden_size` \(32\) must be divisible by `num_attention_heads` \(5\)"):
        MetrisForReferringSegmentation(config)
