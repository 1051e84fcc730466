"""FCGF descriptors as a registration feature: a trained checkpoint -> a ``FeatureFn`` named ``fcgf``.

Inputs: an FCGF checkpoint (capture3d or official format, :mod:`capture3d.tasks.fcgf.checkpoint`)
and a device name (``auto``: CUDA when available, else CPU). Output: a
:data:`~capture3d.tasks.registration.features.FeatureFn` ``(points (N, 3), normals (N, 3), voxel) -> (N, D)
float32`` that voxelises the (already downsampled) points at ``voxel`` -- so a model is used at
the voxel size of the registration run, which with ``voxel_size: auto`` is the same rule it was
trained with -- and returns each point's voxel descriptor; normals are ignored (FCGF's input is
occupancy only). :func:`registry_with_fcgf` adds it to a copy of the feature registry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from capture3d.tasks.device import resolve_device
from capture3d.tasks.fcgf.checkpoint import load_checkpoint
from capture3d.tasks.fcgf.model import ResUNetBN2C, extract_features
from capture3d.tasks.registration.features import (
    FeatureFn,
    feature_registry,
    register_feature,
)

logger = logging.getLogger(__name__)

FCGF = "fcgf"


def fcgf_feature(model: ResUNetBN2C) -> FeatureFn:
    """A FeatureFn running ``model`` (on its device) on the points; normals unused."""

    def extract(points: np.ndarray, normals: np.ndarray, voxel: float) -> np.ndarray:
        del normals  # FCGF sees occupancy only
        return extract_features(model, points, voxel)  # (N, D) float32

    return extract


def registry_with_fcgf(
    checkpoint: Path, device: str = "auto", base: Mapping[str, FeatureFn] | None = None
) -> dict[str, FeatureFn]:
    """A copy of ``base`` (default: the built-ins) with ``fcgf`` from ``checkpoint`` added."""
    model, _, _ = load_checkpoint(Path(checkpoint), resolve_device(device))
    registry = dict(base) if base is not None else feature_registry()
    register_feature(FCGF, fcgf_feature(model), registry, replace=True)
    return registry
