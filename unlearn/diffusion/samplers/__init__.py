"""Samplers, one per file; all share the `Sampler` contract of `base`."""

from .base import Sampler, default_noise_sampler, to_d
from .ddim import DDIMSampler
from .dpmpp_2m import DPMPP2MSampler
from .euler import EulerAncestralSampler, EulerSampler
from .few_step import FewStepSampler
from .heun import HeunSampler

__all__ = [
    "Sampler",
    "EulerSampler",
    "EulerAncestralSampler",
    "HeunSampler",
    "DPMPP2MSampler",
    "DDIMSampler",
    "FewStepSampler",
    "default_noise_sampler",
    "to_d",
]
