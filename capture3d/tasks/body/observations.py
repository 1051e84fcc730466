"""From detected people and cameras to the fitter's batched :class:`BodyObservations`.

Inputs: :class:`PersonKeypoints` (any format), optional calibrated cameras per image
(:class:`~capture3d.tasks.cameras.PinholeCamera`), the model's keypoint names and thresholds. Output:
a :class:`BodyBatch`:
the observations, one :class:`BodyRow` per body (its id and the people who see it), and the people
skipped with their reason (too few confident keypoints), never fitted to noise.

Grouping: without cameras every person is its own body (single view). With cameras, images are
grouped into multi-view frames by ``groups`` (lists of image names taken at one instant) and the
i-th person of every image of a frame is one body (one person per view is the common case); an image
no group lists is a frame of its own. A frame of one image is a single calibrated view.
Without ``groups`` (None) images are tied together only when that is unambiguous:

* all cameras share one centre (e.g. intrinsics only, R = I, t = 0): nothing can be triangulated,
  every image is separate people (noted);
* every person carries a track (an identity from the keypoint file): one body per track;
* else, with one person per image: one body when the views agree geometrically (the joints
  triangulated over all views reproject onto every view, in front of it:
  :func:`~capture3d.tasks.body.camera_check.views_consistent`), else every image is a separate
  person (noted);
* else (several people in an image and nothing to match them by, or too little to triangulate):
  :class:`GroupingError`, asking for ``groups``.

With ``sequence`` the images are video frames of one track each: without ``groups`` every image is
its own frame; body rows stay per frame, and consecutive frames of a track are paired for temporal
smoothness.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from capture3d.tasks.body.camera import focal_from_fov, intrinsics
from capture3d.tasks.body.camera_check import has_baseline, views_consistent
from capture3d.tasks.body.fit import BodyObservations
from capture3d.tasks.body.keypoint_io import PersonKeypoints, sanitize
from capture3d.tasks.body.metrics import box_size
from capture3d.tasks.body.model import derived_keypoint
from capture3d.tasks.cameras import PinholeCamera

logger = logging.getLogger(__name__)


class GroupingError(ValueError):
    """Calibrated images whose people cannot be tied into bodies without ``groups`` (one line)."""


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


def default_camera(
    person: PersonKeypoints, fov_deg: float, focal: float, known: Mapping[str, float] | None = None
) -> PinholeCamera:
    """The camera of an uncalibrated photo: identity pose, principal point at the centre, focal
    from ``focal`` (pixels) when set, else the image's own (``known``: image -> focal in pixels,
    e.g. from EXIF), else the field of view ``fov_deg`` across the longer side."""
    if person.image_size is None:
        raise ValueError(f"person '{person.person}': image size unknown (image missing?)")
    w, h = person.image_size
    f = focal if focal > 0 else (known or {}).get(person.image) or focal_from_fov(w, h, fov_deg)
    return PinholeCamera(person.image, int(w), int(h), intrinsics(w, h, f), np.eye(3), np.zeros(3))


def _track_index(person: PersonKeypoints) -> int:
    """The person's index within its image (``<stem>#<i>`` ids), else 0."""
    match = re.search(r"#(\d+)$", person.person)
    return int(match.group(1)) if match else 0


def _index_in_image(people: Sequence[PersonKeypoints]) -> dict[tuple[str, str], int]:
    """(image, person id) -> the person's index within its image: the ``#i`` of ``<stem>#<i>`` ids,
    else the order of appearance (COCO annotation ids carry no index)."""
    out: dict[tuple[str, str], int] = {}
    count: dict[str, int] = {}
    for p in people:
        k = count[p.image] = count.get(p.image, -1) + 1
        out[(p.image, p.person)] = _track_index(p) if re.search(r"#(\d+)$", p.person) else k
    return out


def _person_box(person: PersonKeypoints, xy: np.ndarray, conf: np.ndarray) -> float:
    """The person's box size in pixels: the given box, else the extent of the confident points."""
    if person.bbox is not None:
        return box_size(person.bbox)
    seen = conf > 0
    return max(float(np.ptp(xy[seen], axis=0).max()), 1.0) if seen.sum() > 1 else 1.0


