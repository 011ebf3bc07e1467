"""Expressions for a rendered scene: clear-cut ones for a target, and no-target ones naming nothing there."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .grammar import (
    COLOURS,
    GENERIC_NOUNS,
    REGION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZES,
    SUPERLATIVES,
    Descriptor,
    Expression,
    SceneObject,
    expression_matches,
    superlative_key,
)

POSITION_MARGIN = 0.06  # fraction of the image side
SUPERLATIVE_GAP = 0.08


def _descriptors(obj: SceneObject, rng: np.random.Generator) -> list[Descriptor]:
    """Every non-empty choice of (size, colour, shape) to name; a generic noun stands in for an unnamed shape."""
    return [
        Descriptor(
            obj.size if size else None,
            obj.colour if colour else None,
            obj.shape if shape else None,
            "shape" if shape else str(rng.choice(GENERIC_NOUNS)),
        )
        for size, colour, shape in itertools.product((False, True), repeat=3)
        if size or colour or shape
    ]


def _unique_descriptor(index: int, objects: Sequence[SceneObject], rng: np.random.Generator) -> Descriptor | None:
    """The shortest descriptor that matches only `objects[index]` (a random one among ties), if any."""
    unique = [
        d for d in _descriptors(objects[index], rng) if [i for i, o in enumerate(objects) if d.matches(o)] == [index]
    ]
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
        key = superlative_key(expression.superlative)
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
        expressions[:] = [expressions[k] for k in rng.permutation(len(expressions))]
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
