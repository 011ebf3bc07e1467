"""Named small METRIS configurations, for what must run on a CPU: `train.py --config_name tiny|small`, the
benchmark's `--tiny` rows, tests and docs.

- `tiny`: a few hundred thousand parameters at 64×64, trains and runs in seconds;
- `small`: the shape of the embedded checkpoint (`metris_hf.embedded_checkpoint()`), read from its config.json
  so that the preset and the shipped model cannot drift apart.

Both keep the articles "the", "a", "an" at ids 5, 6, 7, as the synthetic tokenizer
(`metris_hf.data.build_synthetic_tokenizer`) and the tests' tiny vocabulary place them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from transformers import BertConfig, SwinConfig

from .configuration_metris import MetrisConfig
from .resources import embedded_checkpoint

# What a saved config.json records about the checkpoint rather than the architecture.
_CHECKPOINT_KEYS = ("architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path")


def tiny_swin_config(**overrides: Any) -> SwinConfig:
    """A four-stage Swin of ~0.1 M parameters (strides 4-32), all stages out."""
    defaults = dict(
        image_size=64,
        patch_size=4,
        window_size=2,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return SwinConfig(**defaults | overrides)


def tiny_bert_config(**overrides: Any) -> BertConfig:
    """A one-layer BERT with a 256-token vocabulary (room for the test and synthetic vocabularies)."""
    defaults = dict(
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertConfig(**defaults | overrides)


def tiny_metris_config(**overrides: Any) -> MetrisConfig:
    """A METRIS of a few hundred thousand parameters; any `MetrisConfig` field can be overridden."""
    defaults: dict[str, Any] = dict(
        backbone_config=tiny_swin_config(),
        text_config=tiny_bert_config(),
        hidden_size=32,
        num_attention_heads=4,
        joint_dim=16,
        enhancer_rounds=1,
        refinement_layers=1,
        relation_layers=1,
        mlp_ratio=2.0,
        article_token_ids=[6, 7, 5],  # "a", "an", "the"
    )
    return MetrisConfig(**defaults | overrides)


def _architecture(config_dict: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _architecture(value) if isinstance(value, dict) and "model_type" in value else value
        for key, value in config_dict.items()
        if key not in _CHECKPOINT_KEYS
    }


def small_metris_config(**overrides: Any) -> MetrisConfig:
    """The embedded checkpoint's architecture (3.7 M parameters at 128×128, every module of the full model at
    widths a CPU trains in minutes), fresh: no weights, no checkpoint metadata; any field can be overridden.

    FileNotFoundError if this install lacks the package data.
    """
    saved = json.loads((embedded_checkpoint() / "config.json").read_text(encoding="utf-8"))
    return MetrisConfig(**_architecture(saved) | overrides)


PRESETS: dict[str, Callable[..., MetrisConfig]] = {"tiny": tiny_metris_config, "small": small_metris_config}


def preset_config(name: str, **overrides: Any) -> MetrisConfig:
    """The preset `name` (a key of `PRESETS`) with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name](**overrides)
