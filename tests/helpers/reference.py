"""Test oracles: minimal, independent re-statements of the production code they check."""

from __future__ import annotations

import torch
from torch import nn

from rlg.analytic import AnalyticDenoiserOutput
from rlg.guidance import rlg_mix


class ReferenceRLGDenoiser(nn.Module):
    """pred_base + w (pred_rl - pred_base) per sample (``rlg.guidance.rlg_mix``), called like a
    diffusers denoiser. A minimal stand-in for ``rlg.denoiser.RLGDenoiser`` (and an independent check of
    it): set per-sample scales with ``set_scales`` before sampling; no step window."""

    def __init__(self, base: nn.Module, rl: nn.Module):
        super().__init__()
        self.base = base
        self.rl = rl
        self.scales: torch.Tensor | None = None

    def set_scales(self, scales) -> "ReferenceRLGDenoiser":
        self.scales = torch.as_tensor(scales, dtype=torch.float64).reshape(-1)
        return self

    @property
    def config(self):
        return self.base.config

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def device(self):
        return self.base.device

    def forward(self, sample, timestep, *args, return_dict: bool = True, **kwargs):
        if self.scales is None:
            raise RuntimeError("call set_scales(...) before sampling with ReferenceRLGDenoiser")
        if self.scales.numel() != sample.shape[0]:
            raise ValueError(f"{self.scales.numel()} scales for a batch of {sample.shape[0]}")
        pb = self.base(sample, timestep, *args, return_dict=False, **kwargs)[0]
        pr = self.rl(sample, timestep, *args, return_dict=False, **kwargs)[0]
        out = rlg_mix(pb, pr, self.scales)
        return AnalyticDenoiserOutput(sample=out) if return_dict else (out,)
