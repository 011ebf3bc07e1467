"""Our METRIS against the authors' own code, side by side in one process: same weights, same inputs.

    python scripts/compare_with_authors.py --authors_src /path/to/their/code [--repeats 5]

`--authors_src` is a copy of the authors' released code (a LAVT fork) that runs on CPU: their `lib/`, `bert/`
and `args.py`, with stand-ins for the mmcv/mmseg imports and their BERT built from its config instead of
downloaded. Their model is built with their train.py's defaults and random weights; ours gets those weights
through `metris_hf.conversion`. The script prints the largest logit difference, then forward seconds (batch 1,
float32, 480², 20 tokens, median of `--repeats` after a warm-up) for both and for a plain Swin-B forward timed
between them: each model's time is divided by the Swin-B time of the same round, so the speed-up
(theirs / ours) does not move with what else the machine is doing. Flush-denormal is on for both: random
weights leave float32 subnormals in their Swin that a trained checkpoint does not have.

It also times a 4096³ float32 matrix product, the machine's limit: a forward of G GMACs cannot take less than
G ÷ (that product's GMAC/s), whoever wrote the code. The last lines say what share of that limit each model
reaches and the largest speed-up over theirs that the limit allows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoBackbone

from metris_hf import MetrisForReferringSegmentation
from metris_hf.conversion import authors_config, convert_authors_state_dict
from metris_hf.macs import flop_counter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors_src", required=True, help="a CPU-runnable copy of the authors' code")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up (default: 5)")
    parser.add_argument("--image_size", type=int, default=480, help="input size (default: 480)")
    parser.add_argument("--max_length", type=int, default=20, help="expression tokens (default: 20)")
    return parser.parse_args(argv)


def build_authors_model(source: Path) -> torch.nn.Module:
    sys.path.insert(0, str(source))
    from args import get_parser
    from lib import segmentation

    args = get_parser().parse_args([])
    return segmentation.metris(pretrained=args.pretrained_swin_weights, args=args).eval()


def seconds(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    theirs = build_authors_model(Path(args.authors_src))
    config = authors_config()
    ours = MetrisForReferringSegmentation(config).eval()
    ours.load_state_dict(convert_authors_state_dict(theirs.state_dict()), strict=True)
    swin = AutoBackbone.from_config(config.backbone_config).eval()

    size, length = args.image_size, args.max_length
    pixels = torch.randn(1, 3, size, size)
    input_ids = torch.randint(1000, 2000, (1, length))
    attention_mask = torch.ones(1, length, dtype=torch.long)
    runs = {
        "ours": lambda: ours(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask),
        "theirs": lambda: theirs(pixels, input_ids, attention_mask, training=False),
        "swin": lambda: swin(pixels),
    }

    # Same weights, same answer: the comparison is of one architecture.
    with torch.no_grad():
        expected = theirs(pixels, input_ids, attention_mask, training=False)
        got = ours(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask).logits
    got = torch.nn.functional.interpolate(got, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
    difference = (got - (expected[:, 1] - expected[:, 0])).abs().max().item()

    # The limit is timed in every round too, beside the models, and its best round kept: one product timed
    # once after the rounds read 45 instead of 70 GMAC/s when something else briefly ran on the machine.
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    runs["gemm"] = lambda: a @ b
    for run in runs.values():  # warm-up
        seconds(run)
    times: dict[str, list[float]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(args.repeats):
        for name in ("ours", "swin", "theirs", "gemm"):
            times[name].append(seconds(runs[name]))
        swin_time = times["swin"][-1]
        ratios["ours"].append(times["ours"][-1] / swin_time)
        ratios["theirs"].append(times["theirs"][-1] / swin_time)

    gemm_gmacs_per_s = 4096**3 / min(times.pop("gemm")) / 1e9
    counter = flop_counter()
    with counter:
        seconds(runs["ours"])
    gmacs = counter.get_total_flops() / 2 / 1e9

    median = {name: statistics.median(values) for name, values in times.items()}
    speedup = statistics.median(ratios["theirs"]) / statistics.median(ratios["ours"])
    print(f"{torch.__version__}, {torch.get_num_threads()} threads, batch 1, float32, {size}², {length} tokens")
    print(f"max |ours - theirs| (mask logit): {difference:.2e}")
    print(f"{'model':<10}{'median s':>10}{'÷ Swin-B':>10}")
    for name in ("theirs", "ours", "swin"):
        ratio = statistics.median(ratios[name]) if name in ratios else 1.0
        print(f"{name:<10}{median[name]:>10.3f}{ratio:>10.2f}")
    print(f"speed-up of ours over theirs, each normalised by Swin-B: {speedup:.2f}×")
    bound = gmacs / gemm_gmacs_per_s
    print(
        f"the limit: 4096³ float32 matmul at {gemm_gmacs_per_s:.1f} GMAC/s; "
        f"{gmacs:.1f} GMACs take at least {bound:.2f} s"
    )
    for name in ("theirs", "ours"):
        print(f"  {name} reach {bound / median[name]:.0%} of it")
    print(f"  largest possible speed-up over theirs on this machine: {median['theirs'] / bound:.2f}×")
    return {
        "difference": difference,
        "seconds": median,
        "speedup": speedup,
        "gmacs": gmacs,
        "gemm_gmacs_per_second": gemm_gmacs_per_s,
        "bound_seconds": bound,
    }


if __name__ == "__main__":
    main()
