"""A synthetic referring dataset: scenes of shapes, expressions that single out one of them, in the common schema.

Why: it lets the whole chain (data, training, evaluation, the demo) run on a laptop CPU in minutes, with
ground truth that is right by construction.

A scene holds 2–6 non-overlapping shapes (circle, square, triangle, star, diamond, cross) in six colours and
two sizes on a textured, noisy background (gradient, stripes, checks or blotches). Each referred object gets 2–3
expressions, drawn from four kinds:

- attributes: "the small red circle", "the blue one", "the star" — as few or as many of size, colour and
  shape as the scene needs (often two or three);
- absolute position: "the red circle on the left", "the star at the top" (the outer thirds of the image);
- superlative: "the leftmost red shape", "the lowest square";
- relation to another object: "the star left of the blue circle", "the square above the big triangle"
  (in the 90° cone on that side of the other object's centre).

Uniqueness by construction: an expression is kept only if exactly one object satisfies it, and with a margin
(6 % of the image side for positions and relations, 8 % between the first and second for superlatives), so a
borderline case is never asked about. `matching_objects(sentence, objects, image_size)` parses a sentence back
from its words alone and returns the objects it designates: the tests check that it is exactly the target for
every sentence generated. With `no_target_fraction`, some refs name a combination absent from the scene
(gRefCOCO-style): mask all zero, `no_target=True`, and `matching_objects` returns nothing.

Deterministic: scene k of split s under seed n comes from `SeedSequence([n, s, k, version])`, so the same call
gives the same bytes, and train / val / test never share a scene. The vocabulary is fixed and small, and
`build_synthetic_tokenizer()` covers it (with `the`, `a`, `an` at ids 5, 6, 7 as `tiny_metris_config` expects).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import PIL.ImageDraw
from datasets import DatasetDict

from .schema import FEATURES, cached_build, default_cache_root, mask_to_png

SYNTHETIC_VERSION = 1

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 170, 70),
    "blue": (45, 90, 225),
    "yellow": (235, 205, 40),
    "purple": (150, 65, 195),
    "orange": (245, 135, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
SIZES = ("small", "big")
# radius as a fraction of the image side: the two classes never come close (max small / min big = 0.68)
SIZE_RANGES = {"small": (0.055, 0.075), "big": (0.11, 0.15)}
SIZE_WORDS = {"small": "small", "big": "big", "large": "big"}
GENERIC_NOUNS = ("shape", "object", "one")
REGION_PHRASES = {"left": ("on", "the", "left"), "right": ("on", "the", "right"),
                  "top": ("at", "the", "top"), "bottom": ("at", "the", "bottom")}
SUPERLATIVES = ("leftmost", "rightmost", "highest", "lowest")
RELATIONS = ("left", "right", "above", "below")
ARTICLES = ("the", "a", "an")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
IMAGE_ID_STRIDE = 10_000_000  # image and ref ids of split s start at s × this: unique across splits

POSITION_MARGIN = 0.06  # fraction of the image side
SUPERLATIVE_GAP = 0.08

SYNTHETIC_WORDS = (
    "the", "a", "an", "on", "at", "of", "to", "left", "right", "top", "bottom", "above", "below",
    *SUPERLATIVES, "small", "big", "large", *COLOURS, *SHAPES, *GENERIC_NOUNS,
)


# --------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------


def synthetic_vocabulary() -> dict[str, int]:
    """The fixed WordPiece vocabulary: specials 0–4, `the`/`a`/`an` 5–7, every generator word, then letters and
    a few suffixes so that any lowercase word a user types still tokenises without [UNK]."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = ["##s", "##es", "##er", "##est", ",", ".", "'", "-"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = specials + list(SYNTHETIC_WORDS) + pieces + letters + ["##" + letter for letter in letters]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def build_synthetic_tokenizer():
    """A BERT tokenizer over `synthetic_vocabulary()` (< 256 ids, fits `tiny_bert_config`), built offline."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab=synthetic_vocabulary())


# --------------------------------------------------------------------------------------------------------------
# Scenes and expressions
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One shape: its attributes, centre and radius (pixels), and the annotation id its ref rows carry."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    ann_id: int


@dataclass(frozen=True)
class Descriptor:
    """A noun phrase: the attributes it names (None = not named) and its noun when the shape is not named."""

    size: str | None = None
    colour: str | None = None
    shape: str | None = None
    noun: str = "shape"

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.colour is None or obj.colour == self.colour)
            and (self.shape is None or obj.shape == self.shape)
        )

    def words(self) -> list[str]:
        return [w for w in (self.size, self.colour) if w] + [self.shape or self.noun]


@dataclass(frozen=True)
class Expression:
    """A referring expression: a descriptor, optionally narrowed by a region, a superlative or a relation."""

    target: Descriptor
    region: str | None = None  # left / right / top / bottom
    superlative: str | None = None  # leftmost / rightmost / highest / lowest
    relation: str | None = None  # left / right / above / below
    landmark: Descriptor | None = None

    def words(self, article: bool = True, long_relation: bool = False) -> list[str]:
        words = ["the"] if article else []
        if self.superlative:
            words.append(self.superlative)
        words += self.target.words()
        if self.region:
            words += REGION_PHRASES[self.region]
        if self.relation:
            assert self.landmark is not None
            if self.relation in ("left", "right"):
                words += (["to", "the"] if long_relation else []) + [self.relation, "of"]
            else:
                words.append(self.relation)
            words += ["the", *self.landmark.words()]
        return words


@dataclass
class Scene:
    """A rendered scene: its objects, RGB image, one boolean mask per object, and the PNG bytes of the image."""

    image_id: int
    image_size: int
    objects: tuple[SceneObject, ...]
    image: np.ndarray
    masks: list[np.ndarray]
    image_png: bytes


def _in_region(obj: SceneObject, region: str, size: int, margin: float) -> bool:
    third = size / 3
    if region == "left":
        return obj.cx < third + margin
    if region == "right":
        return obj.cx > 2 * third - margin
    if region == "top":
        return obj.cy < third + margin
    return obj.cy > 2 * third - margin  # bottom


def _related(obj: SceneObject, landmark: SceneObject, relation: str, margin: float) -> bool:
    """`obj` lies in the 90° cone on the `relation` side of the landmark's centre: its displacement along that
    direction exceeds the sideways one ("below" means mostly below, not far to the side and a little lower)."""
    dx, dy = obj.cx - landmark.cx, obj.cy - landmark.cy
    along, across = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return along - abs(across) > -margin


def _superlative_key(superlative: str):
    return {
        "leftmost": lambda o: o.cx,
        "rightmost": lambda o: -o.cx,
        "highest": lambda o: o.cy,
        "lowest": lambda o: -o.cy,
    }[superlative]


def expression_matches(
    expression: Expression, objects: Sequence[SceneObject], image_size: int, margin: float = 0.0
) -> list[int]:
    """Indices of the objects `expression` designates. `margin` (pixels) widens (> 0) or narrows (< 0) the
    position and relation tests; the generator uses both to keep only clear-cut expressions.

    A relation's landmark must match exactly one object ("the blue circle" must exist and be unique): if not,
    ValueError, since the expression then refers to nothing definite.
    """
    candidates = [i for i, obj in enumerate(objects) if expression.target.matches(obj)]
    if expression.region:
        candidates = [i for i in candidates if _in_region(objects[i], expression.region, image_size, margin)]
    if expression.superlative and candidates:
        key = _superlative_key(expression.superlative)
        candidates = [min(candidates, key=lambda i: key(objects[i]))]
    if expression.relation:
        assert expression.landmark is not None
        landmarks = [j for j, obj in enumerate(objects) if expression.landmark.matches(obj)]
        if len(landmarks) != 1:
            raise ValueError(f"the landmark {' '.join(expression.landmark.words())!r} matches {len(landmarks)} objects")
        (j,) = landmarks
        candidates = [i for i in candidates if i != j and _related(objects[i], objects[j], expression.relation, margin)]
    return candidates


def _parse_descriptor(tokens: list[str], i: int, sentence: str) -> tuple[Descriptor, int]:
    size = colour = None
    if i < len(tokens) and tokens[i] in SIZE_WORDS:
        size, i = SIZE_WORDS[tokens[i]], i + 1
    if i < len(tokens) and tokens[i] in COLOURS:
        colour, i = tokens[i], i + 1
    if i >= len(tokens) or (tokens[i] not in SHAPES and tokens[i] not in GENERIC_NOUNS):
        raise ValueError(f"cannot parse {sentence!r}: expected a shape or {'/'.join(GENERIC_NOUNS)} at word {i}")
    noun = tokens[i]
    if noun in SHAPES:
        return Descriptor(size, colour, noun, "shape"), i + 1
    return Descriptor(size, colour, None, noun), i + 1


def parse_expression(sentence: str) -> Expression:
    """A sentence of the synthetic grammar → its `Expression` (ValueError if it is not one).

    Grammar: [article] [superlative] [size] [colour] (shape | shape/object/one)
    [on the left | on the right | at the top | at the bottom | [to the] left of / right of / above / below the <np>].
    """
    tokens = sentence.lower().replace(",", " ").replace(".", " ").split()
    i = 1 if tokens and tokens[0] in ARTICLES else 0
    superlative = None
    if i < len(tokens) and tokens[i] in SUPERLATIVES:
        superlative, i = tokens[i], i + 1
    target, i = _parse_descriptor(tokens, i, sentence)
    rest = tokens[i:]
    if not rest:
        return Expression(target, superlative=superlative)
    for region, phrase in REGION_PHRASES.items():
        if tuple(rest) == phrase:
            return Expression(target, region=region, superlative=superlative)
    if rest[:2] == ["to", "the"]:
        rest = rest[2:]
    if len(rest) >= 2 and rest[0] in ("left", "right") and rest[1] == "of":
        relation, rest = rest[0], rest[2:]
    elif rest and rest[0] in ("above", "below"):
        relation, rest = rest[0], rest[1:]
    else:
        raise ValueError(f"cannot parse {sentence!r}: unexpected {' '.join(rest)!r}")
    if rest[:1] == ["the"]:
        rest = rest[1:]
    landmark, end = _parse_descriptor(rest, 0, sentence)
    if end != len(rest):
        raise ValueError(f"cannot parse {sentence!r}: trailing {' '.join(rest[end:])!r}")
    return Expression(target, superlative=superlative, relation=relation, landmark=landmark)


def matching_objects(sentence: str, objects: Sequence[SceneObject], image_size: int) -> list[int]:
    """The objects a synthetic sentence designates, from its words alone (no margin): how the tests check that
    every generated expression names exactly its target, and no-target expressions name nothing."""
    return expression_matches(parse_expression(sentence), objects, image_size)


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


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
                objects.append(SceneObject(shape, colour, size_class, float(cx), float(cy), float(radius),
                                           image_id * 8 + len(objects)))
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


# --------------------------------------------------------------------------------------------------------------
# Expressions for a scene
# --------------------------------------------------------------------------------------------------------------


def _descriptors(obj: SceneObject, rng: np.random.Generator) -> list[Descriptor]:
    out = []
    for use_size in (False, True):
        for use_colour in (False, True):
            for use_shape in (False, True):
                if not (use_size or use_colour or use_shape):
                    continue
                noun = "shape" if use_shape else str(rng.choice(GENERIC_NOUNS))
                out.append(Descriptor(obj.size if use_size else None, obj.colour if use_colour else None,
                                      obj.shape if use_shape else None, noun))
    return out


def _unique_descriptor(index: int, objects: Sequence[SceneObject], rng: np.random.Generator) -> Descriptor | None:
    """The shortest descriptor that matches only `objects[index]` (a random one among ties), if any."""
    unique = [d for d in _descriptors(objects[index], rng) if [i for i, o in enumerate(objects) if d.matches(o)] == [index]]
    if not unique:
        return None
    shortest = min(len(d.words()) for d in unique)
    ties = [d for d in unique if len(d.words()) == shortest]
    return ties[int(rng.integers(len(ties)))]


def _is_clear(expression: Expression, target: int, objects: Sequence[SceneObject], size: int) -> bool:
    """True if `expression` designates `target` alone even with the position tests widened by the margin, and
    still designates it with them narrowed: no other object is a borderline match."""
    margin = POSITION_MARGIN * size
    try:
        if expression_matches(expression, objects, size, margin=margin) != [target]:
            return False
        if target not in expression_matches(expression, objects, size, margin=-margin):
            return False
    except ValueError:  # ambiguous landmark
        return False
    if expression.superlative:
        key = _superlative_key(expression.superlative)
        values = sorted(key(o) for o in objects if expression.target.matches(o))
        if len(values) < 2 or values[1] - values[0] < SUPERLATIVE_GAP * size:
            return False
    return True


def _candidate_expressions(target: int, objects: Sequence[SceneObject], rng: np.random.Generator) -> dict[str, list]:
    descriptors = _descriptors(objects[target], rng)
    kinds: dict[str, list[Expression]] = {
        "attributes": [Expression(d) for d in descriptors],
        "region": [Expression(d, region=r) for d in descriptors for r in REGION_PHRASES],
        "superlative": [Expression(d, superlative=s) for d in descriptors for s in SUPERLATIVES],
        "relation": [],
    }
    for j in range(len(objects)):
        if j == target:
            continue
        landmark = _unique_descriptor(j, objects, rng)
        if landmark is not None:
            kinds["relation"] += [Expression(d, relation=r, landmark=landmark) for d in descriptors for r in RELATIONS]
    for expressions in kinds.values():
        order = rng.permutation(len(expressions))
        expressions[:] = [expressions[k] for k in order]
    return kinds


_KIND_WEIGHTS = {"attributes": 0.3, "region": 0.25, "superlative": 0.15, "relation": 0.3}


def _sentence(expression: Expression, rng: np.random.Generator) -> str:
    return " ".join(expression.words(article=rng.random() > 0.15, long_relation=rng.random() < 0.5))


def target_sentences(
    target: int, objects: Sequence[SceneObject], size: int, count: int, rng: np.random.Generator
) -> list[str]:
    """Up to `count` distinct clear expressions for `objects[target]`, of mixed kinds."""
    kinds = _candidate_expressions(target, objects, rng)
    sentences: list[str] = []
    while len(sentences) < count:
        available = [k for k, expressions in kinds.items() if expressions]
        if not available:
            break
        weights = np.asarray([_KIND_WEIGHTS[k] for k in available])
        kind = available[int(rng.choice(len(available), p=weights / weights.sum()))]
        while kinds[kind]:
            expression = kinds[kind].pop()
            if _is_clear(expression, target, objects, size):
                sentence = _sentence(expression, rng)
                if sentence not in sentences:
                    sentences.append(sentence)
                    break
    return sentences


def absent_sentences(objects: Sequence[SceneObject], count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct expressions naming a colour/shape (and size) combination absent from the scene."""
    sentences: list[str] = []
    for _ in range(200):
        if len(sentences) == count:
            break
        size = str(rng.choice(SIZES)) if rng.random() < 0.4 else None
        descriptor = Descriptor(size, str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))
        if any(descriptor.matches(o) for o in objects):
            continue
        sentence = _sentence(Expression(descriptor), rng)
        if sentence not in sentences:
            sentences.append(sentence)
    return sentences


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def iter_synthetic(
    num_refs: int,
    image_size: int = 128,
    seed: int = 0,
    split: str = "train",
    no_target_fraction: float = 0.0,
) -> Iterator[tuple[Scene, dict]]:
    """Yields `(scene, row)` for `num_refs` refs of one split: rows in the common schema, scene for checking them.

    Refs of one scene come one after the other and share its `image_id`; each object with at least two clear
    expressions becomes a ref, or (with probability `no_target_fraction`) its slot becomes a no-target ref.
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown synthetic split {split!r}: choose one of {', '.join(SPLIT_CODES)}")
    if not 0.0 <= no_target_fraction <= 1.0:
        raise ValueError(f"no_target_fraction must lie in [0, 1], got {no_target_fraction}")
    if seed < 0 or image_size < 16:
        raise ValueError(f"need seed >= 0 and image_size >= 16, got seed={seed}, image_size={image_size}")
    code = SPLIT_CODES[split]
    emitted, scene_index = 0, 0
    empty_png = None
    while emitted < num_refs:
        rng = np.random.default_rng(np.random.SeedSequence([seed, code, scene_index, SYNTHETIC_VERSION]))
        scene = render_scene(rng, image_size, code * IMAGE_ID_STRIDE + scene_index)
        scene_index += 1
        for target in rng.permutation(len(scene.objects)):
            if emitted == num_refs:
                break
            count = int(rng.integers(2, 4))
            if rng.random() < no_target_fraction:
                sentences = absent_sentences(scene.objects, count, rng)
                mask, ann_ids, category, bbox = None, [], -1, [0.0, 0.0, 0.0, 0.0]
            else:
                sentences = target_sentences(int(target), scene.objects, image_size, count, rng)
                obj = scene.objects[target]
                mask = scene.masks[target]
                ann_ids, category, bbox = [obj.ann_id], SHAPES.index(obj.shape) + 1, _bbox(mask)
            if len(sentences) < 2:
                continue
            if mask is None:
                empty_png = empty_png or mask_to_png(np.zeros((image_size, image_size), dtype=bool))
                mask_png = empty_png
            else:
                mask_png = mask_to_png(mask)
            row = {
                "image": {"bytes": scene.image_png, "path": None},
                "mask": {"bytes": mask_png, "path": None},
                "sentences": sentences,
                "ref_id": code * IMAGE_ID_STRIDE + emitted,
                "image_id": scene.image_id,
                "ann_ids": ann_ids,
                "category_id": category,
                "bbox": bbox,
                "no_target": mask is None,
            }
            emitted += 1
            yield scene, row


def make_synthetic(
    num_train: int,
    num_val: int,
    num_test: int,
    image_size: int = 128,
    seed: int = 0,
    *,
    no_target_fraction: float = 0.0,
    save_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """The synthetic referring dataset: splits train / val / test with that many refs (objects) each.

    A split asked for with 0 refs is left out. Images are embedded PNG bytes, so `save_dir` (written with
    `save_to_disk`, then memory-mapped back) is self-contained. Every ref has 2–3 sentences.
    """
    splits = {}
    for name, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        if count < 0:
            raise ValueError(f"the number of {name} refs must be >= 0, got {count}")
        if count:
            rows = [row for _, row in iter_synthetic(count, image_size, seed, name, no_target_fraction)]
            splits[name] = datasets.Dataset.from_list(rows, features=FEATURES, split=datasets.NamedSplit(name))
    if not splits:
        raise ValueError("make_synthetic needs at least one split with refs")
    built = DatasetDict(splits)
    if save_dir is not None:
        built.save_to_disk(str(save_dir))
        return datasets.load_from_disk(str(save_dir))
    return built


def load_synthetic(
    sizes: Sequence[int] = (2000, 200, 200),
    seed: int = 0,
    image_size: int = 128,
    *,
    no_target_fraction: float = 0.0,
    cache_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """`make_synthetic`, cached: saved once under `<cache_dir>/synthetic/<sizes>-<image size>-<seed>-…-v<version>`
    (default cache_dir `$HF_DATASETS_CACHE/metris_hf`) and memory-mapped from there on later calls."""
    num_train, num_val, num_test = (int(n) for n in sizes)
    name = f"{num_train}-{num_val}-{num_test}-{image_size}px-seed{seed}-nt{no_target_fraction:g}-v{SYNTHETIC_VERSION}"
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()

    def build(_: Path) -> tuple[DatasetDict, dict]:
        return make_synthetic(num_train, num_val, num_test, image_size, seed, no_target_fraction=no_target_fraction), {}

    return cached_build(root / "synthetic" / name, build, f"synthetic {name}")
