"""Pictures of what METRIS sees (paper Fig. 7b / 15) with PIL only, so `make demo` needs no plotting library.

One panel row per (image, expression): the image, the predicted mask over it, and the decoder's attention
over the visual-expression tokens and over the linguistic-expression tokens, at stride 4.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

MASK_COLOUR = np.array([255, 40, 40], dtype=np.float32)


def heatmap(values: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A [0, 1]-normalised map as a blue→red RGB image of `size` (W, H)."""
    values = values.astype(np.float32)
    span = values.max() - values.min()
    values = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    red = np.clip(2 * values, 0, 1)
    blue = np.clip(2 * (1 - values), 0, 1)
    green = 1 - np.abs(2 * values - 1)
    rgb = (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)
    return Image.fromarray(rgb).resize(size, Image.BILINEAR)


def overlay(image: Image.Image, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = mask.astype(bool)
    base[mask] = (1 - alpha) * base[mask] + alpha * MASK_COLOUR
    return Image.fromarray(base.astype(np.uint8))


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


def _label(panel: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (panel.width, panel.height + 18), "white")
    canvas.paste(panel, (0, 18))
    ImageDraw.Draw(canvas).text((3, 3), text, fill="black", font=ImageFont.load_default())
    return canvas


def render_row(image: Image.Image, expression: str, mask: np.ndarray, attention: dict[str, np.ndarray],
               iou: float | None = None, panel_size: int = 192) -> Image.Image:
    """image | mask overlay | VE attention | LE attention, with the expression above."""
    scale = panel_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    shown = image.convert("RGB").resize(size, Image.BILINEAR)
    mask_small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    title = "prediction" if iou is None else f"prediction (IoU {iou:.2f})"
    panels = [_label(shown, "image"), _label(overlay(shown, mask_small), title)]
    for name, label in (("visual", "visual expression attn"), ("linguistic", "linguistic expression attn")):
        if name in attention:
            panels.append(_label(Image.blend(shown, heatmap(attention[name], size), 0.6), label))
    row = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), panels[0].height + 22), "white")
    ImageDraw.Draw(row).text((3, 4), f'"{expression}"', fill="black", font=ImageFont.load_default())
    x = 0
    for panel in panels:
        row.paste(panel, (x, 22))
        x += panel.width + 4
    return row


def stack_rows(rows: list[Image.Image]) -> Image.Image:
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    return sheet


@torch.no_grad()
def explain(model, processor, image: Image.Image, expressions: list[str], threshold: float = 0.5):
    """Masks (at the image size) and attention maps for each expression on one image."""
    inputs = processor(images=[image] * len(expressions), text=expressions, return_tensors="pt")
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    outputs = model(
        pixel_values=inputs["pixel_values"].to(device, dtype), input_ids=inputs["input_ids"].to(device),
        attention_mask=inputs["attention_mask"].to(device), output_attentions=True,
    )
    masks = processor.post_process_referring_segmentation(
        outputs, target_sizes=[(image.height, image.width)] * len(expressions), threshold=threshold
    )
    return [
        (mask.cpu().numpy(), guidance_attention_maps(outputs, index)) for index, mask in enumerate(masks)
    ]
