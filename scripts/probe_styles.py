#!/usr/bin/env python
"""Can a toy canvas model draw each style? Two probes that need no training.

1. Recovery (SDEdit): real renders of each style are noised to the sampler's sigma at
   step k of its schedule and sampled back with their own prompt; the judge reports how
   many still show the style. A model that keeps a pattern from sigma 2 understands it;
   one that loses it even from a low sigma cannot draw it, whatever the prompt.
2. Unconditional mix: the judge's style histogram of samples of the empty prompt without
   guidance (the data has every style equally often).

    python scripts/probe_styles.py --config configs/models/toy_canvas.yaml --out probe.json
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from unlearn.scripting import add_model_arguments, json_output, load_model_from_args, run_script


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--judge", default="checkpoints/toy/judge.safetensors")
    p.add_argument("--images", type=int, default=32, help="renders per style (objects in turn)")
    p.add_argument("--start-steps", type=int, nargs="+", default=[10, 15, 20],
                   help="sampler steps to start from (of the config's schedule)")
    p.add_argument("--unconditional", type=int, default=64, help="empty-prompt samples (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="probe_styles.json")
    return p


def recovery(model, judge, style: str, objects, count: int, start_steps, seed: int) -> dict[str, float]:
    """Percent of ``count`` renders of ``style`` the judge still calls ``style`` after SDEdit from each step."""
    import numpy as np
    import torch

    from unlearn.data.canvas import render_canvas
    from unlearn.eval.evaluate import judge_outputs

    objs = [objects[i % len(objects)] for i in range(count)]
    renders = np.stack([render_canvas(o, style, seed + i, size=model.image_size) for i, o in enumerate(objs)])
    x = torch.from_numpy(renders).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(model.device)  # (N, 3, H, W)
    sampler = model.make_sampler()
    sigmas = sampler.get_sigmas(device=model.device)
    with torch.no_grad():
        z = model.encode_first_stage(x)
        cond = model.conditioning_for([f"a {style} {o}" for o in objs])
        uc = model.unconditional_for([""] * count)
        out = {}
        for k in start_steps:
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed + k)).to(z)
            zk = sampler(model.denoise, z + sigmas[k] * noise, cond, uc, start_step=k)
            _, styles, _ = judge_outputs(judge, model.decode_first_stage(zk).clamp(-1, 1))
            out[f"{float(sigmas[k]):.2f}"] = 100.0 * float(np.mean(styles == judge.styles.index(style)))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = json_output(args.out)
    import json

    from unlearn.eval.evaluate import judge_outputs
    from unlearn.eval.judge import load_judge

    model = load_model_from_args(args, "cpu")
    judge = load_judge(args.judge)
    n_steps = len(model.make_sampler().get_sigmas()) - 1
    bad = [k for k in args.start_steps if not 0 < k < n_steps]
    if bad:
        raise ValueError(f"--start-steps must lie in 1..{n_steps - 1} (the sampler's steps), got {bad}")
    result = {"recovery_percent_by_sigma": {}, "unconditional_styles": {}}
    for style in judge.styles:
        row = recovery(model, judge, style, judge.objects, args.images, args.start_steps, args.seed)
        result["recovery_percent_by_sigma"][style] = row
        print(f"{style:10s} " + "  ".join(f"sigma {s}: {v:5.1f}%" for s, v in row.items()), flush=True)
    if args.unconditional:
        images = model.generate([""] * args.unconditional, seeds=range(args.unconditional), guidance_scale=1.0)
        _, styles, _ = judge_outputs(judge, images)
        result["unconditional_styles"] = {judge.styles[i]: n for i, n in Counter(styles.tolist()).most_common()}
        print("unconditional samples by style:", result["unconditional_styles"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    run_script(main)
