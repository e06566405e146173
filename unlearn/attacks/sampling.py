"""Sampling prompts that carry adversarial tokens, batched across prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from unlearn.attacks.tokens import InjectedTokens, batched_tokens, injected

__all__ = ["sample_prompts"]


@torch.no_grad()
def sample_prompts(
    model, texts: Sequence[str], tokens: Sequence[InjectedTokens | None], seeds: Sequence[int], batch_size: int = 64
) -> torch.Tensor:
    """Images (P, S, 3, H, W) of every prompt (with its injected tokens) on every seed, in batches of
    ``batch_size`` images across prompts (an image depends on its prompt and seed only)."""
    jobs = [(p, s) for p in range(len(texts)) for s in seeds]
    images = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="sampling", unit="batch", leave=False):
        chunk = jobs[start : start + batch_size]
        with injected(model.conditioner, batched_tokens([tokens[p] for p, _ in chunk])):
            images.append(model.generate([texts[p] for p, _ in chunk], seeds=[s for _, s in chunk]).cpu())
    return torch.cat(images).reshape(len(texts), len(seeds), *images[0].shape[1:])
