"""A synthetic referring dataset: scenes of 2–6 shapes, 2–3 expressions per referred object, in the common schema.

Why: the whole chain (data, training, evaluation, the demo) runs on a laptop CPU in minutes, with ground truth
that is right by construction: an expression (attributes, absolute position, superlative, or relation to another
object) is kept only if exactly one object satisfies it with a margin, and `matching_objects` re-reads a sentence
from its words alone so the tests can check that. Scene k of split s under seed n comes from
`SeedSequence([n, s, k, version])`: the same call gives the same bytes, and splits never share a scene.

One concern per file: `grammar.py` (words, expressions, what they designate), `render.py` (pixels),
`expressions.py` (which expressions a scene gets), `tokenizer.py`, `build.py` (rows, splits, the cached dataset).
"""

from .build import iter_synthetic, load_synthetic, make_synthetic
from .grammar import matching_objects
from .tokenizer import build_synthetic_tokenizer, synthetic_vocabulary

__all__ = [
    "build_synthetic_tokenizer",
    "iter_synthetic",
    "load_synthetic",
    "make_synthetic",
    "matching_objects",
    "synthetic_vocabulary",
]
