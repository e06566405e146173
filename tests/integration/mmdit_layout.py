"""Write a diffusers SD3 / Flux transformer as one original single file (not a test module).

diffusers ships only the other direction (``convert_sd3_transformer_checkpoint_to_diffusers`` and
``convert_flux_transformer_checkpoint_to_diffusers`` in ``diffusers.loaders.single_file_utils``,
used by ``from_single_file``). These are their inverses: each diffusers name maps to its original
one (SAI's SD3 layout, BFL's Flux layout), the tensors diffusers splits (q/k/v; Flux's single-block
q/k/v/MLP input) are concatenated back in order, and the final AdaLN's (scale, shift) halves swap
back to the original (shift, scale). The tests check each inverse by converting back with diffusers
and comparing every tensor.
"""

from __future__ import annotations

import re

import torch

_B = r"transformer_blocks\.(\d+)\."
_P = r"(weight|bias)"

# (diffusers name pattern, original name, position in the original tensor), SAI's SD3 / SD3.5 layout.
_SD3 = [
    (r"pos_embed\.pos_embed", "pos_embed", 0),
    (rf"pos_embed\.proj\.{_P}", r"x_embedder.proj.\1", 0),
    (rf"time_text_embed\.timestep_embedder\.linear_1\.{_P}", r"t_embedder.mlp.0.\1", 0),
    (rf"time_text_embed\.timestep_embedder\.linear_2\.{_P}", r"t_embedder.mlp.2.\1", 0),
    (rf"time_text_embed\.text_embedder\.linear_1\.{_P}", r"y_embedder.mlp.0.\1", 0),
    (rf"time_text_embed\.text_embedder\.linear_2\.{_P}", r"y_embedder.mlp.2.\1", 0),
    (rf"context_embedder\.{_P}", r"context_embedder.\1", 0),
    (rf"norm_out\.linear\.{_P}", r"final_layer.adaLN_modulation.1.\1", 0),
    (rf"proj_out\.{_P}", r"final_layer.linear.\1", 0),
    (rf"{_B}attn\.to_q\.{_P}", r"joint_blocks.\1.x_block.attn.qkv.\2", 0),
    (rf"{_B}attn\.to_k\.{_P}", r"joint_blocks.\1.x_block.attn.qkv.\2", 1),
    (rf"{_B}attn\.to_v\.{_P}", r"joint_blocks.\1.x_block.attn.qkv.\2", 2),
    (rf"{_B}attn\.add_q_proj\.{_P}", r"joint_blocks.\1.context_block.attn.qkv.\2", 0),
    (rf"{_B}attn\.add_k_proj\.{_P}", r"joint_blocks.\1.context_block.attn.qkv.\2", 1),
    (rf"{_B}attn\.add_v_proj\.{_P}", r"joint_blocks.\1.context_block.attn.qkv.\2", 2),
    (rf"{_B}attn\.norm_q\.{_P}", r"joint_blocks.\1.x_block.attn.ln_q.\2", 0),
    (rf"{_B}attn\.norm_k\.{_P}", r"joint_blocks.\1.x_block.attn.ln_k.\2", 0),
    (rf"{_B}attn\.norm_added_q\.{_P}", r"joint_blocks.\1.context_block.attn.ln_q.\2", 0),
    (rf"{_B}attn\.norm_added_k\.{_P}", r"joint_blocks.\1.context_block.attn.ln_k.\2", 0),
    (rf"{_B}attn\.to_out\.0\.{_P}", r"joint_blocks.\1.x_block.attn.proj.\2", 0),
    (rf"{_B}attn\.to_add_out\.{_P}", r"joint_blocks.\1.context_block.attn.proj.\2", 0),
    (rf"{_B}attn2\.to_q\.{_P}", r"joint_blocks.\1.x_block.attn2.qkv.\2", 0),
    (rf"{_B}attn2\.to_k\.{_P}", r"joint_blocks.\1.x_block.attn2.qkv.\2", 1),
    (rf"{_B}attn2\.to_v\.{_P}", r"joint_blocks.\1.x_block.attn2.qkv.\2", 2),
    (rf"{_B}attn2\.norm_q\.{_P}", r"joint_blocks.\1.x_block.attn2.ln_q.\2", 0),
    (rf"{_B}attn2\.norm_k\.{_P}", r"joint_blocks.\1.x_block.attn2.ln_k.\2", 0),
    (rf"{_B}attn2\.to_out\.0\.{_P}", r"joint_blocks.\1.x_block.attn2.proj.\2", 0),
    (rf"{_B}norm1\.linear\.{_P}", r"joint_blocks.\1.x_block.adaLN_modulation.1.\2", 0),
    (rf"{_B}norm1_context\.linear\.{_P}", r"joint_blocks.\1.context_block.adaLN_modulation.1.\2", 0),
    (rf"{_B}ff\.net\.0\.proj\.{_P}", r"joint_blocks.\1.x_block.mlp.fc1.\2", 0),
    (rf"{_B}ff\.net\.2\.{_P}", r"joint_blocks.\1.x_block.mlp.fc2.\2", 0),
    (rf"{_B}ff_context\.net\.0\.proj\.{_P}", r"joint_blocks.\1.context_block.mlp.fc1.\2", 0),
    (rf"{_B}ff_context\.net\.2\.{_P}", r"joint_blocks.\1.context_block.mlp.fc2.\2", 0),
]

_S = r"single_transformer_blocks\.(\d+)\."

