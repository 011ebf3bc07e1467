"""The ONNX route: the embedded checkpoint exported with torch's exporter, run by onnxruntime on CPU, gives
PyTorch's logits and the pipeline's masks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

from metris_hf import embedded_checkpoint
from metris_hf.cli import main as cli_main
from metris_hf.data.synthetic import iter_synthetic

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript (torch's ONNX exporter needs it) is not installed")

from metris_hf.onnx_backend import (  # noqa: E402
    METADATA_FILE,
    ONNX_FILE,
    OnnxReferringSegmenter,
    export_onnx,
    time_onnxruntime,
)

pytestmark = pytest.mark.slow  # an ONNX export per module: `make test-fast` leaves it out

SEED = 2024  # the checkpoint was trained and tested on seeds 0 and 1


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export per run: it is the slow part (torch.export, decomposition, ONNX translation)."""
    folder = tmp_path_factory.mktemp("onnx")
    export_onnx(embedded_checkpoint(), folder)
    return folder


@pytest.fixture(scope="module")
def scenes():
    """Six synthetic test scenes and one expression each: realistic inputs, not noise."""
    images, texts = [], []
    for scene, row in iter_synthetic(6, 128, SEED, "test"):
        images.append(Image.fromarray(scene.image))
        texts.append(row["sentences"][0])
    return images, texts


def test_export_writes_the_graph_the_processor_and_how_it_was_made(exported):
    assert (exported / ONNX_FILE).stat().st_size > 1_000_000
    assert (exported / "processor_config.json").is_file() and (exported / "tokenizer.json").is_file()
    metadata = json.loads((exported / METADATA_FILE).read_text())
    assert metadata["outputs"] == ["logits"] and metadata["image_size"] == [128, 128]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("max_length", [20, 9])
def test_onnxruntime_logits_match_pytorch(exported, scenes, batch, max_length):
    """Within 5e-4 wherever the mask is decided (|logit| < 10), within 1e-4 relative elsewhere, same masks.

    On these scenes the logits reach ±150 and come out of sums of large activations: float32's own rounding is
    of the order of 1e-4 there (PyTorch's eager and SDPA attention differ by 3e-4; onnxruntime against PyTorch
    measured 0.5e-4 to 1.7e-4 where |logit| < 10, depending on the thread count), so 1e-4 absolute would test the
    summation order, not the export.
    """
    model = AutoModel.from_pretrained(str(embedded_checkpoint())).eval()
    processor = AutoProcessor.from_pretrained(str(embedded_checkpoint()))
    images, texts = scenes
    encoded = processor(images=images[:batch], text=texts[:batch], max_length=max_length, return_tensors="pt")
    assert encoded["input_ids"].shape == (batch, max_length)
    with torch.no_grad():
        expected = model(**{k: encoded[k] for k in ("pixel_values", "input_ids", "attention_mask")}).logits.numpy()
    segmenter = OnnxReferringSegmenter(exported, threads=1)
    got = segmenter.logits(*(encoded[k].numpy() for k in ("pixel_values", "input_ids", "attention_mask")))["logits"]
    assert got.shape == expected.shape == (batch, 1, 32, 32)
    difference = np.abs(got - expected)
    near_boundary = np.abs(expected) < 10
    print(
        f"batch {batch}, L {max_length}: max |diff| {difference.max():.2e} "
        f"(|logit| up to {np.abs(expected).max():.0f}), "
        f"{difference[near_boundary].max():.2e} where |logit| < 10"
    )
    assert near_boundary.any()
    assert difference[near_boundary].max() <= 5e-4, difference[near_boundary].max()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=5e-4)
    assert np.array_equal(got > 0, expected > 0)


def test_onnx_segmenter_gives_the_pipelines_masks_and_scores(exported, scenes):
    images, texts = scenes
    texts = [*texts[:4], "the big red circle", "star"]  # a batch of 6: more than the export's example batch
    segmenter = OnnxReferringSegmenter(exported, threads=1)
    reference = pipeline("referring-image-segmentation", model=str(embedded_checkpoint()))
    got, expected = segmenter(images[0], texts), reference(images[0], texts)
    assert len(got) == len(expected) == 6
    for ours, theirs in zip(got, expected):
        assert ours["mask"].size == theirs["mask"].size == images[0].size
        assert np.array_equal(np.asarray(ours["mask"]), np.asarray(theirs["mask"]))
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
    assert np.asarray(got[0]["mask"]).any()  # a real object was found, not two empty masks agreeing
    with pytest.raises(ValueError, match="empty"):
        segmenter(images[0], "  ")


