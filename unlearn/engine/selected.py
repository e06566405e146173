"""`SelectedTensors`: the part of an engine that changes selected tensors of the model.

Shared by the fine-tuning engine (`unlearn.engine.finetune`) and the closed-form editors' engine
(`unlearn.engine.closed_form`): the selection (a `unlearn.selection.ParameterSelector`), the
frozen originals of the selected tensors (`FrozenCopy`: no second copy of the model),
``as_original`` and the ``erased.safetensors`` export.

The selected tensors live in the network (the ESD train methods: diffusers UNet or transformer
tensors) or in the conditioner (`unlearn.selection.TextEncoder`, AdvUnlearn's module: a CLIP text
encoder); `unlearn.selection.SelectionSite` says which, and under which names they are exported.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearn.config import ConfigError
from unlearn.engine.export import save_erased_weights
from unlearn.engine.teacher import FrozenCopy
from unlearn.selection import ParameterSelector, SelectionSite

log = logging.getLogger(__name__)

__all__ = ["SelectedTensors"]

OWNERS: tuple[str, ...] = ("network", "conditioner")


class SelectedTensors:
    """Mixed into `ErasureEngine` subclasses. After `select_tensors`, ``site`` says where the
    selected tensors live, ``selected`` holds their names inside ``site.root`` (diffusers UNet names,
    or the CLIP text model's), ``teacher`` their original values (`FrozenCopy` of the module that
    owns them, saved in checkpoints), and `export` writes ``erased.safetensors`` from them with the
    subclass's ``erased_metadata()`` (with ``export_diffusers``, also ``site.root`` as a pipeline folder).
    """

    export_name = "erased.safetensors"
    export_diffusers = False

    def select_tensors(self, selector: ParameterSelector, trainable: bool, owners: Sequence[str] = OWNERS) -> int:
        """Select ``selector``'s tensors (``requires_grad`` when ``trainable``), keep their originals;
        return how many numbers they hold. Tensors outside ``owners`` are a ConfigError."""
        site = selector.site(self.network, self.conditioner)
        if site.owner not in owners:
            raise ConfigError(
                f"model.params.selector_config: {selector.name} selects tensors of the {site.owner}; "
                f"{type(self).__name__} changes tensors of the {' or '.join(owners)} only"
            )
        self.site: SelectionSite = site
        self.selected = selector(site.root)
        owner = self._owner
        params = dict(owner.named_parameters())
        if trainable:
            for name in self.selected:
                params[site.prefix + name].requires_grad_(True)
            if site.embedder is not None:
                # The conditioner runs embedders that are not trainable under no_grad; this one trains now.
                site.embedder.is_trainable = True
        self.teacher = FrozenCopy(owner, [site.prefix + n for n in self.selected])
        self._prefix = site.prefix
        return sum(params[site.prefix + n].numel() for n in self.selected)

    @property
    def _owner(self) -> nn.Module:
        return getattr(self, self.site.owner)

    @property
    def conditioner_selected(self) -> bool:
        """Whether the selected tensors are the conditioner's (a text encoder): the network is then
        the original, and only the prompts' conditions differ from the original model's."""
        return self.site.owner == "conditioner"

    def erased_state_dict(self) -> dict[str, torch.Tensor]:
        """The selected parameters under their export names (detached, on the CPU): diffusers UNet
        names, or ``text_encoder.`` and the text model's own names."""
        params = dict(self._owner.named_parameters())
        return {
            self.site.export_prefix + n: params[self._prefix + n].detach().cpu().contiguous() for n in self.selected
        }

    def erased_metadata(self) -> dict[str, Any]:
        """String-able facts written into the export (method, concept, settings)."""
        raise NotImplementedError

    def check_export_diffusers(self) -> None:
        """With ``export_diffusers``, the selected root must be a diffusers/transformers model."""
        if self.export_diffusers and not hasattr(self.site.root, "save_pretrained"):
            raise ConfigError(
                f"model.params.export_diffusers: the {self.site.owner}'s {type(self.site.root).__name__} "
                "has no save_pretrained (not a diffusers UNet, transformer or transformers text encoder)"
            )

    def export(self, out_dir: str | Path) -> Path:
        """Write ``erased.safetensors`` (and with ``export_diffusers`` ``unet/``, ``transformer/`` or
        ``text_encoder/``) to ``out_dir``."""
        out_dir = Path(out_dir)
        path = save_erased_weights(out_dir / self.export_name, self.erased_state_dict(), self.erased_metadata())
        log.info("wrote %s (%d tensors)", path, len(self.selected))
        if self.export_diffusers:  # <run>/unet, transformer or text_encoder, as in a diffusers pipeline folder
            self.site.root.save_pretrained(str(out_dir / self.site.folder))
            log.info("wrote %s", out_dir / self.site.folder)
        return path

    @contextlib.contextmanager
    def as_original(self) -> Iterator[None]:
        """The original values of the selected parameters, swapped in (and back out)."""
        params = dict(self._owner.named_parameters())
        changed = {name: params[name].detach().clone() for name in self.teacher.names}
        with torch.no_grad():
            for name, value in self.teacher.tensors().items():
                params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in changed.items():
                    params[name].copy_(value)

    def original_conditioner(self) -> contextlib.AbstractContextManager:
        """The conditioner as it was before erasure: the original text encoder swapped in when it is
        the selection (call it before any forward whose graph holds the trained tensors: the swap
        writes into them); nothing to do otherwise."""
        return self.as_original() if self.conditioner_selected else contextlib.nullcontext()
