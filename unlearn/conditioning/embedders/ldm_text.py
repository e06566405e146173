"""Text encoders read from a single checkpoint file (original LDM / sgm / SAI SD3 key layout).

A single ``.safetensors``/``.ckpt`` holds its text encoder(s) under a prefix:

* ``cond_stage_model.transformer.``: CLIP ViT-L/14 (SD 1.x), transformers layout;
* ``cond_stage_model.model.``: OpenCLIP ViT-H/14 with all 24 layers (SD 2.x);
* ``conditioner.embedders.0.transformer.``: CLIP ViT-L/14 (SDXL's first encoder);
* ``conditioner.embedders.1.model.``: OpenCLIP ViT-bigG/14 (SDXL's second encoder);
* ``conditioner.embedders.0.model.``: OpenCLIP ViT-bigG/14 (the SDXL refiner's only encoder);
* ``text_encoders.clip_l.transformer.``, ``text_encoders.clip_g.transformer.``: SD3's CLIP-L and
  CLIP-G, transformers layout;
* ``text_encoders.t5xxl.transformer.``: SD3's T5-XXL (`t5_from_single_file`), transformers layout.

The architecture comes from a local diffusers folder (``<subfolder>/config.json``); the
weights are converted with diffusers' own single-file converters, so the result equals
what ``StableDiffusion*Pipeline.from_single_file`` builds. Unlike diffusers (which loads
non-strictly), every weight of the model must come from the file.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from unlearn.single_file import COMPONENT_PREFIXES, config_root, read_tensors, unloaded

__all__ = ["clip_from_single_file", "t5_from_single_file"]

logger = logging.getLogger(__name__)

# (prefix, layout, key of the token embedding under the prefix), in embedder order.
_PREFIXES = (
    ("cond_stage_model.transformer.", "clip", "text_model.embeddings.token_embedding.weight"),
    ("cond_stage_model.model.", "open_clip", "token_embedding.weight"),
    ("conditioner.embedders.0.transformer.", "clip", "text_model.embeddings.token_embedding.weight"),
    ("conditioner.embedders.0.model.", "open_clip", "token_embedding.weight"),
    ("conditioner.embedders.1.model.", "open_clip", "token_embedding.weight"),
    ("text_encoders.clip_l.transformer.", "clip", "text_model.embeddings.token_embedding.weight"),
    ("text_encoders.clip_g.transformer.", "clip", "text_model.embeddings.token_embedding.weight"),
)
# SD3 reads CLIP-L's pooled output unprojected (SAI's reference code), so diffusers' from_single_file
# gives that encoder an identity text_projection, whatever the file holds; so does this loader.
_UNPROJECTED = "text_encoders.clip_l.transformer."
_T5_PREFIX = "text_encoders.t5xxl.transformer."


def _choose_prefix(checkpoint: dict[str, torch.Tensor], width: int, subfolder: str | None, path: str):
    found = [(p, kind, k) for p, kind, k in _PREFIXES if p + k in checkpoint]
    fits = [(p, kind) for p, kind, k in found if checkpoint[p + k].shape[-1] == width]
    if not fits:
        widths = {p: int(checkpoint[p + k].shape[-1]) for p, _, k in found}
        raise ValueError(
            f"pretrained_path={path!r} holds no text encoder of width {width} (the config's hidden_size); "
            f"text encoders found: {widths or 'none'}"
        )
    # Same width twice (tiny test models): text_encoder_2 is the later embedder.
    return fits[-1] if len(fits) > 1 and (subfolder or "").endswith("_2") else fits[0]


def _clip_state(checkpoint: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}


def _expected_extra(key: str, kind: str, n_layers: int) -> bool:
    if key.endswith("position_ids") or (kind == "open_clip" and key == "text_projection.weight"):
        return True
    m = re.search(r"encoder\.layers\.(\d+)\.", key)
    return kind == "open_clip" and m is not None and int(m.group(1)) == n_layers


def clip_from_single_file(path: str, config_dir: str | None, subfolder: str | None, with_projection: bool) -> nn.Module:
    """Build the transformers CLIP text model ``subfolder`` of ``config_dir`` with weights from ``path``."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    needs = f"{subfolder or 'text_encoder'}/config.json and the tokenizer (no weights needed)"
    root = config_root(path, config_dir, needs, subfolder)
    config = CLIPTextConfig.from_pretrained(str(root), subfolder=subfolder or "", local_files_only=True)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = cls(config)
    checkpoint = read_tensors(path, COMPONENT_PREFIXES["clip"])
    prefix, kind = _choose_prefix(checkpoint, config.hidden_size, subfolder, path)
    if kind == "clip":
        state = _clip_state(checkpoint, prefix)
    else:
        state = convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
    if prefix == _UNPROJECTED and with_projection:
        state["text_projection.weight"] = torch.eye(config.hidden_size)
    # transformers >= 5.6 flattens CLIPTextModel (no "text_model." level); the file always has it.
    wanted = set(model.state_dict())
    if not any(k.startswith("text_model.") for k in wanted):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    # diffusers' SD 2.x text encoder drops OpenCLIP's last layer (the penultimate layer becomes
    # its last_hidden_state), so that layer's weights are expected extras in an OpenCLIP file.
    unexpected = [k for k in unexpected if not _expected_extra(k, kind, config.num_hidden_layers)]
    if missing or unexpected:
        raise ValueError(
            f"pretrained_path={path!r}: the text encoder under {prefix!r} does not fit {root}/{subfolder}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    logger.info("loaded %s from %s (prefix %s, config %s)", cls.__name__, path, prefix, root / (subfolder or ""))
    return model


def t5_from_single_file(path: str, config_dir: str | None, subfolder: str | None) -> nn.Module:
    """The transformers T5 encoder ``subfolder`` of ``config_dir`` with SD3's T5-XXL weights from ``path``
    (fp8 files included: the weights load in the model's float32, as diffusers loads them)."""
    from diffusers.loaders.single_file_utils import (
        convert_sd3_t5_checkpoint_to_diffusers,
        create_diffusers_t5_model_from_checkpoint,
    )
    from transformers import T5EncoderModel

    needs = f"{subfolder or 'text_encoder_3'}/config.json and the tokenizer (no weights needed)"
    root = config_root(path, config_dir, needs, subfolder)
    checkpoint = read_tensors(path, (_T5_PREFIX,))
    model = create_diffusers_t5_model_from_checkpoint(
        T5EncoderModel, checkpoint, subfolder=subfolder or "", config=str(root), local_files_only=True
    )
    model.tie_weights()  # files store the input embedding once, as ``shared``; diffusers leaves its tie unset
    unexpected = sorted(set(convert_sd3_t5_checkpoint_to_diffusers(checkpoint)) - set(model.state_dict()))
    missing = unloaded(model)
    if missing or unexpected:
        raise ValueError(
            f"pretrained_path={path!r}: the T5 encoder under {_T5_PREFIX!r} does not fit {root}/{subfolder}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    logger.info("loaded T5EncoderModel from %s (config %s)", path, root / (subfolder or ""))
    return model
