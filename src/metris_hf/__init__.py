"""METRIS for Hugging Face transformers.

Importing the package registers METRIS with the Auto classes (`AutoConfig`, `AutoModel`, `AutoImageProcessor`,
`AutoProcessor`) and the `referring-image-segmentation` pipeline, and marks each class for
`register_for_auto_class` so that `save_pretrained` writes an `auto_map` and copies the code: a Hub copy then also
loads with `trust_remote_code=True` in a process without this package.

Where transformers (or torch) is not installed, none of that happens: `metris_hf.onnx_runtime` then runs an
exported model with onnxruntime, NumPy, Pillow and `tokenizers` alone.
"""

from .resources import EMBEDDED_CHECKPOINT, HAS_TRANSFORMERS, embedded_checkpoint

if HAS_TRANSFORMERS:
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

    from .configuration_metris import MetrisConfig
    from .image_processing_metris import MetrisImageProcessor, MetrisImageProcessorPil
    from .modeling_metris import (
        MetrisForReferringSegmentation,
        MetrisModel,
        MetrisModelOutput,
        MetrisPreTrainedModel,
        MetrisReferringSegmentationOutput,
    )
    from .pipeline_metris import ReferringImageSegmentationPipeline, register_pipeline
    from .processing_metris import MetrisProcessor

    AutoConfig.register(MetrisConfig.model_type, MetrisConfig, exist_ok=True)
    AutoModel.register(MetrisConfig, MetrisForReferringSegmentation, exist_ok=True)
    AutoImageProcessor.register(
        MetrisConfig,
        image_processor_classes={"torchvision": MetrisImageProcessor, "pil": MetrisImageProcessorPil},
        exist_ok=True,
    )
    AutoProcessor.register(MetrisConfig, MetrisProcessor, exist_ok=True)
    MetrisConfig.register_for_auto_class()
    MetrisForReferringSegmentation.register_for_auto_class("AutoModel")
    MetrisImageProcessor.register_for_auto_class("AutoImageProcessor")
    MetrisImageProcessorPil.register_for_auto_class("AutoImageProcessor")
    MetrisProcessor.register_for_auto_class("AutoProcessor")
    register_pipeline()

__all__ = [
    "EMBEDDED_CHECKPOINT",
    "MetrisConfig",
    "MetrisForReferringSegmentation",
    "MetrisImageProcessor",
    "MetrisImageProcessorPil",
    "MetrisModel",
    "MetrisModelOutput",
    "MetrisPreTrainedModel",
    "MetrisProcessor",
    "MetrisReferringSegmentationOutput",
    "ReferringImageSegmentationPipeline",
    "embedded_checkpoint",
    "register_pipeline",
]
if not HAS_TRANSFORMERS:  # `from metris_hf import *` without transformers: only what exists
    __all__ = ["EMBEDDED_CHECKPOINT", "embedded_checkpoint"]
