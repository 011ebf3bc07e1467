"""Build and cache every split of the referring datasets once, and print their sizes. No network needed.

    # every dataset found under data/ (REFER layout; see docs/data.md)
    python scripts/prepare_data.py --data_root data --num_proc 8 --verify_images
    # one dataset / split scheme, COCO images elsewhere
    python scripts/prepare_data.py --data_root data --dataset refcocog --split_by umd --image_root /coco/train2014
    # the synthetic set that `--dataset synthetic` trains on
    python scripts/prepare_data.py --synthetic --synthetic_size 2000 200 200 --synthetic_seed 0

Later loads (scripts/train.py, scripts/run_evaluation.py, `metris_hf.data.load_dataset_by_name`) find the cached
Arrow build and memory-map it. For each split the table gives objects (refs, one row each), sentences (the
evaluation samples) and distinct images.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from datasets import DatasetDict

from metris_hf.data import (
    REFER_DATASETS,
    SPLIT_BYS,
    load_dataset_by_name,
    load_refer,
    load_refer_parquet,
    load_synthetic,
)
from metris_hf.data.refer import default_image_root


def split_counts(data: DatasetDict) -> list[tuple[str, int, int, int]]:
    """(split, objects, sentences, images) per split; reads only the annotation columns."""
    rows = []
    for split, table in data.items():
        columns = table.select_columns(["sentences", "image_id"])
        sentences = sum(len(s) for s in columns["sentences"])
        rows.append((split, len(table), sentences, len(set(columns["image_id"]))))
    return rows


def found_datasets(data_root: Path) -> list[tuple[str, str | None]]:
    """(dataset, split_by) for every refs file under data_root, and (dataset, None) for Parquet-only folders."""
    found = []
    for dataset in REFER_DATASETS:
        folder = data_root / dataset
        schemes = [
            s
            for s in SPLIT_BYS[dataset]
            if (folder / (f"grefs({s}).json" if dataset == "grefcoco" else f"refs({s}).p")).is_file()
        ]
        found += [(dataset, s) for s in schemes]
        if not schemes and folder.is_dir() and any(folder.rglob("*.parquet")):
            found.append((dataset, None))
    return found


def print_table(title: str, counts: list[tuple[str, int, int, int]], seconds: float) -> None:
    print(f"\n{title}  ({seconds:.1f} s)")
    print(f"| {'split':<8} | {'objects':>8} | {'sentences':>9} | {'images':>7} |")
    print(f"|{'-' * 10}|{'-' * 9}:|{'-' * 10}:|{'-' * 8}:|")
    for split, objects, sentences, images in counts:
        print(f"| {split:<8} | {objects:>8,} | {sentences:>9,} | {images:>7,} |")
    total = [sum(c[i] for c in counts) for i in (1, 2, 3)]
    print(f"| {'total':<8} | {total[0]:>8,} | {total[1]:>9,} | {'':>7} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default=None, help="folder in the REFER layout (refcoco/, refcoco+/, …)")
    parser.add_argument("--dataset", default=None, choices=REFER_DATASETS, help="default: every one found")
    parser.add_argument("--split_by", default=None, help="unc / google / umd (default: the dataset's usual one)")
    parser.add_argument("--image_root", default=None, help="COCO train2014 folder (default: under data_root)")
    parser.add_argument("--num_proc", type=int, default=None, help="processes decoding masks")
    parser.add_argument("--cache_dir", default=None, help="build cache root (default: $HF_DATASETS_CACHE/metris_hf)")
    parser.add_argument("--skip_missing_images", action="store_true", help="skip refs whose image is missing")
    parser.add_argument("--verify_images", action="store_true", help="decode every image once; name corrupt ones")
    parser.add_argument("--synthetic", action="store_true", help="build the synthetic set instead")
    parser.add_argument(
        "--synthetic_size", type=int, nargs=3, default=[2000, 200, 200], metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--synthetic_seed", type=int, default=0)
    parser.add_argument("--synthetic_image_size", type=int, default=128)
    parser.add_argument("--no_target_fraction", type=float, default=0.0)
    args = parser.parse_args(argv)
    if not args.synthetic:
        if args.data_root is None:
            parser.error("--data_root is required (or --synthetic)")
        if not Path(args.data_root).is_dir():
            parser.error(f"--data_root {args.data_root} is not a folder")
    return args


def main(argv: list[str] | None = None) -> dict[str, list[tuple[str, int, int, int]]]:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    results = {}
    if args.synthetic:
        start = time.perf_counter()
        data = load_synthetic(
            args.synthetic_size,
            args.synthetic_seed,
            args.synthetic_image_size,
            no_target_fraction=args.no_target_fraction,
            cache_dir=args.cache_dir,
        )
        title = f"synthetic {args.synthetic_size} seed {args.synthetic_seed}"
        results[title] = split_counts(data)
        print_table(title, results[title], time.perf_counter() - start)
        return results

    root = Path(args.data_root)
    targets = [(args.dataset, args.split_by)] if args.dataset else found_datasets(root)
    if not targets:
        raise SystemExit(f"no REFER refs files or Parquet folders found under {root} (see docs/data.md)")
    options = {"cache_dir": args.cache_dir, "num_proc": args.num_proc, "skip_missing_images": args.skip_missing_images}
    for dataset, split_by in targets:
        start = time.perf_counter()
        try:
            if args.verify_images and split_by is not None:
                data = load_refer(root, dataset, split_by, args.image_root, verify_images=True, **options)
            elif args.verify_images:
                data = load_refer_parquet(
                    root / dataset, args.image_root or default_image_root(root), verify_images=True, **options
                )
            else:
                data = load_dataset_by_name(
                    dataset, data_root=root, split_by=split_by, image_root=args.image_root, **options
                )
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"{dataset}: {error}") from None
        title = f"{dataset} ({split_by or 'parquet'})"
        results[title] = split_counts(data)
        print_table(title, results[title], time.perf_counter() - start)
    return results


if __name__ == "__main__":
    main()
