"""RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO from the standard REFER layout (docs/data.md), as `DatasetDict`s.

The refs pickles are read with `RestrictedUnpickler` (builtin containers and scalars only, within bounds). Every
field a row needs is checked once, in `make_task`; masks are decoded with pycocotools at build time. A missing
image is caught then too (one `stat` each); a corrupt JPEG only with `verify_images=True`, which decodes every
image at 1/8 scale: without it PIL raises when the row is read, and does not always name the file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import pickletools
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import datasets
import PIL.Image
from datasets import DatasetDict

from .schema import (
    BUILD_VERSION,
    FEATURES,
    SPLIT_ORDER,
    _is_id,
    cached_build,
    check_annotation,
    check_image_size,
    check_sentence_field,
    clean_sentences,
    file_signature,
    fingerprint,
    image_within,
    mask_to_png,
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
REFER_REQUIRED = ("category_id", "image_id")  # annotation keys a REFER row needs beyond segmentation and bbox


class UnsafePickleError(pickle.UnpicklingError):
    """A refs pickle asked for something other than builtin containers and scalars, or for more memory or
    nesting than a REFER refs file ever needs (see `restricted_pickle_load`)."""


# Bounds on what a refs pickle may build. REFER's refs nest 5 deep (list → ref → sentences → sentence → tokens)
# and every object costs the pickle at least one byte, or two for a reference to one already built.
MAX_PICKLE_NESTING = 32
MAX_PICKLE_EXPANSION = 64  # objects + characters reachable (shared references counted each time) per file byte
_PICKLE_EXPANSION_FLOOR = 1 << 20
# Opcodes that build objects plain data never needs: protocol 5's bytearray and out-of-band buffers.
_REFUSED_OPCODES = {"BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}
# What CPython's unpickler raises on a file that is not a pickle (RecursionError, OverflowError included)
_BROKEN = (
    EOFError,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    RuntimeError,
    ArithmeticError,
    UnpicklingError,
)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How protocol-2 pickles spell bytes (`_codecs.encode(text, "latin1")`); other codecs could grow the text."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused _codecs.encode with codec {encoding!r} (only latin1 spells bytes)")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only builtin containers and scalars: a pickle is a program, and `pickle.load` on a downloaded
    `refs(unc).p` would run whatever it names. REFER's pickles hold plain data, so every global outside a few
    inert builtins is refused before the object it would build is called."""

    _ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex")}

    def __init__(self, file: Any, source: str = "<pickle>"):
        super().__init__(file, encoding="utf-8", errors="replace")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        module = module.replace("__builtin__", "builtins")  # Python 2 spelling
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles written by Python 3 spell bytes
            return _latin1_bytes
        raise UnsafePickleError(
            f"{self.source}: refused to unpickle {module}.{name}: a REFER refs file may only hold builtin "
            "containers and scalars (dict, list, str, int, float); nothing from this file was executed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle; nothing was executed")


# opcode byte → (name, argument layout): n ≥ 0 fixed bytes, or pickletools' negative codes (-1 up to a newline,
# -2/-3/-4/-5 a 1/4/4/8-byte length first)
_OPCODES = {ord(op.code): (op.name, 0 if op.arg is None else op.arg.n) for op in pickletools.opcodes}
_LENGTH_PREFIX = {-2: 1, -3: 4, -4: 4, -5: 8}
_MEMO_INDEX_BYTES = {"BINPUT": 1, "BINGET": 1, "LONG_BINPUT": 4, "LONG_BINGET": 4}


