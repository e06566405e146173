"""Attacks on erased models, each a config-built component under one contract (`base.Attack`):
paraphrases, UnlearnDiffAtk, P4D, Ring-A-Bell, concept inversion; the attack success rate before and
after (`asr`); detectors."""

from unlearn.attacks.base import AdversarialPrompt, Attack, AttackTarget
from unlearn.attacks.inversion import ConceptInversion
from unlearn.attacks.p4d import P4D
from unlearn.attacks.paraphrase import Paraphrases
from unlearn.attacks.ring_a_bell import RingABell
from unlearn.attacks.tokens import PLACEHOLDER, InjectedTokens, TokenInjection, text_encoders, with_placeholders
from unlearn.attacks.unlearndiffatk import UnlearnDiffAtk

__all__ = [
    "AdversarialPrompt",
    "Attack",
    "AttackTarget",
    "ConceptInversion",
    "InjectedTokens",
    "P4D",
    "PLACEHOLDER",
    "Paraphrases",
    "RingABell",
    "TokenInjection",
    "UnlearnDiffAtk",
    "text_encoders",
    "with_placeholders",
]
