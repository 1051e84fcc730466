"""Keypoint and body-fit error metrics (numpy).

Inputs: predicted and ground-truth keypoints, 2D ``(K, 2)`` pixels with a visibility mask and
the person box, or 3D ``(N, K, 3)`` in any unit. Outputs: 2D error statistics (pixels, box-size
normalised, PCK), MPJPE and PA-MPJPE per sample ``(N,)``, in the input's unit, and the
similarity (Procrustes) alignment used by PA-MPJPE, and the root-aligned MPJPE (protocol 1:
both skeletons translated so that their roots, e.g. the mid-hip, coincide).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def box_size(bbox: Sequence[float]) -> float:
    """The size of an ``(x, y, w, h)`` box: ``max(w, h)``.

    This is the normalisation of mmpose's ``PCKAccuracy`` with ``norm_item='bbox'``
    (mmpose/evaluation/metrics/keypoint_2d_metrics.py: ``bbox_size_ = np.max(bboxes[2:] -
    bboxes[:2])`` on an x1, y1, x2, y2 box, used for both axes)."""
    if len(bbox) != 4:
        raise ValueError(f"box_size: expected (x, y, w, h), got {tuple(bbox)!r}")
    return float(max(bbox[2], bbox[3]))


def keypoint_errors_2d(
    pred: np.ndarray,
    gt: np.ndarray,
    visible: np.ndarray,
    box: Sequence[float] | float,
    pck_thresholds: Sequence[float] = (0.1,),
) -> dict[str, float]:
    """2D errors of ``pred`` (K, 2) against ``gt`` (K, 2) over the ``visible`` (K,) points.

    ``box`` is the person's (x, y, w, h) box or its size. Returns ``mean_px``, ``median_px``,
    ``mean_norm`` (mean error / box size), ``pck_<t>`` for each threshold (the fraction of visible
    points closer than t x box size, strictly, as mmpose's PCK), and ``num_visible``. With no
    visible point the errors are NaN. A non-finite prediction counts as an infinite error."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)  # (K, 2)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)  # (K, 2)
    visible = np.asarray(visible, dtype=bool).reshape(-1)  # (K,)
    if not len(pred) == len(gt) == len(visible):
        raise ValueError(f"keypoint_errors_2d: {len(pred)} predictions, {len(gt)} targets, {len(visible)} flags")
    size = float(box) if np.isscalar(box) else box_size(box)  # type: ignore[arg-type]
    visible = visible & np.isfinite(gt).all(axis=1)
    err = np.linalg.norm(pred[visible] - gt[visible], axis=1)  # (k,)
    err = np.where(np.isfinite(err), err, np.inf)
    out: dict[str, float] = {"num_visible": int(visible.sum())}
    if err.size == 0:
        out.update(mean_px=float("nan"), median_px=float("nan"), mean_norm=float("nan"))
        out.update({f"pck_{t:g}": float("nan") for t in pck_thresholds})
        return out
    out["mean_px"] = float(err.mean())
    out["median_px"] = float(np.median(err))
    out["mean_norm"] = float(err.mean() / size) if size > 0 else float("nan")
    for t in pck_thresholds:
        out[f"pck_{t:g}"] = float((err < t * size).mean()) if size > 0 else float("nan")
    return out


def mpjpe(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(N,) mean Euclidean joint error of ``pred`` (N, K, D) against ``gt`` (N, K, D), over the
    joints where ``mask`` (N, K) or (K,) is true (all by default); NaN for a sample without any."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"mpjpe: shapes {pred.shape} and {gt.shape}, expected equal (N, K, D)")
    err = np.linalg.norm(pred - gt, axis=-1)  # (N, K)
    if mask is None:
        return err.mean(axis=1)
    m = np.broadcast_to(np.asarray(mask, dtype=bool), err.shape)
    count = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (err * m).sum(axis=1) / count, np.nan)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` minimising ``sum ||s R src_k + t - dst_k||^2`` over src, dst (K, D), with R a
    proper rotation (det +1: reflections excluded). Umeyama, "Least-squares estimation of
    transformation parameters between two point patterns", IEEE TPAMI 13(4), 1991, eqs. 38-42."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2:
        raise ValueError(f"similarity_transform: shapes {src.shape} and {dst.shape}, expected equal (K, D)")
    d = src.shape[1]
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)  # (D,)
    xs, xd = src - mu_s, dst - mu_d  # (K, D)
    var_s = float((xs**2).sum() / len(src))
    if var_s <= 1e-300:  # all source points coincide: only the translation is defined
        return 1.0, np.eye(d), mu_d - mu_s
    cov = xd.T @ xs / len(src)  # (D, D) Sigma_xy of Umeyama (dst x src)
    U, S, Vt = np.linalg.svd(cov)
    sign = np.ones(d)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        sign[-1] = -1.0  # the smallest singular direction flips: no reflection
    R = (U * sign) @ Vt
    s = float((S * sign).sum() / var_s)
    t = mu_d - s * R @ mu_s
    return s, R, t


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(K, 3) ``pred`` (K, 3) moved onto ``gt`` (K, 3) by the best similarity transform
    (rotation, uniform scale, translation; no reflection), see :func:`similarity_transform`."""
    s, R, t = similarity_transform(pred, gt)
    return s * np.asarray(pred, dtype=np.float64) @ R.T + t


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) MPJPE after Procrustes-aligning each ``pred[n]`` (K, 3) to ``gt[n]`` (K, 3)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pa_mpjpe: shapes {pred.shape} and {gt.shape}, expected equal (N, K, 3)")
    aligned = np.stack([procrustes_align(p, g) for p, g in zip(pred, gt)]) if len(pred) else pred
    return mpjpe(aligned, gt)


def root_aligned_mpjpe(pred: np.ndarray, gt: np.ndarray, root: Sequence[int]) -> np.ndarray:
    """(N,) MPJPE after translating ``pred`` (N, K, 3) and ``gt`` (N, K, 3) so that their roots
    coincide; the root is the mean of the joints ``root`` (indices into K, e.g. both hips for the
    mid-hip). Protocol 1 of Human3.6M evaluations (no rotation or scale alignment)."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"root_aligned_mpjpe: shapes {pred.shape} and {gt.shape}, expected equal (N, K, 3)")
    index = list(root)
    if not index:
        raise ValueError("root_aligned_mpjpe: no root joint given")
    return mpjpe(pred - pred[:, index].mean(axis=1, keepdims=True), gt - gt[:, index].mean(axis=1, keepdims=True))