def _scan_opcodes(data: bytes, source: str) -> None:
    """Refuses, before anything is built, the opcodes that allocate more than the file holds: a memo index is the
    one size a pickle states without paying for it (`LONG_BINPUT 2**28` makes CPython allocate a 2 GB table), and
    a pickler's indices never exceed the file's length. (`pickletools.genops` is ten times slower on 40 MB.)"""
    position, end = 0, len(data)

    def unreadable(why: str) -> ValueError:
        return ValueError(f"{source}: not a readable pickle ({why} at byte {position}); expected REFER's refs(*).p")

    while position < end:
        entry = _OPCODES.get(data[position])
        if entry is None:
            raise unreadable(f"unknown opcode {data[position]:#04x}")
        name, layout = entry
        start = position + 1
        if name == "STOP":
            return
        if name in _REFUSED_OPCODES:
            raise UnsafePickleError(f"{source}: refused opcode {name} at byte {position}")
        if layout >= 0:
            stop = start + layout
            if name in _MEMO_INDEX_BYTES:
                index = int.from_bytes(data[start:stop], "little")
                if index > end:
                    raise UnsafePickleError(
                        f"{source}: memo index {index} at byte {position} exceeds the file's {end} bytes"
                    )
        elif layout == -1:  # text argument(s): GLOBAL and INST carry two lines
            stop = start
            for _ in range(2 if name in ("GLOBAL", "INST") else 1):
                newline = data.find(b"\n", stop)
                if newline < 0:
                    raise unreadable(f"{name} without its newline")
                stop = newline + 1
            if name in ("PUT", "GET"):
                text = data[start:stop].strip()
                if not text.isdigit() or len(text) > 20 or int(text) > end:
                    raise UnsafePickleError(f"{source}: memo index {text[:20]!r} at byte {position} is refused")
        else:
            width = _LENGTH_PREFIX[layout]
            size = int.from_bytes(data[start : start + width], "little")
            stop = start + width + size
        if stop > end:
            raise unreadable(f"{name} runs past the end of the file")
        position = stop
    raise unreadable("no STOP opcode: truncated")


def _check_size_and_nesting(value: Any, budget: int, source: str) -> None:
    """Walks what was unpickled and refuses absurd nesting or expansion. Shared references cost the pickle 2
    bytes each but are counted every time they are reached, as a consumer walking the data would meet them."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    spent = 0
    while stack:
        item, depth = stack.pop()
        spent += 1
        if isinstance(item, (str, bytes)):
            spent += len(item)
        elif isinstance(item, (list, tuple, set, frozenset, dict)):
            if depth >= MAX_PICKLE_NESTING:
                raise UnsafePickleError(
                    f"{source}: containers nested more than {MAX_PICKLE_NESTING} deep (REFER refs nest 5 deep)"
                )
            children = (x for pair in item.items() for x in pair) if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        if spent > budget:
            raise UnsafePickleError(
                f"{source}: the pickle expands to more than {budget:,} objects and characters "
                f"({MAX_PICKLE_EXPANSION}× its size): shared references that multiply its content are refused"
            )


def restricted_pickle_load(path: str | os.PathLike) -> Any:
    """Reads a pickle file with `RestrictedUnpickler`, within the bounds docs/errors.md lists (opcodes checked
    before anything is built, nesting and expansion on the result). A file that is not a pickle (truncated,
    empty, JSON) is a `ValueError` naming it."""
    with open(path, "rb") as handle:
        data = handle.read()
    source = str(path)
    if not data:
        raise ValueError(f"{source}: empty file; expected REFER's refs(*).p pickle")
    _scan_opcodes(data, source)
    try:
        value = RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError as error:
        if source not in str(error):
            raise UnsafePickleError(f"{source}: {error}") from None
        raise
    except _BROKEN as error:
        raise ValueError(f"{source}: not a readable pickle ({type(error).__name__}: {error})") from None
    _check_size_and_nesting(value, MAX_PICKLE_EXPANSION * len(data) + _PICKLE_EXPANSION_FLOOR, source)
    return value


def check_split_by(dataset: str, split_by: str | None) -> str:
    """`split_by`, defaulting to the dataset's usual scheme, or a ValueError naming the valid datasets or schemes."""
    if dataset not in SPLIT_BYS:
        raise ValueError(f"unknown REFER dataset {dataset!r}: choose one of {', '.join(REFER_DATASETS)}")
    choices = SPLIT_BYS[dataset]
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


def read_json(path: Path) -> Any:
    """A JSON file, or a ValueError naming it (truncated, not JSON, not UTF-8)."""
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        why = "nested deeper than Python's recursion limit" if isinstance(error, RecursionError) else error
        raise ValueError(f"{path}: not readable JSON ({why})") from None


