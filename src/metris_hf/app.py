"""`metris-app` / `make app`: try METRIS in a browser (a Gradio Blocks page, the form of a Hugging Face Space).

    metris-app [--model DIR_OR_HUB_ID] [--host 127.0.0.1] [--port 7860]

Upload an image (or click one of the bundled synthetic scenes), type one expression per line, and get one
overlay per expression: the object keeps its own colour inside an outline while the rest of the picture is
dimmed; the masks come as downloadable PNGs (mode L, 0/255, the image's size) with their scores. The model box
takes the embedded checkpoint (default), a checkpoint folder, a Hub id, or a folder written by
`scripts/export_onnx.py` (then onnxruntime runs it). Attention maps (the paper's Fig. 7b) are drawn on demand.

Every failure the user can cause (no image, an unreadable file, no expression, a model that does not load)
is reported in the status box in words; no stack trace reaches the page.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from itertools import groupby, islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .folders import run_command
from .image_io import open_local_image
from .resources import embedded_checkpoint
from .visualization import DISPLAY_SIDE, outline_overlay

EMBEDDED = "embedded: metris-tiny-synthetic"
EXAMPLE_SEED = 2024  # the embedded checkpoint was trained and tested on seeds 0 and 1
EXAMPLE_SIZE = 256
MAX_EXPRESSIONS = 16


def parse_expressions(text: str | None) -> list[str]:
    """One expression per non-blank line, surrounding spaces dropped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def example_scenes(folder: str | os.PathLike, count: int = 4) -> list[list[str]]:
    """Writes `count` synthetic test scenes (seed unseen in training) as PNGs; returns [path, expressions] rows
    for `gr.Examples`, each with that scene's referring expressions, one per line."""
    from .data.synthetic import iter_synthetic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scenes = groupby(iter_synthetic(10 * count, EXAMPLE_SIZE, EXAMPLE_SEED, "test"), lambda pair: pair[0].image_id)
    examples = []
    for index, (_, refs) in enumerate(islice(scenes, count)):  # a scene's refs come one after the other
        refs = list(refs)
        path = folder / f"scene_{index}.png"
        if not path.is_file():
            Image.fromarray(refs[0][0].image).save(path)
        examples.append([str(path), "\n".join(row["sentences"][0] for _, row in refs[:3])])
    return examples


class Segmenter:
    """One loaded model, whichever backend: the pipeline (PyTorch) or an exported ONNX folder (onnxruntime)."""

    def __init__(self, name: str):
        self.name = name
        location = str(embedded_checkpoint()) if name in ("", EMBEDDED) else name
        self.backend = "onnx" if Path(location, "model.onnx").is_file() else "pytorch"
        if self.backend == "onnx":
            from .onnx_runtime import OnnxReferringSegmenter

            self.run = OnnxReferringSegmenter(location)
            self.model = self.processor = None
        else:
            from transformers import AutoModel, AutoProcessor, pipeline

            # eager attention: the attention sheet shows its weights, which fused kernels do not compute
            self.model = AutoModel.from_pretrained(location, attn_implementation="eager").eval()
            self.processor = AutoProcessor.from_pretrained(location)
            self.run = pipeline("referring-image-segmentation", model=self.model, processor=self.processor)

    def attention_sheet(self, image: Image.Image, expressions: list[str], threshold: float) -> Image.Image | None:
        """The Fig. 7b rows (image, mask, visual and linguistic attention) of `visualization.py`; PyTorch only."""
        if self.model is None:
            return None
        from .visualization import explain, render_row, stack_rows

        explained = explain(self.model, self.processor, image, expressions, threshold=threshold)
        return stack_rows([render_row(image, text, *pair) for text, pair in zip(expressions, explained)])


def display_image(path: str | os.PathLike) -> Image.Image:
    """The picture the overlays are drawn on: RGB, oriented, and no more than about twice `DISPLAY_SIDE` on its
    longer side (a JPEG's decoder draft, else an integer `reduce`): the overlays are drawn at display size."""
    side = 2 * DISPLAY_SIDE
    image, _ = open_local_image(path, draft_to=(side, side))
    factor = max(image.size) // side
    if factor >= 2 and image.mode in ("L", "RGB", "RGBA", "LA"):
        image = image.reduce(factor)
    return image if image.mode == "RGB" else image.convert("RGB")


load_segmenter = functools.lru_cache(maxsize=2)(Segmenter)  # switching back and forth between two models is free


