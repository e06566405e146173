"""Copies of a network for distillation: full copies, or LoRA adapters over shared weights.

DMD2 needs three networks of one architecture: the frozen teacher, the trained generator
and the trained critic. A full copy (`full_copy`) duplicates every weight. A LoRA copy
(`lora_copy`) is a second module tree whose parameters and buffers *are* the teacher's
(the same tensors, not copies) plus low-rank adapters (Hu et al. 2022) injected with
`peft` (``unet.add_adapter`` for diffusers models, as DMD2's SDXL generator does). The
teacher's own modules are left untouched, so calling the teacher needs no adapter
switching, and each copy trains only its adapters.

`merged_state_dict` gives a copy's weights under the plain (diffusers) names with the
adapters folded in, for export.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from unlearn.networks.base import diffusers_root

__all__ = ["DEFAULT_LORA_TARGETS", "NetworkCopy", "full_copy", "lora_copy", "merged_state_dict"]

# The modules DMD2 puts LoRA on (official sd_unified_model.py, SDXL generator).
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)


def full_copy(network: nn.Module) -> nn.Module:
    """An independent, trainable deep copy of ``network``."""
    return copy.deepcopy(network).requires_grad_(True)


def lora_copy(
    network: nn.Module,
    rank: int,
    alpha: float | None = None,
    target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
    adapter_name: str = "default",
) -> nn.Module:
    """A copy of ``network`` sharing all its parameters and buffers, plus trainable LoRA.

    The shared weights are frozen (they are the teacher's); only the adapters train. LoRA's
    B matrices start at zero, so the copy computes exactly what ``network`` does.
    ``alpha`` defaults to ``rank`` (scale 1).
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora rank: expected a positive integer, got {rank!r}")
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:  # pragma: no cover - peft is a declared dependency
        raise ImportError("LoRA copies need peft (pip install peft==0.21.2)") from err
    network.requires_grad_(False)
    shared = {id(t): t for t in [*network.parameters(), *network.buffers()]}
    clone = copy.deepcopy(network, memo=shared)
    root, _ = diffusers_root(clone)
    config = LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else rank),
        target_modules=list(target_modules),
        init_lora_weights=True,
    )
    try:
        if hasattr(root, "add_adapter"):  # diffusers models
            root.add_adapter(config, adapter_name=adapter_name)
        else:
            inject_adapter_in_model(config, root, adapter_name=adapter_name)
    except ValueError as err:  # peft: no target module matched
        raise ValueError(f"lora_target_modules {list(target_modules)} on {type(root).__name__}: {err}") from err
    for name, p in clone.named_parameters():
        p.requires_grad_(".lora_" in name)
    return clone


class NetworkCopy:
    """How a distillation method copies its teacher (a config block): ``lora_rank`` None gives a
    full trainable copy (`full_copy`), an integer a LoRA copy over the shared weights
    (`lora_copy`, with ``lora_alpha`` and ``target_modules``)."""

    def __init__(
        self,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
    ):
        if lora_rank is not None and (isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1):
            raise ValueError(f"lora_rank: expected a positive integer or null (a full copy), got {lora_rank!r}")
        self.lora_rank, self.lora_alpha, self.target_modules = lora_rank, lora_alpha, list(target_modules)

    def __call__(self, network: nn.Module, adapter_name: str = "default") -> nn.Module:
        if self.lora_rank is None:
            return full_copy(network)
        return lora_copy(network, self.lora_rank, self.lora_alpha, self.target_modules, adapter_name=adapter_name)


def _tuner_layer_class() -> tuple[type, ...]:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover
        return ()
    return (BaseTunerLayer,)


@torch.no_grad()
def merged_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """The diffusers state dict (UNet or transformer) of ``network`` with LoRA adapters folded in.

    Keys are those of the plain model (``...to_q.weight``, no ``base_layer`` / ``lora_``);
    a network without adapters gives its state dict as it is. Tensors are detached copies.
    """
    root, _ = diffusers_root(network)
    tuner = _tuner_layer_class()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in root.named_modules():
        if tuner and isinstance(module, tuner):
            adapters = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
            if adapters:
                deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    out: dict[str, torch.Tensor] = {}
    for key, value in root.state_dict().items():
        if ".lora_" in key:
            continue
        if key in deltas:
            value = value + deltas[key].to(value.dtype)
        out[key.replace(".base_layer.", ".")] = value.detach().clone()
    return out
