"""Calibrated cameras checked against a body's 2D keypoints: DLT triangulation, depth and reprojection.

Inputs: one body's keypoints in V calibrated views -- pixels ``xy`` (V, K, 2), confidences ``conf``
(V, K), intrinsics ``k`` (V, 3, 3), world-to-camera rotations ``rot`` (V, 3, 3) and translations
``trans`` (V, 3) (``x_cam = R x_world + t``, OpenCV axes: x right, y down, z forward), the person's
box size per view ``box`` (V,) in pixels. Outputs: the triangulated joints (:func:`triangulate`),
per-view statistics (:class:`ViewCheck`: joints behind the camera, median reprojection error) and,
from :func:`camera_problem`, a one-line description of the first camera that disagrees with the
keypoints (naming it), or None.

A joint is triangulated (linear DLT in normalised image coordinates, Hartley & Zisserman,
"Multiple View Geometry", 2nd ed., sec. 12.2) from the views where its confidence exceeds
``min_conf``, when there are at least two. A camera fails when more than :data:`MAX_BEHIND` of the
triangulated joints it sees lie behind it (``(R X + t)_z <= 0``: typically a camera-to-world R given where
world-to-camera is expected), or when the median reprojection error of those joints exceeds
:data:`MAX_REPROJECTION` x its box size. Judging needs :data:`MIN_JOINTS` triangulated joints in a
view, and camera centres that are apart (coincident centres cannot triangulate: not judged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

MAX_REPROJECTION = 0.1
"""largest plausible median reprojection error after triangulation, as a fraction of the box size"""
MAX_BEHIND = 0.1
"""a camera fails when more than this fraction of the joints it sees lie behind it"""
MIN_JOINTS = 3
"""triangulated joints a view must see to be judged"""
_MIN_BASELINE = 1e-6  # camera centres closer than this x their distance from the origin (or 1) coincide


@dataclass(frozen=True)
class ViewCheck:
    """One view's agreement with the triangulated joints.

    joints:   triangulated joints this view sees (confidence above the threshold).
    behind:   how many of them lie behind the camera (z <= 0).
    median_px: median reprojection error of those in front, pixels (inf when none is).
    box:      the person's box size in this view, pixels.
    """

    joints: int
    behind: int
    median_px: float
    box: float

    @property
    def judged(self) -> bool:
        return self.joints >= MIN_JOINTS

    @property
    def behind_camera(self) -> bool:
        return self.judged and self.behind > MAX_BEHIND * self.joints

    @property
    def reprojection_too_large(self) -> bool:
        return self.judged and not self.median_px <= MAX_REPROJECTION * max(self.box, 1.0)

    @property
    def ok(self) -> bool:
        return not (self.behind_camera or self.reprojection_too_large)


def has_baseline(rot: np.ndarray, trans: np.ndarray) -> bool:
    """Whether the camera centres ``-R^T t`` of ``rot`` (V, 3, 3), ``trans`` (V, 3) are apart."""
    centres = -np.einsum("vji,vj->vi", rot, trans)  # (V, 3)
    spread = float(np.ptp(centres, axis=0).max()) if len(centres) > 1 else 0.0
    return spread > _MIN_BASELINE * max(1.0, float(np.abs(centres).max(initial=0.0)))


def triangulate(
    xy: np.ndarray, conf: np.ndarray, k: np.ndarray, rot: np.ndarray, trans: np.ndarray, min_conf: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(K, 3) world points by DLT over the views with conf > ``min_conf``, and (K,) bool: whether
    the joint was triangulated (at least two such views and a finite solution)."""
    xy = np.asarray(xy, dtype=np.float64)  # (V, K, 2)
    conf = np.asarray(conf, dtype=np.float64)  # (V, K)
    views, joints = conf.shape
    homog = np.concatenate([xy, np.ones((views, joints, 1))], axis=-1)  # (V, K, 3)
    rays = np.einsum("vij,vkj->vki", np.linalg.inv(k), homog)  # (V, K, 3) normalised coordinates
    proj = np.concatenate([rot, trans[:, :, None]], axis=2)  # (V, 3, 4) [R | t]
    points = np.full((joints, 3), np.nan)
    ok = np.zeros(joints, dtype=bool)
    seen = (conf > min_conf) & np.isfinite(xy).all(axis=-1)  # (V, K)
    for j in range(joints):
        vs = np.flatnonzero(seen[:, j])
        if len(vs) < 2:
            continue
        r = rays[vs, j]  # (n, 3)
        p = proj[vs]  # (n, 3, 4)
        a = np.concatenate([r[:, 0:1] * p[:, 2] - p[:, 0], r[:, 1:2] * p[:, 2] - p[:, 1]])  # (2n, 4)
        a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-300
        _, _, vt = np.linalg.svd(a)
        h = vt[-1]
        if abs(h[3]) < 1e-12 * np.abs(h[:3]).max(initial=1.0):
            continue  # a point at infinity
        points[j] = h[:3] / h[3]
        ok[j] = bool(np.isfinite(points[j]).all())
    return points, ok


def check_views(
    xy: np.ndarray,
    conf: np.ndarray,
    k: np.ndarray,
    rot: np.ndarray,
    trans: np.ndarray,
    box: np.ndarray,
    min_conf: float = 0.0,
) -> list[ViewCheck]:
    """One :class:`ViewCheck` per view of a body (see the module doc)."""
    xy = np.asarray(xy, dtype=np.float64)
    conf = np.asarray(conf, dtype=np.float64)
    rot, trans, k = (np.asarray(a, dtype=np.float64) for a in (rot, trans, k))
    points, ok = triangulate(xy, conf, k, rot, trans, min_conf)
    box = np.asarray(box, dtype=np.float64)
    return [
        _view_check(points, ok, xy[v], conf[v], k[v], rot[v], trans[v], float(box[v]), min_conf)
        for v in range(len(conf))
    ]


