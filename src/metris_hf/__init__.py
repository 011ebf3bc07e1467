"""METRIS for Hugging Face transformers.

Importing the package registers `MetrisConfig` with `AutoConfig` and `MetrisForReferringSegmentation` with
`AutoModel`, and marks both for `register_for_auto_class` so that `save_pretrained` writes an `auto_map`
and copies the code: a Hub copy then also loads with `trust_remote_code=True` in a process without this
package.
"""

from transformers import AutoConfig, AutoModel

from .configuration_metris import MetrisConfig
from .modeling_metris import (
    MetrisForReferringSegmentation,
    MetrisPreTrainedModel,
    MetrisReferringSegmentationOutput,
)

AutoConfig.register(MetrisConfig.model_type, MetrisConfig, exist_ok=True)
AutoModel.register(MetrisConfig, MetrisForReferringSegmentation, exist_ok=True)
MetrisConfig.register_for_auto_class()
MetrisForReferringSegmentation.register_for_auto_class("AutoModel")

__all__ = [
    "MetrisConfig",
    "MetrisForReferringSegmentation",
    "MetrisPreTrainedModel",
    "MetrisReferringSegmentationOutput",
]
