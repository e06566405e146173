"""Adapter over diffusers' `SD3Transformer2DModel` (MMDiT: Stable Diffusion 3 / 3.5).

The transformer predicts the rectified-flow velocity at timestep 1000 sigma (the denoiser's
`FlowScaling` passes that timestep), from two text inputs the conditioner makes (Esser et al.
2024, Sec. 4, Fig. 2): the joint text tokens ``crossattn`` (B, L, joint_attention_dim) that share
every attention with the image tokens, and the pooled vector ``vector`` (B, pooled_projection_dim)
that modulates every block with the timestep.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch

from unlearn.networks.base import DiffusionNetwork
from unlearn.paths import resolve_local_dir
from unlearn.single_file import (
    COMPONENT_PREFIXES,
    SAFETENSORS,
    config_root,
    diffusers_source,
    holds,
    require_loaded,
    safetensors_keys,
)

log = logging.getLogger(__name__)

__all__ = ["build_transformer", "DiffusersSD3Transformer", "token_map"]


# The kind of network (unlearn.single_file.COMPONENT_PREFIXES) each diffusers class reads from a single file.
_SINGLE_FILE_KINDS = {"SD3Transformer2DModel": "sd3_transformer", "FluxTransformer2DModel": "flux_transformer"}


def build_transformer(
    model_class: str,
    pretrained_path: str | None = None,
    subfolder: str | None = "transformer",
    config: dict[str, Any] | None = None,
    variant: str | None = None,
    single_file_config: str | None = None,
):
    """A diffusers transformer (``model_class``, e.g. ``"SD3Transformer2DModel"``) from one local source.

    * ``pretrained_path``: a diffusers pipeline folder (``subfolder="transformer"``) or a
      transformer folder, as ``save_pretrained`` writes them; or one original ``.safetensors``
      (SAI's SD3 / 3.5 layout, BFL's Flux.1 layout), whose architecture comes from
      ``single_file_config/<subfolder>/config.json``. Nothing is downloaded.
    * ``config``: the model's config dict (random weights; tiny models).
    """
    import diffusers

    cls = getattr(diffusers, model_class)
    if (pretrained_path is None) == (config is None):
        raise ValueError(
            "network params: give exactly one of pretrained_path (a local diffusers folder or single file) or "
            f"config (a {model_class} config dict)"
        )
    if config is not None:
        return cls(**dict(config))
    if Path(pretrained_path).expanduser().is_file():
        return _from_single_file(cls, pretrained_path, subfolder, single_file_config)
    expected = f"a diffusers folder with {subfolder or '.'}/config.json"
    root = resolve_local_dir(pretrained_path, "pretrained_path", expected=expected)
    sub = subfolder if subfolder and (root / subfolder).is_dir() else None
    if not (root / (sub or "") / "config.json").is_file():
        raise FileNotFoundError(
            f"pretrained_path: {root} has no {subfolder or '.'}/config.json; expected a diffusers pipeline "
            f"folder (transformer/, vae/, text_encoder/, ...) or a {model_class} folder saved with save_pretrained"
        )
    log.info("loading %s from %s (subfolder %s)", model_class, root, sub)
    return cls.from_pretrained(str(root), subfolder=sub, local_files_only=True, variant=variant)


def _from_single_file(cls, path: str, subfolder: str | None, config_dir: str | None):
    """``cls.from_single_file``: diffusers converts the original keys; unlike diffusers (which leaves
    weights the file lacks uninitialised), every weight of the model must come from the file."""
    name, file = cls.__name__, Path(path).expanduser()
    if file.suffix != SAFETENSORS:
        raise ValueError(
            f"pretrained_path={path!r}: {name} single files are read from {SAFETENSORS} only (as they are "
            "released); a pickled checkpoint is never opened"
        )
    sub = subfolder or "."
    root = config_root(path, config_dir, f"{sub}/config.json")
    if not (root / (subfolder or "") / "config.json").is_file():
        raise FileNotFoundError(f"single_file_config={config_dir!r} has no {sub}/config.json ({name}'s architecture)")
    kind = _SINGLE_FILE_KINDS.get(name)
    if kind and not holds(safetensors_keys(file, "pretrained_path"), kind):
        raise ValueError(
            f"pretrained_path={path!r} holds no {name} (no keys under {', '.join(COMPONENT_PREFIXES[kind])})"
        )
    log.info("loading %s from %s (config %s)", name, file, root / (subfolder or ""))
    source = diffusers_source(file, "pretrained_path")
    model = cls.from_single_file(source, config=str(root), subfolder=subfolder, local_files_only=True)
    require_loaded(model, "pretrained_path", path, root / (subfolder or ""), name)
    return model


def token_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Image tokens (B, height * width, D) in row-major grid order -> a feature map (B, D, height, width)."""
    b, n, d = tokens.shape
    if n != height * width:
        raise ValueError(f"tokens: expected {height} x {width} = {height * width} image tokens, got {n}")
    return tokens.transpose(1, 2).reshape(b, d, height, width)


