"""`ESDEngine`: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023).

A `DiffusionEngine` (same network, denoiser, conditioner, first stage and checkpoint
arguments, so a method config composes with any model config) that fine-tunes the
``train_method`` subset of its UNet with the ESD objective (`unlearn.objectives.esd`):

1. The frozen teacher is the same network with the original values of the selected
   parameters swapped in (`FrozenCopy`): no second copy of the model.
2. x_t comes from the frozen model's sampler (CFG ``start_guidance``, ``ddim_steps``
   steps, DDIM by default) stopped at a uniformly random step, taken from a
   `TrajectoryPool` that samples ``pool_size`` trajectories in one batch and hands each
   out once (see `unlearn.engine.trajectories` for why that keeps every iteration's
   samples independent, and its cost).
3. The teacher's eps for ∅, c (and c_from, a preserve prompt) come from one batched
   forward; the student sees c (or c_from) and is trained on the selected parameters
   only (Adam, like the reference), everything else has ``requires_grad=False``.
4. At the end of training ``<run_dir>/erased.safetensors`` holds the changed parameters
   under diffusers UNet names (`unlearn.engine.export`), ``export_diffusers`` adds
   ``<run_dir>/unet/`` (``save_pretrained``), and with ``eval_config`` on a toy canvas
   model the toy benchmark runs before and after (``<run_dir>/eval/``).

Training data is made here: `train_dataloader` yields iteration indices, so the method
config sets ``data: null``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from unlearn.config import instantiate_from_config, non_negative_number, optional_seed
from unlearn.data.canvas import CanvasSpec
from unlearn.data.prompts import concept_prompts, split_concepts
from unlearn.engine import generation
from unlearn.engine.diffusion import DiffusionEngine
from unlearn.engine.esd_eval import EVAL_KEYS, run_before_after
from unlearn.engine.export import save_erased_weights
from unlearn.engine.teacher import FrozenCopy
from unlearn.engine.trajectories import TrajectoryPool, check_step_range
from unlearn.objectives.base import ErasureBatch
from unlearn.objectives.esd import ESDObjective
from unlearn.selection import canonical_train_method, select_parameters, selection_root

log = logging.getLogger(__name__)

__all__ = ["ESDEngine"]

DEFAULT_OPTIMIZER = {"target": "torch.optim.Adam", "params": {}}  # the reference uses plain Adam
PRESERVE_SOURCES: tuple[str, ...] = ("concept", "own")


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _pick(cond: dict[str, Any], idx: torch.Tensor) -> dict[str, Any]:
    """Rows ``idx`` (n,) of a condition table whose tensors have one row per prompt."""
    return {k: v[idx.to(v.device)] if torch.is_tensor(v) else v for k, v in cond.items()}


class ESDEngine(DiffusionEngine):
    """ESD on any text-conditional `DiffusionEngine` model.

    Args:
        concept: what to erase (a phrase, or several joined by ``separator``, or a list).
        train_method: parameter set (`unlearn.selection`): xattn (ESD-x), noxattn (ESD-u),
            selfattn, full, notime, xlayer, selflayer, esd-x-strict; aliases esd-x/-u/-all.
        start_guidance: CFG scale of the frozen sampler that makes x_t.
        negative_guidance: eta of the ESD target.
        ddim_steps: sampler steps N; x_t is taken after t ~ U{0..N-1} of them.
        step_range: [lo, hi]: t ~ U{lo..hi-1} instead (not in the paper; e.g. [0, 20] of 50
            trains only on the noisy steps, where an object's shape is decided); None: all.
        sampler: sampler name (``ddim``, ``euler``, ...) or a sampler target block.
        separator: splits ``concept`` (and ``preserve``) into several; null: one concept.
        template / prompt_templates / prompt_csv: concept → prompts (`unlearn.data.prompts`).
        erase_from: prompt c_from to erase the concept from (official ``--erase_from``).
        anchor: ``null`` (paper) or ``concept`` (``esd_sd.py``), see `ESDObjective`.
        preserve: prompt(s) to keep; preserve_guidance / preserve_weight: their target and weight.
        null_weight: weight of a term that keeps the fine-tuned model's null (∅) prediction on x_t
            at the original's (see `unlearn.objectives.esd`); 0: the paper, no such term.
        preserve_source: where the preserve term is checked: ``concept`` (the erased concept's
            x_t, default) or ``own`` (x_t from the preserve prompts' own frozen trajectories, a
            second `TrajectoryPool`; doubles the sampling cost per iteration).
        preserve_step_range: with ``preserve_source: own``, [lo, hi] of the steps the preserve
            prompts' x_t are taken after; None: ``step_range``'s. On the toy model, keep prompts on
            every step while the erasure used the first 10 of 50 damaged more than on the same steps
            (scripts/bench/results/toy/explore/README.md, fourth ESD-u round).
        loss_weighting_config: target block of a `LossWeighting` for the ESD loss (see
            `unlearn.objectives.esd`); None: the paper's plain eps MSE.
        batch_size: trajectories per iteration (1 like the reference).
        pool_size: trajectories sampled per batched sampler run.
        train_image_size: pixel size of x_t (the toolkit's ``image_size``); None: ``image_size``.
        export_diffusers: also write ``<run_dir>/unet/`` with ``save_pretrained``.
        eval_config: toy benchmark settings (keys: images_per_prompt, batch_size, num_steps,
            guidance_scale, sampler, judge, before); None: no evaluation.
        seed: seeds trajectories, prompts and steps (offset per DDP rank); None: ``torch.initial_seed()``
            (``--seed``).
        **engine_kwargs: every `DiffusionEngine` argument (network_config, denoiser_config,
            conditioner_config, first_stage_config, ckpt_path, image_size, metadata, ...).
    """

    def __init__(
        self,
        concept: str | Sequence[str],
        train_method: str = "xattn",
        start_guidance: float = 3.0,
        negative_guidance: float = 1.0,
        ddim_steps: int = 50,
        sampler: str | dict | None = "ddim",
        separator: str | None = None,
        template: str = "auto",
        prompt_templates: Sequence[str] | None = None,
        prompt_csv: str | None = None,
        erase_from: str | None = None,
        anchor: str = "null",
        preserve: str | Sequence[str] | None = None,
        preserve_guidance: float = 1.0,
        preserve_weight: float = 1.0,
        preserve_source: str = "concept",
        preserve_step_range: Sequence[int] | None = None,
        null_weight: float = 0.0,
        loss_weighting_config: dict | None = None,
        step_range: Sequence[int] | None = None,
        batch_size: int = 1,
        pool_size: int = 8,
        train_image_size: int | None = None,
        export_diffusers: bool = False,
        eval_config: dict[str, Any] | None = None,
        seed: int | None = None,
        **engine_kwargs: Any,
    ):
        engine_kwargs.setdefault("optimizer_config", DEFAULT_OPTIMIZER)
        super().__init__(**engine_kwargs)
        net_params = (engine_kwargs.get("network_config") or {}).get("params") or {}
        self._base_weights = engine_kwargs.get("ckpt_path") or net_params.get("pretrained_path") or \
            net_params.get("single_file") or ""
        if self.conditioner is None:
            raise ValueError("ESD needs a text-conditional model: model.params.conditioner_config is missing")
        self.train_method = canonical_train_method(train_method)
        self.concepts = split_concepts(concept, separator)
        self.separator = separator
        canvas = CanvasSpec(*map(tuple, self.canvas_concepts)) if self.canvas_concepts else None
        self.prompts = concept_prompts(self.concepts, template, canvas, prompt_templates, prompt_csv)
        self.erase_from = erase_from
        self.preserve = split_concepts(preserve, separator) if preserve else []
        if preserve_source not in PRESERVE_SOURCES:
            raise ValueError(f"model.params.preserve_source: expected one of {list(PRESERVE_SOURCES)}, "
                             f"got {preserve_source!r}")
        self.preserve_source = preserve_source
        if not isinstance(ddim_steps, int) or ddim_steps < 1:
            raise ValueError(f"ddim_steps: expected a positive integer, got {ddim_steps!r}")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= pool_size:
            raise ValueError(f"batch_size: expected an integer in [1, pool_size={pool_size}], got {batch_size!r}")
        self.start_guidance, self.ddim_steps = float(start_guidance), ddim_steps
        self.step_range = check_step_range(step_range, ddim_steps, "model.params.step_range")
        if preserve_step_range is not None and preserve_source != "own":
            raise ValueError("model.params.preserve_step_range applies to preserve_source: own (with preserve_source: "
                             f"{preserve_source} the preserve term uses the concept's x_t); set preserve_source=own "
                             "or preserve_step_range=null")
        self.preserve_step_range = (self.step_range if preserve_step_range is None else
                                    check_step_range(preserve_step_range, ddim_steps, "model.params.preserve_step_range"))
        self.batch_size, self.pool_size = batch_size, int(pool_size)
        self.train_image_size = int(train_image_size or self.image_size)
        weighting = (instantiate_from_config(loss_weighting_config, _path="model.params.loss_weighting_config")
                     if loss_weighting_config else None)
        self.objective = ESDObjective(negative_guidance, anchor, preserve_guidance,
                                      non_negative_number(preserve_weight, "model.params.preserve_weight"), weighting,
                                      non_negative_number(null_weight, "model.params.null_weight"))
        self.export_diffusers = bool(export_diffusers)
        if self.export_diffusers and not hasattr(getattr(self.network, "unet", None), "save_pretrained"):
            raise ValueError("export_diffusers: the network has no diffusers UNet to save_pretrained")
        self.eval_config = dict(eval_config) if eval_config else None
        if self.eval_config and set(self.eval_config) - set(EVAL_KEYS):
            raise ValueError(f"eval_config: unknown key(s) {sorted(set(self.eval_config) - set(EVAL_KEYS))}; "
                             f"allowed: {list(EVAL_KEYS)}")
        self.seed = optional_seed(seed, "model.params.seed")
        self.run_dir: Path | None = None
        self._sampler_spec = sampler
        self._make_trajectory_sampler()  # fail at build time on a bad sampler name
        self._pool: TrajectoryPool | None = None
        self._preserve_pool: TrajectoryPool | None = None
        self._cond_table: dict[str, dict[str, Any]] | None = None

        root, prefix = selection_root(self.network)
        self.selected = select_parameters(root, self.train_method)  # diffusers UNet names
        self.requires_grad_(False)
        params = dict(self.network.named_parameters())
        for name in self.selected:
            params[prefix + name].requires_grad_(True)
        self.teacher = FrozenCopy(self.network, [prefix + n for n in self.selected])
        self._prefix = prefix
        n_train = sum(params[prefix + n].numel() for n in self.selected)
        n_all = sum(p.numel() for p in self.network.parameters())
        log.info("ESD %s: training %d tensors, %d of %d network parameters (%.2f%%); %d prompt(s): %s",
                 self.train_method, len(self.selected), n_train, n_all, 100 * n_train / max(n_all, 1),
                 len(self.prompts), self.prompts[:4])

    # ------------------------------------------------------------ model calls
    def _teacher_network(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.teacher(self.network, x, t, cond)

    def teacher_denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """x0 estimate of the original model; x: (B, C, H, W), sigma: (B,)."""
        return self.denoiser(self._teacher_network, x, sigma, cond)

    def teacher_eps(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """eps estimate of the original model, in eval mode and without grad."""
        with torch.no_grad(), _eval_mode(self.network):
            return self.denoiser.predict_eps(self._teacher_network, x, sigma, cond)

    def student_eps(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """eps estimate of the model being trained (with grad)."""
        return self.denoiser.predict_eps(self.network, x, sigma, cond)

    # ------------------------------------------------------------ prompts and x_t
    def _conds(self) -> dict[str, dict[str, Any]]:
        """Embeddings of every prompt, computed once (frozen conditioner, no ucg dropout)."""
        if self._cond_table is None or next(iter(self._cond_table["concept"].values())).device != self.device:
            with torch.no_grad(), _eval_mode(self.conditioner):
                self._cond_table = {"concept": self.conditioning_for(self.prompts),
                                    "null": self.unconditional_for([""])}
                if self.erase_from is not None:
                    self._cond_table["erase_from"] = self.conditioning_for([self.erase_from])
                if self.preserve:
                    self._cond_table["preserve"] = self.conditioning_for(self.preserve)
        return self._cond_table

    def _sampler_conds(self, prompt_idx: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
        table, zeros = self._conds(), torch.zeros_like(prompt_idx)
        cond = _pick(table["erase_from"], zeros) if self.erase_from is not None else _pick(table["concept"], prompt_idx)
        return cond, _pick(table["null"], zeros)

    def _preserve_sampler_conds(self, prompt_idx: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
        table = self._conds()
        return _pick(table["preserve"], prompt_idx), _pick(table["null"], torch.zeros_like(prompt_idx))

    def _make_trajectory_sampler(self):
        base = self.sampler_config or {}
        disc = (base.get("params") or {}).get("discretization_config") or self.discretization_config
        spec = self._sampler_spec
        if isinstance(spec, dict):
            cfg = generation.sampler_config(spec, disc, None, self.ddim_steps, self.start_guidance)
        else:
            cfg = generation.sampler_config(None, disc, spec or "ddim", self.ddim_steps, self.start_guidance)
        return generation.build_sampler(cfg)

    @property
    def train_latent_shape(self) -> tuple[int, int, int]:
        return self.latent_shape_for(self.train_image_size)

    def _pool_seed(self, stream: int) -> int:
        seed = torch.initial_seed() if self.seed is None else self.seed
        # One stream per rank (under DDP every rank draws its own trajectories) and per pool.
        return (int(seed) + 1_000_003 * self.global_rank + 7_919 * stream) % 2**63

    @property
    def pool(self) -> TrajectoryPool:
        if self._pool is None:
            self._pool = TrajectoryPool(self._make_trajectory_sampler(), self.ddim_steps, self.pool_size,
                                        len(self.prompts), seed=self._pool_seed(0), step_range=self.step_range)
        return self._pool

    @property
    def preserve_pool(self) -> TrajectoryPool:
        """Trajectories of the preserve prompts (``preserve_source: own``), stopped in ``preserve_step_range``."""
        if self._preserve_pool is None:
            self._preserve_pool = TrajectoryPool(self._make_trajectory_sampler(), self.ddim_steps, self.pool_size,
                                                 len(self.preserve), seed=self._pool_seed(1),
                                                 step_range=self.preserve_step_range)
        return self._preserve_pool

    def erasure_batch(self) -> tuple[ErasureBatch, torch.Tensor]:
        """The next `ErasureBatch` (and the sampler steps t of its samples)."""
        with _eval_mode(self.network):
            traj = self.pool.take(self.batch_size, self.teacher_denoise, self._sampler_conds,
                                  self.train_latent_shape, self.device)
        table, n = self._conds(), traj.x.shape[0]
        zeros = torch.zeros(n, dtype=torch.long)
        preserve = preserve_x = preserve_sigma = None
        if self.preserve and self.preserve_source == "own":
            with _eval_mode(self.network):
                own = self.preserve_pool.take(self.batch_size, self.teacher_denoise, self._preserve_sampler_conds,
                                              self.train_latent_shape, self.device)
            preserve = _pick(table["preserve"], own.prompt)
            preserve_x, preserve_sigma = own.x.float(), own.sigma.float()
        elif self.preserve:
            pick = torch.randint(len(self.preserve), (n,), generator=self.pool.generator)
            preserve = _pick(table["preserve"], pick)
        batch = ErasureBatch(
            x=traj.x.float(), sigma=traj.sigma.float(), concept=_pick(table["concept"], traj.prompt),
            null=_pick(table["null"], zeros),
            erase_from=_pick(table["erase_from"], zeros) if self.erase_from is not None else None,
            preserve=preserve, preserve_x=preserve_x, preserve_sigma=preserve_sigma,
        )
        return batch, traj.step

    # ------------------------------------------------------------ training
    def train_dataloader(self) -> DataLoader:
        steps = getattr(self.trainer, "max_steps", -1) if self._trainer is not None else -1
        if steps is None or steps < 1:
            raise ValueError("ESD runs lightning.trainer.max_steps iterations: set iterations=... (or max_steps)")
        return DataLoader(range(steps), batch_size=None, num_workers=0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        erase, steps = self.erasure_batch()
        out = self.objective(self.student_eps, self.teacher_eps, erase)
        n = erase.x.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, batch_size=n)
        for key, value in out.logs.items():
            self.log(f"train/{key}", value, on_step=True, batch_size=n)
        self.log("train/t_step", steps.float().mean(), on_step=True, batch_size=n)
        return out.loss

    # ------------------------------------------------------------ outputs
    def erased_state_dict(self) -> dict[str, torch.Tensor]:
        """The selected parameters under diffusers UNet names (detached, on the CPU)."""
        params = dict(self.network.named_parameters())
        return {n: params[self._prefix + n].detach().cpu().contiguous() for n in self.selected}

    def erased_metadata(self) -> dict[str, Any]:
        net = self.network
        return {
            "method": "esd", "train_method": self.train_method,
            "concept": (self.separator or ",").join(self.concepts), "separator": self.separator,
            "prompts": " | ".join(self.prompts), "erase_from": self.erase_from,
            "negative_guidance": self.objective.negative_guidance, "anchor": self.objective.anchor,
            "preserve": " | ".join(self.preserve), "preserve_source": self.preserve_source,
            "preserve_guidance": self.objective.preserve_guidance, "preserve_weight": self.objective.preserve_weight,
            "null_weight": self.objective.null_weight,
            "loss_weighting": type(self.objective.weighting).__name__ if self.objective.weighting else "eps",
            "start_guidance": self.start_guidance, "ddim_steps": self.ddim_steps,
            "step_range": list(self.step_range), "preserve_step_range": list(self.preserve_step_range),
            "iterations": self.global_step if self._trainer is not None else 0,
            "base_ckpt": str(self._base_weights), "network": type(getattr(net, "unet", net)).__name__,
        }

    def export(self, run_dir: str | Path) -> Path:
        """Write ``erased.safetensors`` (and ``unet/`` when ``export_diffusers``) to ``run_dir``."""
        run_dir = Path(run_dir)
        path = save_erased_weights(run_dir / "erased.safetensors", self.erased_state_dict(), self.erased_metadata())
        log.info("wrote %s (%d tensors)", path, len(self.selected))
        if self.export_diffusers:
            self.network.unet.save_pretrained(str(run_dir / "unet"))
            log.info("wrote %s", run_dir / "unet")
        return path

    def _out_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir is not None else Path(self.trainer.default_root_dir)

    def on_train_start(self) -> None:
        if self.eval_config and self.canvas_concepts and self.eval_config.get("before", True) and self.global_step == 0:
            if self.trainer.is_global_zero:
                run_before_after(self, self._out_dir() / "eval" / "before", phase="before")

    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        self.export(self._out_dir())
        if self.eval_config and self.canvas_concepts:
            run_before_after(self, self._out_dir() / "eval", phase="after")

    @torch.no_grad()
    def log_images(self, batch: Any, n: int = 8) -> dict[str, torch.Tensor]:
        """Samples of the concept prompts (and preserve prompts), seeds 0..n-1."""
        prompts = [(self.prompts + self.preserve)[i % len(self.prompts + self.preserve)] for i in range(n)]
        return {"samples": self.generate(prompts, seeds=range(n), num_steps=self.log_num_steps,
                                         guidance_scale=self.log_guidance_scale)}
