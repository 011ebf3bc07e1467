"""METRIS: multi-expression guidance for Transformer-based referring image segmentation.

Reads top-down from small blocks to the task model:
attention and MLPs → the attention block shared by every stage → pixel-word fusion in the backbone →
vision encoder → language enhancer → visual expression extractor (paper §3.2, Eq. 1-7) → decoder (§3.3)
→ `MetrisPreTrainedModel` → `MetrisModel` (everything up to the decoder's last feature map) →
`MetrisLoss` → `MetrisForReferringSegmentation` (the mask head and the loss).

Where the paper is silent the authors' released code decides (a LAVT fork); each such fact is named where it is
used, and `scripts/convert_authors_checkpoint.py` proves the match: their weights, converted, give our logits.

Shapes: B batch, L expression tokens, N = H4·W4 pixels of the stride-32 map, D = `config.hidden_size`.
Boolean masks use True = "may be attended / is a real token"; attention takes them as additive biases.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import load_backbone
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.siglip.modeling_siglip import eager_attention_forward  # softmax(q·kᵀ·scale + bias)·v
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring, can_return_tuple

from .configuration_metris import MetrisConfig

# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


_MODEL_OUTPUT_FIELDS = r"""
    last_hidden_state (`torch.FloatTensor` of shape `(B, D, H/4, W/4)`):
        The decoder's feature map at stride 4, after its last attention block: what the mask head projects.
    relevance_scores (`torch.FloatTensor` of shape `(B, L, N)`):
        S_c of Eq. 2: cosine similarity between each linguistic token and each pixel of F4 (N = H/32·W/32).
    curation_mask (`torch.LongTensor` of shape `(B, L, N)`):
        E of Eq. 2 as a mask: the pixels curated for each linguistic cue (1 = curated; M of Eq. 3 is 0 there).
    temperature (`torch.FloatTensor` of shape `()`):
        τ of Eq. 4 after clamping.
    visual_expression (`torch.FloatTensor` of shape `(B, L, D)`):
        Q̂_V of Eq. 7, one visual token per linguistic token (rows of non-cue tokens are not guidance).
    linguistic_expression (`torch.FloatTensor` of shape `(B, L, D)`):
        Q̂_L, the linguistic tokens after the language enhancer (Q_L for `guidance="pure_le"`).
    cue_mask (`torch.LongTensor` of shape `(B, L)`, 1 = cue):
        Which tokens are linguistic cues (curate pixels, give a visual token) under `linguistic_cues`.
    guidance_mask (`torch.LongTensor` of shape `(B, G)`, 1 = attended):
        Which of the G guidance tokens the decoder attends to, in the order [linguistic, visual] (or as the
        `guidance` mode lays them out).
    encoder_hidden_states (`tuple(torch.FloatTensor)`, with `output_hidden_states=True`):
        F1..F4 after early fusion and the stage norms, `(B, C_i, H_i, W_i)`.
    decoder_hidden_states (`tuple(torch.FloatTensor)`, with `output_hidden_states=True`):
        The decoder's feature map after each stage, from stride 32 to stride 4, `(B, D, H_i, W_i)`.
    decoder_attentions (`tuple(torch.FloatTensor)`, with `output_attentions=True` and `attn_implementation="eager"`):
        Per decoder stage (stride 32 to 4), attention of every pixel over the guidance set,
        `(B, heads, H_i·W_i, G)`: the maps of the paper's Fig. 7b / 15. Fused kernels (SDPA) compute no weights:
        then the tuple is empty.
"""


@auto_docstring(
    custom_intro="Everything `MetrisModel` computes up to the decoder's stride-4 map.",
    custom_args=_MODEL_OUTPUT_FIELDS,
)
@dataclass
class MetrisModelOutput(ModelOutput):
    last_hidden_state: torch.FloatTensor | None = None
    relevance_scores: torch.FloatTensor | None = None
    curation_mask: torch.LongTensor | None = None
    temperature: torch.FloatTensor | None = None
    visual_expression: torch.FloatTensor | None = None
    linguistic_expression: torch.FloatTensor | None = None
    cue_mask: torch.LongTensor | None = None
    guidance_mask: torch.LongTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


@auto_docstring(
    custom_intro="The mask logits (and loss) of `MetrisForReferringSegmentation` and every `MetrisModelOutput` field.",
    custom_args=r"""
    loss (`torch.FloatTensor` of shape `()`, returned when `labels` are given):
        `mask_loss_weight` × mask loss + `contrastive_loss_weight` × pixel-contrastive loss (Eq. 4)
        (+ the no-target loss when enabled).
    logits (`torch.FloatTensor` of shape `(B, 1, H/4, W/4)`):
        One mask logit per pixel **at stride 4** of `pixel_values` (120×120 for a 480×480 input);
        `sigmoid(logits)` is the probability that the pixel belongs to the referred object. With
        `mask_loss="weighted_ce"` it is the difference of the two class logits. Upsample with
        `MetrisImageProcessor.post_process_referring_segmentation` to get masks at the image size.
    loss_terms (`dict[str, torch.FloatTensor]`, returned when `labels` are given):
        The unweighted terms of `loss`: "mask", "contrastive" (when its weight is > 0), "no_target" (with
        `config.no_target_head`); `loss` is their sum weighted by the config's `*_loss_weight` fields.
    no_target_logits (`torch.FloatTensor` of shape `(B,)`, with `config.no_target_head`):
        Logit of "the expression refers to nothing" (gRefCOCO).