def _view_check(
    points: np.ndarray,
    ok: np.ndarray,
    xy: np.ndarray,
    conf: np.ndarray,
    k: np.ndarray,
    rot: np.ndarray,
    trans: np.ndarray,
    box: float,
    min_conf: float,
) -> ViewCheck:
    """One view (``xy`` (K, 2), ``conf`` (K,), one camera) against world ``points`` (K, 3) where ``ok`` (K,)."""
    seen = ok & (conf > min_conf) & np.isfinite(xy).all(axis=-1)  # (K,)
    cam = points[seen] @ rot.T + trans  # (n, 3)
    front = cam[:, 2] > 0
    pix = cam[front] @ k.T
    pix = pix[:, :2] / pix[:, 2:3]  # (m, 2)
    err = np.linalg.norm(pix - xy[seen][front], axis=1)
    return ViewCheck(int(seen.sum()), int((~front).sum()), float(np.median(err)) if err.size else float("inf"), box)


def views_consistent(
    xy: np.ndarray,
    conf: np.ndarray,
    k: np.ndarray,
    rot: np.ndarray,
    trans: np.ndarray,
    box: np.ndarray,
    min_conf: float = 0.0,
) -> bool | None:
    """True when the views agree on one body (every judged view passes, at least two judged),
    False when a judged view disagrees, None when it cannot be told (no baseline, too few joints)."""
    if not has_baseline(np.asarray(rot, dtype=np.float64), np.asarray(trans, dtype=np.float64)):
        return None
    checks = check_views(xy, conf, k, rot, trans, box, min_conf)
    if sum(c.judged for c in checks) < 2:
        return None
    return all(c.ok for c in checks)


def camera_problem(
    xy: np.ndarray,
    conf: np.ndarray,
    k: np.ndarray,
    rot: np.ndarray,
    trans: np.ndarray,
    box: np.ndarray,
    names: Sequence[str],
    body: str,
    min_conf: float = 0.0,
) -> str | None:
    """One line naming the first camera (``names[v]``, the image) whose view of ``body`` disagrees
    with the points triangulated from all views, or None when all agree or nothing can be judged.

    The camera blamed is, in this order: one whose pose read the other way round (``R`` transposed,
    with ``t`` as given or as a camera centre) makes all views agree -- the message then asks whether
    R is world-to-camera; with three or more views, one without which the others agree (judged
    against the joints the others triangulate); else the one with the most joints behind it, else
    the largest reprojection error per box size."""
    xy, conf, k, box = (np.asarray(a, dtype=np.float64) for a in (xy, conf, k, box))
    rot, trans = np.asarray(rot, dtype=np.float64), np.asarray(trans, dtype=np.float64)
    if len(names) < 2 or not has_baseline(rot, trans):
        return None
    checks = check_views(xy, conf, k, rot, trans, box, min_conf)
    if all(c.ok for c in checks):
        return None
    views = len(names)
    convention = "is R world-to-camera (x_cam = R x_world + t)?"
    for v in range(views):
        flipped = rot[v].T
        readings = ((trans[v], "R is transposed"), (-flipped @ trans[v], "(R, t) is read as camera-to-world"))
        for alt_t, reading in readings:
            r2, t2 = rot.copy(), trans.copy()
            r2[v], t2[v] = flipped, alt_t
            if np.allclose(r2[v], rot[v]) and np.allclose(t2[v], trans[v]):
                continue
            if all(c.ok for c in check_views(xy, conf, k, r2, t2, box, min_conf)):
                c = checks[v]
                what = (
                    f"points behind the camera ({c.behind} of {c.joints} joints"
                    if c.behind_camera
                    else f"keypoints reproject a median {c.median_px:.0f} px ({c.joints} joints"
                )
                return (
                    f"camera '{names[v]}': {what} of body '{body}' triangulated over {views} views, which agree "
                    f"when {reading}): {convention}"
                )
    culprit, c, where = None, None, f"of body '{body}' triangulated over {views} views"
    if views >= 3:
        best = np.inf
        for v in range(views):
            keep = [u for u in range(views) if u != v]
            rest = check_views(xy[keep], conf[keep], k[keep], rot[keep], trans[keep], box[keep], min_conf)
            if sum(r.judged for r in rest) < 2 or not all(r.ok for r in rest):
                continue
            worst = max(r.median_px / max(r.box, 1.0) for r in rest if r.judged)
            if worst < best:
                points, ok = triangulate(xy[keep], conf[keep], k[keep], rot[keep], trans[keep], min_conf)
                mine = _view_check(points, ok, xy[v], conf[v], k[v], rot[v], trans[v], float(box[v]), min_conf)
                if mine.judged and not mine.ok:
                    best, culprit, c = worst, v, mine
                    where = f"of body '{body}' triangulated from the other {views - 1} views"
    if culprit is None or c is None:
        culprit = max(
            range(views),
            key=lambda v: (
                checks[v].judged,
                checks[v].behind / max(checks[v].joints, 1),
                checks[v].median_px / max(checks[v].box, 1.0),
            ),
        )
        c = checks[culprit]
    if c.behind_camera or c.median_px == float("inf"):
        return (
            f"camera '{names[culprit]}': points behind the camera ({c.behind} of {c.joints} joints {where}): "
            f"{convention}"
        )
    return (
        f"camera '{names[culprit]}': keypoints reproject a median {c.median_px:.0f} px (more than "
        f"{MAX_REPROJECTION:g} x the {c.box:.0f} px box) from the joints {where}: check K, R and t "
        "(x_cam = R x_world + t, world-to-camera) and that the views show one person"
    )
