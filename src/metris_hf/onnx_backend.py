"""METRIS without PyTorch at inference: export to ONNX, run with onnxruntime.

    from metris_hf.onnx_backend import export_onnx
    export_onnx("path/or/hub-id", "exported/")                 # model.onnx + the processor's files

Running the export needs none of this module: `metris_hf.onnx_runtime.OnnxReferringSegmenter` (re-exported
here) runs it with onnxruntime, NumPy, Pillow and `tokenizers` only, doing the processor's steps from the
files saved beside the graph, so the ONNX route gives the masks and scores of the `referring-image-segmentation`
pipeline without torch or transformers.

The export uses torch's exporter (`torch.onnx.export(..., dynamo=True)`), with the batch and the expression
length dynamic. Attention runs in its eager form for the export: with a symbolic batch, the SDPA path of the
Swin backbone reshapes a transposed tensor in a way the exporter's decomposition cannot express as a view.
(The older TorchScript exporter cannot export METRIS at all: it has no ONNX form for the curation step's boolean
`scatter_`, so it is not offered.) `onnx_export.json` beside the model records the opset, sizes and torch version.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .onnx_runtime import INPUT_NAMES, METADATA_FILE, ONNX_FILE, OnnxModelError, OnnxReferringSegmenter, make_session


class _LogitsOnly(torch.nn.Module):
    """The model with positional inputs and tensor outputs only, the form an ONNX graph has; eager attention, which
    traces with a symbolic batch, and float32."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        model.set_attn_implementation("eager")
        self.model = model.float()
        has_no_target = getattr(model, "no_target_classifier", None) is not None
        self.output_names = ["logits", "no_target_logits"] if has_no_target else ["logits"]
        self.eval()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        outputs = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return tuple(outputs[name] for name in self.output_names)


