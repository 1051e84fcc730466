"""A learned pose prior for Anny: a Gaussian mixture over its posed-bone rotations, learned from
real motion capture retargeted onto Anny (:mod:`capture3d.tasks.body.retarget`).

Inputs: joint-position clips (the ``joints21_30fps.npz`` layout of ``mocap_cmu``: one (F, 21, 3)
array per clip and ``joint_names``), the clips to leave out, and the mixture settings. Output: an
:class:`AnnyPosePrior` saved as a small ``.npz`` (means, covariances, weights, the joints it
covers, provenance). :meth:`AnnyPosePrior.mixture` gives the torch :class:`MaxMixture` the fit
evaluates (SMPLify's max-mixture negative log-likelihood, as with SMPL's ``gmm_08.pkl``).

The prior covers the bones whose rotation joint positions determine (legs, feet, spine,
clavicles, arms, neck): :data:`PRIOR_JOINTS`. The wrists and the head carry no mocap joint beyond
their own head, so their rotations stay under the per-joint quadratic prior. Every frame is
also used mirrored (left and right swapped), so the prior is symmetric.

The shipped prior (:data:`SHIPPED_PRIOR`) is built from the CMU clips by
``capture3d train pose-prior`` (README: "Bodies on real people"); the CMU database's terms allow
shipping data derived from it ("you may include this data in commercially-sold products").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from capture3d.tasks.body.anny_model import BODY_JOINTS, AnnyBody
from capture3d.tasks.body.gmm import MaxMixture, fit_mixture
from capture3d.tasks.body.retarget import mirror_joints, retarget

logger = logging.getLogger(__name__)

SHIPPED_PRIOR = Path(__file__).resolve().parents[2] / "models" / "anny_pose_prior_cmu.npz"
"""the prior that ships with capture3d (learned from the CMU clips, evaluation clips left out)"""

PRIOR_JOINTS: tuple[str, ...] = tuple(j for j in BODY_JOINTS if j not in ("wrist.L", "wrist.R", "head"))
"""Anny bones the mixture covers (the others keep the quadratic prior)"""


@dataclass(frozen=True)
class AnnyPosePrior:
    """A Gaussian mixture over the axis-angle rotations of :attr:`joints` (D = 3 x joints).

    means (M, D), covars (M, D, D), weights (M,); ``info``: provenance (sources, frames, settings,
    retargeting error)."""

    joints: tuple[str, ...]
    means: np.ndarray
    covars: np.ndarray
    weights: np.ndarray
    info: dict[str, object] = field(default_factory=dict)

    def mixture(self, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> MaxMixture:
        return MaxMixture.from_arrays(self.means, self.covars, self.weights, dtype=dtype, device=device)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            joints=np.asarray(self.joints),
            means=self.means.astype(np.float32),
            covars=self.covars.astype(np.float32),
            weights=self.weights.astype(np.float32),
            info=np.asarray(json.dumps(self.info, sort_keys=True)),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> AnnyPosePrior:
        """Read a prior written by :meth:`save`; ValueError (one line naming the file) otherwise."""
        try:
            with np.load(path, allow_pickle=False) as data:
                joints = tuple(str(j) for j in data["joints"])
                means, covars, weights = (np.asarray(data[k], dtype=np.float64) for k in ("means", "covars", "weights"))
                info = json.loads(str(data["info"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"Anny pose prior '{path}': not a prior file ({exc})") from None
        unknown = [j for j in joints if j not in BODY_JOINTS]
        if unknown or means.ndim != 2 or means.shape[1] != 3 * len(joints):
            raise ValueError(f"Anny pose prior '{path}': joints {unknown or joints} do not fit means {means.shape}")
        return cls(joints, means, covars, weights, info)


def load_mocap_clips(path: Path, exclude: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The clips of a ``joints21_30fps.npz``-style file (clip -> (F, J, 3)) without ``exclude``,
    and the joint names."""
    with np.load(path, allow_pickle=False) as data:
        names = tuple(str(n) for n in data["joint_names"])
        clips = {k: np.asarray(data[k], dtype=np.float64) for k in data.files if k != "joint_names"}
    missing = [c for c in exclude if c not in clips]
    if missing:
        raise ValueError(f"mocap file '{path}': clips to exclude {missing} are not in it")
    return {k: v for k, v in clips.items() if k not in exclude}, names


def retarget_clips(
    model: AnnyBody,
    clips: dict[str, np.ndarray],
    names: Sequence[str],
    *,
    stride: int = 1,
    up_axis: int = 1,
    iterations: int = 150,
) -> tuple[np.ndarray, np.ndarray]:
    """Every ``stride``-th frame of ``clips`` and its mirror image retargeted onto Anny: the
    rotations of :data:`PRIOR_JOINTS` (2N, 3 x joints) and the segment errors (2N, S) in degrees.
    ``up_axis``: the clips' vertical axis (mirroring is across a vertical plane)."""
    frames = np.concatenate([c[::stride] for c in clips.values()])  # (N, J, 3)
    mirror_axis = 2 if up_axis == 0 else 0
    both = np.concatenate([frames, mirror_joints(frames, names, mirror_axis)])
    logger.info("retargeting %d mocap frames (and their mirror images) onto Anny", len(frames))
    result = retarget(model, both, names, iterations=iterations)
    columns = [model.pose_joint_names.index(j) for j in PRIOR_JOINTS]
    return result.body_pose[:, columns].reshape(len(both), -1), result.segment_error_deg


def learn_pose_prior(
    model: AnnyBody,
    clips: dict[str, np.ndarray],
    names: Sequence[str],
    *,
    components: int = 8,
    stride: int = 1,
    up_axis: int = 1,
    seed: int = 0,
    var_floor: float = 0.05**2,
    iterations: int = 150,
) -> AnnyPosePrior:
    """Retarget ``clips`` (:func:`retarget_clips`), then fit a ``components``-Gaussian mixture to
    the rotations; ``var_floor`` (rad^2) is added to every covariance's diagonal."""
    started = time.perf_counter()
    samples, err = retarget_clips(model, clips, names, stride=stride, up_axis=up_axis, iterations=iterations)
    means, covars, weights, loglik = fit_mixture(samples, components, seed=seed, var_floor=var_floor)
    info: dict[str, object] = {
        "sources": sorted(clips),
        "frames": int(len(samples) // 2),
        "samples": int(len(samples)),
        "stride": stride,
        "components": components,
        "var_floor": var_floor,
        "seed": seed,
        "mean_log_likelihood": round(loglik, 4),
        "retarget_error_deg_median": round(float(np.median(err)), 3),
        "retarget_error_deg_p95": round(float(np.percentile(err, 95)), 3),
        "seconds": round(time.perf_counter() - started, 1),
    }
    logger.info("pose prior: %s", info)
    return AnnyPosePrior(PRIOR_JOINTS, means, covars, weights, info)
