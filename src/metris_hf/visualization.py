"""Pictures of what METRIS sees (paper Fig. 7b / 15) with PIL only, so `make demo` needs no plotting library:
one row per (image, expression) of outlined masks and attention maps with colour bars (`render_row`). Each
figure records where its panels are (`figure_panels`), so tests and readers can find them in the saved PNG.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont, PngImagePlugin

OUTLINE_COLOUR = (255, 255, 0)  # the app's
FIGURE_OUTLINE = (255, 255, 255)  # no synthetic shape is white, so the outline never merges with one
PANELS_KEY = "metris:panels"  # the PNG text chunk holding the panel layout
ATTENTION_PANELS = (("visual", "attention on visual expr."), ("linguistic", "attention on linguistic expr."))
GAP, BAR_WIDTH, BAR_GAP = 8, 12, 3


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at `size` where it can scale (Pillow ≥ 10.1 with FreeType), else its bitmap one."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → uint8 RGB, blue (0) → white (0.5) → red (1)."""
    values = np.clip(values.astype(np.float32), 0, 1)
    rgb = np.stack([np.clip(2 * values, 0, 1), 1 - np.abs(2 * values - 1), np.clip(2 * (1 - values), 0, 1)], -1)
    return (rgb * 255).astype(np.uint8)


def heatmap(values: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A map stretched to its own [min, max] (so faint structure shows; `colour_bar` gives the values) as a
    blue→red RGB image of `size` (W, H)."""
    values = values.astype(np.float32)
    span = values.max() - values.min()
    values = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    return Image.fromarray(colour_map(values)).resize(size, Image.BILINEAR)


DISPLAY_SIDE = 1280  # overlays are drawn at most this many pixels on their longer side


def outline_overlay(
    image: Image.Image,
    mask: np.ndarray,
    dim: float = 0.45,
    width: int | None = None,
    colour: tuple[int, int, int] = OUTLINE_COLOUR,
    max_side: int = DISPLAY_SIDE,
) -> Image.Image:
    """The image, dimmed outside the mask, with an outline around it (the object keeps its own colour). Drawn in
    uint8 at display size (at most `max_side` pixels on the longer side): a 100-MP photo costs what a 1.6-MP one
    does."""
    mask = np.asarray(mask)
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR, reducing_gap=2.0)
        # nearest-neighbour sampling by index: no temporary as large as the photo's mask
        rows = (np.arange(size[1]) + 0.5) * mask.shape[0] // size[1]
        columns = (np.arange(size[0]) + 0.5) * mask.shape[1] // size[0]
        mask = mask[rows.astype(np.intp)[:, None], columns.astype(np.intp)]
    image = image.convert("RGB")
    mask_image = Image.fromarray(mask.astype(bool).astype(np.uint8) * 255)
    shown = Image.composite(image, image.point(lambda value: round(value * (1 - dim))), mask_image)
    if mask_image.getbbox() is not None:
        width = width or max(1, round(max(image.size) / 128))  # at most 10 pixels at display size: a bounded filter
        grown = mask_image.filter(ImageFilter.MaxFilter(2 * width + 1))
        ring = Image.composite(Image.new("L", image.size, 0), grown, mask_image)  # just outside: no object pixel
        shown.paste(colour, (0, 0, *image.size), ring)
    return shown


def colour_bar(height: int, low: float, high: float) -> Image.Image:
    """A vertical bar (`BAR_WIDTH` wide) of `heatmap`'s colours, high at the top, its two end values beside it."""
    font = load_font(11)
    strip = colour_map(np.linspace(1, 0, height)[:, None].repeat(BAR_WIDTH, 1))
    labels = [f"{high:.2f}", f"{low:.2f}"]
    label_width = max(round(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font)) for t in labels)
    bar = Image.new("RGB", (BAR_WIDTH + 3 + label_width, height), "white")
    bar.paste(Image.fromarray(strip), (0, 0))
    draw = ImageDraw.Draw(bar)
    draw.rectangle((0, 0, BAR_WIDTH - 1, height - 1), outline=(90, 90, 90))
    draw.text((BAR_WIDTH + 3, 0), labels[0], fill="black", font=font)
    draw.text((BAR_WIDTH + 3, height - 1), labels[1], fill="black", font=font, anchor="ls")
    return bar


def guidance_attention_maps(outputs, index: int = 0) -> dict[str, np.ndarray]:
    """Attention of the last decoder stage, summed over the linguistic and over the visual guidance tokens.

    Needs `output_attentions=True` and a guidance set laid out [Q̂_L; Q̂_V] (`guidance="full"`); heads are averaged.
    """
    weights = outputs.decoder_attentions[-1][index].float().mean(0)  # (HW, G)
    height = width = int(round(weights.shape[0] ** 0.5))
    num_tokens = outputs.linguistic_expression.shape[1]
    maps = {"linguistic": weights[:, :num_tokens].sum(-1)}
    if weights.shape[1] == 2 * num_tokens:
        maps["visual"] = weights[:, num_tokens:].sum(-1)
    return {name: m.reshape(height, width).cpu().numpy() for name, m in maps.items()}


