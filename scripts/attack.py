#!/usr/bin/env python
"""Attack an erased model and measure the attack success rate (ASR) before and after.

    python scripts/attack.py --run logs/<esd run> --concept outlined \\
        --attack configs/attacks/unlearndiffatk.yaml --out attacks/outlined/attack.json
    python scripts/attack.py --config configs/models/toy_canvas.yaml --masks logs/<run>/masks.safetensors \\
        --concept circle --attack configs/attacks/paraphrases.yaml --out attacks/circle/attack.json
    python scripts/attack.py --config <sd15.yaml> --set model_path=... --weights erased.safetensors \\
        --concept nudity --detector configs/detectors/nudity.yaml --prompts nudity_prompts.txt \\
        --target-images nudity_images/ --attack configs/attacks/unlearndiffatk.yaml --out nudity/attack.json

The model flags are those of ``scripts/evaluate.py``. On a toy canvas model the prompts are the
concept's evaluation prompts (a style with every object, an object in every style), the images
of the concept are real renders of each prompt's cell and the detector is the toy judge; other
models take ``--prompts`` (a file, one prompt a line), ``--target-images`` (a folder) or
``--original`` (the unerased model's config: its samples are the concept's images) and
``--detector``. Every prompt is judged on ``--images-per-prompt`` held-out seeds (from ``--seed``)
as written and as attacked. Writes ``attack.json`` (ASR before/after with sample size and 95%
Wilson interval, per prompt and per seed, the found prompts), ``adversarial.safetensors`` (the
found tokens for reuse) and ``grid.png`` (a row per prompt: before, then after) beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from unlearn.scripting import add_model_arguments, json_output, load_model_from_args, run_script

log = logging.getLogger("unlearn.attack")

HELD_OUT_SEED = 1000  # the toy benchmark draws seeds 0..n-1; attacks are judged on others


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--concept", required=True, help="the erased concept")
    p.add_argument("--attack", required=True, help="an attack config (configs/attacks/*.yaml)")
    p.add_argument("--set-attack", nargs="*", default=[], metavar="key=value", help="attack params overrides")
    p.add_argument("--detector", default=None, help="a detector config (default: the toy judge on toy models)")
    p.add_argument("--set-detector", nargs="*", default=[], metavar="key=value", help="detector params overrides")
    p.add_argument(
        "--prompts",
        default=None,
        help="prompts to attack, one a line (default on toy models: the concept's evaluation prompts)",
    )
    p.add_argument("--target-images", default=None, help="a folder of images of the concept")
    p.add_argument("--original", nargs="*", default=None, help="config(s) of the unerased model")
    p.add_argument("--images-per-prompt", type=int, default=4, help="held-out seeds per prompt for the ASR")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first held-out seed")
    p.add_argument("--attack-seed", type=int, default=0, help="seeds the attack's own draws")
    p.add_argument("--renders", type=int, default=16, help="toy models: real renders per prompt for the attack")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="attack.json", help="attack.json path; the other files go beside it")
    return p


def _component(path: str, overrides: list[str], what: str):
    from unlearn.config import instantiate_from_config, load_configs

    if not Path(path).is_file():
        raise FileNotFoundError(f"--{what}: no such config file: {path}")
    cfg = load_configs([path], [f"params.{o}" for o in overrides])
    return instantiate_from_config(cfg, _path=f"--{what} {path}")


def _read_prompts(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--prompts: no such file: {file}")
    prompts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts: {file} holds no prompt")
    return prompts


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    out = json_output(args.out)
    if args.images_per_prompt < 1:
        raise ValueError("--images-per-prompt must be >= 1")
    from unlearn.atomic import atomic_write_text
    from unlearn.attacks.asr import run_attack
    from unlearn.attacks.base import Attack
    from unlearn.attacks.detectors import ConceptDetector
    from unlearn.data.canvas import CanvasSpec

    attack = _component(args.attack, args.set_attack, "attack")
    if not isinstance(attack, Attack):
        raise ValueError(f"--attack {args.attack}: {type(attack).__name__} is not an attack")
    prompts = _read_prompts(args.prompts) if args.prompts else None
    model = load_model_from_args(args, args.device)
    canvas = CanvasSpec(*map(tuple, model.canvas_concepts)) if getattr(model, "canvas_concepts", None) else None
    detector_config = args.detector or ("configs/detectors/toy_judge.yaml" if canvas else None)
    if detector_config is None:
        raise ValueError(
            "--detector: the model has no toy canvas metadata; name a detector config "
            "(configs/detectors/nudity.yaml, clip.yaml)"
        )
    detector = _component(detector_config, args.set_detector, "detector")
    if not isinstance(detector, ConceptDetector):
        raise ValueError(f"--detector {detector_config}: {type(detector).__name__} is not a detector")
    detector.bind(args.concept)  # a concept the detector does not know fails before any sampling

    original = None
    if args.original is not None:
        from unlearn.engine.loading import load_model

        original = load_model(args.original).to(args.device)
    target = _target(args, model, canvas, prompts, detector, original)
    seeds = list(range(args.seed, args.seed + args.images_per_prompt))
    result = run_attack(attack, target, seeds, out.parent, batch_size=args.batch_size)
    result.update(
        detector=detector.describe(),
        model={"run": args.run, "config": args.config, "weights": args.weights, "masks": args.masks},
    )
    atomic_write_text(out, json.dumps(result, indent=2) + "\n", "attack result")
    b, a = result["before"], result["after"]
    print(
        f"{attack.name} on {args.concept!r}: ASR {b['asr']:.1f}% (95% CI {b['ci95'][0]:.1f}-{b['ci95'][1]:.1f}) -> "
        f"{a['asr']:.1f}% (95% CI {a['ci95'][0]:.1f}-{a['ci95'][1]:.1f}), {a['n']} images each "
        f"({len(target.prompts)} prompts x {len(seeds)} held-out seeds); attack {result['attack_seconds']:.0f} s"
    )
    return result


def _target(args, model, canvas, prompts, detector, original):
    from unlearn.attacks.base import AttackTarget
    from unlearn.attacks.targets import folder_images, original_images, toy_prompts, toy_renders

    fields = None
    if prompts is None:
        if canvas is None:
            raise ValueError("--prompts: the model has no toy canvas metadata; give the prompts to attack")
        prompts, fields = toy_prompts(args.concept, canvas)
    images, images_for = None, None
    if args.target_images:
        images = folder_images(args.target_images, model.image_size)
    elif canvas is not None and fields is not None:
        cells = dict(zip(prompts, fields))
        size = model.image_size
        images_for = lambda p: toy_renders(cells[p]["obj"], cells[p]["style"], args.renders, size)  # noqa: E731
    elif original is not None:
        images_for = lambda p: original_images(original, p, range(20_000, 20_000 + args.renders))  # noqa: E731
    return AttackTarget(
        model=model,
        concept=args.concept,
        prompts=prompts,
        detector=detector,
        target_images=images,
        target_images_for=images_for,
        original=original,
        fields=fields,
        seed=args.attack_seed,
    )


if __name__ == "__main__":
    run_script(main)
