"""Evaluate a METRIS checkpoint with the paper's protocol and print the table of Tables 1 and 5.

    python scripts/run_evaluation.py --model_name_or_path runs/refcoco --dataset refcoco --data_root data \\
        --splits val testA testB
    accelerate launch scripts/run_evaluation.py ...        # same numbers, split over the processes

One row per split: P@0.5, P@0.7, P@0.9, mIoU, oIoU (gRefCOCO: cIoU, gIoU, N-acc, T-acc), in percent.
Every sentence of every object is a sample; predictions at the model's input size (480²) against the
nearest-resized ground truth, or at the image's own size with `--eval_resolution original` (named in the
output). The table is also written as JSON and Markdown to `--output_dir`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoModel, AutoProcessor

import metris_hf  # noqa: F401  (registers the Auto classes)
from metris_hf.cpu_kernels import optimize_for_cpu_inference
from metris_hf.data import SPLIT_BYS, add_dataset_arguments, load_dataset_from_args
from metris_hf.evaluation import COLUMNS, RESOLUTIONS, evaluate_split
from metris_hf.folders import check_model_source, run_command
from metris_hf.image_io import check_threshold
from metris_hf.processing_metris import check_processor_for_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True)
    add_dataset_arguments(parser)
    parser.add_argument("--splits", nargs="+", default=None, help="default: every split but train")
    parser.add_argument("--eval_resolution", default="model", choices=RESOLUTIONS)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=16)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument(
        "--output_dir", default=None, help="where results.json / results.md go (default: the model folder)"
    )
    parser.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    args = parser.parse_args(argv)
    if args.dataset != "synthetic" and (args.data_root is None or not Path(args.data_root).is_dir()):
        parser.error(f"--data_root must be an existing folder for --dataset {args.dataset}")
    try:
        check_model_source(args.model_name_or_path, "--model_name_or_path")
        check_threshold(args.threshold)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    return args


def results_stem(args: argparse.Namespace) -> str:
    """`results_<dataset>-<split_by>_<resolution>[_t<threshold>][_n<max samples>]_<data id>`: every choice that
    changes the numbers is in the name, so runs on other data or settings do not overwrite each other. The data id
    is a short hash of where the data came from (data_root, image_root; synthetic: its size and seed)."""
    split_by = args.split_by or (SPLIT_BYS[args.dataset][0] if args.dataset in SPLIT_BYS else None)
    source = (
        [str(Path(args.data_root).resolve()), args.image_root and str(Path(args.image_root).resolve())]
        if args.dataset != "synthetic"
        else [args.synthetic_size, args.synthetic_seed]
    )
    data_id = hashlib.sha256(json.dumps(source).encode()).hexdigest()[:8]
    stem = f"results_{args.dataset}" + (f"-{split_by}" if split_by else "") + f"_{args.eval_resolution}"
    if args.threshold != 0.5:
        stem += f"_t{args.threshold:g}"
    if args.max_eval_samples:
        stem += f"_n{args.max_eval_samples}"
    return f"{stem}_{data_id}"


def format_table(rows: dict[str, dict], columns: tuple[str, ...], title: str) -> str:
    lines = [f"**{title}**", "", "| split | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for split, result in rows.items():
        lines.append(f"| {split} | " + " | ".join(f"{100 * result[c]:.2f}" for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # accelerate's CPU autocast has no float16: the run would silently be float32
        raise SystemExit("--mixed_precision fp16 needs a GPU; on CPU use bf16 (or no)")
    with accelerator.main_process_first():
        datasets = load_dataset_from_args(args)
    splits = args.splits or [s for s in datasets if s != "train"]
    unknown = [s for s in splits if s not in datasets]
    if unknown:
        raise SystemExit(f"unknown split(s) {unknown} for {args.dataset}: it has {sorted(datasets)}")
    model = AutoModel.from_pretrained(args.model_name_or_path).to(accelerator.device).eval()
    processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    check_processor_for_model(processor, model.config, args.model_name_or_path)
    if accelerator.device.type == "cpu":
        optimize_for_cpu_inference(model)
    if args.mixed_precision == "bf16":
        model = model.to(torch.bfloat16)
    settings = dict(
        resolution=args.eval_resolution, batch_size=args.per_device_eval_batch_size, accelerator=accelerator
    )
    settings.update(num_workers=args.dataloader_num_workers, threshold=args.threshold)
    rows = {
        s: evaluate_split(model, processor, datasets[s], args.dataset, args.max_eval_samples, **settings)
        for s in splits
    }

    if not accelerator.is_main_process:
        return {}
    size = processor.image_processor.size
    resolution = (
        f"{size['height']}×{size['width']} vs nearest-resized GT"
        if args.eval_resolution == "model"
        else "original image size"
    )
    title = f"{args.model_name_or_path} on {args.dataset} ({resolution})"
    table = format_table(rows, COLUMNS.get(args.dataset, COLUMNS["refcoco"]), title)
    print(table)
    out_dir = Path(args.output_dir or args.model_name_or_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = results_stem(args)
    payload = {
        "model": args.model_name_or_path,
        "dataset": args.dataset,
        "split_by": args.split_by,
        "data_root": args.data_root,
        "image_root": args.image_root,
        "resolution": args.eval_resolution,
        "threshold": args.threshold,
        "max_eval_samples": args.max_eval_samples,
        "num_processes": accelerator.num_processes,
        "splits": rows,
    }
    if args.dataset == "synthetic":
        payload.update(synthetic_size=args.synthetic_size, synthetic_seed=args.synthetic_seed)
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out_dir / f"{stem}.md").write_text(table + "\n")
    print(f"\nwrote {out_dir / (stem + '.json')} and {out_dir / (stem + '.md')}")
    return payload


if __name__ == "__main__":
    sys.exit(run_command(main, "run_evaluation.py"))
