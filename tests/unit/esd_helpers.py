"""ESD engines on the tiny smoke model, from ESD's toolkit settings (not a test module).

`esd_params` maps the flat settings ESD is described by (``train_method``, ``ddim_steps``,
``start_guidance``, ``negative_guidance``, ...) onto `FineTuneEngine`'s blocks, the same
mapping ``configs/methods/esd_x.yaml`` writes in YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from unlearn.config import load_configs
from unlearn.engine.finetune import FineTuneEngine
from unlearn.engine.generation import SAMPLERS

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "toy" / "smoke.yaml"


def smoke_params() -> dict[str, Any]:
    """The smoke model's ``model.params`` without its own training loss (a method brings its own)."""
    params = OmegaConf.to_container(load_configs([SMOKE]).model.params, resolve=True)
    params.pop("loss_fn_config")
    return params


def esd_params(
    train_method: str = "xattn",
    start_guidance: float = 3.0,
    ddim_steps: int = 50,
    sampler: str | dict = "ddim",
    negative_guidance: float = 1.0,
    anchor: str = "null",
    preserve_guidance: float = 1.0,
    preserve_weight: float = 1.0,
    null_weight: float = 0.0,
    loss_weighting_config: dict | None = None,
    step_range: Any = None,
    pool_size: int = 8,
    reuse: int = 1,
    **engine: Any,
) -> dict[str, Any]:
    """`FineTuneEngine` arguments for ESD with these settings (``engine``: every other argument)."""
    sampler_block = {"target": SAMPLERS[sampler]} if isinstance(sampler, str) else dict(sampler)
    sampler_block["params"] = {
        **sampler_block.get("params", {}),
        "num_steps": ddim_steps,
        "guider_config": {"target": "unlearn.diffusion.guiders.VanillaCFG", "params": {"scale": start_guidance}},
    }
    return {
        **engine,
        "objective_config": {
            "target": "unlearn.objectives.esd.ESDObjective",
            "params": {
                "negative_guidance": negative_guidance,
                "anchor": anchor,
                "preserve_guidance": preserve_guidance,
                "preserve_weight": preserve_weight,
                "null_weight": null_weight,
                "weighting": loss_weighting_config,
            },
        },
        "selector_config": {"target": "unlearn.selection.TrainMethod", "params": {"train_method": train_method}},
        "trajectory_sampler_config": sampler_block,
        "trajectory_config": {
            "target": "unlearn.engine.trajectories.TrajectoryPool",
            "params": {"pool_size": pool_size, "step_range": step_range, "reuse": reuse},
        },
    }


def make_engine(**kw: Any) -> FineTuneEngine:
    """ESD-x of "striped" on the smoke model (6 DDIM steps, a pool of 4, seed 0), plus ``kw``."""
    torch.manual_seed(0)  # same random base weights in every engine
    settings = {**smoke_params(), "concept": "striped", "ddim_steps": 6, "pool_size": 4, "seed": 0, **kw}
    return FineTuneEngine(**esd_params(**settings))
