"""`GeneralConditioner`: run every embedder on a batch and gather their outputs by key.

Built like sgm's conditioner: ``emb_models`` is a list of blocks, each a ``target`` /
``params`` config plus conditioner-level keys::

    - target: unlearn.conditioning.CLIPTextEmbedder
      params: {pretrained_path: checkpoints/sd15, subfolder: text_encoder}
      input_key: txt            # or input_keys: [a, b] (passed positionally)
      is_trainable: false       # frozen: no grad, eval mode kept, run under no_grad
      ucg_rate: 0.1             # classifier-free-guidance dropout while training
      legacy_ucg_value: ""      # replace dropped inputs by this; None: zero the output
      output_key: null          # route by ndim; or a key; or one key per output
      join: channels            # or tokens: append along the token axis (below)

Routing: an output of ndim 2 goes to ``"vector"``, 3 to ``"crossattn"``, 4 to
``"concat"``, unless ``output_key`` names the key (SDXL: ``"text_embeds"``,
``"time_ids"``). Outputs that share a key are concatenated in embedder order: along
dim 1 for ``"concat"`` (channels), along the last dim for every other key. An embedder with
``join: tokens`` instead appends its (B, L, D) output to what the earlier ones gave along the
token axis (dim 1), zero-padding the narrower on channels: SD3's joint text tokens, CLIP-L and
CLIP-G side by side (77 tokens, 2048 channels) padded to T5's 4096 and followed by T5's tokens,
as ``StableDiffusion3Pipeline.encode_prompt`` builds them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import instantiate_from_config
from .embedders.base import AbstractEmbModel

__all__ = ["GeneralConditioner", "OUTPUT_DIM2KEYS", "KEY2CATDIM"]

logger = logging.getLogger(__name__)

OUTPUT_DIM2KEYS = {2: "vector", 3: "crossattn", 4: "concat"}
KEY2CATDIM = {"concat": 1}  # every other key concatenates along the last dim
_CONDITIONER_KEYS = ("input_key", "input_keys", "is_trainable", "ucg_rate", "legacy_ucg_value", "output_key", "join")
_JOINS = ("channels", "tokens")


def _build_embedder(entry: Any, index: int) -> AbstractEmbModel:
    """Build one ``emb_models`` entry and set its conditioner-level attributes."""
    where = f"emb_models[{index}]"
    if isinstance(entry, AbstractEmbModel):
        return entry  # already built, attributes set by the caller
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a config block with 'target', got {type(entry).__name__}")
    entry = dict(entry)
    unknown = set(entry) - {"target", "params", *_CONDITIONER_KEYS}
    if unknown:
        allowed = ", ".join(("target", "params", *_CONDITIONER_KEYS))
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {allowed}")
    if ("input_key" in entry) == ("input_keys" in entry):
        raise ValueError(f"{where}: give exactly one of 'input_key' or 'input_keys'")
    block = {"target": entry.get("target"), "params": entry.get("params") or {}}
    embedder = instantiate_from_config(block, _path=where)
    if not isinstance(embedder, AbstractEmbModel):
        raise ValueError(f"{where}: {entry['target']} is not an AbstractEmbModel subclass")
    if "input_keys" in entry:
        keys = entry["input_keys"]
        if isinstance(keys, str) or not keys:
            raise ValueError(f"{where}.input_keys: expected a non-empty list of batch keys, got {keys!r}")
        embedder.input_keys = [str(k) for k in keys]
    else:
        embedder.input_key = str(entry["input_key"])
    embedder.is_trainable = bool(entry.get("is_trainable", False))
    rate = float(entry.get("ucg_rate", 0.0))
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{where}.ucg_rate: expected a probability in [0, 1], got {rate}")
    embedder.ucg_rate = rate
    embedder.legacy_ucg_value = entry.get("legacy_ucg_value")
    if entry.get("output_key") is not None:
        out_key = entry["output_key"]
        embedder.output_key = str(out_key) if isinstance(out_key, str) else [str(k) for k in out_key]
    join = entry.get("join", "channels")
    if join not in _JOINS:
        raise ValueError(f"{where}.join: expected one of {_JOINS}, got {join!r}")
    embedder.join = str(join)
    return embedder


def _cat_tokens(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, La, Da), (B, Lb, Db) -> (B, La + Lb, max(Da, Db)), each zero-padded on channels."""
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"join: tokens needs (B, L, D) outputs, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    width = max(a.shape[-1], b.shape[-1])
    return torch.cat([F.pad(a, (0, width - a.shape[-1])), F.pad(b, (0, width - b.shape[-1]))], dim=1)


def _join(key: str, parts: list[tuple[torch.Tensor, str]]) -> torch.Tensor:
    """The outputs gathered under ``key``, joined in embedder order."""
    dim = KEY2CATDIM.get(key, -1)
    if all(join == "channels" for _, join in parts):
        return torch.cat([emb for emb, _ in parts], dim=dim)
    out = parts[0][0]
    for emb, join in parts[1:]:
        out = _cat_tokens(out, emb) if join == "tokens" else torch.cat([out, emb], dim=dim)
    return out


def _batch_size(value: Any) -> int:
    return value.shape[0] if isinstance(value, torch.Tensor) else len(value)


def _replace_where(value: Any, drop: torch.Tensor, replacement: Any) -> Any:
    """Return ``value`` with the samples where ``drop`` is True replaced (input untouched)."""
    if isinstance(value, torch.Tensor):
        value = value.clone()
        value[drop.to(value.device)] = replacement
        return value
    return [replacement if d else v for v, d in zip(value, drop.tolist())]


