"""The one schema every source is mapped to (`FEATURES`, one row per referred object; columns in docs/data.md),
mask decoding and validation, the on-disk cache, and the one-row-per-sentence view.

Masks are 1-bit PNGs in an `Image` column: the most compact form it round-trips losslessly (a 640×480 COCO mask
is ~1 KB), and it decodes to a boolean array, so no 0/1 vs 0/255 question arises. COCO images are stored as paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
from datasets import Dataset, DatasetDict, Features, Image, List, NamedSplit, Value
from datasets.arrow_writer import ArrowWriter
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

# One row per sentence: the object's columns an evaluation needs, with its sentence and that sentence's position
SENTENCE_FEATURES = Features(
    {
        "sentence": Value("string"),
        **{name: FEATURES[name] for name in ("image", "mask", "ref_id", "image_id", "no_target")},
        "sent_index": Value("int32"),
    }
)


def mask_to_png(mask: np.ndarray) -> bytes:
    """Boolean H×W mask → 1-bit PNG bytes (what the `mask` column stores)."""
    image = PIL.Image.fromarray(np.ascontiguousarray(mask, dtype=bool))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)  # pinned: the same mask gives the same bytes
    return buffer.getvalue()


# The largest image side a build accepts: a declared 10**6 × 10**6 image would make a terabyte mask.
MAX_IMAGE_SIDE = 16384
# Polygon points may lie a little outside the image (COCO has some at -0.5); farther than this many image
# sides away, pycocotools would rasterise a huge outline, so such a polygon is refused.
POLYGON_REACH = 4


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_coordinate(value: Any, reach: float) -> bool:
    return _is_number(value) and math.isfinite(value) and abs(value) <= reach


def check_image_size(info: dict, image_id: Any) -> tuple[int, int]:
    """An image entry's (height, width) as ints, or a ValueError naming the image and what is wrong."""
    sides = []
    for name in ("height", "width"):
        if name not in info:
            raise ValueError(f"image {image_id} lacks {[key for key in ('height', 'width') if key not in info]}")
        value = info[name]
        if not _is_number(value) or not math.isfinite(value) or value != int(value):
            raise ValueError(f"image {image_id}: image {name} must be a whole number, got {value!r}")
        if not 0 < value <= MAX_IMAGE_SIDE:
            raise ValueError(f"image {image_id}: image {name} must lie in [1, {MAX_IMAGE_SIDE}], got {value}")
        sides.append(int(value))
    return sides[0], sides[1]


def _compressed_counts(counts: str) -> list[int]:
    """COCO's compressed RLE string → its run lengths (6-bit characters from '0', 5 bits of value each, bit 0x20
    = more to come, bit 0x10 of the last = negative; from the fourth run on, a delta from the run two before)."""
    values: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("compressed RLE counts end inside a number")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64 or shift > 60:
                raise ValueError(f"compressed RLE counts are garbled at character {position}")
            value |= (code & 0x1F) << shift
            more, shift, position = bool(code & 0x20), shift + 5, position + 1
        if code & 0x10:
            value |= -1 << shift
        values.append(value + (values[-2] if len(values) > 2 else 0))
    return values


