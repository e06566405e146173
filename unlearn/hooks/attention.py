"""Masks on the heads of diffusers `Attention` layers, through an attention processor.

`HeadMaskedAttnProcessor` computes attention exactly as diffusers' `AttnProcessor2_0`
(``F.scaled_dot_product_attention``, so PyTorch picks its flash / memory-efficient
kernels) and multiplies each head's output (B, heads, L, head_dim) by that head's mask
before the heads are concatenated and projected by ``to_out``. With the hooker disabled it
calls the processor it replaced. It is installed with the layer's own
``Attention.set_processor`` and the original processor object is put back on removal.

Self- and cross-attention of UNets (SD1/SD2/SDXL) go through that processor. Joint attention
(SD3's MMDiT and Flux's double-stream blocks: image and text tokens attend together, each stream
with its own projections) and Flux's attention modules are masked without touching their
processors: a head's output is the head's slice of what the output projections read, so the
mask scales that slice of the input of ``to_out[0]`` (image stream) and of ``to_add_out`` (text
stream; the same mask, since the head is one attention over both), or, in Flux's single-stream
blocks, whose attention has no output projection, of the attention's own output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.hooks.base import MaskHooker

__all__ = ["AttentionHeadHooker", "HeadMaskedAttnProcessor", "SUPPORTED_PROCESSORS"]

# Processors whose result HeadMaskedAttnProcessor reproduces (up to kernel choice).
SUPPORTED_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor", "XFormersAttnProcessor")


class HeadMaskedAttnProcessor:
    """Scaled dot-product attention with per-head output masks (one per `Attention` layer)."""

    def __init__(self, hooker: AttentionHeadHooker, name: str, original: Any):
        self.hooker = hooker
        self.name = name
        self.original = original

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.hooker.enabled:
            extra = {} if temb is None else {"temb": temb}
            return self.original(
                attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **extra
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:  # (B, C, H, W) -> (B, HW, C)
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        # (B, L, heads * d) -> (B, heads, L, d)
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )  # (B, heads, L, d)
        out = self.hooker.apply_mask(out, self.name, dim=1)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)  # dropout
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class _ProcessorHandle:
    """Puts an `Attention` layer's original processor back."""

    def __init__(self, name: str, module: nn.Module, processor: HeadMaskedAttnProcessor):
        self.name, self.module, self.processor = name, module, processor

    def remove(self) -> None:
        if self.module.processor is not self.processor:
            raise RuntimeError(
                f"attention layer {self.name!r}: its processor was replaced after the head masks were registered "
                f"(now {type(self.module.processor).__name__}); remove hooks in the reverse order of registration"
            )
        self.module.set_processor(self.processor.original)


class AttentionHeadHooker(MaskHooker):
    """One mask unit per attention head of every selected diffusers `Attention` layer."""

    group = "attn"
    unit_name = "head"

    def is_target(self, module: nn.Module) -> bool:
        from diffusers.models.attention import AttentionModuleMixin
        from diffusers.models.attention_processor import Attention

        return isinstance(module, (Attention, AttentionModuleMixin))

    def num_units(self, module: nn.Module) -> int:
        return int(module.heads)

    def attach(self, name: str, module: nn.Module):
        if _is_transformer_attention(module):
            return self._attach_to_projections(name, module)
        original = module.processor
        if type(original).__name__ not in SUPPORTED_PROCESSORS:
            raise ValueError(
                f"attention layer {name!r} uses {type(original).__name__}; head masks reproduce only "
                f"{list(SUPPORTED_PROCESSORS)}: exclude it with exclude_regex or set a standard processor"
            )
        processor = HeadMaskedAttnProcessor(self, name, original)
        module.set_processor(processor)
        return _ProcessorHandle(name, module, processor)

    def _attach_to_projections(self, name: str, module: nn.Module) -> _HookHandles:
        heads = int(module.heads)
        if getattr(module, "pre_only", False):  # Flux single-stream: the output is the heads, concatenated
            return _HookHandles([module.register_forward_hook(self._heads_output_hook(name, heads))])
        projections = [module.to_out[0]]
        if getattr(module, "to_add_out", None) is not None:  # absent where the text stream ends (context_pre_only)
            projections.append(module.to_add_out)
        return _HookHandles([p.register_forward_pre_hook(self._heads_input_hook(name, heads)) for p in projections])

    def _masked_heads(self, h: torch.Tensor, name: str, heads: int) -> torch.Tensor:
        """h (..., heads * d) with head k's d channels scaled by mask[k]."""
        return self.apply_mask(h.unflatten(-1, (heads, -1)), name, dim=h.ndim - 1).flatten(-2)

    def _heads_input_hook(self, name: str, heads: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if not self.enabled:
                return None
            return (self._masked_heads(args[0], name, heads), *args[1:])

        return hook

    def _heads_output_hook(self, name: str, heads: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self.enabled:
                return None
            return self._masked_heads(output, name, heads)

        return hook


def _is_transformer_attention(module: nn.Module) -> bool:
    """Joint (two-stream) attention, or an attention module of diffusers' newer transformer
    classes (Flux's), whose processors the head-masking processor does not reproduce."""
    from diffusers.models.attention_processor import Attention

    return getattr(module, "add_q_proj", None) is not None or not isinstance(module, Attention)


class _HookHandles:
    """Removes the forward hooks of one attention layer."""

    def __init__(self, handles: list):
        self.handles = handles

    def remove(self) -> None:
        for handle in reversed(self.handles):
            handle.remove()
