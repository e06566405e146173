"""Step-wise gradient checkpointing through a whole sampling trajectory.

To differentiate a loss on the final sample x_N of an N-step sampler with respect to
parameters used at every step (here the mask logits λ) without keeping N steps of
activations alive:

1. run x_{i+1} = step(i, x_i) for i = 0 .. N-1 under ``torch.no_grad``, keeping each x_i;
2. evaluate L(x_N) with autograd and get g_N = dL/dx_N;
3. for i = N-1 .. 0: recompute x_{i+1} = step(i, x_i) from x_i (requiring grad) with
   autograd, backpropagate ``g_{i+1}`` through that one step — which accumulates that
   step's contribution into λ.grad — and take g_i = dL/dx_i = x_i.grad.

By the chain rule, dL/dλ = Σ_i (∂x_{i+1}/∂λ)^T g_{i+1}, exactly what backpropagation
through the whole trajectory computes, only summed in another order. Only one step's
graph is alive at a time, so activation memory does not grow with N (the N + 1 latents
kept are (B, C, H, W) each: 64 KB per SD image, negligible).

``step(i, x)`` must be a deterministic function of (i, x) and the parameters: every
random choice of step i (the mask sample, sampler noise) must be drawn from a seed fixed
for that step, so the recomputation sees exactly what the forward pass saw. Samplers whose
step reads the previous steps' outputs (multistep DPM++ 2M) are not pure in x_i and are
not supported; Euler, Euler-ancestral, Heun and DDIM are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["StepFn", "run_trajectory", "checkpointed_trajectory_backward"]

StepFn = Callable[[int, torch.Tensor], torch.Tensor]  # (i, x_i) -> x_{i+1}
LossFn = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]


@torch.no_grad()
def run_trajectory(step: StepFn, x: torch.Tensor, num_steps: int) -> list[torch.Tensor]:
    """[x_0, x_1, ..., x_N] without autograd; x: (B, C, H, W)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    xs = [x]
    for i in range(num_steps):
        xs.append(step(i, xs[-1]))
    return xs


def checkpointed_trajectory_backward(
    step: StepFn, x0: torch.Tensor, num_steps: int, loss_fn: LossFn
) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
    """Run the trajectory, then accumulate dL(x_N)/dθ into ``.grad`` of every parameter θ
    the steps (or the loss) use, one step at a time.

    ``loss_fn(x_N)`` returns a scalar loss or ``(loss, aux)``. Returns the detached loss,
    ``aux`` and x_N (detached). ``.grad`` is accumulated into, never zeroed: zero it first.
    """
    xs = run_trajectory(step, x0, num_steps)
    x_final = xs[-1].detach()
    x_n = x_final.clone().requires_grad_(True)
    with torch.enable_grad():
        out = loss_fn(x_n)
        loss, aux = out if isinstance(out, tuple) else (out, {})
        loss.backward()
    grad = x_n.grad
    del x_n
    for i in reversed(range(num_steps)):
        if grad is None:  # nothing upstream of x_{i+1} reaches the loss
            break
        x_i = xs[i].detach().requires_grad_(i > 0)  # x_0 is the fixed initial noise
        with torch.enable_grad():
            x_next = step(i, x_i)
        if not x_next.requires_grad:
            break
        torch.autograd.backward(x_next, grad_tensors=grad)
        grad = x_i.grad if i > 0 else None
        xs[i + 1] = None  # the latent is not needed any more
        del x_next, x_i
    return loss.detach(), aux, x_final