def segmentation_rle(segmentation: Any, height: int, width: int) -> Any:
    """One COCO `segmentation` (polygons, uncompressed or compressed RLE), validated → pycocotools' RLE (None:
    nothing to draw).

    Why validate: pycocotools trusts its input. A NaN or far-away polygon point makes it rasterise without end,
    and RLE runs that do not add up to height × width make it write past the mask. Polygons of fewer than 3
    points are skipped (pycocotools would read a 4-number list as a box).
    """
    if isinstance(segmentation, list):
        reach = POLYGON_REACH * max(height, width)
        polygons = []
        for index, polygon in enumerate(segmentation):
            if not isinstance(polygon, (list, tuple)):
                raise ValueError(f"polygon {index} is a {type(polygon).__name__}, not a list of coordinates")
            if not all(_is_coordinate(v, reach) for v in polygon):
                raise ValueError(
                    f"polygon {index} holds a coordinate that is not a finite number within {reach} of the "
                    f"image ({[v for v in polygon if not _is_coordinate(v, reach)][:3]})"
                )
            if len(polygon) % 2:
                raise ValueError(f"polygon {index} has an odd number of coordinates ({len(polygon)})")
            if len(polygon) >= 6:
                polygons.append([float(v) for v in polygon])
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)) if polygons else None
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size", [height, width])
        if not isinstance(size, (list, tuple)) or [v for v in size] != [height, width]:
            raise ValueError(f"RLE size {size!r} differs from the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE (COCO iscrowd annotations)
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                raise ValueError("uncompressed RLE counts must be non-negative integers")
            runs = counts
        elif isinstance(counts, (str, bytes)):
            text = counts.decode("latin1") if isinstance(counts, bytes) else counts
            runs = _compressed_counts(text)
            counts = text.encode("latin1")
        else:
            raise ValueError(f"RLE counts must be a list or a string, got {type(counts).__name__}")
        if any(run < 0 for run in runs) or sum(runs) != height * width:
            raise ValueError(f"RLE runs add up to {sum(runs)} pixels (or run negative), not {height}×{width}")
        if isinstance(counts, list):
            return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        return {"size": [height, width], "counts": counts}
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def union_mask(segmentations: Iterable[Any], height: int, width: int) -> np.ndarray:
    """The union of several COCO segmentations (all polygons of one object, all targets of a gRefCOCO ref), as
    a boolean H×W mask: where two polygons overlap the pixel is foreground (LAVT's loader sums the decoded
    polygons and so loses such pixels; we deliberately do not)."""
    mask = np.zeros((height, width), dtype=bool)
    for segmentation in segmentations:
        rle = segmentation_rle(segmentation, height, width)
        if rle is not None:
            mask |= mask_utils.decode(rle).astype(bool)
    return mask


def check_annotation(
    ann: dict, image_id: int, height: int, width: int, required: tuple[str, ...]
) -> tuple[list[float], int]:
    """A COCO annotation's checked bbox and mask area (0: a degenerate target), or a ValueError naming it: a
    `required` key missing, another image's annotation, a bad category, bbox or segmentation."""
    ann_id = ann.get("id")
    missing = [key for key in ("segmentation", "bbox", *required) if key not in ann]
    if missing:
        raise ValueError(f"annotation {ann_id} lacks {missing}")
    if ann.get("image_id", image_id) != image_id:
        raise ValueError(f"annotation {ann_id} belongs to image {ann['image_id']}, not to the ref's image {image_id}")
    if "category_id" in required and not _is_id(ann["category_id"]):
        raise ValueError(f"annotation {ann_id}: category_id must be an integer, got {ann['category_id']!r}")
    try:
        rle = segmentation_rle(ann["segmentation"], height, width)  # validated without decoding
        return check_bbox(ann["bbox"]), 0 if rle is None else int(mask_utils.area(rle))
    except ValueError as error:
        raise ValueError(f"annotation {ann_id}: {error}") from None


def check_bbox(bbox: Any) -> list[float]:
    """A COCO [x, y, w, h] box of 4 finite numbers, w and h ≥ 0, or a ValueError saying what it is."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_coordinate(v, math.inf) for v in bbox):
        raise ValueError(f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"bbox has a negative width or height: {bbox!r}")
    return [float(v) for v in bbox]


def union_bbox(boxes: Iterable[Iterable[float]]) -> list[float]:
    """[x, y, w, h] boxes → the box around all of them ([0, 0, 0, 0] when there are none)."""
    boxes = np.asarray([list(box) for box in boxes], dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return [0.0, 0.0, 0.0, 0.0]
    (x0, y0), (x1, y1) = boxes[:, :2].min(0), (boxes[:, :2] + boxes[:, 2:]).max(0)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


SENTENCE_FIELDS = ("sent", "raw")


def check_sentence_field(field: str) -> str:
    if field not in SENTENCE_FIELDS:
        raise ValueError(f"sentence_field must be one of {', '.join(SENTENCE_FIELDS)}, got {field!r}")
    return field


def clean_sentences(sentences: Any, field: str = "sent") -> list[str]:
    """REFER sentence entries (dicts with `raw`/`sent`, or plain strings) → non-blank strings (the processor
    refuses blank ones). `field` picks the text, the other one standing in where it is blank: `sent` (REFER's
    cleaned, lowercased copy, what the authors of METRIS tokenise) or `raw` (as typed; what LAVT tokenises).
    """
    other = "raw" if check_sentence_field(field) == "sent" else "sent"
    if isinstance(sentences, (str, bytes)) or not isinstance(sentences, (list, tuple)):
        raise ValueError(f"`sentences` must be a list of sentences, got {type(sentences).__name__} {sentences!r:.80}")
    texts = []
    for index, entry in enumerate(sentences):
        if isinstance(entry, dict):
            for name in ("raw", "sent"):
                value = entry.get(name)
                if value is not None and not isinstance(value, str):
                    raise ValueError(
                        f"sentence {index}: `{name}` must be text, got {type(value).__name__} {value!r:.80}"
                    )
            text = (entry.get(field) or "").strip() or (entry.get(other) or "").strip()
        elif isinstance(entry, str):
            text = entry.strip()
        else:
            raise ValueError(
                f"sentence {index} must be a dict with `raw`/`sent` or a string, "
                f"got {type(entry).__name__} {entry!r:.80}"
            )
        if text:
            texts.append(text)
    return texts


def image_within(root: Path, name: Any) -> Path:
    """`root / name` for an image named by a dataset copy, or a ValueError when the name is not a relative path
    staying inside `root` (absolute, or climbing out with `..`): a downloaded copy must not make the loader read any
    file on the machine. Checked on the text of the path (symbolic links the user made under `root` still work)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"the image file name must be a non-empty text, got {name!r:.80}")
    relative = Path(name)
    if relative.is_absolute() or relative.drive or os.path.normpath(relative).split(os.sep)[0] == os.pardir:
        raise ValueError(f"the image path {name!r:.200} is not inside the image folder {str(root)!r} (refused)")
    return root / relative