def _example_inputs(model: torch.nn.Module, image_size: int, length: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    vocab = int(model.config.text_config.vocab_size)
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=generator)
    input_ids = torch.randint(1, vocab, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, length // 2 :] = 0  # a padded row, so that masking is traced as data, not as a constant
    return pixel_values, input_ids, attention_mask


def _export_graph(model: torch.nn.Module, path: Path, image_size: int, max_length: int, opset: int) -> list[str]:
    """Writes the graph with torch.export; returns its output names."""
    network = _LogitsOnly(model)
    example = _example_inputs(network.model, image_size, max_length)
    # the text encoder's position table bounds the expression length
    max_tokens = int(getattr(network.model.config.text_config, "max_position_embeddings", 512))
    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim("sequence", min=2, max=max_tokens)
    shapes = {
        "pixel_values": {0: batch},
        "input_ids": {0: batch, 1: sequence},
        "attention_mask": {0: batch, 1: sequence},
    }
    with torch.no_grad():
        torch.onnx.export(
            network,
            example,
            str(path),
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=list(INPUT_NAMES),
            output_names=network.output_names,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    return network.output_names


def export_onnx(
    model: str | os.PathLike | torch.nn.Module,
    output_dir: str | os.PathLike,
    processor: Any | None = None,
    opset: int = 18,
) -> Path:
    """Writes `model.onnx` (inputs pixel_values, input_ids, attention_mask; output `logits`, plus
    `no_target_logits` for checkpoints with that head) and the processor into `output_dir`; returns the ONNX path.

    `model`: a checkpoint folder, a Hub id, or a loaded METRIS model (then pass its `processor`).
    """
    from transformers import AutoModel, AutoProcessor

    source = None if isinstance(model, torch.nn.Module) else str(model)
    if processor is None:
        if source is None:
            raise ValueError("give the processor when exporting an already loaded model")
        processor = AutoProcessor.from_pretrained(source)
    if source is not None:
        model = AutoModel.from_pretrained(source)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / ONNX_FILE
    size = processor.image_processor.size

    start = time.perf_counter()
    outputs = _export_graph(model, path, int(size["height"]), processor.max_length, opset)
    processor.save_pretrained(output_dir)
    metadata = {
        "outputs": outputs,
        "opset": opset,
        "source": source,
        "image_size": [int(size["height"]), int(size["width"])],
        "max_length": int(processor.max_length),  # what the torch-free runtime tokenises to
        "torch": torch.__version__,
        "export_seconds": round(time.perf_counter() - start, 1),
    }
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def compare_with_pytorch(model: str | os.PathLike, folder: str | os.PathLike, batch: int = 3) -> float:
    """Largest |onnxruntime − PyTorch| over the mask logits of one random batch: a quick check of an export."""
    from transformers import AutoModel

    segmenter = OnnxReferringSegmenter(folder)
    reference = AutoModel.from_pretrained(str(model)).float().eval()
    size = segmenter.processor.image_processor.size
    inputs = _example_inputs(reference, int(size["height"]), segmenter.processor.max_length, batch)
    with torch.no_grad():
        expected = reference(*inputs).logits.numpy()
    got = segmenter.logits(*(tensor.numpy() for tensor in inputs))["logits"]
    return float(np.abs(got - expected).max())


# --------------------------------------------------------------------------------------------------------------
# Benchmark: the onnxruntime row beside PyTorch eager and bfloat16 (scripts/dev/benchmark.py calls these)
# --------------------------------------------------------------------------------------------------------------

# Runs in its own interpreter, which imports `metris_hf.onnx_runtime` under an empty stand-in for the package
# (the package's `__init__`, where transformers is installed, would load torch and transformers first): its peak
# memory and start-up time are those of a deployment with onnxruntime, NumPy, Pillow and tokenizers only.
_TIMING_SCRIPT = r"""
import time
import importlib, json, os, statistics, sys, types
import numpy as np

job = json.loads(sys.argv[1])
package = types.ModuleType("metris_hf")
package.__path__ = [os.path.dirname(job["runtime"])]
sys.modules["metris_hf"] = package
runtime = importlib.import_module("metris_hf.onnx_runtime")
import onnxruntime as ort
session = runtime.make_session(job["path"], job["threads"])
names = [output.name for output in session.get_outputs()]
startup_seconds = time.time() - job["launched_at"]  # interpreter start, imports, session: a cold start
rng = np.random.default_rng(0)
rows = []
for batch in job["batch_sizes"]:
    feeds = {
        "pixel_values": rng.standard_normal((batch, 3, job["image_size"], job["image_size"])).astype(np.float32),
        "input_ids": rng.integers(5, 250, (batch, job["max_length"])).astype(np.int64),
        "attention_mask": np.ones((batch, job["max_length"]), dtype=np.int64),
    }
    session.run(names, feeds)
    times = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        session.run(names, feeds)
        times.append(time.perf_counter() - start)
    rows.append({"batch_size": batch, "seconds": statistics.median(times)})
# VmHWM, not getrusage's ru_maxrss: the latter keeps the parent's high-water mark across fork and exec
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"rows": rows, "peak_memory_mb": peak_kib / 1024, "startup_seconds": startup_seconds,
                  "torch_loaded": "torch" in sys.modules, "transformers_loaded": "transformers" in sys.modules,
                  "onnxruntime": ort.__version__}))
"""


def time_onnxruntime(
    path: str | os.PathLike,
    batch_sizes: list[int],
    image_size: int,
    max_length: int,
    repeats: int = 3,
    threads: int | None = None,
) -> dict[str, Any]:
    """Median seconds per batch of an ONNX file under onnxruntime (CPU), measured in a fresh interpreter that
    never imports torch; returns {"rows": [{"batch_size", "seconds"}], "peak_memory_mb" (max RSS),
    "startup_seconds" (interpreter start to a ready session), ...}."""
    import subprocess
    import sys

    path = Path(path)
    if path.is_dir():
        path = path / ONNX_FILE
    from . import onnx_runtime

    job = {
        "runtime": onnx_runtime.__file__,
        "path": str(path),
        "batch_sizes": list(batch_sizes),
        "image_size": image_size,
        "max_length": max_length,
        "repeats": repeats,
        "threads": threads,
    }
    job["launched_at"] = time.time()
    done = subprocess.run(
        [sys.executable, "-c", _TIMING_SCRIPT, json.dumps(job)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the onnxruntime timing process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def onnxruntime_benchmark_worker(job: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's onnxruntime row(s): the randomly initialised METRIS that `scripts/dev/benchmark.py` times in
    PyTorch (same config and seed), exported here, then timed by `time_onnxruntime`.

    `job`: tiny (bool), batch_sizes, image_size, max_length, repeats, optional threads and workdir. Returns
    {"rows": [{"batch_size", "seconds"}], "peak_memory_mb", "export_seconds", "onnx_mb"}; the peak
    memory is the timing process's alone (onnxruntime, NumPy, the session), not the export's.
    """
    import tempfile

    from .configuration_metris import MetrisConfig
    from .modeling_metris import MetrisForReferringSegmentation
    from .presets import tiny_metris_config

    torch.manual_seed(0)
    model = MetrisForReferringSegmentation(tiny_metris_config() if job["tiny"] else MetrisConfig())
    with tempfile.TemporaryDirectory(dir=job.get("workdir")) as folder:
        path = Path(folder) / ONNX_FILE
        start = time.perf_counter()
        _export_graph(model, path, job["image_size"], job["max_length"], opset=18)
        export_seconds = time.perf_counter() - start
        del model
        timing = time_onnxruntime(
            path, job["batch_sizes"], job["image_size"], job["max_length"], job["repeats"], job.get("threads")
        )
        timing.update(export_seconds=export_seconds, onnx_mb=path.stat().st_size / 2**20)
    return timing


__all__ = [
    "ONNX_FILE",
    "OnnxModelError",
    "OnnxReferringSegmenter",
    "compare_with_pytorch",
    "export_onnx",
    "make_session",
    "onnxruntime_benchmark_worker",
    "time_onnxruntime",
]
