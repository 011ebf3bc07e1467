"""Scenes as pixels: shapes placed without overlap and painted on a textured, noisy background."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .grammar import COLOURS, SHAPES, SIZES, SceneObject

# radius as a fraction of the image side: the two classes never come close (max small / min big = 0.68)
SIZE_RANGES = {"small": (0.055, 0.075), "big": (0.11, 0.15)}


@dataclass
class Scene:
    """A rendered scene: its objects, RGB image, one boolean mask per object, and the PNG bytes of the image."""

    image_id: int
    image_size: int
    objects: tuple[SceneObject, ...]
    image: np.ndarray
    masks: list[np.ndarray]
    image_png: bytes


def _shape_mask(obj: SceneObject, size: int) -> np.ndarray:
    canvas = PIL.Image.new("L", (size, size), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    cx, cy, r = obj.cx, obj.cy, obj.radius
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif obj.shape == "square":
        h = 0.7 * r  # inscribed in the circle of radius r, like every shape: circles that do not overlap keep
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)  # the shapes apart
    elif obj.shape == "triangle":
        points = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(points, fill=255)
    elif obj.shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)], fill=255)
    else:  # cross
        arm, half = 0.3 * r, 0.9 * r
        draw.rectangle([cx - half, cy - arm, cx + half, cy + arm], fill=255)
        draw.rectangle([cx - arm, cy - half, cx + arm, cy + half], fill=255)
    return np.asarray(canvas) > 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    grey = rng.uniform(85, 175)
    image = np.full((size, size, 3), grey) + rng.uniform(-18, 18, 3)
    kind = int(rng.integers(4))
    angle = rng.uniform(0, math.pi)
    along = math.cos(angle) * xx + math.sin(angle) * yy
    if kind == 0:  # gradient
        image += (along * rng.uniform(-45, 45))[..., None]
    elif kind == 1:  # stripes
        image += (14 * np.sin(2 * math.pi * rng.uniform(3, 10) * along + rng.uniform(0, 2 * math.pi)))[..., None]
    elif kind == 2:  # checks
        cells = int(rng.integers(4, 12))
        checks = ((xx * cells).astype(int) + (yy * cells).astype(int)) % 2
        image += (checks * 24 - 12)[..., None]
    else:  # blotches: coarse noise, smoothly upsampled
        coarse = rng.normal(0, 20, (6, 6, 3)) + 128
        blotches = PIL.Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((size, size), PIL.Image.BILINEAR)
        image += np.asarray(blotches, dtype=np.float64) - 128
    return image + rng.normal(0, 7, image.shape)


def _place_objects(rng: np.random.Generator, size: int, image_id: int) -> list[SceneObject]:
    count = int(rng.integers(2, 7))
    colours = rng.choice(list(COLOURS), size=int(rng.integers(2, 5)), replace=False)
    shapes = rng.choice(SHAPES, size=int(rng.integers(2, 5)), replace=False)  # few of each: ambiguity is common
    objects: list[SceneObject] = []
    for _ in range(count):
        size_class = SIZES[int(rng.integers(2))]
        radius = rng.uniform(*SIZE_RANGES[size_class]) * size
        colour, shape = str(rng.choice(colours)), str(rng.choice(shapes))
        for _attempt in range(60):
            cx, cy = rng.uniform(radius + 2, size - radius - 2, 2)
            if all(math.hypot(cx - o.cx, cy - o.cy) >= radius + o.radius + 3 for o in objects):
                objects.append(
                    SceneObject(
                        shape, colour, size_class, float(cx), float(cy), float(radius), image_id * 8 + len(objects)
                    )
                )
                break
    return objects


def render_scene(rng: np.random.Generator, image_size: int, image_id: int) -> Scene:
    """Places 2–6 shapes without overlap and paints them, with colour jitter and noise, on a textured background."""
    objects: list[SceneObject] = []
    while len(objects) < 2:
        objects = _place_objects(rng, image_size, image_id)
    image = _background(rng, image_size)
    masks = []
    for obj in objects:
        mask = _shape_mask(obj, image_size)
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float64) + rng.normal(0, 10, 3)
        image[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
        masks.append(mask)
    pixels = image.clip(0, 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return Scene(image_id, image_size, tuple(objects), pixels, masks, buffer.getvalue())