def load_refs(path: Path) -> list[dict]:
    """A refs file (pickle, restricted; or gRefCOCO's JSON) → a list of ref dicts, structure checked."""
    refs = read_json(path) if path.suffix == ".json" else restricted_pickle_load(path)
    if not isinstance(refs, list):
        raise ValueError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    if not refs:
        raise ValueError(f"{path}: no refs (the file holds an empty list)")
    for position, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise ValueError(f"{path}: entry {position} is a {type(ref).__name__}, not a ref dict")
        missing = {"ref_id", "image_id", "split", "sentences"} - set(ref)
        if missing or ("ann_id" not in ref and "ann_ids" not in ref):
            raise ValueError(f"{path}: ref {ref.get('ref_id', f'#{position}')} lacks {sorted(missing) or ['ann_id']}")
        for key in ("ref_id", "image_id"):
            if not _is_id(ref[key]):
                raise ValueError(
                    f"{path}: ref {ref.get('ref_id', f'#{position}')!r}: {key} must be an integer, "
                    f"got {ref[key]!r:.80}"
                )
        if not isinstance(ref["split"], str):
            raise ValueError(f"{path}: ref {ref['ref_id']}: split must be a name, got {ref['split']!r:.80}")
    return refs


def _ann_ids(ref: dict) -> list[int]:
    raw = ref.get("ann_id", ref.get("ann_ids"))
    ids = raw if isinstance(raw, (list, tuple)) else [raw]
    if not all(a is None or _is_id(a) for a in ids):
        raise ValueError(f"ann_id(s) must be integers, got {raw!r:.80}")
    valid = [a for a in ids if a is not None and a >= 0]  # gRefCOCO marks no-target with [-1]
    if not valid and not ref.get("no_target", False):
        # -1, None or [] on a ref that does not say it refers to nothing: a broken copy, not a no-target ref
        raise ValueError(f"ann_id is {raw!r:.80}, naming no annotation, but the ref is not marked no_target")
    return valid


def _generate_rows(tasks: list[dict]):
    """Generator for `Dataset.from_generator`: decodes each task's mask (in the worker when num_proc > 1)."""
    for task in tasks:
        mask = union_mask(task["segmentations"], task["height"], task["width"])
        row = {name: task[name] for name in FEATURES if name in task}
        yield {**row, "image": {"path": task["image_path"], "bytes": None}, "mask": {"bytes": mask_to_png(mask)}}


def index_instances(instances: Any, path: str) -> tuple[dict[int, dict], dict[int, dict]]:
    """instances.json's images and annotations by id, after checking the file's shape (a dict of lists of dicts
    with ids); the fields a ref needs are checked when a ref uses them (`build_tasks`)."""
    if not isinstance(instances, dict):
        raise ValueError(
            f"{path}: expected a COCO instances dict with 'images' and 'annotations', got a {type(instances).__name__}"
        )
    indexed = []
    for key in ("images", "annotations"):
        entries = instances.get(key)
        if not isinstance(entries, list):
            raise ValueError(f"{path}: '{key}' must be a list, got {type(entries).__name__}")
        by_id = {}
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict) or not _is_id(entry.get("id")):
                raise ValueError(f"{path}: {key}[{position}] is not a dict with an integer 'id': {entry!r:.120}")
            earlier = by_id.setdefault(int(entry["id"]), entry)
            if earlier is not entry and earlier != entry:  # a repeated identical entry is harmless
                raise ValueError(
                    f"{path}: {key}[{position}] repeats the id {entry['id']} of an earlier entry with different "
                    "content: which one a ref means is ambiguous"
                )
        indexed.append(by_id)
    return indexed[0], indexed[1]


def make_task(
    info: dict, anns: list[dict], sentences: Any, sentence_field: str, no_target: str | None, **fields: Any
) -> dict:
    """One row's self-contained description (REFER refs and Parquet rows alike; the caller names the ref), every
    field checked. `no_target` says what marks the ref as referring to nothing, if anything does: such a ref that
    still names annotations is refused (its mask would be drawn from them). `fields`: image_path, ref_id, image_id,
    ann_ids, and the annotation keys to require, or the category_id / bbox that override the annotations'."""
    image_id, required = fields["image_id"], fields.pop("required", ())
    height, width = check_image_size(info, image_id)
    if no_target and anns:
        raise ValueError(
            f"is marked as referring to nothing ({no_target}) but names annotation(s) {[a.get('id') for a in anns]}: "
            "contradictory, its mask would be drawn from them (drop the mark or the annotations)"
        )
    facts = [check_annotation(ann, image_id, height, width, required) for ann in anns]
    texts = clean_sentences(sentences, sentence_field)
    if not texts:
        raise ValueError(f"all {len(sentences)} of its sentences are blank (no expression to train on)")
    categories = {ann["category_id"] for ann in anns} if "category_id" not in fields else ()
    return {
        "height": height,
        "width": width,
        "segmentations": [ann["segmentation"] for ann in anns],
        "sentences": texts,
        "category_id": categories.pop() if len(categories) == 1 else -1,
        "bbox": union_bbox(box for box, _ in facts),
        "no_target": not anns,
        "dropped": len(sentences) - len(texts),
        "degenerate": bool(anns) and not any(area for _, area in facts),
        **fields,
    }


