"""Model-independent diffusion math: schedules, parameterizations, denoisers, losses,
guiders and samplers, in the sigma-space convention x = x0 + sigma * eps (k-diffusion / sgm).
"""

from .denoiser import Denoiser, DiscreteDenoiser
from .discretization import Discretization, EDMDiscretization, LegacyDDPMDiscretization
from .guiders import Guider, IdentityGuider, NegatedConceptCFG, VanillaCFG
from .loss import StandardDiffusionLoss
from .loss_weighting import EDMWeighting, EpsWeighting, LossWeighting, UnitWeighting, VWeighting
from .samplers import (
    DDIMSampler,
    DPMPP2MSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
    Sampler,
)
from .scalings import EDMScaling, EpsScaling, Scaling, VScaling, VScalingWithEDMcNoise
from .sigma_sampling import DiscreteSampling, EDMSampling, SigmaSampler

__all__ = [
    "Denoiser",
    "DiscreteDenoiser",
    "Discretization",
    "EDMDiscretization",
    "LegacyDDPMDiscretization",
    "Guider",
    "IdentityGuider",
    "NegatedConceptCFG",
    "VanillaCFG",
    "StandardDiffusionLoss",
    "LossWeighting",
    "UnitWeighting",
    "EDMWeighting",
    "VWeighting",
    "EpsWeighting",
    "Sampler",
    "EulerSampler",
    "EulerAncestralSampler",
    "HeunSampler",
    "DPMPP2MSampler",
    "DDIMSampler",
    "Scaling",
    "EpsScaling",
    "VScaling",
    "EDMScaling",
    "VScalingWithEDMcNoise",
    "SigmaSampler",
    "DiscreteSampling",
    "EDMSampling",
]
