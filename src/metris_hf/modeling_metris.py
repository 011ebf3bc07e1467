"""METRIS: multi-expression guidance for Transformer-based referring image segmentation.

Reads top-down from small blocks to the task model:
attention and MLP → the attention block shared by every stage → pixel-word fusion in the backbone →
vision encoder → language enhancer → visual expression extractor (paper §3.2, Eq. 1-7) → decoder (§3.3)
→ `MetrisPreTrainedModel` → `MetrisForReferringSegmentation`.

Shapes: B batch, L expression tokens, N = H4·W4 pixels of the stride-32 map, D = `config.hidden_size`.
Masks are boolean with True = "may be attended / is a real token".
"""


import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import load_backbone
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_metris import MetrisConfig

# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class MetrisReferringSegmentationOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, returned when `labels` are given):
        Mask loss + `contrastive_loss_weight` × pixel-contrastive loss (Eq. 4) (+ no-target loss when enabled).
    logits (`torch.FloatTensor` of shape `(B, 1, H/4, W/4)`):
        One mask logit per pixel **at stride 4** of `pixel_values` (120×120 for a 480×480 input);
        `sigmoid(logits)` is the probability that the pixel belongs to the referred object. Upsample with
        `MetrisImageProcessor.post_process_referring_segmentation` to get masks at the image size.
    no_target_logits (`torch.FloatTensor` of shape `(B,)`, with `config.no_target_head`):
        Logit of "the expression refers to nothing" (gRefCOCO).
    relevance_scores (`torch.FloatTensor` of shape `(B, L, N)`):
        S_c of Eq. 2: cosine similarity between each linguistic token and each pixel of F4 (N = H/32·W/32).
    curation_mask (`torch.BoolTensor` of shape `(B, L, N)`):
        E of Eq. 2 as a mask: the pixels curated for each linguistic cue (True = curated; M of Eq. 3 is 0 there).
    temperature (`torch.FloatTensor` of shape `()`):
        τ of Eq. 4 after clamping.
    visual_expression (`torch.FloatTensor` of shape `(B, L, D)`):
        Q̂_V of Eq. 7, one visual token per linguistic token (rows of non-cue tokens are not guidance).
    linguistic_expression (`torch.FloatTensor` of shape `(B, L, D)`):
        Q̂_L, the linguistic tokens after the language enhancer (Q_L projected to D for `guidance="pure_le"`).
    guidance_mask (`torch.BoolTensor` of shape `(B, G)`):
        Which of the G guidance tokens the decoder attends to, in the order [linguistic, visual] (or as the
        `guidance` mode lays them out).
    encoder_hidden_states (`tuple(torch.FloatTensor)`, with `output_hidden_states=True`):
        F1..F4 after early fusion, `(B, C_i, H_i, W_i)`.
    decoder_hidden_states (`tuple(torch.FloatTensor)`, with `output_hidden_states=True`):
        The decoder's feature map after each stage, from stride 32 to stride 4, `(B, D, H_i, W_i)`.
    decoder_attentions (`tuple(torch.FloatTensor)`, with `output_attentions=True`):
        Per decoder stage (stride 32 to 4), attention of every pixel over the guidance set,
        `(B, heads, H_i·W_i, G)`: the maps of the paper's Fig. 7b / 15.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    no_target_logits: torch.FloatTensor | None = None
    relevance_scores: torch.FloatTensor | None = None
    curation_mask: torch.BoolTensor | None = None
    temperature: torch.FloatTensor | None = None
    visual_expression: torch.FloatTensor | None = None
    linguistic_expression: torch.FloatTensor | None = None
    guidance_mask: torch.BoolTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


