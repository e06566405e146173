"""`MaskManager`: builds mask hookers from config, registers them all, removes them all.

It is the only way masks are put on a model::

    manager = MaskManager.from_configs(
        [{"target": "unlearn.hooks.LinearHooker", "params": {"module_regex": r"attn2\\.to_(k|v)$"}}],
        strategy="hard_discrete", init_value=3.0,
    ).register(engine.network)
    with manager.disabled():        # the original model, same weights, no second copy
        ...
    manager.remove()                # the model is bit-identical to before

Masks are keyed ``"<group>:<module name>"`` (e.g. ``"attn:unet.mid_block...attn2"``),
module names being relative to the model given to `register`. A manager is an
`nn.Module` (its λ are its parameters), so it moves with the LightningModule holding it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from unlearn.config import instantiate_from_config
from unlearn.hooks.base import MaskHooker

__all__ = ["MaskManager", "model_fingerprint", "HOOKER_GROUPS"]

# Hooker class of each group, used to rebuild saved masks.
HOOKER_GROUPS = {
    "linear": "unlearn.hooks.linear.LinearHooker",
    "attn": "unlearn.hooks.attention.AttentionHeadHooker",
    "ff": "unlearn.hooks.feedforward.FeedForwardHooker",
    "norm": "unlearn.hooks.norm.NormHooker",
}


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's class and parameter names and shapes (its architecture)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
    return h.hexdigest()[:16]


class MaskManager(nn.Module):
    """Several `MaskHooker` s driven as one: register, remove, disable, resample, read masks."""

    def __init__(self, hookers: Sequence[MaskHooker]):
        super().__init__()
        for h in hookers:
            if not isinstance(h, MaskHooker):
                raise ValueError(f"MaskManager: expected MaskHooker instances, got {type(h).__name__}")
        self.hookers = nn.ModuleList(hookers)
        self.model_class: str | None = None
        self.model_fingerprint: str | None = None

    @classmethod
    def from_configs(cls, configs: Sequence[dict], path: str = "hooker_configs", **defaults: Any) -> MaskManager:
        """Build hookers from ``target``/``params`` blocks; ``defaults`` (e.g. ``strategy``,
        ``init_value``) fill params a block does not set."""
        hookers = []
        for i, cfg in enumerate(configs):
            cfg = dict(cfg)
            params = {**defaults, **dict(cfg.get("params") or {})}
            hookers.append(instantiate_from_config({**cfg, "params": params}, _path=f"{path}[{i}]"))
        return cls(hookers)

    # ------------------------------------------------------------- registration
    @property
    def registered(self) -> bool:
        return any(h.registered for h in self.hookers)

    def register(self, model: nn.Module) -> MaskManager:
        """Register every hooker on ``model``; on any error nothing stays registered."""
        if not self.hookers:
            raise ValueError("MaskManager: no hookers to register (hooker_configs is empty)")
        seen: dict[str, int] = {}
        try:
            for i, hooker in enumerate(self.hookers):
                for name in hooker.register(model):
                    key = f"{hooker.group}:{name}"
                    if key in seen:
                        raise ValueError(
                            f"module {name!r} is selected by hookers {seen[key]} and {i} of group "
                            f"{hooker.group!r}; make their module_regex / exclude_regex disjoint"
                        )
                    seen[key] = i
        except Exception:
            self.remove()
            raise
        self.model_class = type(model).__name__
        self.model_fingerprint = model_fingerprint(model)
        return self

    def remove(self) -> None:
        """Remove every hook (last registered first); λ are kept."""
        for hooker in reversed(self.hookers):
            hooker.remove()

    @contextlib.contextmanager
    def disabled(self) -> Iterator[MaskManager]:
        """Run the model as if unmasked (hooks stay registered but pass through)."""
        before = [h.enabled for h in self.hookers]
        for h in self.hookers:
            h.enabled = False
        try:
            yield self
        finally:
            for h, state in zip(self.hookers, before):
                h.enabled = state

    # -------------------------------------------------------------------- masks
    def resample(self, generator: torch.Generator | None = None) -> None:
        """Draw new noise for stochastic masks; the masks are then fixed until the next call."""
        for h in self.hookers:
            h.resample(generator)

    @torch.no_grad()
    def cap_off_share(self, off_ratio: float) -> float:
        """Let at most ``off_ratio`` of all units be off in the ``binary`` strategy's forward.

        Sets every hooker's threshold τ to min(0, the (k+1)-th lowest λ) with k =
        round(off_ratio · units), so exactly the units global binarization at ``off_ratio``
        would switch off (or fewer, while fewer than k have λ <= 0) are off: training sees
        the masks it will ship. Call it whenever λ changed (once per optimizer step).
        Returns τ.
        """
        if not 0.0 <= off_ratio < 1.0:
            raise ValueError(f"off_ratio: expected a share in [0, 1), got {off_ratio}")
        if any(h.strategy.name != "binary" for h in self.hookers):
            raise ValueError(f"an off-share cap needs strategy 'binary' on every hooker, got {self.strategies()}")
        flat = torch.cat([lam.detach().float().flatten() for lam in self.masks().values()])
        k = min(round(off_ratio * flat.numel()), flat.numel() - 1)
        kth = torch.kthvalue(flat.cpu(), k + 1).values  # the lowest λ that must stay on
        tau = min(0.0, float(torch.nextafter(kth, torch.tensor(float("-inf")))))
        for h in self.hookers:
            h.strategy.threshold = tau
        return tau

    def off_budget(self) -> float | None:
        """The ``max_off_share`` of the hookers' binary strategies (one value for all), or None."""
        budgets = {getattr(h.strategy, "max_off_share", None) for h in self.hookers}
        if budgets == {None}:
            return None
        if len(budgets) > 1:
            raise ValueError(f"strategy: every hooker needs the same max_off_share, got {sorted(map(str, budgets))}")
        return budgets.pop()

    def apply_off_budget(self) -> float | None:
        """`cap_off_share` at the strategies' ``max_off_share`` (call it whenever λ changed);
        returns τ, or None without a budget."""
        budget = self.off_budget()
        return None if budget is None else self.cap_off_share(budget)

    def masks(self) -> dict[str, nn.Parameter]:
        """{"group:module": λ} over every hooker."""
        return {f"{h.group}:{name}": lam for h in self.hookers for name, lam in h.masks().items()}

    def mask_values(self, sample: bool = False) -> dict[str, torch.Tensor]:
        """{"group:module": m}; deterministic masks unless ``sample``."""
        return {f"{h.group}:{name}": m for h in self.hookers for name, m in h.mask_values(sample).items()}

    def groups(self) -> dict[str, list[nn.Parameter]]:
        """{group: [λ, ...]} for per-group learning rates."""
        out: dict[str, list[nn.Parameter]] = {}
        for h in self.hookers:
            out.setdefault(h.group, []).extend(h.lambdas.values())
        return out

    def num_units(self) -> int:
        return sum(lam.numel() for lam in self.masks().values())

    def expected_off_share(self) -> torch.Tensor:
        """Mean over all masked units of each unit's expected share of being off (a scalar)."""
        return torch.cat([h.off_probability() for h in self.hookers]).mean()

    def strategies(self) -> list[str]:
        return sorted({h.strategy.name for h in self.hookers})

    def describe(self) -> dict[str, Any]:
        """{group: {"hooker": class path, "strategy": name, "modules": [...]}} (JSON-friendly)."""
        out: dict[str, Any] = {}
        for h in self.hookers:
            entry = out.setdefault(
                h.group,
                {"hooker": f"{type(h).__module__}.{type(h).__qualname__}", "strategy": h.strategy.name, "modules": []},
            )
            entry["modules"].extend(h.names())
        return out

    def extra_repr(self) -> str:
        return json.dumps({g: len(v["modules"]) for g, v in self.describe().items()})
