"""`ErasureEngine`: the lifecycle every erasure and distillation method shares, written once.

A method is a subclass that says what is trained and how a step's loss is computed (its
objective, built from ``objective_config``); everything around it lives here:

* the model's own parts (network, conditioner, first stage) are frozen and stay in eval
  mode whatever Lightning's mode (``network_follows_train_mode`` lets a method that
  fine-tunes the network itself keep it in the trainer's mode);
* outputs go to the trainer's run directory (``default_root_dir``): the exports
  (`unlearn.callbacks.ExportArtifacts` calls `export`) and the toy benchmark
  (`unlearn.callbacks.ToyBenchmark`) are callbacks that use only the interface below;
* optimizers and schedulers come from ``optimizer_config`` / ``scheduler_config``, one
  optimizer per entry of `optimized_parameters` (DMD2 has two);
* the method's seed (``seed``, default main.py's ``--seed``);
* ``loss_fn_config`` and ``lr_scales`` (a base model's training recipe) are refused, not ignored.

The public interface the callbacks use: ``erased_concepts``, ``export(out_dir)``,
``export_name``, the contexts ``as_original()`` (sample the model before erasure) and
``as_erased()`` (sample exactly what `export` writes), ``benchmark_extras()``, and the
`DiffusionEngine` sampling API (``generate``, ``make_sampler``, ``canvas_concepts``).
"""

from __future__ import annotations

import contextlib
import logging
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.config import ConfigError, instantiate_from_config, optional_seed
from unlearn.data.canvas import CanvasSpec
from unlearn.data.prompts import concept_prompts, split_concepts
from unlearn.engine.diffusion import DiffusionEngine
from unlearn.engine.optim import build_optimizer, build_scheduler
from unlearn.objectives.base import ObjectiveOutput

log = logging.getLogger(__name__)

__all__ = ["ErasureEngine"]

# Keys of a base model's training config that no erasure method reads.
TRAINING_RECIPE_KEYS = ("loss_fn_config", "lr_scales")