class GeneralConditioner(nn.Module):
    """Embed a batch with several embedders; return ``{key: tensor}`` for the network.

    Args:
        emb_models: config blocks (see the module docstring) or built `AbstractEmbModel`s.
    """

    def __init__(self, emb_models: Sequence[Mapping[str, Any] | AbstractEmbModel]) -> None:
        super().__init__()
        if not emb_models:
            raise ValueError("emb_models: expected at least one embedder config")
        embedders = []
        for i, entry in enumerate(emb_models):
            embedder = _build_embedder(entry, i)
            if not embedder.batch_keys:
                raise ValueError(f"emb_models[{i}]: the embedder has no input_key")
            params = list(embedder.parameters())
            if embedder.is_trainable:
                if params and not any(p.requires_grad for p in params):
                    logger.warning(
                        "emb_models[%d] (%s): is_trainable is true but it has no trainable parameters "
                        "(built with freeze=True?)",
                        i,
                        type(embedder).__name__,
                    )
            else:
                embedder.eval()
                for param in params:
                    param.requires_grad = False
            logger.info(
                "embedder %d: %s on %s, trainable=%s, ucg_rate=%s, %d params",
                i,
                type(embedder).__name__,
                embedder.batch_keys,
                embedder.is_trainable,
                embedder.ucg_rate,
                sum(p.numel() for p in params),
            )
            embedders.append(embedder)
        self.embedders = nn.ModuleList(embedders)

    @property
    def input_keys(self) -> set[str]:
        """Every batch key some embedder reads."""
        return {key for emb in self.embedders for key in emb.batch_keys}

    def train(self, mode: bool = True) -> GeneralConditioner:
        """Switch mode, keeping frozen embedders in eval mode (dropout, norms) always."""
        super().train(mode)
        for embedder in self.embedders:
            if not embedder.is_trainable:
                embedder.eval()
        return self

    def _inputs(self, embedder: AbstractEmbModel, batch: Mapping[str, Any]) -> list[Any]:
        for key in embedder.batch_keys:
            if key not in batch:
                raise ValueError(
                    f"{type(embedder).__name__} needs batch key {key!r}, but the batch has keys {sorted(batch)}"
                )
        return [batch[key] for key in embedder.batch_keys]

    def _embed(
        self, embedder: AbstractEmbModel, batch: Mapping[str, Any], zero: bool, generator: torch.Generator | None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        inputs = self._inputs(embedder, batch)
        drop = None  # (B,) bool, True = drop this sample's condition
        if self.training and embedder.ucg_rate > 0.0:
            probs = torch.full((_batch_size(inputs[0]),), embedder.ucg_rate)
            drop = torch.bernoulli(probs, generator=generator).bool()
            if embedder.legacy_ucg_value is not None:
                inputs = [_replace_where(x, drop, embedder.legacy_ucg_value) for x in inputs]
        grad = contextlib.nullcontext() if embedder.is_trainable else torch.no_grad()
        with grad:
            outputs = embedder(*inputs)
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        keys = embedder.output_key
        if isinstance(keys, str):
            keys = [keys]
        if keys is not None and len(keys) != len(outputs):
            raise ValueError(
                f"{type(embedder).__name__}: output_key has {len(keys)} key(s) but the embedder returns "
                f"{len(outputs)} tensor(s)"
            )
        for i, emb in enumerate(outputs):
            if keys is not None:
                key = keys[i]
            elif emb.ndim in OUTPUT_DIM2KEYS:
                key = OUTPUT_DIM2KEYS[emb.ndim]
            else:
                raise ValueError(
                    f"{type(embedder).__name__}: cannot route an output of shape {tuple(emb.shape)}; set output_key"
                )
            if drop is not None and embedder.legacy_ucg_value is None:
                keep = (~drop).to(device=emb.device, dtype=emb.dtype)
                emb = emb * keep.reshape(-1, *([1] * (emb.ndim - 1)))
            if zero:
                emb = torch.zeros_like(emb)
            yield key, emb

    def forward(
        self,
        batch: Mapping[str, Any],
        force_zero_embeddings: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Embed ``batch``; embedders reading a key in ``force_zero_embeddings`` output zeros.

        ``generator`` (a CPU `torch.Generator`) seeds the ucg dropout draws.
        """
        force_zero = set(force_zero_embeddings or ())
        gathered: dict[str, list[tuple[torch.Tensor, str]]] = {}
        for embedder in self.embedders:
            zero = any(key in force_zero for key in embedder.batch_keys)
            for key, emb in self._embed(embedder, batch, zero, generator):
                gathered.setdefault(key, []).append((emb, getattr(embedder, "join", "channels")))
        return {key: _join(key, parts) for key, parts in gathered.items()}

    def get_unconditional_conditioning(
        self,
        batch_c: Mapping[str, Any],
        batch_uc: Mapping[str, Any] | None = None,
        force_uc_zero_embeddings: Sequence[str] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Return ``(c, uc)`` for guidance, with ucg dropout disabled for both."""
        rates = [embedder.ucg_rate for embedder in self.embedders]
        try:
            for embedder in self.embedders:
                embedder.ucg_rate = 0.0
            c = self(batch_c)
            uc = self(batch_c if batch_uc is None else batch_uc, force_uc_zero_embeddings)
        finally:
            for embedder, rate in zip(self.embedders, rates):
                embedder.ucg_rate = rate
        return c, uc
