#!/usr/bin/env python
"""ESD with each frozen trajectory reused at several steps, against the reference source, side by side.

    python scripts/bench/esd_speed.py                      # the README main job's ESD-x, seeds 23 24 25
    python scripts/bench/esd_speed.py --reuse 5 10 25 --out scripts/bench/results/esd_speed

For each training seed, the README main job's erasure (``configs/methods/esd_x.yaml
concept=outlined lr=1e-3 iterations=1000``) is trained once with the reference trajectory
source (``trajectory_config.params.reuse=1``, one trajectory per x_t) and once per ``--reuse``
factor (which also serves the frozen predictions recorded along each trajectory, the default
with reuse > 1), on the same machine, one run at a time; each run's export is then judged with
``scripts/evaluate.py`` (``--images`` per prompt). Training time is the wall-clock of
``trainer.fit`` alone (model building and the benchmark are not counted), measured in a
process of its own; the UNet's work is counted in image-forwards (a forward hook on the
network: images per call, a forward with autograd counted 3 times for its backward), so the
ratio of FLOPs carries over to a GPU. Writes ``OUT/esd_speed.json`` (``reference_s``, ``reuse_s``,
``speedup``, ``flops_ratio`` and the UA / IRA / CRA / FD of every run, per source the mean and
the seed spread) and ``OUT/esd_speed.md``. A run whose ``speed.json`` exists is not trained
again, and an existing ``metrics.json`` not evaluated again, so an interrupted bench continues.

The decision it informs: a reuse factor is acceptable when every seed's UA is at least
``--min-ua`` and its mean IRA and CRA are not below the reference's lowest seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from unlearn.atomic import atomic_write_text
from unlearn.eval.metrics import HEADLINE
from unlearn.scripting import output_dir, run_script

MODEL = "configs/models/toy_canvas.yaml"
METHOD = "configs/methods/esd_x.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reuse", nargs="+", type=int, default=[10], help="reuse factors to compare with 1")
    p.add_argument("--seeds", nargs="+", type=int, default=[23, 24, 25], help="main.py --seed of each training")
    p.add_argument("--concept", default="outlined")
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--images", type=int, default=4, help="images per (object, style) prompt in the evaluation")
    p.add_argument("--min-ua", type=float, default=95.0, help="the UA every seed of an acceptable source reaches")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="more overrides for main.py")
    p.add_argument("--out", default="scripts/bench/results/esd_speed", help="output folder")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # one timed training
    return p


# ---------------------------------------------------------------------------- one training (worker)
def timed_training(argv: list[str], out: Path) -> dict[str, Any]:
    """main.py's run for ``argv``, with ``trainer.fit`` timed and the UNet's image-forwards counted."""
    import torch

    from unlearn import cli

    trainer, model, data, paths, _, opts = cli.prepare(argv)
    counts = {"no_grad": 0, "grad": 0}

    def count(module, args, output):
        counts["grad" if torch.is_grad_enabled() else "no_grad"] += int(args[0].shape[0])

    handle = model.network.register_forward_hook(count)
    start = time.perf_counter()
    cli.fit(trainer, model, data, paths, opts)
    train_s = time.perf_counter() - start
    handle.remove()
    result = {
        "train_s": train_s,
        "iterations": int(trainer.global_step),
        "image_forwards": counts,
        "forward_equivalents": counts["no_grad"] + 3 * counts["grad"],  # a backward costs about two forwards
        "torch_threads": torch.get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)),  # the cores this process may run on (taskset)
        "run_dir": str(paths.run_dir),
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n", "timing")
    return result


# ---------------------------------------------------------------------------- orchestration
def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            tail = log.read_text().splitlines()[-20:]
            raise RuntimeError(f"{' '.join(cmd)} failed; last lines of {log}:\n" + "\n".join(tail))


def train(args, reuse: int, seed: int, out_dir: Path) -> dict[str, Any]:
    name = f"reuse{reuse}_seed{seed}"
    speed = out_dir / "runs" / f"{name}.speed.json"
    if not speed.is_file():
        main_argv = [
            "--base",
            MODEL,
            METHOD,
            f"concept={args.concept}",
            f"lr={args.lr}",
            f"iterations={args.iterations}",
            f"model.params.trajectory_config.params.reuse={reuse}",
            "lightning.callbacks.toy_benchmark=null",
            *args.set,
            "--seed",
            str(seed),
            "--name",
            name,
            "--logdir",
            str(out_dir / "runs"),
        ]
        _run([args.python, __file__, "--worker", str(speed), *main_argv], out_dir / "runs" / f"{name}.log")
    return json.loads(speed.read_text())


def evaluate(args, run: dict[str, Any], out: Path) -> dict[str, Any]:
    if not out.is_file():
        weights = Path(run["run_dir"]) / "erased.safetensors"
        cmd = [args.python, "scripts/evaluate.py", "--config", MODEL, "--weights", str(weights)]
        cmd += ["--concept", args.concept, "--images-per-prompt", str(args.images), "--out", str(out)]
        _run(cmd, out.parent / "evaluate.log")
    return json.loads(out.read_text())


def _machine(runs: list[dict[str, Any]]) -> str:
    """The machine and, where the runs recorded them, the cores and torch threads they were timed with."""
    import platform

    text = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    conditions = sorted({(r["cpus"], r["torch_threads"]) for r in runs if "cpus" in r})
    if conditions:
        text += " (timed on " + ", ".join(f"{c} core(s) with {t} torch threads" for c, t in conditions) + ")"
    return text


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric the mean, the lowest and the highest seed."""
    out: dict[str, Any] = {}
    for key in ("train_s", "forward_equivalents", *HEADLINE):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
    return out


