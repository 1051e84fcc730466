"""DVC stage ``synthesize_bodies``: the embedded synthetic body capture, generated deterministically.

Inputs: the ``synthesize_bodies`` section of params.yaml (no files). Output folder (written
atomically), in the body-capture layout the ``fit_bodies`` stage reads:
``images/bodyNN_viewV.png`` (the ground-truth Anny mesh drawn over a grey backdrop),
``keypoints/bodyNN_viewV_keypoints.json`` (OpenPose BODY_25 with the feet, projected with
Gaussian pixel noise), ``cameras.json`` (known intrinsics and poses; ``groups`` lists the views of
each body), ``gt/keypoints2d/`` (the exact projections) and ``gt/joints3d.json`` (the 3D keypoints,
metres, by body id).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.stages.common import NoInputs
from capture3d.tasks.body.camera import project
from capture3d.tasks.body.cameras_io import write_cameras_json
from capture3d.tasks.body.keypoint_io import PersonKeypoints, write_openpose
from capture3d.tasks.body.model import COCO17, FEET, BodyModel
from capture3d.tasks.body.overlay import draw_overlay, write_png
from capture3d.tasks.cameras import PinholeCamera
from capture3d.tasks.synthesis.bodies import SyntheticBodies, synthesize_bodies

logger = logging.getLogger(__name__)

Inputs = NoInputs


@dataclass(frozen=True)
class SynthesizeBodiesConfig:
    """Settings of the synthetic body capture (the ``synthesize_bodies`` section)."""

    count: int
    """bodies (random Anny poses and shapes)"""
    views: int
    """calibrated views per body (1: single-view photos with known intrinsics)"""
    width: int
    """image width in pixels"""
    height: int
    """image height in pixels"""
    fov_deg: float
    """horizontal field of view in degrees"""
    noise_px: float
    """Gaussian noise added to the projected keypoints, pixels"""
    seed: int
    """random seed of the poses, shapes, cameras and noise"""


def load_config(params: Mapping[str, Any]) -> SynthesizeBodiesConfig:
    return section(params, "synthesize_bodies", SynthesizeBodiesConfig)


def run(inputs: NoInputs, out: Path, config: SynthesizeBodiesConfig, model: BodyModel | None = None) -> Path:
    """Generate the capture into ``out``; returns ``out``. ``model`` reuses an already built Anny model."""
    if model is None:
        from capture3d.tasks.body.anny_model import AnnyBody

        model = AnnyBody()
    names = COCO17 + FEET
    syn = synthesize_bodies(
        model,
        count=config.count,
        views=config.views,
        width=config.width,
        height=config.height,
        fov_deg=config.fov_deg,
        noise_px=config.noise_px,
        names=names,
        seed=config.seed,
    )
    with atomic_dir(out) as tmp:
        write_body_capture(tmp, model, syn)
    logger.info("synthetic body capture: %d bodies x %d views -> %s", config.count, config.views, out)
    return out


def write_body_capture(folder: Path, model: BodyModel, syn: SyntheticBodies) -> None:
    """Write ``syn`` in the body-capture layout (see the module docstring)."""
    for sub in ("images", "keypoints", "gt/keypoints2d"):
        (folder / sub).mkdir(parents=True)
    with torch.no_grad():
        verts = model.vertices(syn.pose).to(torch.float64)
    cameras: dict[str, PinholeCamera] = {}
    groups, joints3d = [], {}
    count, views = syn.xy.shape[:2]
    for b in range(count):
        group = []
        for v in range(views):
            stem = f"body{b:02d}_view{v}"
            image = f"{stem}.png"
            group.append(image)
            cameras[image] = PinholeCamera(image, syn.width, syn.height, syn.k, syn.rot[b, v], syn.trans[b, v])
            rot = torch.as_tensor(syn.rot[b : b + 1, v : v + 1])
            trans = torch.as_tensor(syn.trans[b : b + 1, v : v + 1])
            kmat = torch.as_tensor(syn.k)[None, None]
            mesh_xy, depth = project(verts[b : b + 1], rot, trans, kmat)
            backdrop = np.full((syn.height, syn.width, 3), 90, dtype=np.uint8)
            write_png(
                folder / "images" / image,
                draw_overlay(
                    backdrop,
                    mesh_xy=mesh_xy[0, 0].numpy(),
                    mesh_depth=depth[0, 0].numpy(),
                    faces=model.faces,
                    mesh_alpha=1.0,
                    focal_px=float(syn.k[0, 0]),
                ),
            )
            for sub, xy in (("keypoints", syn.xy[b, v]), ("gt/keypoints2d", syn.xy_clean[b, v])):
                person = PersonKeypoints(
                    image=image,
                    person=f"{stem}#0",
                    names=syn.names,
                    xy=xy,
                    conf=np.ones(len(syn.names)),
                    image_size=(syn.width, syn.height),
                )
                write_openpose(person, folder / sub / f"{stem}_keypoints.json")
        groups.append(group)
        body = f"{group[0].removesuffix('.png')}#0" if views == 1 else f"frame{b:03d}#0"
        joints3d[body] = {n: syn.points[b, k].tolist() for k, n in enumerate(syn.names)}
    write_cameras_json(folder / "cameras.json", cameras)
    data = json.loads((folder / "cameras.json").read_text())
    data["groups"] = groups
    (folder / "cameras.json").write_text(json.dumps(data, indent=1) + "\n")
    (folder / "gt" / "joints3d.json").write_text(json.dumps(joints3d, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
