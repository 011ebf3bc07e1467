"""`optimize_for_cpu_inference`: the CPU kernels applied from outside the model change no weight and no result."""

import copy

import torch
from torch import nn

from metris_hf import MetrisForReferringSegmentation
from metris_hf.cpu_kernels import MetrisCpuConvLinear, MetrisInplaceGELU, optimize_for_cpu_inference
from metris_hf.testing_utils import tiny_metris_config

IMAGE = 64  # stride-4 maps of 16×16: 256 rows per image, so the convolution path runs from batch 1


def build(**overrides) -> MetrisForReferringSegmentation:
    torch.manual_seed(0)
    config = tiny_metris_config(**overrides)
    return MetrisForReferringSegmentation._from_config(config, attn_implementation="eager").eval()


def make_inputs(batch: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, length - 2 :] = 0
    return {
        "pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=generator),
        "input_ids": torch.randint(5, 40, (batch, length), generator=generator),
        "attention_mask": attention_mask,
    }


def test_same_weights_keys_and_outputs():
    model = build(no_target_head=True)
    reference = copy.deepcopy(model)
    inputs = make_inputs()
    parameters = {name: id(p) for name, p in model.named_parameters()}
    assert optimize_for_cpu_inference(model) is model
    kinds = {type(m) for name, m in model.named_modules() if "text_encoder" not in name and "backbone" not in name}
    assert {MetrisCpuConvLinear, MetrisInplaceGELU} <= kinds and nn.Linear not in kinds and nn.GELU not in kinds
    # the text encoder and the backbone keep their own layers
    assert all(type(m) is not MetrisCpuConvLinear for m in model.metris.text_encoder.modules())
    assert all(type(m) is not MetrisCpuConvLinear for m in model.metris.vision_encoder.backbone.modules())
    assert {name: id(p) for name, p in model.named_parameters()} == parameters  # shared, not copied
    assert model.state_dict().keys() == reference.state_dict().keys()
    with torch.inference_mode():
        got, expected = model(**inputs, output_attentions=True), reference(**inputs, output_attentions=True)
    for name in ("logits", "no_target_logits", "relevance_scores", "last_hidden_state"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    for left, right in zip(got.decoder_attentions, expected.decoder_attentions, strict=True):
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5)
    optimize_for_cpu_inference(model)  # idempotent
    assert sum(isinstance(m, MetrisCpuConvLinear) for m in model.modules()) == sum(
        type(m) is nn.Linear
        for name, m in reference.named_modules()
        if "text_encoder" not in name and "backbone" not in name
    )


def test_training_through_the_cpu_kernels_gives_the_same_gradients():
    """The in-place GELU steps aside when a gradient is recorded; the convolution's backward is the linear's."""
    model, reference = build(), build()
    optimize_for_cpu_inference(model)
    model.train(), reference.train()
    labels = torch.zeros(2, IMAGE, IMAGE, dtype=torch.long)
    labels[:, 8:40, 16:48] = 1
    for network in (model, reference):
        torch.manual_seed(1)  # the same dropout and drop-path draws
        network(**make_inputs(), labels=labels).loss.backward()
    for (name, got), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
        if expected.grad is not None:
            torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_an_optimized_model_exports_with_a_symbolic_batch():
    """The convolution branches on the row count; under export it runs as the linear, so no batch is pinned."""
    model = optimize_for_cpu_inference(build())
    dim = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        exported = torch.export.export(
            model,
            args=(),
            kwargs=make_inputs(2),
            dynamic_shapes={"pixel_values": {0: dim}, "input_ids": {0: dim}, "attention_mask": {0: dim}},
            strict=False,
        )
        for batch in (1, 3):
            inputs = make_inputs(batch)
            got, expected = exported.module()(**inputs).logits, model(**inputs).logits
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