class ErasureEngine(DiffusionEngine):
    """Base of the method engines; takes every `DiffusionEngine` argument plus:

    Args:
        seed: seeds the method's own random draws (prompts, trajectories, mask noise);
            None: ``torch.initial_seed()``, i.e. main.py's ``--seed``.
        adversary_config: prompts that bring the concept back, searched during training and
            erased too (`unlearn.engine.adversarial.AdversarialPrompts`, with an attack block), for
            methods that train against their concept prompts; None: off.
    """

    # The default optimizer when the config gives no optimizer_config.
    default_optimizer_config: dict[str, Any] = {"target": "torch.optim.AdamW", "params": {}}
    # Whether model.params.base_learning_rate is this method's learning rate.
    uses_base_learning_rate: bool = True
    # Whether the frozen network follows the trainer's train/eval mode (methods that fine-tune it).
    network_follows_train_mode: bool = False
    # The file `export` writes into the run directory.
    export_name: str = ""
    # Whether the method can train against adversarial prompts (adversary_config).
    supports_adversary: bool = True

    learning_rate_keys = "the method config sets its learning rates"

    def __init__(
        self,
        seed: int | None = None,
        base_learning_rate: float | None = None,
        adversary_config: dict | None = None,
        **engine_kwargs: Any,
    ):
        for key in TRAINING_RECIPE_KEYS:
            if engine_kwargs.get(key):
                raise ConfigError(
                    f"model.params.{key}: {type(self).__name__} does not use it (it belongs to a base "
                    "model's training config); remove it from the model config"
                )
        if base_learning_rate is not None and not self.uses_base_learning_rate:
            raise ConfigError(
                f"model.params.base_learning_rate: {type(self).__name__} does not use it; {self.learning_rate_keys}"
            )
        if base_learning_rate is not None:
            engine_kwargs["base_learning_rate"] = base_learning_rate
        super().__init__(**engine_kwargs)
        seed = optional_seed(seed, "model.params.seed")
        # main.py seeds the global RNG before it builds the model, so --seed reaches the method too.
        self.seed = (torch.initial_seed() if seed is None else seed) % 2**63
        self.adversary = None
        if adversary_config:
            if not self.supports_adversary:
                raise ConfigError(
                    f"model.params.adversary_config: {type(self).__name__} does not train against prompts"
                )
            self.adversary = instantiate_from_config(adversary_config, _path="model.params.adversary_config")
        self._adversary_generator = torch.Generator().manual_seed((self.seed + 104_729) % 2**63)
        self.loss_terms: dict[str, torch.Tensor] = {}
        for module in self.frozen_parts():
            module.requires_grad_(False)
        self._frozen_parts_eval()

    # ------------------------------------------------------------------ components
    def build_objective(self, config: dict | None, contract: type, **runtime: Any) -> Any:
        """The objective of ``model.params.objective_config``; ``runtime`` adds what only the
        engine has (networks, the denoiser)."""
        return self.build_component("objective_config", config, contract, "the method's loss", **runtime)

    def build_component(self, key: str, config: dict | None, contract: type, role: str, **runtime: Any) -> Any:
        """The component of ``model.params.<key>``, checked against the ``contract`` it must implement;
        a missing block is an error naming ``role``."""
        path = f"model.params.{key}"
        if not config:
            raise ConfigError(f"{path}: missing ({role}, a target block)")
        component = instantiate_from_config(config, _path=path, **runtime)
        if not isinstance(component, contract):
            raise ConfigError(
                f"{path}: {type(component).__name__} is not a {contract.__name__}, "
                f"which {type(self).__name__} trains with"
            )
        return component

    def set_concepts(
        self,
        concept: str | Sequence[str],
        separator: str | None,
        template: str,
        prompt_templates: Sequence[str] | None = None,
        prompt_csv: str | None = None,
    ) -> CanvasSpec | None:
        """``self.concepts`` (``concept`` split on ``separator``) and their training prompts
        ``self.prompts`` (`unlearn.data.prompts.concept_prompts`); returns the toy canvas the
        prompts were written for (None on other models)."""
        self.concepts = split_concepts(concept, separator)
        self.separator = separator
        canvas = CanvasSpec(*map(tuple, self.canvas_concepts)) if self.canvas_concepts else None
        self.prompts = concept_prompts(self.concepts, template, canvas, prompt_templates, prompt_csv)
        return canvas

    def adversarial_search(self, prompts: list[str], concept: str) -> None:
        """With an adversary, search anew when it is due (before the step's inputs are made)."""
        if self.adversary is not None:
            self.adversary.maybe_search(self, prompts, concept, self.global_step, self._adversary_generator)

    def adversarial_rows(
        self, cond: dict[str, Any], reencode: bool = False
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        """``cond`` (one row per sample of the concept) with the adversary's share of rows replaced
        by adversarial prompts, and those rows (None without an adversary). ``reencode``: the
        adversarial prompts encoded anew by the conditioner as it is now (a trained text encoder,
        with grad), not the conditions computed when they were found."""
        if self.adversary is None:
            return cond, None
        current = self.adversary.encode(self) if reencode else None
        return self.adversary.replace(cond, self._adversary_generator, current)

    # ------------------------------------------------------------------ frozen parts
    def frozen_parts(self) -> list[nn.Module]:
        """The model's own modules, frozen (a method re-enables what it trains)."""
        return [m for m in (self.network, self.conditioner, self.first_stage) if m is not None]

    def train(self, mode: bool = True):
        super().train(mode)
        self._frozen_parts_eval()
        return self

    def _frozen_parts_eval(self) -> None:
        # No dropout or conditioner ucg dropout in the frozen model, whatever the trainer's mode.
        for module in self.frozen_parts():
            if module is self.network and self.network_follows_train_mode:
                continue
            module.eval()

    def on_train_start(self) -> None:
        # Lightning keeps the modes modules were built in (copies of the frozen network start in
        # eval): the trained parts train, the frozen parts stay in eval.
        self.train()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning restores recorded per-module modes around validation and sanity checks.
        self._frozen_parts_eval()

    # ------------------------------------------------------------------ outputs
    @property
    @abstractmethod
    def erased_concepts(self) -> list[str]:
        """The concept(s) this model is meant not to draw."""

    @abstractmethod
    def export(self, out_dir: str | Path) -> Path:
        """Write the method's artefact (``export_name``) into ``out_dir``; return its path."""

    @abstractmethod
    def as_original(self) -> contextlib.AbstractContextManager:
        """Within this context, `generate` and `make_sampler` sample the model before erasure."""

    def as_erased(self) -> contextlib.AbstractContextManager:
        """Within this context, `generate` samples exactly what `export` writes."""
        return contextlib.nullcontext()

    def benchmark_extras(self) -> dict[str, Any]:
        """Facts added to the toy benchmark's ``metrics.json`` (e.g. the share of masks off)."""
        return {}

    # ------------------------------------------------------------------ optimization
    def optimized_parameters(self) -> list[list[dict[str, Any]]]:
        """One list of torch parameter groups (``{"params": [...], "lr": ...}``) per optimizer."""
        return [self.parameter_groups()]

    def configure_optimizers(self):
        optimizers, schedulers = [], []
        for groups in self.optimized_parameters():
            lr = max(g["lr"] for g in groups)
            optimizer = build_optimizer(groups, lr, self.optimizer_config or self.default_optimizer_config)
            optimizers.append(optimizer)
            scheduler = build_scheduler(optimizer, self.scheduler_config)
            if scheduler is not None:
                schedulers.append(scheduler)
        return optimizers if not schedulers else (optimizers, schedulers)

    def log_losses(self, out: ObjectiveOutput, batch_size: int, **extra: torch.Tensor) -> None:
        """Log ``train/loss`` and each named term; keep them in ``loss_terms`` (read by the
        non-finite-loss guard to name the term at fault)."""
        terms = {"loss": out.loss.detach(), **out.logs, **extra}
        self.loss_terms = terms
        self.log("train/loss", terms["loss"], prog_bar=True, on_step=True, batch_size=batch_size)
        for key, value in terms.items():
            if key != "loss":
                self.log(f"train/{key}", value, on_step=True, batch_size=batch_size)