"""
    + _MODEL_OUTPUT_FIELDS,
)
@dataclass
class MetrisReferringSegmentationOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.FloatTensor] | None = None
    no_target_logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    relevance_scores: torch.FloatTensor | None = None
    curation_mask: torch.LongTensor | None = None
    temperature: torch.FloatTensor | None = None
    visual_expression: torch.FloatTensor | None = None
    linguistic_expression: torch.FloatTensor | None = None
    cue_mask: torch.LongTensor | None = None
    guidance_mask: torch.LongTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


# --------------------------------------------------------------------------------------------------------------
# Attention and MLPs
# --------------------------------------------------------------------------------------------------------------


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "may attend" mask → additive bias (0 / dtype min) that both eager and SDPA attention take."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def run_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dispatches through the library's attention interface (`config._attn_implementation`: eager, sdpa, ...).

    Only eager returns the weights (the decoder's maps of Fig. 7b); fused kernels return None.
    """
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)
    dropout = module.config.attention_dropout if module.training else 0.0
    return interface(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


class MetrisAttention(nn.Module):
    """Multi-head attention of queries over a context (cross-attention; self-attention when context is the query).

    As in the authors' code, the query/key/value projections carry no bias (`config.attention_bias`), the output
    projection does.
    """

    def __init__(self, config: MetrisConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(dim, dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(dim, dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(dim, dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(dim, dim)

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, q_len, _ = query.shape
        q = self.q_proj(query).view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(context).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(context).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        out, weights = run_attention(self, q, k, v, attention_mask, self.scaling, **kwargs)
        return self.o_proj(out.reshape(batch, q_len, -1)), weights


class MetrisMLP(nn.Module):
    """fc1 → GELU → fc2: the token MLP of the word-side and VEE blocks."""

    def __init__(self, config: MetrisConfig, ratio: float):
        super().__init__()
        hidden = int(config.hidden_size * ratio)
        self.fc1 = nn.Linear(config.hidden_size, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, spatial_shape: tuple[int, int] | None = None) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden_states)))))


class MetrisMixFFN(MetrisMLP):
    """fc1 → 3×3 depthwise conv over the pixel grid → GELU → fc2 (SegFormer's Mix-FFN).

    The authors' pixel-side blocks (decoder, enhancer's pixel blocks, stage 4) use it: the convolution gives the
    token MLP a local spatial context. The (B, N, C) tokens are NHWC memory, so the convolution runs channels-last
    without a copy.
    """

    def __init__(self, config: MetrisConfig, ratio: float):
        super().__init__(config, ratio)
        hidden = self.fc1.out_features
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)

    def forward(self, hidden_states: torch.Tensor, spatial_shape: tuple[int, int] | None = None) -> torch.Tensor:
        batch, num_pixels, _ = hidden_states.shape
        hidden = self.fc1(hidden_states)
        grid = hidden.view(batch, *spatial_shape, -1).permute(0, 3, 1, 2)
        hidden = self.dwconv(grid).permute(0, 2, 3, 1).reshape(batch, num_pixels, -1)
        return self.dropout(self.fc2(self.dropout(self.act(hidden))))


