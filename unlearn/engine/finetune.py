"""`FineTuneEngine`: erase by fine-tuning part of the network against its frozen original.

The engine of prediction-matching methods: ESD (Gandikota et al., ICCV 2023; the
objective `unlearn.objectives.esd.ESDObjective`) and methods of the same shape. What differs
between them is the objective (``objective_config``, a `PredictionObjective`); this engine
supplies what they share:

1. What is trained: the parameters ``selector_config`` picks (ESD's ``train_method``,
   `unlearn.selection.TrainMethod`); everything else has ``requires_grad=False``. The frozen
   original is the same model with the original values of those parameters swapped in
   (`FrozenCopy`): no second copy of the model. With a text encoder selected (AdvUnlearn's
   module, `unlearn.selection.TextEncoder`) the network stays the original; the frozen side's
   conditions (x_t sampling, the teacher's targets) come from the original text encoder, and the
   trained side's from the trained one, re-encoded with grad at every step
   (``ErasureBatch.trained``; adversarial prompts too).
2. Where x_t comes from: the frozen model's sampler (``trajectory_sampler_config``, CFG and
   step count included) stopped at a random step, from a trajectory source
   (``trajectory_config``, by default a `TrajectoryPool` that samples ``pool_size``
   trajectories in one batch and hands each out once; see `unlearn.engine.trajectories`).
3. The prompt roles of an `ErasureBatch`: the concept's prompts (from ``concept`` and
   ``template``, `unlearn.data.prompts.concept_prompts`), the empty prompt, ``erase_from``
   (x_t is then sampled from it), ``preserve`` prompts, checked on the concept's x_t or on
   their own trajectories (``preserve_source: own``), and, for objectives that use it
   (``uses_anchor``: concept ablation), each concept prompt's ``anchor`` prompt
   (`unlearn.data.anchors`): x_t is then sampled from the anchor prompts, the anchor of the
   same prompt index as the concept prompt it stands in for.
4. `export` writes ``erased.safetensors``: the changed parameters under diffusers UNet names
   (or ``text_encoder.`` names; `unlearn.engine.export`), and with ``export_diffusers`` the whole
   UNet (``unet/``) or text encoder (``text_encoder/``). `SelectedTensors`
   (`unlearn.engine.selected`) holds this part (selection, frozen originals, export,
   ``as_original``), shared with the closed-form editors' engine (`unlearn.engine.closed_form`).

Training data is made here: `train_dataloader` yields iteration indices, so the method
config sets ``data: null`` and ``lightning.trainer.max_steps`` is the number of iterations.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from unlearn.config import ConfigError, instantiate_from_config
from unlearn.data.anchors import pair_anchor_prompts
from unlearn.data.canvas import CanvasSpec
from unlearn.data.prompts import canvas_retain_prompts, split_concepts
from unlearn.engine import generation
from unlearn.engine.erasure import ErasureEngine
from unlearn.engine.selected import SelectedTensors
from unlearn.engine.trajectories import TrajectoryBatch, check_step_range
from unlearn.objectives.base import ErasureBatch, PredictionObjective
from unlearn.selection import ParameterSelector

log = logging.getLogger(__name__)

__all__ = ["FineTuneEngine", "SelectedTensors"]

PRESERVE_SOURCES: tuple[str, ...] = ("concept", "own")
DEFAULT_TRAJECTORIES = {"target": "unlearn.engine.trajectories.TrajectoryPool"}
DEFAULT_SELECTOR = {"target": "unlearn.selection.TrainMethod", "params": {"train_method": "xattn"}}


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


class FineTuneEngine(SelectedTensors, ErasureEngine):
    """A prediction-matching erasure method on any text-conditional `DiffusionEngine` model.

    Args (besides `DiffusionEngine`'s model arguments and ``seed``):
        objective_config: the method's loss, a `PredictionObjective` block (e.g. ESD's).
        concept: what to erase (a phrase, several joined by ``separator``, or a list).
        selector_config: which parameters are trained, a `ParameterSelector` block.
        trajectory_sampler_config: the frozen sampler that makes x_t, a sampler target block
            with ``num_steps`` and its ``guider_config`` (CFG); the model's discretization
            is filled in when the block has none.
        trajectory_config: the source of x_t (`TrajectoryPool` params ``pool_size``,
            ``step_range``: [lo, hi] to take x_t only after lo..hi-1 sampler steps, ``reuse``:
            samples per frozen trajectory).
        separator: splits ``concept`` (and ``preserve``) into several; null: one concept.
        template / prompt_templates / prompt_csv: concept → prompts (`unlearn.data.prompts`).
        erase_from: prompt c_from to erase the concept from (official ``--erase_from``).
        anchor: for objectives that use anchor prompts (``uses_anchor``): the anchor concept(s),
            one for all or one per concept (split by ``separator``); on the toy canvas a concept
            of the same kind (None: the concept removed from each prompt), elsewhere the text that
            replaces the concept phrase (required). anchor_prompts: the anchor prompts instead,
            one per training prompt, in order.
        preserve: prompt(s) to keep; ``auto`` on the toy canvas: the prompts of its other concepts
            of the erased one's kind (a retain set unrelated to the concept, as AdvUnlearn's).
            preserve_source: where they are checked: ``concept``
            (the erased concept's x_t) or ``own`` (x_t from their own frozen trajectories, a
            second trajectory source; doubles the sampling cost per iteration).
        preserve_step_range: with ``preserve_source: own``, [lo, hi] of the steps the preserve
            prompts' x_t are taken after; None: ``step_range``'s.
        batch_size: trajectories per iteration (1 like the reference).
        train_image_size: pixel size of x_t (the toolkit's ``image_size``); None: ``image_size``.
        export_diffusers: also write ``<run_dir>/unet/`` (``transformer/`` for SD3 and Flux,
            ``text_encoder/`` when the text encoder is trained) with ``save_pretrained``.
        loss_guidance: for a guidance-distilled network (Flux.1-dev, whose guidance strength is an
            input): the strength every model call of the loss reads; x_t is still sampled at the
            network's own (``guidance``). None: the network's own everywhere.
    """

    default_optimizer_config = {"target": "torch.optim.Adam", "params": {}}  # the ESD reference uses plain Adam
    network_follows_train_mode = True

    def __init__(
        self,
        objective_config: dict,
        concept: str | Sequence[str],
        trajectory_sampler_config: dict,
        selector_config: dict | None = None,
        trajectory_config: dict | None = None,
        separator: str | None = None,
        template: str = "auto",
        prompt_templates: Sequence[str] | None = None,
        prompt_csv: str | None = None,
        erase_from: str | None = None,
        anchor: str | Sequence[str] | None = None,
        anchor_prompts: Sequence[str] | None = None,
        preserve: str | Sequence[str] | None = None,
        preserve_source: str = "concept",
        preserve_step_range: Sequence[int] | None = None,
        batch_size: int = 1,
        train_image_size: int | None = None,
        export_diffusers: bool = False,
        loss_guidance: float | None = None,
        **engine_kwargs: Any,
    ):
        super().__init__(**engine_kwargs)
        net_params = (engine_kwargs.get("network_config") or {}).get("params") or {}
        self._base_weights = (
            engine_kwargs.get("ckpt_path") or net_params.get("pretrained_path") or net_params.get("single_file") or ""
        )
        if self.conditioner is None:
            raise ConfigError(
                f"{type(self).__name__} needs a text-conditional model: model.params.conditioner_config is missing"
            )
        self.objective: PredictionObjective = self.build_objective(objective_config, PredictionObjective)
        self.selector: ParameterSelector = self.build_component(
            "selector_config", selector_config or DEFAULT_SELECTOR, ParameterSelector, "the trained tensors"
        )
        canvas = self.set_concepts(concept, separator, template, prompt_templates, prompt_csv)
        self.erase_from = erase_from
        self.anchor = anchor
        self.anchor_prompts = self._anchor_prompts(anchor, anchor_prompts, canvas)
        self.preserve = self._preserve_prompts(preserve, canvas)
        if preserve_source not in PRESERVE_SOURCES:
            raise ConfigError(
                f"model.params.preserve_source: expected one of {list(PRESERVE_SOURCES)}, got {preserve_source!r}"
            )
        self.preserve_source = preserve_source
        if preserve_step_range is not None and preserve_source != "own":
            raise ConfigError(
                "model.params.preserve_step_range applies to preserve_source: own (with preserve_source: "
                f"{preserve_source} the preserve term uses the concept's x_t); set preserve_source=own "
                "or preserve_step_range=null"
            )
        if loss_guidance is not None and not getattr(self.network, "guidance_embeds", False):
            raise ConfigError(
                "model.params.loss_guidance: the network reads no guidance strength (only guidance-distilled "
                "models such as Flux.1-dev do); set loss_guidance=null"
            )
        self.loss_guidance = None if loss_guidance is None else float(loss_guidance)
        self.train_image_size = int(train_image_size or self.image_size)
        self.trajectory_sampler_config = self.frozen_sampler_config(trajectory_sampler_config, self.train_image_size)
        self.pool = self._trajectory_source(trajectory_config, len(self.prompts), stream=0)
        self.step_range = self.pool.step_range
        self.preserve_step_range = (
            self.step_range
            if preserve_step_range is None
            else check_step_range(preserve_step_range, self.pool.num_steps, "model.params.preserve_step_range")
        )
        self.preserve_pool = None
        if self.preserve and self.preserve_source == "own":
            self.preserve_pool = self._trajectory_source(
                trajectory_config, len(self.preserve), stream=1, step_range=list(self.preserve_step_range)
            )
        capacity = min(p.capacity for p in (self.pool, self.preserve_pool) if p is not None)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= capacity:
            raise ConfigError(
                f"model.params.batch_size: expected an integer in [1, {capacity}] (the trajectory source's "
                f"samples per refill, pool_size x reuse), got {batch_size!r}"
            )
        self.batch_size = batch_size
        self.export_diffusers = bool(export_diffusers)
        self._cond_table: dict[str, dict[str, Any]] | None = None
        if self.adversary is not None and erase_from is not None:
            raise ConfigError(
                "model.params.adversary_config: adversarial prompts stand for the concept's; they do not apply "
                "with erase_from"
            )

        n_train = self.select_tensors(self.selector, trainable=True)
        self.check_export_diffusers()
        n_all = sum(p.numel() for p in self._owner.parameters())
        log.info(
            "%s %s: training %d tensors, %d of %d %s parameters (%.2f%%); %d prompt(s): %s",
            self.objective.name or type(self.objective).__name__,
            self.selector.name,
            len(self.selected),
            n_train,
            n_all,
            self.site.owner,
            100 * n_train / max(n_all, 1),
            len(self.prompts),
            self.prompts[:4],
        )

    # ------------------------------------------------------------ components
    def _anchor_prompts(
        self, anchor: str | Sequence[str] | None, given: Sequence[str] | None, canvas: CanvasSpec | None
    ) -> list[str] | None:
        """Each training prompt's anchor prompt, for objectives that use them; None otherwise."""
        if not self.objective.uses_anchor:
            for key, value in (("anchor", anchor), ("anchor_prompts", given)):
                if value is not None:
                    raise ConfigError(
                        f"model.params.{key}: {type(self.objective).__name__} does not use anchor prompts; "
                        f"set {key}=null or use an objective that does (e.g. concept ablation)"
                    )
            return None
        if self.erase_from is not None:
            raise ConfigError(
                "model.params.erase_from: with anchor prompts x_t come from the anchors' trajectories; "
                "set erase_from=null"
            )
        return pair_anchor_prompts(self.prompts, self.concepts, anchor, given, self.separator, canvas)

    def _preserve_prompts(self, preserve: str | Sequence[str] | None, canvas: CanvasSpec | None) -> list[str]:
        if not preserve:
            return []
        if preserve != "auto":
            return split_concepts(preserve, self.separator)
        retain = canvas_retain_prompts(self.concepts, canvas) if canvas is not None else []
        if not retain:
            raise ConfigError(
                "model.params.preserve: auto keeps the toy canvas's other concepts of the erased one's kind, and "
                "this model has none; give the prompts to keep (a prompt, several split by separator, or a list)"
            )
        return retain

    def _pool_seed(self, stream: int) -> int:
        # One stream per rank (under DDP every rank draws its own trajectories) and per source.
        return (int(self.seed) + 1_000_003 * self.global_rank + 7_919 * stream) % 2**63

    def _trajectory_source(self, config: dict | None, num_prompts: int, stream: int, **runtime: Any):
        sampler = generation.build_sampler(self.trajectory_sampler_config, "model.params.trajectory_sampler_config")
        if self.loss_guidance is not None:  # the sampler's predictions are at another guidance strength
            runtime["record_predictions"] = False
        return instantiate_from_config(
            config or DEFAULT_TRAJECTORIES,
            _path="model.params.trajectory_config",
            sampler=sampler,
            num_prompts=num_prompts,
            seed=self._pool_seed(stream),
            **runtime,
        )

    def on_fit_start(self) -> None:
        # The rank is known only now; nothing has been drawn yet.
        self.pool.manual_seed(self._pool_seed(0))
        if self.preserve_pool is not None:
            self.preserve_pool.manual_seed(self._pool_seed(1))

    # ------------------------------------------------------------ model calls
    def _teacher_network(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        if self.conditioner_selected:  # the network is never trained then: it is the original
            return self.network(x, t, cond)
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
        """Embeddings of every prompt role by the original conditioner (no ucg dropout), computed once:
        the frozen side's conditions (x_t sampling, the teacher's targets)."""
        if self._cond_table is None or next(iter(self._cond_table["concept"].values())).device != self.device:
            with torch.no_grad(), self.original_conditioner():
                self._cond_table = {
                    "concept": self.conditioning_for(self.prompts),
                    "null": self.unconditional_for([""]),
                }
                if self.erase_from is not None:
                    self._cond_table["erase_from"] = self.conditioning_for([self.erase_from])
                if self.anchor_prompts is not None:
                    self._cond_table["anchor"] = self.conditioning_for(self.anchor_prompts)
                if self.preserve:
                    self._cond_table["preserve"] = self.conditioning_for(self.preserve)
        return self._cond_table

    def _sampler_conds(self, prompt_idx: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
        table, zeros = self._conds(), torch.zeros_like(prompt_idx)
        if self.erase_from is not None:
            cond = _pick(table["erase_from"], zeros)
        else:  # prompt i's anchor stands in for prompt i
            cond = _pick(table["anchor" if self.anchor_prompts is not None else "concept"], prompt_idx)
        return cond, _pick(table["null"], zeros)

    def _preserve_sampler_conds(self, prompt_idx: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
        table = self._conds()
        return _pick(table["preserve"], prompt_idx), _pick(table["null"], torch.zeros_like(prompt_idx))

    @property
    def train_latent_shape(self) -> tuple[int, int, int]:
        return self.latent_shape_for(self.train_image_size)

    def _take(self, pool, conds_for) -> TrajectoryBatch:
        with _eval_mode(self.network):
            return pool.take(self.batch_size, self.teacher_denoise, conds_for, self.train_latent_shape, self.device)

    def erasure_batch(self) -> tuple[ErasureBatch, torch.Tensor]:
        """The next `ErasureBatch` (and the sampler steps t of its samples)."""
        traj = self._take(self.pool, self._sampler_conds)
        table, n = self._conds(), traj.x.shape[0]
        zeros = torch.zeros(n, dtype=torch.long)
        preserve = preserve_x = preserve_sigma = preserve_idx = None
        if self.preserve_pool is not None:
            own = self._take(self.preserve_pool, self._preserve_sampler_conds)
            preserve_idx = own.prompt
            preserve_x, preserve_sigma = own.x.float(), own.sigma.float()
        elif self.preserve:
            preserve_idx = torch.randint(len(self.preserve), (n,), generator=self.pool.generator)
        if preserve_idx is not None:
            preserve = _pick(table["preserve"], preserve_idx)
        if self.erase_from is not None:
            cond_role = "erase_from"
        else:  # an anchor prompt is no role of the loss
            cond_role = "concept" if self.anchor_prompts is None else None
        teacher_eps = self._recorded_eps(traj, cond_role)
        if self.preserve_pool is not None:
            teacher_eps.update(self._recorded_eps(own, cond_role="preserve", uc_role="preserve_null"))
        batch = ErasureBatch(
            x=traj.x.float(),
            sigma=traj.sigma.float(),
            concept=_pick(table["concept"], traj.prompt),
            null=_pick(table["null"], zeros),
            erase_from=_pick(table["erase_from"], zeros) if self.erase_from is not None else None,
            preserve=preserve,
            preserve_x=preserve_x,
            preserve_sigma=preserve_sigma,
            anchor=_pick(table["anchor"], traj.prompt) if self.anchor_prompts is not None else None,
            teacher_eps=teacher_eps or None,
        )
        if self.conditioner_selected:
            batch.trained = self._trained_conds(traj.prompt, preserve_idx)
        if self.adversary is not None:
            batch.trained_concept, self._adversarial_rows = self.adversarial_rows(
                batch.trained_cond("concept"), reencode=self.conditioner_selected
            )
        if self.loss_guidance is not None:
            self._set_loss_guidance(batch)
        return batch, traj.step

    def _set_loss_guidance(self, batch: ErasureBatch) -> None:
        """Every prompt role of the loss read at the guidance strength ``loss_guidance``."""

        def guided(cond: dict[str, Any]) -> dict[str, Any]:
            n = next(v.shape[0] for v in cond.values() if torch.is_tensor(v))
            return {**cond, "guidance": torch.full((n,), self.loss_guidance, device=self.device)}

        for role in ("concept", "null", "erase_from", "preserve", "trained_concept", "anchor"):
            cond = getattr(batch, role)
            if cond is not None:
                setattr(batch, role, guided(cond))
        if batch.trained is not None:
            batch.trained = {role: guided(cond) for role, cond in batch.trained.items()}

    def _trained_conds(self, prompt_idx: torch.Tensor, preserve_idx: torch.Tensor | None) -> dict[str, dict[str, Any]]:
        """The step's prompt roles through the text encoder being trained, with grad (the batch's own
        conditions are the original encoder's, for the frozen side); rows as in the batch."""
        zeros = torch.zeros_like(prompt_idx)
        trained = {
            "concept": self._encoded_rows(self.prompts, prompt_idx),
            "null": self._encoded_rows([""], zeros, unconditional=True),
        }
        if self.erase_from is not None:
            trained["erase_from"] = self._encoded_rows([self.erase_from], zeros)
        if self.anchor_prompts is not None:
            trained["anchor"] = self._encoded_rows(self.anchor_prompts, prompt_idx)
        if preserve_idx is not None:
            trained["preserve"] = self._encoded_rows(self.preserve, preserve_idx)
        return trained

    def _encoded_rows(self, prompts: Sequence[str], idx: torch.Tensor, unconditional: bool = False) -> dict[str, Any]:
        """Rows ``idx`` (n,) of ``prompts``' conditions by the conditioner as it is now, each prompt
        encoded once (``unconditional``: as the guidance branch, like the frozen table's null)."""
        unique = sorted(set(idx.tolist()))
        texts = [prompts[i] for i in unique]
        cond = self.unconditional_for(texts) if unconditional else self.conditioning_for(texts)
        return _pick(cond, torch.tensor([unique.index(i) for i in idx.tolist()]))

    def _recorded_eps(
        self, traj: TrajectoryBatch, cond_role: str | None, uc_role: str = "null"
    ) -> dict[str, torch.Tensor]:
        """The frozen eps the trajectory sampler recorded at traj.x, by prompt role: its ``uc``
        branch is the empty prompt, its ``cond`` branch the trajectories' own prompt (``cond_role``;
        None: a prompt no role of the loss has)."""
        if traj.denoised is None:
            return {}
        roles = {"uc": uc_role, "cond": cond_role}
        return {
            roles[b]: self.denoiser.eps_from_x0(traj.x, x0, traj.sigma).float()
            for b, x0 in traj.denoised.items()
            if roles.get(b)
        }

    # ------------------------------------------------------------ training
    def train_dataloader(self) -> DataLoader:
        steps = getattr(self.trainer, "max_steps", -1) if self._trainer is not None else -1
        if steps is None or steps < 1:
            raise ConfigError(
                "lightning.trainer.max_steps: the method runs that many iterations; set it "
                "(the ESD config's iterations=...)"
            )
        return DataLoader(range(steps), batch_size=None, num_workers=0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.adversarial_search(self.prompts, (self.separator or ",").join(self.concepts))
        erase, steps = self.erasure_batch()
        out = self.objective(self.student_eps, self.teacher_eps, erase)
        extra = {"t_step": steps.float().mean()}
        if self.adversary is not None:
            extra["adversarial_share"] = self._adversarial_rows.float().mean()
        self.log_losses(out, erase.x.shape[0], **extra)
        return out.loss

    # ------------------------------------------------------------ outputs
    @property
    def erased_concepts(self) -> list[str]:
        return list(self.concepts)

    def erased_metadata(self) -> dict[str, Any]:
        net = self.network
        sampler = self.pool.sampler
        return {
            "method": self.objective.name or type(self.objective).__name__,
            "train_method": self.selector.name,
            "concept": (self.separator or ",").join(self.concepts),
            "separator": self.separator,
            "prompts": " | ".join(self.prompts),
            "erase_from": self.erase_from,
            **self._anchor_metadata(),
            **self.objective.metadata(),
            "preserve": " | ".join(self.preserve),
            "preserve_source": self.preserve_source,
            "start_guidance": getattr(sampler.guider, "scale", 1.0),
            "ddim_steps": self.pool.num_steps,
            "step_range": list(self.step_range),
            "preserve_step_range": list(self.preserve_step_range),
            "iterations": self.global_step if self._trainer is not None else 0,
            "base_ckpt": str(self._base_weights),
            "adversary": "" if self.adversary is None else self.adversary.attack.name,
            "network": type(getattr(net, "unet", net)).__name__,
        }

    def _anchor_metadata(self) -> dict[str, Any]:
        if self.anchor_prompts is None:
            return {}
        return {"anchor": self.anchor, "anchor_prompts": " | ".join(self.anchor_prompts)}

    @torch.no_grad()
    def log_images(self, batch: Any, n: int = 8) -> dict[str, torch.Tensor]:
        """Samples of the concept prompts (and preserve prompts), seeds 0..n-1."""
        prompts = [(self.prompts + self.preserve)[i % len(self.prompts + self.preserve)] for i in range(n)]
        return {
            "samples": self.generate(
                prompts, seeds=range(n), num_steps=self.log_num_steps, guidance_scale=self.log_guidance_scale
            )
        }
