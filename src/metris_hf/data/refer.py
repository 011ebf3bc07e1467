"""RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO from the standard REFER layout, as `datasets.DatasetDict`s.

Layout (what the peers' loaders read; see the README's Data section):

    <data_root>/refcoco/refs(unc).p, refs(google).p, instances.json
    <data_root>/refcoco+/refs(unc).p, instances.json
    <data_root>/refcocog/refs(umd).p, refs(google).p, instances.json
    <data_root>/grefcoco/grefs(unc).json, instances.json
    <data_root>/images/mscoco/images/train2014/COCO_train2014_%012d.jpg     (or any `image_root`)

The refs pickles are read with `RestrictedUnpickler`: only builtin containers and scalars can come out of them,
and a pickle that asks for anything else (a function to call, a class to build) is refused before any of it
runs. Masks are decoded with pycocotools at build time and stored as 1-bit PNGs; images are stored as paths.
A build is written as Arrow files under a key made of the input files' paths, sizes and modification times, so
the next load of the same files is a memory-map (see `cached_build`).

Corrupt images: a missing file is always caught at build time (one `stat` per image). A present but corrupt or
truncated JPEG is caught at build time only with `verify_images=True`, which decodes every image once at 1/8
scale (libjpeg's DCT scaling still reads the whole file, so truncation shows) and names the file. Without it
the error surfaces when the row is read, from PIL, which does not always name the file — run
`scripts/prepare_data.py --verify_images` once on a fresh download.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
from datasets import DatasetDict

from .schema import (
    BUILD_VERSION,
    FEATURES,
    cached_build,
    clean_sentences,
    default_cache_root,
    file_signature,
    fingerprint,
    mask_to_png,
    sort_splits,
    union_bbox,
    union_mask,
)

logger = logging.getLogger(__name__)

# The split schemes each dataset is published with; the first is the default (what the peers report).
SPLIT_BYS: dict[str, tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
    "grefcoco": ("unc",),
}
REFER_DATASETS = tuple(SPLIT_BYS)
COCO_FILE_PATTERN = "COCO_train2014_%012d.jpg"


class UnsafePickleError(pickle.UnpicklingError):
    """A refs pickle asked for something other than builtin containers and scalars."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, tuples, str, bytes, numbers, booleans and None (plus set/frozenset).

    Why: a pickle is a program; `pickle.load` on a downloaded `refs(unc).p` would run whatever it names.
    REFER's pickles hold plain data, which needs no global at all, so every `find_class` request outside a
    short list of inert builtins is refused, before the object it would build is called.
    """

    _ALLOWED = {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell a bytes object
    }

    def __init__(self, file: Any, source: str = "<pickle>"):
        super().__init__(file, encoding="utf-8", errors="replace")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module.replace("__builtin__", "builtins"), name) in self._ALLOWED:  # Python 2 spelling
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refused to unpickle {module}.{name}: a REFER refs file may only hold builtin "
            "containers and scalars (dict, list, str, int, float); nothing from this file was executed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle; nothing was executed")


def restricted_pickle_load(path: str | os.PathLike) -> Any:
    """Reads a pickle file with `RestrictedUnpickler` (builtin containers and scalars only)."""
    with open(path, "rb") as handle:
        data = handle.read()
    return RestrictedUnpickler(io.BytesIO(data), source=str(path)).load()


# --------------------------------------------------------------------------------------------------------------
# Arguments and files
# --------------------------------------------------------------------------------------------------------------


def check_dataset(dataset: str) -> str:
    """The dataset name, or a ValueError naming the choices."""
    if dataset not in SPLIT_BYS:
        raise ValueError(f"unknown REFER dataset {dataset!r}: choose one of {', '.join(REFER_DATASETS)}")
    return dataset


def check_split_by(dataset: str, split_by: str | None) -> str:
    """`split_by`, defaulting to the dataset's usual scheme, or a ValueError naming the valid ones."""
    choices = SPLIT_BYS[check_dataset(dataset)]
    if split_by is None:
        return choices[0]
    if split_by not in choices:
        raise ValueError(f"unknown split_by {split_by!r} for {dataset}: choose one of {', '.join(choices)}")
    return split_by


def refer_files(data_root: str | os.PathLike, dataset: str, split_by: str) -> tuple[Path, Path]:
    """Paths of the refs file and instances.json for a dataset; FileNotFoundError naming any that is missing."""
    folder = Path(data_root) / dataset
    name = f"grefs({split_by}).json" if dataset == "grefcoco" else f"refs({split_by}).p"
    refs_path, instances_path = folder / name, folder / "instances.json"
    for path, what in ((refs_path, "refs file"), (instances_path, "instances file")):
        if not path.is_file():
            raise FileNotFoundError(
                f"{dataset} ({split_by}): {what} not found: looked for {path} "
                f"(expected the REFER layout <data_root>/{dataset}/{name} + instances.json)"
            )
    return refs_path, instances_path


