"""Bad command lines and folders: `metris-segment`, scripts/train.py and scripts/run_evaluation.py name the problem
and the expected input, before anything heavy runs (called in-process through their `main` / `parse_args`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import load_script
from metris_hf import cli, embedded_checkpoint
from metris_hf.folders import folder_kind


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A model folder (the embedded checkpoint), an Accelerate state folder, a folder without config.json."""
    root = tmp_path_factory.mktemp("folders")
    model = Path(shutil.copytree(embedded_checkpoint(), root / "model"))
    state = root / "run" / "step_10"
    state.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl"):
        (state / name).write_bytes(b"x")
    (state / "progress.json").write_text(json.dumps({"completed_steps": 10}))
    other = root / "no_config"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"x")
    return {"model": model, "state": state, "other": other, "missing": root / "nope"}


def test_folder_kinds(folders):
    assert {name: folder_kind(path) for name, path in folders.items()} == {
        "model": "model",
        "state": "training_state",
        "other": "other",
        "missing": "missing",
    }


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "2"], "--threshold must lie in [0, 1], got 2.0"),
        (["--threshold", "nan"], "--threshold must lie in [0, 1], got nan"),
        (["--threshold", "half"], "argument --threshold: invalid float value: 'half'"),
        (["--output", "mask.jpg"], "masks are written as PNG (lossless); name it mask.png"),
        (["--output", "mask.JPEG"], "name it mask.png"),
        (["--device", "cuda:0"], "--device cuda:0: no CUDA GPU is available here"),
        (["--device", "gpu"], "--device gpu: not a device name"),
        (["--model", "MISSING"], "no such folder (expected a model checkpoint"),
        (["--model", "NO_CONFIG"], "has no config.json: it is not a model checkpoint"),
        (["--model", "STATE"], "is an Accelerate training state"),
    ],
)
def test_cli_refuses_bad_arguments(image, folders, tmp_path, capsys, extra, message):
    if extra[:2] == ["--device", "cuda:0"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    extra = [
        {"MISSING": str(folders["missing"]), "NO_CONFIG": str(folders["other"]), "STATE": str(folders["state"])}.get(
            a, a
        )
        for a in extra
    ]
    if "--output" in extra:
        extra[1] = str(tmp_path / extra[1])
        message = message.replace("mask.png", str(tmp_path / "mask.png"))
    code, err = run_cli(["--image", str(image), "--text", "the red circle", *extra], capsys)
    assert code == 2 and message in err, err
    assert not list(tmp_path.glob("mask*"))  # nothing written


def test_cli_help_explains_threshold(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--threshold THRESHOLD probability above which a pixel belongs to the mask, in [0, 1]" in help_text


def test_cli_output_without_suffix_becomes_png(image, tmp_path, capsys):
    assert cli.main(["--image", str(image), "--text", "the red circle", "--output", str(tmp_path / "mask")]) == 0
    written = Image.open(tmp_path / "mask.png")
    assert written.format == "PNG" and written.size == (40, 30)


def test_cli_model_with_corrupt_weights_is_one_line(image, folders, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = Path(shutil.copytree(folders["model"], tmp_path / "nan-model"))
    weights = load_file(broken / "model.safetensors")
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    code, err = run_cli(["--image", str(image), "--text", "a star", "--model", str(broken)], capsys)
    assert code == 1 and "weights hold non-finite values" in err and first in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------------------
# scripts/train.py and scripts/run_evaluation.py
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train():
    return load_script("train")


@pytest.fixture(scope="module")
def evaluate_script():
    return load_script("run_evaluation")


def test_resume_from_a_model_folder_is_named(train, folders, tmp_path, capsys):
    base = ["--dataset", "synthetic", "--config_name", "tiny", "--output_dir", str(tmp_path)]
    for folder, message in [
        (folders["model"], "is a model checkpoint (config.json + weights"),
        (folders["other"], "is not an Accelerate training state"),
        (folders["missing"], "no such folder"),
    ]:
        with pytest.raises(SystemExit) as exited:
            train.parse_args([*base, "--resume_from_checkpoint", str(folder)])
        assert exited.value.code == 2 and message in capsys.readouterr().err
    assert train.parse_args([*base, "--resume_from_checkpoint", str(folders["state"])]).resume_from_checkpoint


def test_train_model_name_or_path_must_be_a_model(train, folders, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(
            ["--dataset", "synthetic", "--model_name_or_path", str(folders["state"]), "--output_dir", str(tmp_path)]
        )
    assert "is an Accelerate training state" in capsys.readouterr().err


@pytest.mark.parametrize("config_name, size, ok", [("small", 64, False), ("small", 128, True), ("tiny", 48, True)])
def test_train_checks_image_size_against_the_backbone(train, tmp_path, config_name, size, ok):
    args = train.parse_args(
        [
            "--dataset",
            "synthetic",
            "--config_name",
            config_name,
            "--image_size",
            str(size),
            "--output_dir",
            str(tmp_path),
        ]
    )
    if ok:
        train.build_config_checked(args)
        return
    with pytest.raises(
        SystemExit, match=r"--image_size 64: this backbone takes only 128×128 inputs .*absolute position"
    ):
        train.build_config_checked(args)


@pytest.mark.parametrize(
    "overrides, message",
    [("use_curation=no", r"field 'use_curation': TypeError: .*expected bool"), ("guidance=bogus", r"guidance.*bogus")],
)
def test_train_names_a_bad_config_override(train, tmp_path, overrides, message):
    args = train.parse_args(
        [
            "--dataset",
            "synthetic",
            "--config_name",
            "tiny",
            "--output_dir",
            str(tmp_path),
            "--config_overrides",
            overrides,
        ]
    )
    with pytest.raises(SystemExit, match=rf"--config_overrides: .*{message}"):
        train.build_config_checked(args)


def test_evaluate_refuses_a_training_state_and_a_bad_threshold(evaluate_script, folders, capsys):
    base = ["--dataset", "synthetic"]
    with pytest.raises(SystemExit):
        evaluate_script.parse_args([*base, "--model_name_or_path", str(folders["state"])])
    err = capsys.readouterr().err
    assert "step_10 is an Accelerate training state" in err and "not a model checkpoint" in err
    with pytest.raises(SystemExit):
        evaluate_script.parse_args([*base, "--model_name_or_path", str(folders["model"]), "--threshold", "1.5"])
    assert "threshold must lie in [0, 1]" in capsys.readouterr().err


def test_evaluate_result_names_distinguish_runs(evaluate_script, folders, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    model = str(folders["model"])

    def stem(*extra: str) -> str:
        return evaluate_script.results_stem(evaluate_script.parse_args(["--model_name_or_path", model, *extra]))

    stems = {
        stem("--dataset", "refcoco", "--data_root", str(tmp_path / "a")),
        stem("--dataset", "refcoco", "--data_root", str(tmp_path / "b")),  # other data
        stem("--dataset", "refcoco", "--data_root", str(tmp_path / "a"), "--split_by", "google"),
        stem("--dataset", "refcoco", "--data_root", str(tmp_path / "a"), "--threshold", "0.4"),
        stem("--dataset", "refcoco", "--data_root", str(tmp_path / "a"), "--max_eval_samples", "10"),
        stem("--dataset", "refcoco", "--data_root", str(tmp_path / "a"), "--eval_resolution", "original"),
        stem("--dataset", "synthetic"),
        stem("--dataset", "synthetic", "--synthetic_seed", "1"),
    }
    assert len(stems) == 8
    assert stem("--dataset", "refcoco", "--data_root", str(tmp_path / "a")).startswith("results_refcoco-unc_model_")
