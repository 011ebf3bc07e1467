"""What the tests import: the named small configurations, which live in `metris_hf.presets` (production code
imports them from there, never from here)."""

from .presets import small_metris_config, tiny_bert_config, tiny_metris_config, tiny_swin_config

__all__ = ["small_metris_config", "tiny_bert_config", "tiny_metris_config", "tiny_swin_config"]
