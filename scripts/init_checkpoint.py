"""Assemble METRIS's initial checkpoint: pretrained vision and text encoders, a randomly initialised rest.

    python scripts/init_checkpoint.py --vision microsoft/swin-base-patch4-window12-384-in22k \\
        --text bert-base-uncased --output_dir metris-swinb [--push_to_hub org/metris-swinb]
    python scripts/init_checkpoint.py --vision timm:swin_base_patch4_window12_384.ms_in22k \\
        --text bert-base-uncased --output_dir metris-swinb-timm

`--vision` is a Hub id or local folder of a transformers Swin checkpoint, or `timm:<model name>` (timm's
Swin is created for `--image_size`; `--vision_file` points timm at local weights). `--text` is a Hub id or
folder of a BERT (or CLIP) checkpoint and its tokenizer. The folder written loads with `from_pretrained`
and is what `scripts/train.py --model_name_or_path` starts from.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, TimmBackboneConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

from metris_hf import MetrisConfig, MetrisForReferringSegmentation, MetrisImageProcessor, MetrisProcessor
from metris_hf.configuration_metris import parse_config_overrides

logger = logging.getLogger("metris.init_checkpoint")
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision", required=True, help="HF Swin checkpoint (Hub id / folder) or timm:<name>")
    parser.add_argument("--vision_file", default=None, help="local weights file for a timm backbone")
    parser.add_argument("--text", required=True, help="BERT or CLIP checkpoint (Hub id / folder) with its tokenizer")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--image_size", type=int, default=480)
    parser.add_argument("--max_length", type=int, default=20)
    parser.add_argument("--drop_path_rate", type=float, default=0.2, help="Swin stochastic depth (authors: 0.2)")
    parser.add_argument("--config_overrides", default=None, help='MetrisConfig fields, e.g. "early_fusion=False"')
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID")
    return parser.parse_args(argv)


def text_parts(name: str):
    config = AutoConfig.from_pretrained(name)
    if hasattr(config, "text_config") and config.model_type != "bert":  # a full CLIP checkpoint: keep its text tower
        config = config.text_config
    encoder = AutoModel.from_pretrained(name, config=config) if config.model_type == "bert" else None
    if encoder is None:
        from transformers import CLIPTextModel

        encoder = CLIPTextModel.from_pretrained(name)
    return config, encoder


def load_vision(model: MetrisForReferringSegmentation, args: argparse.Namespace) -> None:
    target = model.metris.vision_encoder.backbone
    if args.vision.startswith("timm:"):
        import timm

        overlay = {"file": args.vision_file} if args.vision_file else None
        source = timm.create_model(
            args.vision.removeprefix("timm:"),
            pretrained=True,
            features_only=True,
            out_indices=(0, 1, 2, 3),
            img_size=args.image_size,
            pretrained_cfg_overlay=overlay,
        )
        missing, unexpected = target._backbone.load_state_dict(source.state_dict(), strict=False)
    else:
        # Not `AutoBackbone.from_pretrained`: in transformers 5 it asks the Hub whether the name is a repo before
        # anything else, which fails for local folders and offline. The config names the backbone class.
        backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(AutoConfig.from_pretrained(args.vision))]
        source = backbone_class.from_pretrained(args.vision, out_features=STAGES)
        missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    report("vision", missing, unexpected)


def report(part: str, missing: list[str], unexpected: list[str]) -> None:
    # Per-stage output norms of a backbone made from a classification checkpoint start from identity.
    if missing:
        logger.warning("%s: %d tensors not in the checkpoint (left at init): %s", part, len(missing), missing[:8])
    if unexpected:
        logger.warning("%s: %d checkpoint tensors unused: %s", part, len(unexpected), unexpected[:8])


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.vision.startswith("timm:"):
        backbone_config = TimmBackboneConfig(backbone=args.vision.removeprefix("timm:"), out_indices=(0, 1, 2, 3))
        backbone_kwargs = {"img_size": args.image_size}
    else:
        backbone_config = AutoConfig.from_pretrained(
            args.vision, out_features=STAGES, drop_path_rate=args.drop_path_rate
        )
        backbone_kwargs = None
    text_config, text_encoder = text_parts(args.text)

    config = MetrisConfig(
        backbone_config=backbone_config,
        backbone_kwargs=backbone_kwargs,
        text_config=text_config,
        **parse_config_overrides(args.config_overrides),
    )
    model = MetrisForReferringSegmentation(config)
    load_vision(model, args)
    missing, unexpected = model.metris.text_encoder.load_state_dict(text_encoder.state_dict(), strict=False)
    report("text", missing, [k for k in unexpected if not k.startswith("pooler.")])

    tokenizer = AutoTokenizer.from_pretrained(args.text)
    processor = MetrisProcessor(
        image_processor=MetrisImageProcessor(size={"height": args.image_size, "width": args.image_size}),
        tokenizer=tokenizer,
    )
    processor.max_length = args.max_length
    output = Path(args.output_dir)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    total = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"wrote {output}: {total:.1f} M parameters, vision from {args.vision}, text from {args.text}")
    if args.push_to_hub:
        model.push_to_hub(args.push_to_hub)
        processor.push_to_hub(args.push_to_hub)
    return output


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