def segment(
    image_path: str | None,
    text: str | None,
    threshold: float,
    model_name: str,
    show_attention: bool,
    output_dir: str | os.PathLike | None = None,
) -> tuple[list[tuple[Image.Image, str]], list[str], Image.Image | None, str]:
    """The page's action: (overlays with captions, mask PNG paths, attention sheet or None, status text).

    Never raises for what a user can do wrong: the status text says what to fix instead.
    """
    nothing: tuple[list, list, None] = ([], [], None)
    if not image_path:
        return (*nothing, "Error: Upload an image first (or click one of the examples).")
    expressions = parse_expressions(text)
    if not expressions:
        return (*nothing, "Error: Type at least one expression (one per line), e.g. “the red star”.")
    if len(expressions) > MAX_EXPRESSIONS:
        return (*nothing, f"Error: At most {MAX_EXPRESSIONS} expressions at once (got {len(expressions)}).")
    try:
        image = display_image(image_path)
    except ValueError as error:
        return (*nothing, f"Error: Could not read the image: {str(error).split(': ', 1)[-1]}")
    try:
        segmenter = load_segmenter((model_name or EMBEDDED).strip())
    except Exception as error:  # noqa: BLE001 - any loading failure becomes a message, not a trace
        return (*nothing, f"Error: Could not load the model {model_name!r}: {type(error).__name__}: {error}")
    try:
        # the model reads the file itself, decoded no larger than it needs; masks come at the file's own size
        results = segmenter.run(image_path, expressions, threshold=float(threshold))
        sheet = segmenter.attention_sheet(image, expressions, float(threshold)) if show_attention else None
    except ValueError as error:
        return (*nothing, f"Error: {error}")
    folder = Path(output_dir or tempfile.mkdtemp(prefix="metris-app-"))
    folder.mkdir(parents=True, exist_ok=True)
    overlays, files, lines = [], [], []
    for index, (expression, result) in enumerate(zip(expressions, results)):
        mask = np.asarray(result["mask"])  # 0/255 uint8: no boolean copy of a photo-sized mask
        area = np.count_nonzero(mask) / mask.size
        overlays.append((outline_overlay(image, mask), f"{expression} — score {result['score']:.3f}"))
        path = folder / f"mask_{index}.png"
        result["mask"].save(path)
        files.append(str(path))
        lines.append(f"| {index + 1} | {expression} | {result['score']:.3f} | {100 * area:.1f} % |")
    header = f"Done: {len(expressions)} expression(s), model `{segmenter.name}` ({segmenter.backend})"
    status = "\n".join([header, "", "| # | expression | score | area |", "|---|---|---|---|", *lines])
    if show_attention and sheet is None:
        status += "\n\nAttention maps need the PyTorch model (an ONNX export returns the mask logits only)."
    return overlays, files, sheet, status


def build_demo(default_model: str = EMBEDDED, examples_dir: str | os.PathLike | None = None) -> Any:
    """The Gradio Blocks page (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    examples_dir = Path(examples_dir or Path(tempfile.gettempdir()) / "metris-app-examples")
    examples = example_scenes(examples_dir)
    with gr.Blocks(title="METRIS referring image segmentation") as demo:
        gr.Markdown(
            "## METRIS: referring image segmentation\n"
            "Upload an image, type what to segment (one expression per line). The embedded checkpoint is "
            "small and knows synthetic shapes (colours, shapes, sizes, positions): try the examples."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image", elem_id="input-image", sources=["upload"])
                text = gr.Textbox(
                    label="Expressions (one per line)",
                    lines=3,
                    elem_id="expressions",
                    placeholder="the red star\nthe big circle on the left",
                )
                threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Threshold", elem_id="threshold")
                model = gr.Dropdown(
                    [EMBEDDED],
                    value=default_model,
                    allow_custom_value=True,
                    elem_id="model",
                    label="Model: embedded, a checkpoint folder, a Hub id, or an ONNX export folder",
                )
                attention = gr.Checkbox(label="Show attention maps (Fig. 7b)", value=False, elem_id="attention")
                button = gr.Button("Segment", variant="primary", elem_id="submit")
            with gr.Column():
                status = gr.Markdown("Upload an image and type an expression.", elem_id="status")
                overlays = gr.Gallery(label="Overlays", elem_id="overlays", columns=2, height="auto")
                masks = gr.File(label="Masks (PNG, 0/255)", file_count="multiple", elem_id="masks")
                sheet = gr.Image(label="Attention maps", elem_id="attention-maps", type="pil")
        gr.Examples(examples, inputs=[image, text], label="Synthetic scenes (unseen by the embedded checkpoint)")
        button.click(
            segment, inputs=[image, text, threshold, model, attention], outputs=[overlays, masks, sheet, status]
        )
    return demo


def main(argv: list[str] | None = None) -> int:
    """The console script: builds the page and serves it until interrupted. Bad input (a port in use, an unreadable
    examples folder) ends in one line and exit status 2 (`run_command`), not a traceback."""
    return run_command(_serve, "metris-app", argv)


def _serve(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="metris-app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=EMBEDDED, help="checkpoint folder, Hub id or ONNX export folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    demo = build_demo(args.model)
    print(f"METRIS app on http://{args.host}:{args.port}/  (Ctrl+C stops it)", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, show_error=True, quiet=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
