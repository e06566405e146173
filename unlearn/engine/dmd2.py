"""`DMD2Engine`: distil any engine model into a 1-4 step generator (Yin et al., NeurIPS 2024).

The model block is the **teacher**, so ``--base <any model config> configs/methods/dmd2.yaml``
works:

1. Teacher: ``network`` as loaded (``ckpt_path``), then ``teacher_weights`` (an erasure run's
   ``erased.safetensors``) and ``teacher_masks`` (a minimalist masks file, hooked on the
   teacher only). Frozen, always in eval mode.
2. Generator and critic: copies of the teacher made *after* its weights are in (so an
   erased teacher gives an erased student to start from), full or LoRA (``generator_copy`` /
   ``critic_copy``, `unlearn.networks.lora.NetworkCopy`; a LoRA copy shares every teacher
   tensor and trains only its adapters). With ``teacher_masks`` both start from the unmasked
   weights.
3. Each iteration (DMD2's ``train_sd.py`` order): the generator makes x̂ (from pure noise
   at its first timestep, or from its own backward-simulated input at a later one);
   every ``dfake_gen_update_ratio``-th iteration (iterations 0, r, 2r, ...) the generator
   is updated first with the objective's generator loss (DM + GAN); then the critic (+
   classifier) is updated on sg(x̂) every iteration. The losses are the objective's
   (``objective_config``, a `DistillationObjective`: `unlearn.objectives.dmd2.DMD2Objective`).
   ``trainer.global_step`` counts iterations, i.e. critic updates: the generator's optimizer
   steps through the strategy without advancing it, so ``max_steps`` is the number of DMD2
   iterations. Both counts are saved in checkpoints.
4. ``generate`` / ``make_sampler`` sample the generator with `FewStepSampler`, so
   ``scripts/sample.py`` and ``scripts/evaluate.py`` use the student unchanged; `export`
   writes ``student.safetensors``: the generator (diffusers UNet names, LoRA merged).

Prompts come from ``prompts_config`` (`unlearn.data.prompt_list.PromptDataset`), so the
method config sets ``data: null``; ``real_data_config`` adds real images for the GAN.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from unlearn.atomic import save_safetensors
from unlearn.config import ConfigError, instantiate_from_config
from unlearn.diffusion.samplers.few_step import FewStepSampler, per_sample_noise_sampler
from unlearn.engine.erasure import ErasureEngine
from unlearn.networks.lora import NetworkCopy, merged_state_dict
from unlearn.objectives.base import DistillationObjective

log = logging.getLogger(__name__)

__all__ = ["DMD2Engine", "STUDENT_FORMAT"]

DEFAULT_PROMPTS = {"target": "unlearn.data.prompt_list.PromptDataset"}
STUDENT_FORMAT = "unlearn-dmd2-student/1"


@contextlib.contextmanager
def _no_grads_for(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Switch ``requires_grad`` off for ``params`` (those that had it) and back on afterwards."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class DMD2Engine(ErasureEngine):
    """DMD2 distillation of the engine's model; the arguments below come on top of
    `DiffusionEngine`'s model arguments (network_config, ..., ckpt_path, image_size).

    Args:
        objective_config: the losses, a `DistillationObjective` block (`DMD2Objective`: CFG of
            the teacher's and the critic's scores, DM noise range, GAN head and weights).
        generator_timesteps: the generator's conditioning timesteps; [999] for one step.
        dfake_gen_update_ratio: critic updates per generator update (DMD2: 10 for SD1.5).
        generator_lr / critic_lr: learning rates of the two optimizers (``optimizer_config``,
            ``scheduler_config`` build both).
        grad_clip: gradient-norm clipping of each optimizer's parameters; None: off.
        generator_copy / critic_copy: how each is copied from the teacher (`NetworkCopy`: full,
            or LoRA with ``lora_rank``); None: a full copy.
        backward_simulation: a multi-step generator's input at step k is its own k-step
            sample re-noised (True, DMD2 Sec. 4.4), or a noised real image (False).
        real_data_config: a dataset block whose items hold ``input_key`` images and "txt"
            captions (e.g. `unlearn.data.canvas_datamodule.CanvasDataset`): the GAN's real
            images, and the generator's noisy inputs when ``backward_simulation`` is off.
        prompts_config: dataset of {"txt": prompt} (default: the toy canvas captions).
        batch_size / num_workers: of the prompt (and real-image) loaders.
        teacher_weights: an ``erased.safetensors`` applied to the teacher before the copies.
        teacher_masks: a minimalist masks file registered on the teacher after the copies.
    """

    uses_base_learning_rate = False
    learning_rate_keys = "DMD2 sets generator_lr and critic_lr"
    supports_adversary = False
    export_name = "student.safetensors"

    def __init__(
        self,
        objective_config: dict,
        generator_timesteps: Sequence[int] = (999, 749, 499, 249),
        dfake_gen_update_ratio: int = 10,
        generator_lr: float = 1e-5,
        critic_lr: float = 1e-5,
        grad_clip: float | None = 10.0,
        generator_copy: NetworkCopy | None = None,
        critic_copy: NetworkCopy | None = None,
        backward_simulation: bool = True,
        real_data_config: dict | None = None,
        prompts_config: dict | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        teacher_weights: str | None = None,
        teacher_masks: str | None = None,
        **engine_kwargs: Any,
    ):
        super().__init__(**engine_kwargs)
        self.automatic_optimization = False
        if (
            isinstance(dfake_gen_update_ratio, bool)
            or not isinstance(dfake_gen_update_ratio, int)
            or dfake_gen_update_ratio < 1
        ):
            raise ConfigError(
                f"model.params.dfake_gen_update_ratio: expected a positive integer, got {dfake_gen_update_ratio!r}"
            )
        for key, copier in (("generator_copy", generator_copy), ("critic_copy", critic_copy)):
            if copier is not None and not isinstance(copier, NetworkCopy):
                raise ConfigError(f"model.params.{key}: expected a NetworkCopy block, got {copier!r}")
        self.student_discretization = self._student_discretization()
        self.student_sampler = FewStepSampler(self.student_discretization, list(generator_timesteps))
        self.generator_timesteps = list(self.student_sampler.timesteps)
        self.dfake_gen_update_ratio = dfake_gen_update_ratio
        self.generator_lr, self.critic_lr = float(generator_lr), float(critic_lr)
        self.grad_clip = grad_clip
        self.backward_simulation = bool(backward_simulation)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.prompt_set = instantiate_from_config(
            prompts_config or DEFAULT_PROMPTS, _path="model.params.prompts_config"
        )
        self.real_set = (
            instantiate_from_config(real_data_config, _path="model.params.real_data_config")
            if real_data_config
            else None
        )
        self.provenance = {
            "teacher_ckpt": engine_kwargs.get("ckpt_path"),
            "teacher_weights": teacher_weights,
            "teacher_masks": teacher_masks,
        }

        # 1. the teacher's weights are final before anything is copied from it
        self.teacher_metadata: dict[str, str] = {}
        if teacher_weights:
            from unlearn.engine.export import apply_erased_weights

            self.teacher_metadata = apply_erased_weights(self, teacher_weights)

        # 2. generator and critic (the objective owns the critic)
        self.generator = (generator_copy or NetworkCopy())(self.network, "generator")
        self.objective: DistillationObjective = self.build_objective(
            objective_config,
            DistillationObjective,
            teacher=self.network,
            denoiser=self.denoiser,
            discretization=self.student_sampler.discretization,
            critic=(critic_copy or NetworkCopy())(self.network, "critic"),
        )
        if self.conditioner is None and getattr(getattr(self.objective, "real_cfg", None), "scale", 1.0) != 1.0:
            raise ConfigError(
                "model.params.objective_config.params.real_guidance_scale: CFG needs a conditioner "
                "(model.params.conditioner_config)"
            )
        multi_step_without_data = len(self.generator_timesteps) > 1 and not self.backward_simulation
        if (self.objective.needs_real_images or multi_step_without_data) and self.real_set is None:
            why = "gan_classifier" if self.objective.needs_real_images else "backward_simulation: false (multi-step)"
            raise ConfigError(f"model.params.real_data_config: {why} needs real images")

        # 3. masks change the teacher only (hooks on its own modules)
        self.teacher_masks = None
        if teacher_masks:
            from unlearn.hooks.io import apply_masks

            self.teacher_masks = apply_masks(self.network, teacher_masks).requires_grad_(False)

        self.generator_updates = 0
        self.critic_updates = 0
        self._sample_teacher = False
        n_gen = sum(p.numel() for p in self.generator.parameters() if p.requires_grad)
        n_critic = sum(p.numel() for p in self.objective.trainable_parameters())
        log.info(
            "DMD2: %d-step generator %s (%d trainable), critic %d trainable, teacher %d frozen parameters",
            len(self.generator_timesteps),
            self.generator_timesteps,
            n_gen,
            n_critic,
            sum(p.numel() for p in self.network.parameters()),
        )

    def _student_discretization(self) -> dict:
        """The generator's schedule: the DDPM grid the denoiser was trained on, or, for a flow model
        (whose denoiser has none), the model's sampling schedule with its shift (Flux's token count
        filled in)."""
        if self.discretization_config is not None:
            return self.discretization_config
        few_step = {"target": "unlearn.diffusion.samplers.FewStepSampler", "params": {}}
        return self.frozen_sampler_config(few_step)["params"]["discretization_config"]

    # ------------------------------------------------------------------ model calls
    @property
    def sampling_network(self) -> nn.Module:
        return self.network if self._sample_teacher else self.generator

    def student_denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """The generator's x̂ = G(x, sigma); x: (B, C, H, W), sigma: (B,)."""
        return self.denoiser(self.generator, x, sigma, cond)

    def _uncond(self, n: int) -> dict[str, torch.Tensor] | None:
        return self.unconditional_for([""] * n) if self.conditioner is not None else None

    def _real_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        real = batch.get("real")
        if real is None:
            return None
        if self.input_key not in real or "txt" not in real:
            raise ValueError(f"real_data_config: items need {self.input_key!r} and 'txt', got keys {sorted(real)}")
        x0 = self.encode_first_stage(real[self.input_key].to(self.device))
        return x0, self.conditioning_for(list(real["txt"]))

    def generator_inputs(
        self, cond: dict[str, Any], n: int, real: torch.Tensor | None = None, step: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, C, H, W), sigma (n,)): the generator's input at conditioning step k.

        k (``step``, default uniform in [0, N)) = 0 is pure noise; for k > 0 the input is the
        generator's own k-step sample, i.e. its x̂ at step k - 1 re-noised to sigma_k with
        fresh noise (backward simulation, no grad), or ``real`` noised to sigma_k.
        """
        sigmas = self.student_sampler.get_sigmas(device=self.device)  # (N + 1,)
        num = len(self.generator_timesteps)
        noise = torch.randn((n, *self.latent_shape), device=self.device)
        if num == 1 or self.backward_simulation:
            k = int(torch.randint(0, num, ())) if step is None else int(step)
            if not 0 <= k < num:
                raise ValueError(f"step: expected a conditioning step in [0, {num}), got {k}")
            with torch.no_grad():
                x = self.student_sampler(self.student_denoise, noise, cond, None, sigmas=sigmas, end_step=k)
            return x, sigmas[k].expand(n)
        if real is None:
            raise ValueError("generator_inputs: without backward simulation a multi-step generator needs real images")
        k = (torch.randint(0, num, (n,)) if step is None else torch.full((n,), int(step))).to(self.device)
        sigma = sigmas[k]  # (n,)
        discretization = self.student_sampler.discretization
        x = discretization.add_noise(real, torch.randn_like(real), sigma)
        pure = (k == 0)[:, None, None, None]
        return torch.where(pure, noise * discretization.prior_scale(sigmas[0]), x), sigma

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_g, opt_c = self.optimizers()
        sched_g, sched_c = _schedulers(self.lr_schedulers())
        real = self._real_batch(batch)
        multi_step_real = len(self.generator_timesteps) > 1 and not self.backward_simulation
        prompts = list(batch["real"]["txt"] if multi_step_real else batch["prompts"]["txt"])
        cond, uc = self.conditioning_for(prompts), self._uncond(len(prompts))
        update_generator = self.critic_updates % self.dfake_gen_update_ratio == 0
        logs: dict[str, torch.Tensor] = {}

        # 1. generator samples x̂; every ratio-th iteration the generator is updated first
        x_in, sigma_in = self.generator_inputs(cond, len(prompts), real[0] if real is not None else None)
        with torch.set_grad_enabled(update_generator):
            x_hat = self.student_denoise(x_in, sigma_in, cond)  # (B, C, H, W)
        if update_generator:
            with _no_grads_for(self.objective.parameters()):  # the critic gets no gradient from G's loss
                out_g = self.objective.generator_loss(x_hat, cond, uc)
                logs.update(out_g.logs)
                self.loss_terms = {"loss_generator": out_g.loss.detach(), **out_g.logs}
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(out_g.loss)
            # The strategy steps G's optimizer (precision, hooks, clipping) without counting a global step.
            self.trainer.strategy.optimizer_step(opt_g.optimizer, closure=lambda: None)
            opt_g.zero_grad(set_to_none=True)
            self.generator_updates += 1
        if sched_g is not None:
            sched_g.step()

        # 2. the critic (and classifier) learn the generator's distribution from sg(x̂)
        out_c = self.objective.critic_loss(x_hat.detach(), cond, real)
        logs.update(out_c.logs)
        self.loss_terms = {"loss_critic": out_c.loss.detach(), **out_c.logs}
        opt_c.zero_grad(set_to_none=True)
        self.manual_backward(out_c.loss)
        opt_c.step()
        opt_c.zero_grad(set_to_none=True)
        if sched_c is not None:
            sched_c.step()
        self.critic_updates += 1

        logs["generator_updates"] = torch.tensor(float(self.generator_updates))
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True, batch_size=len(prompts))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after AMP unscaling, for both optimizers.
        if self.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=float(self.grad_clip), gradient_clip_algorithm="norm")

    def optimized_parameters(self) -> list[list[dict[str, Any]]]:
        return [
            [{"params": [p for p in self.generator.parameters() if p.requires_grad], "lr": self.generator_lr}],
            [{"params": self.objective.trainable_parameters(), "lr": self.critic_lr}],
        ]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.generator.parameters() if p.requires_grad] + self.objective.trainable_parameters()

    def train_dataloader(self) -> dict[str, DataLoader]:
        def loader(dataset) -> DataLoader:
            return DataLoader(
                dataset,
                batch_size=self.batch_size,
                shuffle=False,
                drop_last=True,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )

        loaders = {"prompts": loader(self.prompt_set)}
        if self.real_set is not None:
            loaders["real"] = loader(self.real_set)
        return loaders

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dmd2"] = {"generator_updates": self.generator_updates, "critic_updates": self.critic_updates}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counts = checkpoint.get("dmd2", {})
        self.generator_updates = int(counts.get("generator_updates", 0))
        self.critic_updates = int(counts.get("critic_updates", 0))

    # ------------------------------------------------------------------ outputs
    @property
    def erased_concepts(self) -> list[str]:
        """The concept(s) recorded in the teacher's erased weights (none for a plain teacher)."""
        concept = self.teacher_metadata.get("concept", "")
        sep = self.teacher_metadata.get("separator") or ","
        return [c.strip() for c in concept.split(sep) if c.strip()]

    def export(self, out_dir: str | Path) -> Path:
        """Write the generator (diffusers UNet or transformer names, LoRA folded in) and its metadata
        to ``student.safetensors``: load it with ``pipe.unet.load_state_dict(load_file(...))``
        (``pipe.transformer`` on SD3 and Flux) and sample with the metadata's conditioning timesteps."""
        tensors = merged_state_dict(self.generator)
        meta = {
            "format": STUDENT_FORMAT,
            "method": "dmd2",
            "generator_timesteps": json.dumps(self.generator_timesteps),
            "real_guidance_scale": str(self.objective.real_cfg.scale),
            "generator_updates": str(self.generator_updates),
            "critic_updates": str(self.critic_updates),
            **{k: "" if v is None else str(v) for k, v in self.provenance.items()},
            "teacher_concept": self.teacher_metadata.get("concept", ""),
        }
        path = save_safetensors(tensors, Path(out_dir) / self.export_name, meta, what="DMD2 student")
        log.info("wrote the student (%d tensors) to %s", len(tensors), path)
        return path

    @contextlib.contextmanager
    def as_original(self) -> Iterator[None]:
        """`generate` and `make_sampler` sample the teacher with the model's own sampler."""
        before, self._sample_teacher = self._sample_teacher, True
        try:
            yield
        finally:
            self._sample_teacher = before

    # ------------------------------------------------------------------ sampling
    def make_sampler(
        self, sampler: str | None = None, num_steps: int | None = None, guidance_scale: float | None = None
    ) -> FewStepSampler:
        """The student's `FewStepSampler`; ``num_steps`` other than the trained count uses
        DMD2's uniform timesteps. Guidance is distilled into the generator, so
        ``guidance_scale`` is ignored; other samplers do not apply to a DMD2 generator."""
        if self._sample_teacher:
            return super().make_sampler(sampler, num_steps, guidance_scale)
        if sampler not in (None, "few_step"):
            raise ValueError(
                f"sampler {sampler!r}: a DMD2 student samples with its own few-step schedule "
                f"(timesteps {self.generator_timesteps}); leave --sampler out"
            )
        if guidance_scale not in (None, 1.0):
            log.info(
                "guidance_scale %s ignored: the teacher's guidance (%s) is distilled into the student",
                guidance_scale,
                self.objective.real_cfg.scale,
            )
        if num_steps not in (None, len(self.generator_timesteps)):
            log.warning(
                "sampling the student with %d steps (%s); it was trained at %s",
                num_steps,
                self.student_sampler.timesteps_for(num_steps),
                self.generator_timesteps,
            )
        return FewStepSampler(self.student_discretization, self.generator_timesteps, num_steps=num_steps)

    def run_sampler(
        self,
        sampler,
        noise: torch.Tensor,
        cond: dict[str, torch.Tensor],
        uc: dict[str, torch.Tensor] | None,
        seeds: Sequence[int],
    ) -> torch.Tensor:
        """A `FewStepSampler` samples the student (``make_sampler`` gives one); any other
        sampler samples the teacher (``teacher_generate``). Image i's re-noising continues
        seed i's generator after its starting noise, so it does not depend on the batch."""
        if not isinstance(sampler, FewStepSampler):
            return super().run_sampler(sampler, noise, cond, uc, seeds)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        for g in gens:  # the starting noise (already in ``noise``) was the first draw of each
            torch.randn(self.latent_shape, generator=g)
        return sampler(self.student_denoise, noise, cond, uc, noise_sampler=per_sample_noise_sampler(gens))

    def teacher_generate(self, prompts: Sequence[str], seeds: Sequence[int] | None = None, **kwargs: Any):
        """Teacher images with the model's own sampler config (``sampler_config``)."""
        with self.as_original():
            kwargs.setdefault("sampler", self.make_sampler())
            return self.generate(prompts, seeds, **kwargs)

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], n: int = 8) -> dict[str, torch.Tensor]:
        prompts = list((batch.get("prompts") or batch)["txt"][:n])
        return {"samples": self.generate(prompts, seeds=range(len(prompts)))}


def _schedulers(schedulers: Any) -> tuple[Any, Any]:
    """(generator's, critic's) of `lr_schedulers()` (None each without a scheduler_config)."""
    if schedulers is None:
        return None, None
    if not isinstance(schedulers, list):
        schedulers = [schedulers]
    return (schedulers + [None, None])[0], (schedulers + [None, None])[1]
