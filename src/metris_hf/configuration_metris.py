"""METRIS configuration: every ablation of the paper is a field, so experiments are configs."""

# No `from __future__ import annotations` here: `@strict` checks every field's type (at construction and on
# every assignment) from the annotations, and it can only read real types, not strings.
import difflib
import json
import math
from typing import Literal

from huggingface_hub.dataclasses import as_validated_field, strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.utils import logging
from transformers.utils.type_validators import interval, probability

logger = logging.get_logger(__name__)

Guidance = Literal["full", "pure_le", "enhanced_le", "ve_only", "all_pixels"]
LinguisticCues = Literal["all", "global", "local"]
MaskLoss = Literal["bce", "weighted_ce"]
TemperatureParametrization = Literal["tau", "log_tau"]
WeightInit = Literal["authors", "trunc_normal"]

# Upper bounds far above any METRIS (the paper's is 768 wide with 2 enhancer rounds and 4 + 4 VEE blocks), so that a
# typo such as `hidden_size=10**6` is refused in one line instead of allocating terabytes.
MAX_WIDTH = 8192
MAX_BLOCKS = 64
MAX_LOSS_WEIGHT = 1000.0
# τ divides cosine scores in [-1, 1]: at 1e-4 they stay within float16's range (65504), below it the loss overflows.
MIN_TEMPERATURE = 1e-4

# Keys that `PreTrainedConfig` takes besides its fields (what `from_pretrained` / `from_dict` / copies pass on).
_PRETRAINED_KWARGS = {
    "model_type",
    "auto_map",
    "name_or_path",
    "_name_or_path",
    "_commit_hash",
    "output_attentions",
    "torch_dtype",
    "attn_implementation",
    "experts_implementation",
    "per_layer_config",
    "num_labels",
    "use_return_dict",
}

# Swin-B shaped like `microsoft/swin-base-patch4-window12-384-in22k`, all four stages out.
SWIN_B_22K_384 = {
    "image_size": 384,
    "patch_size": 4,
    "window_size": 12,
    "embed_dim": 128,
    "depths": [2, 2, 18, 2],
    "num_heads": [4, 8, 16, 32],
    "drop_path_rate": 0.2,  # the authors' Swin (0.3 in Swin's own recipe)
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}


@as_validated_field
def class_weights(value: list | tuple) -> None:
    """Two finite, non-negative weights (background, object), not both zero."""
    if len(value) != 2 or not all(math.isfinite(w) and w >= 0 for w in value) or not sum(value) > 0:
        raise ValueError(f"must hold 2 finite weights >= 0 (background, object), not both 0, got {list(value)}")


