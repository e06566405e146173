"""Model-independent diffusion math: schedules, parameterizations, denoisers, losses,
guiders and samplers, in the sigma-space convention x = x0 + sigma * eps (k-diffusion / sgm).
"""

from .denoiser import Denoiser, DiscreteDenoiser
from .discretization import Discretization, EDMDiscretization, FlowMatchDiscretization, LegacyDDPMDiscretization
from .guiders import Guider, IdentityGuider, NegatedConceptCFG, VanillaCFG
from .loss import FlowMatchingLoss, StandardDiffusionLoss
from .loss_weighting import (
    CosMapWeighting,
    EDMWeighting,
    EpsWeighting,
    LossWeighting,
    UnitWeighting,
    VWeighting,
)
from .samplers import (
    DDIMSampler,
    DPMPP2MSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
    Sampler,
)
from .scalings import EDMScaling, EpsScaling, FlowScaling, Scaling, VScaling, VScalingWithEDMcNoise
from .sigma_sampling import DiscreteSampling, EDMSampling, LogitNormalSampling, SigmaSampler, UniformSampling

__all__ = [
    "Denoiser",
    "DiscreteDenoiser",
    "Discretization",
    "EDMDiscretization",
    "LegacyDDPMDiscretization",
    "FlowMatchDiscretization",
    "Guider",
    "IdentityGuider",
    "NegatedConceptCFG",
    "VanillaCFG",
    "StandardDiffusionLoss",
    "FlowMatchingLoss",
    "LossWeighting",
    "UnitWeighting",
    "EDMWeighting",
    "VWeighting",
    "EpsWeighting",
    "CosMapWeighting",
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
    "FlowScaling",
    "SigmaSampler",
    "DiscreteSampling",
    "EDMSampling",
    "LogitNormalSampling",
    "UniformSampling",
]
