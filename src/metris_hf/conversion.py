"""State-dict conversion of the authors' released METRIS checkpoints.

The authors' code (a LAVT fork) saves one state dict with three parts: `backbone.*` (their own Swin with the
pixel-word attention inside each stage, the stage-4 projection and block), `net.*` (enhancer, VEE, decoder) and
`text_encoder.*` (a vendored BERT whose names are transformers' own). `convert_authors_state_dict` renames,
splits (their fused `qkv` / `kv` projections) and reshapes (their 1×1 `Conv1d` projections are our linears) every
tensor; `authors_config` is the `MetrisConfig` of their model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .configuration_metris import MetrisConfig

BACKBONE = "metris.vision_encoder.backbone"
SWIN_BLOCK_PARTS = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
FUSION_PARTS = {
    "fusion.vis_project.0": "visual_proj",
    "fusion.image_lang_att.f_query.0": "q_proj",
    "fusion.image_lang_att.f_key.0": "k_proj",
    "fusion.image_lang_att.f_value.0": "v_proj",
    "fusion.image_lang_att.W.0": "o_proj",
    "fusion.project_mm.0": "fused_proj",
    "res_gate.0": "gate.0",
    "res_gate.2": "gate.2",
}
METRIS_BLOCK_PARTS = {
    "norm1": "norm_q",
    "norm2": "norm_kv",
    "norm3": "norm_mlp",
    "attn.q": "attention.q_proj",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.dwconv.dwconv": "mlp.dwconv",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
# Their attention blocks by name → ours (the module path under the task model).
AUTHORS_BLOCKS = {
    "backbone.self": "metris.stage4_block",
    "net.cross4": "metris.decoder.blocks.0",
    "net.cross3": "metris.decoder.blocks.1",
    "net.cross2": "metris.decoder.blocks.2",
    "net.cross1": "metris.decoder.blocks.3",
    **{f"net.cross.{2 * r}": f"metris.language_enhancer.word_blocks.{r}" for r in range(2)},
    **{f"net.cross.{2 * r + 1}": f"metris.language_enhancer.pixel_blocks.{r}" for r in range(2)},
    **{f"net.VIS.topk{i + 1}": f"metris.visual_expression_extractor.refinement.{i}" for i in range(4)},
    **{f"net.VIS.selfatt{i + 1}": f"metris.visual_expression_extractor.relation.{i}" for i in range(4)},
}
AUTHORS_MODULES = {
    "backbone.conv": "metris.stage4_proj",
    "backbone.patch_embed.proj": f"{BACKBONE}.swin.embeddings.patch_embeddings.projection",
    "backbone.patch_embed.norm": f"{BACKBONE}.swin.embeddings.norm",
    **{f"backbone.norm{i}": f"{BACKBONE}.hidden_states_norms.stage{i + 1}" for i in range(4)},
    "net.VIS.proj_l": "metris.visual_expression_extractor.text_proj",
    "net.VIS.proj_v": "metris.visual_expression_extractor.vision_proj",
    **{f"net.conv1_{4 - i}": f"metris.decoder.fuse.{i}" for i in range(3)},
    "net.conv1_1": "classifier",
}


def authors_config(**overrides) -> MetrisConfig:
    """Their model: Swin-B (window 12) + BERT-base, early fusion, 2-class weighted cross-entropy, τ stored as τ."""
    return MetrisConfig(**{"mask_loss": "weighted_ce", "temperature_parametrization": "tau", **overrides})


def _split_halves(prefix: str, tensor: torch.Tensor, names: tuple[str, ...], suffix: str) -> dict[str, torch.Tensor]:
    """Their fused projections stack the outputs of k and v (or q, k and v) along dim 0."""
    return {f"{prefix}.{name}.{suffix}": part for name, part in zip(names, tensor.chunk(len(names), dim=0))}


def convert_authors_key(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """One tensor of their state dict → our key(s) and tensor(s). Raises `KeyError` for a key it does not know."""
    if key.startswith("text_encoder."):
        return {f"metris.{key}": tensor}
    module, _, suffix = key.rpartition(".")
    if key == "net.VIS.tau":  # τ itself, shape (1,), as theirs
        return {"metris.visual_expression_extractor.temperature": tensor.reshape(1)}

    match = re.fullmatch(r"backbone\.layers\.(\d+)\.(.+)", module)
    if match:
        stage, part = match.groups()
        layer = f"{BACKBONE}.swin.encoder.layers.{stage}"
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)", part)
        if block:
            index, inner = block.groups()
            target = f"{layer}.blocks.{index}"
            if inner == "attn.qkv":
                return _split_halves(f"{target}.attention", tensor, ("q_proj", "k_proj", "v_proj"), suffix)
            if inner == "attn" and suffix == "relative_position_index":
                return {}  # a constant our Swin rebuilds itself
            if inner == "attn" and suffix == "relative_position_bias_table":
                return {f"{target}.attention.relative_position_bias.relative_position_bias_table": tensor}
            if inner in SWIN_BLOCK_PARTS:
                return {f"{target}.{SWIN_BLOCK_PARTS[inner]}.{suffix}": tensor}
        if part in ("downsample.reduction", "downsample.norm"):
            return {f"{layer}.{part}.{suffix}": tensor}
        if part in FUSION_PARTS:
            target = f"metris.vision_encoder.fusions.{stage}.{FUSION_PARTS[part]}.{suffix}"
            return {target: tensor.squeeze(-1) if tensor.ndim == 3 else tensor}  # Conv1d(k=1) → Linear
        raise KeyError(key)

    for theirs, ours in AUTHORS_BLOCKS.items():
        if module.startswith(theirs + "."):
            inner = module[len(theirs) + 1 :]
            if inner == "attn.kv":
                return _split_halves(f"{ours}.attention", tensor, ("k_proj", "v_proj"), suffix)
            if inner in METRIS_BLOCK_PARTS:
                return {f"{ours}.{METRIS_BLOCK_PARTS[inner]}.{suffix}": tensor}
            raise KeyError(key)

    for theirs, ours in AUTHORS_MODULES.items():
        if module == theirs or module.startswith(theirs + "."):
            target = ours + module[len(theirs) :] + "." + suffix
            if theirs == "backbone.conv":  # Conv2d(k=1) → Linear
                tensor = tensor.flatten(1) if tensor.ndim == 4 else tensor
            return {target: tensor}
    raise KeyError(key)


def convert_authors_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their whole state dict → ours (for `MetrisForReferringSegmentation` built from `authors_config()`).

    Every key must convert: an unknown key raises `KeyError` naming it, so a checkpoint of another
    architecture is refused rather than loaded half-way.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix("module.")  # a DDP-wrapped save
        try:
            converted.update(convert_authors_key(key, tensor))
        except KeyError:
            raise KeyError(f"no METRIS-HF name for the authors' checkpoint key {key!r}") from None
    return converted


__all__ = [
    "authors_config",
    "convert_authors_key",
    "convert_authors_state_dict",
]
