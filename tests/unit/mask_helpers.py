"""Tiny models shared by the mask-hook and minimalist tests (not a test module)."""

from __future__ import annotations

import torch
from torch import nn

from unlearn.networks import DiffusersUNet

TINY_UNET = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=[8, 16],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    cross_attention_dim=8,
    attention_head_dim=4,  # diffusers' legacy name: 4 heads
    norm_num_groups=4,
)


def tiny_network(seed: int = 0, **overrides) -> DiffusersUNet:
    torch.manual_seed(seed)
    net = DiffusersUNet(config={**TINY_UNET, **overrides})
    net.eval()
    return net


def tiny_inputs(batch: int = 2, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype)
    t = torch.full((batch,), 500.0, dtype=dtype)
    cond = {"crossattn": torch.randn(batch, 5, 8, generator=g, dtype=dtype)}
    return x, t, cond


def randomize(manager, seed: int = 0, scale: float = 2.0) -> None:
    """Spread every λ around 0 so masks differ from unit to unit."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lam in manager.masks().values():
            lam.copy_(scale * torch.randn(lam.shape, generator=g))


class Wrapper(nn.Module):
    """Holds one module under the name ``inner`` (hooks select ``inner``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)
