"""`ClosedFormEngine`: erase by editing weights in closed form, as one step of a normal run.

The engine of closed-form methods (UCE, Gandikota et al., WACV 2024: `unlearn.editors.uce`):
no sampler and no optimizer, but the run is the same as every method's (``main.py --base
<model> configs/methods/uce.yaml concept=...``: run directory, saved configs, checkpoint, the
``erased.safetensors`` export, the toy benchmark before and after). What differs between
closed-form methods is the editor (``editor_config``, a `WeightEditor`); this engine supplies:

1. What is edited: the tensors ``selector_config`` picks (default ``esd-x-strict``: every
   cross-attention ``to_k``/``to_v``), their originals kept (`FrozenCopy`) for ``as_original``
   and the checkpoint, as in `FineTuneEngine` (`SelectedTensors`).
2. The prompts: the concept's training prompts (``concept``, ``template``,
   `unlearn.data.prompts.concept_prompts`) to erase; their targets: the empty prompt, or with
   ``anchor`` / ``anchor_prompts`` each prompt's anchor prompt (`unlearn.data.anchors`);
   ``preserve`` prompts to keep.
3. The text rows the editor reads: the conditioner's ``crossattn`` (B, L, D) of each prompt and
   the index of its last word token (`last_token_index`).

The edit is the single training step (``lightning.trainer.max_steps: 1``), written into the
network by the step of `AssignStep`, the optimizer of a closed-form method, so Lightning counts it
like any optimizer step (global step, checkpoint). It is computed from the original tensors, so a
resumed run that repeats it gets the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from unlearn.config import ConfigError
from unlearn.data.anchors import pair_anchor_prompts
from unlearn.data.canvas import CanvasSpec
from unlearn.data.prompts import canvas_retain_prompts, split_concepts
from unlearn.editors.base import EditPrompts, TextRows, WeightEditor
from unlearn.engine.erasure import ErasureEngine
from unlearn.engine.selected import SelectedTensors
from unlearn.selection import ParameterSelector

log = logging.getLogger(__name__)

__all__ = ["AssignStep", "ClosedFormEngine", "last_token_index"]

DEFAULT_SELECTOR = {"target": "unlearn.selection.TrainMethod", "params": {"train_method": "esd-x-strict"}}


def _end_token_id(tokenizer: Any) -> int:
    for name in ("eos_token_id", "eot_token_id"):  # transformers' CLIPTokenizer, open_clip's SimpleTokenizer
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(tokenizer).__name__} has no end-of-text token id")


def last_token_index(conditioner: nn.Module, prompts: Sequence[str]) -> torch.Tensor:
    """(B,) the index of each prompt's last word token in the first text embedder's tokens: its end
    token's index - 1 (the official UCE's ``attention_mask.sum() - 2``); 0, the start token, for ""."""
    for embedder in getattr(conditioner, "embedders", []):
        if hasattr(embedder, "tokenize") and hasattr(embedder, "tokenizer"):
            ids = embedder.tokenize(list(prompts)).cpu()  # (B, L)
            is_end = ids == _end_token_id(embedder.tokenizer)
            end = torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1), torch.full_like(ids[:, 0], ids.shape[1]))
            return (end - 1).clamp_min(0)
    raise ConfigError("model.params.conditioner_config: no text embedder with a tokenizer, which the edit reads")


class AssignStep(torch.optim.Optimizer):
    """The optimizer of a closed-form edit: `step` copies the values handed to `assign` into their
    parameters (no gradients, no state). Lightning counts its step as the run's training step."""

    def __init__(self, params: Sequence[nn.Parameter]):
        super().__init__(list(params), defaults={})
        self._pending: list[tuple[nn.Parameter, torch.Tensor]] = []

    def assign(self, values: Sequence[tuple[nn.Parameter, torch.Tensor]]) -> None:
        """What the next `step` writes: (parameter, its new value) pairs."""
        self._pending = list(values)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            with torch.enable_grad():
                closure()
        for param, value in self._pending:
            param.copy_(value.to(device=param.device, dtype=param.dtype))
        self._pending = []


