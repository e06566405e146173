"""Train the canvas judge on freshly rendered images, score it held-out and ship it.

Writes ``<out>`` (safetensors), ``JUDGE.md`` (a model card with the measured figures) and
``canvas_grid.png`` (one rendered sample per object x style) next to it.

    python scripts/train_judge.py --out checkpoints/toy/judge.safetensors
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

logger = logging.getLogger("train_judge")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("checkpoints/toy/judge.safetensors"), help="checkpoint path")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (each on a fresh batch)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--widths", type=int, nargs=4, default=[24, 48, 96, 128], help="channels of the 4 stages")
    p.add_argument("--seed", type=int, default=0, help="training data and init seed")
    p.add_argument("--eval-seed", type=int, default=20_240_601, help="seed of the held-out images")
    p.add_argument("--eval-images", type=int, default=4096)
    p.add_argument("--num-workers", type=int, default=1, help="render workers of the training loader")
    p.add_argument("--device", default="cpu", help="Lightning accelerator: cpu, gpu or auto")
    return p.parse_args(argv)


def write_card(path: Path, args: argparse.Namespace, n_params: int, train_s: float, acc: dict[str, float]) -> None:
    size_kb = args.out.stat().st_size / 1024
    reproduce = (
        f"python scripts/train_judge.py --out {args.out} --steps {args.steps} "
        f"--batch-size {args.batch_size} --seed {args.seed}"
    )
    from unlearn.atomic import atomic_write_text

    atomic_write_text(
        path,
        f"""# Canvas judge

Object and style classifier of the toy canvas world (`unlearn.data.canvas`), the stand-in
for UnlearnCanvas's classifiers. Load with `unlearn.eval.judge.load_judge`.

- File: `{args.out.name}` ({size_kb:.0f} KiB, safetensors; concept lists and architecture in its metadata)
- Architecture: `CanvasJudge(widths={list(args.widths)})`: 7 conv3x3-BN-ReLU layers (3 with stride 2),
  global average pool to {args.widths[-1]} features, linear object head (8) and style head (8)
- Parameters: {n_params:,}
- Input: {args.image_size}x{args.image_size} RGB in [-1, 1]
- Training: {args.steps} AdamW steps (one-cycle, peak lr {args.lr}), batch {args.batch_size}, every batch freshly
  rendered (seed {args.seed}, {args.steps * args.batch_size:,} images), device `{args.device}`, {train_s:.0f} s
- Held-out ({args.eval_images} fresh images, seed {args.eval_seed}):
  object {100 * acc["object_acc"]:.2f}%, style {100 * acc["style_acc"]:.2f}%, joint {100 * acc["joint_acc"]:.2f}%

Reproduce: `{reproduce}`
""",
        "judge card",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import lightning as L
    import torch

    from unlearn.data.canvas import CANVAS, render_canvas
    from unlearn.data.canvas_datamodule import CanvasDataModule
    from unlearn.eval.judge import CanvasJudge, save_judge
    from unlearn.eval.judge_training import JudgeTrainingModule, held_out_accuracy
    from unlearn.eval.report import save_image_grid

    L.seed_everything(args.seed, workers=True)
    judge = CanvasJudge(CANVAS.objects, CANVAS.styles, image_size=args.image_size, widths=args.widths)
    n_params = sum(p.numel() for p in judge.parameters())
    logger.info("judge: %d parameters", n_params)
    data = CanvasDataModule(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        train_length=args.steps * args.batch_size,
        val_length=512,
        image_size=args.image_size,
        seed=args.seed,
        caption_mode="joint",
    )
    module = JudgeTrainingModule(judge, lr=args.lr, total_steps=args.steps)
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=args.steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=50,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_s = time.perf_counter() - start
    logger.info("training took %.1f s", train_s)

    acc = held_out_accuracy(judge.cpu(), args.eval_images, seed=args.eval_seed, progress=True)
    logger.info(
        "held-out (%d images, seed %d): object %.2f%%, style %.2f%%, joint %.2f%%",
        args.eval_images,
        args.eval_seed,
        100 * acc["object_acc"],
        100 * acc["style_acc"],
        100 * acc["joint_acc"],
    )
    save_judge(judge, args.out)
    write_card(args.out.parent / "JUDGE.md", args, n_params, train_s, acc)

    cells = [(o, s) for o in range(len(CANVAS.objects)) for s in range(len(CANVAS.styles))]
    images = torch.stack(
        [torch.from_numpy(render_canvas(o, s, seed=1000 + i, size=args.image_size)) for i, (o, s) in enumerate(cells)]
    )
    save_image_grid(
        images.numpy(),
        [c[0] for c in cells],
        [c[1] for c in cells],
        args.out.parent / "canvas_grid.png",
        CANVAS.objects,
        CANVAS.styles,
    )
    if min(acc["object_acc"], acc["style_acc"]) < 0.98:
        logger.warning("held-out accuracy below 98%% on a head: %s", acc)


if __name__ == "__main__":
    main()
