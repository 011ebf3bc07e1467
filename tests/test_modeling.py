"""METRIS model: shapes, equations, ablation switches, padding, save/load, checkpointing — all on tiny configs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModel, CLIPTextConfig, TimmBackboneConfig

import metris_hf
from metris_hf import MetrisConfig, MetrisForReferringSegmentation
from metris_hf.testing_utils import tiny_metris_config

IMAGE = 64


def make_batch(batch_size=3, length=8, image=IMAGE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, image, image, generator=generator)
    input_ids = torch.randint(10, 40, (batch_size, length), generator=generator)
    input_ids[:, 0] = 2  # [CLS]
    attention_mask = torch.ones(batch_size, length, dtype=torch.long)
    for row in range(batch_size):  # mixed expression lengths
        valid = max(2, length - 2 * row)
        input_ids[row, valid - 1] = 3  # [SEP]
        input_ids[row, valid:] = 0
        attention_mask[row, valid:] = 0
    labels = torch.zeros(batch_size, image, image, dtype=torch.long)
    labels[:, image // 4 : image // 2, image // 8 : image // 2] = 1
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return MetrisForReferringSegmentation(tiny_metris_config(**overrides)).eval()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_output_shapes(batch_size):
    torch.manual_seed(0)
    model = MetrisForReferringSegmentation._from_config(tiny_metris_config(), attn_implementation="eager").eval()
    batch = make_batch(batch_size)
    out = model(**batch, output_attentions=True, output_hidden_states=True)
    n = (IMAGE // 32) ** 2
    assert out.logits.shape == (batch_size, 1, IMAGE // 4, IMAGE // 4)
    assert out.relevance_scores.shape == (batch_size, 8, n)
    assert out.visual_expression.shape == (batch_size, 8, 32)
    assert out.linguistic_expression.shape == (batch_size, 8, 32)
    assert out.guidance_mask.shape == (batch_size, 16)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert [a.shape[-2:] for a in out.decoder_attentions] == [(s * s, 16) for s in (2, 4, 8, 16)]
    assert [h.shape[-1] for h in out.encoder_hidden_states] == [16, 8, 4, 2]
    # attention over padded guidance tokens is exactly zero
    pad = out.guidance_mask == 0
    assert torch.all(out.decoder_attentions[-1].masked_select(pad[:, None, None, :]) == 0)
    # the relevance scores are cosine similarities
    assert out.relevance_scores.abs().max() <= 1 + 1e-5


def test_attention_maps_come_from_eager_attention_only():
    """SDPA computes no weights: with it `output_attentions=True` gives an empty tuple (and the library's warning),
    not a silent switch to eager; the same weights then come from `attn_implementation="eager"`."""
    batch = make_batch(2)
    batch.pop("labels")
    model = build()
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        fused = model(**batch, output_attentions=True)
        model.set_attn_implementation("eager")
        eager = model(**batch, output_attentions=True)
    assert fused.decoder_attentions == ()
    assert len(eager.decoder_attentions) == 4
    torch.testing.assert_close(fused.logits, eager.logits, rtol=1e-4, atol=1e-5)


def test_task_output_carries_every_base_field():
    model = build()
    batch = make_batch(2)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        base = model.metris(
            batch["pixel_values"], batch["input_ids"], batch["attention_mask"], output_hidden_states=True
        )
    assert out.cue_mask is not None and out.last_hidden_state is not None
    for name, value in base.items():
        expected = value if isinstance(value, tuple) else (value,)
        got = out[name] if isinstance(out[name], tuple) else (out[name],)
        for left, right in zip(got, expected, strict=True):
            torch.testing.assert_close(left, right, rtol=0, atol=0, msg=name)


def test_tuple_output_and_no_labels():
    model = build()
    batch = make_batch(2)
    batch.pop("labels")
    out = model(**batch)
    assert out.loss is None
    as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)


@pytest.mark.parametrize("ratio", [0.3, 0.05, 1.0])
def test_curation_keeps_k_pixels_per_token(ratio):
    model = build(curation_ratio=ratio)
    batch = make_batch(3, image=128)  # N = 4 × 4 = 16 pixels
    out = model(**batch)
    k = max(1, int(ratio * 16))
    counts = out.curation_mask.sum(-1)
    real = batch["attention_mask"].bool()
    assert torch.all(counts[real] == k)
    # the curated pixels are the k most relevant ones for each token
    top = out.relevance_scores.topk(k, dim=-1).values[..., -1:]
    assert torch.all(out.relevance_scores.masked_fill(out.curation_mask == 0, 2.0) >= top - 1e-6)


def test_dynamic_mask_is_eq3():
    """Eq. 5 with the mask: F_a is a mean over the curated pixels only, scaled by 1/N_p."""
    model = build()
    vee = model.metris.visual_expression_extractor
    pixels = torch.randn(2, 16, 32)
    words = torch.randn(2, 5, 32)
    cues = torch.ones(2, 5, dtype=torch.bool)
    vee.refinement = torch.nn.ModuleList()
    vee.relation = torch.nn.ModuleList()
    visual, scores, curated = vee(pixels, words, cues)
    k = vee.num_curated(16)
    weights = torch.where(curated, scores, torch.full_like(scores, -torch.inf)).softmax(-1)
    torch.testing.assert_close(visual, weights @ pixels / k)


def test_padding_does_not_change_the_output():
    model = build()
    batch = make_batch(2, length=8)
    short = model(
        pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    pad = torch.zeros(2, 6, dtype=torch.long)
    padded_ids = torch.cat([batch["input_ids"], pad], dim=1)
    padded_ids[:, 8:] = 17  # whatever sits under the padding must not matter
    long = model(
        pixel_values=batch["pixel_values"],
        input_ids=padded_ids,
        attention_mask=torch.cat([batch["attention_mask"], pad], dim=1),
    )
    torch.testing.assert_close(short.logits, long.logits, atol=1e-5, rtol=1e-4)


def test_loss_decreases_on_a_fixed_batch():
    model = build().train()
    batch = make_batch(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # The tiny model's random init differs between the timm/transformers releases we support (first loss 2.02 on
    # today's, 1.70 on the oldest), and so does the curve: the mean of the last three steps was 0.58 and 0.76 of the
    # first loss. Averaging rides over a single noisy step.
    assert sum(losses[-3:]) / 3 < 0.85 * losses[0], losses


def _logits_with_shared_weights(reference, **overrides):
    model = build(**overrides)
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not missing, missing
    return model(**make_batch(2, image=128)).logits


@pytest.mark.parametrize(
    "overrides",
    [
        {"guidance": "pure_le"},
        {"guidance": "enhanced_le"},
        {"guidance": "ve_only"},
        {"guidance": "all_pixels"},
        {"use_curation": False},
        {"use_refinement": False, "equal_size_ablations": False},
        {"use_relation": False, "equal_size_ablations": False},
        {"linguistic_cues": "global"},
        {"linguistic_cues": "local"},
        {"dynamic_mask_normalization": False},
        {"curation_ratio": 0.8},
        {"ignore_articles": True, "article_token_ids": list(range(10, 25))},
    ],
)
def test_every_ablation_runs_and_changes_the_output(overrides):
    reference = build()
    base = reference(**make_batch(2, image=128)).logits
    ablated = _logits_with_shared_weights(reference, **overrides)
    assert ablated.shape == base.shape and torch.isfinite(ablated).all()
    assert not torch.allclose(ablated, base, atol=1e-6), overrides


def test_early_fusion_off_and_contrastive_off():
    model = build(early_fusion=False, contrastive_loss_weight=0.0, mask_loss="bce")
    assert model.metris.vision_encoder.fusions is None
    batch = make_batch(2)
    out = model(**batch)
    upsampled = torch.nn.functional.interpolate(out.logits, size=(IMAGE, IMAGE), mode="bilinear", align_corners=True)
    mask_only = torch.nn.functional.binary_cross_entropy_with_logits(upsampled[:, 0], batch["labels"].float())
    assert set(out.loss_terms) == {"mask"}
    torch.testing.assert_close(out.loss_terms["mask"], mask_only)
    torch.testing.assert_close(out.loss, model.config.mask_loss_weight * mask_only)
    # τ stays a parameter with λ = 0, so raising λ later trains it (train.py freezes it while λ = 0)
    assert "metris.visual_expression_extractor.temperature" in dict(model.named_parameters())


def test_default_loss_is_the_authors():
    """2 × class-weighted 2-class cross-entropy + 0.4 × BCE(S_c[cls] / τ), both upsampled with align_corners."""
    model = build()
    assert (model.config.mask_loss, model.config.mask_loss_weight, model.config.contrastive_loss_weight) == (
        "weighted_ce",
        2.0,
        0.4,
    )
    batch = make_batch(2)
    out = model(**batch)
    labels = batch["labels"].float()
    size = (IMAGE, IMAGE)
    # two classes: the cross-entropy depends on the logit difference only, which `logits` is
    difference = torch.nn.functional.interpolate(out.logits, size=size, mode="bilinear", align_corners=True)[:, 0]
    weights = torch.where(labels > 0, 1.1, 0.9)
    per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(difference, labels, reduction="none")
    mask = (weights * per_pixel).sum() / weights.sum()
    grid = IMAGE // 32
    scores = (out.relevance_scores[:, 0] / out.temperature).reshape(2, 1, grid, grid)
    scores = torch.nn.functional.interpolate(scores, size=size, mode="bilinear", align_corners=True)[:, 0]
    contrastive = torch.nn.functional.binary_cross_entropy_with_logits(scores, labels)
    torch.testing.assert_close(out.loss_terms["mask"], mask)
    torch.testing.assert_close(out.loss_terms["contrastive"], contrastive)
    torch.testing.assert_close(out.loss, 2 * mask + 0.4 * contrastive)


def test_tau_is_stored_as_tau_and_clamped_in_place():
    model = build()
    tau = model.metris.visual_expression_extractor.temperature
    assert tau.shape == (1,) and tau.item() == pytest.approx(0.1)
    with torch.no_grad():
        tau.fill_(5.0)  # as an optimiser step past the bound would
    out = model(**make_batch(2))
    assert tau.item() == pytest.approx(0.5) and out.temperature.item() == pytest.approx(0.5)
    out.loss.backward()
    assert tau.grad is not None and tau.grad.abs().item() > 0
    old = build(temperature_parametrization="log_tau")
    names = dict(old.named_parameters())
    assert "metris.visual_expression_extractor.log_temperature" in names
    assert "metris.visual_expression_extractor.temperature" not in names


def _fusion_gates(model):
    return [fusion.gate for fusion in model.metris.vision_encoder.fusions if fusion.gate is not None]


def _assert_gates_open_and_learning(model):
    gates = _fusion_gates(model)
    assert gates
    for gate in gates:
        for layer in (gate[0], gate[2]):
            assert layer.weight.abs().max() > 0  # two zero layers would never get a gradient
    model.train()
    model(**make_batch(2)).loss.backward()
    for gate in gates:
        assert gate[0].weight.grad.abs().max() > 0 and gate[2].weight.grad.abs().max() > 0


@pytest.mark.parametrize("weight_init", ["authors", "trunc_normal"])
def test_weight_init_options(weight_init):
    model = build(weight_init=weight_init)
    classifier_bias = model.classifier.bias
    conv = model.metris.decoder.fuse[0][0]
    fan_in = conv.weight[0].numel()
    if weight_init == "authors":  # PyTorch's default: kaiming-uniform(a=√5), bound 1/√fan_in; biases too
        assert conv.weight.abs().max() <= 1 / fan_in**0.5 + 1e-6
        assert conv.weight.std().item() == pytest.approx((1 / fan_in**0.5) / 3**0.5, rel=0.1)
        assert classifier_bias.abs().max() > 0
    else:
        assert conv.weight.std().item() == pytest.approx(model.config.initializer_range, rel=0.15)
        assert classifier_bias.abs().max() == 0
    _assert_gates_open_and_learning(model)


def test_gates_are_initialised_on_every_loading_path(tmp_path):
    from safetensors.torch import load_file, save_file

    build().save_pretrained(tmp_path / "full")
    _assert_gates_open_and_learning(AutoModel.from_config(tiny_metris_config()))
    weights = load_file(str(tmp_path / "full" / "model.safetensors"))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tmp_path / "full" / "config.json").read_text())
    save_file({k: v for k, v in weights.items() if ".gate." not in k}, str(partial / "model.safetensors"))
    _assert_gates_open_and_learning(MetrisForReferringSegmentation.from_pretrained(partial))


def full_size_parameters(**overrides) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in MetrisForReferringSegmentation(MetrisConfig(**overrides)).parameters())


@pytest.mark.parametrize(
    "overrides",
    [
        {"use_curation": False},
        {"use_refinement": False},
        {"use_relation": False},
        {"linguistic_cues": "global"},
        {"linguistic_cues": "local"},
    ],
)
def test_table6_ablations_keep_the_full_models_size(overrides):
    """§4.4: the Table 6 ablations got extra attention layers to keep the parameter count of the full model."""
    full = full_size_parameters()
    assert abs(full_size_parameters(**overrides) - full) / full < 0.03


def test_without_equal_size_an_ablation_loses_its_blocks():
    full = full_size_parameters()
    assert full_size_parameters(use_refinement=False, equal_size_ablations=False) < 0.95 * full


def test_weighted_ce_and_no_target_head():
    model = build(mask_loss="weighted_ce", no_target_head=True)
    batch = make_batch(3)
    batch["labels"][1] = 0  # a no-target sample
    out = model(**batch)
    assert out.logits.shape[1] == 1 and out.no_target_logits.shape == (3,)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.no_target_classifier[0].weight.grad.abs().sum() > 0


def test_clip_text_encoder():
    text = CLIPTextConfig(
        vocab_size=256,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
    )
    model = build(text_config=text)
    out = model(**make_batch(2))
    assert out.logits.shape == (2, 1, 16, 16) and torch.isfinite(out.loss)


def test_timm_backbone():
    backbone = TimmBackboneConfig(backbone="swin_tiny_patch4_window7_224", out_indices=(0, 1, 2, 3))
    kwargs = {"img_size": IMAGE, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "window_size": 2}
    model = build(backbone_config=backbone, backbone_kwargs=kwargs)
    out = model(**make_batch(2), output_hidden_states=True)
    assert [h.shape[1] for h in out.encoder_hidden_states] == [16, 32, 64, 128]
    assert out.logits.shape == (2, 1, 16, 16)
    # the timm-specific kwargs survive a round trip through the config
    reloaded = MetrisConfig.from_dict(model.config.to_dict())
    assert reloaded.backbone_kwargs["img_size"] == IMAGE and reloaded.backbone_config.backbone.startswith("swin_tiny")


def test_timm_swin_b_accepts_480():
    """The DESIGN default for timm: Swin-B created for 480² gives 120², 60², 30², 15² maps."""
    config = MetrisConfig(
        backbone_config=TimmBackboneConfig(backbone="swin_base_patch4_window12_384", out_indices=(0, 1, 2, 3)),
        backbone_kwargs={"img_size": 480},
    )
    from metris_hf.modeling_metris import MetrisVisionEncoder

    config.early_fusion = False
    encoder = MetrisVisionEncoder(config).eval()
    with torch.no_grad():
        maps = encoder(torch.randn(1, 3, 480, 480), torch.zeros(1, 2, 768), torch.ones(1, 2, dtype=torch.bool))
    assert [tuple(m.shape[1:]) for m in maps] == [(128, 120, 120), (256, 60, 60), (512, 30, 30), (1024, 15, 15)]


def test_small_preset_is_the_embedded_checkpoints_architecture():
    """A fresh model of the preset has the shipped model's every tensor and shape, and none of its metadata."""
    from metris_hf.presets import PRESETS, preset_config

    config = preset_config("small")
    assert config.architectures is None
    config.check_input_size(128)
    fresh = MetrisForReferringSegmentation(config).state_dict()
    shipped = MetrisForReferringSegmentation.from_pretrained(metris_hf.embedded_checkpoint()).state_dict()
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in shipped.items()}
    assert set(PRESETS) == {"tiny", "small"} and preset_config("tiny", joint_dim=8).joint_dim == 8
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")


