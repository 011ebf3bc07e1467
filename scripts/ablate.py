"""The paper's ablations in miniature: Table 5 (guidance sets) and Table 6 (VEE steps, linguistic cues), each
row trained by `scripts/train.py` on the synthetic set with the same budget and seeds, then evaluated on the
synthetic test split with the paper's protocol.

    python scripts/ablate.py --output_dir runs/ablate                      # every row, 1 seed, the demo model's shape
    python scripts/ablate.py --rows full pure_le ve_only --num_seeds 3 --max_train_steps 2000

Prints the table in the paper's format (P@0.5, P@0.7, P@0.9, mIoU, oIoU; mean ± std over seeds when there are
several), writes it as `results.json` / `results.md`, and draws the pixel-level precision-recall curves of
Fig. 5 (with AUC-PR) into `pr_curves.png`. As in the paper (§4.4), the Table 6 rows are at equal size: a row
without VEE step 2 (or 3) gets that step's blocks in the other step (`equal_size_ablations`, on by default; pass
`equal_size_ablations=False` through `--train_args "--config_overrides ..."` to drop them). The Table 5 rows are
the paper's smaller baselines. The table lists each row's parameters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModel, AutoProcessor

import metris_hf  # noqa: F401  (registers the Auto classes)
from metris_hf.data import load_dataset_by_name, sentence_rows
from metris_hf.evaluation import COLUMNS, collate_for_evaluation, evaluate_referring

ROWS = {  # name: (paper table, config overrides)
    "pure_le": ("Table 5: Pure LE", "guidance=pure_le"),
    "enhanced_le": ("Table 5: Enhanced LE", "guidance=enhanced_le"),
    "ve_only": ("Table 5: VE only", "guidance=ve_only"),
    "all_pixels": ("Table 5: all pixels", "guidance=all_pixels"),
    "full": ("Table 5/6: full model", ""),
    "no_step1": ("Table 6a: w/o step 1 (curation)", "use_curation=False"),
    "no_step2": ("Table 6a: w/o step 2 (refinement)", "use_refinement=False"),
    "no_step3": ("Table 6a: w/o step 3 (relation)", "use_relation=False"),
    "global_cue": ("Table 6b: global cue only", "linguistic_cues=global"),
    "local_cues": ("Table 6b: local cues only", "linguistic_cues=local"),
}
METRIC_KEYS = COLUMNS["refcoco"]
PR_BINS = 256


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--num_seeds", type=int, default=1)
    parser.add_argument("--config_name", default="small", help="train.py's --config_name: 'small', 'tiny' or a file")
    parser.add_argument(
        "--synthetic_size", type=int, nargs=3, default=[2000, 200, 200], metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--synthetic_seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--max_train_steps", type=int, default=1000)
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--output_dir", default="runs/ablate")
    parser.add_argument("--train_args", default="", help="more train.py arguments, as one string")
    return parser.parse_args(argv)


def train_row(args: argparse.Namespace, row: str, seed: int, run_dir: Path) -> None:
    if (run_dir / "config.json").exists() and (run_dir / "model.safetensors").exists():
        print(f"{row} seed {seed}: reusing {run_dir}")
        return
    flags = dict(dataset="synthetic", synthetic_seed=args.synthetic_seed, config_name=args.config_name)
    flags.update(image_size=args.image_size, max_train_steps=args.max_train_steps, seed=seed, eval_every=0)
    flags.update(train_batch_size=args.train_batch_size, learning_rate=args.learning_rate, output_dir=run_dir)
    command = [sys.executable, str(Path(__file__).with_name("train.py"))]
    command += [str(item) for name, value in flags.items() for item in (f"--{name}", value)]
    command += ["--synthetic_size", *map(str, args.synthetic_size), *args.train_args.split()]
    if ROWS[row][1]:
        command += ["--config_overrides", ROWS[row][1]]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


@torch.no_grad()
def pixel_histograms(model, processor, data, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Counts of foreground and background pixels per probability bin: enough for any threshold's P and R."""
    positives, negatives = np.zeros(PR_BINS, np.int64), np.zeros(PR_BINS, np.int64)
    loader = DataLoader(data, batch_size=batch_size, collate_fn=partial(collate_for_evaluation, processor=processor))
    for batch in loader:
        outputs = model(**{key: batch[key] for key in ("pixel_values", "input_ids", "attention_mask")})
        labels = batch["labels"].bool()
        logits = torch.nn.functional.interpolate(
            outputs.logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True
        )[:, 0]
        bins = (torch.sigmoid(logits) * PR_BINS).long().clamp_(max=PR_BINS - 1)
        positives += torch.bincount(bins[labels], minlength=PR_BINS).numpy()
        negatives += torch.bincount(bins[~labels], minlength=PR_BINS).numpy()
    return positives, negatives


