#!/usr/bin/env python
"""How much blur each style survives in the judge's eyes.

    python scripts/bench/style_blur.py --out scripts/bench/results/toy/style_blur.json

The toy models draw softer patterns than the renderer, so a style whose look depends on fine
detail is read as another one first. For each style this renders ``--count`` real images (every
object, data seed ``--seed``), blurs them with a Gaussian of each ``--sigmas`` (pixels at 32 px)
and counts the images the judge still gives that style, with 95% Wilson intervals and what the
others are read as. Writes the JSON and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from unlearn.atomic import atomic_write_text
from unlearn.scripting import json_output, run_script

SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.25)


def _markdown(rows: list[dict], sigmas: list[float], count: int) -> str:
    head = "| style | " + " | ".join(f"sigma {s:g}" for s in sigmas) + f" | at sigma {sigmas[-2]:g}, read as |"
    lines = [
        f"Real renders the judge still reads as their style after a Gaussian blur (% of {count} each, "
        "95% Wilson interval).",
        "",
        head,
        "|---" * (len(sigmas) + 2) + "|",
    ]
    for row in rows:
        cells = [f"{c['percent']:.1f} ({c['ci'][0]:.1f}-{c['ci'][1]:.1f})" for c in row["by_sigma"]]
        confusions = ", ".join(f"{k} {v}" for k, v in row["by_sigma"][-2]["read_as"].items())
        lines.append(f"| {row['style']} | " + " | ".join(cells) + f" | {confusions} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judge", default="checkpoints/toy/judge.safetensors")
    p.add_argument("--count", type=int, default=128, help="renders per style")
    p.add_argument("--seed", type=int, default=5000, help="data seed of the renders")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    p.add_argument("--out", required=True, help="style_blur.json; style_blur.md goes beside it")
    args = p.parse_args(argv)
    out = json_output(args.out)
    import torch

    from unlearn.data.canvas_datamodule import CanvasDataset
    from unlearn.eval.evaluate import judge_outputs
    from unlearn.eval.judge import load_judge
    from unlearn.eval.judge_sinks import blur
    from unlearn.eval.metrics import wilson_interval

    judge = load_judge(args.judge)
    rows = []
    for index, style in enumerate(judge.styles):
        dataset = CanvasDataset(args.count, seed=args.seed, image_size=judge.image_size, styles=[style])
        images = torch.stack([dataset[i]["jpg"] for i in range(args.count)])
        by_sigma = []
        for sigma in args.sigmas:
            _, styles, _ = judge_outputs(judge, blur(images, sigma) if sigma > 0 else images)
            right = int((styles == index).sum())
            others = Counter(judge.styles[s] for s in styles if s != index)
            by_sigma.append(
                {
                    "sigma": sigma,
                    "right": right,
                    "n": args.count,
                    "percent": 100.0 * right / args.count,
                    "ci": list(wilson_interval(right, args.count)),
                    "read_as": dict(others.most_common()),
                }
            )
        rows.append({"style": style, "by_sigma": by_sigma})
    result = {"judge": args.judge, "count": args.count, "seed": args.seed, "styles": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n", "style blur")
    table = _markdown(rows, list(args.sigmas), args.count)
    atomic_write_text(out.with_suffix(".md"), table, "style blur table")
    print(table)
    return result


if __name__ == "__main__":
    run_script(main)
