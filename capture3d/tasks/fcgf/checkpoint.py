"""FCGF checkpoints: capture3d's own format and the official MinkowskiEngine (FCGF repository) files.

Inputs: a checkpoint path (or an in-memory state dict) and a device. Outputs: a ready
:class:`~capture3d.tasks.fcgf.model.ResUNetBN2C` (or ResUNetBN2) with its
:class:`FcgfModelConfig`, and the checkpoint's other entries (training info, voxel size).
Everything is read with ``torch.load(weights_only=True)``: a checkpoint can never run code.

capture3d format (:func:`save_checkpoint`)::

    {"format": "capture3d.fcgf", "version": 1, "model_config": {arch, in_channels, out_channels,
     conv1_kernel_size, bn_momentum, normalize_feature}, "state_dict": {...}, ...extra entries}

Official FCGF checkpoints (``torch.save`` of ``{"epoch", "state_dict", "optimizer", "scheduler",
"config", ...}`` by the FCGF trainer, ``config`` an ``easydict.EasyDict``) are recognised by their
``state_dict`` and mapped by :func:`convert_me_state_dict`:

=================================  ======================================  ======================
MinkowskiEngine name               capture3d name                          layout
=================================  ======================================  ======================
``<conv>.kernel`` (k > 1)          ``<conv>.weight``                        (K, C_in, C_out), same
                                                                            offset order (x fastest)
``<conv>.kernel`` (k = 1)          ``<conv>.weight``                        (C_in, C_out) -> (1, C_in, C_out)
``final.bias``                     ``final.bias``                           (1, C) -> (C,)
``normX.bn.*``, ``blockX.normY.bn.*``  unchanged                            BatchNorm1d buffers
=================================  ======================================  ======================

The 2-D kernel of 1x1x1 convolutions and the (1, C) bias are how MinkowskiEngine 0.5 stores them;
the offset order of larger kernels is MinkowskiEngine's ``kernel_region`` order, which
:mod:`capture3d.tasks.fcgf.sparse.kernel_map` uses too, so no permutation is needed. The model's
shape (arch, in / out channels, first kernel size) is inferred from the weights, and
``normalize_feature`` taken from the checkpoint's config when it has one (default True).
The ``config`` object is unpickled as an OrderedDict (a stand-in is allow-listed under the name
``easydict.EasyDict``; the package is never imported).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from capture3d.atomic import atomic_file
from capture3d.tasks.fcgf.model import ResUNetBN2, ResUNetBN2C

logger = logging.getLogger(__name__)

FORMAT = "capture3d.fcgf"
VERSION = 1
ARCHS: dict[str, type[ResUNetBN2C]] = {"ResUNetBN2C": ResUNetBN2C, "ResUNetBN2": ResUNetBN2}


@dataclass(frozen=True)
class FcgfModelConfig:
    """The network's shape (the ``model`` part of the ``train_fcgf`` section)."""

    arch: Literal["ResUNetBN2C", "ResUNetBN2"]
    """network (FCGF's architectures)"""
    in_channels: int
    """input feature channels (1: occupancy)"""
    out_channels: int
    """descriptor dimension"""
    conv1_kernel_size: int
    """kernel size of the first convolution"""
    bn_momentum: float
    """batch-norm momentum"""
    normalize_feature: bool
    """unit-length descriptors"""


def build_model(config: FcgfModelConfig) -> ResUNetBN2C:
    """A freshly initialised network of ``config`` (uses torch's global RNG for the weights)."""
    return ARCHS[config.arch](
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        bn_momentum=config.bn_momentum,
        normalize_feature=config.normalize_feature,
        conv1_kernel_size=config.conv1_kernel_size,
    )


class _PickledConfig:
    """Stand-in for ``easydict.EasyDict`` when unpickling official checkpoints.

    torch's weights-only unpickler fills only dicts and OrderedDicts with items, and sets
    attributes only on OrderedDicts and allow-listed classes: the stand-in therefore creates an
    OrderedDict, which takes both the EasyDict's items and its attribute state.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict[str, Any]:  # type: ignore[misc]
        return OrderedDict()


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; errors become one-line ValueErrors."""
    if not path.is_file():
        raise ValueError(f"checkpoint '{path}' not found")
    try:
        with torch.serialization.safe_globals([(_PickledConfig, "easydict.EasyDict")]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- corrupt files raise many kinds of error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint '{path}': cannot be read safely ({first})") from None


def save_checkpoint(
    path: Path,
    model: ResUNetBN2C,
    config: FcgfModelConfig,
    dtype: Literal["float32", "float16"] = "float32",
    **extra: Any,
) -> None:
    """Write ``model`` in capture3d's format (atomically: temporary file, then rename).

    ``dtype: float16`` stores the floating-point weights and batch-norm statistics at half
    precision (half the size; :func:`load_checkpoint` casts them back to float32)."""
    half = dtype == "float16"
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dataclasses.asdict(config),
        "state_dict": {
            k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
            for k, v in model.state_dict().items()
        },
        "storage_dtype": dtype,
        **extra,
    }
    with atomic_file(Path(path)) as tmp:
        torch.save(state, tmp)


