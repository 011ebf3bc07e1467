"""Seed today's model with the weights of a metris-hf 0.1 checkpoint (the earlier layout), as the embedded
checkpoint was rebuilt: every old tensor where it fits, grown MLPs keeping their old units, new Mix-FFN
convolutions as the identity; what changed in the function itself is left to fine-tuning.

    python scripts/dev/warm_start_from_legacy.py OLD_FOLDER OUTPUT_FOLDER [--config_name small]

A maintainer's tool, kept to reproduce the embedded checkpoint (model_cards/metris-tiny-synthetic); no loading
path of the package reads the 0.1 layout.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from metris_hf import MetrisForReferringSegmentation, MetrisProcessor
from metris_hf.folders import run_command
from metris_hf.modeling_metris import MetrisAttentionBlock, MetrisMixFFN
from metris_hf.presets import PRESETS, preset_config

# metris-hf 0.1 kept every module at the top of `MetrisForReferringSegmentation`; they now live under the base
# model `metris.`, the mask head is `classifier`, the pixel-word attention owns its projections, the stage-4
# projection lost its LayerNorm, and transformers 5.2x renamed its Swin's tensors. First match wins.
LEGACY_RENAMES = [
    (r"^decoder\.classifier\.", "classifier."),
    (r"^stage4_proj\.0\.", "metris.stage4_proj."),
    (r"^vision_encoder\.fusions\.(\d+)\.attention\.", r"metris.vision_encoder.fusions.\1."),
    (
        r"^(text_encoder|text_proj|vision_encoder|stage4_block|language_enhancer|visual_expression_extractor|decoder)\.",
        r"metris.\1.",
    ),
]
LEGACY_SWIN_RENAMES = [
    (r"backbone\.(embeddings|encoder)\.", r"backbone.swin.\1."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (
        r"attention\.self\.relative_position_bias_table",
        "attention.relative_position_bias.relative_position_bias_table",
    ),
    (r"intermediate\.dense\.", "mlp.fc1."),
    (r"(blocks\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
]


def convert_legacy_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A metris-hf 0.1 state dict → today's names. Tensors today's layout dropped (the fusion's input norm, the
    stage-4 LayerNorm) are left out; a warm start initialises what today's layout added."""
    converted = {}
    for key, tensor in state_dict.items():
        if re.match(r"^(vision_encoder\.fusions\.\d+\.norm|stage4_proj\.1)\.", key):
            continue
        new = next((re.sub(pattern, target, key) for pattern, target in LEGACY_RENAMES if re.match(pattern, key)), key)
        if ".backbone." in new and "hidden_states_norms" not in new:
            for pattern, target in LEGACY_SWIN_RENAMES:
                new = re.sub(pattern, target, new)
        converted[new] = tensor
    return converted


def warm_start_from_legacy(model: torch.nn.Module, legacy_state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load a metris-hf 0.1 state dict into today's model so that it starts as close to the old function as the new
    layout allows; returns the names of the tensors that start from their init.

    MLPs that grew (the decoder's 2× → 4×) keep the old units first and give the new ones a zero output weight;
    new Mix-FFN convolutions start as the identity; a self-attention block's new context norm copies its query
    norm (the old block normalised both with one). What changed in the function itself (the fusion's norms, the
    q/k/v biases dropped) is left to fine-tuning.
    """
    converted = convert_legacy_state_dict(legacy_state_dict)
    own = model.state_dict()
    with torch.no_grad():
        for key, tensor in converted.items():
            if key not in own:
                continue
            target = own[key]
            if target.shape == tensor.shape:
                target.copy_(tensor)
            elif re.search(r"mlp\.fc1\.(weight|bias)$", key):
                target[: tensor.shape[0]].copy_(tensor)
            elif key.endswith("mlp.fc2.weight"):
                target.zero_()[:, : tensor.shape[1]].copy_(tensor)
            else:
                raise ValueError(f"{key}: the old {tuple(tensor.shape)} cannot seed today's {tuple(target.shape)}")
        for name, module in model.named_modules():
            if isinstance(module, MetrisMixFFN) and f"{name}.dwconv.weight" not in converted:
                module.dwconv.weight.zero_()[:, 0, 1, 1] = 1.0
                module.dwconv.bias.zero_()
            if isinstance(module, MetrisAttentionBlock) and f"{name}.norm_kv.weight" not in converted:
                module.norm_kv.load_state_dict(module.norm_q.state_dict())
    return sorted(set(own) - set(converted))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="a metris-hf 0.1 checkpoint folder (model.safetensors, processor)")
    parser.add_argument("output", type=Path, help="where today's seeded model and the processor are saved")
    parser.add_argument("--config_name", choices=sorted(PRESETS), default="small", help="the shape of the old model")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = MetrisForReferringSegmentation(preset_config(args.config_name))
    fresh = warm_start_from_legacy(model, load_file(args.old / "model.safetensors"))
    model.save_pretrained(args.output)
    MetrisProcessor.from_pretrained(args.old).save_pretrained(args.output)
    print(f"saved {args.output}; {len(fresh)} tensors start from their init: {', '.join(fresh)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(main, "warm_start_from_legacy.py"))
