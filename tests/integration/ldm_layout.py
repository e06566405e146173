"""Write a diffusers SD pipeline as one original (LDM / CompVis) checkpoint file (not a test module).

diffusers ships only the other direction (``diffusers.loaders.single_file_utils``, used by
``from_single_file``); its ``scripts/convert_diffusers_to_original_stable_diffusion.py`` is
not importable. This is the minimal inverse of those converters for the blocks the tiny
test pipelines use (SD 1.x / 2.x UNets, the KL VAE, CLIP and OpenCLIP text encoders), so a
test can check that a single file loads to exactly the weights of the folder it came from.
"""

from __future__ import annotations

import re

import torch

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_RESNET[name]}.{tail}"


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """``model.diffusion_model.*`` keys of an LDM ``UNetModel`` for a diffusers UNet2DConditionModel."""
    cfg = unet.config
    per_level = cfg.layers_per_block + 1
    up_has_attn = ["CrossAttn" in t for t in cfg.up_block_types]
    out = {}
    for key, value in unet.state_dict().items():
        stem, _, leaf = key.rpartition(".")
        if stem in _UNET_TOP:
            new = f"{_UNET_TOP[stem]}.{leaf}"
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            idx = 1 + b * per_level + layer
            new = f"input_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{1 + int(m[1]) * per_level + cfg.layers_per_block}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            idx = b * per_level + layer
            new = f"output_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b = int(m[1])
            new = f"output_blocks.{b * per_level + cfg.layers_per_block}.{2 if up_has_attn[b] else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """``first_stage_model.*`` keys of an LDM ``AutoencoderKL`` (attention as 1x1 convolutions)."""
    n_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(text_encoder, prefix: str = "cond_stage_model.transformer.") -> dict[str, torch.Tensor]:
    """A transformers CLIP text model under ``prefix`` (SD 1.x keeps transformers' own names)."""
    state = text_encoder.state_dict()
    return {
        prefix + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in state.items()
        if not k.endswith("position_ids")
    }


_OPENCLIP = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def openclip_to_ldm(
    text_encoder, extra_layer: bool = True, prefix: str = "cond_stage_model.model."
) -> dict[str, torch.Tensor]:
    """A CLIP text model as the OpenCLIP text tower SD 2.x / SDXL checkpoints hold (fused q/k/v).

    ``extra_layer`` appends one random last block: diffusers' SD 2.x text encoder is OpenCLIP
    with its last layer removed, so a real file has one layer more than the folder's model.
    """
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {
        "token_embedding.weight": state["embeddings.token_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"],
        "ln_final.bias": state["final_layer_norm.bias"],
    }
    n = text_encoder.config.num_hidden_layers
    for i in range(n + int(extra_layer)):
        src = min(i, n - 1)
        noise = (lambda t: t + 0.1 * torch.randn_like(t)) if i == n else (lambda t: t)
        layer = {
            k.removeprefix(f"encoder.layers.{src}."): v
            for k, v in state.items()
            if k.startswith(f"encoder.layers.{src}.")
        }
        base = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [layer[f"self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[base + f"attn.in_proj_{kind}"] = noise(torch.cat(qkv))
        for name, value in layer.items():
            if name.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                continue
            stem, _, leaf = name.rpartition(".")
            out[base + f"{_OPENCLIP[stem]}.{leaf}"] = noise(value)
    if "text_projection.weight" in state:  # SDXL's bigG: OpenCLIP stores x @ P, transformers P^T x
        out["text_projection"] = state["text_projection.weight"].T
    else:  # SD 2.x: unused (the pooled output is not conditioning)
        width = text_encoder.config.hidden_size
        out["text_projection"] = torch.randn(width, width)
    return {prefix + k: v for k, v in out.items()}
