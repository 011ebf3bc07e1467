"""scripts/train.py's defaults are the authors' recipe; bad numbers are refused at parsing; a run whose loss stops
being finite stops at once, names the batch and keeps what was saved before it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import load_script
from metris_hf import MetrisForReferringSegmentation
from metris_hf.presets import preset_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train.py"
BASE = ["--dataset", "synthetic", "--config_name", "tiny"]
QUICK = [*BASE, "--synthetic_size", "24", "8", "8", "--image_size", "64", "--train_batch_size", "4", "--seed", "7"]

pytestmark = pytest.mark.usefixtures("datasets_cache")


@pytest.fixture(scope="module")
def train():
    return load_script("train")


@pytest.fixture(scope="module")
def tiny_model() -> MetrisForReferringSegmentation:
    torch.manual_seed(0)
    return MetrisForReferringSegmentation(preset_config("tiny"))


def run_train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(TRAIN), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_defaults_are_the_authors_recipe(train, tmp_path):
    args = train.parse_args([*BASE, "--output_dir", str(tmp_path)])
    assert args.train_batch_size == 16 and args.learning_rate == 3e-5 and args.weight_decay == 0.01
    assert args.lr_scheduler_type == "polynomial" and args.lr_power == 0.9 and args.num_warmup_steps == 0
    assert args.mixed_precision == "no" and args.freeze_text_embeddings == "none"
    assert args.weight_decay_exempt == "backbone_norms" and args.sync_batchnorm
    assert args.max_length == 21 and args.sentence_field == "sent" and args.num_train_epochs == 40


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps: must be at least 1, got 0"),
        (["--train_batch_size", "0"], "--train_batch_size: must be at least 1, got 0"),
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size: must be at least 1, got 0"),
        (["--max_eval_samples", "-3"], "--max_eval_samples: must be at least 1, got -3"),
        (["--max_train_steps", "0"], "--max_train_steps: must be at least 1"),
        (["--checkpointing_steps", "0"], "--checkpointing_steps must be a positive integer"),
        (["--learning_rate", "nan"], "--learning_rate: must be a finite number > 0"),
        (["--weight_decay", "-1"], "--weight_decay: must be a finite number >= 0"),
        (["--max_length", "1"], "--max_length: must be at least 2"),
        (["--train_batch_size", "four"], "--train_batch_size: must be an integer, got 'four'"),
        (["--freeze_text_embeddings", "yes"], "invalid choice"),
    ],
)
def test_bad_numbers_are_refused_at_parsing(train, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exited:
        train.parse_args([*BASE, "--output_dir", str(tmp_path / "x"), *extra])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and message in error and "Traceback" not in error
    assert not (tmp_path / "x").exists()


def test_authors_weight_decay_exempts_only_backbone_norms_and_tables(train, tiny_model):
    decay, plain = train.parameter_groups(tiny_model, 0.01)
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    names = {id(param): name for name, param in tiny_model.named_parameters()}
    exempt = {names[id(param)] for param in plain["params"]}
    expected = {
        name
        for name in names.values()
        if name.startswith(("metris.vision_encoder.backbone.", "metris.stage4_block."))
        and ("norm" in name or "relative_position_bias_table" in name)
    }
    assert exempt == expected and len(expected) > 10
    decayed = {names[id(param)] for param in decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt  # every parameter trains
    for name in (
        "metris.decoder.blocks.0.norm_q.weight",
        "classifier.bias",
        "metris.text_encoder.embeddings.LayerNorm.bias",
    ):
        assert name in decayed, name  # BERT's and the decoder's norms and biases decay, as theirs
    assert any(name.endswith("temperature") for name in decayed)  # τ too
    assert any(name.startswith("metris.vision_encoder.fusions.") for name in decayed)


def test_old_weight_decay_grouping_is_an_option(train, tiny_model):
    decay, plain = train.parameter_groups(tiny_model, 0.01, "norms_and_biases")
    names = {id(param): name for name, param in tiny_model.named_parameters()}
    exempt = {names[id(param)] for param in plain["params"]}
    assert "classifier.bias" in exempt and "metris.decoder.blocks.0.norm_q.weight" in exempt
    assert "classifier.weight" in {names[id(param)] for param in decay["params"]}


@pytest.mark.parametrize(
    ("which", "frozen"),
    [
        ("none", set()),
        ("word", {"metris.text_encoder.embeddings.word_embeddings.weight"}),
        (
            "all",
            {
                "metris.text_encoder.embeddings.word_embeddings.weight",
                "metris.text_encoder.embeddings.position_embeddings.weight",
                "metris.text_encoder.embeddings.token_type_embeddings.weight",
                "metris.text_encoder.embeddings.LayerNorm.weight",
                "metris.text_encoder.embeddings.LayerNorm.bias",
            },
        ),
    ],
)
def test_freeze_text_embeddings(train, which, frozen):
    torch.manual_seed(0)
    model = MetrisForReferringSegmentation(preset_config("tiny"))
    train.freeze_text_embeddings(model, which)
    assert {name for name, param in model.named_parameters() if not param.requires_grad} == frozen


def test_cpu_threads_are_the_cores_shared_by_the_local_processes(train, monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
        assert train.set_cpu_threads() == 4
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
        assert train.set_cpu_threads() == 1
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
        assert train.set_cpu_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_a_batch_that_does_not_divide_is_one_line(tmp_path):
    result = run_train(*QUICK, "--gradient_accumulation_steps", "3", "--output_dir", str(tmp_path / "run"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --train_batch_size 4 is not divisible by 1 process(es) × 3 accumulation step(s)"
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path):
    """A learning rate of 1e10: the first step's loss is finite, the second is not. The run stops there,
    names the step and the batch, keeps step_1/ and writes nothing more."""
    out = tmp_path / "run"
    result = run_train(
        *QUICK,
        "--learning_rate",
        "1e10",
        "--max_train_steps",
        "6",
        "--checkpointing_steps",
        "1",
        "--eval_every",
        "0",
        "--output_dir",
        str(out),
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the loss is nan at step 2 (batch of ref ids [") and "Traceback" not in result.stderr
    assert last.endswith(f"training stopped. Last good checkpoint: {out / 'step_1'}")
    assert sorted(p.name for p in out.iterdir()) == ["step_1"]  # no step_2, no final model
