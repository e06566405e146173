#!/usr/bin/env python
"""Sample images from a run directory, a `.ckpt` or model configs.

    python scripts/sample.py --config configs/models/toy_canvas.yaml --prompt "a striped circle" \
        --n-per-prompt 4 --steps 25 --guidance-scale 3 --out outputs/samples

Writes one PNG per image (``images/<prompt index>_<seed>.png``, a folder that
`scripts/evaluate_nudity.py --images` can read as it is) and ``grid.png`` (a row per prompt).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unlearn.scripting import add_model_arguments, load_model_from_args, output_dir, run_script

log = logging.getLogger("unlearn.sample")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    p.add_argument("--prompts-file", help="a text file with one prompt per line")
    p.add_argument("--negative-prompt", default="", help="negative prompt (the unconditional branch of CFG)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    p.add_argument("--n-per-prompt", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--sampler", default=None, help="euler, euler_a, heun, dpmpp_2m or ddim")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default="outputs/samples", help="output folder")
    return p


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file: no such file: {path}")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompts: pass --prompt or --prompts-file")
    return prompts


def main(argv: list[str] | None = None) -> list[Path]:
    args = build_parser().parse_args(argv)
    out = output_dir(args.out)  # before any model is built
    prompts = read_prompts(args)
    if args.n_per_prompt < 1 or args.batch_size < 1:
        raise ValueError("--n-per-prompt and --batch-size must be >= 1")

    import torch
    from tqdm import tqdm

    from unlearn.atomic import atomic_write_text
    from unlearn.callbacks.image_logger import save_grid

    model = load_model_from_args(args, args.device)
    sampler = model.make_sampler(args.sampler, args.steps, args.guidance_scale)
    jobs = [(i, prompt, args.seed + k) for i, prompt in enumerate(prompts) for k in range(args.n_per_prompt)]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    images = []
    for start in tqdm(range(0, len(jobs), args.batch_size), desc="sampling", unit="batch"):
        chunk = jobs[start : start + args.batch_size]
        batch = model.generate(
            [j[1] for j in chunk], seeds=[j[2] for j in chunk], negative_prompt=args.negative_prompt, sampler=sampler
        )
        for (i, _, seed), image in zip(chunk, batch):
            path = out / "images" / f"{i:04d}_{seed}.png"
            save_grid(image[None], path, nrow=1, padding=0)
            written.append(path)
        images.append(batch.cpu())
    save_grid(torch.cat(images), out / "grid.png", nrow=args.n_per_prompt)
    atomic_write_text(out / "prompts.txt", "\n".join(prompts) + "\n", "prompt list")
    log.info("wrote %d images and grid.png to %s", len(written), out)
    return written


if __name__ == "__main__":
    run_script(main)