def convert_me_state_dict(me_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MinkowskiEngine FCGF state dict -> capture3d names and layouts (table in the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in me_state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state dict entry {key!r} is not a tensor")
        if key.endswith(".kernel"):
            key = key[: -len(".kernel")] + ".weight"
            value = value[None] if value.ndim == 2 else value  # (C_in, C_out) -> (1, C_in, C_out)
        elif key == "final.bias" and value.ndim == 2:
            value = value.reshape(-1)  # (1, C) -> (C,)
        out[key] = value
    return out


def to_me_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_me_state_dict`: capture3d names -> MinkowskiEngine names and layouts."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 3 and ".bn." not in key:
            key = key[: -len(".weight")] + ".kernel"
            value = value[0] if value.shape[0] == 1 else value
        elif key == "final.bias":
            value = value.reshape(1, -1)
        out[key] = value
    return out


def infer_model_config(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None, bn_momentum: float = 0.05
) -> FcgfModelConfig:
    """The network shape a capture3d-named state dict was trained with (see the module docstring)."""
    try:
        conv1, final, conv1_tr = state["conv1.weight"], state["final.weight"], state["conv1_tr.weight"]
    except KeyError as exc:
        raise ValueError(f"not an FCGF ResUNet state dict (no {exc.args[0]!r})") from None
    k = round(conv1.shape[0] ** (1.0 / 3.0))
    if conv1.ndim != 3 or k**3 != conv1.shape[0]:
        raise ValueError(f"conv1 weight has shape {tuple(conv1.shape)}, expected (k^3, C_in, 32)")
    width = int(conv1_tr.shape[2])  # TR_CHANNELS[1]: 64 in ResUNetBN2C, 32 in ResUNetBN2
    arch = next((name for name, cls in ARCHS.items() if cls.TR_CHANNELS[1] == width), None)
    if arch is None:
        raise ValueError(f"conv1_tr gives {width} channels: neither ResUNetBN2C nor ResUNetBN2")
    normalize = bool((config or {}).get("normalize_feature", True))
    return FcgfModelConfig(
        arch=arch,
        in_channels=int(conv1.shape[1]),
        out_channels=int(final.shape[2]),
        conv1_kernel_size=k,
        bn_momentum=bn_momentum,
        normalize_feature=normalize,
    )


def _check_state(model: ResUNetBN2C, state: Mapping[str, torch.Tensor]) -> None:
    """One-line ValueError naming the first missing, unexpected or wrongly shaped weight."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"weight {k!r} has shape {tuple(state[k].shape)}, the network needs "
            f"{tuple(expected[k].shape)} ({len(wrong)} mismatched)"
        )
    if missing or unexpected:
        raise ValueError(
            f"{len(missing)} weights missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def model_from_state(state: Mapping[str, torch.Tensor], config: FcgfModelConfig) -> ResUNetBN2C:
    """Build ``config``'s network and load ``state`` into it (strict; ValueError on any mismatch)."""
    model = build_model(config)
    _check_state(model, state)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model


def load_checkpoint(
    path: Path, device: torch.device | str = "cpu"
) -> tuple[ResUNetBN2C, FcgfModelConfig, dict[str, Any]]:
    """Load an FCGF checkpoint (capture3d or official format) -> (model in eval mode, config, extras).

    ``extras`` holds the checkpoint's other entries (for capture3d files: ``voxel_size``,
    ``training`` ...; for official files: ``epoch`` and ``source: "minkowski"``). Every problem
    -- missing or unreadable file, a newer format version, wrong shapes -- is a one-line
    ValueError naming the file.
    """
    path = Path(path)
    obj = _torch_load(path)
    try:
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            version = obj.get("version")
            if not isinstance(version, int) or version > VERSION:
                raise ValueError(f"format version {version!r}, this capture3d reads versions <= {VERSION}")
            fields = {f.name for f in dataclasses.fields(FcgfModelConfig)}
            raw = obj.get("model_config")
            if not isinstance(raw, dict) or set(raw) != fields:
                raise ValueError(f"model_config must have exactly the keys {sorted(fields)}")
            config = FcgfModelConfig(**raw)
            if config.arch not in ARCHS:
                raise ValueError(f"unknown arch {config.arch!r} (known: {', '.join(ARCHS)})")
            model = model_from_state(obj["state_dict"], config)
            extras = {k: v for k, v in obj.items() if k not in ("state_dict", "model_config")}
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), Mapping):
            state = convert_me_state_dict(obj["state_dict"])
            cfg = obj.get("config")
            config = infer_model_config(state, cfg if isinstance(cfg, Mapping) else None)
            model = model_from_state(state, config)
            extras = {"source": "minkowski", "epoch": obj.get("epoch")}
            voxel = cfg.get("voxel_size") if isinstance(cfg, Mapping) else None
            if isinstance(voxel, (int, float)):
                extras["voxel_size"] = float(voxel)
        else:
            raise ValueError("neither a capture3d FCGF checkpoint nor an FCGF state-dict checkpoint")
    except ValueError as exc:
        raise ValueError(f"checkpoint '{path}': {exc}") from None
    logger.info(
        "loaded FCGF %s (%d-dim, conv1 k=%d) from %s", config.arch, config.out_channels, config.conv1_kernel_size, path
    )
    return model.to(device).eval(), config, extras
