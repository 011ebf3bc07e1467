"""The synthetic set's grammar: its words, the noun phrases and expressions they form, and which objects of a
scene an expression designates. Generator (`expressions.py`) and checker (`matching_objects`) share it, so a
sentence means one thing to both."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
SIZE_WORDS = {"small": "small", "big": "big", "large": "big"}
GENERIC_NOUNS = ("shape", "object", "one")
REGION_PHRASES = {
    "left": ("on", "the", "left"),
    "right": ("on", "the", "right"),
    "top": ("at", "the", "top"),
    "bottom": ("at", "the", "bottom"),
}
SUPERLATIVES = ("leftmost", "rightmost", "highest", "lowest")
RELATIONS = ("left", "right", "above", "below")
ARTICLES = ("the", "a", "an")


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


def _in_region(obj: SceneObject, region: str, size: int, margin: float) -> bool:
    low, high = size / 3 + margin, 2 * (size / 3) - margin  # the outer thirds, widened by `margin`
    return {"left": obj.cx < low, "right": obj.cx > high, "top": obj.cy < low, "bottom": obj.cy > high}[region]


def _related(obj: SceneObject, landmark: SceneObject, relation: str, margin: float) -> bool:
    """`obj` lies in the 90° cone on the `relation` side of the landmark's centre: its displacement along that
    direction exceeds the sideways one ("below" means mostly below, not far to the side and a little lower)."""
    dx, dy = obj.cx - landmark.cx, obj.cy - landmark.cy
    along, across = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return along - abs(across) > -margin


def superlative_key(superlative: str) -> Callable[[SceneObject], float]:
    """Sort key that puts the object a superlative picks first (the generator also measures its lead)."""
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
        key = superlative_key(expression.superlative)
        candidates = [min(candidates, key=lambda i: key(objects[i]))]
    if expression.relation:
        assert expression.landmark is not None
        landmarks = [j for j, obj in enumerate(objects) if expression.landmark.matches(obj)]
        if len(landmarks) != 1:
            raise ValueError(
                f"the landmark {' '.join(expression.landmark.words())!r} matches {len(landmarks)} objects"
            )
        (j,) = landmarks
        candidates = [
            i for i in candidates if i != j and _related(objects[i], objects[j], expression.relation, margin)
        ]
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