@strict
class MetrisConfig(PreTrainedConfig):
    r"""
    Configuration of [`MetrisForReferringSegmentation`].

    `MetrisConfig()` describes the paper's full-size model (Swin-B + BERT-base, 480×480) with random weights;
    nothing is downloaded. Pretrained encoders come in through `scripts/init_checkpoint.py`.

    Encoders:
        backbone_config: vision backbone built with `transformers.backbone_utils.load_backbone` (a `SwinConfig`
            or a `TimmBackboneConfig`); a dict with `model_type` or a config object.
        backbone_kwargs: extra keyword arguments for `AutoBackbone.from_config`; timm's Swin needs
            `{"img_size": 480}` to accept 480×480 inputs and timm does not store it in its own config.
        text_config: text encoder (`BertConfig` by default; a `CLIPTextConfig` works too, appendix B).

    Architecture facts from the authors' released code:
        early_fusion: LAVT's pixel-word attention after every backbone stage, tanh-gated residual into
            the visual stream after stages 1-3. False reads the paper literally (plain backbone).
        hidden_size / num_attention_heads: width and heads of the enhancer, VEE and decoder (768 / 12).
        enhancer_rounds: rounds of (words attend to F4, then F4 attends to words).
        joint_dim: joint embedding space of Eq. 1 (256, L2-normalised).
        refinement_layers / relation_layers: blocks in VEE step 2 (masked cross-attention) and step 3
            (self-attention).
        decoder_mlp_ratio: MLP width of the decoder's cross-attention blocks relative to `hidden_size` (4, as every
            block of the authors'; 2 is a lighter option).
        mix_ffn: a 3×3 depthwise convolution between the two linears of the pixel-side MLPs (decoder, the
            enhancer's pixel blocks, stage 4), as the authors' `Mlp` + `DWConv`.
        attention_bias: biases on the query/key/value projections of METRIS's attention (the authors' have none).
        attention_dropout / dropout: dropout on attention weights / on MLP and attention outputs (0, as theirs).
        drop_path_rate: stochastic depth of every METRIS attention block in training (0.1, as theirs; the Swin
            backbone has its own, 0.2 in `backbone_config`).
        layer_norm_eps: of every METRIS LayerNorm (1e-5, PyTorch's default, which the authors' blocks use).
        temperature_init / temperature_min / temperature_max: learnable τ of Eq. 4 and its clamp.
        temperature_parametrization: "tau" (the authors': τ itself is the parameter `temperature`, clamped in
            place to [min, max] at every forward and weight-decayed like the decoder) or "log_tau" (the parameter
            `log_temperature`, τ = exp(·) clamped; checkpoints of metris-hf 0.1 need this).
        weight_init: "authors" (the decoder's convolutions, the pixel-word attention and the classifier keep
            PyTorch's default init, as the authors' code leaves them; every other linear is truncated normal with
            `initializer_range`) or "trunc_normal" (every linear and convolution truncated normal, zero biases:
            metris-hf 0.1's init).

    Ablations (paper table in brackets):
        guidance: guidance set of the decoder [Table 5]: "full" (Q̂_L + Q̂_V), "pure_le" (Q_L),
            "enhanced_le" (Q̂_L), "ve_only" (Q̂_V), "all_pixels" (Q̂_L + every F4 pixel).
        use_curation / use_refinement / use_relation: VEE steps 1, 2, 3 [Table 6a].
        linguistic_cues: tokens that curate pixels: "all", "global" ([CLS] only), "local" (words only) [Table 6b].
            Eq. 4 supervises the [CLS] row of S_c under every choice: with "local" that row curates nothing,
            but the loss still aligns the joint space (φ^V, φ^L) that the word rows share, as the paper defines
            Eq. 4 on the global token whatever the cues.
        curation_ratio: r of Eq. 2, share of the F4 pixels curated per cue [Fig. 6].
        dynamic_mask_normalization: the dynamic mask M inside the softmax of Eq. 5 [Table 8b].
        contrastive_loss_weight: weight λ of Eq. 4; 0 turns it off [Table 8a] (τ stays a parameter, so the weight
            can be raised later; `scripts/train.py` freezes τ while the weight is 0).
        equal_size_ablations: without step 2 (or 3) the VEE gets that step's blocks in the other step, so the
            model keeps the full model's parameter count, as §4.4 says of Table 6 ("we added more attention
            layers into the ablation models"). False removes them outright.
        ignore_articles: articles (`article_token_ids`) are not cues [Table 9].
        mask_loss: "weighted_ce" (the authors' code: 2-class cross-entropy, class weights `ce_class_weights`, on
            logits upsampled bilinearly with align_corners to the label size) or "bce" (one logit).
        mask_loss_weight: weight of the mask loss (2, as the released code's `2 * criterion(...)`; the paper
            gives no weights).

    gRefCOCO:
        no_target_head: a classifier that says "nothing is referred" (paper appendix A, after ReLA), trained
            with BCE against "the label mask is empty", weighted by `no_target_loss_weight`.
    """

    model_type = "metris"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="swin", init_kwargs=SWIN_B_22K_384),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    backbone_kwargs: dict | None = None
    text_config: dict | PreTrainedConfig | None = None

    early_fusion: bool = True
    hidden_size: int = interval(min=1, max=MAX_WIDTH)(default=768)
    num_attention_heads: int = interval(min=1, max=MAX_WIDTH)(default=12)
    mlp_ratio: float | int = interval(min=0, max=16, exclude_min=True)(default=4.0)
    decoder_mlp_ratio: float | int = interval(min=0, max=16, exclude_min=True)(default=4.0)
    mix_ffn: bool = True
    attention_bias: bool = False
    attention_dropout: float | int = probability(default=0.0)
    drop_path_rate: float | int = interval(min=0, max=1, exclude_max=True)(default=0.1)
    enhancer_rounds: int = interval(min=0, max=MAX_BLOCKS)(default=2)
    joint_dim: int = interval(min=1, max=MAX_WIDTH)(default=256)
    refinement_layers: int = interval(min=0, max=MAX_BLOCKS)(default=4)
    relation_layers: int = interval(min=0, max=MAX_BLOCKS)(default=4)
    dropout: float | int = probability(default=0.0)
    layer_norm_eps: float | int = interval(min=0, max=1, exclude_min=True)(default=1e-5)
    initializer_range: float | int = interval(min=0, max=1)(default=0.02)

    guidance: Guidance = "full"
    use_curation: bool = True
    use_refinement: bool = True
    use_relation: bool = True
    linguistic_cues: LinguisticCues = "all"
    curation_ratio: float | int = interval(min=0, max=1, exclude_min=True)(default=0.3)
    dynamic_mask_normalization: bool = True
    ignore_articles: bool = False
    equal_size_ablations: bool = True
    article_token_ids: list[int] | tuple[int, ...] = (1037, 2019, 1996)  # "a", "an", "the" in bert-base-uncased

    temperature_init: float | int = interval(min=MIN_TEMPERATURE, max=1)(default=0.1)
    temperature_min: float | int = interval(min=MIN_TEMPERATURE, max=1)(default=0.001)
    temperature_max: float | int = interval(min=MIN_TEMPERATURE, max=1)(default=0.5)
    contrastive_loss_weight: float | int = interval(min=0, max=MAX_LOSS_WEIGHT)(default=0.4)
    mask_loss: MaskLoss = "weighted_ce"
    temperature_parametrization: TemperatureParametrization = "tau"
    weight_init: WeightInit = "authors"
    mask_loss_weight: float | int = interval(min=0, max=MAX_LOSS_WEIGHT)(default=2.0)
    ce_class_weights: list[float | int] | tuple[float | int, ...] = class_weights(default=(0.9, 1.1))

    no_target_head: bool = False
    no_target_loss_weight: float | int = interval(min=0, max=MAX_LOSS_WEIGHT)(default=1.0)

    def __post_init__(self, **kwargs):
        unknown = sorted(set(kwargs) - _PRETRAINED_KWARGS)
        if unknown:  # a typo such as `guidence=` would otherwise be stored and never read
            known = list(self.__dataclass_fields__)
            hints = [
                f"{key!r}"
                + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, known, 1)) else "")
                for key in unknown
            ]
            logger.warning(
                f"MetrisConfig: unknown key(s) {', '.join(hints)}: not MetrisConfig fields, kept but unused"
            )
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Fields that bound each other (each field's own range is checked by its validator, on every assignment).
        Run by `@strict` after construction and by `save_pretrained`; `MetrisPreTrainedModel` runs it before
        building, so a config changed field by field is checked whole once, where it is used."""
        super().validate_architecture()
        if not self.temperature_min <= self.temperature_init <= self.temperature_max:
            raise ValueError(
                "`temperature_init` must lie in [`temperature_min`, `temperature_max`], "
                f"got {self.temperature_init} in [{self.temperature_min}, {self.temperature_max}]"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        out = getattr(self.backbone_config, "out_features", None) or getattr(self.backbone_config, "out_indices", None)
        if out is not None and len(out) != 4:
            raise ValueError(f"`backbone_config` must return 4 feature maps (strides 4-32), it returns {list(out)}")

    def check_input_size(self, height: int, width: int | None = None) -> None:
        """A ValueError when the backbone cannot take `height` × `width` inputs, said before any tensor is built.

        Why: Swin with absolute position embeddings (`use_absolute_embeddings`) has a table for exactly
        `backbone_config.image_size`, and timm's Swin is built for `backbone_kwargs["img_size"]`; another size fails
        deep inside the backbone with a bare tensor-size mismatch. Relative-position Swins pad, so any size works.
        """
        width = height if width is None else width
        if getattr(self.backbone_config, "use_absolute_embeddings", False):
            fixed = self.backbone_config.image_size
            source = "backbone_config.image_size (Swin with absolute position embeddings)"
        elif (fixed := (self.backbone_kwargs or {}).get("img_size")) is not None:
            source = 'backbone_kwargs["img_size"] (timm Swin)'
        else:
            return
        fixed = tuple(fixed) if isinstance(fixed, (list, tuple)) else (fixed, fixed)
        if (height, width) != fixed:
            raise ValueError(
                f"this backbone takes only {fixed[0]}×{fixed[1]} inputs ({source}), got {height}×{width}: "
                f"use --image_size {fixed[0]}, or a config whose backbone is built for {height}×{width}"
            )

    @property
    def num_refinement_blocks(self) -> int:
        """Blocks of VEE step 2 (Eq. 6), with step 3's when step 3 is off and `equal_size_ablations` holds."""
        if not self.use_refinement:
            return 0
        extra = self.relation_layers if self.equal_size_ablations and not self.use_relation else 0
        return self.refinement_layers + extra

    @property
    def num_relation_blocks(self) -> int:
        """Blocks of VEE step 3 (Eq. 7), with step 2's when step 2 is off and `equal_size_ablations` holds."""
        if not self.use_relation:
            return 0
        extra = self.refinement_layers if self.equal_size_ablations and not self.use_refinement else 0
        return self.relation_layers + extra


def parse_config_overrides(text: str | None) -> dict:
    """`"a=1,b=x"` → `{"a": 1, "b": "x"}` for command lines; values are read as JSON where they parse.

    A name that is not a `MetrisConfig` field raises `ValueError` naming it, before any model is built.
    """
    if not text:
        return {}
    known = set(MetrisConfig.__dataclass_fields__)
    overrides: dict = {}
    for item in text.split(","):
        if "=" not in item:
            raise ValueError(f"config override {item!r} is not of the form field=value")
        key, value = (part.strip() for part in item.split("=", 1))
        if key not in known:
            raise ValueError(f"config override: MetrisConfig has no field {key!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = {"True": True, "False": False}.get(value, value)
    return overrides


__all__ = ["MetrisConfig", "parse_config_overrides"]
