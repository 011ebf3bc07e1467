"""Export a METRIS checkpoint to ONNX, to run it with onnxruntime and no PyTorch model code.

    python scripts/export_onnx.py --model path/or/hub-id --output exported/
    metris-segment --backend onnx --model exported/ --image scene.png --text "the red star"

Writes `model.onnx` (pixel_values, input_ids, attention_mask → mask logits; batch and expression length
dynamic), the processor's files beside it (the ONNX route pre- and post-processes with them), and
`onnx_export.json` (opset, sizes, torch version, export time). Without `--model`, the embedded
checkpoint is exported. With `--check`, the exported graph is run once against PyTorch and the largest
logit difference printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metris_hf import embedded_checkpoint
from metris_hf.folders import check_model_source, run_command
from metris_hf.onnx_backend import compare_with_pytorch, export_onnx


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: the embedded one)")
    parser.add_argument("--output", required=True, help="folder for model.onnx and the processor")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--check", action="store_true", help="compare onnxruntime's logits with PyTorch's once")
    args = parser.parse_args(argv)
    if args.model is not None:
        check_model_source(args.model, "--model")  # a missing folder is named as one, not read as a Hub id
    model = args.model or str(embedded_checkpoint())
    path = export_onnx(model, args.output, opset=args.opset)
    size_mb = path.stat().st_size / 2**20
    print(f"wrote {path} ({size_mb:.1f} MB) and the processor to {path.parent}")
    if args.check:
        diff = compare_with_pytorch(model, args.output)
        print(f"largest |onnxruntime − PyTorch| logit difference: {diff:.2e}")
    return path


if __name__ == "__main__":
    raise SystemExit(run_command(main, "export_onnx.py"))
