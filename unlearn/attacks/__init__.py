"""Attacks on erased models, each a config-built component under one contract (`base.Attack`):
paraphrases, UnlearnDiffAtk; the attack success rate before and after (`asr`); detectors."""

from unlearn.attacks.base import AdversarialPrompt, Attack, AttackTarget
from unlearn.attacks.paraphrase import Paraphrases
from unlearn.attacks.tokens import PLACEHOLDER, InjectedTokens, TokenInjection, text_encoders, with_placeholders
from unlearn.attacks.unlearndiffatk import UnlearnDiffAtk

__all__ = [
    "AdversarialPrompt",
    "Attack",
    "AttackTarget",
    "InjectedTokens",
    "PLACEHOLDER",
    "Paraphrases",
    "TokenInjection",
    "UnlearnDiffAtk",
    "text_encoders",
    "with_placeholders",
]