def _frames_without_groups(
    people: Sequence[PersonKeypoints],
    cameras: dict[str, PinholeCamera],
    names: Sequence[str],
    min_conf: float,
    min_keypoints: int,
    sequence: bool,
    notes: list[str],
) -> dict[tuple[str, str], tuple[int, int]]:
    """How calibrated ``people`` form bodies when ``groups`` is absent (see the module doc):
    (image, person id) -> (frame, track); people with the same key are one body. People with fewer
    than ``min_keypoints`` confident points (to be skipped) stay apart and do not count."""
    everyone = {(p.image, p.person): (-1 - i, 0) for i, p in enumerate(people)}  # each apart
    people = [p for p in people if int((person_points(p, names, min_conf)[1] > 0).sum()) >= min_keypoints]
    images = list(dict.fromkeys(p.image for p in people))
    frame_of = {image: i for i, image in enumerate(images)}
    index = _index_in_image(people)
    separate = {**everyone, **{(p.image, p.person): (frame_of[p.image], index[(p.image, p.person)]) for p in people}}
    if len(images) <= 1 or sequence:
        return separate
    cams = [cameras[image] for image in images]
    rot, trans = np.stack([c.R for c in cams]), np.stack([c.t for c in cams])  # (V, 3, 3), (V, 3)
    if not has_baseline(rot, trans):
        note = (
            f"{len(images)} calibrated images without 'groups' share one camera centre (nothing to triangulate): "
            "fitted as separate people"
        )
        logger.info("%s", note)
        notes.append(note)
        return separate
    if all(p.track is not None for p in people):
        tracks = sorted({str(p.track) for p in people})
        seen: set[tuple[str, str]] = set()
        for p in people:
            if (p.image, str(p.track)) in seen:
                raise GroupingError(
                    f"image '{p.image}' holds two people with person id {p.track!r}: add 'groups' "
                    "to cameras.json (lists of the images that show one person at one instant)"
                )
            seen.add((p.image, str(p.track)))
        logger.info(
            "%d calibrated images without groups: people tied across images by their %d person ids",
            len(images),
            len(tracks),
        )
        return {**everyone, **{(p.image, p.person): (0, tracks.index(str(p.track))) for p in people}}
    per_image = {image: [p for p in people if p.image == image] for image in images}
    crowded = [(image, len(ps)) for image, ps in per_image.items() if len(ps) > 1]
    ask = "add 'groups' to cameras.json (lists of the images that show one person at one instant)"
    if crowded:
        image, count = crowded[0]
        raise GroupingError(
            f"{len(images)} calibrated images without 'groups' and {count} people in '{image}' with no "
            f"person ids to match them across images: {ask}"
        )
    views = [per_image[image][0] for image in images]
    pts = [person_points(p, names, min_conf) for p in views]
    xy = np.stack([x for x, _ in pts])  # (V, K, 2)
    conf = np.stack([c for _, c in pts])  # (V, K)
    box = np.array([_person_box(p, x, c) for p, (x, c) in zip(views, pts)])  # (V,)
    agree = views_consistent(xy, conf, np.stack([c.K for c in cams]), rot, trans, box, min_conf)
    if agree:
        note = (
            f"{len(images)} calibrated images without 'groups' (one person each) agree on one body: fitted as one "
            "multi-view body"
        )
        logger.info("%s", note)
        notes.append(note)
        return {**everyone, **{(p.image, p.person): (0, 0) for p in views}}
    if agree is None:
        raise GroupingError(
            f"{len(images)} calibrated images without 'groups' (one person each) have too few "
            f"keypoints seen in two views to tell whether they show one person: {ask}"
        )
    note = (
        f"{len(images)} calibrated images without 'groups' do not show one person (their keypoints do not "
        "triangulate consistently): fitted as separate people"
    )
    logger.warning("%s", note)
    notes.append(note)
    return separate


def build_batch(
    people: Sequence[PersonKeypoints],
    model_names: Sequence[str],
    *,
    cameras: dict[str, PinholeCamera] | None = None,
    groups: Sequence[Sequence[str]] | None = None,
    sequence: bool = False,
    min_keypoints: int = 8,
    min_conf: float = 0.1,
    fov_deg: float = 55.0,
    focal: float = 0.0,
    known_focals: Mapping[str, float] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> BodyBatch:
    """Group ``people`` into bodies and build the batched observations (see the module doc).

    ``groups`` None means the cameras file has none (images tied only when unambiguous, else
    :class:`GroupingError`); ``[]`` or a list ties the listed images and keeps the others apart.
    ``known_focals`` (image -> pixels, e.g. EXIF) sets uncalibrated photos' focal lengths unless
    ``focal`` is set."""
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
        calibrated = []
        for person in cleaned:
            if person.image not in cameras:
                skipped.append({"person": person.person, "reason": f"image '{person.image}' has no camera"})
                continue
            calibrated.append(person)
        if groups is None:
            key_of = _frames_without_groups(calibrated, cameras, names, min_conf, min_keypoints, sequence, notes)
        else:
            frames = {name: g for g, group in enumerate(groups) for name in group}
            alone = len(groups)
            for person in calibrated:  # an image no group lists is a frame of its own
                if person.image not in frames:
                    frames[person.image] = alone
                    alone += 1
            index = _index_in_image(calibrated)
            key_of = {(p.image, p.person): (frames[p.image], index[(p.image, p.person)]) for p in calibrated}
        bodies: dict[tuple[int, int], list[PersonKeypoints]] = {}
        for person in calibrated:
            bodies.setdefault(key_of[(person.image, person.person)], []).append(person)
        for (frame, track), members in sorted(bodies.items()):
            body = members[0].person if len(members) == 1 else f"frame{max(frame, 0):03d}#{track}"
            rows.append(BodyRow(body, members, [cameras[p.image] for p in members]))
    else:
        for person in cleaned:
            rows.append(BodyRow(person.person, [person], [default_camera(person, fov_deg, focal, known_focals)]))
    kept: list[BodyRow] = []
    for row in rows:
        counts = [int((person_points(p, names, min_conf)[1] > 0).sum()) for p in row.people]
        if max(counts, default=0) < min_keypoints:
            skipped.append(
                {"person": row.body, "reason": f"{max(counts, default=0)} confident keypoints (< {min_keypoints})"}
            )
            continue
        kept.append(row)
    if sequence:
        kept.sort(key=lambda r: (_track_index(r.people[0]), r.people[0].image))
    return BodyBatch(_observations(kept, names, min_conf, dtype, device, sequence), kept, skipped, notes)


def _observations(
    rows: list[BodyRow],
    names: tuple[str, ...],
    min_conf: float,
    dtype: torch.dtype,
    device: str | torch.device,
    sequence: bool,
) -> BodyObservations:
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
        names,
        torch.as_tensor(xy, **cast),
        torch.as_tensor(conf, **cast),
        torch.as_tensor(rot, **cast),
        torch.as_tensor(trans, **cast),
        torch.as_tensor(k, **cast),
        torch.as_tensor(box, **cast),
        sequence_pairs=torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2),
    )
