"""The one schema every source is mapped to, mask encoding, the on-disk cache, and the one-row-per-sentence view.

Schema (one row per referred object, "ref"):

| column | feature | content |
| --- | --- | --- |
| `image` | `Image()` | COCO: the file path only (read lazily, nothing embedded); synthetic: embedded PNG bytes |
| `mask` | `Image()` | 1-bit PNG (PIL mode "1"): `np.asarray(row["mask"])` is the boolean H×W mask |
| `sentences` | list of str | every expression of the object (REFER's `raw` text, `sent` where `raw` is blank) |
| `ref_id`, `image_id` | int64 | ids from the annotation files (synthetic: unique per split) |
| `ann_ids` | list of int64 | the COCO annotations whose union is the mask (empty for no-target) |
| `category_id` | int64 | the COCO category (-1 for no-target, or several targets of different categories) |
| `bbox` | list of float32 | [x, y, w, h] around all targets ([0, 0, 0, 0] for no-target) |
| `no_target` | bool | gRefCOCO: the expression matches nothing and the mask is all zero |

Masks are stored as 1-bit PNGs because that is the most compact form the `Image` feature round-trips
losslessly (a 640×480 COCO mask is ~1 KB) and it decodes to a boolean array, so no 0/1 vs 0/255 question arises.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
from datasets import DatasetDict, Features, Image, List, Value
from pycocotools import mask as mask_utils

logger = logging.getLogger(__name__)

# Bump when the content of built datasets changes, so stale caches are not reused.
BUILD_VERSION = 1

# REFER split names in a fixed display order; other names (if a file has them) follow alphabetically.
SPLIT_ORDER = ("train", "val", "testA", "testB", "test")

FEATURES = Features(
    {
        "image": Image(),
        "mask": Image(),
        "sentences": List(Value("string")),
        "ref_id": Value("int64"),
        "image_id": Value("int64"),
        "ann_ids": List(Value("int64")),
        "category_id": Value("int64"),
        "bbox": List(Value("float32")),
        "no_target": Value("bool"),
    }
)

SENTENCE_FEATURES = Features(
    {
        "sentence": Value("string"),
        "image": Image(),
        "mask": Image(),
        "ref_id": Value("int64"),
        "image_id": Value("int64"),
        "no_target": Value("bool"),
        "sent_index": Value("int32"),
    }
)


# --------------------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------------------


def mask_to_png(mask: np.ndarray) -> bytes:
    """Boolean H×W mask → 1-bit PNG bytes (what the `mask` column stores)."""
    image = PIL.Image.fromarray(np.ascontiguousarray(mask, dtype=bool))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)  # pinned: the same mask gives the same bytes
    return buffer.getvalue()


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One COCO `segmentation` (polygons, uncompressed or compressed RLE) → boolean H×W mask via pycocotools.

    Polygons of one object are merged as a union: where two of them overlap the pixel is foreground
    (LAVT's loader sums the decoded polygons and so loses such pixels; we deliberately do not).
    """
    if isinstance(segmentation, list):
        # fewer than 3 points is no polygon; pycocotools would also read a 4-number list as a box
        polygons = [[float(v) for v in polygon] for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(v) for v in segmentation.get("size", (height, width))]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image size {[height, width]}")
        if isinstance(segmentation["counts"], list):  # uncompressed RLE (COCO iscrowd annotations)
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            counts = segmentation["counts"]
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def union_mask(annotations: Iterable[dict], height: int, width: int) -> np.ndarray:
    """The union of the masks of several COCO annotations (one for RefCOCO, several for gRefCOCO)."""
    mask = np.zeros((height, width), dtype=bool)
    for annotation in annotations:
        try:
            mask |= decode_segmentation(annotation["segmentation"], height, width)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"annotation {annotation.get('id')}: bad segmentation ({error})") from error
    return mask


def union_bbox(boxes: Iterable[Iterable[float]]) -> list[float]:
    """[x, y, w, h] boxes → the box around all of them ([0, 0, 0, 0] when there are none)."""
    boxes = [list(map(float, box)) for box in boxes]
    if not boxes:
        return [0.0, 0.0, 0.0, 0.0]
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


def clean_sentences(sentences: Iterable[Any]) -> list[str]:
    """REFER sentence entries (dicts with `raw`/`sent`, or plain strings) → non-blank strings.

    `raw` is the text as the annotator typed it (what LAVT feeds its tokenizer); `sent` is REFER's cleaned,
    lowercased copy, used where `raw` is blank. Blank expressions are dropped: the processor refuses them.
    """
    texts = []
    for entry in sentences:
        if isinstance(entry, dict):
            text = str(entry.get("raw") or "").strip() or str(entry.get("sent") or "").strip()
        else:
            text = str(entry).strip()
        if text:
            texts.append(text)
    return texts


def sort_splits(names: Iterable[str]) -> list[str]:
    """Split names in REFER's usual order (train, val, testA, testB, test), unknown ones last."""
    names = list(dict.fromkeys(names))
    known = [name for name in SPLIT_ORDER if name in names]
    return known + sorted(name for name in names if name not in SPLIT_ORDER)


# --------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """`$HF_DATASETS_CACHE/metris_hf` (by default `~/.cache/huggingface/datasets/metris_hf`)."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "metris_hf"


