"""Scenes and expressions into rows of the common schema: the split's seeds, ids, the dataset and its cache."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence

import datasets
import numpy as np
from datasets import DatasetDict

from ..schema import FEATURES, cached_build, mask_to_png
from .expressions import absent_sentences, target_sentences
from .grammar import SHAPES
from .render import Scene, render_scene

SYNTHETIC_VERSION = 1

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
IMAGE_ID_STRIDE = 10_000_000  # image and ref ids of split s start at s × this: unique across splits


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
                mask, ann_ids, category, bbox = np.zeros((image_size,) * 2, bool), [], -1, [0.0, 0.0, 0.0, 0.0]
            else:
                sentences = target_sentences(int(target), scene.objects, image_size, count, rng)
                obj = scene.objects[target]
                mask = scene.masks[target]
                ann_ids, category, bbox = [obj.ann_id], SHAPES.index(obj.shape) + 1, _bbox(mask)
            if len(sentences) < 2:
                continue
            row = {
                "image": {"bytes": scene.image_png, "path": None},
                "mask": {"bytes": mask_to_png(mask), "path": None},
                "sentences": sentences,
                "ref_id": code * IMAGE_ID_STRIDE + emitted,
                "image_id": scene.image_id,
                "ann_ids": ann_ids,
                "category_id": category,
                "bbox": bbox,
                "no_target": not ann_ids,
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
    sets = (num_train, num_val, num_test, image_size, seed)
    build = functools.partial(make_synthetic, *sets, no_target_fraction=no_target_fraction)
    return cached_build(cache_dir, f"synthetic/{name}", lambda _: (build(), {}), f"synthetic {name}")