class DiffusersTransformer(DiffusionNetwork):
    """What the adapters of diffusers' joint-attention transformers share: ``self.transformer``,
    gradient checkpointing, the text conditioning every call needs, and the bottleneck.

    A transformer has no spatial bottleneck; its counterpart of a UNet's mid block (DMD2's GAN
    features) is the image stream after the middle block of ``block_names``, un-packed from its
    token grid to (B, heads x head dim, h, w).
    """

    transformer: torch.nn.Module
    COND_KEYS = ("crossattn", "vector")
    COND_MEANING = "text tokens and the pooled vector"

    @property
    def block_names(self) -> list[str]:
        """The transformer blocks in the order they run, as names in this adapter."""
        return [f"transformer.transformer_blocks.{i}" for i in range(len(self.transformer.transformer_blocks))]

    @abstractmethod
    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w): the image-token grid of a height x width latent."""

    @property
    def bottleneck_module(self) -> str:
        names = self.block_names
        return names[(len(names) - 1) // 2]  # of 2k blocks, the k-th: half the depth has run

    @property
    def bottleneck_channels(self) -> int:
        config = self.transformer.config
        return int(config.num_attention_heads * config.attention_head_dim)

    def bottleneck_map(self, output: Any, height: int, width: int) -> torch.Tensor:
        # diffusers' blocks return (text tokens, image tokens); the single-stream Flux blocks of
        # older diffusers return one sequence, text then image: the image tokens are the last h * w.
        tokens = output[-1] if isinstance(output, (tuple, list)) else output  # (B, [L +] h w, D)
        h, w = self.token_grid(height, width)
        return token_map(tokens[:, tokens.shape[1] - h * w :], h, w)  # (B, D, h, w)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    def _check_cond(self, cond: dict[str, torch.Tensor]) -> None:
        for key in self.COND_KEYS:
            if key not in cond:
                raise ValueError(
                    f"{type(self).__name__} needs cond[{key!r}] ({self.COND_MEANING}); "
                    f"the conditioner gave {sorted(cond)}"
                )


class DiffusersSD3Transformer(DiffusersTransformer):
    """`forward(x, t, cond)` over a diffusers `SD3Transformer2DModel`.

    ``cond`` keys: ``crossattn`` → ``encoder_hidden_states`` (B, L, joint_attention_dim), the
    joint text tokens (SD3: CLIP-L and CLIP-G penultimate states side by side, zero-padded to
    T5's width, then T5's tokens); ``vector`` → ``pooled_projections`` (B, pooled_projection_dim),
    the two CLIP pooled outputs side by side. ``t``: the timestep, 1000 sigma. Attention is
    diffusers' joint SDPA processor.
    """

    def __init__(
        self,
        pretrained_path: str | None = None,
        subfolder: str | None = "transformer",
        config: dict[str, Any] | None = None,
        variant: str | None = None,
        gradient_checkpointing: bool = False,
        single_file_config: str | None = None,
    ):
        super().__init__()
        self.transformer = build_transformer(
            "SD3Transformer2DModel", pretrained_path, subfolder, config, variant, single_file_config
        )
        if gradient_checkpointing:
            self.set_gradient_checkpointing(True)

    @property
    def in_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """One token per patch_size x patch_size patch (`PatchEmbed`, row-major)."""
        patch = int(self.transformer.config.patch_size)
        return height // patch, width // patch

    @property
    def joint_attention_dim(self) -> int:
        """Channels of the text tokens the transformer reads (T5-XXL's 4096 for SD3)."""
        return int(self.transformer.config.joint_attention_dim)

    COND_MEANING = "joint text tokens and the pooled vector"

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        # x: (B, C, H, W); t: (B,) or scalar. Runs in the transformer's dtype, returns x's dtype.
        self._check_cond(cond)
        out_dtype, dtype = x.dtype, self.transformer.dtype
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return self.transformer(
            hidden_states=x.to(dtype),
            timestep=t,
            encoder_hidden_states=cond["crossattn"].to(dtype),
            pooled_projections=cond["vector"].to(dtype),
            return_dict=False,
        )[0].to(out_dtype)
