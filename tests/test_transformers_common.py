"""transformers' own common test suites run against METRIS: model, config, both image-processor backends, processor.

The mixins come from the source release of the installed transformers (see `transformers_common.py`); without
it (no network on first use) this module is skipped with the reason. Testers follow transformers' in-tree ones for
models of the same kind, in its repository (the release ships only the common files): `tests/models/clipseg/`,
`tests/models/mask2former/`, `tests/models/sam/` and `tests/models/sam3/` (SAM's text-prompted successor). A
common test is overridden or skipped here only where one of those overrides or skips the same test for the same
reason; each such place names its precedent.
"""

from __future__ import annotations

import copy
import tempfile
import unittest
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from helpers import build_tiny_tokenizer
from metris_hf import (
    MetrisConfig,
    MetrisForReferringSegmentation,
    MetrisImageProcessor,
    MetrisImageProcessorPil,
    MetrisProcessor,
)
from metris_hf.modeling_metris import MetrisModel
from metris_hf.testing_utils import tiny_metris_config
from transformers_common import load_common_tests

modeling_common, configuration_common, image_processing_common, processing_common = load_common_tests(
    "test_modeling_common", "test_configuration_common", "test_image_processing_common", "test_processing_common"
)
ModelTesterMixin = modeling_common.ModelTesterMixin
floats_tensor = modeling_common.floats_tensor
ids_tensor = modeling_common.ids_tensor
random_attention_mask = modeling_common.random_attention_mask
ConfigTester = configuration_common.ConfigTester
ImageProcessingTester = image_processing_common.ImageProcessingTester
ImageProcessingTestMixin = image_processing_common.ImageProcessingTestMixin
ProcessorTesterMixin = processing_common.ProcessorTesterMixin


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for this module: its models are tiny, and a second thread only spins against whatever
    else holds the other core (an xdist worker, a training run). Measured on 2 busy cores: 94 s with one thread,
    468 s with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# Model and config
# ----------------------------------------------------------------------------------------------------------------


