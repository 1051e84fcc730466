"""Gaussian parameters: initialisation from sparse points, and their optimisers.

Inputs: sparse points (P, 3) with colours (P, 3) in [0, 1] (or a random box when there are none),
the SH degree, the initial opacity and a seed/device. Outputs: a ``torch.nn.ParameterDict``
with ``means`` (N, 3), ``scales`` (N, 3) log-scales, ``quats`` (N, 4) (w, x, y, z), ``opacities``
(N,) logits, ``sh0`` (N, 1, 3) and ``shN`` (N, (d+1)^2 - 1, 3); and one Adam per parameter with
3DGS's learning rates, the position rate decaying exponentially (Kerbl et al. 2023, Sec. 7.1).

Initial scales are log of the mean distance to the 3 nearest neighbours (isotropic), quaternions
the identity, colours the points' colours in the SH DC term.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import open3d as o3d
import torch

from capture3d.tasks.nvs.gaussians.sh import num_sh_bases, rgb_to_sh0

logger = logging.getLogger(__name__)

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


@dataclass(frozen=True)
class LearningRates:
    """Per-parameter Adam learning rates (3DGS defaults); ``means`` is scaled by the scene extent."""

    means: float
    """positions (times the scene extent), decaying exponentially ..."""
    means_final: float
    """... to this at the last iteration"""
    scales: float
    """log scales"""
    quats: float
    """rotations (quaternions)"""
    opacities: float
    """opacity logits"""
    sh0: float
    """base colour (degree-0 spherical harmonics)"""
    shN: float
    """higher spherical-harmonics coefficients"""


def init_gaussians(
    points: np.ndarray,  # (P, 3)
    colors: np.ndarray,  # (P, 3)
    sh_degree: int,
    init_opacity: float,
    extent: float,
    num_random: int,
    seed: int,
    device: torch.device,
) -> torch.nn.ParameterDict:
    """Gaussians at the sparse points (plus ``num_random`` random ones in their bounding box)."""
    rng = np.random.default_rng(seed)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cols = np.asarray(colors, dtype=np.float64).reshape(-1, 3)
    if len(pts) and num_random:
        lo, hi = pts.min(0), pts.max(0)
        pad = 0.1 * (hi - lo)
        extra = rng.uniform(lo - pad, hi + pad, size=(num_random, 3))
        pts = np.concatenate([pts, extra])
        cols = np.concatenate([cols, rng.uniform(0, 1, size=(num_random, 3))])
    elif not len(pts):
        n = max(num_random, 1000)
        pts = rng.uniform(-extent, extent, size=(n, 3))
        cols = rng.uniform(0, 1, size=(n, 3))
    nn = np.clip(neighbour_distance(pts, 3), 1e-7, None)
    n = len(pts)
    means = torch.tensor(pts, dtype=torch.float32)
    scales = torch.log(torch.tensor(nn, dtype=torch.float32))[:, None].repeat(1, 3)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    p = float(np.clip(init_opacity, 1e-4, 1 - 1e-4))
    opacities = torch.full((n,), math.log(p / (1 - p)))
    sh0 = rgb_to_sh0(torch.tensor(cols, dtype=torch.float32))[:, None, :]
    shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
    params = {"means": means, "scales": scales, "quats": quats, "opacities": opacities, "sh0": sh0, "shN": shN}
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.to(device)) for k, v in params.items()})


def neighbour_distance(points: np.ndarray, k: int) -> np.ndarray:
    """Root-mean-square distance (P,) from each point (P, 3) to its ``k`` nearest other points."""
    if len(points) < 2:
        return np.full(len(points), 0.01)
    nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(points.astype(np.float64)))
    nns.knn_index()
    _, d2 = nns.knn_search(o3d.core.Tensor(points.astype(np.float64)), min(k + 1, len(points)))
    d2 = d2.numpy()[:, 1:]  # squared distances, self excluded
    return np.sqrt(d2.mean(1))


def make_optimizers(splats: torch.nn.ParameterDict, lr: LearningRates, extent: float) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter (eps 1e-15, as 3DGS), so densification can edit each one's state."""
    rates = {
        "means": lr.means * extent,
        "scales": lr.scales,
        "quats": lr.quats,
        "opacities": lr.opacities,
        "sh0": lr.sh0,
        "shN": lr.shN,
    }
    return {name: torch.optim.Adam([splats[name]], lr=rates[name], eps=1e-15) for name in PARAM_NAMES}


def means_lr(step: int, max_steps: int, lr: LearningRates, extent: float) -> float:
    """Exponential decay of the position learning rate from ``means`` to ``means_final`` (x extent)."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return extent * math.exp((1 - t) * math.log(lr.means) + t * math.log(lr.means_final))