def test_default_config_is_the_paper_model():
    config = MetrisConfig()
    assert config.backbone_config.model_type == "swin"
    assert config.backbone_config.embed_dim == 128 and config.backbone_config.depths == [2, 2, 18, 2]
    assert config.backbone_config.window_size == 12
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert config.text_config.model_type == "bert" and config.text_config.hidden_size == 768
    assert (config.curation_ratio, config.guidance, config.contrastive_loss_weight) == (0.3, "full", 0.4)
    assert config.use_curation and config.use_refinement and config.use_relation and config.early_fusion


def test_sub_configs_survive_dict_round_trip():
    config = tiny_metris_config()
    again = MetrisConfig.from_dict(config.to_dict())
    assert again.backbone_config.to_dict() == config.backbone_config.to_dict()
    assert again.text_config.hidden_size == 32
    from_dicts = MetrisConfig(
        backbone_config=config.backbone_config.to_dict(), text_config=config.text_config.to_dict()
    )
    assert type(from_dicts.backbone_config).__name__ == "SwinConfig"


def test_save_and_load_through_auto_classes(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"configuration_metris.py", "modeling_metris.py"} <= files
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "metris"
    assert saved["auto_map"]["AutoModel"].endswith("MetrisForReferringSegmentation")
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MetrisConfig)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MetrisForReferringSegmentation)
    batch = make_batch(2)
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_remote_code_loads_without_the_package(tmp_path):
    """A Hub copy loads with trust_remote_code in a process that never imports metris_hf."""
    model = build()
    model.save_pretrained(tmp_path / "ckpt")
    batch = make_batch(1)
    torch.save({k: v for k, v in batch.items() if k != "labels"}, tmp_path / "batch.pt")
    torch.save(model(**batch).logits, tmp_path / "expected.pt")
    code = (
        "import sys, torch; from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True).eval()\n"
        "assert 'metris_hf' not in sys.modules, 'the package was imported'\n"
        "assert type(m).__module__.startswith('transformers_modules'), type(m).__module__\n"
        f"b = torch.load({str(tmp_path / 'batch.pt')!r}); e = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "torch.testing.assert_close(m(**b).logits, e)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = make_batch(2)

    def grads(checkpointing):
        model = build().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-5, rtol=1e-4, msg=name)


def test_every_parameter_gets_a_gradient():
    """No parameter without a gradient: DDP runs without find_unused_parameters."""
    model = build().train()
    model(**make_batch(2)).loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_bfloat16_forward():
    model = build().to(torch.bfloat16)
    batch = make_batch(2)
    out = model(**batch)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)


def test_package_registers_auto_classes():
    assert AutoConfig.for_model("metris").__class__ is MetrisConfig
    assert metris_hf.MetrisConfig is MetrisConfig


def test_torch_export_of_the_full_model_gives_its_logits():
    """What `ExportTesterMixin` checks in transformers' own suite (its file is not in the source release)."""
    model = build().eval()
    batch = make_batch(2)
    inputs = {key: batch[key] for key in ("pixel_values", "input_ids", "attention_mask")}
    with torch.no_grad():
        expected = model(**inputs).logits
        exported = torch.export.export(model, args=(), kwargs=inputs, strict=False)
        got = exported.module()(**inputs).logits
    torch.testing.assert_close(got, expected)
