"""Attack success rate (ASR): the share of images that show the concept, before and after an attack.

Every prompt is sampled on the same held-out ``seeds`` (image k from seed k, never the seeds the
attack searched with) as it was written (before) and as the attack rewrote it (after); the
detector judges each image. ASR is reported in percent with its sample size and 95% Wilson
interval, overall and per prompt; the found prompts are kept as text and as tokens
(``adversarial.safetensors``: hard token ids, or soft vectors per text encoder) for reuse.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unlearn.attacks.base import AdversarialPrompt, Attack, AttackTarget
from unlearn.attacks.sampling import sample_prompts
from unlearn.attacks.tokens import InjectedTokens
from unlearn.eval.metrics import wilson_interval

log = logging.getLogger(__name__)

__all__ = ["rate", "run_attack", "save_adversarial", "load_adversarial", "ADVERSARIAL_FORMAT"]

ADVERSARIAL_FORMAT = "unlearn-adversarial-prompts/1"


def rate(hits: Sequence[bool]) -> dict[str, Any]:
    """{"asr": percent, "k": hits, "n": images, "ci95": [lo, hi]} of a list of detections."""
    k, n = int(sum(bool(h) for h in hits)), len(hits)
    lo, hi = wilson_interval(k, n)
    return {"asr": 100.0 * k / n if n else float("nan"), "k": k, "n": n, "ci95": [lo, hi]}


def _detect(detector, images: torch.Tensor) -> torch.Tensor:
    """(P, S, ...) images -> (P, S) bool."""
    return detector(images.flatten(0, 1)).reshape(images.shape[:2]).bool()


def run_attack(
    attack: Attack, target: AttackTarget, seeds: Sequence[int], out_dir: str | Path | None = None, batch_size: int = 64
) -> dict[str, Any]:
    """Attack every prompt of ``target``, then measure the ASR before and after on ``seeds``."""
    attack.check(target)
    if set(seeds) & set(getattr(attack, "check_seeds", [])):
        raise ValueError(f"seeds: the attack searches with seeds {attack.check_seeds}; measure on others")
    model = target.model
    before_images = sample_prompts(model, target.prompts, [None] * len(target.prompts), seeds, batch_size)
    before = _detect(target.detector, before_images)  # (P, S)
    start = time.perf_counter()
    found = attack(target)
    attack_s = time.perf_counter() - start
    after_images = sample_prompts(model, [a.text for a in found], [a.tokens for a in found], seeds, batch_size)
    after = _detect(target.detector, after_images)
    result = {
        "attack": attack.name,
        "concept": target.concept,
        "seeds": list(seeds),
        "before": rate(before.flatten().tolist()),
        "after": rate(after.flatten().tolist()),
        "attack_seconds": attack_s,
        "attack_steps": sum(a.steps for a in found),
        "prompts": [
            {
                "source": a.source,
                "adversarial": a.text,
                "readable": a.readable,
                "steps": a.steps,
                "seconds": a.seconds,
                "detected_during_search": a.detected_during_search,
                "hits_before": before[i].tolist(),
                "hits_after": after[i].tolist(),
                "before": rate(before[i].tolist()),
                "after": rate(after[i].tolist()),
                **({"extra": a.extra} if a.extra else {}),
            }
            for i, a in enumerate(found)
        ],
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        save_adversarial(found, out_dir / "adversarial.safetensors", target.concept, attack.name)
        _save_grid(before_images, after_images, out_dir / "grid.png")
    log.info(
        "%s on %r: ASR %.1f%% -> %.1f%% (%d images; 95%% CI %.1f-%.1f -> %.1f-%.1f)",
        attack.name,
        target.concept,
        result["before"]["asr"],
        result["after"]["asr"],
        result["after"]["n"],
        *result["before"]["ci95"],
        *result["after"]["ci95"],
    )
    return result


def _save_grid(before: torch.Tensor, after: torch.Tensor, path: Path) -> None:
    """One row per prompt: its images before the attack, then after (seeds left to right)."""
    from unlearn.callbacks.image_logger import save_grid

    rows = torch.cat([before, after], dim=1)  # (P, 2S, 3, H, W)
    save_grid(rows.flatten(0, 1), path, nrow=rows.shape[1])


def save_adversarial(found: Sequence[AdversarialPrompt], path: str | Path, concept: str, attack: str) -> Path:
    """The found prompts for reuse: tensors ``<i>.ids`` (hard tokens) or ``<i>.encoder<j>`` (soft
    vectors), and the texts in the metadata."""
    from unlearn.atomic import save_safetensors

    tensors: dict[str, torch.Tensor] = {}
    for i, a in enumerate(found):
        if a.tokens is not None and a.tokens.ids is not None:
            tensors[f"{i}.ids"] = torch.tensor(a.tokens.ids, dtype=torch.int64)
        elif a.tokens is not None:
            for j, v in a.tokens.vectors.items():
                tensors[f"{i}.encoder{j}"] = v.detach().float().cpu()
    prompts = [{"source": a.source, "text": a.text, "readable": a.readable} for a in found]
    meta = {"format": ADVERSARIAL_FORMAT, "concept": concept, "attack": attack, "prompts": json.dumps(prompts)}
    if not tensors:  # safetensors needs a tensor; a text-only attack stores its prompts in the metadata
        tensors["none"] = torch.zeros(0)
    return save_safetensors(tensors, path, meta, what="adversarial prompts")


def load_adversarial(path: str | Path) -> list[AdversarialPrompt]:
    """The prompts `save_adversarial` wrote, ready for ``sample_prompts``."""
    from unlearn.checkpoint import read_safetensors

    tensors, meta = read_safetensors(path, "adversarial prompts")
    if meta.get("format") != ADVERSARIAL_FORMAT:
        raise ValueError(f"adversarial prompts: {path} is not a {ADVERSARIAL_FORMAT} file")
    out = []
    for i, p in enumerate(json.loads(meta["prompts"])):
        tokens = None
        if f"{i}.ids" in tensors:
            tokens = InjectedTokens(ids=tensors[f"{i}.ids"].tolist())
        else:
            vectors = {int(k.split("encoder")[1]): v for k, v in tensors.items() if k.startswith(f"{i}.encoder")}
            tokens = InjectedTokens(vectors=vectors) if vectors else None
        out.append(AdversarialPrompt(source=p["source"], text=p["text"], tokens=tokens, readable=p["readable"]))
    return out
