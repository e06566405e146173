"""`MaskErasureEngine`: Minimalist concept erasure (Zhang et al., ICML 2025) on any engine model.

Sparse learnable masks λ on selected units of the frozen network (Linear outputs,
attention heads, feed-forward channels, norm channels; `unlearn.hooks`) are trained end to
end through the whole generation: every step runs the masked model and the original
(masks disabled, same network) through the trajectory sampler's steps from the same noise,
and the objective (``objective_config``, a `TrajectoryObjective`: `MinimalistObjective`)
compares their final latents. The gradient through the trajectory is computed with
step-wise checkpointing (`trajectory_checkpoint`): memory stays at one step's activations
whatever the number of steps.

Optimization is manual (``automatic_optimization = False``): the backward pass is the
two-phase walk over the trajectory, which cannot be expressed as one ``loss.backward()``.
Gradients reach λ only; the base model's weights are frozen and never change. Use fp32 or
``bf16-mixed`` precision (fp16 loss scaling is not applied to the trajectory backward).

`export` binarizes the masks (`unlearn.hooks.binarize`) and saves them to
``masks.safetensors``; `as_erased` applies the same binarized masks for the benchmark.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from unlearn.config import ConfigError, non_negative_number
from unlearn.data.prompt_batches import ConceptPromptTriples
from unlearn.diffusion.guiders import NegatedConceptCFG
from unlearn.diffusion.samplers import DPMPP2MSampler
from unlearn.engine import generation
from unlearn.engine.erasure import ErasureEngine
from unlearn.engine.trajectory_checkpoint import checkpointed_trajectory_backward, run_trajectory
from unlearn.hooks import MaskManager, binarize, save_masks
from unlearn.hooks.binarize import BINARIZE_MODES
from unlearn.hooks.io import register_mask_values
from unlearn.objectives.base import TrajectoryObjective

log = logging.getLogger(__name__)

MASK_GROUPS = ("attn", "ff", "norm", "linear")


class MaskErasureEngine(ErasureEngine):
    """A `DiffusionEngine` whose network carries trainable concept-erasure masks.

    Args (besides `DiffusionEngine`'s model arguments and ``seed``, which seeds the prompt
    draws and the noise and mask samples of every step, with the global step):
        hooker_configs: mask hooker blocks (`unlearn.hooks.LinearHooker`, ...), each with
            its module filter; ``strategy``, ``init_value`` and ``masked_noise_std`` below
            are their defaults.
        concept: the concept to erase.
        objective_config: the loss, a `TrajectoryObjective` block (`MinimalistObjective`).
        trajectory_sampler_config: the trajectory trained through, a sampler target block with
            ``num_steps`` and its ``guider_config`` (Euler, Euler ancestral, Heun or DDIM;
            multistep samplers are refused); the model's discretization is filled in.
        strategy: ``sigmoid``, ``hard_discrete``, ``binary``, ``continues2binary``, or a
            strategy target block (e.g. the binary one with ``max_off_share``).
        init_value: initial λ (3.0: σ(3) ≈ 0.95).
        masked_noise_std: noise std on the masked-out part (0: none).
        attn_lr, ff_lr, n_lr, linear_lr: learning rate of each mask group; 0 switches the
            group off (its hookers are not built: no masks, nothing trained).
        concept_prompts, deconcept_prompts, keep_prompts: see `ConceptPromptTriples`
            (toy-canvas defaults). batch_size: triples per step; prompts_per_epoch.
        deconcept_anchor: a concept of the same kind whose prompts are the erase targets
            (concept ablation: "a striped circle" -> "a striped square"); None: the paper's
            deconcept prompts (the concept removed).
        binarize: ``{mode: global | local | threshold, off_ratio: share switched off}``
            applied before export, or None to save the deterministic masks as they are.
        target_negation_scale: s_n > 0 draws the original model's erase target for p_deconcept
            with the concept itself negated (`NegatedConceptCFG`: plain CFG of p_deconcept
            minus s_n times the concept's own direction, the prompt being the concept name).
            The paper's target (0) is whatever the original draws without the concept word,
            which can still be the concept; a full negative prompt (the concept prompt as
            ``uc``) would negate its style too. Keep prompts' targets are unchanged.
    """

    default_optimizer_config = {"target": "torch.optim.AdamW", "params": {"weight_decay": 0.0}}
    uses_base_learning_rate = False
    learning_rate_keys = "the masks have a learning rate per group (attn_lr, ff_lr, n_lr, linear_lr)"
    export_name = "masks.safetensors"

    def __init__(
        self,
        hooker_configs: Sequence[dict],
        concept: str,
        objective_config: dict,
        trajectory_sampler_config: dict,
        strategy: Any = "sigmoid",
        init_value: float = 3.0,
        masked_noise_std: float = 0.0,
        attn_lr: float = 0.5,
        ff_lr: float = 0.5,
        n_lr: float = 0.5,
        linear_lr: float = 0.5,
        concept_prompts: Sequence[str] | None = None,
        deconcept_prompts: Sequence[str] | None = None,
        keep_prompts: Sequence[str] | None = None,
        deconcept_anchor: str | None = None,
        batch_size: int = 1,
        prompts_per_epoch: int = 1000,
        binarize: dict | None = None,
        target_negation_scale: float = 0.0,
        **engine_kwargs: Any,
    ):
        super().__init__(**engine_kwargs)
        self.automatic_optimization = False
        self.concept = concept
        self.objective: TrajectoryObjective = self.build_objective(objective_config, TrajectoryObjective)
        self.group_lrs = {"attn": attn_lr, "ff": ff_lr, "norm": n_lr, "linear": linear_lr}
        for group, lr in self.group_lrs.items():
            self.group_lrs[group] = non_negative_number(lr, f"model.params.{'n' if group == 'norm' else group}_lr")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"model.params.batch_size: expected a positive integer, got {batch_size!r}")
        self.binarize_config = _check_binarize(binarize)
        self.masks = self._build_masks(hooker_configs, strategy, init_value, masked_noise_std)
        if self.binarize_config is None and any(h.strategy.requires_binarization for h in self.masks.hookers):
            raise ConfigError(
                "model.params.binarize: strategy continues2binary needs a binarize block "
                "({mode: global, off_ratio: 0.05})"
            )
        self.masks.off_budget()  # one max_off_share for every hooker, or a ValueError now
        self.target_negation_scale = non_negative_number(target_negation_scale, "model.params.target_negation_scale")
        if self.target_negation_scale > 0 and self.conditioner is None:
            raise ConfigError(
                "model.params.target_negation_scale needs a text-conditioned model (it negates the "
                "concept prompt in the erase target); this model has no conditioner"
            )
        self.masks.register(self.network)
        log.info(
            "masks on %d units: %s",
            self.masks.num_units(),
            {g: len(v["modules"]) for g, v in self.masks.describe().items()},
        )
        self.prompts = ConceptPromptTriples(
            concept,
            concept_prompts,
            deconcept_prompts,
            keep_prompts,
            length=prompts_per_epoch,
            seed=self.seed,
            anchor=deconcept_anchor,
            anchor_name="model.params.deconcept_anchor",
        )
        self.deconcept_anchor = deconcept_anchor
        self.batch_size = batch_size
        self.trajectory_sampler_config = self.frozen_sampler_config(trajectory_sampler_config)
        self._trajectory_sampler = self._build_trajectory_sampler()
        if isinstance(self._trajectory_sampler, DPMPP2MSampler):
            raise ConfigError(
                "model.params.trajectory_sampler_config: multistep samplers (dpmpp_2m) carry state "
                "between steps and cannot be checkpointed step by step; use euler, euler_a, heun "
                "or ddim"
            )
        self.num_steps = self._trajectory_sampler.num_steps
        if self.num_steps is None:
            raise ConfigError(
                "model.params.trajectory_sampler_config.params.num_steps: missing (the steps trained through)"
            )
        # The original model's erase/preserve targets: the same sampler, or with the concept negated.
        self._target_sampler = self._trajectory_sampler
        if self.target_negation_scale > 0:
            self._target_sampler = self._build_trajectory_sampler()
            scale = getattr(self._trajectory_sampler.guider, "scale", 1.0)
            self._target_sampler.guider = NegatedConceptCFG(scale, self.target_negation_scale)

    def _build_trajectory_sampler(self):
        return generation.build_sampler(self.trajectory_sampler_config, "model.params.trajectory_sampler_config")

    def _build_masks(self, configs, strategy, init_value, masked_noise_std) -> MaskManager:
        if not configs:
            raise ConfigError("model.params.hooker_configs: give at least one mask hooker block")
        built = MaskManager.from_configs(
            configs,
            path="model.params.hooker_configs",
            strategy=strategy,
            init_value=init_value,
            masked_noise_std=masked_noise_std,
        )
        kept = [h for h in built.hookers if self.group_lrs[h.group] > 0]
        for h in built.hookers:
            if self.group_lrs[h.group] == 0:
                log.info("mask group %r has learning rate 0: its %s is switched off", h.group, type(h).__name__)
        if not kept:
            raise ConfigError("model.params: every mask group in hooker_configs has learning rate 0; nothing to train")
        return MaskManager(kept)

    # ------------------------------------------------------------------ data / optim
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.prompts, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def trainable_parameters(self):
        return [p for ps in self.masks.groups().values() for p in ps]

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": ps, "lr": self.group_lrs[g], "name": g} for g, ps in self.masks.groups().items()]

    def on_fit_start(self) -> None:
        precision = str(getattr(self.trainer, "precision", "32"))
        if precision.startswith("16"):
            raise ConfigError(
                f"lightning.trainer.precision={precision}: the trajectory backward does not apply "
                "fp16 loss scaling; use 32 or bf16-mixed"
            )

    # --------------------------------------------------------------------- training
    def _step_seeds(self) -> list[int]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + int(self.global_step)) % 2**63)
        return torch.randint(0, 2**62, (self.num_steps + 1,), generator=g).tolist()

    def trajectory_step(self, cond, uc, sigmas: torch.Tensor, seeds: Sequence[int], sampler=None):
        """step(i, x_i) -> x_{i+1}: a deterministic function of (i, x_i, λ).

        Step i's randomness (mask noise, sampler noise, masked-part noise) comes from
        ``seeds[i]`` alone, so the checkpointed recomputation repeats the forward exactly.
        """
        sampler = sampler or self._trajectory_sampler

        def step(i: int, x: torch.Tensor) -> torch.Tensor:
            devices = [x.device] if x.device.type != "cpu" else []
            with torch.random.fork_rng(devices=devices, device_type=x.device.type if devices else "cuda"):
                torch.manual_seed(seeds[i])
                self.masks.resample(torch.Generator().manual_seed(seeds[i]))
                return sampler.step(self.denoise, x, i, sigmas, cond, uc, {})

        return step

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        concept, deconcept, keep = list(batch["concept"]), list(batch["deconcept"]), list(batch["keep"])
        n = len(concept)
        self.adversarial_search(self.prompts.concept_prompts, self.concept)
        self.masks.apply_off_budget()
        seeds = self._step_seeds()
        with torch.no_grad():
            cond_masked = self.conditioning_for(concept + keep)
            if self.adversary is not None:  # the masked model sees adversarial prompts for a share of the concept rows
                head, _ = self.adversarial_rows({k: v[:n] for k, v in cond_masked.items()})
                cond_masked = {k: torch.cat([head[k], v[n:]]) for k, v in cond_masked.items()}
            cond_target = self.conditioning_for(deconcept + keep)
            uc = self.unconditional_for([""] * (2 * n)) if self.conditioner is not None else None
            uc_target = uc
            if self.target_negation_scale > 0:
                # The keep rows' negated branch is the empty one, so their targets stay plain CFG.
                concept_rows = self.conditioning_for([self.concept] * n)
                negated = {k: torch.cat([concept_rows[k], v[n:]]) for k, v in uc.items()}
                uc_target = NegatedConceptCFG.stack_uc(uc, negated)
        sigmas = self._trajectory_sampler.get_sigmas(self.num_steps, device=self.device)
        noise = generation.seeded_noise([seeds[-1] + k for k in range(2 * n)], self.latent_shape, self.device)
        # (2n, C, H, W) at sigmas[0], shared by both trajectories
        x0 = noise * self._trajectory_sampler.discretization.prior_scale(sigmas[0])

        with self.masks.disabled():
            target_step = self.trajectory_step(cond_target, uc_target, sigmas, seeds, self._target_sampler)
            x_target = run_trajectory(target_step, x0, self.num_steps)[-1]

        def loss_fn(x_final):
            out = self.objective.trajectory_loss(x_final, x_target, n)
            return out.loss, out.logs

        loss, logs, _ = checkpointed_trajectory_backward(
            self.trajectory_step(cond_masked, uc, sigmas, seeds), x0, self.num_steps, loss_fn
        )
        reg = self.objective.regulariser(self.masks)
        if reg.requires_grad and reg.detach().abs() > 0:
            reg.backward()
        self._sync_gradients()
        opt.step()
        sch = self.lr_schedulers()
        if sch is not None:
            sch.step()

        total = loss + reg.detach()
        with torch.no_grad():
            off = self.masks.expected_off_share()
        self.loss_terms = {"loss": total, **logs, "sparsity": reg.detach()}
        self.log_dict(
            {
                "train/loss": total,
                "train/loss_erase": logs["loss_erase"],
                "train/loss_preserve": logs["loss_preserve"],
                "train/sparsity": reg.detach(),
                "train/expected_off_share": off,
            },
            prog_bar=False,
            on_step=True,
            batch_size=n,
        )
        self.log("train/loss_total", total, prog_bar=True, on_step=True, batch_size=n, logger=False)
        return total

    def _sync_gradients(self) -> None:
        # The backward runs outside DDP's forward, so DDP does not average λ.grad: do it here.
        if self.trainer.world_size > 1:
            for p in self.trainable_parameters():
                if p.grad is not None:
                    p.grad = self.trainer.strategy.reduce(p.grad, reduce_op="mean")

    def validation_step(self, batch, batch_idx):  # the method makes its own prompts; nothing to validate
        return None

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], n: int = 8) -> dict[str, torch.Tensor]:
        """Concept and keep prompts drawn with the (deterministic) masks and without them."""
        prompts = (list(batch["concept"]) + list(batch["keep"]))[:n]
        seeds = range(len(prompts))
        kw = dict(seeds=seeds, num_steps=self.log_num_steps, guidance_scale=self.log_guidance_scale)
        masked = self.generate(prompts, **kw)
        with self.masks.disabled():
            original = self.generate(prompts, **kw)
        return {"masked": masked, "original": original}

    # ------------------------------------------------------------------ outputs
    @property
    def erased_concepts(self) -> list[str]:
        return [self.concept]

    def final_masks(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(values, metadata) of the masks as exported: binarized if configured, else deterministic."""
        meta: dict[str, Any] = {
            "concept": self.concept,
            "num_steps": self.num_steps,
            "global_step": self.global_step,
            "max_off_share": self.masks.off_budget(),
            "target_negation_scale": self.target_negation_scale,
            "deconcept_anchor": self.deconcept_anchor,
        }
        if self.binarize_config is not None:
            result = binarize(self.masks, self.binarize_config["mode"], self.binarize_config.get("off_ratio"))
            values, share = result.values, result.off_share
            meta.update(
                binarize_mode=result.mode,
                off_ratio=result.off_ratio,
                off_share=share,
                off_share_by_group=result.off_share_by_group,
            )
        else:
            values = {k: v.detach() for k, v in self.masks.mask_values(sample=False).items()}
            share = sum(int((v == 0).sum()) for v in values.values()) / max(self.masks.num_units(), 1)
            meta.update(binarize_mode="none", off_share=share)
        return values, meta

    def export(self, out_dir: str | Path) -> Path:
        """Binarize (if configured), save ``masks.safetensors`` and log the share of units switched off."""
        values, meta = self.final_masks()
        path = save_masks(self.masks, Path(out_dir) / self.export_name, values=values, metadata=meta)
        log.info(
            "masks: %.2f%% of %d masked units switched off; saved to %s",
            100 * meta["off_share"],
            self.masks.num_units(),
            path,
        )
        if self.logger is not None and self._trainer is not None:
            self.logger.log_metrics({"masks/off_share": meta["off_share"]}, step=self.global_step)
        return path

    def benchmark_extras(self) -> dict[str, Any]:
        return {"masks_off_share": float(self.final_masks()[1]["off_share"])}

    @contextlib.contextmanager
    def as_original(self) -> Iterator[None]:
        with self.masks.disabled():
            yield

    @contextlib.contextmanager
    def as_erased(self) -> Iterator[None]:
        """The exported (binarized) masks instead of the training ones."""
        values, _ = self.final_masks()
        self.masks.remove()
        try:
            modules = {group: entry["modules"] for group, entry in self.masks.describe().items()}
            applied = register_mask_values(self.network, modules, values)
            try:
                yield
            finally:
                applied.remove()
        finally:
            self.masks.register(self.network)


def _check_binarize(cfg: dict | None) -> dict | None:
    if cfg is None:
        return None
    cfg = dict(cfg)
    unknown = set(cfg) - {"mode", "off_ratio"}
    if unknown:
        raise ConfigError(f"model.params.binarize: unknown keys {sorted(unknown)}; expected mode and off_ratio")
    mode = cfg.setdefault("mode", "global")
    if mode not in BINARIZE_MODES:
        raise ConfigError(f"model.params.binarize.mode: expected one of {BINARIZE_MODES}, got {mode!r}")
    if mode != "threshold":
        ratio = cfg.get("off_ratio")
        if ratio is None or not 0.0 <= float(ratio) < 1.0:
            raise ConfigError(
                f"model.params.binarize.off_ratio: the share of units switched off, in [0, 1); got {ratio!r}"
            )
    return cfg
