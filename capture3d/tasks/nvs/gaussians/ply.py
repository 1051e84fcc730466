"""Export and import of Gaussians as the binary PLY that splat viewers read.

Input: the Gaussian parameters (``means`` (N, 3), ``scales`` (N, 3) log, ``quats`` (N, 4) (w, x, y, z),
``opacities`` (N,) logits, ``sh0`` (N, 1, 3), ``shN`` (N, K-1, 3)). Output: a little-endian binary
PLY with the vertex properties of the reference 3DGS implementation, in its order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3`` (all float32).
As there, ``f_rest`` is channel-major (all red coefficients, then green, then blue), opacities
are logits, scales are logs, and normals are zero. :func:`read_gaussians_ply` reads it back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def ply_property_names(num_rest: int) -> list[str]:
    """Vertex property names for ``num_rest`` = 3 (K - 1) higher-order SH coefficients."""
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def write_gaussians_ply(path: Path, splats: dict[str, torch.Tensor] | torch.nn.ParameterDict) -> int:
    """Write the Gaussians to ``path``; returns how many were written."""
    t = {k: v.detach().float().cpu().numpy() for k, v in splats.items()}
    n = t["means"].shape[0]
    rest = t["shN"].transpose(0, 2, 1).reshape(n, -1)  # (N, 3 (K-1)) channel-major
    cols = [
        t["means"],
        np.zeros((n, 3), np.float32),
        t["sh0"].reshape(n, 3),
        rest,
        t["opacities"].reshape(n, 1),
        t["scales"],
        t["quats"],
    ]
    data = np.concatenate(cols, axis=1).astype("<f4")
    names = ply_property_names(rest.shape[1])
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(data.tobytes())
    return n


def read_gaussians_ply(path: Path) -> dict[str, torch.Tensor]:
    """Read a 3DGS PLY (float32 vertex properties) back into parameter tensors."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise ValueError(f"{path}: not a binary little-endian PLY")
    n = next(int(x.split()[2]) for x in lines if x.startswith("element vertex"))
    names = [x.split()[2] for x in lines if x.startswith("property float")]
    data = np.frombuffer(raw[end : end + 4 * n * len(names)], dtype="<f4").reshape(n, len(names))
    col = {name: i for i, name in enumerate(names)}

    def take(prefix: str, count: int) -> np.ndarray:
        return data[:, [col[f"{prefix}{i}"] for i in range(count)]]

    num_rest = sum(1 for name in names if name.startswith("f_rest_"))
    rest = take("f_rest_", num_rest).reshape(n, 3, num_rest // 3).transpose(0, 2, 1)
    return {
        "means": torch.tensor(data[:, [col["x"], col["y"], col["z"]]]),
        "scales": torch.tensor(take("scale_", 3)),
        "quats": torch.tensor(take("rot_", 4)),
        "opacities": torch.tensor(data[:, col["opacity"]].copy()),
        "sh0": torch.tensor(take("f_dc_", 3)[:, None, :].copy()),
        "shN": torch.tensor(rest.copy()),
    }
