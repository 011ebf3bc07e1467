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
from metris_hf.folders import run_command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a .pth saved by the authors' train.py (or a state dict)")
    parser.add_argument("--tokenizer", required=True, help="BERT tokenizer (Hub id or folder), e.g. bert-base-uncased")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted checkpoint to")
    parser.add_argument("--image_size", type=int, default=480, help="processor input size (default: 480)")
    parser.add_argument("--max_length", type=int, default=20, help="processor expression length (default: 20)")
    return parser.parse_args(argv)


def load_authors_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only (`weights_only`); their saves also pickle the training `argparse.Namespace`, admitted as data.

    An empty, truncated or non-PyTorch file, a file without a dict of tensors, and NaN or infinite tensors are each a
    ValueError naming the file (one line, where torch would print `EOFError`, `KeyError: 101` or its pickle
    report).
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (not a PyTorch checkpoint)")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or its older pickle format
        raise ValueError(f"{path}: not a PyTorch checkpoint (it starts with {head!r}, not a zip archive or a pickle)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises EOFError, KeyError, RuntimeError, UnpicklingError, ...
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint (truncated, or another format): "
            f"{type(error).__name__}: {reason}"
        ) from None
    state_dict = saved.get("model", saved) if isinstance(saved, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} holds no state dict (expected a dict of tensors, or one under the key 'model')")
    if not state_dict:
        raise ValueError(f"{path}: the state dict is empty")
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(map(str, bad[:5]))}"
            f"{', …' if len(bad) > 5 else ''}): the source checkpoint is corrupt, nothing was written"
        )
    return state_dict


def check_fits(model: torch.nn.Module, converted: dict[str, torch.Tensor], source: Path) -> None:
    """A ValueError naming the first tensors whose names or shapes do not fit the model (instead of
    `load_state_dict`'s report of every one)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in converted]
    unexpected = [key for key in converted if key not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{source}: the converted checkpoint does not fit: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    wrong = [
        f"{key} {tuple(tensor.shape)} (expected {tuple(expected[key].shape)})"
        for key, tensor in converted.items()
        if tensor.shape != expected[key].shape
    ]
    if wrong:
        raise ValueError(
            f"{source}: {len(wrong)} tensor(s) have shapes the METRIS-B model does not: {'; '.join(wrong[:3])}"
            f"{'; …' if len(wrong) > 3 else ''} (a checkpoint of another model size?)"
        )


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if not 2 <= args.max_length <= 512:
        raise ValueError(f"--max_length must lie in 2 … 512 (BERT's position table), got {args.max_length}")
    if not 32 <= args.image_size <= 4096:
        raise ValueError(f"--image_size must lie in 32 … 4096, got {args.image_size}")
    source = Path(args.checkpoint)
    state_dict = load_authors_state_dict(source)
    try:
        converted = convert_authors_state_dict(state_dict)
    except KeyError as error:  # an unknown key: named by the conversion
        raise ValueError(f"{source}: {error.args[0] if error.args else error}") from None
    model = MetrisForReferringSegmentation(authors_config()).eval()
    check_fits(model, converted, source)
    model.load_state_dict(converted, strict=True)

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
    raise SystemExit(run_command(main, "convert_authors_checkpoint.py"))
