"""Adapter over diffusers' `UNet2DConditionModel` (SD1.x, SD2.x, SDXL and the toy models)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from unlearn.networks.base import DiffusionNetwork
from unlearn.paths import resolve_local_dir, resolve_local_file
from unlearn.single_file import diffusers_source

log = logging.getLogger(__name__)

_ATTENTION_CHOICES = ("sdpa", "default")


def build_unet(
    pretrained_path: str | None = None,
    subfolder: str | None = "unet",
    single_file: str | None = None,
    single_file_config: str | None = None,
    original_config: str | None = None,
    config: dict[str, Any] | None = None,
    variant: str | None = None,
):
    """Build a diffusers UNet from exactly one local source.

    * ``pretrained_path``: a diffusers pipeline folder (``subfolder="unet"``) or a UNet folder;
      a file here is taken as ``single_file`` (model configs pass ``${model_path}``, either).
    * ``single_file``: an original SD `.safetensors`/`.ckpt`; its architecture comes from
      ``single_file_config`` (a local diffusers pipeline folder) or ``original_config``
      (the LDM YAML), never from a hub.
    * ``config``: a `UNet2DConditionModel` config dict (random weights; tiny and toy models).
    """
    from diffusers import UNet2DConditionModel

    if pretrained_path is not None and single_file is None and Path(pretrained_path).expanduser().is_file():
        pretrained_path, single_file = None, pretrained_path
    sources = [s for s in (pretrained_path, single_file, config) if s is not None]
    if len(sources) != 1:
        raise ValueError(
            "network params: give exactly one of pretrained_path (a diffusers folder), "
            f"single_file (an SD checkpoint) or config (a UNet config dict); got {len(sources)}"
        )
    if config is not None:
        return UNet2DConditionModel(**dict(config))
    if pretrained_path is not None:
        root = resolve_local_dir(
            pretrained_path, "pretrained_path", expected="a diffusers folder with unet/config.json"
        )
        sub = subfolder if subfolder and (root / subfolder).is_dir() else None
        if not (root / (sub or "") / "config.json").is_file():
            raise FileNotFoundError(
                f"pretrained_path: {root} has no {subfolder or '.'}/config.json; expected a diffusers pipeline "
                "folder (unet/, text_encoder/, ...) or a UNet folder saved with save_pretrained"
            )
        return UNet2DConditionModel.from_pretrained(str(root), subfolder=sub, local_files_only=True, variant=variant)
    ckpt = resolve_local_file(single_file, "single_file", "an SD .safetensors or .ckpt file")
    if single_file_config is None and original_config is None:
        raise ValueError(
            "single_file: a single-file checkpoint needs its architecture from a local file: set "
            "single_file_config (a diffusers pipeline folder) or original_config (the LDM .yaml); "
            "unlearn does not fetch configs from a hub"
        )
    kwargs: dict[str, Any] = {"local_files_only": True}
    if single_file_config is not None:
        kwargs["config"] = str(resolve_local_dir(single_file_config, "single_file_config"))
        kwargs["subfolder"] = subfolder
    else:
        kwargs["original_config"] = str(resolve_local_file(original_config, "original_config"))
    return UNet2DConditionModel.from_single_file(diffusers_source(ckpt, "single_file"), **kwargs)


class DiffusersUNet(DiffusionNetwork):
    """`forward(x, t, cond)` over a diffusers UNet, routing the conditioner's outputs.

    ``cond`` keys: ``crossattn`` → ``encoder_hidden_states`` (B, L, D); ``vector`` →
    ``class_labels`` (class-conditional UNets); ``text_embeds`` and ``time_ids`` →
    ``added_cond_kwargs`` (SDXL); ``concat`` → concatenated to ``x`` on channels.
    The bottleneck (DMD2's GAN features) is the mid block, (B, widest block, H/2^k, W/2^k).
    """

    bottleneck_module = "unet.mid_block"

    def __init__(
        self,
        pretrained_path: str | None = None,
        subfolder: str | None = "unet",
        single_file: str | None = None,
        single_file_config: str | None = None,
        original_config: str | None = None,
        config: dict[str, Any] | None = None,
        variant: str | None = None,
        gradient_checkpointing: bool = False,
        attention: str = "sdpa",
    ):
        super().__init__()
        if attention not in _ATTENTION_CHOICES:
            raise ValueError(f"attention: expected one of {_ATTENTION_CHOICES}, got {attention!r}")
        self.unet = build_unet(
            pretrained_path, subfolder, single_file, single_file_config, original_config, config, variant
        )
        if attention == "sdpa":
            from diffusers.models.attention_processor import AttnProcessor2_0

            self.unet.set_attn_processor(AttnProcessor2_0())
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def bottleneck_channels(self) -> int:
        return int(self.unet.config.block_out_channels[-1])

    @property
    def cross_attention_dim(self) -> int | None:
        dim = self.unet.config.cross_attention_dim
        return int(dim) if isinstance(dim, int) else None

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        # x: (B, C, H, W); t: (B,) or scalar. The UNet runs in its own dtype (fp16/bf16 weights
        # included); the output comes back in x's dtype, so samplers keep float32 state.
        out_dtype, dtype = x.dtype, self.unet.dtype
        cond = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in cond.items()}
        x = x.to(dtype)
        if "concat" in cond:
            x = torch.cat([x, cond["concat"]], dim=1)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        added = {k: cond[k] for k in ("text_embeds", "time_ids") if k in cond}
        return self.unet(
            x,
            t,
            encoder_hidden_states=cond.get("crossattn"),
            class_labels=cond.get("vector"),
            added_cond_kwargs=added or None,
            return_dict=False,
        )[0].to(out_dtype)
