"""`metris-segment`: segment what an expression refers to in one's own image.

    metris-segment --image photo.jpg --text "the dog on the left" [--model DIR] [--output mask.png]
        [--threshold 0.5] [--device cpu] [--dtype bf16]

Without `--model` it uses the embedded checkpoint (a small METRIS trained on synthetic shapes: it knows
colours, shapes, sizes and positions of shapes, not dogs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .folders import check_model_source, run_command
from .resources import HAS_TRANSFORMERS, embedded_checkpoint

DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def main(argv: list[str] | None = None) -> int:
    """The console script's entry point: returns the exit status (console scripts pass it to `sys.exit`). Bad input
    ends in one line and a non-zero status, never a traceback: 2 for the arguments and what `run_command` catches,
    1 when the model cannot be loaded or run on the image."""
    return run_command(_segment, "metris-segment", argv)


def _segment(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="metris-segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", required=True, help="path of the image")
    parser.add_argument("--text", required=True, help="the referring expression")
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: the embedded one)")
    parser.add_argument(
        "--output",
        default="mask.png",
        help="where the mask goes: a PNG (mode L, 0/255); a name without .png gets .png added (a lossy JPEG would "
        "blur the mask's edges, so .jpg/.jpeg and other formats are refused)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="probability above which a pixel belongs to the mask, in [0, 1] (default 0.5); lower finds more",
    )
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:0 (default: cpu)")
    parser.add_argument(
        "--dtype",
        choices=sorted({*DTYPE_ALIASES, *DTYPE_ALIASES.values()}),
        default="float32",
        help="weights and activations in this precision (default float32); bf16 halves the memory and is faster "
        "where the hardware has bfloat16 units (GPUs, CPUs with AVX-512 BF16 or AMX); masks differ from "
        "float32 only at pixels whose logit lies within rounding of the threshold",
    )
    parser.add_argument(
        "--backend",
        choices=("pytorch", "onnx"),
        default="pytorch",
        help="onnx: run a folder written by scripts/export_onnx.py with onnxruntime (give it as --model)",
    )
    args = parser.parse_args(argv)
    if not Path(args.image).is_file():
        parser.error(f"--image {args.image} does not exist")
    if not args.text.strip():
        parser.error("--text is empty")
    if not 0.0 <= args.threshold <= 1.0:  # also refuses nan
        parser.error(f"--threshold must lie in [0, 1], got {args.threshold}")
    output = Path(args.output)
    if output.suffix.lower() not in ("", ".png"):
        parser.error(f"--output {output}: masks are written as PNG (lossless); name it {output.with_suffix('.png')}")
    output = output.with_suffix(".png")
    device_problem = _device_problem(args.device)
    if device_problem:
        parser.error(f"--device {args.device}: {device_problem}")
    if args.model is not None and args.backend == "pytorch":  # an ONNX export folder has model.onnx instead
        try:
            check_model_source(args.model, "--model")
        except (ValueError, FileNotFoundError) as error:
            parser.error(str(error))

    try:  # the folder's, the input's and the output's problems: one line, no traceback
        if args.backend == "onnx":
            if args.dtype not in ("float32", "fp32"):
                parser.error("--backend onnx runs the exported float32 graph: leave --dtype out")
            if args.model is None:
                parser.error("--backend onnx needs --model: a folder written by scripts/export_onnx.py")
            from .onnx_runtime import OnnxReferringSegmenter  # onnxruntime, NumPy, Pillow, tokenizers: no torch

            segmenter = OnnxReferringSegmenter(args.model)
        elif not HAS_TRANSFORMERS:
            parser.exit(
                1,
                "metris-segment: error: the pytorch backend needs torch and transformers (pip install "
                "metris-hf); this install can run exported models with --backend onnx\n",
            )
        else:
            from transformers import pipeline

            dtype = DTYPE_ALIASES.get(args.dtype, args.dtype)
            model = args.model or str(embedded_checkpoint())
            segmenter = pipeline("referring-image-segmentation", model=model, device=args.device, dtype=dtype)
        result = segmenter(args.image, args.text, threshold=args.threshold)
        output.parent.mkdir(parents=True, exist_ok=True)
        result["mask"].save(output, format="PNG")  # an OSError here names the path
    except (ValueError, OSError) as error:
        parser.exit(1, f"metris-segment: error: {error}\n")
    area = float(np.asarray(result["mask"]).astype(bool).mean())
    print(
        f"{output}: {result['mask'].width}×{result['mask'].height}, {100 * area:.1f}% of the image, "
        f"score {result['score']:.3f}"
    )
    return 0


def _device_problem(device: str | None) -> str | None:
    """Why `device` cannot be used here (None when it can): an unknown name, or CUDA without a GPU."""
    if device is None:
        return None
    if not HAS_TRANSFORMERS:
        return "torch is not installed here (the onnx backend runs on the CPU: leave --device out)"
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        return f"not a device name ({error})"
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            return "no CUDA GPU is available here (use --device cpu)"
        if parsed.index is not None and parsed.index >= count:
            return f"there are only {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})"
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available here (use --device cpu)"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