class MetrisLinear(nn.Linear):
    """`nn.Linear` that runs as a 1×1 oneDNN convolution on CPU.

    MKL's sgemm behind `addmm` ran at half the speed of oneDNN's convolution on the 2-core AMD EPYC we
    benchmark on (14,400 × 768 → 1536: 176 ms vs 91 ms, backward alike), and the decoder's token MLPs at
    stride 4 are the largest matmuls of the model. Same parameters and state-dict keys as `nn.Linear`; on
    other devices, or for a handful of rows, it is `F.linear`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if x.device.type != "cpu" or rows < 256:
            return F.linear(x, self.weight, self.bias)
        # (rows, C) memory is an NHWC image of height 1: a channels-last conv reads and writes it in place.
        flat = x.reshape(1, 1, rows, self.in_features).permute(0, 3, 1, 2)
        out = F.conv2d(flat, self.weight[:, :, None, None], self.bias)
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], self.out_features)


class MetrisAttention(nn.Module):
    """Multi-head attention on fused SDPA; queries and keys may have different widths.

    `attention_mask` is boolean, broadcastable to `(B, Lq, Lk)`, True where a query may look.
    Attention weights are only materialised when asked for (the decoder's maps for Fig. 7b).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int, num_heads: int, out_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.q_proj = MetrisLinear(query_dim, hidden_dim)
        self.k_proj = MetrisLinear(key_dim, hidden_dim)
        self.v_proj = MetrisLinear(key_dim, hidden_dim)
        self.o_proj = MetrisLinear(hidden_dim, out_dim or query_dim)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, q_len, _ = query.shape
        k_len = key_value.shape[1]
        q = self.q_proj(query).view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key_value).view(batch, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(key_value).view(batch, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        mask = attention_mask.unsqueeze(1) if attention_mask is not None else None  # broadcast over heads
        weights = None
        if output_attentions:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, q_len, self.num_heads * self.head_dim)
        return self.o_proj(out), weights


class MetrisMLP(nn.Module):
    def __init__(self, dim: int, ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = MetrisLinear(dim, hidden)
        self.fc2 = MetrisLinear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class MetrisAttentionBlock(GradientCheckpointingLayer):
    """`x ← x + MHA(x, context, mask); x ← x + MLP(x)`, pre-norm.

    The one block behind Eq. 6 (cross-attention, `context` given) and Eq. 7 (self-attention, `context=None`),
    the language enhancer and the decoder stages.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, context_dim: int | None = None, dropout: float = 0.0,
                 eps: float = 1e-6):
        super().__init__()
        self.is_cross = context_dim is not None
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(context_dim, eps=eps) if self.is_cross else None
        self.attention = MetrisAttention(dim, context_dim or dim, dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=eps)
        self.mlp = MetrisMLP(dim, mlp_ratio, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query = self.norm_q(hidden_states)
        key_value = self.norm_kv(context) if self.is_cross else query
        attended, weights = self.attention(query, key_value, attention_mask, output_attentions)
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.mlp(self.norm_mlp(hidden_states))
        return hidden_states, weights


# --------------------------------------------------------------------------------------------------------------
# Vision encoder with early fusion (LAVT's pixel-word attention, as in the authors' released code)
# --------------------------------------------------------------------------------------------------------------


class MetrisPixelWordAttention(nn.Module):
    """Pixels attend to words; the result gates the projected pixels element-wise, then a 1×1 projection.

    One per backbone stage, `dim // 64` heads. Its output is the stage's feature map F_i; a tanh gate
    (a two-layer MLP, per channel) adds it back into the visual stream after stages 1-3.
    """

    def __init__(self, dim: int, text_dim: int, eps: float, gated: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.visual_proj = MetrisLinear(dim, dim)
        self.attention = MetrisAttention(dim, text_dim, dim, max(1, dim // 64))
        self.fused_proj = MetrisLinear(dim, dim)
        self.gate = (
            nn.Sequential(MetrisLinear(dim, dim, bias=False), nn.ReLU(), MetrisLinear(dim, dim, bias=False), nn.Tanh())
            if gated
            else None
        )

    def forward(self, pixels: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor):
        """pixels (B, N, C), words (B, L, Dt), word_mask (B, L) → (fused F_i, gated residual)."""
        language, _ = self.attention(self.norm(pixels), words, word_mask[:, None, :])
        fused = F.gelu(self.fused_proj(F.gelu(self.visual_proj(pixels)) * language))
        return fused, (self.gate(fused) * fused if self.gate is not None else None)


class MetrisVisionEncoder(nn.Module):
    """Runs the backbone stage by stage so that early fusion can sit between the stages.

    Works with the HF `SwinBackbone` (channels last as (B, N, C), norms per stage out) and with timm's Swin
    through `TimmBackbone` (NHWC, downsampling at the start of each stage, no per-stage norm: ours are added).
    Returns F1..F4 as NCHW maps; the decoder only sees the maps and their channels.
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
        if len(self.channels) != 4:
            raise ValueError(f"the backbone must return 4 feature maps, it returns {len(self.channels)}")
        self.fusions = (
            nn.ModuleList(
                [
                    MetrisPixelWordAttention(c, config.hidden_size, config.layer_norm_eps, gated=index < 3)
                    for index, c in enumerate(self.channels)
                ]
            )
            if config.early_fusion
            else None
        )

    def _hf_stages(self, pixel_values: torch.Tensor):
        swin = self.backbone.swin
        hidden, dims = swin.embeddings(pixel_values)
        for index, stage in enumerate(swin.encoder.layers):
            for block in stage.blocks:
                hidden, _ = block(hidden, dims, always_partition=True)
            norm = self.backbone.hidden_states_norms[self.backbone.stage_names[index + 1]]
            # the generator hands back the (possibly fused) stream to continue with
            hidden = yield norm(hidden), dims, hidden
            if stage.downsample is not None:
                hidden = stage.downsample(hidden, dims)
                dims = ((dims[0] + 1) // 2, (dims[1] + 1) // 2)

    def _timm_stages(self, pixel_values: torch.Tensor):
        net = self.backbone._backbone
        hidden = net.patch_embed(pixel_values)  # (B, H, W, C)
        for index in range(4):
            hidden = getattr(net, f"layers_{index}")(hidden)
            batch, height, width, channels = hidden.shape
            flat = hidden.reshape(batch, height * width, channels)
            flat = yield self.timm_norms[index](flat), (height, width), flat
            hidden = flat.reshape(batch, height, width, channels)

    def forward(self, pixel_values: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> list[torch.Tensor]:
        stages = self._timm_stages(pixel_values) if self.is_timm else self._hf_stages(pixel_values)
        features = []
        feature, dims, stream = next(stages)
        for index in range(4):
            if self.fusions is not None:
                feature, residual = self.fusions[index](feature, words, word_mask)
                if residual is not None:
                    stream = stream + residual
            batch, _, channels = feature.shape
            # An NCHW view of channels-last memory: no copy here, and the decoder's convs run channels-last.
            features.append(feature.view(batch, *dims, channels).permute(0, 3, 1, 2))
            try:
                feature, dims, stream = stages.send(stream)
            except StopIteration:
                break
        return features


# --------------------------------------------------------------------------------------------------------------
# Language enhancer and visual expression extractor (§3.2)
# --------------------------------------------------------------------------------------------------------------


class MetrisLanguageEnhancer(nn.Module):
    """Rounds of (words attend to F4, then F4 attends to words): Q_L → Q̂_L, and F4 becomes F_v."""

    def __init__(self, config: MetrisConfig):
        super().__init__()
        dim, heads, ratio = config.hidden_size, config.num_attention_heads, config.mlp_ratio
        self.word_blocks = nn.ModuleList(
            [MetrisAttentionBlock(dim, heads, ratio, dim, config.dropout, config.layer_norm_eps) for _ in range(config.enhancer_rounds)]
        )
        self.pixel_blocks = nn.ModuleList(
            [MetrisAttentionBlock(dim, heads, ratio, dim, config.dropout, config.layer_norm_eps) for _ in range(config.enhancer_rounds)]
        )

    def forward(self, words: torch.Tensor, pixels: torch.Tensor, word_mask: torch.Tensor):
        for word_block, pixel_block in zip(self.word_blocks, self.pixel_blocks):
            words, _ = word_block(words, pixels)
            pixels, _ = pixel_block(pixels, words, word_mask[:, None, :])
        return words, pixels


class MetrisVisualExpressionExtractor(nn.Module):
    """The three steps of §3.2, each equation a named step of `forward`."""

    def __init__(self, config: MetrisConfig):
        super().__init__()
        self.config = config
        dim, heads, ratio, eps = config.hidden_size, config.num_attention_heads, config.mlp_ratio, config.layer_norm_eps
        self.vision_proj = MetrisLinear(dim, config.joint_dim)  # φ^V of Eq. 1
        self.text_proj = MetrisLinear(dim, config.joint_dim)  # φ^L of Eq. 1
        # τ of Eq. 4 is learnt as log τ so it stays positive; clamped in `temperature`.
        self.log_temperature = nn.Parameter(torch.tensor(math.log(config.temperature_init)))
        n_refine = config.refinement_layers if config.use_refinement else 0
        n_relate = config.relation_layers if config.use_relation else 0
        self.refinement = nn.ModuleList([MetrisAttentionBlock(dim, heads, ratio, dim, config.dropout, eps) for _ in range(n_refine)])
        self.relation = nn.ModuleList([MetrisAttentionBlock(dim, heads, ratio, None, config.dropout, eps) for _ in range(n_relate)])

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(self.config.temperature_min, self.config.temperature_max)

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
        dynamic_mask = torch.zeros_like(scores).masked_fill(~curated, torch.finfo(scores.dtype).min)  # Eq. 3: M

        # Step 2 — adaptive refinement.
        logits = scores + dynamic_mask if self.config.dynamic_mask_normalization else scores
        normalized = logits.softmax(dim=-1)  # Eq. 5: S_norm
        aggregated = (normalized @ pixels) / k  # Eq. 5: F_a = 1/N_p Σ S_norm ⊙ F_v, as written
        refined = aggregated
        for block in self.refinement:  # Eq. 6: F̂ = MHCA(F_a, F_v, M) + F_a; F_r = MLP(F̂) + F̂
            refined, _ = block(refined, pixels, curated)

        # Step 3 — visual relationship modelling among the cues (padding and non-cue tokens are keys of no one).
        visual = refined
        for block in self.relation:  # Eq. 7: Q̂ = MHSA(F_r) + F_r; Q̂_V = MLP(Q̂) + Q̂
            visual, _ = block(visual, None, cue_mask[:, None, :])
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


class MetrisDecoder(nn.Module):
    """F4 attends to the guidance set; then ×2 upsample, concat the skip, fuse, attend — down to stride 4."""

    def __init__(self, config: MetrisConfig, skip_channels: list[int]):
        super().__init__()
        dim = config.hidden_size
        self.blocks = nn.ModuleList(
            [
                MetrisAttentionBlock(dim, config.num_attention_heads, config.decoder_mlp_ratio, dim, config.dropout,
                                     config.layer_norm_eps)
                for _ in range(4)
            ]
        )
        self.fuse = nn.ModuleList([MetrisFuseConv(dim + c, dim) for c in skip_channels])
        num_classes = 2 if config.mask_loss == "weighted_ce" else 1
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)

    def attend(self, index: int, feature: torch.Tensor, guidance: torch.Tensor, guidance_mask: torch.Tensor,
               output_attentions: bool):
        batch, channels, height, width = feature.shape
        # Channels-last memory makes both reshapes views: (B, D, H, W) ⇄ (B, HW, D) without copies.
        pixels = feature.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(batch, -1, channels)
        pixels, weights = self.blocks[index](pixels, guidance, guidance_mask[:, None, :], output_attentions)
        return pixels.view(batch, height, width, channels).permute(0, 3, 1, 2), weights

    def forward(self, top: torch.Tensor, skips: list[torch.Tensor], guidance: torch.Tensor,
                guidance_mask: torch.Tensor, output_attentions: bool = False):
        """top (B, D, H4, W4); skips F3, F2, F1 → class logits at stride 4, stage maps, attention maps."""
        feature, weights = self.attend(0, top, guidance, guidance_mask, output_attentions)
        states, attentions = [feature], [weights]
        for index, (skip, fuse) in enumerate(zip(skips, self.fuse), start=1):
            feature = F.interpolate(feature, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            feature = fuse(torch.cat([feature, skip], dim=1))
            feature, weights = self.attend(index, feature, guidance, guidance_mask, output_attentions)
            states.append(feature)
            attentions.append(weights)
        return self.classifier(feature), states, attentions


# --------------------------------------------------------------------------------------------------------------
# Pretrained model and the task model
# --------------------------------------------------------------------------------------------------------------


class MetrisPreTrainedModel(PreTrainedModel):
    config: MetrisConfig
    base_model_prefix = "metris"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MetrisAttentionBlock", "SwinStage", "BertLayer", "CLIPEncoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
        elif isinstance(module, MetrisVisualExpressionExtractor):
            init.constant_(module.log_temperature, math.log(self.config.temperature_init))


class MetrisForReferringSegmentation(MetrisPreTrainedModel):
    """METRIS: the decoder is guided by linguistic and visual expression tokens; returns mask logits."""

    def __init__(self, config: MetrisConfig):
        super().__init__(config)
        text_encoder = AutoModel.from_config(config.text_config)
        if getattr(text_encoder, "pooler", None) is not None and config.text_config.model_type == "bert":
            text_encoder.pooler = None  # unused: keeps DDP free of parameters without gradients
        self.text_encoder = text_encoder
        text_dim = config.text_config.hidden_size
        dim = config.hidden_size
        self.text_proj = MetrisLinear(text_dim, dim) if text_dim != dim else nn.Identity()
        self.vision_encoder = MetrisVisionEncoder(config)
        channels = self.vision_encoder.channels
        # Stage 4 is projected to the decoder width and refined by one attention block (released code).
        self.stage4_proj = nn.Sequential(MetrisLinear(channels[3], dim), nn.LayerNorm(dim, eps=config.layer_norm_eps))
        self.stage4_block = MetrisAttentionBlock(dim, config.num_attention_heads, config.mlp_ratio, None, config.dropout,
                                                 config.layer_norm_eps)
        uses_enhancer = config.guidance != "pure_le"
        uses_vee = config.guidance in ("full", "ve_only")
        self.language_enhancer = MetrisLanguageEnhancer(config) if uses_enhancer else None
        self.visual_expression_extractor = MetrisVisualExpressionExtractor(config) if uses_vee else None
        self.decoder = MetrisDecoder(config, [channels[2], channels[1], channels[0]])
        self.no_target_classifier = (
            nn.Sequential(MetrisLinear(2 * dim, dim), nn.GELU(), MetrisLinear(dim, 1)) if config.no_target_head else None
        )
        self.register_buffer("article_ids", torch.tensor(list(config.article_token_ids), dtype=torch.long), persistent=False)
        self.post_init()

    # ---- pieces of forward, in the order they run ----

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Q_L = [q_cls, q_1 .. q_{L-1}] projected to D. CLIP has no [CLS]: its pooled EOS token takes position 0."""
        outputs = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        words = outputs.last_hidden_state
        if self.config.text_config.model_type != "bert" and getattr(outputs, "pooler_output", None) is not None:
            words = torch.cat([outputs.pooler_output[:, None], words[:, 1:]], dim=1)
        return self.text_proj(words)

    def cue_mask(self, input_ids: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """Which tokens curate pixels (Table 6b, Table 9). Never empty: [CLS] stands in for an expression with no cue."""
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
        mode = self.config.guidance
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
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MetrisReferringSegmentationOutput:
        r"""
        pixel_values (`(B, 3, H, W)`): normalised images, H and W multiples of 32 (480×480 in the paper).
        input_ids, attention_mask (`(B, L)`): the tokenised expressions; padding is masked everywhere.
        labels (`(B, H, W)`, optional): binary target masks at the `pixel_values` size; an all-zero mask is a
            no-target sample (gRefCOCO).
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
        f1, f2, f3, f4 = self.vision_encoder(pixel_values, text_states, word_mask)
        batch, _, h4, w4 = f4.shape
        pixels = self.stage4_proj(f4.flatten(2).transpose(1, 2))  # (B, N, D)
        pixels, _ = self.stage4_block(pixels)

        linguistic = text_states
        if self.language_enhancer is not None:  # Q̂_L; F4 becomes F_v
            linguistic, pixels = self.language_enhancer(text_states, pixels, word_mask)

        cues = self.cue_mask(input_ids, word_mask)
        visual = scores = curated = temperature = None
        if self.visual_expression_extractor is not None:
            visual, scores, curated = self.visual_expression_extractor(pixels, linguistic, cues)
            temperature = self.visual_expression_extractor.temperature

        guidance, guidance_mask = self.guidance_set(text_states, linguistic, visual, pixels, word_mask, cues)
        top = pixels.view(batch, h4, w4, -1).permute(0, 3, 1, 2)
        class_logits, decoder_states, decoder_attentions = self.decoder(
            top, [f3, f2, f1], guidance, guidance_mask, output_attentions
        )
        # weighted_ce keeps two classes; their difference is the same single logit as bce's.
        logits = class_logits[:, 1:] - class_logits[:, :1] if class_logits.shape[1] == 2 else class_logits

        no_target_logits = None
        if self.no_target_classifier is not None:
            source = visual if visual is not None else linguistic
            weights = cues.unsqueeze(-1).to(source.dtype)
            pooled = (source * weights).sum(1) / weights.sum(1)
            no_target_logits = self.no_target_classifier(torch.cat([linguistic[:, 0], pooled], dim=-1)).squeeze(-1)

        loss = None
        if labels is not None:
            loss = self.compute_loss(class_logits, labels, scores, temperature, no_target_logits, (h4, w4))

        return MetrisReferringSegmentationOutput(
            loss=loss,
            logits=logits,
            no_target_logits=no_target_logits,
            relevance_scores=scores,
            curation_mask=curated,
            temperature=temperature,
            visual_expression=visual,
            linguistic_expression=linguistic,
            guidance_mask=guidance_mask,
            encoder_hidden_states=(f1, f2, f3, f4) if output_hidden_states else None,
            decoder_hidden_states=tuple(decoder_states) if output_hidden_states else None,
            decoder_attentions=tuple(decoder_attentions) if output_attentions else None,
        )

    def compute_loss(self, class_logits, labels, scores, temperature, no_target_logits, grid) -> torch.Tensor:
        """Mask loss at the label size + λ·Eq. 4 on the [CLS] row of S_c (+ the no-target loss)."""
        size = labels.shape[-2:]
        target = labels.to(class_logits.dtype)
        upsampled = F.interpolate(class_logits, size=size, mode="bilinear", align_corners=False).float()
        if self.config.mask_loss == "weighted_ce":
            weight = torch.tensor(self.config.ce_class_weights, device=labels.device, dtype=torch.float32)
            loss = F.cross_entropy(upsampled, labels.long(), weight=weight)
        else:
            loss = F.binary_cross_entropy_with_logits(upsampled[:, 0], target.float())
        if scores is not None and self.config.contrastive_loss_weight > 0:
            # Eq. 4 on s = S_c[cls] / τ, upsampled to the label size as in the released code.
            global_scores = (scores[:, 0] / temperature).reshape(-1, 1, *grid)
            global_scores = F.interpolate(global_scores, size=size, mode="bilinear", align_corners=False).float()
            contrastive = F.binary_cross_entropy_with_logits(global_scores[:, 0], target.float())
            loss = loss + self.config.contrastive_loss_weight * contrastive
        if no_target_logits is not None:
            is_empty = (labels.flatten(1).sum(1) == 0).float()
            loss = loss + self.config.no_target_loss_weight * F.binary_cross_entropy_with_logits(
                no_target_logits.float(), is_empty
            )
        return loss


__all__ = ["MetrisForReferringSegmentation", "MetrisPreTrainedModel", "MetrisReferringSegmentationOutput"]