class ClosedFormEngine(SelectedTensors, ErasureEngine):
    """A closed-form erasure method on any text-conditional `DiffusionEngine` model.

    Args (besides `DiffusionEngine`'s model arguments):
        editor_config: the method's edit, a `WeightEditor` block (e.g. `UCEEditor`).
        concept: what to erase (a phrase, several joined by ``separator``, or a list).
        selector_config: which tensors are edited, a `ParameterSelector` block (default:
            ``esd-x-strict``, every cross-attention ``to_k``/``to_v``).
        separator: splits ``concept`` (and ``anchor``, ``preserve``); null: one concept.
        template / prompt_templates / prompt_csv: concept -> prompts (`unlearn.data.prompts`).
        anchor: what the concept's prompts are mapped to: None, the empty prompt; else each prompt
            with the concept replaced by the anchor (toy canvas: a concept of the same kind).
            anchor_prompts: the targets themselves, one per training prompt, in order.
        preserve: prompts kept in place: ``auto`` (on the toy canvas the prompts of every other
            concept of the erased kind, as the official UCE keeps every other artist; elsewhere the
            empty prompt, its default), a prompt or list of prompts, or None (none).
        export_diffusers: also write ``<run_dir>/unet/`` with ``save_pretrained``.
    """

    uses_base_learning_rate = False
    learning_rate_keys = "a closed-form edit has no learning rate"
    supports_adversary = False

    def __init__(
        self,
        editor_config: dict,
        concept: str | Sequence[str],
        selector_config: dict | None = None,
        separator: str | None = None,
        template: str = "auto",
        prompt_templates: Sequence[str] | None = None,
        prompt_csv: str | None = None,
        anchor: str | Sequence[str] | None = None,
        anchor_prompts: Sequence[str] | None = None,
        preserve: str | Sequence[str] | None = "auto",
        export_diffusers: bool = False,
        **engine_kwargs: Any,
    ):
        for key in ("optimizer_config", "scheduler_config"):
            if engine_kwargs.get(key):
                raise ConfigError(f"model.params.{key}: a closed-form edit trains nothing; remove it")
        super().__init__(**engine_kwargs)
        self.automatic_optimization = False
        if self.conditioner is None:
            raise ConfigError(
                f"{type(self).__name__} needs a text-conditional model: model.params.conditioner_config is missing"
            )
        self.editor = self.build_component("editor_config", editor_config, WeightEditor, "the method's edit")
        self.selector = self.build_component(
            "selector_config", selector_config or DEFAULT_SELECTOR, ParameterSelector, "the trained tensors"
        )
        canvas = self.set_concepts(concept, separator, template, prompt_templates, prompt_csv)
        self.anchor = anchor
        if anchor is None and anchor_prompts is None:
            self.targets = [""] * len(self.prompts)
        else:
            self.targets = pair_anchor_prompts(self.prompts, self.concepts, anchor, anchor_prompts, separator, canvas)
        self.preserve = self._preserve_prompts(preserve, canvas)
        self.export_diffusers = bool(export_diffusers)
        if self.export_diffusers and not hasattr(getattr(self.network, "unet", None), "save_pretrained"):
            raise ConfigError("model.params.export_diffusers: the network has no diffusers UNet to save_pretrained")
        net_params = (engine_kwargs.get("network_config") or {}).get("params") or {}
        self._base_weights = (
            engine_kwargs.get("ckpt_path") or net_params.get("pretrained_path") or net_params.get("single_file") or ""
        )
        n_edit = self.select_tensors(self.selector, trainable=False, owners=("network",))
        self._check_selection()
        log.info(
            "%s %s: editing %d tensors (%d parameters); %d prompt(s) -> %d target(s), %d kept: %s",
            self.editor.name or type(self.editor).__name__,
            self.selector.name,
            len(self.selected),
            n_edit,
            len(self.prompts),
            len(set(self.targets)),
            len(self.preserve),
            self.prompts[:4],
        )

    def _preserve_prompts(self, preserve: str | Sequence[str] | None, canvas: CanvasSpec | None) -> list[str]:
        if preserve is None:
            return []
        if preserve == "auto":
            if canvas is None:
                return [""]
            return canvas_retain_prompts(self.concepts, canvas) or [""]
        if isinstance(preserve, str):
            return split_concepts(preserve, self.separator)
        if not all(isinstance(p, str) for p in preserve):
            raise ConfigError(f"model.params.preserve: expected auto, a prompt or a list of prompts, got {preserve!r}")
        return list(preserve)

    def _check_selection(self) -> None:
        """Every selected tensor must read the text rows: a (out, D) weight, D their width."""
        width = self.encode_text([""]).rows.shape[-1]
        params = dict(self.network.named_parameters())
        for name in self.selected:
            shape = tuple(params[self._prefix + name].shape)
            if len(shape) != 2 or shape[1] != width:
                raise ConfigError(
                    f"model.params.selector_config: {name} has shape {shape}, not a projection of the {width}-wide "
                    f"text embedding (out, {width}); a closed-form edit changes those, e.g. train_method esd-x-strict"
                )

    # ------------------------------------------------------------ the edit
    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> TextRows:
        """`TextRows` of ``prompts``: the frozen conditioner's ``crossattn`` and last word tokens."""
        cond = self.conditioning_for(list(prompts))
        if "crossattn" not in cond:
            raise ConfigError("model.params.conditioner_config: gives no crossattn (text rows) to edit against")
        return TextRows(rows=cond["crossattn"].float(), last=last_token_index(self.conditioner, prompts))

    @property
    def edit_prompts(self) -> EditPrompts:
        return EditPrompts(erase=list(self.prompts), target=list(self.targets), preserve=list(self.preserve))

    @torch.no_grad()
    def compute_edit(self) -> tuple[list[tuple[nn.Parameter, torch.Tensor]], dict[str, torch.Tensor]]:
        """The edit, from the original tensors: ((network parameter, its new value) pairs, the editor's logs)."""
        originals = self.teacher.tensors()
        weights = {name: originals[self._prefix + name] for name in self.selected}
        out = self.editor(weights, self.encode_text, self.edit_prompts)
        params = dict(self.network.named_parameters())
        for name, value in out.weights.items():
            if name not in weights or tuple(value.shape) != tuple(weights[name].shape):
                raise ValueError(
                    f"{type(self.editor).__name__} returned {name!r} {tuple(value.shape)}, not a selected tensor"
                )
        logs = {k: float(v) for k, v in out.logs.items()}
        log.info("%s: edited %d tensors %s", self.editor.name or type(self.editor).__name__, len(out.weights), logs)
        return [(params[self._prefix + name], value) for name, value in out.weights.items()], out.logs

    @torch.no_grad()
    def apply_edit(self) -> dict[str, torch.Tensor]:
        """Compute the edit and write it into the network (outside a run); returns the editor's logs."""
        values, logs = self.compute_edit()
        for param, value in values:
            param.copy_(value)
        return logs

    # ------------------------------------------------------------ the run
    def configure_optimizers(self):
        params = dict(self.network.named_parameters())
        return AssignStep([params[self._prefix + name] for name in self.selected])

    def train_dataloader(self) -> DataLoader:
        steps = getattr(self.trainer, "max_steps", -1) if self._trainer is not None else -1
        if steps != 1:
            raise ConfigError(f"lightning.trainer.max_steps: a closed-form edit is one step; set it to 1 (got {steps})")
        return DataLoader(range(steps), batch_size=None, num_workers=0)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        values, logs = self.compute_edit()
        optimizer = self.optimizers()
        optimizer.optimizer.assign(values)
        optimizer.step()
        self.loss_terms = dict(logs)
        for key, value in logs.items():
            self.log(f"train/{key}", value, on_step=True, batch_size=1)

    # ------------------------------------------------------------ outputs
    @property
    def erased_concepts(self) -> list[str]:
        return list(self.concepts)

    def erased_metadata(self) -> dict[str, Any]:
        net = self.network
        return {
            "method": self.editor.name or type(self.editor).__name__,
            "train_method": self.selector.name,
            "concept": (self.separator or ",").join(self.concepts),
            "separator": self.separator,
            "prompts": " | ".join(self.prompts),
            "anchor": self.anchor,
            "targets": " | ".join(self.targets),
            "preserve": " | ".join(self.preserve),
            **self.editor.metadata(),
            "iterations": self.global_step if self._trainer is not None else 0,
            "base_ckpt": str(self._base_weights),
            "network": type(getattr(net, "unet", net)).__name__,
        }

    @torch.no_grad()
    def log_images(self, batch: Any, n: int = 8) -> dict[str, torch.Tensor]:
        """Samples of the concept prompts (and kept prompts), seeds 0..n-1."""
        pool = self.prompts + [p for p in self.preserve if p]
        prompts = [pool[i % len(pool)] for i in range(n)]
        return {
            "samples": self.generate(
                prompts, seeds=range(n), num_steps=self.log_num_steps, guidance_scale=self.log_guidance_scale
            )
        }
