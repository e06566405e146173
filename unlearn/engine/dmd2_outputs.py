"""What a DMD2 run leaves behind: the student's weights and the toy benchmark.

``student.safetensors`` holds the generator's UNet under **diffusers** names with any LoRA
folded in, plus string metadata (``format``, ``method``, ``generator_timesteps``, the
teacher's sources and guidance). In plain diffusers::

    unet.load_state_dict(load_file("student.safetensors"))
    # then sample with the conditioning timesteps of the metadata (e.g. 999, 749, 499, 249):
    # x0 = unet's x0 prediction at t_i; x = scheduler.add_noise(x0, noise, t_{i+1}); ...
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from unlearn.eval.metrics import HEADLINE

log = logging.getLogger(__name__)

__all__ = ["STUDENT_FORMAT", "EVAL_KEYS", "export_student", "erased_concepts", "run_evaluation",
           "progress_dir", "run_progress_evaluation"]

STUDENT_FORMAT = "unlearn-dmd2-student/1"
EVAL_KEYS = ("erased", "images_per_prompt", "batch_size", "judge", "num_steps", "teacher", "every_n_steps")


def export_student(model, path: str | Path) -> Path:
    """Write the generator of a `DMD2Engine` to ``path`` (.safetensors) with its metadata."""
    from safetensors.torch import save_file

    from unlearn.networks.lora import merged_state_dict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in merged_state_dict(model.generator).items()}
    meta = {
        "format": STUDENT_FORMAT,
        "method": "dmd2",
        "generator_timesteps": json.dumps(model.generator_timesteps),
        "real_guidance_scale": str(model.guidance.real_cfg.scale),
        "generator_updates": str(model.generator_updates),
        "critic_updates": str(model.critic_updates),
        **{k: "" if v is None else str(v) for k, v in model.provenance.items()},
        "teacher_concept": model.teacher_metadata.get("concept", ""),
    }
    save_file(tensors, str(path), metadata=meta)
    log.info("wrote the student (%d tensors) to %s", len(tensors), path)
    return path


def erased_concepts(model) -> list[str]:
    """``eval_config.erased``, else the concept(s) recorded in the teacher's erased weights."""
    cfg = model.eval_config or {}
    erased = cfg.get("erased")
    if erased is None:
        concept = model.teacher_metadata.get("concept", "")
        sep = model.teacher_metadata.get("separator") or ","
        erased = [c.strip() for c in concept.split(sep) if c.strip()]
    return [erased] if isinstance(erased, str) else list(erased)


class _TeacherView:
    """What `run_toy_benchmark` needs of a model (``generate``, ``device``), for the teacher."""

    def __init__(self, engine):
        self.engine = engine

    @property
    def device(self):
        return self.engine.device

    def generate(self, prompts, seeds=None, sampler=None):
        return self.engine.teacher_generate(prompts, seeds, **({"sampler": sampler} if sampler else {}))


def run_evaluation(model, out_dir: str | Path, teacher: bool | None = None,
                   student_from: str | Path | None = None) -> dict[str, Any]:
    """Toy benchmark of the student into ``out_dir`` (and of the teacher into ``out_dir/teacher``
    when ``teacher``, default ``eval_config.teacher``). ``student_from``: a directory where the
    same student was already benchmarked (a progress evaluation at the final iteration); its
    files are copied instead of sampling and judging the student a second time."""
    from unlearn.eval.toy_benchmark import run_toy_benchmark

    cfg = dict(model.eval_config or {})
    if teacher is None:
        teacher = bool(cfg.get("teacher"))
    out_dir = Path(out_dir)
    erased = erased_concepts(model)
    kwargs: dict[str, Any] = {
        "erased": erased, "images_per_prompt": int(cfg.get("images_per_prompt", 4)),
        "batch_size": int(cfg.get("batch_size", 64)), "model_concepts": model.canvas_concepts,
    }
    if cfg.get("judge"):
        kwargs["judge"] = cfg["judge"]
    if student_from is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in Path(student_from).iterdir():
            if f.is_file():
                shutil.copy2(f, out_dir / f.name)
        results = {"student": json.loads((out_dir / "metrics.json").read_text())}
    else:
        results = {"student": run_toy_benchmark(model, out_dir=out_dir, sampler=model.make_sampler(
            num_steps=cfg.get("num_steps")), **kwargs)}
    if teacher:
        results["teacher"] = run_toy_benchmark(_TeacherView(model), out_dir=out_dir / "teacher", **kwargs)
        s, t = results["student"], results["teacher"]
        log.info("DMD2 student vs teacher: FD %.3f vs %.3f (ratio %.2f), UA %.2f vs %.2f", s["FD"], t["FD"],
                 s["FD"] / max(t["FD"], 1e-12), s.get("UA", float("nan")), t.get("UA", float("nan")))
    if model.logger is not None:
        model.logger.log_metrics({f"eval/{k}": float(v) for k, v in results["student"].items()
                                  if k in HEADLINE and isinstance(v, (int, float))},
                                 step=model.global_step)
    return results


def progress_dir(eval_dir: str | Path, step: int) -> Path:
    """Where `run_progress_evaluation` benchmarks the student of critic iteration ``step``."""
    return Path(eval_dir) / f"step_{int(step)}"


def run_progress_evaluation(model, eval_dir: str | Path) -> dict[str, Any]:
    """The student's toy benchmark at the current iteration, into ``eval_dir/step_<n>``; its
    headline figures are appended to ``eval_dir/progress.jsonl`` and ``progress.md``.

    Distillation can undo an erasure while FD still improves (the toy table's DMD2 students
    lose UA as they train), so ``eval_config.every_n_steps`` watches both during the run.
    """
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    step = int(model.critic_updates)
    was_training = model.training
    model.eval()
    try:
        student = run_evaluation(model, progress_dir(eval_dir, step), teacher=False)["student"]
    finally:
        model.train(was_training)
    row = {"step": step, "generator_updates": int(model.generator_updates),
           **{k: float(student[k]) for k in HEADLINE if isinstance(student.get(k), (int, float))}}
    with (eval_dir / "progress.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in (eval_dir / "progress.jsonl").read_text().splitlines() if line.strip()]
    table = ["| iteration | generator updates | " + " | ".join(HEADLINE) + " |", "|---" * (2 + len(HEADLINE)) + "|"]
    table += [f"| {r['step']} | {r['generator_updates']} | " + " | ".join(
        f"{r[k]:.1f}" if k in r and r[k] == r[k] else "n/a" for k in HEADLINE) + " |" for r in rows]
    (eval_dir / "progress.md").write_text("\n".join(table) + "\n")
    log.info("DMD2 student at iteration %d: %s", step, ", ".join(f"{k} {row[k]:.2f}" for k in HEADLINE if k in row))
    return row
