"""Which parameters an erasure method fine-tunes: the ESD ``train_method`` sets, and the text encoder.

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
``xattn-pooled``  ``xattn`` and the pooled text projection ``time_text_embed.text_embedder``:
                the prompt's other way into every block (the adaLN modulation); not in
                the ESD papers, defined for these models only
``noxattn``     everything but those, the timestep/pooled-text embedder
                (``time_text_embed``) and the output layer (``norm_out``, ``proj_out``)
``notime``      everything but ``time_text_embed``, ``norm_out`` and ``proj_out``
``full``        every parameter
==============  ======================================================================

``selfattn``, ``xlayer`` and ``selflayer`` name UNet parts and are refused there. (The ESD Flux
fork's ``esd-x`` trains every attention Linear of both block kinds, image and text streams
alike: a larger set than this ``xattn``.)

**The text encoder** (AdvUnlearn, Zhang et al., NeurIPS 2024: the module whose erasure holds under
attack): ``train_method: text_encoder`` (alias ``text_encoder_full``, the AdvUnlearn name) trains a CLIP
text encoder of the conditioner instead of the network (`TextEncoder`: which embedder, which layers).
Its tensors are exported under the diffusers pipeline component they belong to
(``text_encoder.encoder.layers.0.mlp.fc1.weight``), so the erased text encoder is a plug-in.

The newer official scripts (``esd_sd.py``) call the sets ``esd-x``, ``esd-u``, ``esd-all``
and ``esd-x-strict``; the first three are accepted here as aliases of ``xattn``,
``noxattn`` and ``full``. (That script's ``esd-u`` takes only Linear/Conv weights, i.e.
it also trains ``time_embedding``/``conv_out`` but no norms; the alias follows the paper's
``noxattn`` instead.)
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from unlearn.config import ConfigError
from unlearn.networks.base import diffusers_root

__all__ = [
    "ParameterSelector",
    "SelectionSite",
    "TextEncoder",
    "TrainMethod",
    "TEXT_ENCODER_METHOD",
    "text_encoder_components",
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
    "xattn-pooled",
)
TRAIN_METHOD_ALIASES: dict[str, str] = {"esd-x": "xattn", "esd-u": "noxattn", "esd-all": "full"}
# The train method that selects a text encoder (`TextEncoder`) instead of network tensors, and its AdvUnlearn name.
TEXT_ENCODER_METHOD = "text_encoder"
TEXT_ENCODER_ALIASES: tuple[str, ...] = ("text_encoder_full",)

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
        valid.append(f"{TEXT_ENCODER_METHOD} (the CLIP text encoder, not the network)")
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
    if method in JOINT_ONLY_METHODS:
        raise ValueError(
            f"train_method {method!r} is defined on joint-attention transformers (SD3, Flux); "
            "on a UNet choose xattn (SDXL's pooled text vector enters through add_embedding, which it leaves)"
        )
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
JOINT_METHODS: tuple[str, ...] = ("xattn", "noxattn", "full", "notime", "esd-x-strict", "xattn-pooled")
JOINT_ONLY_METHODS: tuple[str, ...] = ("xattn-pooled",)
_is_joint_xattn = re.compile(r"(^|\.)attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)\.").search
_is_joint_xattn_kv = re.compile(r"(^|\.)attn\.add_[kv]_proj\.").search
_JOINT_TIME_EMBEDDING = ("time_text_embed.",)
_JOINT_POOLED_PROJECTION = ("time_text_embed.text_embedder.",)
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
    if method == "xattn-pooled":
        return lambda name: _is_joint_xattn(name) is not None or name.startswith(_JOINT_POOLED_PROJECTION)
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


@dataclass(frozen=True)
class SelectionSite:
    """Where a selector's tensors live in a model, and the names they are exported under.

    Attributes:
        owner: the engine's module that holds them: ``"network"`` or ``"conditioner"``.
        root: the module their names are relative to (the diffusers UNet, a CLIP text model).
        prefix: ``root``'s name inside ``owner`` (``"unet."``, ``"embedders.0.transformer."``).
        export_prefix: what their names start with in ``erased.safetensors``: nothing for the
            network (diffusers UNet names, as ``pipe.unet`` has them, the format files have always had),
            the pipeline component for a text encoder (``"text_encoder."``).
        folder: the diffusers pipeline folder ``root`` is saved to (``unet``, ``text_encoder``).
        embedder: the conditioner's embedder that holds them (a text encoder), else None.
    """

    owner: str
    root: nn.Module
    prefix: str
    export_prefix: str
    folder: str
    embedder: nn.Module | None = None


class ParameterSelector(ABC):
    """Contract: ``selector.site(network, conditioner)`` says where the tensors live (by default the
    network's `selection_root`: the diffusers UNet of a `DiffusersUNet`); ``selector(site.root) ->
    [parameter names]`` (relative to ``site.root``), never empty; ``name`` is recorded in exports."""

    name: str = ""

    @abstractmethod
    def __call__(self, root: nn.Module) -> list[str]: ...

    def site(self, network: nn.Module, conditioner: nn.Module | None) -> SelectionSite:
        root, prefix = selection_root(network)
        return SelectionSite(owner="network", root=root, prefix=prefix, export_prefix="", folder=prefix.rstrip("."))


class TrainMethod(ParameterSelector):
    """ESD's ``train_method`` sets (see the module docstring); aliases esd-x/-u/-all accepted.
    ``text_encoder`` (or ``text_encoder_full``) is `TextEncoder` with its default embedder and
    ``layers`` (the only train method that reads them)."""

    def __init__(self, train_method: str = "xattn", layers: Sequence[int] | None = None):
        self._text_encoder: TextEncoder | None = None
        if train_method in (TEXT_ENCODER_METHOD, *TEXT_ENCODER_ALIASES):
            self._text_encoder = TextEncoder(layers=layers)
            self.name = self._text_encoder.name
            return
        if layers is not None:
            raise ValueError(f"layers: apply to train_method {TEXT_ENCODER_METHOD} only, not {train_method!r}")
        self.name = canonical_train_method(train_method)

    def site(self, network: nn.Module, conditioner: nn.Module | None) -> SelectionSite:
        if self._text_encoder is not None:
            return self._text_encoder.site(network, conditioner)
        return super().site(network, conditioner)

    def __call__(self, root: nn.Module) -> list[str]:
        if self._text_encoder is not None:
            return self._text_encoder(root)
        return select_parameters(root, self.name)


# Config path of the selector's arguments (both engines that select tensors build it there).
SELECTOR_PARAMS = "model.params.selector_config.params"
# A CLIP text transformer's layers and final norm; transformers < 5.6 nests them under "text_model.".
_CLIP_LAYER = re.compile(r"(^|\.)encoder\.layers\.(\d+)\.")
_CLIP_FINAL_NORM = _has("final_layer_norm")


def text_encoder_components(conditioner: nn.Module | None) -> dict[int, str]:
    """{embedder index: diffusers pipeline component} of the conditioner's text encoders (the
    embedders that tokenize), in order: ``text_encoder``, ``text_encoder_2``, ``text_encoder_3``, as
    pipelines name them (SDXL's CLIP-L and CLIP-G, SD3's CLIP-L, CLIP-G and T5, Flux's CLIP and T5)."""
    found = [i for i, e in enumerate(getattr(conditioner, "embedders", [])) if hasattr(e, "tokenize")]
    return {i: TEXT_ENCODER_METHOD if k == 0 else f"{TEXT_ENCODER_METHOD}_{k + 1}" for k, i in enumerate(found)}


def _is_clip_text_embedder(embedder: nn.Module) -> bool:
    from unlearn.conditioning.embedders.clip import CLIPTextEmbedder

    return isinstance(embedder, CLIPTextEmbedder)


class TextEncoder(ParameterSelector):
    """AdvUnlearn's module (Zhang et al., NeurIPS 2024): a CLIP text encoder of the conditioner.

    The network is not touched: the erased text encoder is a plug-in for the original pipeline.

    Args:
        embedder: index of the conditioner's embedder to train (``emb_models[i]``); None: the first
            CLIP text embedder.
        layers: None: every transformer layer and the final LayerNorm (AdvUnlearn's
            ``text_encoder_full``); or the indices of the transformer layers to train (``[0]`` is
            AdvUnlearn's ``text_encoder_layer0``). The token and position embeddings stay frozen
            either way, as in AdvUnlearn: the token table is where the attacks' soft tokens enter, so an
            erasure held there would not hold against them.
    """

    def __init__(self, embedder: int | None = None, layers: Sequence[int] | None = None):
        if embedder is not None and (isinstance(embedder, bool) or not isinstance(embedder, int) or embedder < 0):
            raise ValueError(f"embedder: expected the index of a conditioner embedder or null, got {embedder!r}")
        if layers is not None:
            ok = not isinstance(layers, str) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
            if not ok or not layers or len(set(layers)) != len(layers):
                raise ValueError(f"layers: expected null or distinct layer indices (e.g. [0]), got {layers!r}")
            layers = sorted(layers)
        self.embedder, self.layers = embedder, None if layers is None else list(layers)
        suffix = "" if layers is None else "_layers_" + "_".join(map(str, self.layers))
        self.name = TEXT_ENCODER_METHOD + suffix

    def _embedder_index(self, embedders: list[nn.Module]) -> int:
        kinds = [type(e).__name__ for e in embedders]
        if self.embedder is None:
            clip = [i for i, e in enumerate(embedders) if _is_clip_text_embedder(e)]
            if not clip:
                raise ConfigError(f"{SELECTOR_PARAMS}.embedder: the conditioner has no CLIP text embedder ({kinds})")
            return clip[0]
        if self.embedder >= len(embedders):
            raise ConfigError(
                f"{SELECTOR_PARAMS}.embedder: {self.embedder} is out of range; the conditioner has "
                f"{len(embedders)} embedder(s) {kinds}"
            )
        if not _is_clip_text_embedder(embedders[self.embedder]):
            raise ConfigError(
                f"{SELECTOR_PARAMS}.embedder: emb_models[{self.embedder}] is a {kinds[self.embedder]}; only a CLIP "
                "text embedder (CLIPTextEmbedder) can be trained"
            )
        return self.embedder

    def site(self, network: nn.Module, conditioner: nn.Module | None) -> SelectionSite:
        embedders = list(getattr(conditioner, "embedders", []))
        if not embedders:
            raise ConfigError(f"{SELECTOR_PARAMS}: the model has no conditioner with a text encoder to train")
        index = self._embedder_index(embedders)
        root = embedders[index].transformer
        n_layers = root.config.num_hidden_layers
        if self.layers is not None and not all(0 <= i < n_layers for i in self.layers):
            raise ConfigError(
                f"{SELECTOR_PARAMS}.layers: {self.layers} is out of range; the text encoder has layers "
                f"0..{n_layers - 1}"
            )
        component = text_encoder_components(conditioner)[index]
        return SelectionSite(
            owner="conditioner",
            root=root,
            prefix=f"embedders.{index}.transformer.",
            export_prefix=component + ".",
            folder=component,
            embedder=embedders[index],
        )

    def _keeps(self, name: str) -> bool:
        layer = _CLIP_LAYER.search(name)
        if self.layers is None:
            return layer is not None or _CLIP_FINAL_NORM(name)
        return layer is not None and int(layer.group(2)) in self.layers

    def __call__(self, root: nn.Module) -> list[str]:
        names = [name for name, _ in root.named_parameters() if self._keeps(name)]
        if not names:
            raise ValueError(f"{self.name}: selects no parameters in this {type(root).__name__} (no encoder.layers)")
        return names
