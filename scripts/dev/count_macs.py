"""Parameters and GMACs of METRIS, by part, counted with `torch.utils.flop_counter` (MACs = FLOPs / 2).

    python scripts/dev/count_macs.py                    # full-size model, 480×480, 20 tokens, early fusion on and off
    python scripts/dev/count_macs.py --image_size 384 --max_length 30 --json macs.json

Random weights, one CPU forward pass per configuration: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json

from metris_hf import MetrisConfig
from metris_hf.macs import count_macs


def print_report(report: dict) -> None:
    fusion = "on" if report["early_fusion"] else "off"
    print(f"\nMETRIS @ {report['image_size']}², L={report['max_length']}, early fusion {fusion}")
    print(f"{'part':<22}{'params (M)':>12}{'GMACs':>10}")
    for part in sorted(set(report["params_M"]) | set(report["gmacs"])):
        print(f"{part:<22}{report['params_M'].get(part, 0):>12.1f}{report['gmacs'].get(part, 0):>10.1f}")
    print(f"{'total':<22}{report['total_params_M']:>12.1f}{report['total_gmacs']:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_name", default=None, help="a config.json / folder; default: MetrisConfig()")
    parser.add_argument("--image_size", type=int, default=480)
    parser.add_argument("--max_length", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    base = MetrisConfig.from_pretrained(args.config_name) if args.config_name else MetrisConfig()
    reports = []
    for fusion in (True, False):
        config = MetrisConfig.from_dict({**base.to_dict(), "early_fusion": fusion})
        report = count_macs(config, args.image_size, args.max_length)
        print_report(report)
        reports.append(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(reports, handle, indent=2)


if __name__ == "__main__":
    main()
