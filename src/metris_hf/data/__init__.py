"""Referring segmentation data as `datasets.DatasetDict`s in one schema (`FEATURES`; docs/data.md).

Sources: `load_refer` (the REFER layout), `load_refer_parquet` (the Hub's jxu124 Parquet copies), `make_synthetic`;
`load_dataset_by_name` picks one by the name the scripts take. `sentence_rows` gives the evaluation samples (one
row per sentence), `RefTrainTransform` / `training_loader` the training batches (one sentence per object per epoch).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from datasets import DatasetDict

from .parquet import load_refer_parquet
from .refer import (
    REFER_DATASETS,
    SPLIT_BYS,
    RestrictedUnpickler,
    UnsafePickleError,
    check_split_by,
    default_image_root,
    load_refer,
    restricted_pickle_load,
)
from .schema import FEATURES, SENTENCE_FEATURES, sentence_rows
from .synthetic import (
    build_synthetic_tokenizer,
    iter_synthetic,
    load_synthetic,
    make_synthetic,
    matching_objects,
    synthetic_vocabulary,
)
from .transforms import RefTrainTransform, training_loader

DATASET_NAMES = ("refcoco", "refcoco+", "refcocog", "grefcoco", "synthetic")


def load_dataset_by_name(
    name: str,
    *,
    data_root: str | os.PathLike | None = None,
    split_by: str | None = None,
    image_root: str | os.PathLike | None = None,
    synthetic_size: Sequence[int] = (2000, 200, 200),
    synthetic_seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    skip_missing_images: bool = False,
    keep_degenerate: bool = False,
    sentence_field: str = "sent",
) -> DatasetDict:
    """A dataset by the name the scripts take (`DATASET_NAMES`): `load_synthetic(synthetic_size, synthetic_seed)`,
    or `load_refer` on `<data_root>/<name>/`, or `load_refer_parquet` where that folder holds `*.parquet` files and
    no REFER refs file (the REFER files win: the peers' numbers come from them). The keyword options go to the
    loader."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}")
    if name == "synthetic":
        return load_synthetic(synthetic_size, synthetic_seed, cache_dir=cache_dir)
    if data_root is None:
        raise ValueError(f"dataset {name!r} needs data_root (the folder with {name}/ in the REFER layout)")
    check_split_by(name, split_by)  # fail on a bad split_by before looking at files
    folder = Path(data_root) / name
    options = dict(cache_dir=cache_dir, num_proc=num_proc, skip_missing_images=skip_missing_images)
    options.update(keep_degenerate=keep_degenerate, sentence_field=sentence_field)
    refer_name = f"grefs({split_by or SPLIT_BYS[name][0]}).json" if name == "grefcoco" else None
    refs_present = (folder / refer_name).is_file() if refer_name else any(folder.glob("refs(*).p"))
    if not refs_present and folder.is_dir() and any(folder.rglob("*.parquet")):
        return load_refer_parquet(folder, image_root or default_image_root(data_root), **options)
    return load_refer(data_root, name, split_by, image_root, **options)


def add_dataset_arguments(parser: argparse._ActionsContainer) -> None:
    """The flags that name a dataset and where its files are (scripts/train.py and scripts/run_evaluation.py)."""
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="which dataset")
    parser.add_argument("--data_root", default=None, help="REFER layout root (not needed for synthetic)")
    parser.add_argument("--split_by", default=None, help="unc / umd / google (None: the dataset's usual one)")
    parser.add_argument("--image_root", default=None, help="COCO train2014 folder, if not under data_root")
    parser.add_argument(
        "--synthetic_size",
        type=int,
        nargs=3,
        default=[2000, 200, 200],
        metavar=("TRAIN", "VAL", "TEST"),
        help="objects per split of the synthetic set",
    )
    parser.add_argument("--synthetic_seed", type=int, default=0, help="seed of the synthetic scenes")


def load_dataset_from_args(args: argparse.Namespace, **options) -> DatasetDict:
    """`load_dataset_by_name` with the flags of `add_dataset_arguments`; `options` go to it as they are."""
    return load_dataset_by_name(
        args.dataset,
        data_root=args.data_root,
        split_by=args.split_by,
        image_root=args.image_root,
        synthetic_size=args.synthetic_size,
        synthetic_seed=args.synthetic_seed,
        **options,
    )


__all__ = [
    "DATASET_NAMES",
    "FEATURES",
    "REFER_DATASETS",
    "SENTENCE_FEATURES",
    "SPLIT_BYS",
    "RefTrainTransform",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "add_dataset_arguments",
    "build_synthetic_tokenizer",
    "iter_synthetic",
    "load_dataset_by_name",
    "load_dataset_from_args",
    "load_refer",
    "load_refer_parquet",
    "load_synthetic",
    "make_synthetic",
    "matching_objects",
    "restricted_pickle_load",
    "sentence_rows",
    "synthetic_vocabulary",
    "training_loader",
]
