"""Which UNet parameters an erasure method fine-tunes: the ESD ``train_method`` sets.

ESD (Gandikota et al., ICCV 2023, Sec. 4 and the official ``train-scripts/train-esd.py``)
names its parameter sets by substrings of CompVis/LDM parameter names. Here they are
applied to **diffusers** ``UNet2DConditionModel`` names, so the selection (and the
exported ``erased.safetensors``) matches ``pipe.unet.state_dict()``:

==============  ======================================================================
method          parameters (diffusers names)
==============  ======================================================================
``xattn``       every cross-attention tensor: names containing ``attn2`` (ESD-x)
``noxattn``     everything except ``attn2``, the time embedding and the output layer (ESD-u)
``selfattn``    every self-attention tensor: names containing ``attn1``
``full``        every parameter
``notime``      everything except the time embedding and the output layer
``xlayer``      ``attn2`` of LDM ``output_blocks.6`` and ``.8`` only
``selflayer``   ``attn1`` of LDM ``input_blocks.4`` and ``.7`` only
``esd-x-strict``  cross-attention key and value projections only (``attn2.to_k``/``attn2.to_v``)
==============  ======================================================================

LDM → diffusers names used above:

* LDM ``time_embed.*`` is diffusers ``time_embedding.*`` (``linear_1``/``linear_2``).
  Per-resnet ``emb_layers`` (diffusers ``time_emb_proj``) are *not* the time embedding:
  the original code matches the substring ``time_embed``, which they do not contain.
* LDM ``out.*`` (final GroupNorm + conv) is diffusers ``conv_norm_out.*`` and ``conv_out.*``.
* LDM ``input_blocks.k`` (k >= 1) is level ``i, j = divmod(k - 1, L + 1)`` of the encoder
  with ``L = layers_per_block``: ``down_blocks.i.attentions.j`` (and ``resnets.j``) for
  ``j < L``, ``down_blocks.i.downsamplers.0`` for ``j == L``. ``input_blocks.0`` is ``conv_in``.
* LDM ``output_blocks.k`` is ``up_blocks.i.attentions.j`` with ``i, j = divmod(k, L + 1)``
  (decoder levels have ``L + 1`` layers).

So on SD1.x (``L = 2``) ``xlayer`` is ``up_blocks.2.attentions.0`` and
``up_blocks.2.attentions.2`` (the 640-channel decoder level), and ``selflayer`` is
``down_blocks.1.attentions.0`` and ``down_blocks.2.attentions.0``.

**Joint-attention transformers** (SD3's MMDiT, Flux; diffusers ``SD3Transformer2DModel`` /
``FluxTransformer2DModel`` names): text and image tokens attend jointly, and the text stream's
own projections are what the prompt enters the image through, as ``attn2`` in a UNet:

==============  ======================================================================
``xattn``       the text stream's attention projections ``attn.add_q_proj``,
                ``add_k_proj``, ``add_v_proj``, ``to_add_out`` (double-stream blocks only;
                Flux's single-stream blocks project both streams with the same tensors)
``esd-x-strict``  ``attn.add_k_proj`` / ``add_v_proj`` (the text-side keys and values)
``noxattn``     everything but those, the timestep/pooled-text embedder
                (``time_text_embed``) and the output layer (``norm_out``, ``proj_out``)
``notime``      everything but ``time_text_embed``, ``norm_out`` and ``proj_out``
``full``        every parameter
==============  ======================================================================

``selfattn``, ``xlayer`` and ``selflayer`` name UNet parts and are refused there. (The ESD Flux
fork's ``esd-x`` trains every attention Linear of both block kinds, image and text streams
alike: a larger set than this ``xattn``.)

The newer official scripts (``esd_sd.py``) call the sets ``esd-x``, ``esd-u``, ``esd-all``
and ``esd-x-strict``; the first three are accepted here as aliases of ``xattn``,
``noxattn`` and ``full``. (That script's ``esd-u`` takes only Linear/Conv weights, i.e.
it also trains ``time_embedding``/``conv_out`` but no norms; the alias follows the paper's
``noxattn`` instead.)
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable

from torch import nn

from unlearn.networks.base import diffusers_root

__all__ = [
    "ParameterSelector",
    "TrainMethod",
    "TRAIN_METHODS",
    "TRAIN_METHOD_ALIASES",
    "canonical_train_method",
    "select_parameters",
    "selection_root",
    "is_joint_attention",
    "JOINT_METHODS",
    "ldm_input_block",
    "ldm_output_block",
]

TRAIN_METHODS: tuple[str, ...] = (
    "xattn",
    "noxattn",
    "selfattn",
    "full",
    "notime",
    "xlayer",
    "selflayer",
    "esd-x-strict",
)
TRAIN_METHOD_ALIASES: dict[str, str] = {"esd-x": "xattn", "esd-u": "noxattn", "esd-all": "full"}

# LDM block indices of the layer-restricted methods (train-esd.py).
XLAYER_LDM_OUTPUT_BLOCKS: tuple[int, ...] = (6, 8)
SELFLAYER_LDM_INPUT_BLOCKS: tuple[int, ...] = (4, 7)

_TIME_EMBEDDING = ("time_embedding.",)  # LDM time_embed.
_OUTPUT_LAYER = ("conv_norm_out.", "conv_out.")  # LDM out.


def _has(part: str) -> Callable[[str], bool]:
    pattern = re.compile(rf"(^|\.){re.escape(part)}\.")
    return lambda name: pattern.search(name) is not None


_is_xattn = _has("attn2")
_is_selfattn = _has("attn1")
_is_xattn_kv = re.compile(r"(^|\.)attn2\.to_[kv]\.").search


def canonical_train_method(train_method: str) -> str:
    """The canonical name of ``train_method`` (aliases resolved); ValueError lists the valid names."""
    name = TRAIN_METHOD_ALIASES.get(train_method, train_method)
    if name not in TRAIN_METHODS:
        valid = list(TRAIN_METHODS) + [f"{a} (= {t})" for a, t in TRAIN_METHOD_ALIASES.items()]
        raise ValueError(f"train_method: unknown {train_method!r}; choose one of {', '.join(valid)}")
    return name


def _layers_per_block(unet: nn.Module, train_method: str) -> int:
    config = getattr(unet, "config", None)
    value = getattr(config, "layers_per_block", None) if config is not None else None
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(
                f"train_method {train_method!r}: LDM block indices are undefined for a UNet with "
                f"layers_per_block={list(value)} (not the same at every level)"
            )
        value = value[0]
    if not isinstance(value, int):
        raise ValueError(
            f"train_method {train_method!r} needs a diffusers UNet2DConditionModel "
            f"(config.layers_per_block) to map LDM block indices, got {type(unet).__name__}"
        )
    return value


def ldm_input_block(k: int, layers_per_block: int) -> str:
    """Diffusers prefix of the transformer in LDM ``input_blocks.k``: ``down_blocks.i.attentions.j.``."""
    if k < 1:
        raise ValueError(f"LDM input_blocks.{k} is conv_in and holds no attention")
    i, j = divmod(k - 1, layers_per_block + 1)
    if j == layers_per_block:
        raise ValueError(f"LDM input_blocks.{k} is a downsampler (down_blocks.{i}.downsamplers.0), not attention")
    return f"down_blocks.{i}.attentions.{j}."


def ldm_output_block(k: int, layers_per_block: int) -> str:
    """Diffusers prefix of the transformer in LDM ``output_blocks.k``: ``up_blocks.i.attentions.j.``."""
    i, j = divmod(k, layers_per_block + 1)
    return f"up_blocks.{i}.attentions.{j}."


def _predicate(unet: nn.Module, method: str) -> Callable[[str], bool]:
    if method == "full":
        return lambda name: True
    if method == "xattn":
        return _is_xattn
    if method == "selfattn":
        return _is_selfattn
    if method == "esd-x-strict":
        return lambda name: _is_xattn_kv(name) is not None
    if method == "noxattn":
        return lambda name: not (_is_xattn(name) or name.startswith(_TIME_EMBEDDING + _OUTPUT_LAYER))
    if method == "notime":
        return lambda name: not name.startswith(_TIME_EMBEDDING + _OUTPUT_LAYER)
    layers = _layers_per_block(unet, method)
    if method == "xlayer":
        blocks = tuple(ldm_output_block(k, layers) for k in XLAYER_LDM_OUTPUT_BLOCKS)
        return lambda name: name.startswith(blocks) and _is_xattn(name)
    if method == "selflayer":
        blocks = tuple(ldm_input_block(k, layers) for k in SELFLAYER_LDM_INPUT_BLOCKS)
        return lambda name: name.startswith(blocks) and _is_selfattn(name)
    raise AssertionError(method)  # unreachable: canonical_train_method validated it


# Joint-attention transformers (SD3's MMDiT, Flux): the text stream's own attention projections
# play the part of a UNet's cross-attention (attn2); single-stream blocks have none.
JOINT_METHODS: tuple[str, ...] = ("xattn", "noxattn", "full", "notime", "esd-x-strict")
_is_joint_xattn = re.compile(r"(^|\.)attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)\.").search
_is_joint_xattn_kv = re.compile(r"(^|\.)attn\.add_[kv]_proj\.").search
_JOINT_TIME_EMBEDDING = ("time_text_embed.",)
_JOINT_OUTPUT_LAYER = ("norm_out.", "proj_out.")


def is_joint_attention(root: nn.Module) -> bool:
    """Whether ``root`` is a joint-attention transformer (text-stream projections ``attn.add_k_proj``)."""
    return any(_is_joint_xattn_kv(name) for name, _ in root.named_parameters())


def _joint_predicate(method: str) -> Callable[[str], bool]:
    if method not in JOINT_METHODS:
        raise ValueError(
            f"train_method {method!r} is defined on UNets (attn1/attn2, LDM blocks); on a joint-attention "
            f"transformer choose one of {', '.join(JOINT_METHODS)}"
        )
    fixed = _JOINT_TIME_EMBEDDING + _JOINT_OUTPUT_LAYER
    if method == "full":
        return lambda name: True
    if method == "xattn":
        return lambda name: _is_joint_xattn(name) is not None
    if method == "esd-x-strict":
        return lambda name: _is_joint_xattn_kv(name) is not None
    if method == "noxattn":
        return lambda name: not (_is_joint_xattn(name) or name.startswith(fixed))
    return lambda name: not name.startswith(fixed)  # notime


def select_parameters(unet: nn.Module, train_method: str) -> list[str]:
    """Names (relative to ``unet``, in ``named_parameters`` order) that ``train_method`` trains.

    Works on any device, including ``meta``. A method that selects nothing in this
    architecture (e.g. ``xlayer`` on a UNet without LDM ``output_blocks.6``) is a
    ValueError, since training nothing is never what was meant.
    """
    method = canonical_train_method(train_method)
    keep = _joint_predicate(method) if is_joint_attention(unet) else _predicate(unet, method)
    names = [name for name, _ in unet.named_parameters() if keep(name)]
    if not names:
        raise ValueError(
            f"train_method {train_method!r} selects no parameters in this {type(unet).__name__} "
            f"(xlayer/selflayer need LDM output_blocks.6/.8 / input_blocks.4/.7, i.e. an SD-like UNet "
            f"with at least three attention levels); pick another train_method"
        )
    return names


def selection_root(network: nn.Module) -> tuple[nn.Module, str]:
    """(module whose names the selection uses, its prefix inside ``network``).

    For `unlearn.networks.DiffusersUNet` that is the wrapped diffusers UNet under
    ``"unet."``, for the SD3 and Flux adapters the diffusers transformer under
    ``"transformer."``, so selected names are diffusers state-dict names; any other network
    is used as it is.
    """
    return diffusers_root(network)


class ParameterSelector(ABC):
    """Contract: ``selector(root) -> [parameter names]`` (relative to ``root``, the module
    `selection_root` picks: the diffusers UNet of a `DiffusersUNet`), never empty; ``name``
    is recorded in exports."""

    name: str = ""

    @abstractmethod
    def __call__(self, root: nn.Module) -> list[str]: ...


class TrainMethod(ParameterSelector):
    """ESD's ``train_method`` sets (see the module docstring); aliases esd-x/-u/-all accepted."""

    def __init__(self, train_method: str = "xattn"):
        self.name = canonical_train_method(train_method)

    def __call__(self, root: nn.Module) -> list[str]:
        return select_parameters(root, self.name)
