"""Adapter over diffusers' `FluxTransformer2DModel` (Flux.1 dev and schnell).

Flux works on packed latents: each 2 x 2 patch of the (B, C, H, W) latent is one token of
4 C channels, placed by 3-axis RoPE ids (0, row, column); text tokens sit at ids (0, 0, 0).
The adapter packs and unpacks (as ``FluxPipeline._pack_latents`` / ``_unpack_latents``) so the
engine keeps its (B, C, H, W) call shape. The transformer's time input is sigma in [0, 1]
(the pipeline's timestep / 1000); guidance-distilled dev models also read the guidance strength
as an input (``guidance_embeds``), which is not classifier-free guidance.
"""

from __future__ import annotations

from typing import Any

import torch

from unlearn.networks.mmdit import DiffusersTransformer, build_transformer

__all__ = ["DiffusersFluxTransformer", "pack_latents", "unpack_latents", "latent_image_ids"]


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4 C): one token per 2 x 2 patch, row-major."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H/2 * W/2, 4 C) -> (B, C, H, W), the inverse of `pack_latents`."""
    b, _, c4 = tokens.shape
    x = tokens.view(b, height // 2, width // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, height, width)


def latent_image_ids(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """(height * width, 3) RoPE ids (0, row, column) of a height x width token grid."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)


class DiffusersFluxTransformer(DiffusersTransformer):
    """`forward(x, t, cond)` over a diffusers `FluxTransformer2DModel`.

    ``cond`` keys: ``crossattn`` → ``encoder_hidden_states`` (B, L, joint_attention_dim), T5's
    tokens; ``vector`` → ``pooled_projections`` (B, pooled_projection_dim), CLIP-L's pooled
    output; optional ``guidance`` (B,) overrides ``guidance`` for guidance-distilled models.
    ``t``: the timestep 1000 sigma (the denoiser's `FlowScaling`), passed on as t / 1000 as
    ``FluxPipeline`` does. ``x``: (B, C, H, W) latents, H and W even.

    Args:
        guidance: the guidance strength a ``guidance_embeds`` model (Flux.1-dev) reads as an
            input (FluxPipeline's ``guidance_scale``, 3.5 by default); ignored otherwise.
    """

    def __init__(
        self,
        pretrained_path: str | None = None,
        subfolder: str | None = "transformer",
        config: dict[str, Any] | None = None,
        variant: str | None = None,
        gradient_checkpointing: bool = False,
        guidance: float = 3.5,
        single_file_config: str | None = None,
    ):
        super().__init__()
        self.transformer = build_transformer(
            "FluxTransformer2DModel", pretrained_path, subfolder, config, variant, single_file_config
        )
        self.guidance = float(guidance)
        if gradient_checkpointing:
            self.set_gradient_checkpointing(True)

    @property
    def in_channels(self) -> int:
        """Latent channels: the transformer reads 4 of them per packed token."""
        return int(self.transformer.config.in_channels) // 4

    @staticmethod
    def tokens_for(height: int, width: int) -> int:
        """Packed image tokens of a height x width latent (the image_seq_len of Flux's shift)."""
        return (height // 2) * (width // 2)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """One token per 2 x 2 latent patch (`pack_latents`, row-major)."""
        return height // 2, width // 2

    @property
    def block_names(self) -> list[str]:
        """The double-stream blocks, then the single-stream blocks (text and image tokens in one sequence)."""
        single = self.transformer.single_transformer_blocks
        return super().block_names + [f"transformer.single_transformer_blocks.{i}" for i in range(len(single))]

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    COND_MEANING = "T5 tokens and CLIP's pooled vector"

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        self._check_cond(cond)
        b, _, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"x: Flux packs 2 x 2 latent patches; got latents of {h} x {w}")
        out_dtype, dtype = x.dtype, self.transformer.dtype
        t = (t.expand(b) if t.ndim == 0 else t).to(x.dtype)
        text = cond["crossattn"].to(dtype)  # (B, L, D)
        guidance = None
        if self.guidance_embeds:
            guidance = cond.get("guidance")
            if guidance is None:
                guidance = torch.full([1], self.guidance, device=x.device, dtype=torch.float32).expand(b)
        tokens = self.transformer(
            hidden_states=pack_latents(x).to(dtype),  # (B, H/2 * W/2, 4 C)
            timestep=t / 1000,
            guidance=guidance,
            pooled_projections=cond["vector"].to(dtype),
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=dtype),
            img_ids=latent_image_ids(h // 2, w // 2, x.device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(tokens, h, w).to(out_dtype)