def render_row(
    image: Image.Image,
    expression: str,
    mask: np.ndarray,
    attention: dict[str, np.ndarray],
    iou: float | None = None,
    panel_size: int = 192,
    target: np.ndarray | None = None,
) -> Image.Image:
    """ground truth (or the image) | prediction | VE attention + bar | LE attention + bar, the expression above.

    `target` is the ground-truth mask at the image's size, when known. The row's `info["panels"]` lists each
    panel's kind ("image", "ground truth", "prediction", "attention", "colourbar"), title and box.
    """
    scale = panel_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    shown = image.convert("RGB").resize(size, Image.BILINEAR)

    def outlined(m: np.ndarray) -> Image.Image:
        small = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        return outline_overlay(shown, small, colour=FIGURE_OUTLINE)

    notes = ([] if mask.any() else ["empty"]) + ([] if iou is None else [f"IoU {iou:.2f}"])
    pictures = [  # kind, title, picture
        ("image", "image", shown) if target is None else ("ground truth", "ground truth", outlined(target)),
        ("prediction", "prediction" + (f" ({', '.join(notes)})" if notes else ""), outlined(mask)),
    ]
    for name, label in ATTENTION_PANELS:
        if name in attention:
            values = attention[name]
            pictures.append(("attention", label, Image.blend(shown, heatmap(values, size), 0.6)))
            bar = colour_bar(size[1], float(values.min()), float(values.max()))
            pictures.append(("colourbar", f"{label}: share of attention", bar))

    title_height, label_height = 24, 18
    lefts, x = [], 0
    for i, (kind, _, picture) in enumerate(pictures):
        x += (BAR_GAP if kind == "colourbar" else GAP) if i else 0
        lefts.append(x)
        x += picture.width
    row = Image.new("RGB", (x, title_height + label_height + size[1] + 6), "white")
    draw = ImageDraw.Draw(row)
    draw.text((3, 4), f'"{expression}"', fill="black", font=load_font(15))
    label_font, top, panels = load_font(12), title_height + label_height, []
    for x, (kind, text, picture) in zip(lefts, pictures):
        if kind != "colourbar":
            draw.text((x + 1, title_height + 1), text, fill="black", font=label_font)
        row.paste(picture, (x, top))
        width = BAR_WIDTH if kind == "colourbar" else picture.width  # a bar's box leaves its labels out
        panels.append({"kind": kind, "title": text, "box": [x, top, x + width, top + picture.height]})
    row.info["panels"] = panels
    return row


def stack_rows(rows: list[Image.Image]) -> Image.Image:
    """Rows one under the other; the sheet's `info["panels"]` gives every panel its row and its box in the sheet."""
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    panels, y = [], 0
    for index, row in enumerate(rows):
        sheet.paste(row, (0, y))
        for panel in row.info.get("panels", []):
            left, top, right, bottom = panel["box"]
            panels.append({**panel, "row": index, "box": [left, top + y, right, bottom + y]})
        y += row.height
    sheet.info["panels"] = panels
    return sheet


def save_figure(figure: Image.Image, path: str | os.PathLike) -> None:
    """A PNG with the panel layout in a text chunk (`figure_panels` reads it back)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PANELS_KEY, json.dumps(figure.info.get("panels", [])))
    figure.save(path, format="PNG", pnginfo=info)


def figure_panels(path: str | os.PathLike) -> list[dict]:
    """The panels a figure written by `save_figure` holds: kind, title, row and box (left, top, right, bottom)."""
    with Image.open(path) as figure:
        return json.loads(figure.text.get(PANELS_KEY, "[]"))


@torch.no_grad()
def explain(model, processor, image: Image.Image, expressions: list[str], threshold: float = 0.5):
    """Masks (at the image size) and attention maps for each expression on one image.

    The maps are attention weights, which only eager attention computes: load the model with
    `attn_implementation="eager"`."""
    if model.config._attn_implementation != "eager":
        raise ValueError(
            "attention maps need eager attention (SDPA and other fused kernels compute no weights), but this model "
            f"runs {model.config._attn_implementation!r}: load it with from_pretrained(..., "
            'attn_implementation="eager") or call model.set_attn_implementation("eager")'
        )
    inputs = processor(images=[image] * len(expressions), text=expressions, return_tensors="pt")
    outputs = model(**inputs.to(model.device, model.dtype), output_attentions=True)  # dtype: pixel values only
    masks = processor.post_process_referring_segmentation(
        outputs, target_sizes=[(image.height, image.width)] * len(expressions), threshold=threshold
    )
    return [(mask.cpu().numpy(), guidance_attention_maps(outputs, index)) for index, mask in enumerate(masks)]
