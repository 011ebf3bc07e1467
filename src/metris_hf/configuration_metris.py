"""METRIS configuration: every ablation of the paper is a field, so experiments are configs."""

# No `from __future__ import annotations` here: `@strict` checks every field's type (at construction and on
# every assignment) from the annotations, and it can only read real types, not strings.
import difflib
import json
import math
import os
import types
import typing
from typing import Any

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.utils import logging

from .folders import check_local_path

logger = logging.get_logger(__name__)

GUIDANCE_MODES = ("full", "pure_le", "enhanced_le", "ve_only", "all_pixels")
LINGUISTIC_CUES = ("all", "global", "local")
MASK_LOSSES = ("bce", "weighted_ce")
TEMPERATURE_PARAMETRIZATIONS = ("tau", "log_tau")
WEIGHT_INITS = ("authors", "trunc_normal")

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


class MetrisConfigTypeError(StrictDataclassFieldValidationError, TypeError):
    """A `MetrisConfig` field given a value of the wrong type.

    A `TypeError`, Python's exception for a wrong type, so `except TypeError` catches it; still huggingface_hub's
    `StrictDataclassFieldValidationError` (what `@strict` raises for transformers' own configs) for code that
    catches that. `field` names the field."""

    def __init__(self, message: str, field: str | None = None):
        Exception.__init__(self, message)  # not the parent's (field, cause) signature: our message is one line
        self.field = field


class MetrisConfigValueError(StrictDataclassClassValidationError, ValueError):
    """`MetrisConfig.validate()` (run by `save_pretrained`) found fields that contradict each other.

    A `ValueError`, like every bad config value, and still huggingface_hub's `StrictDataclassClassValidationError`."""

    def __init__(self, message: str):
        Exception.__init__(self, message)


