"""The frozen teacher of a partial fine-tune, without a second copy of the network.

Erasure methods that fine-tune a subset of the weights (ESD's ``train_method`` sets) need
the original model beside the trained one. Only the selected parameters ever differ, so
`FrozenCopy` keeps the original values of just those (as buffers, so they move with the
module, follow its dtype and are saved in checkpoints for resuming) and runs the *same*
network with them swapped in through ``torch.func.functional_call``. For ESD-x on SD1.5
that is 44M of 860M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["FrozenCopy"]


def _key(name: str) -> str:
    # Buffer names cannot hold dots; parameter names never hold "-".
    return name.replace(".", "-")


class FrozenCopy(nn.Module):
    """Original values of ``names`` (parameter names inside ``network``), frozen.

    Call ``frozen(network, *args)`` to run ``network(*args)`` as the original model: the
    selected parameters are replaced by the stored values, everything else is shared.
    """

    def __init__(self, network: nn.Module, names: Sequence[str]):
        super().__init__()
        params = dict(network.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"FrozenCopy: {len(missing)} names are not parameters of the network, e.g. {missing[:3]}")
        self.names = list(names)
        for name in self.names:
            self.register_buffer(_key(name), params[name].detach().clone())

    def tensors(self) -> dict[str, torch.Tensor]:
        """{parameter name inside the network: original value}."""
        return {name: getattr(self, _key(name)) for name in self.names}

    def forward(self, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(network, self.tensors(), args, kwargs, strict=False)