class MetrisModelTester:
    """Tiny METRIS inputs: 32×32 images (the smallest: a 1×1 stride-32 map), 7-token expressions, binary masks."""

    def __init__(
        self,
        parent: unittest.TestCase,
        batch_size: int = 2,
        seq_length: int = 7,
        image_size: int = 32,
        num_channels: int = 3,
        is_training: bool = True,
        **config_overrides: Any,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.image_size = image_size
        self.num_channels = num_channels
        self.is_training = is_training
        self.config_overrides = config_overrides

    def get_config(self) -> MetrisConfig:
        return tiny_metris_config(**self.config_overrides)

    def prepare_config_and_inputs(self) -> tuple[MetrisConfig, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], config.text_config.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        labels = ids_tensor([self.batch_size, self.image_size, self.image_size], 2)
        return config, pixel_values, input_ids, attention_mask, labels

    def prepare_config_and_inputs_for_common(self) -> tuple[MetrisConfig, dict[str, torch.Tensor]]:
        config, pixel_values, input_ids, attention_mask, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}

    def create_and_check_model_for_referring_segmentation(
        self,
        config: MetrisConfig,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        model = MetrisForReferringSegmentation(config).eval()
        with torch.no_grad():
            result = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
            with_loss = model(
                pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels
            )
        stride4 = self.image_size // 4
        self.parent.assertEqual(result.logits.shape, (self.batch_size, 1, stride4, stride4))
        self.parent.assertIsNone(result.loss)
        self.parent.assertEqual(with_loss.loss.shape, ())
        self.parent.assertTrue(torch.isfinite(with_loss.loss))


class MetrisModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MetrisModel, MetrisForReferringSegmentation)
    # The expressions are a required input besides `pixel_values` (the main one), e.g. for eager-vs-SDPA.
    additional_model_inputs = ["input_ids"]
    # Vision backbone + text encoder sub-configs, as tests/models/sam/test_modeling_sam.py::SamModelTest and
    # tests/models/sam3/test_modeling_sam3.py::Sam3ModelTest declare it.
    _is_composite = True
    # configuration_metris.py has no "# Copyright <year>" line, from which the mixin dates a model: undated models
    # count as pre-2023 and skip `test_can_init_all_missing_weights` unless they opt in, as here.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self) -> None:
        # The mixin tells a base model (no loss: not trained by test_training and the gradient-checkpointing
        # tests) from a head by transformers' own `MODEL_MAPPING_NAMES`, which lists every in-tree base model. An
        # out-of-tree model can only register with `AutoModel` at run time, which that table does not see: list
        # `MetrisModel` there for the duration of each test, as it would be in-tree.
        patcher = mock.patch.dict(MODEL_MAPPING_NAMES, {MetrisConfig.model_type: MetrisModel.__name__})
        patcher.start()
        self.addCleanup(patcher.stop)
        self.model_tester = MetrisModelTester(self)
        # Composite config (vision + text sub-configs), so as in-tree composite models the common properties are
        # named explicitly (tests/models/sam/test_modeling_sam.py::SamModelTest.setUp).
        self.config_tester = ConfigTester(
            self,
            config_class=MetrisConfig,
            has_text_modality=False,
            common_properties=["hidden_size", "num_attention_heads", "initializer_range"],
            hidden_size=48,
            num_attention_heads=4,
            joint_dim=24,
        )

    # Labels for the segmentation head: the mixin only builds labels for heads in transformers' Auto mappings.
    # Precedent: tests/models/clipseg/test_modeling_clipseg.py::CLIPSegModelTest._prepare_for_class (labels for
    # CLIPSegForImageSegmentation).
    def _prepare_for_class(
        self, inputs_dict: dict[str, Any], model_class: type, return_labels: bool = False
    ) -> dict[str, Any]:
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is MetrisForReferringSegmentation:
            batch_size, _, height, width = inputs_dict["pixel_values"].shape
            inputs_dict["labels"] = torch.zeros((batch_size, height, width), dtype=torch.long)
        return inputs_dict

    def test_config(self) -> None:
        self.config_tester.run_common_tests()

    def test_model_for_referring_segmentation(self) -> None:
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_model_for_referring_segmentation(*config_and_inputs)

    # ---- Overrides. METRIS returns its intermediate results per component, as Mask2Former and SAM3 do: the four
    # backbone maps F1-F4 after early fusion (`encoder_hidden_states`), the decoder's four stages
    # (`decoder_hidden_states`) and each stage's attention over the guidance set (`decoder_attentions`), rather than
    # one stack of equal layers in `hidden_states` / `attentions`. The three tests written for such a stack are
    # overridden, as in-tree for the same reason:
    # tests/models/mask2former/test_modeling_mask2former.py::Mask2FormerModelTest.test_hidden_states_output,
    # ::test_attention_outputs, ::test_retain_grad_hidden_states_attentions, and
    # tests/models/sam3/test_modeling_sam3.py::Sam3ModelTest.test_hidden_states_output, ::test_attention_outputs,
    # ::test_retain_grad_hidden_states_attentions ("component-specific attention/hidden state outputs").

    def _decoder_sides(self) -> list[int]:
        """Side of the decoder's maps, stage by stage from stride 32 to stride 4."""
        return [self.model_tester.image_size // stride for stride in (32, 16, 8, 4)]

    def _check_hidden_states(self, outputs: Any, config: MetrisConfig) -> None:
        batch, image = self.model_tester.batch_size, self.model_tester.image_size
        encoder = outputs.encoder_hidden_states
        self.assertIsInstance(encoder, tuple)
        self.assertEqual(len(encoder), 4)
        for stage, feature in enumerate(encoder):
            side = image // (4 * 2**stage)
            self.assertEqual(tuple(feature.shape), (batch, config.backbone_config.embed_dim * 2**stage, side, side))
        decoder = outputs.decoder_hidden_states
        self.assertIsInstance(decoder, tuple)
        self.assertEqual(
            [tuple(state.shape) for state in decoder],
            [(batch, config.hidden_size, side, side) for side in self._decoder_sides()],
        )

    def _check_attentions(self, outputs: Any, config: MetrisConfig) -> None:
        batch, guidance = self.model_tester.batch_size, 2 * self.model_tester.seq_length  # [linguistic, visual]
        attentions = outputs.decoder_attentions
        self.assertIsInstance(attentions, tuple)
        self.assertEqual(
            [tuple(attention.shape) for attention in attentions],
            [(batch, config.num_attention_heads, side * side, guidance) for side in self._decoder_sides()],
        )

    def test_hidden_states_output(self) -> None:
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config)).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class), output_hidden_states=True)
            self._check_hidden_states(outputs, config)
            self.assertIsNone(outputs.decoder_attentions)

            # the same through the config
            config_with_hidden_states = copy.deepcopy(config)
            config_with_hidden_states.output_hidden_states = True
            model = model_class(config_with_hidden_states).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self._check_hidden_states(outputs, config)

    def test_attention_outputs(self) -> None:
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class._from_config(copy.deepcopy(config), attn_implementation="eager").eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class), output_attentions=True)
            self._check_attentions(outputs, config)
            self.assertIsNone(outputs.decoder_hidden_states)

            # the same through the config
            config_with_attentions = copy.deepcopy(config)
            config_with_attentions.output_attentions = True
            model = model_class._from_config(config_with_attentions, attn_implementation="eager").eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs_dict, model_class))
            self._check_attentions(outputs, config)

    def test_retain_grad_hidden_states_attentions(self) -> None:
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        config.output_hidden_states = True
        config.output_attentions = True
        model_class = self.all_model_classes[0]
        model = model_class._from_config(config, attn_implementation="eager")
        outputs = model(**self._prepare_for_class(inputs_dict, model_class))
        retained = {
            "encoder_hidden_states": outputs.encoder_hidden_states[0],
            "decoder_hidden_states": outputs.decoder_hidden_states[0],
            "decoder_attentions": outputs.decoder_attentions[0],
        }
        for tensor in retained.values():
            tensor.retain_grad()
        outputs[0].flatten()[0].backward(retain_graph=True)
        for name, tensor in retained.items():
            self.assertIsNotNone(tensor.grad, f"no gradient reaches {name}[0]")

    # The sub-models are `text_encoder` and `vision_encoder.backbone`, not the `language_model` / `vision_tower` pair
    # the common test looks for (it skips otherwise); overridden for that reason as in
    # tests/models/sam3/test_modeling_sam3.py::Sam3ModelTest.test_sdpa_can_dispatch_composite_models.
    def test_sdpa_can_dispatch_composite_models(self) -> None:
        for model_class in self.all_model_classes:
            config, _ = self.model_tester.prepare_config_and_inputs_for_common()
            model = model_class(config)
            with tempfile.TemporaryDirectory() as tmpdirname:
                model.save_pretrained(tmpdirname)
                model_sdpa = model_class.from_pretrained(tmpdirname, attn_implementation="sdpa").eval()
                self.assertEqual(model_sdpa.config._attn_implementation, "sdpa")
                base = model_sdpa.base_model
                sub_models = {"text_encoder": base.text_encoder, "backbone": base.vision_encoder.backbone}
                for name, sub_model in sub_models.items():
                    expected = "sdpa" if sub_model._supports_sdpa else "eager"
                    self.assertEqual(sub_model.config._attn_implementation, expected, name)

                model_eager = model_class.from_pretrained(tmpdirname, attn_implementation="eager").eval()
                self.assertEqual(model_eager.config._attn_implementation, "eager")
                base = model_eager.base_model
                self.assertEqual(base.text_encoder.config._attn_implementation, "eager")
                self.assertEqual(base.vision_encoder.backbone.config._attn_implementation, "eager")
                for name, submodule in model_eager.named_modules():
                    if (
                        type(submodule).__name__.endswith("Attention")
                        and getattr(submodule, "config", None) is not None
                        and submodule.config._attn_implementation == "sdpa"
                    ):
                        raise ValueError(f"the eager model has an SDPA attention layer: {name}")


