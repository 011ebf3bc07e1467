"""Parameters and MACs of METRIS by part, counted with `torch.utils.flop_counter` (MACs = FLOPs / 2).

Used by `scripts/dev/count_macs.py` (the table in docs/model.md) and `scripts/dev/benchmark.py` (GMACs per row).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .configuration_metris import MetrisConfig
from .modeling_metris import MetrisForReferringSegmentation

# Module-name prefixes → the parts that `scripts/dev/count_macs.py` and the docs report.
PARTS = {
    "metris.vision_encoder.backbone": "backbone",
    "metris.vision_encoder.fusions": "early fusion",
    "metris.vision_encoder.timm_norms": "backbone",
    "metris.text_encoder": "text encoder",
    "metris.text_proj": "text encoder",
    "metris.stage4_proj": "stage-4 projection",
    "metris.stage4_block": "stage-4 projection",
    "metris.language_enhancer": "language enhancer",
    "metris.visual_expression_extractor": "VEE",
    "metris.decoder": "decoder",
    "classifier": "decoder",
    "no_target_classifier": "no-target head",
}


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# The counter knows the CUDA attention kernels but not the CPU one: without this, every fused attention
# (Swin's windows, ours) would count 0 on a CPU. With it, SDPA counts exactly what eager attention does.
CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def flop_counter() -> FlopCounterMode:
    """`torch.utils.flop_counter` with the CPU attention kernel taught (MACs = FLOPs / 2)."""
    return FlopCounterMode(display=False, depth=None, custom_mapping=CPU_SDPA)


def count_macs(config: MetrisConfig, image_size: int, max_length: int, batch_size: int = 1) -> dict:
    """Params and GMACs (per image) of one forward pass, split by part."""
    model = MetrisForReferringSegmentation(config).eval()
    pixel_values = torch.randn(batch_size, 3, image_size, image_size)
    input_ids = torch.ones(batch_size, max_length, dtype=torch.long)
    params: dict[str, int] = defaultdict(int)
    for name, param in model.named_parameters():
        part = next((part for prefix, part in PARTS.items() if name.startswith(prefix + ".")), "other")
        params[part] += param.numel()
    counter = flop_counter()
    with counter, torch.no_grad():
        model(pixel_values=pixel_values, input_ids=input_ids)
    per_module = counter.get_flop_counts()
    root = type(model).__name__

    def gmacs_of(name: str) -> float:
        return sum(per_module.get(f"{root}.{name}", {}).values()) / 2 / batch_size

    macs: dict[str, float] = defaultdict(float)
    # The tracker names only modules that were called, and the backbone is run stage by stage, so its share
    # is the vision encoder's minus the fusion modules'.
    stages = len(model.metris.vision_encoder.channels)
    macs["early fusion"] = sum(gmacs_of(f"metris.vision_encoder.fusions.{index}") for index in range(stages))
    macs["backbone"] = gmacs_of("metris.vision_encoder") - macs["early fusion"]
    for prefix, part in PARTS.items():
        if not prefix.startswith("metris.vision_encoder"):
            macs[part] += gmacs_of(prefix)
    total_macs = sum(per_module["Global"].values()) / 2 / batch_size
    macs["other (losses, glue)"] = total_macs - sum(macs.values())
    return {
        "image_size": image_size,
        "max_length": max_length,
        "early_fusion": config.early_fusion,
        "params_M": {k: v / 1e6 for k, v in sorted(params.items())},
        "total_params_M": sum(params.values()) / 1e6,
        "gmacs": {k: v / 1e9 for k, v in sorted(macs.items()) if v},
        "total_gmacs": total_macs / 1e9,
    }