# The same for BFL's Flux.1 layout.
_FLUX = [
    (rf"time_text_embed\.timestep_embedder\.linear_1\.{_P}", r"time_in.in_layer.\1", 0),
    (rf"time_text_embed\.timestep_embedder\.linear_2\.{_P}", r"time_in.out_layer.\1", 0),
    (rf"time_text_embed\.guidance_embedder\.linear_1\.{_P}", r"guidance_in.in_layer.\1", 0),
    (rf"time_text_embed\.guidance_embedder\.linear_2\.{_P}", r"guidance_in.out_layer.\1", 0),
    (rf"time_text_embed\.text_embedder\.linear_1\.{_P}", r"vector_in.in_layer.\1", 0),
    (rf"time_text_embed\.text_embedder\.linear_2\.{_P}", r"vector_in.out_layer.\1", 0),
    (rf"context_embedder\.{_P}", r"txt_in.\1", 0),
    (rf"x_embedder\.{_P}", r"img_in.\1", 0),
    (rf"norm_out\.linear\.{_P}", r"final_layer.adaLN_modulation.1.\1", 0),
    (rf"proj_out\.{_P}", r"final_layer.linear.\1", 0),
    (rf"{_B}norm1\.linear\.{_P}", r"double_blocks.\1.img_mod.lin.\2", 0),
    (rf"{_B}norm1_context\.linear\.{_P}", r"double_blocks.\1.txt_mod.lin.\2", 0),
    (rf"{_B}attn\.to_q\.{_P}", r"double_blocks.\1.img_attn.qkv.\2", 0),
    (rf"{_B}attn\.to_k\.{_P}", r"double_blocks.\1.img_attn.qkv.\2", 1),
    (rf"{_B}attn\.to_v\.{_P}", r"double_blocks.\1.img_attn.qkv.\2", 2),
    (rf"{_B}attn\.add_q_proj\.{_P}", r"double_blocks.\1.txt_attn.qkv.\2", 0),
    (rf"{_B}attn\.add_k_proj\.{_P}", r"double_blocks.\1.txt_attn.qkv.\2", 1),
    (rf"{_B}attn\.add_v_proj\.{_P}", r"double_blocks.\1.txt_attn.qkv.\2", 2),
    (rf"{_B}attn\.norm_q\.weight", r"double_blocks.\1.img_attn.norm.query_norm.scale", 0),
    (rf"{_B}attn\.norm_k\.weight", r"double_blocks.\1.img_attn.norm.key_norm.scale", 0),
    (rf"{_B}attn\.norm_added_q\.weight", r"double_blocks.\1.txt_attn.norm.query_norm.scale", 0),
    (rf"{_B}attn\.norm_added_k\.weight", r"double_blocks.\1.txt_attn.norm.key_norm.scale", 0),
    (rf"{_B}attn\.to_out\.0\.{_P}", r"double_blocks.\1.img_attn.proj.\2", 0),
    (rf"{_B}attn\.to_add_out\.{_P}", r"double_blocks.\1.txt_attn.proj.\2", 0),
    (rf"{_B}ff\.net\.0\.proj\.{_P}", r"double_blocks.\1.img_mlp.0.\2", 0),
    (rf"{_B}ff\.net\.2\.{_P}", r"double_blocks.\1.img_mlp.2.\2", 0),
    (rf"{_B}ff_context\.net\.0\.proj\.{_P}", r"double_blocks.\1.txt_mlp.0.\2", 0),
    (rf"{_B}ff_context\.net\.2\.{_P}", r"double_blocks.\1.txt_mlp.2.\2", 0),
    (rf"{_S}norm\.linear\.{_P}", r"single_blocks.\1.modulation.lin.\2", 0),
    (rf"{_S}attn\.to_q\.{_P}", r"single_blocks.\1.linear1.\2", 0),
    (rf"{_S}attn\.to_k\.{_P}", r"single_blocks.\1.linear1.\2", 1),
    (rf"{_S}attn\.to_v\.{_P}", r"single_blocks.\1.linear1.\2", 2),
    (rf"{_S}proj_mlp\.{_P}", r"single_blocks.\1.linear1.\2", 3),
    (rf"{_S}attn\.norm_q\.weight", r"single_blocks.\1.norm.query_norm.scale", 0),
    (rf"{_S}attn\.norm_k\.weight", r"single_blocks.\1.norm.key_norm.scale", 0),
    (rf"{_S}proj_out\.{_P}", r"single_blocks.\1.linear2.\2", 0),
]


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous is (scale, shift); the original AdaLN is (shift, scale)."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first])


def _to_original(state: dict[str, torch.Tensor], table, prefix: str) -> dict[str, torch.Tensor]:
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        match = next(((m, name, pos) for pat, name, pos in table if (m := re.fullmatch(pat, key))), None)
        if match is None:
            raise KeyError(f"no original name for {key}")
        m, name, pos = match
        parts.setdefault(m.expand(name), {})[pos] = value
    out = {name: torch.cat([p[i] for i in sorted(p)]) for name, p in parts.items()}
    for name in [k for k in out if k.startswith("final_layer.adaLN_modulation.1.")]:
        out[name] = _swap_halves(out[name])
    return {prefix + k: v.contiguous() for k, v in out.items()}


def sd3_to_original(transformer, prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """An `SD3Transformer2DModel` as SAI's single files hold it (``model.diffusion_model.*``)."""
    out = _to_original(transformer.state_dict(), _SD3, prefix)
    # The last block reads the text stream only (context_pre_only): its AdaLN is AdaLayerNormContinuous.
    last = transformer.config.num_layers - 1
    for kind in ("weight", "bias"):
        name = f"{prefix}joint_blocks.{last}.context_block.adaLN_modulation.1.{kind}"
        out[name] = _swap_halves(out[name])
    return out


def flux_to_original(transformer, prefix: str = "") -> dict[str, torch.Tensor]:
    """A `FluxTransformer2DModel` as BFL's released files hold it (no prefix)."""
    return _to_original(transformer.state_dict(), _FLUX, prefix)
