"""Text-to-image generation with any engine: conditioning batches, seeded noise, sampling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from unlearn.config import instantiate_from_config

# Short names users type on the command line -> sampler classes.
SAMPLERS = {
    "euler": "unlearn.diffusion.samplers.EulerSampler",
    "euler_a": "unlearn.diffusion.samplers.EulerAncestralSampler",
    "heun": "unlearn.diffusion.samplers.HeunSampler",
    "dpmpp_2m": "unlearn.diffusion.samplers.DPMPP2MSampler",
    "ddim": "unlearn.diffusion.samplers.DDIMSampler",
}


def sampler_config(
    base: dict | None,
    discretization_config: dict | None = None,
    sampler: str | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    image_seq_len: int | Callable[[], int] | None = None,
) -> dict:
    """A sampler config: ``base`` with the sampler class, step count and CFG scale replaced.

    ``image_seq_len``: the image's token count (or a function giving it, called only when needed),
    filled into a resolution-dependent schedule (``use_dynamic_shifting``, Flux) whose
    ``image_seq_len`` is left unset (null) in the config.
    """
    cfg: dict[str, Any] = {"target": SAMPLERS["euler"], "params": {}}
    if base:
        cfg = {"target": base["target"], "params": dict(base.get("params") or {})}
    if sampler is not None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: unknown {sampler!r}; choose one of {sorted(SAMPLERS)}")
        cfg["target"] = SAMPLERS[sampler]
    params = cfg["params"]
    if "discretization_config" not in params:
        if discretization_config is None:
            raise ValueError("sampler_config.params.discretization_config is missing")
        params["discretization_config"] = discretization_config
    disc = params["discretization_config"]
    disc_params = dict((disc.get("params") if hasattr(disc, "get") else None) or {})
    if (
        image_seq_len is not None
        and disc_params.get("use_dynamic_shifting")
        and disc_params.get("image_seq_len") is None
    ):
        n = int(image_seq_len() if callable(image_seq_len) else image_seq_len)
        params["discretization_config"] = {"target": disc["target"], "params": {**disc_params, "image_seq_len": n}}
    if num_steps is not None:
        params["num_steps"] = int(num_steps)
    if guidance_scale is not None:
        params["guider_config"] = (
            {"target": "unlearn.diffusion.guiders.IdentityGuider"}
            if guidance_scale == 1.0
            else {"target": "unlearn.diffusion.guiders.VanillaCFG", "params": {"scale": float(guidance_scale)}}
        )
    params.setdefault("guider_config", {"target": "unlearn.diffusion.guiders.IdentityGuider"})
    return cfg


def build_sampler(cfg: dict, path: str = "sampler_config"):
    return instantiate_from_config(cfg, _path=path)


def conditioning_batch(input_keys: Sequence[str], prompts: Sequence[str], image_size: int) -> dict[str, Any]:
    """The conditioner's inputs for ``prompts``: text, plus SDXL size conditioning if asked for."""
    n = len(prompts)
    size = torch.tensor([[image_size, image_size]] * n, dtype=torch.float32)
    available = {
        "txt": list(prompts),
        "original_size_as_tuple": size,
        "target_size_as_tuple": size,
        "crop_coords_top_left": torch.zeros(n, 2),
    }
    missing = [k for k in input_keys if k not in available]
    if missing:
        raise ValueError(f"conditioner input keys {missing} cannot be made from prompts; known: {sorted(available)}")
    return {k: available[k] for k in input_keys}


def seeded_noise(seeds: Sequence[int], shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """One unit-Gaussian tensor per seed, drawn on the CPU so results do not depend on the
    device or on how images are batched."""
    noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)