def acceptable(candidate: dict[str, Any], reference: dict[str, Any], rows: list[dict[str, Any]], min_ua: float):
    """UA >= min_ua on every seed, and mean IRA and CRA not below the reference's lowest seed."""
    return (
        all(r["UA"] >= min_ua for r in rows)
        and candidate["IRA"]["mean"] >= reference["IRA"]["min"]
        and candidate["CRA"]["mean"] >= reference["CRA"]["min"]
    )


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"ESD-x on the toy model, `{s['concept']}`, lr {s['lr']}, {s['iterations']} iterations, seeds "
        f"{', '.join(map(str, s['seeds']))}; each export judged on {s['images']} images per prompt; training "
        f"time is `trainer.fit` on {s['machine']}; forward equivalents count UNet image-forwards (x3 with "
        "backward). With reuse > 1 the loss also takes the frozen model's predictions recorded along each "
        "trajectory (`trajectory_config.params.record_predictions`, on by default there"
        + (f"; overrides: `{' '.join(s['overrides'])}`" if s.get("overrides") else "")
        + ").",
        "",
        "| source | seed | train s | forward equivalents | UA | IRA | CRA | FD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| reuse {r['reuse']} | {r['seed']} | {r['train_s']:.0f} | {r['forward_equivalents']:,} | "
            + " | ".join(f"{r[k]:.1f}" for k in HEADLINE)
            + " |"
        )
    lines += ["", "| source | train s (mean) | speedup | FLOPs ratio | UA | IRA | CRA | FD | acceptable |"]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for reuse, summary in result["sources"].items():
        spread = " | ".join(
            f"{summary[k]['mean']:.1f} ({summary[k]['min']:.1f}–{summary[k]['max']:.1f})" for k in HEADLINE
        )
        lines.append(
            f"| reuse {reuse} | {summary['train_s']['mean']:.0f} | {summary['speedup']:.2f}× | "
            f"{summary['flops_ratio']:.2f}× | {spread} | {summary.get('acceptable', '')} |"
        )
    lines += ["", f"Chosen: reuse {result['chosen_reuse']} (the largest acceptable factor; 1 if none)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.worker:
        return timed_training(args.worker[1:], Path(args.worker[0]))
    if any(r < 1 for r in args.reuse) or 1 in args.reuse:
        raise ValueError(f"--reuse: factors above 1 (the reference, 1, always runs), got {args.reuse}")
    out_dir = output_dir(args.out)

    runs = []
    for seed in args.seeds:
        for reuse in [1, *args.reuse]:
            run = train(args, reuse, seed, out_dir)
            metrics = evaluate(args, run, out_dir / "eval" / f"reuse{reuse}_seed{seed}" / "metrics.json")
            runs.append(
                {
                    "reuse": reuse,
                    "seed": seed,
                    **{k: run[k] for k in ("train_s", "forward_equivalents", "cpus", "torch_threads") if k in run},
                    **{k: metrics.get(k) for k in HEADLINE},
                }
            )
    sources = {}
    for reuse in [1, *args.reuse]:
        sources[str(reuse)] = summarize([r for r in runs if r["reuse"] == reuse])
    reference = sources["1"]
    for reuse in args.reuse:
        summary = sources[str(reuse)]
        summary["speedup"] = reference["train_s"]["mean"] / summary["train_s"]["mean"]
        summary["flops_ratio"] = reference["forward_equivalents"]["mean"] / summary["forward_equivalents"]["mean"]
        summary["acceptable"] = acceptable(summary, reference, [r for r in runs if r["reuse"] == reuse], args.min_ua)
    reference.update(speedup=1.0, flops_ratio=1.0)
    good = [r for r in args.reuse if sources[str(r)]["acceptable"]]
    chosen = max(good) if good else 1
    best = sources[str(chosen if chosen != 1 else max(args.reuse))]
    result = {
        "settings": {
            "concept": args.concept,
            "lr": args.lr,
            "iterations": args.iterations,
            "seeds": args.seeds,
            "images": args.images,
            "min_ua": args.min_ua,
            "overrides": args.set,
            "machine": _machine(runs),
        },
        "runs": runs,
        "sources": sources,
        "chosen_reuse": chosen,
        "reference_s": reference["train_s"]["mean"],
        "reuse_s": best["train_s"]["mean"],
        "speedup": best["speedup"],
        "flops_ratio": best["flops_ratio"],
        "reference": {k: reference[k] for k in HEADLINE},
        "reuse": {k: best[k] for k in HEADLINE},
    }
    atomic_write_text(out_dir / "esd_speed.json", json.dumps(result, indent=2) + "\n", "results")
    atomic_write_text(out_dir / "esd_speed.md", markdown(result), "results")
    print(markdown(result))
    return result


if __name__ == "__main__":
    run_script(main)