def file_signature(path: str | os.PathLike) -> list[Any]:
    """Absolute path, size and modification time: enough to notice that an input file changed."""
    stat = os.stat(path)
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def fingerprint(payload: Any) -> str:
    """A short stable hash of a JSON-serialisable description of a build's inputs."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_build(
    cache_dir: str | os.PathLike | None, name: str, build: Callable[[Path], tuple[DatasetDict, dict]], what: str
) -> DatasetDict:
    """Loads `<cache_dir>/<name>` (cache_dir by default `$HF_DATASETS_CACHE/metris_hf`) if a previous build saved
    it there, else builds, saves and loads it.

    `build(work_dir)` returns the DatasetDict and a JSON-able report (skipped images, dropped sentences), kept
    beside the data and logged on every load. Each split is written as `<split>.arrow`, then `splits.json` (the
    marker of a complete write): not `save_to_disk`, which embeds the files an `Image` column points to (every
    COCO JPEG); `ArrowWriter` keeps paths. The save goes to a temporary folder renamed into place, so concurrent
    builders never see a half-written cache: whoever renames first wins.
    """
    cache_path = Path(datasets.config.HF_DATASETS_CACHE, "metris_hf") if cache_dir is None else Path(cache_dir)
    cache_path /= name
    if (cache_path / "splits.json").is_file():
        logger.info("%s: loading the cached build %s", what, cache_path)
    else:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        work_dir = cache_path.parent / f".{cache_path.name}.work-{tag}"
        staging = cache_path.parent / f".{cache_path.name}.tmp-{tag}"
        try:
            built, report = build(work_dir)
            staging.mkdir(parents=True)
            (staging / "metris_build.json").write_text(json.dumps(report, indent=1, sort_keys=True))
            for split, table in built.items():
                with ArrowWriter(features=table.features, path=str(staging / f"{split}.arrow")) as writer:
                    for batch in table.with_format("arrow").iter(1000):
                        writer.write_table(batch)
                    writer.finalize()
            (staging / "splits.json").write_text(json.dumps(list(built)))
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
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(work_dir, ignore_errors=True)
    with contextlib.suppress(OSError, ValueError):  # a lost report only loses the warnings
        _log_report(what, json.loads((cache_path / "metris_build.json").read_text()))
    names = json.loads((cache_path / "splits.json").read_text())
    return DatasetDict({n: Dataset.from_file(str(cache_path / f"{n}.arrow"), split=NamedSplit(n)) for n in names})


def _log_report(what: str, report: dict) -> None:
    if report.get("skipped_missing_images") or report.get("skipped_unreadable_images"):
        logger.warning(
            "%(what)s: %(skipped_refs)d ref(s) skipped because their image is missing or unreadable "
            "(%(skipped_missing_images)d missing, %(skipped_unreadable_images)d unreadable; e.g. %(example_skipped)s)",
            {"skipped_refs": 0, "skipped_missing_images": 0, "skipped_unreadable_images": 0, **report, "what": what},
        )
    if refs := report.get("degenerate_refs"):
        kept = report.get("degenerate_kept")
        logger.warning(
            "%s: %d ref(s) have an empty target mask (degenerate polygons: < 3 points, or outside the image) but "
            "are not marked no_target: ref_id %s; %s",
            what,
            len(refs),
            ", ".join(map(str, refs[:20])) + (", …" if len(refs) > 20 else ""),
            "kept (keep_degenerate=True)" if kept else "left out of the train split(s), kept in evaluation splits",
        )
    if report.get("dropped_blank_sentences"):
        logger.info("%s: %d blank expression(s) dropped", what, report["dropped_blank_sentences"])


def _explode(batch: dict[str, list]) -> dict[str, list]:
    counts = [len(sentences) for sentences in batch["sentences"]]
    out = {
        name: [v for v, n in zip(batch[name], counts) for _ in range(n)] for name in SENTENCE_FEATURES if name in batch
    }
    out["sentence"] = [sentence for sentences in batch["sentences"] for sentence in sentences]
    out["sent_index"] = [index for n in counts for index in range(n)]
    return out


def sentence_rows(dataset: Dataset) -> Dataset:
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
    undecoded = Features({**SENTENCE_FEATURES, "image": Image(decode=False), "mask": Image(decode=False)})
    exploded = raw.map(
        _explode,
        batched=True,
        batch_size=256,
        remove_columns=raw.column_names,
        features=undecoded,
        desc="one row per sentence",
    )
    # cast_column only flips the decode flag (no rewrite); Dataset.cast would rewrite the whole table
    return exploded.cast_column("image", Image()).cast_column("mask", Image())
