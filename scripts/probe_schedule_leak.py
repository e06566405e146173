#!/usr/bin/env python
"""How much of the object can be read from the most-noised training input x_T?

For each beta schedule, trains a small classifier (the judge's architecture) to name the
object in x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at t = 999 and t = 900, and reports
held-out accuracy (chance: 12.5%). Where it is well above chance, a diffusion model can
learn the object from its training input rather than from the prompt, and at sampling
time (which starts from pure noise) it will bind object words poorly.

    python scripts/probe_schedule_leak.py --steps 1500 --out schedule_leak.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SCHEDULES = {
    "scaled_linear": {"linear_start": 0.00085, "linear_end": 0.012, "beta_schedule": "scaled_linear"},
    "linear": {"linear_start": 1e-4, "linear_end": 2e-2, "beta_schedule": "linear"},
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--timesteps", type=int, nargs="*", default=[999, 900])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="schedule_leak.json")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from unlearn.data.canvas_datamodule import CanvasDataset
    from unlearn.diffusion.discretization import LegacyDDPMDiscretization
    from unlearn.eval.judge import CanvasJudge

    n = args.train_images + args.test_images
    data = CanvasDataset(n, seed=args.seed + 5, image_size=32, caption_mode="joint")
    images = torch.stack([data[i]["jpg"] for i in range(n)])  # (N, 3, 32, 32)
    objects = torch.tensor([data[i]["object"] for i in range(n)])
    train, test = slice(0, args.train_images), slice(args.train_images, n)
    results: dict[str, dict[str, float]] = {}
    for name, kwargs in SCHEDULES.items():
        abar = LegacyDDPMDiscretization(**kwargs).alphas_cumprod
        for t in args.timesteps:
            a = float(abar[t])
            gen = torch.Generator().manual_seed(args.seed)
            torch.manual_seed(args.seed)

            def noised(x: torch.Tensor) -> torch.Tensor:
                return a**0.5 * x + (1 - a) ** 0.5 * torch.randn(x.shape, generator=gen)

            clf = CanvasJudge()
            opt = torch.optim.AdamW(clf.parameters(), 2e-3)
            start = time.time()
            for _ in tqdm(range(args.steps), desc=f"{name} t={t}", leave=False):
                idx = torch.randint(args.train_images, (64,), generator=gen)
                loss = F.cross_entropy(clf(noised(images[train][idx]))[0], objects[train][idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            clf.eval()
            with torch.no_grad():
                acc = (clf(noised(images[test]))[0].argmax(-1) == objects[test]).float().mean().item() * 100
            results.setdefault(name, {})[f"t{t}"] = round(acc, 2)
            print(f"{name:14s} t={t} sqrt(abar_t)={a**0.5:.4f}: object accuracy from x_t {acc:.1f}% "
                  f"({time.time() - start:.0f} s)", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