def _type_text(annotation: Any) -> str:
    """`float | int`, `list[int] | tuple[int, ...]`, `bool`: a field's annotation as a reader writes it."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(_type_text(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if typing.get_origin(annotation) is not None:
        return repr(annotation)
    return getattr(annotation, "__name__", repr(annotation))


def _standard_exceptions(cls: type) -> type:
    """Makes `@strict`'s exceptions also the standard ones: a wrong type a `MetrisConfigTypeError` (a TypeError), a
    failed `validate()` a `MetrisConfigValueError` (a ValueError). Applied on top of `@strict`, whose own wrappers
    raise exceptions that derive from `Exception` only."""
    strict_setattr, strict_validate = cls.__setattr__, cls.validate

    def __setattr__(self: Any, name: str, value: Any) -> None:
        try:
            strict_setattr(self, name, value)
        except StrictDataclassFieldValidationError as error:
            if isinstance(error, TypeError) or not isinstance(error.__cause__, TypeError):
                raise
            field = self.__dataclass_fields__.get(name)
            expected = _type_text(field.type) if field is not None else "another type"
            raise MetrisConfigTypeError(
                f"`{name}` must be of type {expected}, got {type(value).__name__} {value!r:.80}", name
            ) from error.__cause__

    def validate(self: Any) -> None:
        try:
            strict_validate(self)
        except StrictDataclassClassValidationError as error:
            if isinstance(error, ValueError) or error.__cause__ is None:
                raise
            raise MetrisConfigValueError(str(error.__cause__)) from error.__cause__

    validate.__is_defined_by_strict_decorator__ = True  # lets a subclass be decorated with `@strict` again
    cls.__setattr__, cls.validate = __setattr__, validate
    return cls


@_standard_exceptions
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

    Architecture facts from the authors' released code (DESIGN.md):
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
    hidden_size: int = 768
    num_attention_heads: int = 12
    mlp_ratio: float | int = 4.0
    decoder_mlp_ratio: float | int = 4.0
    mix_ffn: bool = True
    attention_bias: bool = False
    attention_dropout: float | int = 0.0
    drop_path_rate: float | int = 0.1
    enhancer_rounds: int = 2
    joint_dim: int = 256
    refinement_layers: int = 4
    relation_layers: int = 4
    dropout: float | int = 0.0
    layer_norm_eps: float | int = 1e-5
    initializer_range: float | int = 0.02

    guidance: str = "full"
    use_curation: bool = True
    use_refinement: bool = True
    use_relation: bool = True
    linguistic_cues: str = "all"
    curation_ratio: float | int = 0.3
    dynamic_mask_normalization: bool = True
    ignore_articles: bool = False
    equal_size_ablations: bool = True
    article_token_ids: list[int] | tuple[int, ...] = (1037, 2019, 1996)  # "a", "an", "the" in bert-base-uncased

    temperature_init: float | int = 0.1
    temperature_min: float | int = 0.001
    temperature_max: float | int = 0.5
    contrastive_loss_weight: float | int = 0.4
    mask_loss: str = "weighted_ce"
    temperature_parametrization: str = "tau"
    weight_init: str = "authors"
    mask_loss_weight: float | int = 2.0
    ce_class_weights: list[float] | tuple[float, ...] = (0.9, 1.1)

    no_target_head: bool = False
    no_target_loss_weight: float | int = 1.0

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
        # Checked here as well as in `validate_architecture` so a bad value raises a plain `ValueError`
        # naming the field (strict's class validators wrap it in their own exception type).
        self._check_metris_fields()

    def __setattr__(self, name: str, value: Any) -> None:
        """Type-checked by `@strict` (a wrong type raises `MetrisConfigTypeError`, a TypeError); a METRIS
        field assigned after construction is value-checked too, so `config.guidance = "bogus"` fails here rather
        than running a model silently. Fields that bound each other (the temperatures, `hidden_size` /
        `num_attention_heads`) are checked together, not here, so they can be changed one after the other: by
        `validate()` / `save_pretrained`, when a model is built, and at the top of every model forward."""
        # `_name_or_path` appears late in `PreTrainedConfig.__post_init__`: before it, fields are being filled in
        # by the constructor, and `__post_init__` checks them all at its end
        if name in _SINGLE_FIELD_CHECKS and "_name_or_path" in self.__dict__:
            _SINGLE_FIELD_CHECKS[name](name, value)
        super().__setattr__(name, value)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """As `PreTrainedConfig.from_pretrained`, but a missing local path is named so (see `check_local_path`)."""
        check_local_path(pretrained_model_name_or_path, f"{cls.__name__}.from_pretrained")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        self._check_metris_fields()

    def _check_metris_fields(self) -> None:
        for field, check in _SINGLE_FIELD_CHECKS.items():
            check(field, getattr(self, field))
        self._check_cross_fields()
        self._check_backbone_outputs()

    def _check_cross_fields(self) -> None:
        """The fields that bound each other. Every model forward runs this, so it reads the fields from `__dict__`
        in one go (`PreTrainedConfig.__getattribute__` costs microseconds per attribute); the backbone's outputs
        are checked in `_check_metris_fields`, since a built backbone keeps its own."""
        fields = self.__dict__
        t_min, t_init, t_max = fields["temperature_min"], fields["temperature_init"], fields["temperature_max"]
        if not 0 < t_min <= t_init <= t_max:
            raise ValueError(
                "`temperature_init` must lie in [`temperature_min`, `temperature_max`] with `temperature_min` > 0, "
                f"got {t_init} in [{t_min}, {t_max}]"
            )
        if fields["hidden_size"] % fields["num_attention_heads"]:
            raise ValueError(
                f"`hidden_size` ({fields['hidden_size']}) must be divisible by `num_attention_heads` "
                f"({fields['num_attention_heads']})"
            )
        if len(fields["ce_class_weights"]) != 2:
            raise ValueError(
                f"`ce_class_weights` must hold 2 weights (background, object), got {fields['ce_class_weights']}"
            )

    def _check_backbone_outputs(self) -> None:
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
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"image {name} must be a positive integer, got {value!r}")
        fixed, source = None, None
        if getattr(self.backbone_config, "use_absolute_embeddings", False):
            fixed, source = (
                self.backbone_config.image_size,
                "backbone_config.image_size (Swin with absolute position embeddings)",
            )
        elif (self.backbone_kwargs or {}).get("img_size") is not None:
            fixed, source = self.backbone_kwargs["img_size"], 'backbone_kwargs["img_size"] (timm Swin)'
        if fixed is not None:
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


def _one_of(allowed: tuple[str, ...]):
    def check(field: str, value: Any) -> None:
        if value not in allowed:
            raise ValueError(f"`{field}` must be one of {allowed}, got {value!r}")

    return check


def _number(low: float, high: float = math.inf, low_open: bool = False):
    """A finite real number (not a bool) in [low, high], or (low, high] with `low_open`."""

    def check(field: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"`{field}` must be a finite number, got {value!r}")
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise ValueError(f"`{field}` must be in {bracket}{low}, {high}], got {value}")

    return check


def _whole(low: int):
    def check(field: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{field}` must be an integer >= {low}, got {value!r}")

    return check


# One check per field that can be judged on its own (run at construction and on every later assignment).
_SINGLE_FIELD_CHECKS = {
    "guidance": _one_of(GUIDANCE_MODES),
    "linguistic_cues": _one_of(LINGUISTIC_CUES),
    "mask_loss": _one_of(MASK_LOSSES),
    "temperature_parametrization": _one_of(TEMPERATURE_PARAMETRIZATIONS),
    "weight_init": _one_of(WEIGHT_INITS),
    "curation_ratio": _number(0, 1, low_open=True),
    **{
        name: _number(0)
        for name in (
            "contrastive_loss_weight",
            "no_target_loss_weight",
            "mask_loss_weight",
            "dropout",
            "attention_dropout",
            "drop_path_rate",
        )
    },
    **{
        name: _number(0, low_open=True)
        for name in (
            "mlp_ratio",
            "decoder_mlp_ratio",
            "layer_norm_eps",
            "temperature_min",
            "temperature_init",
            "temperature_max",
        )
    },
    **{name: _whole(1) for name in ("hidden_size", "num_attention_heads", "joint_dim")},
    **{name: _whole(0) for name in ("enhancer_rounds", "refinement_layers", "relation_layers")},
}


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


__all__ = [
    "MetrisConfig",
    "MetrisConfigTypeError",
    "MetrisConfigValueError",
    "parse_config_overrides",
    "GUIDANCE_MODES",
    "LINGUISTIC_CUES",
    "MASK_LOSSES",
    "TEMPERATURE_PARAMETRIZATIONS",
    "WEIGHT_INITS",
]
