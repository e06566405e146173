"""`MaskErasureEngine`: Minimalist concept erasure (Zhang et al., ICML 2025) on any engine model.

Sparse learnable masks λ on selected units of the frozen network (Linear outputs,
attention heads, feed-forward channels, norm channels; `unlearn.hooks`) are trained end to
end through the whole generation: every step runs the masked model and the original
(masks disabled, same network) through ``num_steps`` sampler steps from the same noise,
and `MinimalistObjective` compares their final latents. The gradient through the
trajectory is computed with step-wise checkpointing (`trajectory_checkpoint`): memory
stays at one step's activations whatever ``num_steps``.

Optimization is manual (``automatic_optimization = False``): the backward pass is the
two-phase walk over the trajectory, which cannot be expressed as one ``loss.backward()``.
Gradients reach λ only; the base model's weights are frozen and never change. Use fp32 or
``bf16-mixed`` precision (fp16 loss scaling is not applied to the trajectory backward).

After training the masks are binarized (`unlearn.hooks.binarize`), saved to
``<run_dir>/masks.safetensors`` and, for a toy-canvas model with an ``eval_config``, the
toy benchmark runs with the saved masks applied (``<run_dir>/eval/metrics.json``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from unlearn.config import non_negative_number, optional_seed
from unlearn.data.prompt_batches import ConceptPromptTriples
from unlearn.diffusion.guiders import NegatedConceptCFG
from unlearn.diffusion.samplers import DPMPP2MSampler
from unlearn.engine import generation
from unlearn.engine.diffusion import DiffusionEngine
from unlearn.engine.optim import build_optimizer, build_scheduler
from unlearn.engine.trajectory_checkpoint import checkpointed_trajectory_backward, run_trajectory
from unlearn.hooks import MaskManager, apply_masks, binarize, load_masks, save_masks
from unlearn.hooks.binarize import BINARIZE_MODES
from unlearn.objectives.minimalist import MinimalistObjective

log = logging.getLogger(__name__)

MASK_GROUPS = ("attn", "ff", "norm", "linear")
# AdamW without weight decay: decay would pull every λ towards 0, i.e. every mask towards 0.5.
DEFAULT_MASK_OPTIMIZER = {"target": "torch.optim.AdamW", "params": {"weight_decay": 0.0}}


class MaskErasureEngine(DiffusionEngine):
    """A `DiffusionEngine` whose network carries trainable concept-erasure masks.

    Args (besides `DiffusionEngine`'s):
        hooker_configs: mask hooker blocks (`unlearn.hooks.LinearHooker`, ...), each with
            its module filter; ``strategy``, ``init_value`` and ``masked_noise_std`` below
            are their defaults.
        concept: the concept to erase.
        strategy: ``sigmoid``, ``hard_discrete``, ``binary`` or ``continues2binary``.
        init_value: initial λ (3.0: σ(3) ≈ 0.95).
        masked_noise_std: noise std on the masked-out part (0: none).
        beta: weight of the preserve term; sparsity_weight: weight of the regulariser.
        attn_lr, ff_lr, n_lr, linear_lr: learning rate of each mask group; 0 switches the
            group off (its hookers are not built: no masks, nothing trained).
        num_steps, sampler, guidance_scale: the trajectory trained through (Euler, Euler
            ancestral, Heun or DDIM; multistep samplers are refused).
        concept_prompts, deconcept_prompts, keep_prompts: see `ConceptPromptTriples`
            (toy-canvas defaults). batch_size: triples per step; prompts_per_epoch.
        deconcept_anchor: a concept of the same kind whose prompts are the erase targets
            (concept ablation: "a striped circle" -> "a striped square"); None: the paper's
            deconcept prompts (the concept removed).
        binarize: ``{mode: global | local | threshold, off_ratio: share switched off}``
            applied after training, or None to save the deterministic masks as they are.
        target_negation_scale: s_n > 0 draws the original model's erase target for p_deconcept
            with the concept itself negated (`NegatedConceptCFG`: plain CFG of p_deconcept
            minus s_n times the concept's own direction, the prompt being the concept name).
            The paper's target (0) is whatever the original draws without the concept word,
            and that can be the concept: on the toy model the deconcept prompts of circle
            draw a circle for 17.7% of seeds (s_n = 1: 2.1%; ``scripts/bench/target_leak.py``),
            and the masks learn to keep those circles. A full negative prompt (the concept
            prompt as ``uc``) would negate its style too. Keep prompts' targets are unchanged.
            On the toy objects it erased less (mean UA 68.0 against 82.8 at 5% off,
            ``scripts/bench/README.md``).
        train_off_ratio: with strategy ``binary``, at most this share of units is off in
            every training forward (the lowest λ, `MaskManager.cap_off_share`); set it to
            ``binarize.off_ratio`` with global binarization and training optimises the very
            masks that are saved. None: no cap (units with λ <= 0 are off).
        eval_config: toy benchmark after training: ``{judge, images_per_prompt,
            batch_size, num_steps, guidance_scale, sampler, with_base}``; None skips it.
        seed: seeds the prompt draws and the noise and mask samples of every step (with the
            global step); None: ``torch.initial_seed()``, main.py's ``--seed`` (default 23), as ESD
            does. Mask runs before this default drew from seed 0 (``model.params.seed=0``).
    """

    def __init__(
        self,
        hooker_configs: Sequence[dict],
        concept: str,
        strategy: str | dict = "sigmoid",
        init_value: float = 3.0,
        masked_noise_std: float = 0.0,
        beta: float = 1.0,
        sparsity_weight: float = 0.1,
        attn_lr: float = 0.5,
        ff_lr: float = 0.5,
        n_lr: float = 0.5,
        linear_lr: float = 0.5,
        num_steps: int = 10,
        sampler: str = "euler",
        guidance_scale: float = 3.0,
        concept_prompts: Sequence[str] | None = None,
        deconcept_prompts: Sequence[str] | None = None,
        keep_prompts: Sequence[str] | None = None,
        deconcept_anchor: str | None = None,
        batch_size: int = 1,
        prompts_per_epoch: int = 1000,
        binarize: dict | None = None,
        train_off_ratio: float | None = None,
        target_negation_scale: float = 0.0,
        eval_config: dict | None = None,
        seed: int | None = None,
        **engine_kwargs: Any,
    ):
        super().__init__(**engine_kwargs)
        self.automatic_optimization = False
        self.run_dir: Path | None = None  # set by unlearn.cli
        for module in (self.network, self.conditioner, self.first_stage):
            if module is not None:
                module.requires_grad_(False)
        self.concept = concept
        self.group_lrs = {"attn": float(attn_lr), "ff": float(ff_lr), "norm": float(n_lr), "linear": float(linear_lr)}
        for group, lr in self.group_lrs.items():
            if lr < 0:
                raise ValueError(f"model.params.{'n' if group == 'norm' else group}_lr must be >= 0, got {lr}")
        if num_steps < 1 or batch_size < 1:
            raise ValueError(f"model.params.num_steps and batch_size must be >= 1, got {num_steps}, {batch_size}")
        self.num_steps, self.sampler_name, self.guidance_scale = int(num_steps), sampler, float(guidance_scale)
        self.objective = MinimalistObjective(beta=beta, sparsity_weight=sparsity_weight)
        self.binarize_config = _check_binarize(binarize)
        self.eval_config = dict(eval_config) if eval_config else None
        # main.py seeds the global RNG before it builds the model, so --seed reaches the masks too
        seed = optional_seed(seed, "model.params.seed")
        self.seed = (torch.initial_seed() if seed is None else seed) % 2**63

        self.masks = self._build_masks(hooker_configs, strategy, init_value, masked_noise_std)
        if self.binarize_config is None and any(h.strategy.requires_binarization for h in self.masks.hookers):
            raise ValueError("model.params.binarize: strategy continues2binary needs a binarize block "
                             "({mode: global, off_ratio: 0.05})")
        self.train_off_ratio = None if train_off_ratio is None else float(train_off_ratio)
        if self.train_off_ratio is not None:
            if any(h.strategy.name != "binary" for h in self.masks.hookers):
                raise ValueError(f"model.params.train_off_ratio caps the binary strategy's masks; strategy is "
                                 f"{self.masks.strategies()}, use strategy: binary or train_off_ratio: null")
            if not 0.0 <= self.train_off_ratio < 1.0:
                raise ValueError(f"model.params.train_off_ratio: expected a share in [0, 1), got {train_off_ratio}")
        self.target_negation_scale = non_negative_number(target_negation_scale, "model.params.target_negation_scale")
        if self.target_negation_scale > 0 and self.conditioner is None:
            raise ValueError("model.params.target_negation_scale needs a text-conditioned model (it negates the "
                             "concept prompt in the erase target); this model has no conditioner")
        self.masks.register(self.network)
        log.info("masks on %d units: %s", self.masks.num_units(),
                 {g: len(v["modules"]) for g, v in self.masks.describe().items()})
        self.prompts = ConceptPromptTriples(concept, concept_prompts, deconcept_prompts, keep_prompts,
                                            length=prompts_per_epoch, seed=self.seed, anchor=deconcept_anchor,
                                            anchor_name="model.params.deconcept_anchor")
        self.deconcept_anchor = deconcept_anchor
        self.batch_size = int(batch_size)
        self._frozen_parts_eval()
        self._trajectory_sampler = self.make_sampler(sampler, self.num_steps, self.guidance_scale)
        if isinstance(self._trajectory_sampler, DPMPP2MSampler):
            raise ValueError("model.params.sampler: multistep samplers (dpmpp_2m) carry state between steps and "
                             "cannot be checkpointed step by step; use euler, euler_a, heun or ddim")
        # The original model's erase/preserve targets: the same sampler, or with the concept negated.
        self._target_sampler = self._trajectory_sampler
        if self.target_negation_scale > 0:
            self._target_sampler = self.make_sampler(sampler, self.num_steps, self.guidance_scale)
            self._target_sampler.guider = NegatedConceptCFG(self.guidance_scale, self.target_negation_scale)

    def _build_masks(self, configs, strategy, init_value, masked_noise_std) -> MaskManager:
        if not configs:
            raise ValueError("model.params.hooker_configs: give at least one mask hooker block")
        built = MaskManager.from_configs(configs, path="model.params.hooker_configs", strategy=strategy,
                                         init_value=init_value, masked_noise_std=masked_noise_std)
        kept = [h for h in built.hookers if self.group_lrs[h.group] > 0]
        for h in built.hookers:
            if self.group_lrs[h.group] == 0:
                log.info("mask group %r has learning rate 0: its %s is switched off", h.group, type(h).__name__)
        if not kept:
            raise ValueError("model.params: every mask group in hooker_configs has learning rate 0; nothing to train")
        return MaskManager(kept)

    def train(self, mode: bool = True):
        super().train(mode)
        self._frozen_parts_eval()
        return self

    def _frozen_parts_eval(self) -> None:
        # The frozen model always runs in eval mode (no dropout, no conditioner ucg dropout);
        # only the masks follow the mode (stochastic samples while training).
        for module in (self.network, self.conditioner, self.first_stage):
            if module is not None:
                module.eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning restores recorded per-module modes around validation and sanity checks.
        self._frozen_parts_eval()

    # ------------------------------------------------------------------ data / optim
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.prompts, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def trainable_parameters(self):
        return [p for ps in self.masks.groups().values() for p in ps]

    def configure_optimizers(self):
        groups = [{"params": ps, "lr": self.group_lrs[g], "name": g} for g, ps in self.masks.groups().items()]
        optimizer = build_optimizer(groups, max(g["lr"] for g in groups),
                                    self.optimizer_config or DEFAULT_MASK_OPTIMIZER)
        scheduler = build_scheduler(optimizer, self.scheduler_config)
        return [optimizer] if scheduler is None else ([optimizer], [scheduler])

    def on_fit_start(self) -> None:
        precision = str(getattr(self.trainer, "precision", "32"))
        if precision.startswith("16"):
            raise ValueError(f"lightning.trainer.precision={precision}: the trajectory backward does not apply "
                             "fp16 loss scaling; use 32 or bf16-mixed")
        if self.eval_config and self.canvas_concepts is not None:
            judge = Path(self.eval_config.get("judge", "checkpoints/toy/judge.safetensors"))
            if not judge.is_file():
                raise FileNotFoundError(f"model.params.eval_config.judge: no such file: {judge}")

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
        if self.train_off_ratio is not None:
            self.masks.cap_off_share(self.train_off_ratio)
        seeds = self._step_seeds()
        with torch.no_grad():
            cond_masked = self.conditioning_for(concept + keep)
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
        x0 = noise * torch.sqrt(1.0 + sigmas[0] ** 2)  # (2n, C, H, W), shared by both trajectories

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
        if reg.requires_grad and self.objective.sparsity_weight > 0:
            reg.backward()
        self._sync_gradients()
        opt.step()
        sch = self.lr_schedulers()
        if sch is not None:
            sch.step()

        total = loss + reg.detach()
        with torch.no_grad():
            off = self.masks.expected_off_share()
        self.log_dict({"train/loss": total, "train/loss_erase": logs["loss_erase"],
                       "train/loss_preserve": logs["loss_preserve"], "train/sparsity": reg.detach(),
                       "train/expected_off_share": off}, prog_bar=False, on_step=True, batch_size=n)
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

    # ------------------------------------------------------------------ after training
    def on_train_end(self) -> None:
        if not self.trainer.is_global_zero:
            return
        run_dir = Path(self.run_dir or self.trainer.default_root_dir)
        path = self.finalize_masks(run_dir / "masks.safetensors")
        if self.eval_config and self.canvas_concepts is not None:
            self.evaluate_masks(path, run_dir / "eval")
        elif self.eval_config:
            log.info("eval_config is set but the model has no canvas metadata (objects, styles): skipping "
                        "the toy benchmark")

    def finalize_masks(self, path: str | Path) -> Path:
        """Binarize (if configured), save to ``path`` and log the share of units switched off."""
        meta: dict[str, Any] = {"concept": self.concept, "num_steps": self.num_steps, "global_step": self.global_step,
                                "train_off_ratio": self.train_off_ratio,
                                "target_negation_scale": self.target_negation_scale,
                                "deconcept_anchor": self.deconcept_anchor}
        if self.binarize_config is not None:
            result = binarize(self.masks, self.binarize_config["mode"], self.binarize_config.get("off_ratio"))
            values, share = result.values, result.off_share
            meta.update(binarize_mode=result.mode, off_ratio=result.off_ratio, off_share=share,
                        off_share_by_group=result.off_share_by_group)
        else:
            values = {k: v.detach() for k, v in self.masks.mask_values(sample=False).items()}
            share = sum(int((v == 0).sum()) for v in values.values()) / max(self.masks.num_units(), 1)
            meta.update(binarize_mode="none", off_share=share)
        path = save_masks(self.masks, path, values=values, metadata=meta)
        log.info("masks: %.2f%% of %d masked units switched off; saved to %s", 100 * share,
                 self.masks.num_units(), path)
        if self.logger is not None:
            self.logger.log_metrics({"masks/off_share": share}, step=self.global_step)
        return path

    def evaluate_masks(self, masks_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
        """The toy benchmark with the saved masks applied (and, if ``with_base``, without)."""
        from unlearn.eval.report import write_metrics_json
        from unlearn.eval.toy_benchmark import run_toy_benchmark

        cfg = dict(self.eval_config or {})
        sampler = self.make_sampler(cfg.get("sampler"), cfg.get("num_steps"), cfg.get("guidance_scale"))
        kw = dict(judge=cfg.get("judge", "checkpoints/toy/judge.safetensors"), sampler=sampler,
                  images_per_prompt=int(cfg.get("images_per_prompt", 4)), batch_size=int(cfg.get("batch_size", 64)),
                  model_concepts=self.canvas_concepts)
        base = None
        self.masks.remove()  # evaluate the saved (binarized) masks, not the training ones
        try:
            if cfg.get("with_base"):
                base = run_toy_benchmark(self, erased=[self.concept], out_dir=Path(out_dir) / "base", **kw)
            applied = apply_masks(self.network, masks_path)
            try:
                metrics = run_toy_benchmark(self, erased=[self.concept], out_dir=out_dir, **kw)
            finally:
                applied.remove()
        finally:
            self.masks.register(self.network)
        _, meta = load_masks(masks_path)
        metrics["masks_off_share"] = float(meta["off_share"])
        if base is not None:
            metrics["base_FD"] = base.get("FD")
            log.info("FD %.3f with the masks, %.3f for the base model", metrics.get("FD"), base.get("FD"))
        write_metrics_json(metrics, Path(out_dir) / "metrics.json")
        return metrics


def _check_binarize(cfg: dict | None) -> dict | None:
    if cfg is None:
        return None
    cfg = dict(cfg)
    unknown = set(cfg) - {"mode", "off_ratio"}
    if unknown:
        raise ValueError(f"model.params.binarize: unknown keys {sorted(unknown)}; expected mode and off_ratio")
    mode = cfg.setdefault("mode", "global")
    if mode not in BINARIZE_MODES:
        raise ValueError(f"model.params.binarize.mode: expected one of {BINARIZE_MODES}, got {mode!r}")
    if mode != "threshold":
        ratio = cfg.get("off_ratio")
        if ratio is None or not 0.0 <= float(ratio) < 1.0:
            raise ValueError("model.params.binarize.off_ratio: the share of units switched off, in [0, 1); "
                             f"got {ratio!r}")
    return cfg
