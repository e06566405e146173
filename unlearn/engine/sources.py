"""Check where a model config takes its weights from, before anything is built.

The model configs (``configs/models/sd15.yaml``, ``sd21.yaml``, ``sdxl.yaml``, ``sd3.yaml``,
``flux.yaml``) read their weights from one top-level key, ``model_path``: a local diffusers
folder, or one original single file together with ``model_config``, a local diffusers folder
holding the components' configs and tokenizers (only configs that declare ``model_config`` read
single files). A text encoder or VAE that the file lacks (Flux.1's files hold the transformer
only) comes from ``model_config``'s folder, which then holds its weights; which parts a
``.safetensors`` file holds is read off its header (`unlearn.single_file`). Components refer to
these keys by interpolation (``pretrained_path: ${model_path}`` with ``subfolder: unet``), so the
layout a config needs is read off the config itself. `check_model_source` checks all of it at
once and names the key at fault, so a wrong path fails in a second, not after the UNet has loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unlearn.config import ConfigError
from unlearn.paths import looks_like_hub_id
from unlearn.single_file import SAFETENSORS, has_weights, holds, safetensors_keys

__all__ = ["MODEL_PATH", "MODEL_CONFIG", "required_subfolders", "check_model_source"]

MODEL_PATH = "model_path"
MODEL_CONFIG = "model_config"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
# Components a single file may lack (then read from model_config's folder), by the class name of their
# config block's target: the kind of component (unlearn.single_file.COMPONENT_PREFIXES) each one is.
_OPTIONAL_IN_FILE = {"CLIPTextEmbedder": "clip", "T5TextEmbedder": "t5", "DiffusersAutoencoderKL": "vae"}
# Networks whose single files are read from .safetensors only (as released): a pickled file is refused.
_SAFETENSORS_ONLY = ("DiffusersSD3Transformer", "DiffusersFluxTransformer")


def _components(cfg: DictConfig) -> list[tuple[dict[str, Any], str]]:
    """(params, class name of the block's target) of each block whose ``pretrained_path`` is
    ``${model_path}``, in config order."""
    target = "${" + MODEL_PATH + "}"
    found: list[tuple[dict[str, Any], str]] = []

    def walk(node: Any, owner: str) -> None:
        if isinstance(node, dict):
            if node.get("pretrained_path") == target and node.get("subfolder"):
                found.append((node, owner))
            block = str(node.get("target", "")).rsplit(".", 1)[-1]
            for key, value in node.items():
                walk(value, block if key == "params" else "")
        elif isinstance(node, list):
            for value in node:
                walk(value, "")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return found


def required_subfolders(cfg: DictConfig) -> list[str]:
    """Subfolders of ``model_path`` that the components read, in config order.

    A block counts when its ``pretrained_path`` is ``${model_path}``; a text encoder
    (``text_encoder*``) without its own ``tokenizer_path`` also needs the matching
    ``tokenizer*`` folder, as diffusers lays pipelines out.
    """
    found: list[str] = []
    for params, _ in _components(cfg):
        sub = str(params["subfolder"])
        found.append(sub)
        if sub.startswith("text_encoder") and not params.get("tokenizer_path"):
            found.append(sub.replace("text_encoder", "tokenizer"))
    return list(dict.fromkeys(found))


def _layout(subfolders: list[str]) -> str:
    listed = ", ".join(f"{s}/" for s in subfolders) or "the model's components"
    return (
        f"a local diffusers folder with {listed} (as save_pretrained writes it), or one original "
        f"{'/'.join(CHECKPOINT_SUFFIXES[:2])} file plus {MODEL_CONFIG}=<a local diffusers folder "
        f"holding those subfolders' config.json files and tokenizers, and the weights of any part the file lacks>"
    )


def _is_tokenizer(sub: str) -> bool:
    return sub.startswith("tokenizer")


def _missing_parts(root: Path, subfolders: list[str], need_weights: bool) -> list[str]:
    missing = []
    for sub in subfolders:
        folder = root / sub
        if _is_tokenizer(sub):
            if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
                missing.append(f"{sub}/ (vocab.json or tokenizer.json)")
        elif not (folder / "config.json").is_file():
            missing.append(f"{sub}/config.json")
        elif need_weights and not has_weights(folder):
            missing.append(f"{sub}/ weights (*.safetensors or *.bin)")
    return missing


def check_model_source(cfg: DictConfig) -> None:
    """Raise if ``cfg``'s ``model_path`` (and ``model_config``) cannot give the model's weights.

    Does nothing for configs without a top-level ``model_path`` (toy models, runs whose
    config was saved resolved). ConfigError: unset or wrong kind of path; FileNotFoundError:
    a path that does not exist, a hub id, or a folder missing a component.
    """
    if not isinstance(cfg, DictConfig) or MODEL_PATH not in cfg.keys():
        return
    subfolders = required_subfolders(cfg)
    layout = _layout(subfolders)
    if OmegaConf.is_missing(cfg, MODEL_PATH) or cfg[MODEL_PATH] in (None, ""):
        raise ConfigError(f"{MODEL_PATH} is not set. Pass {MODEL_PATH}=<path>: {layout}")
    raw = str(cfg[MODEL_PATH])
    path = Path(raw).expanduser()
    if looks_like_hub_id(raw):
        raise FileNotFoundError(
            f"{MODEL_PATH}={raw!r} looks like a Hugging Face Hub id, but unlearn never downloads. "
            f"Pass a local copy: {layout}"
        )
    if not path.exists():
        raise FileNotFoundError(f"{MODEL_PATH}: no such folder or file: {raw!r}. Expected {layout}")
    if path.is_dir():
        missing = _missing_parts(path, subfolders, need_weights=True)
        if missing:
            raise FileNotFoundError(f"{MODEL_PATH}={raw!r} lacks {', '.join(missing)}. Expected {layout}")
        return
    _check_single_file(cfg, raw, path, subfolders)


def _check_single_file(cfg: DictConfig, raw: str, path: Path, subfolders: list[str]) -> None:
    """``model_path`` is a file: ``model_config`` gives the configs and tokenizers, and the weights of
    the text encoders and VAE that the file lacks."""
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ConfigError(f"{MODEL_PATH}={raw!r} is a file but not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    components = _components(cfg)
    if path.suffix != SAFETENSORS and any(owner in _SAFETENSORS_ONLY for _, owner in components):
        raise ConfigError(
            f"{MODEL_PATH}={raw!r}: this model's single files are read from {SAFETENSORS} only, as they are "
            "released; a pickled checkpoint is never opened"
        )
    if MODEL_CONFIG not in cfg.keys():  # the config declares no single-file loading
        raise ConfigError(
            f"{MODEL_PATH}={raw!r} is a single checkpoint file, but this model config loads from a local diffusers "
            f"folder only: pass {MODEL_PATH}=<a local diffusers folder with {', '.join(f'{s}/' for s in subfolders)} "
            "as save_pretrained writes it>"
        )
    config_dir = cfg.get(MODEL_CONFIG)
    if not config_dir:
        raise ConfigError(
            f"{MODEL_PATH}={raw!r} is a single checkpoint file, so {MODEL_CONFIG} must name a local diffusers folder "
            f"with {', '.join(f'{s}/' for s in subfolders)} holding the configs and tokenizers (and the weights of "
            "any text encoder or VAE the file lacks); unlearn does not fetch them from a hub"
        )
    root = Path(str(config_dir)).expanduser()
    if not root.is_dir():
        hub_id = looks_like_hub_id(str(config_dir))
        hub = " (it looks like a Hugging Face Hub id; pass a local folder)" if hub_id else ""
        raise FileNotFoundError(f"{MODEL_CONFIG}: no such folder: {str(config_dir)!r}{hub}")
    missing = _missing_parts(root, subfolders, need_weights=False)
    if missing:
        raise FileNotFoundError(f"{MODEL_CONFIG}={str(config_dir)!r} lacks {', '.join(missing)}")
    keys = safetensors_keys(path, MODEL_PATH)  # None for a pickled file: taken to hold every part
    lacking = [
        str(params["subfolder"])
        for params, owner in components
        if owner in _OPTIONAL_IN_FILE and not holds(keys, _OPTIONAL_IN_FILE[owner])
    ]
    unweighted = [sub for sub in dict.fromkeys(lacking) if not has_weights(root / sub)]
    if unweighted:
        raise FileNotFoundError(
            f"{MODEL_CONFIG}={str(config_dir)!r} lacks {', '.join(f'{s}/ weights' for s in unweighted)} "
            f"(*.safetensors or *.bin): {MODEL_PATH}={raw!r} holds no {', '.join(unweighted)}, so "
            f"{MODEL_CONFIG}'s folder must give {'it' if len(unweighted) == 1 else 'them'}, weights included"
        )
