#!/usr/bin/env python
"""Write a random-weight SD 1.5 / 2.1 / XL / SD3-medium / Flux.1-dev model (real architecture), as a diffusers folder.

    python scripts/make_random_model.py --arch sd15 --out checkpoints/random/sd15
    python main.py --base configs/models/sd15.yaml configs/methods/esd_x.yaml model_path=checkpoints/random/sd15 ...

For speed and memory measurements at real scale where no real weights exist; the images
mean nothing. Needs the model's size in RAM (SDXL: about 14 GB in float32, 7 GB with --dtype fp16;
SD3-medium with T5-XXL: about 31 GB in float32, 16 GB with --dtype bf16; Flux.1-dev: about 67 GB in
float32, 34 GB with --dtype bf16). The T5 tokenizer of SD3 and Flux is an offline stand-in
(unlearn.conditioning.t5_tokenizer).
"""

from __future__ import annotations

import argparse

from unlearn.scripting import run_script

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=["sd15", "sd21", "sdxl", "sd3", "flux"])
    p.add_argument("--out", required=True, help="folder to write (model_path of configs/models/<arch>.yaml)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights' dtype on disk")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from unlearn.networks.architectures import save_random_pipeline

    return save_random_pipeline(args.arch, args.out, seed=args.seed, dtype=getattr(torch, DTYPES[args.dtype]))


if __name__ == "__main__":
    run_script(main)
