"""First stages: map images in [-1, 1] to the space the diffusion model works in and back."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.paths import resolve_local_dir, resolve_local_file
from unlearn.single_file import fallback_folder, holds, require_loaded, safetensors_keys


class FirstStage(nn.Module, ABC):
    """``encode(images) -> z`` and ``decode(z) -> images``; frozen, never trained."""

    #: Spatial downsampling factor between image and model space.
    downsample_factor: int = 1
    #: Channels of the model-space tensor.
    latent_channels: int = 3

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class IdentityFirstStage(FirstStage):
    """Pixel-space models: the model works on the images themselves."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.latent_channels = channels

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class DiffusersAutoencoderKL(FirstStage):
    """SD's VAE (diffusers `AutoencoderKL`) with its latent scale (and SD3-style shift).

    z = (E(x) - shift) * scale, x = D(z / scale + shift). ``scale_factor`` defaults to the
    VAE config's ``scaling_factor`` (0.18215 for SD1/2, 0.13025 for SDXL).

    ``upcast`` (default: the VAE config's ``force_upcast``) runs the VAE in float32 whenever
    it would otherwise compute in float16 (fp16 weights or fp16 autocast), as diffusers' SDXL
    pipeline does: SDXL's VAE overflows in float16. bfloat16 is left alone. Latents and
    images are returned in float32 whatever precision the VAE ran in.

    ``pretrained_path`` may be an original single file (or give it as ``single_file``): its VAE
    (``first_stage_model.*``) is converted with the architecture of ``single_file_config``'s
    ``<subfolder>``; a file without a VAE (Flux.1's) takes it whole from that folder, weights included.
    """

    def __init__(
        self,
        pretrained_path: str | None = None,
        subfolder: str | None = "vae",
        single_file: str | None = None,
        single_file_config: str | None = None,
        config: dict[str, Any] | None = None,
        scale_factor: float | None = None,
        shift_factor: float | None = None,
        sample_posterior: bool = False,
        upcast: bool | None = None,
    ):
        super().__init__()
        from diffusers import AutoencoderKL

        if pretrained_path is not None and single_file is None and Path(pretrained_path).expanduser().is_file():
            pretrained_path, single_file = None, pretrained_path  # a single SD checkpoint file
        sources = [s for s in (pretrained_path, single_file, config) if s is not None]
        if len(sources) != 1:
            raise ValueError("first_stage_config params: give exactly one of pretrained_path, single_file or config")
        if config is not None:
            vae = AutoencoderKL(**dict(config))
        elif pretrained_path is not None:
            root = resolve_local_dir(pretrained_path, "first_stage_config.params.pretrained_path")
            sub = subfolder if subfolder and (root / subfolder).is_dir() else None
            vae = AutoencoderKL.from_pretrained(str(root), subfolder=sub, local_files_only=True)
        else:
            vae = _vae_from_single_file(single_file, single_file_config, subfolder)
        vae.requires_grad_(False)
        vae.eval()
        self.vae = vae
        self.scale_factor = float(scale_factor if scale_factor is not None else vae.config.scaling_factor)
        shift = shift_factor if shift_factor is not None else getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(shift or 0.0)
        self.sample_posterior = sample_posterior
        self.downsample_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)
        self.upcast = bool(getattr(vae.config, "force_upcast", False) if upcast is None else upcast)

    def train(self, mode: bool = True):
        # The VAE stays in eval mode whatever the engine does: it is never trained here.
        super().train(False)
        return self

    def _needs_upcast(self, device_type: str) -> bool:
        if not self.upcast:
            return False
        if self.vae.dtype == torch.float16:
            return True
        return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16

    @contextlib.contextmanager
    def _precision(self, device_type: str) -> Iterator[torch.dtype]:
        """Yield the dtype to run the VAE in; float32 (autocast off) where fp16 would overflow."""
        if not self._needs_upcast(device_type):
            yield self.vae.dtype
            return
        weights_dtype = self.vae.dtype
        self.vae.to(torch.float32)
        try:
            with torch.autocast(device_type, enabled=False):
                yield torch.float32
        finally:
            self.vae.to(weights_dtype)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) in [-1, 1] -> z: (B, C, H/f, W/f)
        with self._precision(x.device.type) as dtype:
            dist = self.vae.encode(x.to(dtype)).latent_dist
            z = dist.sample() if self.sample_posterior else dist.mode()
        return (z.float() - self.shift_factor) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z / self.scale_factor + self.shift_factor
        with self._precision(z.device.type) as dtype:
            return self.vae.decode(z.to(dtype)).sample.float()


def _vae_from_single_file(single_file: str, single_file_config: str | None, subfolder: str | None):
    """The VAE of an original single file (``first_stage_model.*``), converted by diffusers with the
    architecture of ``single_file_config/<subfolder>``; a file without one (Flux.1's) leaves the VAE
    to that folder, which then holds its weights."""
    from diffusers import AutoencoderKL

    ckpt = resolve_local_file(single_file, "first_stage_config.params.single_file")
    if not holds(safetensors_keys(ckpt, "first_stage_config.params.single_file"), "vae"):
        root = fallback_folder(single_file, single_file_config, subfolder, "VAE")
        return AutoencoderKL.from_pretrained(str(root), subfolder=subfolder, local_files_only=True)
    if single_file_config is None:
        raise ValueError("first_stage_config.params.single_file needs single_file_config (a local diffusers folder)")
    cfg_dir = resolve_local_dir(single_file_config, "first_stage_config.params.single_file_config")
    vae = AutoencoderKL.from_single_file(str(ckpt), config=str(cfg_dir), subfolder=subfolder, local_files_only=True)
    require_loaded(vae, "first_stage_config.params.single_file", single_file, cfg_dir / (subfolder or ""), "VAE")
    return vae


class PixelUnshuffleFirstStage(FirstStage):
    """Lossless space-to-depth: ``(C, H, W)`` images <-> ``(C*f*f, H/f, W/f)`` model space.

    A parameter-free "autoencoder" for small pixel models: each f x f patch becomes one
    position with C*f*f channels, so the UNet works at 1/f the resolution (about f^2 fewer
    FLOPs per layer of the same width) while nothing is lost on decoding. Gaussian noise is
    still Gaussian after the permutation, so the diffusion is exactly pixel-space diffusion;
    only the network's receptive field per layer changes.
    """

    def __init__(self, factor: int = 2, channels: int = 3):
        super().__init__()
        if factor < 1:
            raise ValueError(f"first_stage_config params.factor must be >= 1, got {factor}")
        self.downsample_factor = int(factor)
        self.latent_channels = int(channels) * self.downsample_factor**2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_unshuffle(x, self.downsample_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_shuffle(z, self.downsample_factor)