def _slow(name: str) -> Any:
    """The common test `name` of `ModelTesterMixin`, unchanged, carrying the `slow` mark."""

    def test(self: unittest.TestCase) -> None:
        getattr(ModelTesterMixin, name)(self)

    test.__name__ = test.__qualname__ = name
    return pytest.mark.slow(test)


# The slowest common tests, still run by default: `-m "not slow"` leaves them out for a quick pass (half the module's
# time on 2 cores). test_bc_torch_dtype reloads each class 14 times and formats every parameter into a message;
# test_eager_matches_sdpa_inference is a 25-case matrix of save/reload/compare in three dtypes.
_SDPA_MATRIX = [name for name in vars(ModelTesterMixin) if name.startswith("test_eager_matches_sdpa_inference_")]
for _name in ["test_bc_torch_dtype", *_SDPA_MATRIX]:
    setattr(MetrisModelTest, _name, _slow(_name))


# ----------------------------------------------------------------------------------------------------------------
# Image processors (both backends)
# ----------------------------------------------------------------------------------------------------------------


class MetrisImageProcessingTester(ImageProcessingTester):
    """Defaults of the METRIS image processors, at a small `size` so that the tests stay fast."""

    def __init__(self, parent: unittest.TestCase, **kwargs: Any):
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("size", {"height": 32, "width": 32})
        kwargs.setdefault("do_rescale", True)
        kwargs.setdefault("rescale_factor", 1 / 255)
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", list(IMAGENET_DEFAULT_MEAN))
        kwargs.setdefault("image_std", list(IMAGENET_DEFAULT_STD))
        kwargs.setdefault("do_convert_rgb", True)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self) -> dict[str, type]:
        # The mixin finds in-tree processors by the test file's folder (tests/models/<model_type>/); ours are
        # registered with AutoImageProcessor by `import metris_hf` instead.
        return {"torchvision": MetrisImageProcessor, "pil": MetrisImageProcessorPil}


class MetrisImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MetrisImageProcessingTester


# ----------------------------------------------------------------------------------------------------------------
# Processor
# ----------------------------------------------------------------------------------------------------------------


class MetrisProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = MetrisProcessor

    @classmethod
    def _setup_tokenizer(cls) -> Any:
        return build_tiny_tokenizer()

    @classmethod
    def _setup_image_processor(cls) -> MetrisImageProcessor:
        return MetrisImageProcessor(size={"height": 32, "width": 32})

    # METRIS pairs every expression with exactly one image: a text-only sample has nothing to segment, and the
    # processor refuses it. Skipped for the same reason as
    # tests/models/sam3/test_processing_sam3.py::Sam3ProcessorTest.test_processor_text_has_no_visual ("custom
    # interface, not a standard VLM text+image interface"). The test's other half, nested per-sample image lists,
    # is covered by tests/test_processor.py::test_nested_per_sample_images_and_masks.
    def test_processor_text_has_no_visual(self) -> None:
        self.skipTest("METRIS pairs every expression with one image: a text-only sample has nothing to segment")