def pr_curve(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision and recall of "probability ≥ bin" for every bin, and the area under the curve."""
    true_positive = np.cumsum(positives[::-1])[::-1]
    predicted = true_positive + np.cumsum(negatives[::-1])[::-1]
    recall = true_positive / max(positives.sum(), 1)
    precision = np.where(predicted > 0, true_positive / np.maximum(predicted, 1), 1.0)
    order = np.argsort(recall)
    auc = float(np.trapezoid(precision[order], recall[order]))
    return precision, recall, auc


CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def draw_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> None:
    """The precision-recall curves drawn with Pillow (a dependency of the package, unlike matplotlib)."""
    from PIL import Image, ImageDraw

    from metris_hf.visualization import load_font

    width, height, left, bottom, margin = 600, 540, 60, 50, 20
    plot_w, plot_h = width - left - margin, height - bottom - margin

    def point(recall: float, precision: float) -> tuple[float, float]:
        return left + recall * plot_w, margin + (1 - precision / 1.02) * plot_h

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = load_font(13)
    for tick in np.linspace(0, 1, 6):
        x, _ = point(tick, 0)
        _, y = point(0, tick)
        draw.line([(x, margin), (x, margin + plot_h)], fill=(230, 230, 230))
        draw.line([(left, y), (left + plot_w, y)], fill=(230, 230, 230))
        draw.text((x, margin + plot_h + 5), f"{tick:.1f}", fill="black", font=font, anchor="mt")
        draw.text((left - 5, y), f"{tick:.1f}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, margin, left + plot_w, margin + plot_h], outline="black")
    draw.text((left + plot_w / 2, height - 8), "recall", fill="black", font=font, anchor="ms")
    draw.text((left, margin - 3), "precision", fill="black", font=font, anchor="ls")
    draw.text((left + plot_w / 2, 4), "pixel precision-recall", fill="black", font=font, anchor="mt")
    for index, (name, (precision, recall, auc)) in enumerate(curves.items()):
        colour = CURVE_COLOURS[index % len(CURVE_COLOURS)]
        order = np.argsort(recall)
        draw.line([point(r, p) for r, p in zip(recall[order], precision[order])], fill=colour, width=2)
        y = margin + plot_h - 20 * (len(curves) - index)
        draw.line([(left + 10, y), (left + 30, y)], fill=colour, width=3)
        draw.text((left + 36, y), f"{name} (AUC {auc:.3f})", fill="black", font=font, anchor="lm")
    image.save(path)


def format_table(results: dict[str, dict]) -> str:
    lines = ["| row | params | " + " | ".join(METRIC_KEYS) + " | AUC-PR |", "|---" * (len(METRIC_KEYS) + 3) + "|"]
    for row, result in results.items():
        cells = []
        for key in (*METRIC_KEYS, "AUC-PR"):
            scale, digits = (1, 3) if key == "AUC-PR" else (100, 2)  # AUC-PR as a fraction, the rest in percent
            values = [scale * v for v in result["per_seed"][key]]
            cell = f"{statistics.mean(values):.{digits}f}"
            cells.append(cell + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""))
        lines.append(f"| {ROWS[row][0]} | {result['parameters'] / 1e6:.2f} M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    datasets = load_dataset_by_name(
        "synthetic", synthetic_size=tuple(args.synthetic_size), synthetic_seed=args.synthetic_seed
    )
    test = sentence_rows(datasets["test"])
    results: dict[str, dict] = {}
    curves = {}
    for row in args.rows:
        per_seed: dict[str, list[float]] = {key: [] for key in (*METRIC_KEYS, "AUC-PR")}
        positives, negatives = np.zeros(PR_BINS, np.int64), np.zeros(PR_BINS, np.int64)
        parameters = 0
        for seed in range(args.num_seeds):
            run_dir = output_dir / row / f"seed{seed}"
            train_row(args, row, seed, run_dir)
            model = AutoModel.from_pretrained(run_dir).eval()
            processor = AutoProcessor.from_pretrained(run_dir)
            parameters = sum(p.numel() for p in model.parameters())
            figures = evaluate_referring(model, processor, test, progress=False)
            pos, neg = pixel_histograms(model, processor, test)
            positives, negatives = positives + pos, negatives + neg
            for key in METRIC_KEYS:
                per_seed[key].append(figures[key])
            per_seed["AUC-PR"].append(pr_curve(pos, neg)[2])
            print(f"{row} seed {seed}: " + ", ".join(f"{k} {100 * figures[k]:.2f}" for k in METRIC_KEYS), flush=True)
        results[row] = {"config_overrides": ROWS[row][1], "parameters": parameters, "per_seed": per_seed}
        curves[ROWS[row][0]] = pr_curve(positives, negatives)
    table = format_table(results)
    budget = (
        f"{args.max_train_steps} steps × batch {args.train_batch_size} at {args.image_size}², "
        f"{args.num_seeds} seed(s), synthetic train {args.synthetic_size[0]} objects, "
        f"test {len(test)} expressions"
    )
    print(f"\n{budget}\n\n{table}")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps({"budget": budget, "rows": results}, indent=2))
    (output_dir / "results.md").write_text(f"{budget}\n\n{table}\n")
    draw_curves(curves, output_dir / "pr_curves.png")
    return results


if __name__ == "__main__":
    main()
