"""Video-length body fits: long sequences in overlapping chunks, with bounded memory.

Inputs: a :class:`~capture3d.tasks.body.model.BodyModel`, :class:`BodyObservations` whose
``sequence_pairs`` link consecutive frames of each track (person), a :class:`BodyFitConfig` and a
:class:`ChunkConfig`. Output: one :class:`BodyFitResult` over every row, as :func:`fit_bodies`
would give, but computed chunk by chunk.

1. **Shape once per person**: each track's shape is fitted on up to ``shape_frames`` frames spread
   evenly over the track, and their mean shape is held fixed for the whole track.
2. **Chunks**: each track is cut into windows of ``chunk_frames`` consecutive frames, each window
   overlapping the previous one by ``overlap_frames``; a window is one :func:`fit_bodies` call with
   its own temporal smoothness, so memory depends on the window, not on the video length.
3. **Seams**: over each overlap the two windows' parameters are blended linearly, from all of the
   earlier window to all of the later one, so smoothness carries across the boundary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from capture3d.progress import report as report_progress
from capture3d.tasks.body.fit import BodyFitConfig, BodyFitResult, BodyObservations, fit_bodies
from capture3d.tasks.body.model import BodyModel, BodyPose
from capture3d.tasks.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkConfig:
    """How a long sequence is cut into chunks."""

    chunk_frames: int = 256
    """frames per chunk (one batched fit each): bounds the memory"""
    overlap_frames: int = 16
    """frames shared by consecutive chunks, blended across the seam"""
    shape_frames: int = 64
    """frames per person (spread over the track) that estimate its one shape"""


def sequence_tracks(pairs: torch.Tensor, batch: int) -> list[list[int]]:
    """The rows of each track in frame order, from ``pairs`` (P, 2) (earlier, later); rows in no
    pair are tracks of one frame. Raises ValueError when a row has two successors (not a chain)."""
    nxt: dict[int, int] = {}
    has_prev: set[int] = set()
    for a, b in pairs.tolist():
        if a in nxt or b in has_prev:
            raise ValueError(f"sequence pairs do not form chains (row {a} -> {b})")
        nxt[a] = b
        has_prev.add(b)
    tracks = []
    for row in range(batch):
        if row in has_prev:
            continue
        track = [row]
        while track[-1] in nxt:
            track.append(nxt[track[-1]])
        tracks.append(track)
    return tracks


def windows(length: int, chunk: ChunkConfig) -> list[tuple[int, int]]:
    """[start, end) frame windows covering ``length`` frames, consecutive ones sharing the overlap."""
    if chunk.chunk_frames <= chunk.overlap_frames:
        raise ValueError(f"chunk_frames {chunk.chunk_frames} must exceed overlap_frames {chunk.overlap_frames}")
    out, start = [], 0
    while True:
        end = min(start + chunk.chunk_frames, length)
        out.append((start, end))
        if end == length:
            return out
        start = end - chunk.overlap_frames


def _subset(obs: BodyObservations, rows: list[int], linked: bool) -> BodyObservations:
    """The observations of ``rows`` (in that order); ``linked``: consecutive rows are one sequence."""
    idx = torch.as_tensor(rows, dtype=torch.long)
    pairs = torch.stack([torch.arange(len(rows) - 1), torch.arange(1, len(rows))], 1) if linked else None
    return BodyObservations(
        obs.names,
        obs.xy[idx],
        obs.conf[idx],
        obs.rot[idx],
        obs.trans[idx],
        obs.k[idx],
        obs.box[idx],
        sequence_pairs=pairs if pairs is not None else torch.zeros(0, 2, dtype=torch.long),
    )


def _blend_rotations(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Axis-angle rotations (..., 3) from ``a`` towards ``b`` by ``w`` (broadcast), along the
    geodesic: ``a exp(w log(a^T b))``."""
    ra, rb = axis_angle_to_matrix(a), axis_angle_to_matrix(b)
    delta = matrix_to_axis_angle(ra.transpose(-1, -2) @ rb).to(a)
    return matrix_to_axis_angle(ra @ axis_angle_to_matrix(w[..., None] * delta)).to(a)


def fit_sequence(model: BodyModel, obs: BodyObservations, config: BodyFitConfig, chunk: ChunkConfig) -> BodyFitResult:
    """Fit every row of ``obs`` chunk by chunk (see the module docstring); rows of a track must be
    linked by ``obs.sequence_pairs``. The loss curve is the chunks' curves one after another."""
    tracks = sequence_tracks(obs.sequence_pairs, obs.batch_size)
    zero = model.zero_pose(obs.batch_size)
    out = {name: t.clone() for name, t in zip(("global_orient", "body_pose", "shape", "transl"), zero.tensors())}
    scale = torch.ones(obs.batch_size, dtype=model.dtype, device=model.device)
    facing = torch.zeros(obs.batch_size, dtype=torch.bool, device=model.device)
    hypothesis = torch.zeros(obs.batch_size, dtype=torch.long, device=model.device)
    terms: dict[str, torch.Tensor] = {}
    curve: list[dict[str, float]] = []
    iterations = 0
    total = sum(len(windows(len(t), chunk)) for t in tracks)
    done = 0
    for track in tracks:
        picks = sorted({int(round(i)) for i in np.linspace(0, len(track) - 1, min(chunk.shape_frames, len(track)))})
        shaped = fit_bodies(model, _subset(obs, [track[i] for i in picks], linked=False), config)
        shape = shaped.pose.shape.mean(0, keepdim=True)  # (1, S)
        previous: tuple[int, int] | None = None
        for start, end in windows(len(track), chunk):
            rows = track[start:end]
            result = fit_bodies(model, _subset(obs, rows, linked=True), config, shape=shape.expand(len(rows), -1))
            idx = torch.as_tensor(rows, dtype=torch.long, device=model.device)
            fitted = dict(zip(("global_orient", "body_pose", "shape", "transl"), result.pose.tensors(), strict=True))
            seam = previous[1] - start if previous else 0  # frames shared with the previous window
            if seam > 0:
                w = torch.linspace(0.0, 1.0, seam + 2, dtype=model.dtype, device=model.device)[1:-1]  # (seam,)
                old = idx[:seam]
                for name in ("global_orient", "body_pose"):
                    weight = w.view(-1, *([1] * (fitted[name].dim() - 2)))
                    fitted[name][:seam] = _blend_rotations(out[name][old], fitted[name][:seam], weight)
                fitted["transl"][:seam] = out["transl"][old] + w[:, None] * (
                    fitted["transl"][:seam] - out["transl"][old]
                )
            for name, value in fitted.items():
                out[name][idx] = value
            scale[idx] = result.scale
            facing[idx] = result.facing_away
            hypothesis[idx] = result.hypothesis
            for name, value in result.terms.items():
                terms.setdefault(name, torch.zeros(obs.batch_size, dtype=value.dtype, device=value.device))[idx] = value
            curve += [{**row, "iteration": row["iteration"] + iterations} for row in result.curve]
            iterations += result.iterations
            previous = (start, end)
            done += 1
            report_progress(logger, "fit bodies (chunks)", done, total)
    pose = BodyPose(out["global_orient"], out["body_pose"], out["shape"], out["transl"])
    return BodyFitResult(pose, scale, facing, hypothesis, terms, curve, iterations)
