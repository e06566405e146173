#!/usr/bin/env python
"""Export a trained run as a shippable model: weights (safetensors) and a model config.

    python scripts/export_model.py --run logs/<run> --out checkpoints/toy/canvas_base.safetensors \
        --config-out configs/models/toy_canvas.yaml --dtype float16

The weights are the module's state dict as sampling uses it (with EMA, the averaged
weights Lightning keeps in ``state_dict``). The config is the run's ``model`` section with
``ckpt_path`` pointing at the exported file, ready for ``--base`` beside a method config.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from unlearn.atomic import check_writable_dir
from unlearn.scripting import output_path, run_script

log = logging.getLogger("unlearn.export")

DTYPES = ("float32", "float16", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--ckpt", help="checkpoint inside the run (default: its newest last.ckpt)")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--config-out", help="write the model config here")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="storage dtype of floating tensors")
    p.add_argument(
        "--include",
        nargs="*",
        default=None,
        metavar="PREFIX",
        help="keep only tensors whose name starts with one of these (e.g. network. conditioner.)",
    )
    return p


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    out = output_path(args.out, ".safetensors")
    if args.config_out:
        check_writable_dir(Path(args.config_out).parent, "--config-out")

    import torch
    from omegaconf import OmegaConf

    from unlearn.atomic import atomic_write_text, save_safetensors
    from unlearn.checkpoint import load_torch_file
    from unlearn.engine.loading import _last_checkpoint, _run_configs

    run = Path(args.run)
    if not run.is_dir():
        raise FileNotFoundError(f"--run: no such run directory: {run}")
    ckpt = Path(args.ckpt) if args.ckpt else _last_checkpoint(run)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--ckpt: no such checkpoint: {ckpt}")
    raw = load_torch_file(ckpt, "--ckpt" if args.ckpt else "--run")  # weights_only: no code runs from the file
    state = raw.get("state_dict") if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"--ckpt: {ckpt} is not a Lightning checkpoint (no state_dict)")
    dtype = getattr(torch, args.dtype)
    if args.include:
        state = {k: v for k, v in state.items() if k.startswith(tuple(args.include))}
        if not state:
            raise ValueError(f"--include {args.include}: no tensor of {ckpt} matches")
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    config = OmegaConf.load(_run_configs(run)[0])
    metadata = {
        "format": "unlearn-engine-state-dict",
        "global_step": str(raw.get("global_step", "")),
        "source": str(ckpt),
        "model_target": str(config.model.target),
        "metadata": json.dumps(
            OmegaConf.to_container(
                OmegaConf.select(config, "model.params.metadata", default=None) or OmegaConf.create({}), resolve=True
            )
        ),
    }
    save_safetensors(tensors, out, metadata, what="exported weights")  # refuses NaN/inf, writes atomically
    log.info(
        "wrote %s (%d tensors, %.1f MB, step %s)",
        out,
        len(tensors),
        out.stat().st_size / 2**20,
        metadata["global_step"],
    )
    if args.config_out:
        model_cfg = OmegaConf.create({"model": config.model})
        model_cfg.model.params.ckpt_path = str(out)
        cfg_path = Path(args.config_out)
        header = f"# Exported by scripts/export_model.py from {run.name} (step {metadata['global_step']}).\n"
        atomic_write_text(cfg_path, header + OmegaConf.to_yaml(model_cfg, resolve=True), "model config")
        log.info("wrote %s", cfg_path)
    return out


if __name__ == "__main__":
    run_script(main)