def test_cli_onnx_backend_writes_the_same_mask(exported, scenes, tmp_path, capsys):
    images, texts = scenes
    images[1].save(tmp_path / "scene.png")
    assert (
        cli_main(
            [
                "--image",
                str(tmp_path / "scene.png"),
                "--text",
                texts[1],
                "--backend",
                "onnx",
                "--model",
                str(exported),
                "--output",
                str(tmp_path / "onnx.png"),
            ]
        )
        == 0
    )
    assert (
        cli_main(["--image", str(tmp_path / "scene.png"), "--text", texts[1], "--output", str(tmp_path / "torch.png")])
        == 0
    )
    onnx_mask, torch_mask = (np.asarray(Image.open(tmp_path / name)) for name in ("onnx.png", "torch.png"))
    assert onnx_mask.any() and np.array_equal(onnx_mask, torch_mask)
    assert "score" in capsys.readouterr().out


def test_benchmark_timing_runs_onnxruntime_without_torch(exported):
    """The benchmark's onnxruntime row: its peak memory is a process that never imported torch."""
    timing = time_onnxruntime(exported, batch_sizes=[1, 2], image_size=128, max_length=20, repeats=1, threads=1)
    assert [row["batch_size"] for row in timing["rows"]] == [1, 2]
    assert all(row["seconds"] > 0 for row in timing["rows"])
    assert timing["torch_loaded"] is False and timing["transformers_loaded"] is False
    assert 0 < timing["peak_memory_mb"] < 2000 and 0 < timing["startup_seconds"] < 120


TORCH_FREE_SCRIPT = r"""
import json, sys
import numpy as np
from PIL import Image
from metris_hf.onnx_runtime import OnnxReferringSegmenter

folder, image, out = sys.argv[1], sys.argv[2], sys.argv[3]
texts = json.loads(sys.argv[4])
results = OnnxReferringSegmenter(folder)(image, texts)
np.save(out, np.stack([np.asarray(result["mask"]) for result in results]))
print(json.dumps({"scores": [result["score"] for result in results],
                  "loaded": sorted(name for name in ("torch", "transformers", "torchvision") if name in sys.modules)}))
"""


def test_torch_free_environment_gives_pytorchs_masks(exported, scenes, tmp_path):
    """metris_hf.onnx_runtime and `metris-segment --backend onnx` in a fresh venv holding onnxruntime, NumPy, Pillow,
    tokenizers (the main venv's versions, from pip's cache) and the package installed with --no-deps: no torch, no
    transformers; its masks equal the PyTorch pipeline's in this venv."""
    import json
    import subprocess
    import sys
    from importlib.metadata import version
    from pathlib import Path

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, pip = str(venv / "bin" / "python"), [str(venv / "bin" / "python"), "-m", "pip", "-q"]
    pins = [f"{name}=={version(name)}" for name in ("onnxruntime", "numpy", "pillow", "tokenizers")]
    repository = Path(__file__).resolve().parents[1]
    for command in ([*pip, "install", *pins], [*pip, "install", "--no-deps", str(repository)]):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    names = "('torch', 'transformers', 'torchvision')"
    probe = f"import importlib.util as u; print([n for n in {names} if u.find_spec(n)])"
    absent = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert absent.stdout.strip() == "[]"

    images, texts = scenes
    image = tmp_path / "scene.png"
    images[2].save(image)
    expressions = [texts[2], "the big red circle", "the lowest shape"]
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")}  # no PYTHONPATH
    done = subprocess.run(
        [python, "-c", TORCH_FREE_SCRIPT, str(exported), str(image), str(tmp_path / "masks.npy"),
         json.dumps(expressions)],
        capture_output=True, text=True, check=False, cwd=tmp_path, env=environment,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    expected = pipeline("referring-image-segmentation", model=str(embedded_checkpoint()))(images[2], expressions)
    got = np.load(tmp_path / "masks.npy")
    for mask, score, theirs in zip(got, report["scores"], expected):
        assert np.array_equal(mask, np.asarray(theirs["mask"]))
        assert score == pytest.approx(theirs["score"], abs=1e-5)
    assert got[0].any()  # the expression of this scene finds its object

    done = subprocess.run(
        [str(venv / "bin" / "metris-segment"), "--backend", "onnx", "--model", str(exported), "--image", str(image),
         "--text", expressions[0], "--output", str(tmp_path / "cli.png")],
        capture_output=True, text=True, check=False, env=environment,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png")), got[0])