def file_signature(path: str | os.PathLike) -> list[Any]:
    """Absolute path, size and modification time: enough to notice that an input file changed."""
    stat = os.stat(path)
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def fingerprint(payload: Any) -> str:
    """A short stable hash of a JSON-serialisable description of a build's inputs."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_splits(data: DatasetDict, folder: Path) -> None:
    """Writes each split as `<split>.arrow`, then `splits.json` (the marker of a complete write).

    Not `save_to_disk`: in datasets 5 it always embeds the files an `Image` column points to, which for COCO
    would copy every referenced JPEG into the cache. An `ArrowWriter` keeps paths as paths.
    """
    from datasets.arrow_writer import ArrowWriter

    folder.mkdir(parents=True, exist_ok=True)
    for split, table in data.items():
        writer = ArrowWriter(features=table.features, path=str(folder / f"{split}.arrow"))
        try:
            for batch in table.with_format("arrow").iter(1000):
                writer.write_table(batch)
            writer.finalize()
        finally:
            writer.close()
    (folder / "splits.json").write_text(json.dumps(list(data)))


def read_splits(folder: Path) -> DatasetDict:
    """The DatasetDict `write_splits` wrote, memory-mapped."""
    names = json.loads((folder / "splits.json").read_text())
    return DatasetDict(
        {name: datasets.Dataset.from_file(str(folder / f"{name}.arrow"), split=datasets.NamedSplit(name))
         for name in names}
    )


def cached_build(
    cache_path: Path, build: Callable[[Path], tuple[DatasetDict, dict]], what: str
) -> DatasetDict:
    """Loads `cache_path` if a previous build saved it there, else builds, saves and loads it.

    `build(work_dir)` returns the DatasetDict and a JSON-able report (skipped images, dropped sentences),
    which is kept beside the data and logged again on every cache hit. The save goes to a temporary folder
    renamed into place, so concurrent builders (two test workers, two training processes) never see a
    half-written cache: whoever renames first wins, the other discards its copy.
    """
    report_path = cache_path / "metris_build.json"
    if (cache_path / "splits.json").is_file():
        logger.info("%s: loading the cached build %s", what, cache_path)
        _log_report(what, _read_report(report_path))
        return read_splits(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work_dir = cache_path.parent / f".{cache_path.name}.work-{tag}"
    staging = cache_path.parent / f".{cache_path.name}.tmp-{tag}"
    try:
        built, report = build(work_dir)
        staging.mkdir(parents=True)
        (staging / "metris_build.json").write_text(json.dumps(report, indent=1, sort_keys=True))
        write_splits(built, staging)
        del built
        if cache_path.exists() and not (cache_path / "splits.json").is_file():
            # complete caches only ever appear by the rename below, so this is debris (an older format, a
            # crash while copying by hand): replace it
            shutil.rmtree(cache_path, ignore_errors=True)
        try:
            os.rename(staging, cache_path)
        except OSError:  # another process finished first: use its copy
            if not (cache_path / "splits.json").is_file():
                raise
        _log_report(what, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    return read_splits(cache_path)


def _read_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _log_report(what: str, report: dict) -> None:
    skipped = report.get("skipped_missing_images", 0) + report.get("skipped_unreadable_images", 0)
    if skipped:
        logger.warning(
            "%s: %d ref(s) skipped because their image is missing or unreadable (%d missing, %d unreadable; e.g. %s)",
            what, report.get("skipped_refs", 0), report.get("skipped_missing_images", 0),
            report.get("skipped_unreadable_images", 0), report.get("example_skipped"),
        )
    if report.get("dropped_blank_sentences"):
        logger.info("%s: %d blank expression(s) dropped", what, report["dropped_blank_sentences"])


# --------------------------------------------------------------------------------------------------------------
# One row per sentence
# --------------------------------------------------------------------------------------------------------------


def _explode(batch: dict[str, list]) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in SENTENCE_FEATURES}
    for i, sentences in enumerate(batch["sentences"]):
        for index, sentence in enumerate(sentences):
            out["sentence"].append(sentence)
            out["image"].append(batch["image"][i])
            out["mask"].append(batch["mask"][i])
            out["ref_id"].append(batch["ref_id"][i])
            out["image_id"].append(batch["image_id"][i])
            out["no_target"].append(batch["no_target"][i])
            out["sent_index"].append(index)
    return out


def sentence_rows(dataset: datasets.Dataset) -> datasets.Dataset:
    """One split → one row per (object, sentence): the evaluation protocol's samples.

    Columns: `sentence`, `image`, `mask`, `ref_id`, `image_id`, `no_target`, `sent_index` (the sentence's
    position in the object's `sentences`). Images and masks are carried over undecoded (paths stay paths), so
    this costs one pass over the annotations, not over the pixels; `datasets` caches the result beside a
    dataset loaded from disk, so the next evaluation reuses it.
    """
    missing = {"sentences", "image", "mask", "ref_id", "image_id", "no_target"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"sentence_rows needs the metris_hf.data schema; missing column(s) {sorted(missing)}")
    raw = dataset.cast_column("image", Image(decode=False)).cast_column("mask", Image(decode=False))
    undecoded = SENTENCE_FEATURES.copy()
    undecoded["image"] = Image(decode=False)
    undecoded["mask"] = Image(decode=False)
    exploded = raw.map(
        _explode, batched=True, batch_size=256, remove_columns=raw.column_names, features=undecoded,
        desc="one row per sentence",
    )
    # cast_column only flips the decode flag (no rewrite); Dataset.cast would rewrite the whole table
    return exploded.cast_column("image", Image()).cast_column("mask", Image())
