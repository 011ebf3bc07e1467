"""What a METRIS checkpoint looks at (the paper's Fig. 7b / 15): for each (image, expression) pair, the image,
the predicted mask outlined on it, and the last decoder stage's attention over the visual-expression tokens and
over the linguistic-expression tokens, each with its colour bar.

    python scripts/visualize.py --model runs/tiny/best --image scene.png --text "the red star" "the big circle"
    python scripts/visualize.py --image a.jpg --text "the dog" --image b.jpg --text "the left car" --output fig.png

Each `--image` takes the `--text` expressions that follow it. Without `--model`, the embedded checkpoint is used.
The attention panels need a model with `guidance="full"` (VE and LE tokens); other guidance sets show LE only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor

from metris_hf import embedded_checkpoint
from metris_hf.image_io import load_local_image
from metris_hf.visualization import explain, render_row, save_figure, stack_rows


def parse_pairs(argv: list[str] | None) -> tuple[argparse.Namespace, list[tuple[str, list[str]]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: the embedded one)")
    parser.add_argument("--image", action="append", required=True, help="an image path; repeat for several")
    parser.add_argument(
        "--text", action="append", nargs="+", required=True, help="the expressions for the --image before it"
    )
    parser.add_argument("--output", default="outputs/visualize.png")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if len(args.image) != len(args.text):
        parser.error(f"got {len(args.image)} --image and {len(args.text)} --text: give --text after each --image")
    for image in args.image:
        if not Path(image).is_file():
            parser.error(f"--image {image} does not exist")
    for texts in args.text:
        if any(not text.strip() for text in texts):
            parser.error("an expression given to --text is empty")
    return args, list(zip(args.image, args.text))


def main(argv: list[str] | None = None) -> Path:
    args, pairs = parse_pairs(argv)
    path = args.model or str(embedded_checkpoint())
    model = AutoModel.from_pretrained(path, attn_implementation="eager").to(args.device).eval()  # the maps
    processor = AutoProcessor.from_pretrained(path)
    rows = []
    for image_path, expressions in pairs:
        image = load_local_image(image_path).convert("RGB")
        for expression, (mask, attention) in zip(
            expressions, explain(model, processor, image, expressions, threshold=args.threshold)
        ):
            rows.append(render_row(image, expression, mask, attention))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_figure(stack_rows(rows), output)
    print(f"wrote {output} ({len(rows)} rows)")
    return output


if __name__ == "__main__":
    main()
