#!/usr/bin/env python
"""Seconds per iteration and peak GPU memory of ESD-x, minimalist masks and DMD2 at SD 1.5 scale.

    python scripts/bench/bench_methods.py                       # on a GPU: random SD 1.5, every job
    python scripts/bench/bench_methods.py --tiny --device cpu --iters 1 --warmup 0   # CPU check
    bash scripts/bench/run_gpu.sh                               # on a CUDA machine (scripts/bench/README.md)

A random-weight SD 1.5 model of the real architecture (`save_random_pipeline`: UNet, CLIP
ViT-L/14 text encoder and VAE from the published configs, no download) is written once to a
temporary folder (or ``--model-path`` is reused); every job then loads it through
``load_model(configs/models/sd15.yaml + configs/methods/<method>.yaml, overrides)`` and runs
the engine's own ``training_step`` under a Lightning ``Trainer`` (``max_steps`` = warm-up +
timed iterations, ``bf16-mixed`` on CUDA), so the numbers are those of the code users run.

Jobs (the settings of the reference figures in ``REFERENCE``, measured on one H100):

* ``esd``: ESD-x (``xattn``), 512 px, 50-step DDIM with start guidance 3, batch 1, each
  iteration one fresh x_t from its own frozen-model trajectory (`TrajectoryPool`,
  pool_size 8). The pool is refilled every 8 iterations, so warm-up and timed iterations
  are multiples of 8 and the refills' sampling cost is amortised honestly over them.
* ``masks5`` / ``masks20``: minimalist masks on every Linear layer of the UNet, 5 / 20
  Euler trajectory steps, CFG 3, batch 1 (one concept/deconcept/keep triple).
* ``dmd2``: DMD2 with the official SD 1.5 recipe (one-step generator [999], teacher CFG
  1.75), batch 4, critic ratio 10, gradient checkpointing. The timed window is a multiple
  of 10 iterations starting after iteration 0, so it holds one generator update per 10.
* ``sample``: ``DiffusionEngine.generate`` at 50 DDIM steps, CFG 7.5, 16 images per batch,
  VAE decode included, under bf16 autocast; images per second.

Time: the clock starts (after ``torch.cuda.synchronize``) at the first timed iteration and
stops after the last one; s/it is the window over the iteration count. Memory: the peak of
``torch.cuda.max_memory_allocated`` over the whole job (load, warm-up and timed steps), the
counters reset between jobs; on a CPU there is no such counter and the peak is recorded as
null. Each job runs in its own try/except; a failure leaves ``<job>_error`` in the JSON.

Defaults on a GPU (warm-up + timed; ``--iters`` / ``--warmup`` override every job's count):
esd 8 + 16 (three pool refills, two in the window), masks5 1 + 3, dmd2 1 + 10, sample 1 + 2
batches of 16, masks20 1 + 2. Jobs run in that order, the slowest last, and
``--time-budget-s`` starts no job past the budget (the skipped job is recorded as such).
Estimated H100 wall time: model build ~20-40 s on 16 cores (printed), five loads of the
4.3 GB fp32 folder ~5 s each, esd ~10 s, masks5 ~10 s, dmd2 ~15 s (with the 3.4 GB student
written at the end), sample ~15 s, masks20 ~25 s (~80 s at the reference's 27 s/it): about 2-3 minutes, under 6 with
the slowest plausible numbers. A CPU run (``--tiny``) uses fp32 and batches of 2 images.

Writes ``<out-dir>/<gpu>.json`` (``esd_x_s_per_it``, ``esd_x_peak_gib``, ``masks5_*``,
``masks20_*``, ``dmd2_*``, ``sample_images_per_s``, ``gpu``, and details) and
``<out-dir>/<gpu>.md`` (job, ours, reference, target, met?), and prints the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a file: import unlearn (and the tiny test pipelines) from the repo
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench")

JOBS = ("esd", "masks5", "dmd2", "sample", "masks20")  # the slowest last: a time budget cuts it first
PREFIX = {"esd": "esd_x", "masks5": "masks5", "masks20": "masks20", "dmd2": "dmd2"}
# job: (warm-up, timed) iterations on a GPU; sample counts batches
DEFAULT_ITERS = {"esd": (8, 16), "masks5": (1, 3), "masks20": (1, 2), "dmd2": (1, 10), "sample": (1, 2)}
ESD_POOL, DMD2_RATIO, DMD2_BATCH, SAMPLE_BATCH = 8, 10, 4, 16
# Reference figures on one H100 and the targets: (ref s/it, ref GiB, target s/it, target GiB)
REFERENCE = {
    "esd_x": (1.48, 6.35, 0.15, 8.0),
    "masks5": (6.55, 10.9, 2.0, 8.0),
    "masks20": (27.2, 10.9, 8.0, None),  # memory target: equal to masks5
    "dmd2": (0.447, 28.1, 0.30, 16.0),
}
GIB = 2**30


# ---------------------------------------------------------------------------- model
def build_model_folder(args: argparse.Namespace, tmp: Path) -> tuple[Path, float]:
    """The random-weight pipeline folder and the seconds it took to build (0 when reused)."""
    if args.model_path:
        folder = Path(args.model_path)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"--model-path: {folder} holds no model_index.json (a diffusers pipeline folder)")
        return folder, 0.0
    start = time.perf_counter()
    if args.tiny:
        from tests.integration.tiny_pipelines import build_sd15

        folder = build_sd15(tmp / "tiny_sd15", tmp / "tokenizer_cache")
    else:
        from unlearn.networks.architectures import save_random_pipeline

        folder = save_random_pipeline(args.arch, tmp / args.arch)
    return folder, time.perf_counter() - start


def base_overrides(args: argparse.Namespace, folder: Path) -> list[str]:
    out = [f"model_path={folder}"]
    if args.tiny:
        from tests.integration.tiny_pipelines import IMAGE_SIZE

        out.append(f"model.params.image_size={IMAGE_SIZE}")
    return out


def method_overrides(job: str) -> tuple[str | None, list[str]]:
    """(method config name, overrides) of a job."""
    if job == "esd":
        return "esd_x", [
            "concept=Van Gogh",
            "template=concept",
            "train_method=xattn",
            "start_guidance=3.0",
            "ddim_steps=50",
            "image_size=null",
            "model.params.batch_size=1",
            f"model.params.trajectory_config.params.pool_size={ESD_POOL}",
        ]
    if job in ("masks5", "masks20"):
        steps = 5 if job == "masks5" else 20
        return "minimalist", [
            "concept=striped",
            f"model.params.trajectory_sampler_config.params.num_steps={steps}",
            "model.params.batch_size=1",
            "model.params.trajectory_sampler_config.params.guider_config.params.scale=3.0",
        ]
    if job == "dmd2":
        return "dmd2", [
            f"model.params.batch_size={DMD2_BATCH}",
            f"model.params.dfake_gen_update_ratio={DMD2_RATIO}",
            "model.params.gradient_checkpointing=true",
            "model.params.generator_timesteps=[999]",
            "model.params.objective_config.params.real_guidance_scale=1.75",
            "model.params.prompts_config.params.prompts=[a photo of a cat, a red car on a street]",
        ]
    return None, []


def load_engine(args: argparse.Namespace, folder: Path, job: str):
    from unlearn.engine.loading import load_model

    method, extra = method_overrides(job)
    configs = [ROOT / "configs" / "models" / f"{args.arch}.yaml"]
    if method:
        configs.append(ROOT / "configs" / "methods" / f"{method}.yaml")
    return load_model(configs, overrides=base_overrides(args, folder) + extra)


# ---------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_timer(warmup: int, device: str):
    """A Lightning callback timing batches ``warmup`` .. end as one window (synchronized)."""
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        def __init__(self):
            self.start: float | None = None
            self.end: float | None = None
            self.timed = 0
            self.step_times: list[float] = []
            self._t = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(device)
            self._t = time.perf_counter()
            if batch_idx == warmup:
                self.start = self._t

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            now = time.perf_counter()
            self.step_times.append(now - self._t)
            if batch_idx >= warmup:
                self.end, self.timed = now, self.timed + 1

        def seconds_per_it(self) -> float:
            if not self.timed or self.start is None or self.end is None:
                raise RuntimeError("no timed iteration ran")
            return (self.end - self.start) / self.timed

    return StepTimer()


def fit_timed(model, args: argparse.Namespace, warmup: int, iters: int, workdir: Path) -> dict[str, Any]:
    """Run ``warmup + iters`` training iterations of ``model`` under a Trainer; time the last ``iters``."""
    import lightning.pytorch as pl

    timer = make_timer(warmup, args.device)
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = pl.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        precision="bf16-mixed" if args.precision == "bf16" else "32-true",
        max_steps=warmup + iters,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(workdir),
        callbacks=[timer],
    )
    trainer.fit(model)
    return {"s_per_it": timer.seconds_per_it(), "step_times": [round(t, 4) for t in timer.step_times]}


def sample_timed(model, args: argparse.Namespace, warmup: int, iters: int) -> dict[str, Any]:
    """Images per second of ``generate`` (50 steps, the model's CFG 7.5, decode included)."""
    import torch

    model.to(args.device)
    batch = SAMPLE_BATCH if not args.tiny else 2
    prompts = [f"a photo of a cat, number {i}" for i in range(batch)]
    autocast = torch.autocast(
        device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16"
    )
    times = []
    for i in range(warmup + iters):
        _sync(args.device)
        start = time.perf_counter()
        with autocast:
            images = model.generate(prompts, seeds=range(i * batch, (i + 1) * batch), num_steps=50)
        _sync(args.device)
        times.append(time.perf_counter() - start)
        if not torch.isfinite(images).all():
            raise RuntimeError("generate returned non-finite images")
    timed = times[warmup:]
    return {"images_per_s": batch * len(timed) / sum(timed), "batch": batch, "step_times": [round(t, 4) for t in times]}


# ---------------------------------------------------------------------------- jobs
def run_job(job: str, args: argparse.Namespace, folder: Path, tmp: Path) -> dict[str, Any]:
    import torch

    warmup, iters = job_iters(job, args)
    cuda = args.device.startswith("cuda")
    baseline = 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / GIB  # what an earlier job left behind (should be ~0)
    start = time.perf_counter()
    model = load_engine(args, folder, job)
    load_s = time.perf_counter() - start
    try:
        if job == "sample":
            out = sample_timed(model, args, warmup, iters)
        else:
            out = fit_timed(model, args, warmup, iters, tmp / f"run_{job}")
        out.update(window_facts(job, model, warmup, iters))
    finally:
        del model
        gc.collect()
    out.update(load_s=round(load_s, 2), warmup=warmup, iters=iters, wall_s=round(time.perf_counter() - start, 2))
    if cuda:
        out["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        out["start_allocated_gib"] = baseline
        torch.cuda.empty_cache()
    else:
        out["peak_gib"] = None  # no allocator counter on the CPU
    return out


def _multiples_in(period: int, first: int, count: int) -> int:
    """How many of the iterations first .. first + count - 1 are multiples of ``period``."""
    return sum(1 for i in range(first, first + count) if i % period == 0)


def window_facts(job: str, model, warmup: int, iters: int) -> dict[str, Any]:
    """What the timed window holds: ESD pool refills, DMD2 generator updates (logged if uneven)."""
    if job == "esd":
        period = model.pool.pool_size // model.batch_size
        facts = {
            "pool_size": model.pool.pool_size,
            "pool_refills": int(model.pool.refills),
            "pool_refills_timed": _multiples_in(period, warmup, iters),
        }
    elif job == "dmd2":
        period = model.dfake_gen_update_ratio
        unet = getattr(model.generator, "unet", None)
        facts = {
            "generator_updates_timed": _multiples_in(period, warmup, iters),
            "gradient_checkpointing": bool(getattr(unet, "is_gradient_checkpointing", False)),
        }
    else:
        return {}
    if iters % period:
        log.warning(
            "%s: %d timed iterations are not a multiple of %d: the amortised cost is uneven", job, iters, period
        )
    return facts


def job_iters(job: str, args: argparse.Namespace) -> tuple[int, int]:
    warmup, iters = DEFAULT_ITERS[job]
    warmup = warmup if args.warmup is None else args.warmup
    iters = iters if args.iters is None else args.iters
    if iters < 1 or warmup < 0:
        raise ValueError(f"--iters must be >= 1 and --warmup >= 0, got {iters}, {warmup}")
    return warmup, iters


def record(results: dict[str, Any], job: str, out: dict[str, Any]) -> None:
    if job == "sample":
        results["sample_images_per_s"] = out.pop("images_per_s")
        results["sample_peak_gib"] = out.pop("peak_gib")
    else:
        p = PREFIX[job]
        results[f"{p}_s_per_it"] = out.pop("s_per_it")
        results[f"{p}_peak_gib"] = out.pop("peak_gib")
    results.setdefault("details", {})[job] = out


# ---------------------------------------------------------------------------- report
def _fmt(v: float | None, unit: str) -> str:
    return "n/a" if v is None else f"{v:.3g} {unit}"


def markdown_table(results: dict[str, Any]) -> str:
    comparable = results["gpu"] != "cpu" and results["arch"] == "sd15"  # targets are for SD 1.5 on a GPU
    rows = ["| job | ours | reference (H100) | target | met? |", "|---|---|---|---|---|"]
    for p, (ref_s, ref_gib, tgt_s, tgt_gib) in REFERENCE.items():
        s, gib = results.get(f"{p}_s_per_it"), results.get(f"{p}_peak_gib")
        if p == "masks20":
            tgt_gib = results.get("masks5_peak_gib")
        s_cmp, gib_cmp = (s, gib) if comparable else (None, None)
        met_s = "–" if s_cmp is None else ("yes" if s_cmp <= tgt_s else "no")
        rows.append(f"| {p} s/it | {_fmt(s, 's')} | {ref_s} s | ≤ {tgt_s} s | {met_s} |")
        if tgt_gib is None or gib_cmp is None:
            met_m = "–"
        else:  # masks20: "equal to 5 steps" within 2%
            met_m = "yes" if gib_cmp <= tgt_gib * (1.02 if p == "masks20" else 1.0) else "no"
        tgt = "= masks5" if p == "masks20" else f"≤ {tgt_gib} GiB"
        rows.append(f"| {p} peak | {_fmt(gib, 'GiB')} | {ref_gib} GiB | {tgt} | {met_m} |")
    rows.append(f"| sample 50 steps | {_fmt(results.get('sample_images_per_s'), 'img/s')} | – | – | – |")
    errors = {k: v for k, v in results.items() if k.endswith("_error")}
    total = f", whole run {results['total_s']:.0f} s" if "total_s" in results else ""
    notes = [
        f"\n{results['gpu']}, {results['arch']}, precision {results['precision']}, "
        f"model build {results['build_s']:.1f} s{total}."
    ]
    if not comparable:
        notes.append("Not the SD 1.5 architecture on a GPU: 'met?' is left blank, peaks are null on a CPU.")
    notes += [f"- {k}: {v.splitlines()[-1] if v else v}" for k, v in errors.items()]
    return "\n".join(rows + notes) + "\n"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sd15", choices=["sd15"], help="architecture of the random model")
    p.add_argument("--tiny", action="store_true", help="the tiny SD 1.5-shaped test pipeline (CPU checks)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument(
        "--precision",
        default=None,
        choices=["bf16", "fp32"],
        help="bf16 (Lightning bf16-mixed; default on CUDA) or fp32 (default on CPU)",
    )
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations of every job (default per job)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations of every job (default per job)")
    p.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated subset of {','.join(JOBS)}")
    p.add_argument("--out-dir", default=str(ROOT / "scripts" / "bench" / "results"))
    p.add_argument("--model-path", default=None, help="reuse this random pipeline folder instead of building one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="start no job once this many seconds have passed since the start (skipped jobs are recorded)",
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown or not jobs:
        raise ValueError(f"--jobs: unknown job(s) {unknown}; expected a subset of {','.join(JOBS)}")

    import lightning.pytorch as pl
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    args.precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    for job in jobs:
        job_iters(job, args)
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu"
    results: dict[str, Any] = {
        "gpu": gpu,
        "arch": "tiny-sd15" if args.tiny else args.arch,
        "precision": args.precision,
        "torch": torch.__version__,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unlearn-bench-") as tmp_name:
        tmp = Path(tmp_name)
        pl.seed_everything(args.seed, verbose=False)
        folder, results["build_s"] = build_model_folder(args, tmp)
        print(f"model: {folder} (built in {results['build_s']:.1f} s)", flush=True)
        for job in jobs:
            elapsed = time.perf_counter() - t_start
            if args.time_budget_s is not None and elapsed > args.time_budget_s:
                results[f"{PREFIX.get(job, job)}_error"] = f"skipped: {elapsed:.0f} s > --time-budget-s"
                write_results(results, out_dir, gpu)
                continue
            print(f"--- {job} ({elapsed:.0f} s so far)", flush=True)
            pl.seed_everything(args.seed, verbose=False)
            try:
                record(results, job, run_job(job, args, folder, tmp))
            except Exception as err:  # keep the other jobs' numbers
                results[f"{PREFIX.get(job, job)}_error"] = f"{type(err).__name__}: {err}"
                results.setdefault("tracebacks", {})[job] = traceback.format_exc()
                log.exception("job %s failed", job)
            gc.collect()  # a failed job's frames (model, optimizer) are gone now: free their memory
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            write_results(results, out_dir, gpu)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    write_results(results, out_dir, gpu)
    print(markdown_table(results), flush=True)
    return results


def write_results(results: dict[str, Any], out_dir: Path, gpu: str) -> None:
    from unlearn.atomic import atomic_write_text

    name = slug(gpu)
    atomic_write_text(out_dir / f"{name}.json", json.dumps(results, indent=2) + "\n", "results")
    atomic_write_text(out_dir / f"{name}.md", markdown_table(results), "results")


if __name__ == "__main__":
    from unlearn.scripting import run_script

    run_script(main)
