"""torch.compile on the whole model: no graph break, and the compiled model computes what eager does.

Compiling with inductor costs minutes on two cores (about 100 s for a tiny model's inference and 250 s for its
training step), so the default suite compiles with `aot_eager`: the same Dynamo capture (`fullgraph=True`
fails on any graph break) and the same AOTAutograd forward and backward graphs inductor generates code for,
run by eager kernels. The inductor equality tests are marked slow.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.testing import CompileCounterWithBackend
from transformers import CLIPTextConfig, TimmBackboneConfig

from metris_hf import MetrisForReferringSegmentation
from metris_hf.testing_utils import tiny_metris_config

# Measured on torch 2.9 (the oldest supported): its dynamo skips inlining the vision encoder's forward (10–14
# graphs where 2.14 traces one), so "no graph break" is a claim about torch >= 2.14 only.
pytestmark = pytest.mark.skipif(
    tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) < (2, 14),
    reason="torch < 2.14 breaks the graph in MetrisVisionEncoder.forward (skipped inlining)",
)

ROOT = Path(__file__).resolve().parents[1]
IMAGE = 64


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: no cached graph or recompilation limit carried over from another test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_batch(batch_size: int = 2, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images, expressions of different lengths (padding masked) and target masks."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(10, 40, (batch_size, length), generator=generator)
    input_ids[:, 0] = 2  # [CLS]
    attention_mask = torch.ones(batch_size, length, dtype=torch.long)
    for row in range(batch_size):
        valid = max(2, length - 3 * row)
        input_ids[row, valid - 1] = 3  # [SEP]
        input_ids[row, valid:] = 0
        attention_mask[row, valid:] = 0
    labels = torch.zeros(batch_size, IMAGE, IMAGE, dtype=torch.long)
    labels[:, IMAGE // 4 : IMAGE // 2, IMAGE // 8 : IMAGE // 2] = 1
    return {
        "pixel_values": torch.randn(batch_size, 3, IMAGE, IMAGE, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
    }


def build(**overrides) -> MetrisForReferringSegmentation:
    torch.manual_seed(0)
    return MetrisForReferringSegmentation(tiny_metris_config(**overrides))


def check_inference(backend: str) -> None:
    model = build().eval()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    batch = make_batch()
    with torch.no_grad():
        eager, ours = model(**batch), compiled(**batch)
    for name in ("logits", "relevance_scores", "visual_expression", "loss"):
        torch.testing.assert_close(ours[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)
    assert torch.equal(ours.curation_mask, eager.curation_mask)


def check_training_step(backend: str, dropout: float) -> None:
    """Loss, every parameter's gradient and BatchNorm's running statistics, with drop path (and dropout) on."""
    model = build(dropout=dropout, drop_path_rate=0.1).train()
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    batch = make_batch()
    torch.manual_seed(1)
    eager_loss = reference(**batch).loss
    eager_loss.backward()
    torch.manual_seed(1)  # the same dropout masks: eager's random stream (inductor: `fallback_random`)
    compiled_loss = compiled(**batch).loss
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)

    grads = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert len(grads) > 100  # the whole model trains, encoders included
    # Some gradients are rounding noise by construction (a bias before an InstanceNorm receives ~1e-6 where others
    # receive ~100): compare each at the scale of the whole model's gradients.
    scale = max(g.abs().max().item() for g in grads.values())
    for name, param in model.named_parameters():
        if name not in grads:
            assert param.grad is None, name
            continue
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6 * scale, msg=name)
    for (name, ours), (_, theirs) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_inference_equals_eager():
    check_inference("aot_eager")


def test_compiled_training_step_equals_eager():
    # METRIS's own dropout stays at its default 0 here (BERT's 0.1 and the drop path are on): under aot_eager, and
    # only there, eager's dropout backward returns a gradient whose strides differ from those the traced graph
    # recorded, and a `view` in the backward graph fails (torch 2.14). Inductor computes those strides itself.
    check_training_step("aot_eager", dropout=0.0)


@pytest.mark.slow
def test_inductor_inference_equals_eager():
    check_inference("inductor")


@pytest.mark.slow
def test_inductor_training_step_equals_eager():
    with torch._inductor.config.patch(fallback_random=True):  # dropout draws as eager does
        check_training_step("inductor", dropout=0.1)


def test_new_batch_and_expression_sizes_reuse_one_dynamic_graph():
    # Batch and expression length are marked dynamic (what a server with varying batches does). Sizes 0 and 1 are
    # always specialised by torch, so they start at 2. `dynamic=True` would make the image sides symbolic too: the
    # tiny model then takes minutes to trace (330 s measured on 2 cores) and still recompiles for a batch of one.
    model = build().eval()
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch.no_grad():
        for batch_size, length in ((2, 8), (3, 6), (4, 11)):
            batch = make_batch(batch_size, length)
            for name in batch:
                torch._dynamo.mark_dynamic(batch[name], 0)
            torch._dynamo.mark_dynamic(batch["input_ids"], 1)
            torch._dynamo.mark_dynamic(batch["attention_mask"], 1)
            torch.testing.assert_close(compiled(**batch).logits, model(**batch).logits, rtol=1e-4, atol=1e-5)
    assert counter.frame_count == 1


CLIP_TEXT = CLIPTextConfig(
    vocab_size=256,
    hidden_size=24,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=32,
)


@pytest.mark.parametrize(
    ("overrides", "checkpointing", "mode"),
    [
        ({}, False, "train"),
        ({}, False, "eval with attentions"),
        ({}, True, "train"),
        ({"guidance": "all_pixels", "use_curation": False, "no_target_head": True}, False, "train"),
        ({"guidance": "pure_le", "early_fusion": False, "mask_loss": "weighted_ce"}, False, "train"),
        ({"text_config": CLIP_TEXT}, False, "train"),
    ],
    ids=["train", "eval-attentions", "checkpointing", "ablations", "pure-le", "clip-text"],
)
def test_no_graph_break(overrides, checkpointing, mode):
    """`torch._dynamo.explain` finds one graph: the encoders, fusion, VEE, decoder and loss trace whole."""
    model = build(**overrides).train(mode == "train")
    if mode != "train":  # attention weights come from the eager implementation only
        model.set_attn_implementation("eager")
    if checkpointing:
        model.activation_checkpointing_enable()
    extra = {"output_attentions": True, "output_hidden_states": True} if mode != "train" else {}
    explanation = torch._dynamo.explain(model)(**make_batch(), **extra)
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_no_graph_break_with_a_timm_backbone():
    pytest.importorskip("timm")
    backbone = TimmBackboneConfig(backbone="swin_tiny_patch4_window7_224", out_indices=(0, 1, 2, 3))
    kwargs = {"img_size": IMAGE, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "window_size": 2}
    model = build(backbone_config=backbone, backbone_kwargs=kwargs).train()
    explanation = torch._dynamo.explain(model)(**make_batch())
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]


@pytest.mark.slow
@pytest.mark.usefixtures("datasets_cache")
def test_train_script_with_torch_compile_trains_as_eager(tmp_path):
    """`train.py --torch_compile` hands the model to torch.compile (its traced graph is logged) and trains it to
    the eager run's losses and weights."""
    common = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        *("--dataset", "synthetic", "--synthetic_size", "16", "4", "4", "--config_name", "tiny"),
        *("--image_size", "64", "--train_batch_size", "4", "--learning_rate", "1e-3", "--seed", "7"),
        *("--max_train_steps", "2", "--eval_every", "0"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_LOGS"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    runs = {}
    # an empty TORCH_LOGS makes `import torch` fail (torch 2.14): the eager run gets none at all
    for name, extra, logs in (
        ("eager", [], {}),
        ("compiled", ["--torch_compile", "aot_eager"], {"TORCH_LOGS": "graph_code"}),
    ):
        result = subprocess.run(
            [*common, "--output_dir", str(tmp_path / name), *extra],
            env={**env, **logs},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        runs[name] = result.stderr
    assert "TRACED GRAPH" in runs["compiled"] and "TRACED GRAPH" not in runs["eager"]
    losses = {name: re.findall(r"loss=([0-9.]+)", log)[-1] for name, log in runs.items()}
    assert losses["compiled"] == losses["eager"]  # the second step's loss: the first update matched
    eager, compiled = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()
    # AdamW's first steps move each weight by about ±lr whatever the gradient's size (1e-3, then 5.4e-4), so a
    # gradient that is rounding noise by construction (the fusion's key, value and output biases, before a softmax
    # or an InstanceNorm: 2.8e-3 apart, measured) may move its weight the other way in one run: at most twice that.
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=0, atol=4e-3, msg=name)
