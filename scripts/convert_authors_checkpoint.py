"""Convert a checkpoint saved by the authors' METRIS code into a metris-hf checkpoint folder.

    python scripts/convert_authors_checkpoint.py --checkpoint model_best_refcoco.pth \\
        --tokenizer bert-base-uncased --output_dir metris-swinb-refcoco

Their training saves `{"model": state_dict, "best_oIoU", "epoch", "args"}` (a bare state dict works too). Every
tensor is renamed (or split, for their fused q/k/v projections) by `metris_hf.conversion`; a key it does not know
stops the conversion. Their 2-class head is kept: the config says `mask_loss="weighted_ce"`, and the model's
`logits` are the difference of the two class logits. The folder holds config, safetensors weights and a processor
(480×480, 20 tokens, the given BERT tokenizer) and loads with `AutoModel.from_pretrained`.
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer

from metris_hf import MetrisForReferringSegmentation, MetrisImageProcessor, MetrisProcessor
from metris_hf.conversion import authors_config, convert_authors_state_dict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pth saved by the authors' train.py (or a state dict)")
    parser.add_argument("--tokenizer", required=True, help="BERT tokenizer (Hub id or folder), e.g. bert-base-uncased")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted checkpoint to")
    parser.add_argument("--image_size", type=int, default=480, help="processor input size (default: 480)")
    parser.add_argument("--max_length", type=int, default=20, help="processor expression length (default: 20)")
    return parser.parse_args(argv)


def load_authors_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only (`weights_only`); their saves also pickle the training `argparse.Namespace`, admitted as data."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with torch.serialization.safe_globals([argparse.Namespace]):
        saved = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = saved.get("model", saved) if isinstance(saved, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} holds no state dict (expected a dict of tensors, or one under the key 'model')")
    return state_dict


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    model = MetrisForReferringSegmentation(authors_config()).eval()
    converted = convert_authors_state_dict(load_authors_state_dict(Path(args.checkpoint)))
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"the converted checkpoint does not fit: missing {missing[:8]}, unexpected {unexpected[:8]}")

    # Prepare the processor the authors' evaluation implies: 480×480 inputs, 20 tokens.
    processor = MetrisProcessor(
        image_processor=MetrisImageProcessor(size={"height": args.image_size, "width": args.image_size}),
        tokenizer=AutoTokenizer.from_pretrained(args.tokenizer),
    )
    processor.max_length = args.max_length  # a tokenizer init kwarg, saved in tokenizer_config.json
    output = Path(args.output_dir)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    print(f"wrote {output}: {len(converted)} tensors from {args.checkpoint}")
    return output


if __name__ == "__main__":
    main()
