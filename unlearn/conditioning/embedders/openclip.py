"""OpenCLIP text tower as SD 2.x uses it (sgm's ``FrozenOpenCLIPEmbedder``).

Only the text tower is built (``open_clip`` is imported lazily and never downloads);
weights come from a local checkpoint, either the full open_clip CLIP state dict
(``open_clip_pytorch_model.bin``; ``visual.*`` keys are ignored) or a text-only one.

Layers: ``"last"`` runs every residual block, ``"penultimate"`` stops one block before
the end; both then apply ``ln_final`` (SD 2.x). The pooled vector (``return_pooled``) is
the CLIP text feature: all blocks, ``ln_final``, EOS token, ``text_projection``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from unlearn.paths import resolve_local_file

from .base import AbstractEmbModel

__all__ = ["OpenCLIPTextEmbedder", "load_state_dict_file"]

logger = logging.getLogger(__name__)

# Prefixes under which a text tower's keys appear in the checkpoints we accept.
_PREFIXES = ("", "text.", "model.", "module.", "cond_stage_model.model.")


def load_state_dict_file(path: str, arg: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Load a .safetensors / .bin / .pt / .ckpt state dict on CPU (unwrapping ``state_dict``)."""
    file = resolve_local_file(path, arg)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{arg}={str(path)!r}: expected a state dict, got {type(state).__name__}")
    return state


def _select_text_keys(state: dict[str, torch.Tensor], expected: set[str], path: str) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if all(prefix + key in state for key in expected):
            return {key: state[prefix + key] for key in expected}
    missing = sorted(k for k in expected if k not in state)[:5]
    raise ValueError(
        f"checkpoint={path!r} holds no complete OpenCLIP text tower (tried prefixes {list(_PREFIXES)}); "
        f"missing for example {missing}"
    )


class OpenCLIPTextEmbedder(AbstractEmbModel):
    """Tokenize with open_clip's tokenizer and encode with its text transformer.

    Args:
        arch: open_clip model name whose ``text_cfg`` to build (``"ViT-H-14"`` for SD 2.x).
        checkpoint: local weights file; None keeps the random initialisation.
        model_config: an open_clip model config (``{"embed_dim": ..., "text_cfg": {...},
            "quick_gelu": ...}``) used instead of ``arch`` (tiny models for tests).
        layer: ``"last"`` or ``"penultimate"``.
        max_length: tokens per prompt (at most the model's context length).
        freeze: set ``requires_grad=False`` on the text tower.
        return_pooled: also return the projected text feature: ``(crossattn, pooled)``.
    """

    def __init__(
        self,
        arch: str = "ViT-H-14",
        checkpoint: str | None = None,
        model_config: dict[str, Any] | None = None,
        layer: Literal["last", "penultimate"] = "penultimate",
        max_length: int = 77,
        freeze: bool = True,
        return_pooled: bool = False,
    ) -> None:
        super().__init__()
        if layer not in ("last", "penultimate"):
            raise ValueError(f"layer must be 'last' or 'penultimate', got {layer!r}")
        self.layer = layer
        self.return_pooled = return_pooled
        self.model = self._build_text_tower(arch, model_config)
        if layer == "penultimate" and len(self.model.transformer.resblocks) < 2:
            raise ValueError("layer='penultimate' needs a text tower with at least 2 layers")
        if not 2 <= max_length <= self.model.context_length:
            raise ValueError(f"max_length must be in [2, {self.model.context_length}], got {max_length}")
        self.max_length = max_length
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer = SimpleTokenizer(context_length=max_length)
        if freeze:
            self.freeze()

    @staticmethod
    def _build_text_tower(arch: str, model_config: dict[str, Any] | None) -> nn.Module:
        import open_clip
        from open_clip.model import _build_text_tower

        cfg = model_config if model_config is not None else open_clip.get_model_config(arch)
        if cfg is None:
            raise ValueError(f"arch={arch!r} is not an open_clip model config; see open_clip.list_models()")
        if "embed_dim" not in cfg or "text_cfg" not in cfg:
            raise ValueError("model_config needs 'embed_dim' and 'text_cfg' (open_clip's model config layout)")
        text_cfg = dict(cfg["text_cfg"])
        if text_cfg.get("hf_model_name") or text_cfg.get("embed_cls"):
            raise ValueError("only open_clip's own causal text transformer is supported (no hf_model_name/embed_cls)")
        # pretrained=None by construction: nothing is downloaded.
        return _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=bool(cfg.get("quick_gelu", False)))

    def load_checkpoint(self, checkpoint: str) -> None:
        """Load the text tower's weights from a local file (see `load_state_dict_file`)."""
        state = load_state_dict_file(checkpoint, "checkpoint")
        expected = set(self.model.state_dict().keys())
        self.model.load_state_dict(_select_text_keys(state, expected, str(checkpoint)), strict=True)
        logger.info("loaded OpenCLIP text tower weights from %s", checkpoint)

    def freeze(self) -> None:
        self.model.eval()
        for param in self.model.parameters():
            param.requires_grad = False

    def tokenize(self, text: Sequence[str]) -> torch.Tensor:
        device = self.model.token_embedding.weight.device
        return self.tokenizer(list(text), context_length=self.max_length).to(device)  # (B, L)

    def _run_blocks(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (chosen layer's output, last layer's output when pooling), both (B, L, D)."""
        model = self.model
        blocks = model.transformer.resblocks
        length = tokens.shape[1]
        x = model.token_embedding(tokens) + model.positional_embedding[:length]  # (B, L, D)
        x = x.to(model.transformer.get_cast_dtype())
        attn_mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
        batch_first = getattr(model.transformer, "batch_first", False)
        if not batch_first:
            x = x.transpose(0, 1)  # (L, B, D)
        penultimate = None
        for i, block in enumerate(blocks):
            if self.layer == "penultimate" and i == len(blocks) - 1:
                penultimate = x
                if not self.return_pooled:
                    break  # the last block is not needed
            x = block(x, attn_mask=attn_mask)
        chosen = penultimate if penultimate is not None else x
        last = x if self.return_pooled else None
        if not batch_first:
            chosen = chosen.transpose(0, 1)
            last = last.transpose(0, 1) if last is not None else None
        return chosen, last

    def _pool(self, last: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        model = self.model
        pooled = text_global_pool(model.ln_final(last), tokens, pool_type=model.pool_type, eos_token_id=model.eos_id)
        projection = model.text_projection
        if projection is None:
            return pooled  # (B, D)
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection  # (B, E)

    def forward(self, text: str | Sequence[str]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if isinstance(text, str):
            text = [text]
        tokens = self.tokenize(text)
        chosen, last = self._run_blocks(tokens)
        z = self.model.ln_final(chosen)  # (B, L, D)
        if not self.return_pooled:
            return z
        return z, self._pool(last, tokens)
