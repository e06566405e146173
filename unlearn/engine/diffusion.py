"""`DiffusionEngine`: a text-to-image diffusion model composed from config blocks.

It trains with the standard denoising loss and samples with any sampler; the erasure and
distillation modules build on it (they reuse its network, denoiser, conditioner and
first stage). This is also how the toy world's base model is trained.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from unlearn.checkpoint import load_into
from unlearn.config import instantiate_from_config, non_negative_number
from unlearn.engine import generation
from unlearn.engine.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

IDENTITY_FIRST_STAGE = {"target": "unlearn.networks.IdentityFirstStage"}


class DiffusionEngine(pl.LightningModule):
    """Network + denoiser + conditioner + first stage, trained with a diffusion loss.

    Args:
        network_config: the denoising network (e.g. `unlearn.networks.DiffusersUNet`).
        denoiser_config: scalings and sigma→timestep mapping (`unlearn.diffusion.denoiser`).
        conditioner_config: a `GeneralConditioner`; None for unconditional models.
        first_stage_config: identity for pixel models, a VAE for latent models.
        loss_fn_config: training loss (`StandardDiffusionLoss`); None for inference-only use.
        sampler_config: default sampler for image logging and `generate`.
        optimizer_config / scheduler_config: target blocks (AdamW, no schedule by default).
        base_learning_rate: the optimizer's learning rate.
        input_key: batch key holding images (B, C, H, W) in [-1, 1].
        image_size: pixel size of generated images.
        ckpt_path: weights to load (Lightning `.ckpt` or engine `.safetensors`).
        gradient_checkpointing: trade compute for memory in the network.
        log_guidance_scale / log_num_steps: sampling settings for logged images.
        lr_scales: learning-rate multipliers by parameter-name prefix, e.g.
            ``{"conditioner.": 10.0}`` for a text encoder trained from scratch.
        metadata: free-form facts about the model (e.g. the toy canvas's ``objects`` and
            ``styles``), checked by evaluation against the judge.
        force_zeros_for_empty_prompt: an empty negative prompt gives zero text embeddings
            (crossattn and pooled; size conditioning unchanged) instead of the embedding of
            "", as diffusers' SDXL pipeline does by default (its config flag of this name).
    """

    def __init__(
        self,
        network_config: dict,
        denoiser_config: dict,
        conditioner_config: dict | None = None,
        first_stage_config: dict | None = None,
        loss_fn_config: dict | None = None,
        sampler_config: dict | None = None,
        optimizer_config: dict | None = None,
        scheduler_config: dict | None = None,
        base_learning_rate: float = 1e-4,
        input_key: str = "jpg",
        image_size: int = 32,
        ckpt_path: str | None = None,
        gradient_checkpointing: bool = False,
        log_guidance_scale: float = 3.0,
        log_num_steps: int | None = None,
        metadata: dict[str, Any] | None = None,
        lr_scales: dict[str, float] | None = None,
        force_zeros_for_empty_prompt: bool = False,
    ):
        super().__init__()
        base_learning_rate = non_negative_number(base_learning_rate, "model.params.base_learning_rate")
        self.network = instantiate_from_config(network_config, _path="model.params.network_config")
        self.denoiser = instantiate_from_config(denoiser_config, _path="model.params.denoiser_config")
        self.conditioner = (
            instantiate_from_config(conditioner_config, _path="model.params.conditioner_config")
            if conditioner_config
            else None
        )
        self.first_stage = instantiate_from_config(
            first_stage_config or IDENTITY_FIRST_STAGE, _path="model.params.first_stage_config"
        )
        self.loss_fn = (
            instantiate_from_config(loss_fn_config, _path="model.params.loss_fn_config") if loss_fn_config else None
        )
        self.sampler_config = sampler_config
        self.discretization_config = (denoiser_config.get("params") or {}).get("discretization_config")
        self.optimizer_config = optimizer_config
        self.scheduler_config = scheduler_config
        self.learning_rate = base_learning_rate
        self.input_key = input_key
        self.image_size = int(image_size)
        self.log_guidance_scale = log_guidance_scale
        self.log_num_steps = log_num_steps
        self.metadata = dict(metadata or {})
        self.lr_scales = dict(lr_scales or {})
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        if gradient_checkpointing:
            self.network.set_gradient_checkpointing(True)
        if ckpt_path:
            load_into(self, ckpt_path, key="model.params.ckpt_path")

    # ----------------------------------------------------------------- model calls
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """x0 estimate D(x, sigma, cond); x: (B, C, H, W) in sigma space, sigma: (B,)."""
        return self.denoiser(self.network, x, sigma, cond)

    @property
    def sampling_network(self) -> nn.Module:
        """The network `generate` samples (a distilled student's engine samples its generator)."""
        return self.network

    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        return self.first_stage.encode(x)

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode(z)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.latent_shape_for(self.image_size)

    def latent_shape_for(self, image_size: int) -> tuple[int, int, int]:
        """(C, H, W) of the model-space tensor for square images of ``image_size`` pixels."""
        f = self.first_stage.downsample_factor
        if image_size % f:
            raise ValueError(f"image_size {image_size} is not a multiple of the first stage's factor {f}")
        return (self.network.in_channels, image_size // f, image_size // f)

    @property
    def canvas_concepts(self) -> tuple[list[str], list[str]] | None:
        """(objects, styles) of the toy canvas the model was trained on, if recorded."""
        if "objects" in self.metadata and "styles" in self.metadata:
            return list(self.metadata["objects"]), list(self.metadata["styles"])
        return None

    def condition(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.conditioner(batch) if self.conditioner is not None else {}

    # ------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.loss_fn is None:
            raise ValueError("model.params.loss_fn_config is required for training")
        if self.input_key not in batch:
            raise ValueError(f"model.params.input_key: batch has no {self.input_key!r} (keys: {sorted(batch)})")
        z = self.encode_first_stage(batch[self.input_key])
        cond = self.condition(batch)
        loss = self.loss_fn(self.network, self.denoiser, z, cond).mean()
        self.loss_terms = {"loss": loss.detach()}  # read by unlearn.callbacks.NonFiniteLoss to name a non-finite term
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=z.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        z = self.encode_first_stage(batch[self.input_key])
        # Fixed noise per batch index so validation losses are comparable across epochs.
        generator = torch.Generator().manual_seed(batch_idx)
        cond = self.conditioner(batch) if self.conditioner is not None else {}
        loss = self.loss_fn(self.network, self.denoiser, z, cond, generator=generator).mean()
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=z.shape[0])
        return loss

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.network.parameters() if p.requires_grad]
        if self.conditioner is not None:
            params += [p for p in self.conditioner.parameters() if p.requires_grad]
        return params

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters grouped by their ``lr_scales`` prefix (first match wins)."""
        wanted = {id(p) for p in self.trainable_parameters()}
        groups: dict[float, list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if id(p) not in wanted:
                continue
            scale = next((v for k, v in self.lr_scales.items() if name.startswith(k)), 1.0)
            groups.setdefault(float(scale), []).append(p)
        return [{"params": ps, "lr": self.learning_rate * scale} for scale, ps in groups.items()]

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameter_groups(), self.learning_rate, self.optimizer_config)
        scheduler = build_scheduler(optimizer, self.scheduler_config)
        return [optimizer] if scheduler is None else ([optimizer], [scheduler])

    # ------------------------------------------------------------------- sampling
    def make_sampler(
        self, sampler: str | None = None, num_steps: int | None = None, guidance_scale: float | None = None
    ):
        cfg = generation.sampler_config(
            self.sampler_config,
            self.discretization_config,
            sampler,
            num_steps,
            guidance_scale,
            lambda: self.image_seq_len,
        )
        return generation.build_sampler(cfg)

    def frozen_sampler_config(self, config: dict, image_size: int | None = None) -> dict:
        """A method's own sampler block (e.g. the sampler of its x_t trajectories) on the model's
        sampling schedule, with the token count of ``image_size`` (default: the model's) filled in
        for a resolution-dependent shift."""
        base = self.sampler_config or {}
        discretization = (base.get("params") or {}).get("discretization_config") or self.discretization_config
        size = self.image_size if image_size is None else int(image_size)
        return generation.sampler_config(
            config, discretization, None, image_seq_len=lambda: self.image_seq_len_for(size)
        )

    @property
    def image_seq_len(self) -> int:
        """Image tokens the network sees at ``image_size`` (Flux's resolution-dependent shift reads it)."""
        return self.image_seq_len_for(self.image_size)

    def image_seq_len_for(self, image_size: int) -> int:
        """Image tokens of square ``image_size`` images: the network's ``tokens_for(height, width)``
        of the latent, else one token per latent pixel."""
        _, height, width = self.latent_shape_for(image_size)
        tokens_for = getattr(self.network, "tokens_for", None)
        return int(tokens_for(height, width)) if tokens_for is not None else height * width

    def conditioning_for(
        self, prompts: Sequence[str], force_zero_embeddings: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        if self.conditioner is None:
            return {}
        keys = [k for e in self.conditioner.embedders for k in _input_keys(e)]
        batch = generation.conditioning_batch(keys, prompts, self.image_size)
        return self.conditioner(batch, force_zero_embeddings)

    def unconditional_for(self, negatives: Sequence[str]) -> dict[str, torch.Tensor]:
        """The guidance branch for negative prompts ("" = none), honouring ``force_zeros_for_empty_prompt``."""
        empty = [not n for n in negatives]
        if not (self.force_zeros_for_empty_prompt and any(empty)):
            return self.conditioning_for(negatives)
        zero = self.conditioning_for(negatives, force_zero_embeddings=["txt"])
        if all(empty):
            return zero
        uc = self.conditioning_for(negatives)
        mask = torch.tensor(empty)  # (B,)
        return {k: torch.where(mask.to(v.device).reshape(-1, *[1] * (v.ndim - 1)), zero[k], v) for k, v in uc.items()}

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int] | None = None,
        negative_prompt: str | Sequence[str] = "",
        sampler=None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        decode: bool = True,
    ) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] (or latents if ``decode=False``) for ``prompts``.

        Image i starts from the noise of ``seeds[i]``, so a result does not depend on the
        batch it was drawn in.
        """
        seeds = list(range(len(prompts))) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        if sampler is None:
            sampler = self.make_sampler(num_steps=num_steps, guidance_scale=guidance_scale)
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        was_training = self.training
        self.eval()
        try:
            cond = self.conditioning_for(prompts)
            uc = self.unconditional_for(negatives) if self.conditioner is not None else None
            noise = generation.seeded_noise(seeds, self.latent_shape, self.device, torch.float32)
            z = self.run_sampler(sampler, noise, cond, uc, seeds)
            return self.decode_first_stage(z).clamp(-1, 1) if decode else z
        finally:
            self.train(was_training)

    def run_sampler(
        self,
        sampler,
        noise: torch.Tensor,
        cond: dict[str, torch.Tensor],
        uc: dict[str, torch.Tensor] | None,
        seeds: Sequence[int],
    ) -> torch.Tensor:
        """The sampling call of `generate`; ``noise`` (B, C, H, W) was drawn from ``seeds``.
        Subclasses whose model or noise differ (a distilled student) override this alone."""
        return sampler(self.denoise, noise, cond, uc)

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], n: int = 8) -> dict[str, torch.Tensor]:
        """Training inputs beside samples for their captions (ImageLogger calls this)."""
        images = batch[self.input_key][:n]
        out = {"inputs": images}
        if "txt" in batch:
            prompts = list(batch["txt"][: images.shape[0]])
            out["samples"] = self.generate(
                prompts,
                seeds=range(len(prompts)),
                num_steps=self.log_num_steps,
                guidance_scale=self.log_guidance_scale,
            )
        return out


def _input_keys(embedder: nn.Module) -> list[str]:
    keys = getattr(embedder, "input_keys", None)
    if keys:
        return list(keys)
    return [embedder.input_key]