def build_tasks(
    refs: list[dict],
    instances: Any,
    image_root: Path,
    source: str,
    instances_source: str = "instances.json",
    sentence_field: str = "sent",
) -> dict[str, list[dict]]:
    """Refs + COCO instances → per split, each row's `make_task`. An inconsistency is a ValueError naming the
    refs file and the ref (and the record at fault)."""
    images, annotations = index_instances(instances, instances_source)
    tasks: dict[str, list[dict]] = defaultdict(list)
    for ref in refs:
        ref_id, image_id = ref["ref_id"], ref["image_id"]
        try:
            info = images.get(image_id)
            if info is None:
                raise ValueError(f"names image {image_id}, which {instances_source} does not list")
            ann_ids = _ann_ids(ref)
            absent = [a for a in ann_ids if a not in annotations]
            if absent:
                raise ValueError(f"names annotation(s) {absent}, absent from {instances_source}")
            image_path = image_within(image_root, info.get("file_name") or COCO_FILE_PATTERN % image_id)
            mark = "no_target is true" if ref.get("no_target") else None
            anns = [annotations[a] for a in ann_ids]
            fields = {"ref_id": ref_id, "image_id": image_id, "ann_ids": ann_ids, "required": REFER_REQUIRED}
            task = make_task(info, anns, ref["sentences"], sentence_field, mark, image_path=str(image_path), **fields)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source}: ref {ref_id}: {error}") from None
        tasks[str(ref["split"])].append(task)
    return dict(tasks)


def _probe_image(path: str, verify: bool) -> tuple[tuple[int, int] | None, str | None]:
    """(height, width) from the header, and with `verify` PIL's complaint if the image does not decode (JPEGs at
    1/8 scale: cheap, and still reads the whole file)."""
    size = None
    try:
        with PIL.Image.open(path) as image:
            size = image.height, image.width
            if verify:
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, … for bad files
        return size, f"{type(error).__name__}: {error}"
    return size, None


def check_images(
    paths: list[str],
    skip_missing: bool,
    verify: bool,
    num_proc: int | None,
    source: str,
    declared: dict[str, tuple[int, int, str]] | None = None,
) -> tuple[set[str], dict]:
    """The image files to skip, and a report: a missing (or, with `verify`, undecodable) file raises naming it,
    unless `skip_missing`, in which case it is listed for skipping and counted. `declared` maps a path to the
    (height, width) the annotations give it and who says so; a file of another size is a ValueError."""
    paths = sorted(set(paths))
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing and not skip_missing:
        raise FileNotFoundError(
            f"{source}: {len(missing)} referenced image(s) missing, e.g. {missing[0]} "
            "(check image_root, or pass skip_missing_images=True to skip their refs and report the count)"
        )
    declared, absent = declared or {}, set(missing)
    present = [path for path in paths if path not in absent and (verify or path in declared)]
    with ThreadPoolExecutor(max_workers=max(1, num_proc or 1)) as pool:  # PIL decodes without the GIL
        probed = list(zip(present, pool.map(_probe_image, present, [verify] * len(present))))
    for path, (size, _) in probed:
        if path in declared and size is not None and size != declared[path][:2]:
            height, width, who = declared[path]
            raise ValueError(
                f"{source}: image {path} is {size[1]}×{size[0]} (width×height) but {who} declares it "
                f"{width}×{height}: the masks would not fit it (fix the annotation or the image)"
            )
    unreadable = [(path, problem) for path, (_, problem) in probed if verify and problem is not None]
    if unreadable and not skip_missing:
        path, problem = unreadable[0]
        raise ValueError(
            f"{source}: corrupt or unreadable image {path} ({problem}); {len(unreadable)} such image(s) "
            "in all (replace them, or pass skip_missing_images=True to skip their refs)"
        )
    bad = set(missing) | {path for path, _ in unreadable}
    report = {"skipped_missing_images": len(missing), "skipped_unreadable_images": len(unreadable)}
    return bad, {**report, "example_skipped": min(bad, default=None)}


