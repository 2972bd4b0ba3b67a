"""Torch rebuild of the KAN-TTS HiFiGAN ``Generator`` (causal and non-causal, non-NSF), SPEC §d.

Checkpoints store every conv in weight-norm form (``weight_g``/``weight_v``); this module keeps that
form so ``load_state_dict(strict=True)`` accepts them, and :func:`fold_weight_norm` is the explicit,
named step that replaces them by plain ``weight`` tensors (the reference's ``remove_weight_norm``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import CheckpointError


@dataclass(frozen=True)
class HifiGanConfig:
    """``Model.Generator.params`` of ``voc/config.yaml``."""

    in_channels: int = 80
    out_channels: int = 1
    channels: int = 256
    kernel_size: int = 7
    upsample_scales: tuple[int, ...] = (10, 5, 2, 2)
    upsample_kernal_sizes: tuple[int, ...] = (20, 10, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5, 7),) * 3
    causal: bool = True
    bias: bool = True
    negative_slope: float = 0.1

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> HifiGanConfig:
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in params.items() if k in known}
        for k in ("upsample_scales", "upsample_kernal_sizes", "resblock_kernel_sizes"):
            if k in kw:
                kw[k] = tuple(int(x) for x in kw[k])
        if "resblock_dilations" in kw:
            kw["resblock_dilations"] = tuple(tuple(int(x) for x in d) for d in kw["resblock_dilations"])
        act = params.get("nonlinear_activation_params") or {}
        if "negative_slope" in act:
            kw["negative_slope"] = float(act["negative_slope"])
        return cls(**kw)

    @property
    def hop(self) -> int:
        h = 1
        for s in self.upsample_scales:
            h *= s
        return h


class _WeightNormed(nn.Module):
    """Holds ``weight_g``/``weight_v`` (dim 0) until folded into ``weight``."""

    weight_g: nn.Parameter | None
    weight_v: nn.Parameter | None
    weight: nn.Parameter | None

    def _init_wn(self, shape: tuple[int, ...], out: int, use_bias: bool) -> None:
        self.weight_g = nn.Parameter(torch.ones(shape[0], *([1] * (len(shape) - 1))))
        self.weight_v = nn.Parameter(torch.randn(*shape) * 0.01)
        self.weight = None
        self.bias = nn.Parameter(torch.zeros(out)) if use_bias else None

    def effective_weight(self) -> Tensor:
        if self.weight is not None:
            return self.weight
        if self.weight_g is None or self.weight_v is None:
            raise CheckpointError(f"{type(self).__name__} has neither a folded weight nor weight_g/weight_v; "
                                  "load the layer from a checkpoint with both weight_g and weight_v")
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def fold(self) -> None:
        if self.weight is not None:
            return
        w = self.effective_weight().detach().clone()
        del self.weight_g, self.weight_v
        self.weight_g = None
        self.weight_v = None
        self.weight = nn.Parameter(w)


class Conv1d(_WeightNormed):
    """Weight-normed Conv1d with causal (left) or centred padding."""

    def __init__(self, c_in: int, c_out: int, k: int, dilation: int = 1, causal: bool = False, bias: bool = True):
        super().__init__()
        self.k, self.dilation, self.causal = k, dilation, causal
        self._init_wn((c_out, c_in, k), c_out, bias)

    @property
    def pad(self) -> tuple[int, int]:
        total = (self.k - 1) * self.dilation
        return (total, 0) if self.causal else (total // 2, total // 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:  # [B, C, 1, T] export layout (see export_layout_2d)
            return F.conv2d(F.pad(x, self.pad), self.effective_weight().unsqueeze(2), self.bias,
                            dilation=(1, self.dilation))
        return F.conv1d(F.pad(x, self.pad), self.effective_weight(), self.bias, dilation=self.dilation)


class ConvTranspose1d(_WeightNormed):
    """Weight-normed ConvTranspose1d; causal drops the last k - s samples, non-causal pads (k - s) // 2."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, causal: bool, bias: bool = True):
        super().__init__()
        self.k, self.stride, self.causal = k, stride, causal
        self.padding = 0 if causal else (k - stride) // 2
        self._init_wn((c_in, c_out, k), c_out, bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            y = F.conv_transpose2d(x, self.effective_weight().unsqueeze(2), self.bias, stride=(1, self.stride),
                                   padding=(0, self.padding))
        else:
            y = F.conv_transpose1d(x, self.effective_weight(), self.bias, stride=self.stride, padding=self.padding)
        if self.causal and self.k > self.stride:
            y = y[..., : -(self.k - self.stride)]
        return y


class _ConvHolder(nn.Module):
    """Gives ``<name>.conv1d.*`` parameter names, as the reference's wrapper classes do."""

    def __init__(self, conv: Conv1d):
        super().__init__()
        self.conv1d = conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv1d(x)


class _DeconvHolder(nn.Module):
    def __init__(self, deconv: ConvTranspose1d):
        super().__init__()
        self.deconv = deconv

    def forward(self, x: Tensor) -> Tensor:
        return self.deconv(x)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, k: int, dilations: tuple[int, ...], causal: bool, slope: float, bias: bool):
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(_ConvHolder(Conv1d(channels, channels, k, d, causal, bias)) for d in dilations)
        self.convs2 = nn.ModuleList(_ConvHolder(Conv1d(channels, channels, k, 1, causal, bias)) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            t = c1(F.leaky_relu(x, self.slope))
            x = x + c2(F.leaky_relu(t, self.slope))
        return x


class Generator(nn.Module):
    def __init__(self, cfg: HifiGanConfig):
        super().__init__()
        self.cfg = cfg
        causal, slope, bias = cfg.causal, cfg.negative_slope, cfg.bias
        self.conv_pre = _ConvHolder(Conv1d(cfg.in_channels, cfg.channels, cfg.kernel_size, 1, causal, bias))
        self.transpose_upsamples = nn.ModuleList()
        self.repeat_upsamples = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        c = cfg.channels
        for s, k in zip(cfg.upsample_scales, cfg.upsample_kernal_sizes, strict=True):
            self.transpose_upsamples.append(
                nn.Sequential(nn.LeakyReLU(slope), _DeconvHolder(ConvTranspose1d(c, c // 2, k, s, causal, bias))))
            self.repeat_upsamples.append(nn.Sequential(
                nn.Upsample(scale_factor=s, mode="nearest"), nn.LeakyReLU(slope),
                _ConvHolder(Conv1d(c, c // 2, cfg.kernel_size, 1, causal, bias))))
            for rk, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations, strict=True):
                self.conv_blocks.append(ResidualBlock(c // 2, rk, dil, causal, slope, bias))
            c //= 2
        self.conv_post = _ConvHolder(Conv1d(c, cfg.out_channels, cfg.kernel_size, 1, causal, bias))
        self.layout_2d = False

    def forward(self, mel: Tensor) -> Tensor:
        """mel float32 [B, in_channels, T] -> waveform float32 [B, 1, hop * T] in (-1, 1)."""
        x = self.conv_pre(mel.unsqueeze(2) if self.layout_2d else mel)
        nk = len(self.cfg.resblock_kernel_sizes)
        for i, s in enumerate(self.cfg.upsample_scales):
            x = torch.sin(x) + x
            _, act, conv = self.repeat_upsamples[i]
            # Nearest upsampling along time only (the Upsample module at index 0 would also scale H in 2-D).
            rep = conv(act(F.interpolate(x, scale_factor=(1, s) if x.dim() == 4 else s, mode="nearest")))
            up = self.transpose_upsamples[i](x)
            x = rep + up[..., : rep.shape[-1]]
            xs = self.conv_blocks[i * nk](x)
            for j in range(1, nk):
                xs = xs + self.conv_blocks[i * nk + j](x)
            x = xs / nk
        # The reference's final activation is the functional default slope 0.01, not 0.1.
        x = F.leaky_relu(x, 0.01)
        y = torch.tanh(self.conv_post(x))
        return y.squeeze(2) if self.layout_2d else y


@contextmanager
def export_layout_2d(gen: Generator) -> Iterator[Generator]:
    """Run the generator on [B, C, 1, T] tensors with 2-D convolutions (kernels (1, k)) while inside.

    Same weights and numerics; ONNX Runtime's CPU EP only applies its blocked NCHWc convolution
    kernels to 2-D convolutions, which makes the exported vocoder ~20% faster there. Reversible.
    """
    old = gen.layout_2d
    gen.layout_2d = True
    try:
        yield gen
    finally:
        gen.layout_2d = old


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Replace every weight-norm pair by its plain weight (``remove_weight_norm``), in place."""
    for m in module.modules():
        if isinstance(m, _WeightNormed):
            m.fold()
    return module


def receptive_field(cfg: HifiGanConfig, probe_frames: int = 160) -> tuple[int, int]:
    """Exact (left, right) mel-frame context a chunk needs for its output to equal whole-utterance output.

    Structural, not numerical: the same network with every weight set to 1/fan_in (positive), zero
    biases, run in float64 on a one-frame impulse, is positive exactly where an output sample
    depends on that frame (every activation maps positives to positives). Output frame f depends on
    input frame t0 for f in [t0 - right, t0 + left].
    """
    gen = Generator(cfg).double()
    with torch.no_grad():
        for m in gen.modules():
            if isinstance(m, _WeightNormed):
                m.fold()
                w = m.effective_weight()  # folded: the weight itself
                fan_in = w.shape[1] * w.shape[2] if isinstance(m, Conv1d) else w.shape[0]
                w.fill_(1.0 / fan_in)
                if m.bias is not None:
                    m.bias.zero_()
        t0 = probe_frames // 2
        mel = torch.zeros(1, cfg.in_channels, probe_frames, dtype=torch.float64)
        mel[:, :, t0] = 1.0
        y = gen(mel)[0, 0]
    hit = torch.nonzero(y > 0).flatten()
    first, last = int(hit[0]) // cfg.hop, int(hit[-1]) // cfg.hop
    if first == 0 or last == probe_frames - 1:
        return receptive_field(cfg, probe_frames * 2)
    return last - t0, t0 - first
