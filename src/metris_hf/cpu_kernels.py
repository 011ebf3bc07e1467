"""CPU kernel choices for METRIS inference, kept out of the model classes.

    from metris_hf.cpu_kernels import optimize_for_cpu_inference
    optimize_for_cpu_inference(model)   # the pipeline, `metris-segment`, run_evaluation.py and the benchmark do this

The model is written with plain `nn.Linear` and `nn.GELU`. On CPU two kernels do better for METRIS's own layers
(not the text encoder's or the backbone's):

- a linear over many rows run as a 1×1 oneDNN convolution: MKL's sgemm behind `addmm` ran at half the speed of
  oneDNN's convolution on a 2-core AMD EPYC (14,400 × 768 → 1536: 176 ms vs 91 ms); on an Intel Xeon the two tie;
- GELU in place when no gradient is recorded: the pixel-side MLPs' activations are fresh 60-MB buffers at stride 4
  on Swin-B, and writing the GELU into another fresh one costs page faults that outweighed the GELU itself
  (0.4-0.6 s of a 7.6 s CPU forward at 480² on that EPYC).

Parameters, state-dict keys and results are unchanged; on other devices, in training, and while exporting, the
swapped layers run as the plain ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_MIN_ROWS = 256  # below this a 1×1 convolution's set-up outweighs what it saves


class MetrisCpuConvLinear(nn.Linear):
    """`nn.Linear` run as a 1×1 channels-last convolution on CPU for ≥ 256 rows (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        # export: a branch on the row count would pin a symbolic batch
        if x.device.type != "cpu" or torch.compiler.is_exporting() or rows < _MIN_ROWS:
            return F.linear(x, self.weight, self.bias)
        # (rows, C) memory is an NHWC image of height 1: a channels-last conv reads and writes it in place.
        flat = x.reshape(1, 1, rows, self.in_features).permute(0, 3, 1, 2)
        out = F.conv2d(flat, self.weight[:, :, None, None], self.bias)
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], self.out_features)


class MetrisInplaceGELU(nn.GELU):
    """`nn.GELU` that overwrites its input when no gradient is being recorded (its input is a fresh activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


def _swapped(module: nn.Module) -> nn.Module | None:
    """The CPU variant of a plain linear or GELU, sharing its parameters; None for anything else."""
    if type(module) is nn.Linear:
        bias = module.bias is not None
        fast = MetrisCpuConvLinear(module.in_features, module.out_features, bias=bias, device="meta")
        fast.weight, fast.bias = module.weight, module.bias
    elif type(module) is nn.GELU:
        fast = MetrisInplaceGELU(approximate=module.approximate)
    else:
        return None
    return fast.train(module.training)


def optimize_for_cpu_inference(model: nn.Module) -> nn.Module:
    """Swaps the plain `nn.Linear` / `nn.GELU` layers of METRIS's own modules (not the text encoder's or the
    backbone's) for the CPU kernels above, in place; returns `model`. Idempotent; weights are shared, not copied."""
    for parent_name, parent in list(model.named_modules()):
        path = f".{parent_name}."
        if ".text_encoder." in path or ".backbone." in path:
            continue
        for name, child in list(parent.named_children()):
            fast = _swapped(child)
            if fast is not None:
                setattr(parent, name, fast)
    return model


__all__ = ["MetrisCpuConvLinear", "MetrisInplaceGELU", "optimize_for_cpu_inference"]