def tasks_to_dataset_dict(
    tasks: dict[str, list[dict]], work_dir: Path, key: str, num_proc: int | None, keep_degenerate: bool, what: str
) -> tuple[DatasetDict, dict]:
    """Per-split tasks → a DatasetDict written by `Dataset.from_generator` (in `num_proc` processes), and the
    degenerate refs for the report. Unless `keep_degenerate`, those leave the training splits (an empty mask not
    marked `no_target` would teach that the expression means nothing); evaluation splits keep their counts."""
    degenerate = [task["ref_id"] for rows in tasks.values() for task in rows if task["degenerate"]]
    if not keep_degenerate:
        tasks = {s: [t for t in rows if not (s.startswith("train") and t["degenerate"])] for s, rows in tasks.items()}
    tasks = {split: rows for split, rows in tasks.items() if rows}
    if not tasks:
        raise ValueError(f"{what}: no refs left to build (every image missing or unreadable, or every target empty)")
    splits = {}
    for split in sorted(tasks, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s)):
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
    return DatasetDict(splits), {"degenerate_refs": degenerate, "degenerate_kept": keep_degenerate}


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
    keep_degenerate: bool = False,
    sentence_field: str = "sent",
) -> DatasetDict:
    """One REFER dataset (all its splits, named as in the refs file) → `DatasetDict` in the `metris_hf.data` schema.

    Args:
        data_root: folder holding `<dataset>/refs(<split_by>).p` (gRefCOCO: `grefs(unc).json`) and `instances.json`.
        dataset, split_by: one of `SPLIT_BYS` and its schemes (default: the first, what the peers report).
        image_root: the COCO train2014 folder; default `<data_root>/images/mscoco/images/train2014`.
        cache_dir: the build lands in `<cache_dir>/refer/<dataset>-<split_by>-<hash of the inputs' paths, sizes
            and mtimes>`; default cache_dir `$HF_DATASETS_CACHE/metris_hf`.
        num_proc: processes decoding masks (and threads reading images) on a cache miss.
        skip_missing_images: skip refs whose image is missing (or, with `verify_images`, corrupt) and log how many.
        verify_images: decode every image once at build time, so a corrupt JPEG is named now.
        keep_degenerate: keep refs whose target mask is empty (polygons of < 3 points or outside the image) in
            the train split; by default they are left out of it (and always named in a warning).
        sentence_field: `sent` or `raw` (see `clean_sentences`).
    """
    split_by = check_split_by(dataset, split_by)  # checks the dataset's name first
    sentence_field = check_sentence_field(sentence_field)
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
            "keep_degenerate": keep_degenerate,
            "sentence_field": sentence_field,
        }
    )
    what = f"{dataset} ({split_by})"

    def build(work_dir: Path) -> tuple[DatasetDict, dict]:
        logger.info("%s: building from %s (first load; later loads use the cache)", what, refs_path)
        tasks = build_tasks(
            load_refs(refs_path), read_json(instances_path), root, str(refs_path), str(instances_path), sentence_field
        )
        every = [task for rows in tasks.values() for task in rows]
        declared = {
            t["image_path"]: (t["height"], t["width"], f"image {t['image_id']} (ref {t['ref_id']})") for t in every
        }
        bad, report = check_images(list(declared), skip_missing_images, verify_images, num_proc, what, declared)
        tasks = {split: [t for t in rows if t["image_path"] not in bad] for split, rows in tasks.items()}
        report["skipped_refs"] = sum(t["image_path"] in bad for t in every)
        built, degenerate = tasks_to_dataset_dict(tasks, work_dir, key, num_proc, keep_degenerate, what)
        return built, {**report, **degenerate, "dropped_blank_sentences": sum(t["dropped"] for t in every)}

    return cached_build(cache_dir, f"refer/{dataset}-{split_by}-{key}", build, what)