def drop_path(hidden_states: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drops a residual branch per sample (rescaled), as the authors' blocks do in training. Kept
    here, not imported: torchvision's would make remote code need torchvision; transformers' draws other numbers."""
    if rate == 0.0 or not training:
        return hidden_states
    keep = 1.0 - rate
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    return hidden_states * hidden_states.new_empty(shape).bernoulli_(keep).div_(keep)


class MetrisAttentionBlock(GradientCheckpointingLayer):
    """`x ← x + MHA(LN(x), LN'(context), mask); x ← x + MLP(LN''(x))`, with drop path on both branches.

    The one block behind the stage-4 refinement, the language enhancer, Eq. 6 (masked cross-attention), Eq. 7
    (self-attention: `context` is `x` itself, normalised by its own norm as in the authors' code) and the decoder.
    """

    def __init__(self, config: MetrisConfig, mlp_ratio: float, mix_ffn: bool = False):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(dim, eps=eps)
        self.attention = MetrisAttention(config)
        self.norm_mlp = nn.LayerNorm(dim, eps=eps)
        self.mlp = MetrisMixFFN(config, mlp_ratio) if mix_ffn else MetrisMLP(config, mlp_ratio)
        self.drop_path_rate = config.drop_path_rate

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        spatial_shape: tuple[int, int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attention(self.norm_q(hidden_states), self.norm_kv(context), attention_mask, **kwargs)
        hidden_states = hidden_states + drop_path(attended, self.drop_path_rate, self.training)
        mlp_out = self.mlp(self.norm_mlp(hidden_states), spatial_shape)
        hidden_states = hidden_states + drop_path(mlp_out, self.drop_path_rate, self.training)
        return hidden_states, weights


def instance_norm(hidden_states: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm over the pixels of (B, N, C) tokens: each channel to zero mean, unit variance, no affine."""
    var, mean = torch.var_mean(hidden_states, dim=1, keepdim=True, correction=0)
    return (hidden_states - mean) * torch.rsqrt(var + eps)


# --------------------------------------------------------------------------------------------------------------
# Vision encoder with early fusion (LAVT's pixel-word attention, as in the authors' released code)
# --------------------------------------------------------------------------------------------------------------


def keep_pytorch_init(module: nn.Module) -> None:
    """Marks the linears and convolutions under `module` as the ones the authors' code leaves at PyTorch's default
    init (decoder convolutions, pixel-word attention, classifier): `weight_init="authors"` initialises them so."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            layer._pytorch_default_init = True


def pytorch_default_init(layer: nn.Linear | nn.Conv2d) -> None:
    """`reset_parameters` of nn.Linear / nn.Conv2d, through transformers' init functions, which leave loaded
    weights alone: kaiming-uniform(a=√5) weights, biases uniform in ±1/√fan_in."""
    init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
    if layer.bias is not None:
        fan_in = layer.weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        init.uniform_(layer.bias, -bound, bound)


class MetrisPixelWordAttention(nn.Module):
    """LAVT's pixel-word attention module (PWAM), one per backbone stage with `dim // 64` heads.

    Pixels attend to words (query and output InstanceNorm-ed over the pixels, scaled by 1/√dim as LAVT does); the
    result multiplies the projected pixels, then a projection. A tanh gate (Linear, ReLU, Linear, Tanh) adds it
    back into the visual stream after every stage but the last. The gate is never initialised at zero: two zero
    layers would give each other zero gradients forever, and language would never reach the backbone.
    """

    def __init__(self, config: MetrisConfig, dim: int, gated: bool):
        super().__init__()
        self.config = config
        text_dim = config.hidden_size
        self.num_heads = max(1, dim // 64)
        self.scaling = dim**-0.5
        self.is_causal = False
        self.visual_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(text_dim, dim)
        self.v_proj = nn.Linear(text_dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.fused_proj = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.gate = (
            nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Tanh())
            if gated
            else None
        )
        keep_pytorch_init(self)

    def forward(
        self, pixels: torch.Tensor, words: torch.Tensor, word_bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pixels (B, N, C), words (B, L, D), word_bias (B, 1, 1, L) → (fused, gated residual or None)."""
        batch, num_pixels, channels = pixels.shape
        head_dim = channels // self.num_heads
        q = instance_norm(self.q_proj(pixels)).view(batch, num_pixels, self.num_heads, head_dim).transpose(1, 2)
        k = self.k_proj(words).view(batch, -1, self.num_heads, head_dim).transpose(1, 2)
        v = self.v_proj(words).view(batch, -1, self.num_heads, head_dim).transpose(1, 2)
        language, _ = run_attention(self, q, k, v, word_bias, self.scaling)
        language = instance_norm(self.o_proj(language.reshape(batch, num_pixels, channels)))
        fused = self.act(self.fused_proj(self.act(self.visual_proj(pixels)) * language))
        return fused, (self.gate(fused) * fused if self.gate is not None else None)


class MetrisVisionEncoder(nn.Module):
    """Runs the backbone stage by stage so that early fusion can sit between the stages.

    As in LAVT (and the authors' code), a stage's output is `F_i = norm_i(PWAM(x))` and the stream continues as
    `x + gate(PWAM(x))·PWAM(x)`; without early fusion `F_i = norm_i(x)`. Works with the HF `SwinBackbone` and with
    timm's Swin through `TimmBackbone` (NHWC, no per-stage norm: ours are added). Returns F1..F4 as NCHW maps.
    """

    def __init__(self, config: MetrisConfig):
        super().__init__()
        if config.backbone_kwargs:
            self.backbone = AutoBackbone.from_config(config.backbone_config, **config.backbone_kwargs)
        else:
            self.backbone = load_backbone(config)
        self.is_timm = config.backbone_config.model_type == "timm_backbone"
        if self.is_timm:
            self.channels = [info["num_chs"] for info in self.backbone._backbone.feature_info.get_dicts()]
            self.timm_norms = nn.ModuleList([nn.LayerNorm(c, eps=config.layer_norm_eps) for c in self.channels])
        else:
            self.channels = list(self.backbone.channels)
            # SwinModel's final norm is never used by a backbone; dropping it keeps DDP free of unused parameters.
            self.backbone.swin.layernorm = nn.Identity()
        self.fusions = None
        if config.early_fusion:  # the last stage's fusion has no gate: its output only feeds the decoder
            last = len(self.channels) - 1
            self.fusions = nn.ModuleList(
                [MetrisPixelWordAttention(config, c, gated=i < last) for i, c in enumerate(self.channels)]
            )

    def stage_norm(self, index: int) -> nn.Module:
        if self.is_timm:
            return self.timm_norms[index]
        return self.backbone.hidden_states_norms[self.backbone.stage_names[index + 1]]

    def _hf_stages(self, pixel_values: torch.Tensor):
        swin = self.backbone.swin
        hidden, dims = swin.embeddings(pixel_values)
        for stage in swin.encoder.layers:
            for block in stage.blocks:
                hidden, _ = block(hidden, dims, always_partition=True)
            hidden = yield hidden, dims  # the generator continues with the (possibly fused) stream
            if stage.downsample is not None:
                hidden = stage.downsample(hidden, dims)
                dims = ((dims[0] + 1) // 2, (dims[1] + 1) // 2)

    def _timm_stages(self, pixel_values: torch.Tensor):
        net = self.backbone._backbone
        hidden = net.patch_embed(pixel_values)  # (B, H, W, C)
        for index in range(len(self.channels)):
            hidden = getattr(net, f"layers_{index}")(hidden)
            batch, height, width, channels = hidden.shape
            flat = yield hidden.reshape(batch, height * width, channels), (height, width)
            hidden = flat.reshape(batch, height, width, channels)

    def forward(self, pixel_values: torch.Tensor, words: torch.Tensor, word_bias: torch.Tensor) -> list[torch.Tensor]:
        stages = self._timm_stages(pixel_values) if self.is_timm else self._hf_stages(pixel_values)
        features = []
        stream, dims = next(stages)
        for index in range(len(self.channels)):
            feature = stream
            if self.fusions is not None:
                feature, residual = self.fusions[index](stream, words, word_bias)
                if residual is not None:
                    stream = stream + residual
            feature = self.stage_norm(index)(feature)
            batch, _, channels = feature.shape
            # An NCHW view of channels-last memory: no copy here, and the decoder's convs run channels-last.
            features.append(feature.view(batch, *dims, channels).permute(0, 3, 1, 2))
            if index + 1 < len(self.channels):
                stream, dims = stages.send(stream)
        stages.close()
        return features


# --------------------------------------------------------------------------------------------------------------
# Language enhancer and visual expression extractor (§3.2)
# --------------------------------------------------------------------------------------------------------------


class MetrisLanguageEnhancer(nn.Module):
    """Rounds of (words attend to F4, then F4 attends to words): Q_L → Q̂_L, and F4 becomes F_v."""

    def __init__(self, config: MetrisConfig):
        super().__init__()
        rounds = range(config.enhancer_rounds)
        self.word_blocks = nn.ModuleList([MetrisAttentionBlock(config, config.mlp_ratio) for _ in rounds])
        self.pixel_blocks = nn.ModuleList(
            [MetrisAttentionBlock(config, config.mlp_ratio, mix_ffn=config.mix_ffn) for _ in rounds]
        )

    def forward(self, words: torch.Tensor, pixels: torch.Tensor, word_bias: torch.Tensor, spatial_shape):
        for word_block, pixel_block in zip(self.word_blocks, self.pixel_blocks):
            words, _ = word_block(words, pixels)
            pixels, _ = pixel_block(pixels, words, word_bias, spatial_shape)
        return words, pixels


class MetrisVisualExpressionExtractor(nn.Module):
    """The three steps of §3.2, each equation a named step of `forward`."""

    def __init__(self, config: MetrisConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.vision_proj = nn.Linear(dim, config.joint_dim)  # φ^V of Eq. 1
        self.text_proj = nn.Linear(dim, config.joint_dim)  # φ^L of Eq. 1
        # τ of Eq. 4, always a parameter (a later `contrastive_loss_weight` > 0 must find it trainable). The authors
        # store τ itself and clamp it in place at every forward; "log_tau" (metris-hf 0.1) stores log τ.
        if config.temperature_parametrization == "tau":
            self.temperature = nn.Parameter(torch.full((1,), float(config.temperature_init)))
        else:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(config.temperature_init)))
        self.refinement = nn.ModuleList(
            [MetrisAttentionBlock(config, config.mlp_ratio) for _ in range(config.num_refinement_blocks)]
        )
        self.relation = nn.ModuleList(
            [MetrisAttentionBlock(config, config.mlp_ratio) for _ in range(config.num_relation_blocks)]
        )

    def tau(self) -> torch.Tensor:
        """τ as a 0-d tensor in [temperature_min, temperature_max]; with "tau" the parameter itself is clamped in
        place first, as the authors' `tau.clamp_(0.001, 0.5)` (so an optimiser step past the bounds is undone)."""
        low, high = self.config.temperature_min, self.config.temperature_max
        if self.config.temperature_parametrization == "tau":
            with torch.no_grad():
                self.temperature.clamp_(low, high)
            # a 0-d copy, not a view: a view of a parameter made under no_grad claims requires_grad without a
            # grad_fn, which autograd hooks (torch's FLOP counter, module trackers) refuse
            return self.temperature.sum()
        return self.log_temperature.exp().clamp(low, high)

    def num_curated(self, num_pixels: int) -> int:
        """N_p of Eq. 5: k = max(1, int(r·N)) pixels per cue (67 of 225 at 480² with r = 0.3)."""
        return max(1, int(self.config.curation_ratio * num_pixels))

    def forward(self, pixels: torch.Tensor, words: torch.Tensor, cue_mask: torch.Tensor):
        """pixels F_v (B, N, D), words Q̂_L (B, L, D), cue_mask (B, L) → Q̂_V, S_c, curated (B, L, N)."""
        num_pixels = pixels.shape[1]
        # Step 1 — curation of informative tokens.
        x = F.normalize(self.vision_proj(pixels), dim=-1)  # Eq. 1: X = φ^V(F_v)
        y = F.normalize(self.text_proj(words), dim=-1)  # Eq. 1: Y = φ^L(Q̂_L)
        scores = y @ x.transpose(1, 2)  # Eq. 2: S_c = C(X, Y), cosine similarity (B, L, N)
        if self.config.use_curation:
            k = self.num_curated(num_pixels)
            top = scores.topk(k, dim=-1).indices  # Eq. 2: E = R(S_c, r)
            curated = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
        else:  # Table 6a without step 1: every pixel counts
            k = num_pixels
            curated = torch.ones_like(scores, dtype=torch.bool)
        dynamic_mask = attention_bias(curated, scores.dtype)  # Eq. 3: M (0 on curated pixels, -inf elsewhere)

        # Step 2 — adaptive refinement.
        logits = scores + dynamic_mask if self.config.dynamic_mask_normalization else scores
        normalized = logits.softmax(dim=-1)  # Eq. 5: S_norm
        aggregated = (normalized @ pixels) / k  # Eq. 5: F_a = 1/N_p Σ S_norm ⊙ F_v, as written
        refined = aggregated
        curated_bias = dynamic_mask[:, None]  # (B, 1, L, N): query l sees only its curated pixels
        for block in self.refinement:  # Eq. 6: F̂ = MHCA(F_a, F_v, M) + F_a; F_r = MLP(F̂) + F̂
            refined, _ = block(refined, pixels, curated_bias)

        # Step 3 — visual relationship modelling among the cues (padding and non-cue tokens are keys of no one).
        visual = refined
        cue_bias = attention_bias(cue_mask[:, None, None, :], refined.dtype)
        for block in self.relation:  # Eq. 7: Q̂ = MHSA(F_r) + F_r; Q̂_V = MLP(Q̂) + Q̂
            visual, _ = block(visual, visual, cue_bias)
        return visual, scores, curated


# --------------------------------------------------------------------------------------------------------------
# Decoder (§3.3)
# --------------------------------------------------------------------------------------------------------------


class MetrisFuseConv(nn.Sequential):
    """Two 3×3 conv-BN-ReLU layers that merge the upsampled decoder map with an encoder skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        keep_pytorch_init(self)


class MetrisDecoder(nn.Module):
    """F4 attends to the guidance set; then ×2 upsample, concat the skip, fuse, attend — down to stride 4.

    One attention block per encoder stage (4× MLPs with Mix-FFN, as the authors'); upsampling is bilinear with
    `align_corners=True`, as theirs.
    """

    def __init__(self, config: MetrisConfig, skip_channels: list[int]):
        super().__init__()
        dim = config.hidden_size
        self.blocks = nn.ModuleList(
            [
                MetrisAttentionBlock(config, config.decoder_mlp_ratio, mix_ffn=config.mix_ffn)
                for _ in range(len(skip_channels) + 1)
            ]
        )
        self.fuse = nn.ModuleList([MetrisFuseConv(dim + channels, dim) for channels in skip_channels])

    def forward(
        self,
        feature: torch.Tensor,
        skips: list[torch.Tensor],
        guidance: torch.Tensor,
        guidance_bias: torch.Tensor,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """feature F4 (B, D, H4, W4); skips from deep to shallow (F3, F2, F1) → each stage's map, and its attention
        weights where the attention computes them (eager)."""
        states, attentions = [], []
        for index, block in enumerate(self.blocks):
            if index > 0:
                skip = skips[index - 1]
                feature = F.interpolate(feature, size=skip.shape[-2:], mode="bilinear", align_corners=True)
                feature = self.fuse[index - 1](torch.cat([feature, skip], dim=1))
            batch, channels, height, width = feature.shape
            # Channels-last memory makes both reshapes views: (B, D, H, W) ⇄ (B, HW, D) without copies.
            feature = feature.contiguous(memory_format=torch.channels_last)
            pixels = feature.permute(0, 2, 3, 1).reshape(batch, -1, channels)
            pixels, weights = block(pixels, guidance, guidance_bias, (height, width), **kwargs)
            feature = pixels.view(batch, height, width, channels).permute(0, 3, 1, 2)
            states.append(feature)
            attentions += [weights] if weights is not None else []
        return states, attentions


# --------------------------------------------------------------------------------------------------------------
# Pretrained model, base model, loss and the task model
# --------------------------------------------------------------------------------------------------------------


@auto_docstring
class MetrisPreTrainedModel(PreTrainedModel):
    config: MetrisConfig
    base_model_prefix = "metris"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MetrisAttentionBlock", "SwinStage", "BertLayer", "CLIPEncoderLayer"]
    _supports_sdpa = True
    # Each loss term is a mean over its batch: `Trainer` must scale it for gradient accumulation itself, not pass
    # `num_items_in_batch` (which it does to any forward taking `**kwargs` unless told otherwise).
    accepts_loss_kwargs = False

    def __init__(self, config: MetrisConfig, *inputs, **kwargs):
        # each field is checked on assignment; a config changed field by field is checked whole once, here
        config.validate()
        super().__init__(config, *inputs, **kwargs)

    def enable_input_require_grads(self) -> None:
        """As `PreTrainedModel`'s (the text and the vision embeddings), but the Swin's patch embeddings return a
        tuple: the hook marks its first element."""

        def make_outputs_require_grads(module, inputs, output):
            (output[0] if isinstance(output, tuple) else output).requires_grad_(True)

        embeddings = [self.base_model.get_input_embeddings()]
        with contextlib.suppress(NotImplementedError):  # a timm backbone names none
            embeddings.append(self.base_model.vision_encoder.backbone.get_input_embeddings())
        self._require_grads_hooks = [
            e.register_forward_hook(make_outputs_require_grads) for e in embeddings if e is not None
        ]
        self._require_grads_hook = self._require_grads_hooks[0]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if self.config.weight_init == "authors" and getattr(module, "_pytorch_default_init", False):
            pytorch_default_init(module)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            if isinstance(module, nn.Conv2d) and module.groups > 1:  # Mix-FFN's depthwise conv: He init, 3×3 fan-out
                init.normal_(module.weight, std=math.sqrt(2.0 / (module.kernel_size[0] * module.kernel_size[1])))
            else:
                init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, MetrisVisualExpressionExtractor):
            if self.config.temperature_parametrization == "tau":
                init.constant_(module.temperature, self.config.temperature_init)
            else:
                init.constant_(module.log_temperature, math.log(self.config.temperature_init))
        elif isinstance(module, MetrisModel):
            init.copy_(module.article_ids, torch.tensor(list(self.config.article_token_ids), dtype=torch.long))
        elif isinstance(module, MetrisLoss):
            init.copy_(module.class_weights, torch.tensor(list(self.config.ce_class_weights)))
        else:  # LayerNorm, BatchNorm (running statistics included)
            super()._init_weights(module)


@auto_docstring(
    custom_intro="Encoders, early fusion, language enhancer, VEE and decoder: everything up to the stride-4 map."
)
class MetrisModel(MetrisPreTrainedModel):
    def __init__(self, config: MetrisConfig):
        super().__init__(config)
        text_encoder = AutoModel.from_config(config.text_config)
        if getattr(text_encoder, "pooler", None) is not None and config.text_config.model_type == "bert":
            text_encoder.pooler = None  # unused: keeps DDP free of parameters without gradients
        self.text_encoder = text_encoder
        text_dim, dim = config.text_config.hidden_size, config.hidden_size
        self.text_proj = nn.Linear(text_dim, dim) if text_dim != dim else nn.Identity()
        self.vision_encoder = MetrisVisionEncoder(config)
        channels = self.vision_encoder.channels
        # The deepest stage is projected to the decoder width and refined by one self-attention block (authors').
        self.stage4_proj = nn.Linear(channels[-1], dim)
        self.stage4_block = MetrisAttentionBlock(config, config.mlp_ratio, mix_ffn=config.mix_ffn)
        uses_enhancer = config.guidance != "pure_le"
        uses_vee = config.guidance in ("full", "ve_only")
        # read at forward from here, not the config: these modules run this guidance and no other
        self.guidance = config.guidance
        self.language_enhancer = MetrisLanguageEnhancer(config) if uses_enhancer else None
        self.visual_expression_extractor = MetrisVisualExpressionExtractor(config) if uses_vee else None
        self.decoder = MetrisDecoder(config, channels[-2::-1])
        self.register_buffer(
            "article_ids", torch.tensor(list(config.article_token_ids), dtype=torch.long), persistent=False
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_encoder.set_input_embeddings(value)

    # ---- pieces of forward, in the order they run ----

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Q_L = [q_cls, q_1 .. q_{L-1}] at width D. CLIP has no [CLS]: its pooled EOS token takes position 0."""
        # An encoder keeps no key/value cache. Saying so spares BERT's "use_cache is incompatible with gradient
        # checkpointing" warning, a logging call that breaks torch.compile's graph once per forward.
        no_cache = {"use_cache": False} if hasattr(self.config.text_config, "use_cache") else {}
        outputs = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, **no_cache)
        words = outputs.last_hidden_state
        if self.config.text_config.model_type != "bert" and getattr(outputs, "pooler_output", None) is not None:
            words = torch.cat([outputs.pooler_output[:, None], words[:, 1:]], dim=1)
        return self.text_proj(words)

    def cue_mask(self, input_ids: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """Which tokens curate pixels (Table 6b, Table 9). Never empty: [CLS] stands in for an expression with
        no cue."""
        cues = word_mask.clone()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if self.config.linguistic_cues == "global":
            cues &= positions == 0
        elif self.config.linguistic_cues == "local":
            cues &= positions > 0
        if self.config.ignore_articles:
            cues &= ~torch.isin(input_ids, self.article_ids)
        cues[:, 0] |= ~cues.any(dim=1)
        return cues

    def guidance_set(self, text_states, linguistic, visual, pixels, word_mask, cue_mask):
        """G of §3.3 and its key mask, laid out by `config.guidance` (Table 5)."""
        mode = self.guidance
        if mode == "pure_le":
            return text_states, word_mask
        if mode == "enhanced_le":
            return linguistic, word_mask
        if mode == "ve_only":
            return visual, cue_mask
        if mode == "all_pixels":
            every_pixel = torch.ones(pixels.shape[:2], dtype=torch.bool, device=pixels.device)
            return torch.cat([linguistic, pixels], dim=1), torch.cat([word_mask, every_pixel], dim=1)
        return torch.cat([linguistic, visual], dim=1), torch.cat([word_mask, cue_mask], dim=1)

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MetrisModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`):
            Normalised images, H and W multiples of 32 (480×480 in the paper).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        word_mask = attention_mask.bool()
        pixel_values = pixel_values.to(self.dtype)

        text_states = self.encode_text(input_ids, attention_mask)  # Q_L (B, L, D)
        word_bias = attention_bias(word_mask[:, None, None, :], text_states.dtype)  # (B, 1, 1, L)
        *skips, f4 = self.vision_encoder(pixel_values, text_states, word_bias)
        batch, _, h4, w4 = f4.shape
        pixels = self.stage4_proj(f4.permute(0, 2, 3, 1).reshape(batch, h4 * w4, -1))  # (B, N, D)
        pixels, _ = self.stage4_block(pixels, pixels, None, (h4, w4))

        linguistic = text_states
        if self.language_enhancer is not None:  # Q̂_L; F4 becomes F_v
            linguistic, pixels = self.language_enhancer(text_states, pixels, word_bias, (h4, w4))

        cues = self.cue_mask(input_ids, word_mask)
        visual = scores = curated = temperature = None
        if self.visual_expression_extractor is not None:
            visual, scores, curated = self.visual_expression_extractor(pixels, linguistic, cues)
            temperature = self.visual_expression_extractor.tau()

        guidance, guidance_mask = self.guidance_set(text_states, linguistic, visual, pixels, word_mask, cues)
        guidance_bias = attention_bias(guidance_mask[:, None, None, :], guidance.dtype)
        top = pixels.view(batch, h4, w4, -1).permute(0, 3, 1, 2)
        decoder_states, decoder_attentions = self.decoder(
            top, skips[::-1], guidance, guidance_bias, output_attentions=output_attentions, **kwargs
        )
        # Masks leave as 0/1 integers (the `attention_mask` convention): outputs a user can subtract and compare.
        return MetrisModelOutput(
            last_hidden_state=decoder_states[-1],
            relevance_scores=scores,
            curation_mask=curated.long() if curated is not None else None,
            temperature=temperature,
            visual_expression=visual,
            linguistic_expression=linguistic,
            cue_mask=cues.long(),
            guidance_mask=guidance_mask.long(),
            encoder_hidden_states=(*skips, f4) if output_hidden_states else None,
            decoder_hidden_states=tuple(decoder_states) if output_hidden_states else None,
            decoder_attentions=tuple(decoder_attentions) if output_attentions else None,
        )


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Losses run in float32 under bf16/fp16 autocast, and keep float64 when the model runs in float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class MetrisLoss(nn.Module):
    """The loss terms, unweighted and at label size: the mask loss, Eq. 4 on the [CLS] row of S_c, the no-target loss.

    The head weighs them with `mask_loss_weight` (2), `contrastive_loss_weight` (0.4) and `no_target_loss_weight`, as
    the authors' code trains 2 × weighted cross-entropy + 0.4 × the contrastive BCE, upsampling both maps to the
    label size with `align_corners=True`.
    """

    def __init__(self, config: MetrisConfig):
        super().__init__()
        self.config = config
        self.register_buffer("class_weights", torch.tensor(list(config.ce_class_weights)), persistent=False)

    def forward(
        self,
        class_logits: torch.Tensor,
        labels: torch.Tensor,
        relevance_scores: torch.Tensor | None = None,
        temperature: torch.Tensor | None = None,
        no_target_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        config = self.config
        size = labels.shape[-2:]
        upsampled = at_least_float32(F.interpolate(class_logits, size=size, mode="bilinear", align_corners=True))
        target = labels.to(upsampled.dtype)
        if class_logits.shape[1] == 2:  # the head built for weighted_ce
            terms = {"mask": F.cross_entropy(upsampled, labels.long(), weight=self.class_weights.to(upsampled.dtype))}
        else:
            terms = {"mask": F.binary_cross_entropy_with_logits(upsampled[:, 0], target)}
        if relevance_scores is not None and config.contrastive_loss_weight > 0:
            # Eq. 4 on s = S_c[cls] / τ, upsampled to the label size as in the released code.
            batch, _, num_pixels = relevance_scores.shape
            grid = class_logits.shape[-2] // 8, class_logits.shape[-1] // 8
            if grid[0] * grid[1] != num_pixels:
                raise ValueError(f"relevance scores hold {num_pixels} pixels, not the {grid} grid of stride 32")
            global_scores = (relevance_scores[:, 0] / temperature).reshape(batch, 1, *grid)
            global_scores = at_least_float32(
                F.interpolate(global_scores, size=size, mode="bilinear", align_corners=True)
            )
            terms["contrastive"] = F.binary_cross_entropy_with_logits(global_scores[:, 0], target)
        if no_target_logits is not None:
            no_target_logits = at_least_float32(no_target_logits)
            is_empty = (labels.flatten(1).sum(1) == 0).to(no_target_logits.dtype)
            terms["no_target"] = F.binary_cross_entropy_with_logits(no_target_logits, is_empty)
        return terms


@auto_docstring(
    custom_intro="METRIS: the decoder is guided by linguistic and visual expression tokens; returns mask logits."
)
class MetrisForReferringSegmentation(MetrisPreTrainedModel):
    def __init__(self, config: MetrisConfig):
        super().__init__(config)
        self.metris = MetrisModel(config)
        dim = config.hidden_size
        num_classes = 2 if config.mask_loss == "weighted_ce" else 1
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        keep_pytorch_init(self.classifier)
        self.no_target_classifier = (
            nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 1)) if config.no_target_head else None
        )
        self.criterion = MetrisLoss(config)
        self.post_init()

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MetrisReferringSegmentationOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`):
            Normalised images, H and W multiples of 32 (480×480 in the paper).
        labels (`torch.LongTensor` of shape `(B, H, W)`, *optional*):
            Binary target masks at the `pixel_values` size; an all-zero mask is a no-target sample (gRefCOCO).
        """
        outputs: MetrisModelOutput = self.metris(pixel_values, input_ids, attention_mask, return_dict=True, **kwargs)
        class_logits = self.classifier(outputs.last_hidden_state)
        # weighted_ce keeps two classes; their difference is the same single logit as bce's.
        logits = class_logits[:, 1:] - class_logits[:, :1] if class_logits.shape[1] == 2 else class_logits

        no_target_logits = None
        if self.no_target_classifier is not None:
            linguistic = outputs.linguistic_expression
            source = outputs.visual_expression if outputs.visual_expression is not None else linguistic
            weights = outputs.cue_mask.unsqueeze(-1).to(source.dtype)
            pooled = (source * weights).sum(1) / weights.sum(1)
            no_target_logits = self.no_target_classifier(torch.cat([linguistic[:, 0], pooled], dim=-1)).squeeze(-1)

        loss = loss_terms = None
        if labels is not None:
            loss_terms = self.criterion(
                class_logits, labels, outputs.relevance_scores, outputs.temperature, no_target_logits
            )
            loss = sum(getattr(self.config, f"{name}_loss_weight") * term for name, term in loss_terms.items())

        return MetrisReferringSegmentationOutput(
            loss=loss, logits=logits, loss_terms=loss_terms, no_target_logits=no_target_logits, **outputs
        )


__all__ = [
    "MetrisForReferringSegmentation",
    "MetrisModel",
    "MetrisModelOutput",
    "MetrisPreTrainedModel",
    "MetrisReferringSegmentationOutput",
]