def default_image_root(data_root: str | os.PathLike) -> Path:
    """Where REFER keeps the COCO train2014 images under `data_root`."""
    return Path(data_root) / "images" / "mscoco" / "images" / "train2014"


def load_refs(path: Path) -> list[dict]:
    """A refs file (pickle, restricted; or gRefCOCO's JSON) → a list of ref dicts, structure checked."""
    refs = json.loads(path.read_text()) if path.suffix == ".json" else restricted_pickle_load(path)
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ValueError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    for ref in refs:
        missing = {"ref_id", "image_id", "split", "sentences"} - set(ref)
        if missing or ("ann_id" not in ref and "ann_ids" not in ref):
            raise ValueError(f"{path}: ref {ref.get('ref_id')} lacks {sorted(missing) or ['ann_id']}")
    return refs


def _ann_ids(ref: dict) -> list[int]:
    raw = ref.get("ann_id", ref.get("ann_ids"))
    ids = raw if isinstance(raw, (list, tuple)) else [raw]
    return [int(a) for a in ids if a is not None and int(a) >= 0]  # gRefCOCO marks no-target with [-1]


def _verify_image(path: str) -> str | None:
    """None if the image decodes, else PIL's complaint. JPEGs decode at 1/8 scale: cheap, still reads it all."""
    try:
        with PIL.Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, … for bad files
        return f"{type(error).__name__}: {error}"
    return None


# --------------------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------------------


def _generate_rows(tasks: list[dict]):
    """Generator for `Dataset.from_generator`: decodes each task's mask (in the worker when num_proc > 1)."""
    for task in tasks:
        mask = union_mask(task["annotations"], task["height"], task["width"])
        yield {
            "image": {"path": task["image_path"], "bytes": None},
            "mask": {"path": None, "bytes": mask_to_png(mask)},
            "sentences": task["sentences"],
            "ref_id": task["ref_id"],
            "image_id": task["image_id"],
            "ann_ids": task["ann_ids"],
            "category_id": task["category_id"],
            "bbox": task["bbox"],
            "no_target": task["no_target"],
        }


def build_tasks(
    refs: list[dict], instances: dict, image_root: Path, source: str
) -> tuple[dict[str, list[dict]], int]:
    """Refs + COCO instances → per split, the self-contained description of each row; and blank sentences dropped."""
    images = {int(image["id"]): image for image in instances.get("images", [])}
    annotations = {int(ann["id"]): ann for ann in instances.get("annotations", [])}
    tasks: dict[str, list[dict]] = defaultdict(list)
    dropped = 0
    for ref in refs:
        ref_id, image_id = int(ref["ref_id"]), int(ref["image_id"])
        info = images.get(image_id)
        if info is None:
            raise ValueError(f"{source}: ref {ref_id} names image {image_id}, which instances.json does not list")
        ann_ids = _ann_ids(ref)
        try:
            anns = [annotations[a] for a in ann_ids]
        except KeyError as error:
            raise ValueError(f"{source}: ref {ref_id} names annotation {error}, absent from instances.json") from None
        sentences = clean_sentences(ref["sentences"])
        dropped += len(ref["sentences"]) - len(sentences)
        if not sentences:
            continue
        no_target = bool(ref.get("no_target", False)) or not anns
        categories = {int(ann["category_id"]) for ann in anns}
        file_name = info.get("file_name") or COCO_FILE_PATTERN % image_id
        tasks[str(ref["split"])].append(
            {
                "image_path": str(image_root / file_name),
                "height": int(info["height"]),
                "width": int(info["width"]),
                "annotations": [{"id": a["id"], "segmentation": a["segmentation"]} for a in anns],
                "sentences": sentences,
                "ref_id": ref_id,
                "image_id": image_id,
                "ann_ids": [] if no_target else ann_ids,
                "category_id": categories.pop() if len(categories) == 1 else -1,
                "bbox": union_bbox(a["bbox"] for a in anns),
                "no_target": no_target,
            }
        )
    return dict(tasks), dropped


def check_images(
    paths: list[str], *, skip_missing: bool, verify: bool, num_proc: int | None, source: str
) -> tuple[set[str], dict]:
    """The image files to skip, and a report: a missing (or, with `verify`, undecodable) file raises naming it,
    unless `skip_missing`, in which case it is listed for skipping and counted."""
    paths = sorted(set(paths))
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing and not skip_missing:
        raise FileNotFoundError(
            f"{source}: {len(missing)} referenced image(s) missing, e.g. {missing[0]} "
            "(check image_root, or pass skip_missing_images=True to skip their refs and report the count)"
        )
    unreadable: list[tuple[str, str]] = []
    if verify:
        absent = set(missing)
        present = [path for path in paths if path not in absent]
        with ThreadPoolExecutor(max_workers=max(1, num_proc or 1)) as pool:  # PIL decodes without the GIL
            for path, problem in zip(present, pool.map(_verify_image, present)):
                if problem is not None:
                    unreadable.append((path, problem))
        if unreadable and not skip_missing:
            path, problem = unreadable[0]
            raise ValueError(
                f"{source}: corrupt or unreadable image {path} ({problem}); {len(unreadable)} such image(s) "
                "in all (replace them, or pass skip_missing_images=True to skip their refs)"
            )
    bad = set(missing) | {path for path, _ in unreadable}
    report = {
        "skipped_missing_images": len(missing),
        "skipped_unreadable_images": len(unreadable),
        "example_skipped": sorted(bad)[0] if bad else None,
    }
    return bad, report


