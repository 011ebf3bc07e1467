"""RefCOCO-family copies in Parquet (the `jxu124/refcoco`, `jxu124/refcocoplus`, `jxu124/refcocog` layout).

One row per ref (`ref_id, image_id, ann_id, split, sentences, category_id, bbox, raw_anns, raw_image_info,
image_path`; the last three JSON or text), annotations only: the pixels come from a local COCO `train2014` folder.
Splits are renamed as `load_refer` names them: validation → val, and test → testA where a testB sits beside it,
test otherwise; a `split` column holding one REFER split name wins over both.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import pyarrow.parquet
from datasets import DatasetDict

from .refer import COCO_FILE_PATTERN, check_images, make_task, tasks_to_dataset_dict
from .schema import (
    BUILD_VERSION,
    SPLIT_ORDER,
    _is_id,
    cached_build,
    check_bbox,
    check_sentence_field,
    file_signature,
    fingerprint,
    image_within,
)

logger = logging.getLogger(__name__)

_SPLIT_IN_NAME = re.compile(r"^(train|validation|valid|val|testA|testB|test)(?=$|[-_.])")


def _split_of_file(path: Path) -> str:
    """`data/testB-00000-of-00001-xxxx.parquet` → testB; `<config>/validation/0000.parquet` → validation."""
    for name in (path.name, path.parent.name):
        match = _SPLIT_IN_NAME.match(name)
        if match:
            return match.group(1)
    raise ValueError(f"cannot tell the split of {path}: name files <split>-*.parquet or put them in <split>/ folders")


def parquet_data_files(source: str | os.PathLike | dict) -> dict[str, list[str]] | None:
    """`source` → {parquet split: [files]} for local files, or None when `source` must be a Hub id."""
    if isinstance(source, dict):
        return {
            split: [str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
            for split, files in source.items()
        }
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no *.parquet files under {path}")
    elif path.is_file():
        files = [path]
    elif any(ch in str(source) for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
        if not files:
            raise FileNotFoundError(f"no files match {source}")
    elif str(source).count("/") == 1 and not str(source).startswith((".", "/")):
        return None  # owner/name: a Hub dataset
    else:
        raise FileNotFoundError(
            f"parquet source not found: {source} (a folder, file, glob, {{split: files}} or Hub id)"
        )
    grouped: dict[str, list[str]] = {}
    for file in files:
        grouped.setdefault(_split_of_file(file), []).append(str(file))
    return grouped


def _refer_split_name(parquet_split: str, all_splits: list[str], split_column: list[str]) -> str:
    values = set(split_column)
    if len(values) == 1 and next(iter(values)) in SPLIT_ORDER:
        return next(iter(values))
    if parquet_split in ("validation", "valid", "val"):
        return "val"
    if parquet_split == "test":
        return "testA" if "testB" in all_splits else "test"
    return parquet_split


def _load_json(text: Any) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text) if isinstance(text, str) else text
    except RecursionError:
        raise ValueError("a JSON column is nested deeper than Python's recursion limit") from None


def _image_path(row: dict, image_root: Path) -> str:
    """The local file for a row: `image_root/image_path`, else `image_root/<its file name>`, else the COCO pattern."""
    candidates = []
    if row.get("image_path"):
        inside = image_within(image_root, row["image_path"])  # absolute or `..` paths are refused
        candidates += [inside, image_root / inside.name]
    info = _load_json(row.get("raw_image_info")) or {}
    if info.get("file_name"):
        candidates.append(image_root / Path(info["file_name"]).name)
    candidates.append(image_root / (COCO_FILE_PATTERN % int(row["image_id"])))
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    # none exists: name the file the row asked for, so the "missing image" error points at it
    return str(candidates[1] if row.get("image_path") else candidates[-1])


def check_repeats(row: dict, seen: dict[tuple[str, int], tuple[bytes, Any]]) -> None:
    """A ValueError when the row's `raw_image_info`, or one of its `raw_anns`, differs from what an earlier row
    gave for the same image or annotation id (`seen` remembers a digest of each, and the ref that gave it): which
    one is meant would be ambiguous. A repeat with equal content, keys in any order, is harmless."""
    anns = _as_list(_load_json(row.get("raw_anns")))
    entries = [("image", row.get("image_id"), "raw_image_info", _load_json(row.get("raw_image_info")))]
    entries += [("annotation", a.get("id"), "raw_anns", a) for a in anns if isinstance(a, dict)]
    for kind, entry_id, column, content in entries:
        if content is None or isinstance(entry_id, bool) or not isinstance(entry_id, int):
            continue  # nothing to compare; `_convert` names what is wrong with the row
        digest = hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=16).digest()
        earlier = seen.setdefault((kind, entry_id), (digest, row.get("ref_id")))
        if earlier[0] != digest:
            raise ValueError(
                f"{column} gives {kind} {entry_id} content that differs from ref {earlier[1]}'s: which one is "
                "meant is ambiguous"
            )


def _rows(table: datasets.Dataset) -> Iterator[dict]:
    for batch in table.iter(batch_size=1000):
        yield from (dict(zip(batch, values)) for values in zip(*batch.values()))


def _as_list(anns: Any) -> list:
    """`raw_anns` parsed → a list (of annotation dicts, if the row is right): None is [], one dict [dict]."""
    return [] if anns is None else ([anns] if isinstance(anns, dict) else anns if isinstance(anns, list) else [anns])


# The columns a row cannot do without (jxu124 layout); `raw_anns` is required because without it every row
# would silently become "nothing is referred".
REQUIRED_COLUMNS = ("ref_id", "image_id", "sentences", "raw_anns")


def check_columns(columns: list[str], where: str) -> None:
    """A ValueError naming the missing columns (and the ones present), before any row is read."""
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {missing} of the jxu124 RefCOCO layout (needs {list(REQUIRED_COLUMNS)}; "
            f"has {sorted(columns)})"
        )


def _task(row: dict, sentence_field: str) -> dict:
    """One jxu124 row (with its image file as `_image_path`) → its `make_task` (the caller names the ref)."""
    for key in ("ref_id", "image_id"):
        if not _is_id(row[key]):
            raise ValueError(f"{key} must be an integer, got {row[key]!r:.80}")
    anns = _as_list(_load_json(row.get("raw_anns")))
    if not all(isinstance(a, dict) for a in anns):
        raise ValueError(f"raw_anns must hold COCO annotation dicts, got {row.get('raw_anns')!r:.80}")
    ann_id = row.get("ann_id")
    if ann_id is not None and not _is_id(ann_id):
        raise ValueError(f"ann_id must be an integer, got {ann_id!r:.80}")
    if not anns and ann_id is not None and ann_id >= 0:
        raise ValueError(f"raw_anns is empty but ann_id is {ann_id}: the target's annotation is missing")
    info = _load_json(row.get("raw_image_info")) or {}
    if not isinstance(info, dict):
        raise ValueError(f"raw_image_info must be a COCO image dict, got {row.get('raw_image_info')!r:.80}")
    if info.get("height") is None or info.get("width") is None:  # read the header only
        with PIL.Image.open(row["_image_path"]) as image:
            info = {"height": image.height, "width": image.width}
    bbox = {"bbox": check_bbox(row["bbox"])} if anns and row.get("bbox") else {}
    mark = "no_target is true" if row.get("no_target") else f"ann_id {ann_id}" if ann_id and ann_id < 0 else None
    ids = [ann_id] if anns and ann_id is not None else [int(a["id"]) for a in anns]
    fields = {"image_path": row["_image_path"], "ref_id": row["ref_id"], "image_id": row["image_id"], "ann_ids": ids}
    fields["category_id"] = int(row["category_id"]) if anns and row.get("category_id") is not None else -1
    return make_task(info, anns, row["sentences"], sentence_field, mark, **fields, **bbox)


def parquet_tasks(rows: Iterable[dict], source: str, sentence_field: str = "sent") -> list[dict]:
    """jxu124 rows → `_task`s; a bad row is a ValueError naming `source` and the ref."""
    tasks = []
    for row in rows:
        try:
            tasks.append(_task(row, sentence_field))
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{source}: ref {row.get('ref_id')}: {error}") from None
    return tasks


def load_refer_parquet(
    data_files_or_hub_id: str | os.PathLike | dict,
    image_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    skip_missing_images: bool = False,
    verify_images: bool = False,
    keep_degenerate: bool = False,
    sentence_field: str = "sent",
) -> DatasetDict:
    """RefCOCO-family Parquet files (jxu124 layout) + a COCO train2014 folder → the `load_refer` schema and splits.

    `data_files_or_hub_id`: a folder of parquet files (split from each file's name, `testB-00000-….parquet`, or
    its folder), one file or glob, a `{split: files}` dict, or a Hub id such as `jxu124/refcoco` (downloaded by
    `datasets.load_dataset`). `image_root`: the COCO train2014 folder. The other arguments are `load_refer`'s;
    the build is cached under `<cache_dir>/parquet/<hash of the files' paths, sizes and mtimes>`.
    """
    sentence_field = check_sentence_field(sentence_field)
    data_files = parquet_data_files(data_files_or_hub_id)
    root = Path(image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (pass image_root=<COCO train2014 folder>)")
    if data_files is not None:
        sources: Any = {split: [file_signature(f) for f in files] for split, files in data_files.items()}
        label = str(data_files_or_hub_id) if not isinstance(data_files_or_hub_id, dict) else "parquet files"
    else:
        sources, label = str(data_files_or_hub_id), str(data_files_or_hub_id)
    key = fingerprint(
        {
            "version": BUILD_VERSION,
            "parquet": sources,
            "image_root": file_signature(root),
            "skip_missing_images": skip_missing_images,
            "verify_images": verify_images,
            "keep_degenerate": keep_degenerate,
            "sentence_field": sentence_field,
        }
    )

    def build(work_dir: Path) -> tuple[DatasetDict, dict]:
        if data_files is not None:
            for files in data_files.values():  # the schema first: read from the footers, no rows
                for file in files:
                    try:
                        columns = pyarrow.parquet.read_schema(file).names
                    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
                        raise ValueError(f"{file}: not a readable Parquet file ({error})") from None
                    check_columns(columns, file)
            raw = datasets.load_dataset("parquet", data_files=data_files, cache_dir=str(work_dir))
        else:
            raw = datasets.load_dataset(str(data_files_or_hub_id), cache_dir=str(work_dir))
            for split, table in raw.items():
                check_columns(table.column_names, f"{label} ({split})")
        paths: dict[str, list[str]] = {}
        seen: dict[tuple[str, int], tuple[bytes, Any]] = {}  # image / annotation id → digest, first ref
        for split, table in raw.items():
            names = ("image_path", "raw_image_info", "raw_anns", "image_id", "ref_id")
            paths[split] = []
            for row in _rows(table.select_columns([c for c in names if c in table.column_names])):
                try:
                    check_repeats(row, seen)
                    paths[split].append(_image_path(row, root))
                except (ValueError, TypeError) as error:
                    raise ValueError(f"{label} ({split}): ref {row.get('ref_id')}: {error}") from None
        every_path = [path for split_paths in paths.values() for path in split_paths]
        bad, report = check_images(
            every_path, skip_missing=skip_missing_images, verify=verify_images, num_proc=num_proc, source=label
        )
        report["skipped_refs"] = sum(path in bad for path in every_path)
        tasks = {}
        for split, table in raw.items():
            name = _refer_split_name(split, list(raw), table.unique("split") if "split" in table.column_names else [])
            rows = (dict(row, _image_path=path) for row, path in zip(_rows(table), paths[split]) if path not in bad)
            tasks[name] = parquet_tasks(rows, f"{label} ({split})", sentence_field)
        built, degenerate = tasks_to_dataset_dict(tasks, work_dir, key, num_proc, keep_degenerate, label)
        return built, {**report, **degenerate}

    return cached_build(cache_dir, f"parquet/{key}", build, label)
