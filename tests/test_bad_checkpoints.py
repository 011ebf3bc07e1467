"""Checkpoint folders whose parts disagree: each is named (file and field) when the pipeline is built, or by
`metris-segment` in one line, instead of a tensor-size error, NaN logits or a terabyte allocation later."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from transformers import pipeline

from helpers import save_tiny_checkpoint
from metris_hf import cli
from metris_hf.processing_metris import check_processor_for_model
from metris_hf.testing_utils import tiny_metris_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "model")


def edit_json(name: str, key: str, value):
    def edit(path: Path) -> None:
        data = json.loads((path / name).read_text())
        target = data["image_processor"] if name == "processor_config.json" else data
        target[key] = value
        (path / name).write_text(json.dumps(data))

    return edit


def truncate(path: Path) -> None:
    text = (path / "tokenizer.json").read_text()
    (path / "tokenizer.json").write_text(text[: len(text) // 2])


CASES = {
    "max_length past the positions": (
        edit_json("tokenizer_config.json", "max_length", 100),
        r"tokenizer_config.json max_length 100 is longer than the text encoder's position table "
        r"\(config.json text_config.max_position_embeddings = \d+\)",
    ),
    "max_length 0": (edit_json("tokenizer_config.json", "max_length", 0), r"max_length is 0; .* at least 2 tokens"),
    "max_length 1": (edit_json("tokenizer_config.json", "max_length", 1), r"max_length is 1; .* at least 2 tokens"),
    "image_std 0": (
        edit_json("processor_config.json", "image_std", [0.2, 0.0, 0.2]),
        r"processor_config.json image_processor.image_std is .*> 0",
    ),
    "rescale_factor 1e30": (
        edit_json("processor_config.json", "rescale_factor", 1e30),
        r"image_processor.rescale_factor is 1e\+30; it must lie in \(0, 1\]",
    ),
    "negative size": (
        edit_json("processor_config.json", "size", {"height": -64, "width": 64}),
        r"image_processor.size\['height'\] is -64",
    ),
    "10^6 size": (
        edit_json("processor_config.json", "size", {"height": 64, "width": 10**6}),
        r"image_processor.size\['width'\] is 1000000; .* 1 … 4096",
    ),
    # transformers' own JSONDecodeError (a ValueError): it says where in the file, not which file
    "truncated tokenizer.json": (truncate, r": line \d+ column \d+ \(char \d+\)$"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_disagreeing_folder_is_named_when_the_pipeline_is_built(folder, tmp_path, case):
    edit, message = CASES[case]
    broken = Path(shutil.copytree(folder, tmp_path / "broken"))
    edit(broken)
    with pytest.raises(ValueError, match=message):
        pipeline("referring-image-segmentation", model=str(broken))


def test_metris_segment_says_it_in_one_line(folder, tmp_path, capsys):
    broken = Path(shutil.copytree(folder, tmp_path / "broken"))
    edit_json("processor_config.json", "image_std", [0.0, 0.0, 0.0])(broken)
    Image.new("RGB", (20, 10), "red").save(tmp_path / "image.png")
    with pytest.raises(SystemExit) as exited:
        cli.main(["--image", str(tmp_path / "image.png"), "--text", "a star", "--model", str(broken)])
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "image_processor.image_std" in err and str(broken) in err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]  # progress bar
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("metris-segment: error: ")


def test_a_size_the_backbone_was_not_built_for(folder):
    from metris_hf import MetrisProcessor

    config = tiny_metris_config()
    config.backbone_config.use_absolute_embeddings = True
    config.backbone_config.image_size = 96
    processor = MetrisProcessor.from_pretrained(folder)  # 64×64
    with pytest.raises(ValueError, match=r"size 64×64: this backbone takes only 96×96 inputs"):
        check_processor_for_model(processor, config, "here")
    processor.image_processor.size = {"height": 96, "width": 96}
    check_processor_for_model(processor, config, "here")
