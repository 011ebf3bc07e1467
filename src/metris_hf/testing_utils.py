"""Tiny configurations for tests, docs and benchmarks that must run in seconds on a CPU, and the small one of the
embedded demo checkpoint, which trains on the synthetic set in minutes on a CPU."""

from __future__ import annotations

from typing import Any

from transformers import BertConfig, SwinConfig

from .configuration_metris import MetrisConfig


def tiny_swin_config(**overrides: Any) -> SwinConfig:
    """A four-stage Swin of ~0.1 M parameters (strides 4-32), all stages out."""
    kwargs = dict(
        image_size=64, patch_size=4, window_size=2, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    kwargs.update(overrides)
    return SwinConfig(**kwargs)


def tiny_bert_config(**overrides: Any) -> BertConfig:
    """A one-layer BERT with a 256-token vocabulary (room for the test and synthetic vocabularies)."""
    kwargs = dict(
        vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def tiny_metris_config(**overrides: Any) -> MetrisConfig:
    """A METRIS of a few hundred thousand parameters; any `MetrisConfig` field can be overridden."""
    kwargs: dict[str, Any] = dict(
        backbone_config=tiny_swin_config(),
        text_config=tiny_bert_config(),
        hidden_size=32,
        num_attention_heads=4,
        joint_dim=16,
        enhancer_rounds=1,
        refinement_layers=1,
        relation_layers=1,
        mlp_ratio=2.0,
        article_token_ids=[6, 7, 5],  # "a", "an", "the" in tests/conftest.py's tiny vocabulary
    )
    kwargs.update(overrides)
    return MetrisConfig(**kwargs)


def small_metris_config(**overrides: Any) -> MetrisConfig:
    """The embedded checkpoint's shape (`metris-tiny-synthetic`): 3.6 M parameters at 128×128, every module of
    the full model (two enhancement rounds, 2 + 2 VEE blocks) at widths a CPU trains in minutes."""
    kwargs: dict[str, Any] = dict(
        # Absolute position embeddings, for "left" / "lowest": a first run without them scored 0.24 IoU on
        # position words at step 3,000 (their benefit has not been measured in a controlled comparison).
        backbone_config=tiny_swin_config(
            image_size=128, embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4,
            use_absolute_embeddings=True,
        ),
        text_config=tiny_bert_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
        hidden_size=64,
        num_attention_heads=4,
        joint_dim=32,
        enhancer_rounds=2,
        refinement_layers=2,
        relation_layers=2,
        mlp_ratio=2.0,
        article_token_ids=[6, 7, 5],  # "a", "an", "the" in `metris_hf.data.build_synthetic_tokenizer()`
    )
    kwargs.update(overrides)
    return tiny_metris_config(**kwargs)
