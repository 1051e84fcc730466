"""From detected people and cameras to the fitter's batched :class:`BodyObservations`.

Inputs: :class:`PersonKeypoints` (any format), optional calibrated cameras per image
(:class:`~capture3d.tasks.cameras.PinholeCamera`), the model's keypoint names and thresholds. Output: a :class:`BodyBatch`:
the observations, one :class:`BodyRow` per body (its id and the people who see it), and the people
skipped with their reason (too few confident keypoints), never fitted to noise.

Grouping: without cameras every person is its own body (single view). With cameras, images are
grouped into multi-view frames (``groups``: lists of image names taken at one instant; default:
all images form one frame) and the i-th person of every image of a frame is one body (one person
per view is the common case). A frame of one image is a single calibrated view. With ``sequence`` the images are video frames of one track each: body rows stay per
frame, and consecutive frames of a track are paired for temporal smoothness.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from capture3d.tasks.body.camera import focal_from_fov, intrinsics
from capture3d.tasks.body.fit import BodyObservations
from capture3d.tasks.body.keypoint_io import PersonKeypoints, sanitize
from capture3d.tasks.body.metrics import box_size
from capture3d.tasks.body.model import derived_keypoint
from capture3d.tasks.cameras import PinholeCamera

logger = logging.getLogger(__name__)


@dataclass
class BodyRow:
    """One body to fit: its id and the people (one per view) who see it."""

    body: str
    people: list[PersonKeypoints]
    cameras: list[PinholeCamera]


@dataclass
class BodyBatch:
    """The fitter's input and the bookkeeping to write results back per body."""

    observations: BodyObservations
    rows: list[BodyRow]
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def person_points(person: PersonKeypoints, names: Sequence[str], min_conf: float) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) pixels and (K,) confidences of ``person`` at ``names``; below ``min_conf`` -> 0.
    ``neck`` / ``mid_hip`` missing from the format are derived from their two parents."""
    where = {n: i for i, n in enumerate(person.names)}
    xy = np.zeros((len(names), 2))
    conf = np.zeros(len(names))
    for k, name in enumerate(names):
        i = where.get(name)
        if i is not None:
            xy[k], conf[k] = person.xy[i], person.conf[i]
        elif (pair := derived_keypoint(name)) and all(p in where for p in pair):
            a, b = where[pair[0]], where[pair[1]]
            if person.conf[a] > 0 and person.conf[b] > 0:
                xy[k], conf[k] = 0.5 * (person.xy[a] + person.xy[b]), min(person.conf[a], person.conf[b])
    conf = np.where(conf >= min_conf, conf, 0.0)
    return xy, conf


def fit_names(people: Sequence[PersonKeypoints], model_names: Sequence[str]) -> tuple[str, ...]:
    """The model keypoints the inputs provide (a format's points minus what the model lacks);
    ``neck`` / ``mid_hip`` only when the inputs carry them (OpenPose), not re-derived."""
    present = {n for p in people for n, c in zip(p.names, p.conf) if c > 0}
    return tuple(n for n in model_names if n in present)


def default_camera(person: PersonKeypoints, fov_deg: float, focal: float) -> PinholeCamera:
    """The camera of an uncalibrated photo: identity pose, focal from ``focal`` (pixels) or the
    field of view across the longer side, principal point at the centre."""
    if person.image_size is None:
        raise ValueError(f"person '{person.person}': image size unknown (image missing?)")
    w, h = person.image_size
    f = focal if focal > 0 else focal_from_fov(w, h, fov_deg)
    return PinholeCamera(person.image, int(w), int(h), intrinsics(w, h, f), np.eye(3), np.zeros(3))


def _track_index(person: PersonKeypoints) -> int:
    """The person's index within its image (``<stem>#<i>`` ids), else 0."""
    match = re.search(r"#(\d+)$", person.person)
    return int(match.group(1)) if match else 0


def build_batch(people: Sequence[PersonKeypoints], model_names: Sequence[str], *,
                cameras: dict[str, PinholeCamera] | None = None, groups: Sequence[Sequence[str]] = (),
                sequence: bool = False,
                min_keypoints: int = 8, min_conf: float = 0.1, fov_deg: float = 55.0, focal: float = 0.0,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> BodyBatch:
    """Group ``people`` into bodies and build the batched observations (see the module doc)."""
    notes: list[str] = []
    cleaned: list[PersonKeypoints] = []
    for person in people:
        person, dropped = sanitize(person)
        notes += dropped
        cleaned.append(person)
    names = fit_names(cleaned, model_names)
    skipped: list[dict[str, str]] = []
    rows: list[BodyRow] = []
    if cameras:
        frame_of = {name: g for g, group in enumerate(groups) for name in group}
        bodies: dict[tuple[int, int], list[PersonKeypoints]] = {}
        for person in cleaned:
            if person.image not in cameras:
                skipped.append({"person": person.person, "reason": f"image '{person.image}' has no camera"})
                continue
            bodies.setdefault((frame_of.get(person.image, -1), _track_index(person)), []).append(person)
        for (frame, track), members in sorted(bodies.items()):
            body = members[0].person if len(members) == 1 else f"frame{max(frame, 0):03d}#{track}"
            rows.append(BodyRow(body, members, [cameras[p.image] for p in members]))
    else:
        for person in cleaned:
            rows.append(BodyRow(person.person, [person], [default_camera(person, fov_deg, focal)]))
    kept: list[BodyRow] = []
    for row in rows:
        counts = [int((person_points(p, names, min_conf)[1] > 0).sum()) for p in row.people]
        if max(counts, default=0) < min_keypoints:
            skipped.append({"person": row.body,
                            "reason": f"{max(counts, default=0)} confident keypoints (< {min_keypoints})"})
            continue
        kept.append(row)
    if sequence:
        kept.sort(key=lambda r: (_track_index(r.people[0]), r.people[0].image))
    return BodyBatch(_observations(kept, names, min_conf, dtype, device, sequence), kept, skipped, notes)


def _observations(rows: list[BodyRow], names: tuple[str, ...], min_conf: float, dtype: torch.dtype,
                  device: str | torch.device, sequence: bool) -> BodyObservations:
    batch, views = len(rows), max((len(r.people) for r in rows), default=1)
    xy = np.zeros((batch, views, len(names), 2))
    conf = np.zeros((batch, views, len(names)))
    rot = np.tile(np.eye(3), (batch, views, 1, 1))
    trans = np.zeros((batch, views, 3))
    k = np.tile(np.eye(3), (batch, views, 1, 1))
    box = np.ones((batch, views))
    for b, row in enumerate(rows):
        for v, (person, cam) in enumerate(zip(row.people, row.cameras)):
            xy[b, v], conf[b, v] = person_points(person, names, min_conf)
            rot[b, v], trans[b, v], k[b, v] = cam.R, cam.t, cam.K
            seen = conf[b, v] > 0
            extent = np.ptp(xy[b, v][seen], axis=0) if seen.sum() > 1 else np.ones(2)
            box[b, v] = box_size(person.bbox) if person.bbox is not None else max(float(extent.max()), 1.0)
    pairs = []
    if sequence:
        for b in range(1, batch):
            if _track_index(rows[b].people[0]) == _track_index(rows[b - 1].people[0]):
                pairs.append((b - 1, b))
    cast = {"dtype": dtype, "device": device}
    return BodyObservations(
        names, torch.as_tensor(xy, **cast), torch.as_tensor(conf, **cast), torch.as_tensor(rot, **cast),
        torch.as_tensor(trans, **cast), torch.as_tensor(k, **cast), torch.as_tensor(box, **cast),
        sequence_pairs=torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2))
