"""`metris-segment`: segment what an expression refers to in one's own image.

    metris-segment --image photo.jpg --text "the dog on the left" [--model DIR] [--output mask.png]

Without `--model` it uses the embedded checkpoint (a small METRIS trained on synthetic shapes: it knows
colours, shapes, sizes and positions of shapes, not dogs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import embedded_checkpoint


def main(argv: list[str] | None = None) -> int:
    """The console script's entry point: returns the exit status (console scripts pass it to `sys.exit`)."""
    parser = argparse.ArgumentParser(prog="metris-segment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="path of the image")
    parser.add_argument("--text", required=True, help="the referring expression")
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: the embedded one)")
    parser.add_argument("--output", default="mask.png", help="where the mask PNG goes (mode L, 0/255)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0")
    parser.add_argument("--backend", choices=("pytorch", "onnx"), default="pytorch",
                        help="onnx: run a folder written by scripts/export_onnx.py with onnxruntime (give it as --model)")
    args = parser.parse_args(argv)
    if not Path(args.image).is_file():
        parser.error(f"--image {args.image} does not exist")
    if not args.text.strip():
        parser.error("--text is empty")

    if args.backend == "onnx":
        if args.model is None:
            parser.error("--backend onnx needs --model: a folder written by scripts/export_onnx.py")
        from .onnx_backend import OnnxReferringSegmenter

        segmenter = OnnxReferringSegmenter(args.model)
    else:
        from transformers import pipeline

        model = args.model or str(embedded_checkpoint())
        segmenter = pipeline("referring-image-segmentation", model=model, device=args.device)
    result = segmenter(args.image, args.text, threshold=args.threshold)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    result["mask"].save(output)
    area = float(np.asarray(result["mask"]).astype(bool).mean())
    print(f"{output}: {result['mask'].width}×{result['mask'].height}, {100 * area:.1f}% of the image, score {result['score']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
