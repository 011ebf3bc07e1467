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

One concern per file: `grammar.py` (words, expressions, what they designate), `render.py` (pixels),
`expressions.py` (which expressions a scene gets), `tokenizer.py`, `build.py` (rows, splits, the cached dataset).
"""

from .build import (
    IMAGE_ID_STRIDE,
    SPLIT_CODES,
    SYNTHETIC_VERSION,
    iter_synthetic,
    load_synthetic,
    make_synthetic,
)
from .expressions import absent_sentences, target_sentences
from .grammar import (
    ARTICLES,
    COLOURS,
    GENERIC_NOUNS,
    REGION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    SUPERLATIVES,
    Descriptor,
    Expression,
    SceneObject,
    expression_matches,
    matching_objects,
    parse_expression,
)
from .render import SIZE_RANGES, Scene, render_scene
from .tokenizer import SYNTHETIC_WORDS, build_synthetic_tokenizer, synthetic_vocabulary

__all__ = [
    "ARTICLES",
    "COLOURS",
    "GENERIC_NOUNS",
    "IMAGE_ID_STRIDE",
    "REGION_PHRASES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SIZE_RANGES",
    "SIZE_WORDS",
    "SPLIT_CODES",
    "SUPERLATIVES",
    "SYNTHETIC_VERSION",
    "SYNTHETIC_WORDS",
    "Descriptor",
    "Expression",
    "Scene",
    "SceneObject",
    "absent_sentences",
    "build_synthetic_tokenizer",
    "expression_matches",
    "iter_synthetic",
    "load_synthetic",
    "make_synthetic",
    "matching_objects",
    "parse_expression",
    "render_scene",
    "synthetic_vocabulary",
    "target_sentences",
]
