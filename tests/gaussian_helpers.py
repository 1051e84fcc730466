"""Small random Gaussian scenes and cameras for the 3DGS tests."""

from __future__ import annotations

import numpy as np
import torch

from capture3d.tasks.cameras import look_at
from capture3d.tasks.nvs.gaussians.render import Camera
from capture3d.tasks.nvs.scene import PosedView


def random_splats(
    n: int, sh_degree: int, seed: int, dtype: torch.dtype = torch.float64, spread: float = 1.0, size: float = 0.08
) -> dict[str, torch.Tensor]:
    """n Gaussians in a cube of half-size ``spread`` around the origin, with random SH colours."""
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return {
        "means": (torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1) * spread,
        "quats": torch.randn(n, 4, generator=g, dtype=dtype),
        "scales": torch.log(torch.rand(n, 3, generator=g, dtype=dtype) * size + size / 4),
        "opacities": torch.randn(n, generator=g, dtype=dtype),
        "sh0": torch.randn(n, 1, 3, generator=g, dtype=dtype) * 0.8,
        "shN": torch.randn(n, k - 1, 3, generator=g, dtype=dtype) * 0.2,
    }


def ring_cameras(
    num: int, width: int, height: int, radius: float = 4.0, height_z: float = 1.0, fov_deg: float = 50.0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(K, cam_from_world) of ``num`` cameras on a ring around the origin, looking at it."""
    f = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    out = []
    for theta in np.linspace(0, 2 * np.pi, num, endpoint=False):
        c = np.array([radius * np.cos(theta), radius * np.sin(theta), height_z])
        out.append((K, look_at(c, np.zeros(3), np.array([0.0, 0.0, 1.0]))))
    return out


def camera(K: np.ndarray, pose: np.ndarray, width: int, height: int, dtype: torch.dtype = torch.float64) -> Camera:
    return Camera(torch.tensor(K, dtype=dtype), torch.tensor(pose, dtype=dtype), width, height)


def views_of(images: list[torch.Tensor], cams: list[tuple[np.ndarray, np.ndarray]]) -> list[PosedView]:
    return [
        PosedView(f"{i:03d}.png", img.detach().float().numpy(), K, pose)
        for i, (img, (K, pose)) in enumerate(zip(images, cams))
    ]
