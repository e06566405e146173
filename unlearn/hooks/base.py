"""The mask-hooker contract: learnable per-unit masks on the outputs of selected modules.

A hooker owns one logit vector λ (fp32, shape (units,)) per target module and applies the
mask m = strategy(λ) to that module's output units (Linear out-features, attention heads,
feed-forward hidden channels, normalization channels). It is built from config with a
module-name filter, and registered on / removed from a model through hooks that the model
itself provides (``register_forward_hook``, ``Attention.set_processor``); nothing is
monkeypatched, and after `remove` the model computes exactly what it computed before.

One call shape for every hooker::

    hooker.register(model)            # select modules, create λ, attach hooks
    hooker.masks()                    # {module name: λ}
    hooker.mask_values(sample=False)  # {module name: m}
    hooker.remove()                   # detach every hook; λ are kept

`unlearn.hooks.manager.MaskManager` builds and drives several hookers at once; use it
rather than hookers directly.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from unlearn.hooks.strategies import MaskStrategy, build_strategy

__all__ = ["MaskHooker", "param_key", "module_name"]

_U_EPS = 1e-6  # u is drawn in [eps, 1 - eps] so log u and log(1 - u) stay finite


def param_key(name: str) -> str:
    """A module name as a parameter key (parameter names may not contain dots)."""
    return name.replace(".", ":")


def module_name(key: str) -> str:
    return key.replace(":", ".")


class MaskHooker(nn.Module, ABC):
    """Masks on one kind of unit; subclasses say which modules and units, and how to hook them.

    Args:
        module_regex: modules whose dotted name (relative to the model given to
            `register`) matches this pattern (``re.search``) are masked.
        exclude_regex: modules matching this pattern are left out.
        module_names: an explicit list of module names instead of the patterns.
        strategy: a strategy name (``sigmoid``, ``hard_discrete``, ``binary``,
            ``continues2binary``, ``fixed``), a ``target``/``params`` block or a
            `MaskStrategy`.
        init_value: initial λ (3.0: σ(3) ≈ 0.95, every unit almost fully on).
        masked_noise_std: if > 0, units are replaced in proportion to their closed share by
            Gaussian noise: h m + std ε (1 - m). ε comes from torch's global RNG, which the
            trajectory code seeds per step so a recomputed step sees the same ε.
    """

    group: ClassVar[str] = ""  # "linear", "attn", "ff" or "norm": the learning-rate group
    unit_name: ClassVar[str] = "unit"

    def __init__(
        self,
        module_regex: str = ".*",
        exclude_regex: str | None = None,
        module_names: list[str] | None = None,
        strategy: str | dict | MaskStrategy = "sigmoid",
        init_value: float = 3.0,
        masked_noise_std: float = 0.0,
    ):
        super().__init__()
        try:
            self.include = re.compile(module_regex)
            self.exclude = re.compile(exclude_regex) if exclude_regex else None
        except re.error as err:
            raise ValueError(f"{type(self).__name__}: invalid module_regex/exclude_regex: {err}") from err
        if masked_noise_std < 0:
            raise ValueError(f"{type(self).__name__}: masked_noise_std must be >= 0, got {masked_noise_std}")
        self.module_names = list(module_names) if module_names is not None else None
        self.strategy = build_strategy(strategy, f"{type(self).__name__}.strategy")
        self.init_value = float(init_value)
        self.masked_noise_std = float(masked_noise_std)
        self.lambdas = nn.ParameterDict()
        self.enabled = True
        self._handles: list[Any] = []
        self._u: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------- subclass API
    @abstractmethod
    def is_target(self, module: nn.Module) -> bool:
        """Whether ``module`` is a kind of module this hooker masks."""

    @abstractmethod
    def num_units(self, module: nn.Module) -> int:
        """Number of maskable units of ``module``."""

    @abstractmethod
    def attach(self, name: str, module: nn.Module) -> Any:
        """Hook ``module``; returns a handle whose ``remove()`` undoes exactly that."""

    # ---------------------------------------------------------------- selection
    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(name, module) of every target, in ``named_modules`` order."""
        if self.module_names is not None:
            out = []
            for name in self.module_names:
                try:
                    module = model.get_submodule(name)
                except AttributeError:
                    raise ValueError(
                        f"{type(self).__name__}: module {name!r} does not exist in this {type(model).__name__}"
                    ) from None
                if not self.is_target(module):
                    raise ValueError(
                        f"{type(self).__name__}: module {name!r} is a {type(module).__name__}, not a module "
                        f"this hooker masks"
                    )
                out.append((name, module))
            return out
        return [
            (name, module)
            for name, module in model.named_modules()
            if name
            and self.is_target(module)
            and self.include.search(name)
            and not (self.exclude and self.exclude.search(name))
        ]

    # ------------------------------------------------------------- registration
    @property
    def registered(self) -> bool:
        return bool(self._handles)

    def register(self, model: nn.Module) -> list[str]:
        """Create λ for every selected module (kept if they already exist) and hook them."""
        if self.registered:
            raise RuntimeError(f"{type(self).__name__} is already registered; call remove() first")
        targets = self.select(model)
        if not targets:
            raise ValueError(
                f"{type(self).__name__}: module_regex {self.include.pattern!r} matches no module to mask in "
                f"{type(model).__name__}"
            )
        for name, module in targets:
            key, n = param_key(name), self.num_units(module)
            if key in self.lambdas:
                if self.lambdas[key].shape != (n,):
                    raise ValueError(
                        f"{type(self).__name__}: module {name!r} has {n} {self.unit_name}s but its mask has "
                        f"{tuple(self.lambdas[key].shape)}"
                    )
            else:
                lam = torch.full((n,), self.init_value, dtype=torch.float32, device=_device_of(module))
                self.lambdas[key] = nn.Parameter(lam, requires_grad=self.strategy.trainable)
        try:
            for name, module in targets:
                self._handles.append(self.attach(name, module))
        except Exception:
            self.remove()
            raise
        return [name for name, _ in targets]

    def remove(self) -> None:
        """Detach every hook in reverse order; λ are kept."""
        while self._handles:
            self._handles.pop().remove()

    # -------------------------------------------------------------------- masks
    def names(self) -> list[str]:
        return [module_name(k) for k in self.lambdas.keys()]

    def masks(self) -> dict[str, nn.Parameter]:
        """{module name: λ (fp32 Parameter of shape (units,))}."""
        return {module_name(k): p for k, p in self.lambdas.items()}

    def resample(self, generator: torch.Generator | None = None) -> None:
        """Draw the noise u ~ U(0, 1) of a stochastic strategy, once per trajectory step."""
        self._u = {}
        if not self.strategy.stochastic:
            return
        for key, lam in self.lambdas.items():
            u = torch.rand(lam.shape, generator=generator, dtype=torch.float32)
            self._u[key] = (u * (1 - 2 * _U_EPS) + _U_EPS).to(lam.device)

    def mask(self, name: str, sample: bool | None = None) -> torch.Tensor:
        """The mask of module ``name``: a sample while training (or if ``sample``), else deterministic."""
        key = param_key(name)
        lam = self.lambdas[key]
        sample = self.training if sample is None else sample
        if sample:
            return self.strategy.sample(lam, self._u.get(key))
        return self.strategy.deterministic(lam)

    def mask_values(self, sample: bool = False) -> dict[str, torch.Tensor]:
        """{module name: m}; deterministic masks unless ``sample``."""
        return {name: self.mask(name, sample) for name in self.names()}

    def off_probability(self) -> torch.Tensor:
        """Every unit's expected share of being switched off, concatenated: (total units,)."""
        return torch.cat([self.strategy.off_probability(lam) for lam in self.lambdas.values()])

    # -------------------------------------------------------------- application
    def apply_mask(self, h: torch.Tensor, name: str, dim: int) -> torch.Tensor:
        """h with its units along ``dim`` scaled by the mask (m cast to h's dtype)."""
        m = self.mask(name).to(device=h.device, dtype=h.dtype)
        shape = [1] * h.ndim
        shape[dim] = m.shape[0]
        m = m.view(shape)
        out = h * m
        if self.masked_noise_std > 0:
            out = out + self.masked_noise_std * torch.randn_like(h) * (1 - m)
        return out

    def output_hook(self, name: str, dim: int) -> Callable:
        """A forward hook masking a module's output units along ``dim`` (a no-op when disabled)."""

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not self.enabled:
                return None
            return self.apply_mask(output, name, dim)

        return hook

    # ------------------------------------------------------------ dtype policy
    def _apply(self, fn, recurse=True):
        # λ stay fp32 whatever the model is cast to: follow device moves, ignore dtype casts.
        def keep_fp32(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if t.is_floating_point() and out.dtype != t.dtype:
                return t.to(device=out.device)
            return out

        return super()._apply(keep_fp32, recurse)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}, modules={len(self.lambdas)}, registered={self.registered}"


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
