"""`DMD2Engine`: distil any engine model into a 1-4 step generator (Yin et al., NeurIPS 2024).

The engine is a `DiffusionEngine` (same network, denoiser, conditioner, first stage and
``ckpt_path`` arguments), so ``--base <any model config> configs/methods/dmd2.yaml`` works
and the model block is the **teacher**:

1. Teacher: ``network`` as loaded (``ckpt_path``), then ``teacher_weights`` (an ESD run's
   ``erased.safetensors``, or an ESD ``last.ckpt`` as ``ckpt_path``) and ``teacher_masks``
   (a minimalist masks file, hooked on the teacher only). Frozen, always in eval mode.
2. Generator and critic: copies of the teacher made *after* its weights are in (so an
   erased teacher gives an erased student to start from), full or LoRA (``*_lora_rank``;
   a LoRA copy shares every teacher tensor and trains only its adapters, see
   `unlearn.networks.lora`). With ``teacher_masks`` both start from the unmasked weights.
3. Each iteration (DMD2's ``train_sd.py`` order): the generator makes x̂ (from pure noise
   at its first timestep, or from its own backward-simulated input at a later one);
   every ``dfake_gen_update_ratio``-th iteration (iterations 0, r, 2r, ...) the generator
   is updated first with the DM loss (+ GAN); then the critic (+ classifier) is updated on
   sg(x̂) every iteration. ``trainer.global_step`` counts iterations, i.e. critic updates:
   the generator's optimizer steps through the strategy without advancing it, so
   ``max_steps`` is the number of DMD2 iterations. Both counts are saved in checkpoints.
4. ``generate`` / ``make_sampler`` sample the generator with `FewStepSampler`, so
   ``scripts/sample.py`` and ``scripts/evaluate.py`` use the student unchanged. At the end
   of training ``<run_dir>/student.safetensors`` holds the generator (diffusers UNet
   names, LoRA merged) and, with ``eval_config`` on a toy canvas model, the toy benchmark
   runs on the student (``<run_dir>/eval/``) and optionally the teacher (``eval/teacher/``).

Prompts come from ``prompts_config`` (`unlearn.data.prompt_list.PromptDataset`), so the
method config sets ``data: null``; ``real_data_config`` adds real images for the GAN.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from unlearn.config import instantiate_from_config
from unlearn.diffusion.samplers.few_step import FewStepSampler, per_sample_noise_sampler
from unlearn.engine import dmd2_outputs
from unlearn.engine.diffusion import DiffusionEngine
from unlearn.engine.dmd2_guidance import DMD2Guidance
from unlearn.engine.optim import WarmupCosine, build_optimizer
from unlearn.networks.lora import DEFAULT_LORA_TARGETS, full_copy, lora_copy

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = {"target": "unlearn.data.prompt_list.PromptDataset"}


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


class DMD2Engine(DiffusionEngine):
    """DMD2 distillation of the engine's model; the arguments below come on top of
    `DiffusionEngine`'s (network_config, denoiser_config, ..., ckpt_path, image_size).

    Args:
        generator_timesteps: the generator's conditioning timesteps; [999] for one step.
        real_guidance_scale / fake_guidance_scale: CFG of μ_real (teacher) / μ_fake (critic).
        dfake_gen_update_ratio: critic updates per generator update (DMD2: 10 for SD1.5).
        generator_lr / critic_lr / weight_decay / betas: the two AdamW optimizers.
        warmup_steps: linear warm-up of both learning rates, in iterations (then constant).
        grad_clip: gradient-norm clipping of each optimizer's parameters; None: off.
        dm_loss_weight: weight of the DM loss in the generator loss.
        gan_classifier: add the classifier head on the critic's ``gan_feature_module``
            output; needs ``real_data_config``. ``gan_loss_weight`` weighs the generator's
            softplus(-D(x̂)), ``gan_critic_loss_weight`` the classifier's loss.
        gan_max_step: classifier inputs are noised to t uniform in [0, gan_max_step].
        real_data_config: a dataset block whose items hold ``input_key`` images and "txt"
            captions (e.g. `unlearn.data.canvas_datamodule.CanvasDataset`): the GAN's real
            images, and the generator's noisy inputs when ``backward_simulation`` is off.
        critic_lora_rank / generator_lora_rank: LoRA rank of the copy; None: a full copy.
        lora_alpha / lora_target_modules: LoRA scale (default alpha = rank) and modules.
        backward_simulation: a multi-step generator's input at step k is its own k-step
            sample re-noised (True, DMD2 Sec. 4.4), or a noised real image (False).
        min_step / max_step: DDPM timestep range of the DM noise (default 2% and 98% of T).
        prompts_config: dataset of {"txt": prompt} (default: the toy canvas captions).
        batch_size / num_workers: of the prompt (and real-image) loaders.
        teacher_weights: an ``erased.safetensors`` applied to the teacher before the copies.
        teacher_masks: a minimalist masks file registered on the teacher after the copies.
        eval_config: toy benchmark at the end of training (models with canvas metadata):
            keys ``erased`` (default: the teacher_weights' concept), ``images_per_prompt``,
            ``batch_size``, ``judge``, ``num_steps``, ``teacher`` (also evaluate the teacher),
            ``every_n_steps`` (also the student every n iterations: ``eval/progress.md``).
    """

    def __init__(
        self,
        generator_timesteps: Sequence[int] = (999, 749, 499, 249),
        real_guidance_scale: float = 1.75,
        fake_guidance_scale: float = 1.0,
        dfake_gen_update_ratio: int = 10,
        generator_lr: float = 1e-5,
        critic_lr: float = 1e-5,
        weight_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.999),
        warmup_steps: int = 500,
        grad_clip: float | None = 10.0,
        dm_loss_weight: float = 1.0,
        gan_classifier: bool = False,
        gan_loss_weight: float = 1e-3,
        gan_critic_loss_weight: float = 1e-2,
        gan_feature_module: str = "unet.mid_block",
        gan_feature_channels: int | None = None,
        gan_max_step: int = 0,
        real_data_config: dict | None = None,
        critic_lora_rank: int | None = None,
        generator_lora_rank: int | None = None,
        lora_alpha: float | None = None,
        lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
        backward_simulation: bool = True,
        min_step: int | None = None,
        max_step: int | None = None,
        prompts_config: dict | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        teacher_weights: str | None = None,
        teacher_masks: str | None = None,
        eval_config: dict[str, Any] | None = None,
        **engine_kwargs: Any,
    ):
        super().__init__(**engine_kwargs)
        self.automatic_optimization = False
        if not isinstance(dfake_gen_update_ratio, int) or dfake_gen_update_ratio < 1:
            raise ValueError(f"dfake_gen_update_ratio: expected a positive integer, got {dfake_gen_update_ratio!r}")
        if self.conditioner is None and real_guidance_scale != 1.0:
            raise ValueError("real_guidance_scale: CFG needs a conditioner (model.params.conditioner_config)")
        self.student_sampler = FewStepSampler(self.discretization_config, list(generator_timesteps))
        self.generator_timesteps = list(self.student_sampler.timesteps)
        self.dfake_gen_update_ratio = dfake_gen_update_ratio
        self.generator_lr, self.critic_lr = float(generator_lr), float(critic_lr)
        self.weight_decay, self.betas = float(weight_decay), tuple(float(b) for b in betas)
        self.warmup_steps, self.grad_clip = int(warmup_steps), grad_clip
        self.dm_loss_weight = float(dm_loss_weight)
        self.gan_classifier = bool(gan_classifier)
        self.gan_loss_weight, self.gan_critic_loss_weight = float(gan_loss_weight), float(gan_critic_loss_weight)
        self.backward_simulation = bool(backward_simulation)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.prompt_set = instantiate_from_config(prompts_config or DEFAULT_PROMPTS,
                                                  _path="model.params.prompts_config")
        self.real_set = (instantiate_from_config(real_data_config, _path="model.params.real_data_config")
                         if real_data_config else None)
        multi_step_without_data = len(self.generator_timesteps) > 1 and not self.backward_simulation
        if (self.gan_classifier or multi_step_without_data) and self.real_set is None:
            why = "gan_classifier" if self.gan_classifier else "backward_simulation: false (multi-step)"
            raise ValueError(f"{why} needs real images: set model.params.real_data_config")
        self.eval_config = dict(eval_config) if eval_config else None
        unknown = sorted(set(self.eval_config or {}) - set(dmd2_outputs.EVAL_KEYS))
        if unknown:
            raise ValueError(f"eval_config: unknown key(s) {unknown}; allowed: {list(dmd2_outputs.EVAL_KEYS)}")
        every = (self.eval_config or {}).get("every_n_steps")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"eval_config.every_n_steps: expected a positive integer, got {every!r}")
        self.eval_every = every
        self.run_dir: Path | None = None
        self.provenance = {"teacher_ckpt": engine_kwargs.get("ckpt_path"), "teacher_weights": teacher_weights,
                           "teacher_masks": teacher_masks}

        # 1. the teacher's weights are final before anything is copied from it
        self.teacher_metadata: dict[str, str] = {}
        if teacher_weights:
            from unlearn.engine.export import apply_erased_weights

            self.teacher_metadata = apply_erased_weights(self, teacher_weights)
        for module in (self.network, self.conditioner, self.first_stage):
            if module is not None:
                module.requires_grad_(False)

        # 2. generator and critic
        def copy_of(rank: int | None, name: str) -> nn.Module:
            if rank is None:
                return full_copy(self.network)
            return lora_copy(self.network, rank, lora_alpha, lora_target_modules, adapter_name=name)

        self.generator = copy_of(generator_lora_rank, "generator")
        T = int(self.denoiser.num_idx) if hasattr(self.denoiser, "num_idx") else 1000
        self.guidance = DMD2Guidance(
            teacher=self.network, critic=copy_of(critic_lora_rank, "critic"), denoiser=self.denoiser,
            real_guidance_scale=real_guidance_scale, fake_guidance_scale=fake_guidance_scale,
            min_step=int(0.02 * T) if min_step is None else min_step,
            max_step=int(0.98 * T) if max_step is None else max_step,
            gan_feature_module=gan_feature_module if self.gan_classifier else None,
            gan_feature_channels=gan_feature_channels, gan_max_step=gan_max_step,
        )

        # 3. masks change the teacher only (hooks on its own modules)
        self.teacher_masks = None
        if teacher_masks:
            from unlearn.hooks.io import apply_masks

            self.teacher_masks = apply_masks(self.network, teacher_masks).requires_grad_(False)

        self.generator_updates = 0
        self.critic_updates = 0
        n_gen = sum(p.numel() for p in self.generator.parameters() if p.requires_grad)
        n_critic = sum(p.numel() for p in self.guidance.trainable_parameters())
        log.info("DMD2: %d-step generator %s (%d trainable), critic %d trainable, teacher %d frozen parameters",
                 len(self.generator_timesteps), self.generator_timesteps, n_gen, n_critic,
                 sum(p.numel() for p in self.network.parameters()))

    # ------------------------------------------------------------------ model calls
    def train(self, mode: bool = True) -> "DMD2Engine":
        """Train mode for the generator and critic; teacher, conditioner, first stage stay in eval."""
        super().train(mode)
        for module in (self.network, self.conditioner, self.first_stage):
            if module is not None:
                module.eval()
        return self

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

    def generator_inputs(self, cond: dict[str, Any], n: int, real: torch.Tensor | None = None,
                         step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
        x = real + sigma[:, None, None, None] * torch.randn_like(real)
        pure = (k == 0)[:, None, None, None]
        return torch.where(pure, noise * (1 + sigmas[0] ** 2).sqrt(), x), sigma

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_g, opt_c = self.optimizers()
        sched_g, sched_c = self.lr_schedulers()
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
            with _no_grads_for(self.guidance.parameters()):  # the critic gets no gradient from G's loss
                loss_dm, logs = self.guidance.distribution_matching_loss(x_hat, cond, uc)
                loss_g = self.dm_loss_weight * loss_dm
                if self.gan_classifier:
                    loss_gan = self.guidance.generator_gan_loss(x_hat, cond)
                    loss_g = loss_g + self.gan_loss_weight * loss_gan
                    logs["loss_gan_g"] = loss_gan.detach()
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(loss_g)
            # The strategy steps G's optimizer (precision, hooks, clipping) without counting a global step.
            self.trainer.strategy.optimizer_step(opt_g.optimizer, closure=lambda: None)
            opt_g.zero_grad(set_to_none=True)
            self.generator_updates += 1
        sched_g.step()

        # 2. the critic (and classifier) learn the generator's distribution from sg(x̂)
        loss_c = self.guidance.critic_denoising_loss(x_hat.detach(), cond)
        logs["loss_fake"] = loss_c.detach()
        if self.gan_classifier:
            loss_d, d_logs = self.guidance.critic_gan_loss(real[0], real[1], x_hat.detach(), cond)
            loss_c = loss_c + self.gan_critic_loss_weight * loss_d
            logs.update(loss_gan_d=loss_d.detach(), **d_logs)
        opt_c.zero_grad(set_to_none=True)
        self.manual_backward(loss_c)
        opt_c.step()
        opt_c.zero_grad(set_to_none=True)
        sched_c.step()
        self.critic_updates += 1

        logs["generator_updates"] = torch.tensor(float(self.generator_updates))
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True, batch_size=len(prompts))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after AMP unscaling, for both optimizers.
        if self.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=float(self.grad_clip), gradient_clip_algorithm="norm")

    def configure_optimizers(self):
        cfg = {"target": "torch.optim.AdamW", "params": {"weight_decay": self.weight_decay, "betas": list(self.betas)}}
        opt_g = build_optimizer([p for p in self.generator.parameters() if p.requires_grad], self.generator_lr, cfg)
        opt_c = build_optimizer(self.guidance.trainable_parameters(), self.critic_lr, cfg)
        return [opt_g, opt_c], [WarmupCosine(opt_g, self.warmup_steps), WarmupCosine(opt_c, self.warmup_steps)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.generator.parameters() if p.requires_grad] + self.guidance.trainable_parameters()

    def train_dataloader(self) -> dict[str, DataLoader]:
        def loader(dataset) -> DataLoader:
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, drop_last=True,
                              num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

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

    def _output_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir is not None else Path(self.trainer.default_root_dir)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (self.eval_every and self.canvas_concepts and self.trainer.is_global_zero
                and self.critic_updates % self.eval_every == 0):
            dmd2_outputs.run_progress_evaluation(self, self._output_dir() / "eval")

    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        out = self._output_dir()
        dmd2_outputs.export_student(self, out / "student.safetensors")
        if self.eval_config and self.canvas_concepts:
            # When every_n_steps divides the run, the final student was just benchmarked there.
            final = dmd2_outputs.progress_dir(out / "eval", self.critic_updates)
            dmd2_outputs.run_evaluation(self, out / "eval",
                                        student_from=final if (final / "metrics.json").is_file() else None)

    # ------------------------------------------------------------------ sampling
    def make_sampler(self, sampler: str | None = None, num_steps: int | None = None,
                     guidance_scale: float | None = None) -> FewStepSampler:
        """The student's `FewStepSampler`; ``num_steps`` other than the trained count uses
        DMD2's uniform timesteps. Guidance is distilled into the generator, so
        ``guidance_scale`` is ignored; other samplers do not apply to a DMD2 generator."""
        if sampler not in (None, "few_step"):
            raise ValueError(f"sampler {sampler!r}: a DMD2 student samples with its own few-step schedule "
                             f"(timesteps {self.generator_timesteps}); leave --sampler out")
        if guidance_scale not in (None, 1.0):
            log.info("guidance_scale %s ignored: the teacher's guidance (%s) is distilled into the student",
                     guidance_scale, self.guidance.real_cfg.scale)
        if num_steps not in (None, len(self.generator_timesteps)):
            log.warning("sampling the student with %d steps (%s); it was trained at %s", num_steps,
                        self.student_sampler.timesteps_for(num_steps), self.generator_timesteps)
        return FewStepSampler(self.discretization_config, self.generator_timesteps, num_steps=num_steps)

    def run_sampler(self, sampler, noise: torch.Tensor, cond: dict[str, torch.Tensor],
                    uc: dict[str, torch.Tensor] | None, seeds: Sequence[int]) -> torch.Tensor:
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
        kwargs.setdefault("sampler", super().make_sampler())
        return super().generate(prompts, seeds, **kwargs)

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], n: int = 8) -> dict[str, torch.Tensor]:
        prompts = list((batch.get("prompts") or batch)["txt"][:n])
        return {"samples": self.generate(prompts, seeds=range(len(prompts)))}