def filter_images(
    tasks: dict[str, list[dict]], *, skip_missing: bool, verify: bool, num_proc: int | None, source: str
) -> tuple[dict[str, list[dict]], dict]:
    """Drops (or raises on) tasks whose image is missing or unreadable; see `check_images`."""
    paths = [task["image_path"] for rows in tasks.values() for task in rows]
    bad, report = check_images(paths, skip_missing=skip_missing, verify=verify, num_proc=num_proc, source=source)
    kept = {split: [t for t in rows if t["image_path"] not in bad] for split, rows in tasks.items()}
    report["skipped_refs"] = len(paths) - sum(len(rows) for rows in kept.values())
    return {split: rows for split, rows in kept.items() if rows}, report


def tasks_to_dataset_dict(
    tasks: dict[str, list[dict]], work_dir: Path, key: str, num_proc: int | None
) -> DatasetDict:
    """Per-split task lists → a DatasetDict, written by `Dataset.from_generator` (in `num_proc` processes)."""
    splits = {}
    for split in sort_splits(tasks):
        rows = tasks[split]
        procs = num_proc if num_proc and num_proc > 1 and len(rows) > 1 else None
        splits[split] = datasets.Dataset.from_generator(
            _generate_rows,
            features=FEATURES,
            gen_kwargs={"tasks": rows},
            num_proc=procs,
            cache_dir=str(work_dir),
            fingerprint=f"{key}-{split}",
            split=datasets.NamedSplit(split),
        )
    return DatasetDict(splits)


def load_refer(
    data_root: str | os.PathLike,
    dataset: str,
    split_by: str | None = None,
    image_root: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    skip_missing_images: bool = False,
    verify_images: bool = False,
) -> DatasetDict:
    """One REFER dataset (all its splits, named as in the refs file) → `DatasetDict` in the `metris_hf.data` schema.

    Args:
        data_root: folder holding `<dataset>/refs(<split_by>).p` (gRefCOCO: `grefs(unc).json`) and `instances.json`.
        dataset: `refcoco`, `refcoco+`, `refcocog` or `grefcoco`.
        split_by: `unc` / `google` (refcoco), `unc` (refcoco+, grefcoco), `umd` / `google` (refcocog);
            default the first of these.
        image_root: the COCO train2014 folder; default `<data_root>/images/mscoco/images/train2014`.
        cache_dir: root of the build cache; default `$HF_DATASETS_CACHE/metris_hf`. The build lands in
            `<cache_dir>/refer/<dataset>-<split_by>-<hash of the inputs' paths, sizes and mtimes>`.
        num_proc: processes decoding masks (and threads verifying images) on a cache miss.
        skip_missing_images: skip refs whose image is missing (or unreadable, with `verify_images`) and log how
            many, instead of raising.
        verify_images: decode every image once at build time, so a corrupt JPEG is reported by name now rather
            than when training reaches it.
    """
    dataset = check_dataset(dataset)
    split_by = check_split_by(dataset, split_by)
    refs_path, instances_path = refer_files(data_root, dataset, split_by)
    root = Path(image_root) if image_root is not None else default_image_root(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: image folder not found: {root} (pass image_root=<COCO train2014 folder>)")
    key = fingerprint(
        {
            "version": BUILD_VERSION,
            "dataset": dataset,
            "split_by": split_by,
            "refs": file_signature(refs_path),
            "instances": file_signature(instances_path),
            "image_root": file_signature(root),
            "skip_missing_images": skip_missing_images,
            "verify_images": verify_images,
        }
    )
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    what = f"{dataset} ({split_by})"

    def build(work_dir: Path) -> tuple[DatasetDict, dict]:
        logger.info("%s: building from %s (first load; later loads use the cache)", what, refs_path)
        refs = load_refs(refs_path)
        instances = json.loads(instances_path.read_text())
        tasks, dropped = build_tasks(refs, instances, root, str(refs_path))
        tasks, report = filter_images(
            tasks, skip_missing=skip_missing_images, verify=verify_images, num_proc=num_proc, source=what
        )
        if not tasks:
            raise ValueError(f"{what}: no refs left to build (every referenced image was missing or unreadable)")
        report["dropped_blank_sentences"] = dropped
        return tasks_to_dataset_dict(tasks, work_dir, key, num_proc), report

    return cached_build(cache_root / "refer" / f"{dataset}-{split_by}-{key}", build, what)
