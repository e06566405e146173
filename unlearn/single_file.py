"""What an original single-file checkpoint holds, read off its key names before any tensor loads.

Released single files bundle different parts of a model: SD 1.x / 2.x / XL files hold the UNet,
the VAE and the text encoders; SD3 / 3.5 files the MMDiT and the VAE, some also CLIP-L/G and
T5-XXL (``sd3_medium_incl_clips_t5xxlfp8.safetensors``); Flux.1 files the transformer only. A
text encoder or VAE the file lacks comes from ``model_config``'s diffusers folder, with its
weights, as diffusers' ``from_single_file`` pipelines take it from their config repository.

Only a ``.safetensors`` header can be read without loading the file; a pickled ``.ckpt`` is never
opened just to look (it loads with ``weights_only=True`` when a component reads it), and is taken
to hold every component, as the SD 1.x / 2.x ``.ckpt`` releases do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from unlearn.paths import resolve_local_dir
from unlearn.scaled_fp8 import dequantize, is_scaled

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "COMPONENT_PREFIXES",
    "SAFETENSORS",
    "safetensors_keys",
    "holds",
    "has_weights",
    "fallback_folder",
    "read_tensors",
    "diffusers_source",
    "unloaded",
    "require_loaded",
    "config_root",
]

SAFETENSORS = ".safetensors"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")

# Key prefixes of each kind of component in the original layouts (LDM / sgm, SAI's SD3, BFL's Flux).
COMPONENT_PREFIXES: dict[str, tuple[str, ...]] = {
    "clip": ("cond_stage_model.", "conditioner.embedders.", "text_encoders.clip_l.", "text_encoders.clip_g."),
    "t5": ("text_encoders.t5xxl.",),
    "vae": ("first_stage_model.", "vae."),
    # The networks: with or without the "model.diffusion_model." prefix (SAI and ComfyUI write it, BFL
    # does not), or in diffusers' own layout (a transformer folder's weights file), read as it is.
    "sd3_transformer": ("model.diffusion_model.joint_blocks.", "joint_blocks.", "transformer_blocks."),
    "flux_transformer": ("model.diffusion_model.double_blocks.", "double_blocks.", "transformer_blocks."),
}


def safetensors_keys(path: str | Path, what: str) -> frozenset[str] | None:
    """The tensor names in a ``.safetensors`` file's header (no tensor is read); None for any other
    file. ValueError naming ``what`` and the path when the header cannot be read."""
    path = Path(path).expanduser()
    if path.suffix != SAFETENSORS:
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return frozenset(f.keys())
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"{what}={str(path)!r}: cannot read it as {SAFETENSORS} ({err})") from err


def holds(keys: frozenset[str] | None, kind: str) -> bool:
    """Whether a file with these key names holds a ``kind`` component (True when keys are unknown)."""
    return keys is None or any(k.startswith(COMPONENT_PREFIXES[kind]) for k in keys)


def has_weights(folder: Path) -> bool:
    """Whether a diffusers component folder holds weights (``*.safetensors`` or ``*.bin``)."""
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)


def config_root(path: str | Path, config_dir: str | None, needs: str, subfolder: str | None = None) -> Path:
    """``config_dir``, the local diffusers folder that gives the single file ``path`` its
    architecture (``needs`` says what it must hold); ValueError naming the key when it is unset."""
    if config_dir is None:
        raise ValueError(
            f"pretrained_path={str(path)!r} is a single checkpoint file: set single_file_config (model configs: "
            f"model_config) to a local diffusers folder with {needs}"
        )
    return resolve_local_dir(config_dir, "single_file_config", subfolder)


def fallback_folder(path: str | Path, config_dir: str | None, subfolder: str | None, what: str) -> Path:
    """``config_dir``, a local diffusers folder whose ``subfolder`` has the weights of the ``what``
    that the single file ``path`` lacks; ValueError or FileNotFoundError naming both otherwise."""
    sub = subfolder or "."
    if config_dir is None:
        raise ValueError(
            f"pretrained_path={str(path)!r} holds no {what}: set single_file_config (model configs: model_config) "
            f"to a local diffusers folder with {sub}/config.json and its weights"
        )
    root = resolve_local_dir(config_dir, "single_file_config")
    if not has_weights(root / (subfolder or "")):
        raise FileNotFoundError(
            f"single_file_config={str(config_dir)!r} has no {sub}/ weights (*.safetensors or *.bin): "
            f"pretrained_path={str(path)!r} holds no {what}, so it loads from that folder"
        )
    return root


def unloaded(model: torch.nn.Module) -> list[str]:
    """Parameters still on the meta device: weights that diffusers' non-strict loading left out."""
    return [name for name, p in model.named_parameters() if p.is_meta]


def require_loaded(model: torch.nn.Module, key: str, path: str | Path, config_dir: Path, what: str) -> None:
    """ValueError naming ``key``'s file when ``model`` (``what``, built from the config in
    ``config_dir``) still has weights the file did not give."""
    missing = unloaded(model)
    if missing:
        raise ValueError(
            f"{key}={str(path)!r} lacks {len(missing)} weights of the {what} in {config_dir} (e.g. {missing[:3]}): "
            "the file and the config describe different models"
        )


def read_tensors(path: str | Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of a single file whose names start with ``prefixes``.

    A ``.safetensors`` file reads just those (a text encoder need not read a 10 GB file whole);
    any other file loads whole through diffusers' ``load_single_file_checkpoint``, which uses
    ``torch.load(weights_only=True)``: nothing in the file can run code. Scaled float8 weights come
    back multiplied by their scales (`unlearn.scaled_fp8`).
    """
    path = Path(path).expanduser()
    if path.suffix != SAFETENSORS:
        from diffusers.loaders.single_file_utils import load_single_file_checkpoint

        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
        tensors = {k: v for k, v in checkpoint.items() if k.startswith(prefixes)}
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
    return dequantize(tensors, str(path)) if is_scaled(tensors) else tensors


def diffusers_source(path: str | Path, what: str) -> str | dict[str, torch.Tensor]:
    """What to hand a diffusers ``from_single_file``: the file's path, or, for a file of scaled
    float8 weights (which diffusers would read unscaled), its tensors dequantized.

    A pickled ``.ckpt`` has no header to look for scales in, so it is read here once (with
    ``weights_only``) and its tensors handed over, dequantized where scaled."""
    path = Path(path).expanduser()
    if path.suffix != SAFETENSORS or is_scaled(safetensors_keys(path, what)):
        return read_tensors(path, ("",))
    return str(path)
