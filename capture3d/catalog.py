"""The pipeline, described once: capture kinds, their ordered steps, and everything about each step.

Inputs: none (a constant description; no Prefect, no DVC). Outputs: :data:`PIPELINES` and lookups.
Everything else derives from it: ``dvc.yaml`` (:mod:`capture3d.ops.dvc_yaml`), the Prefect flows
and the batch (which steps a kind runs, on which device, where each writes), the batch work keys
(the params sections a kind reads), DVC recording after a flow, the status table and the HTML
report's columns (summary keys), and the ``capture3d`` subcommands (``command``, ``display``).

Path templates use ``{capture}`` (the capture's folder), ``{results}`` (the capture's results
folder, one sub-folder per step), ``{name}`` (the capture's name), ``{data}`` (the kind's captures
folder) and ``{param:SECTION.KEY}`` (a value from params.yaml). A step writes ``{results}/<step>``
unless ``out`` says otherwise.

Adding a photos stage: write its task module and its stage module (``Inputs``, ``load_config``,
``run``, ``main``), add a :class:`Step` to the ``photos`` pipeline below and its params section.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

logger = logging.getLogger(__name__)

Device = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class Plot:
    """A CSV curve of a step for ``dvc plots``."""

    file: str
    """file inside the step's output folder"""
    x: str
    """column on the x axis"""
    y: str
    """column on the y axis"""


@dataclass(frozen=True)
class Step:
    """One stage of a pipeline."""

    name: str
    """DVC stage name, module ``capture3d.stages.<name>`` and (by default) its params section"""
    inputs: Mapping[str, str]
    """fields of the stage's ``Inputs`` -> path templates"""
    outs: tuple[str, ...] = ()
    """outputs DVC caches, inside the step's output folder ("." for the whole folder)"""
    deps: tuple[str, ...] = ()
    """data DVC tracks besides the input folders under ``{capture}``: templates"""
    sections: tuple[str, ...] = ()
    """params sections the stage reads (default: its name)"""
    metrics: str = "metrics.json"
    """metrics file inside the output folder ("" when the step writes none)"""
    plots: tuple[Plot, ...] = ()
    """training curves for ``dvc plots``"""
    device: Device = "cpu"
    """``gpu``: runs on CUDA when the machine has one (its kind goes to the GPU work pool)"""
    heavy: bool = False
    """large memory: a batch runs it in a child process when isolating stages"""
    summary: Mapping[str, str] = field(default_factory=dict)
    """metrics.json key -> summary key (status tables, manifests, report columns, regressions)"""
    display: tuple[str, ...] = ()
    """metrics the ``capture3d`` subcommand prints"""
    command: tuple[str, ...] = ()
    """the ``capture3d`` subcommand words, e.g. ("evaluate", "sfm")"""
    help: str = ""
    """one line for ``capture3d --help``"""
    needs_ground_truth: bool = False
    """flows skip the step (keeping the metrics before) when the stage's ``has_ground_truth`` says no"""
    per_capture: bool = True
    """foreach over the pipeline's captures; False: one run (samples, training)"""
    out: str = ""
    """output folder template (default ``{results}/<name>``)"""
    dvc_comment: str = ""
    """a comment written above the stage in dvc.yaml"""
    resume_state: str = ""
    """a long fit: the ``kind`` of the resume state its stage keeps beside its output
    (:func:`capture3d.stages.common.state_path_for`), which a batch with a remote also keeps there"""
    opt_in: bool = False
    """a training run or its evaluation: left out of ``dvc.yaml`` (``dvc repro`` in a fresh clone never starts it) and
    written to ``training/dvc.yaml`` by ``python -m capture3d.ops.dvc_yaml --write --training``"""

    @property
    def module(self) -> str:
        """The stage module."""
        return f"capture3d.stages.{self.name}"

    @property
    def params_sections(self) -> tuple[str, ...]:
        return self.sections or (self.name,)

    @property
    def out_template(self) -> str:
        return self.out or "{results}/" + self.name


@dataclass(frozen=True)
class Pipeline:
    """A capture kind (or a training pipeline) and its ordered steps."""

    kind: str
    """photos | scans | bodies | fcgf"""
    captures_key: str
    """the params.yaml list of the captures ``dvc repro`` processes"""
    captures_dir: str
    """where those captures live in the project"""
    steps: tuple[Step, ...]
    """in order; a step may use the outputs of the steps before it"""
    batch: bool = True
    """a kind the batch and the flows process (False: training pipelines)"""
    terminal: Mapping[str, str] = field(default_factory=dict)
    """summary key -> short column title: the few metrics the terminal status tables show (every
    metric is in the report and in ``capture3d results``); ``*`` in a key matches several"""

    @property
    def capture_steps(self) -> tuple[Step, ...]:
        """The per-capture steps: what a flow or the batch runs for one capture."""
        return tuple(s for s in self.steps if s.per_capture)

    @property
    def sections(self) -> tuple[str, ...]:
        """The params sections the per-capture steps read (part of a batch work key)."""
        return tuple(dict.fromkeys(sec for s in self.capture_steps for sec in s.params_sections))

    @property
    def device(self) -> Device:
        """``gpu`` when any per-capture step uses the GPU: the work pool the kind belongs to."""
        return "gpu" if any(s.device == "gpu" for s in self.capture_steps) else "cpu"


def _m(**keys: str) -> Mapping[str, str]:
    return MappingProxyType(keys)


_SFM_DISPLAY = (
    "registered_fraction",
    "num_registered",
    "num_images",
    "num_models",
    "num_points3d",
    "mean_track_length",
    "mean_reprojection_error_px",
    "rotation_error_deg_median",
    "rotation_error_deg_max",
    "position_error_median",
    "position_error_max",
    "auc_rel_pose_5deg",
)
_REGISTRATION_DISPLAY = (
    "num_scans",
    "num_placed",
    "num_low_confidence",
    "num_within_tolerance",
    "ape_rotation_deg_median",
    "ape_rotation_deg_max",
    "ape_translation_median",
    "ape_translation_max",
    "registration_recall",
    "num_pairs",
    "fused_chamfer",
    "fused_precision",
    "fused_recall",
    "fused_fscore",
    "voxel_size",
    "num_confident_pairs",
    "mean_pair_fitness",
    "mean_pair_inlier_rmse",
)
_NVS_DISPLAY = (
    "psnr",
    "ssim",
    "psnr_init",
    "ssim_init",
    "num_train_views",
    "num_test_views",
    "resolution",
    "num_init_points",
    "num_gaussians",
    "iterations",
    "stopped",
    "fit_s",
    "wall_s",
    "peak_memory_mb",
    "device",
    "backend",
)
_BODY_DISPLAY = (
    "people_fitted",
    "people_skipped",
    "bodies",
    "reference_2d",
    "median_error_px",
    "median_error_norm",
    "median_pck_0.1",
    "median_mpjpe_mm",
    "median_pa_mpjpe_mm",
    "mean_mpjpe_mm",
    "mean_pa_mpjpe_mm",
    "iterations",
    "fit_seconds",
    "seconds_per_iteration",
)
_BODY_SUMMARY = _m(
    num_skipped_files="skipped_inputs",  # unreadable keypoint files, skipped and listed
    people_fitted="bodies_fitted",
    people_skipped="bodies_skipped",
    median_error_norm="body_error_norm",
    median_mpjpe_mm="body_mpjpe_mm",
    median_pa_mpjpe_mm="body_pa_mpjpe_mm",
)
_SFM_SUMMARY = _m(
    num_skipped_files="skipped_inputs",  # the bad-input policy: unreadable items skipped and listed
    registered_fraction="registered_fraction",
    num_points3d="num_points3d",
    mean_reprojection_error_px="mean_reprojection_error_px",
)
_NVS_OUT = ("heldout", "orbit")
_CURVE = (Plot("train_log.csv", "iteration", "loss"),)

PHOTOS = Pipeline(
    "photos",
    "captures",
    "data/captures",
    (
        Step(
            "synthesize",
            {},
            outs=(".",),
            metrics="",
            per_capture=False,
            out="{data}/demo",
            command=("synthesize",),
            help="write the deterministic synthetic photo capture",
        ),
        Step(
            "sfm",
            _m(capture="{capture}"),
            outs=("sparse", "undistorted", "points.ply", "transforms.json"),
            heavy=True,
            summary=_SFM_SUMMARY,
            display=_SFM_DISPLAY,
            command=("sfm",),
            help="Structure-from-Motion on a folder of photos",
        ),
        Step(
            "evaluate_sfm",
            _m(model="{results}/sfm", capture="{capture}"),
            deps=("{results}/sfm/sparse", "{results}/sfm/metrics.json"),
            summary=_m(
                registered_fraction="registered_fraction",
                num_points3d="num_points3d",
                mean_reprojection_error_px="mean_reprojection_error_px",
                rotation_error_deg_median="rotation_error_deg_median",
                position_error_median="position_error_median",
                auc_rel_pose_5deg="auc_rel_pose_5deg",
            ),
            display=_SFM_DISPLAY,
            command=("evaluate", "sfm"),
            needs_ground_truth=True,
            help="SfM metrics, against ground truth when given",
        ),
        Step(
            "fit_gaussians",
            _m(capture="{results}/sfm"),
            deps=("{results}/sfm/sparse", "{results}/sfm/undistorted"),
            outs=("gaussians.ply", *_NVS_OUT),
            plots=_CURVE,
            device="gpu",
            heavy=True,
            summary=_m(psnr="gaussians_psnr", ssim="gaussians_ssim"),
            display=_NVS_DISPLAY,
            command=("fit", "gaussians"),
            resume_state="fit_gaussians",
            help="3D Gaussian Splatting, evaluated on every 8th view held out",
            dvc_comment="Novel-view synthesis from each capture's SfM output (undistorted pinhole images and\n"
            "points), evaluated on every 8th view held out.",
        ),
        Step(
            "fit_nerf",
            _m(capture="{results}/sfm"),
            deps=("{results}/sfm/sparse", "{results}/sfm/undistorted"),
            outs=("nerf.pt", *_NVS_OUT),
            plots=_CURVE,
            device="gpu",
            heavy=True,
            summary=_m(psnr="nerf_psnr", ssim="nerf_ssim"),
            display=_NVS_DISPLAY,
            command=("fit", "nerf"),
            resume_state="fit_nerf",
            help="NeRF, evaluated on every 8th view held out",
        ),
    ),
    terminal=_m(registered_fraction="registered", gaussians_psnr="3DGS dB", nerf_psnr="NeRF dB"),
)

SCANS = Pipeline(
    "scans",
    "scan_captures",
    "data/scan_captures",
    (
        Step(
            "synthesize_scans",
            {},
            outs=(".",),
            metrics="",
            per_capture=False,
            out="{data}/demo_scans",
            command=("synthesize-scans",),
            help="write the deterministic synthetic scan capture",
        ),
        Step(
            "register_scans",
            _m(capture="{capture}"),
            deps=("{param:register_scans.fcgf.checkpoint}",),
            outs=("poses.json", "pairs.json", "fused.ply", "fcgf_adapted"),
            heavy=True,
            summary=_m(
                num_skipped_scans="skipped_inputs",
                num_placed="num_placed",
                num_low_confidence="num_low_confidence",
                partial="partial",
            ),
            display=(*_REGISTRATION_DISPLAY, "num_points_fused"),
            command=("register",),
            help="multiway registration of a folder of scans",
            dvc_comment="With register_scans.features: fcgf the stage reads ${register_scans.fcgf.checkpoint}\n"
            "(by default the model shipped in the package), a dep; with fcgf.adapt: true it writes the\n"
            "adapted model to fcgf_adapted/.",
        ),
        Step(
            "evaluate_registration",
            _m(result="{results}/register_scans", capture="{capture}"),
            deps=tuple(
                f"{{results}}/register_scans/{f}" for f in ("poses.json", "pairs.json", "fused.ply", "metrics.json")
            ),
            summary=_m(
                num_within_tolerance="num_within_tolerance",
                ape_rotation_deg_max="ape_rotation_deg_max",
                ape_translation_max="ape_translation_max",
                registration_recall="registration_recall",
                fused_fscore="fused_fscore",
            ),
            display=_REGISTRATION_DISPLAY,
            command=("evaluate", "registration"),
            needs_ground_truth=True,
            help="registration metrics against ground-truth poses",
        ),
    ),
    terminal=_m(num_placed="placed", num_within_tolerance="within tol", ape_rotation_deg_max="max rot err"),
)

FCGF = Pipeline(
    "fcgf",
    "scan_captures",
    "data/scan_captures",
    (
        Step(
            "train_fcgf",
            {},
            outs=("model.pt",),
            per_capture=False,
            opt_in=True,
            out="models/fcgf",
            plots=(Plot("train_log.csv", "iteration", "loss"), Plot("validation.csv", "iteration", "fmr")),
            device="gpu",
            display=(
                "iterations",
                "resumed_from",
                "num_train_pairs",
                "num_val_pairs",
                "loss_first_50",
                "loss_last_50",
                "val_fmr_initial",
                "val_fmr",
                "val_inlier_ratio_initial",
                "val_inlier_ratio",
                "seconds_per_iteration",
                "wall_s",
                "device",
            ),
            command=("train", "fcgf"),
            resume_state="train",
            help="train FCGF (PointInfoNCE or hardest-contrastive) on synthetic and given scan pairs",
        ),
        Step(
            "evaluate_features",
            _m(capture="{capture}", checkpoint="{param:register_scans.fcgf.checkpoint}"),
            deps=("{param:register_scans.fcgf.checkpoint}",),
            sections=("evaluate_features", "register_scans"),
            summary=_m(
                **{
                    "features.*.feature_match_recall": "*_feature_match_recall",
                    "features.*.registration_recall": "*_registration_recall",
                }
            ),
            command=("evaluate", "features"),
            needs_ground_truth=True,
            opt_in=True,
            help="FCGF vs FPFH: feature-match recall, inlier ratio, registration recall",
        ),
    ),
    batch=False,
    terminal=_m(**{"*_registration_recall": "* recall"}),
)

BODIES = Pipeline(
    "bodies",
    "body_captures",
    "data/body_captures",
    (
        Step(
            "synthesize_bodies",
            {},
            outs=(".",),
            metrics="",
            per_capture=False,
            out="{data}/demo_bodies",
            command=("synthesize-bodies",),
            help="write the synthetic body capture (Anny bodies, keypoints, truth)",
        ),
        Step(
            "fit_bodies",
            _m(capture="{capture}"),
            deps=("capture3d/models/anny_pose_prior_cmu.npz",),
            outs=("people.json", "params", "meshes", "overlays"),
            plots=(Plot("fit_log.csv", "iteration", "loss"),),
            device="gpu",
            heavy=True,
            summary=_BODY_SUMMARY,
            display=_BODY_DISPLAY,
            command=("fit", "bodies"),
            help="SMPLify-style body fitting to 2D keypoints (single or multi-view, batched)",
            dvc_comment="Body fitting of every person in each body capture (one batched optimisation per capture).\n"
            "With fit_bodies.pose_prior: learned and model: anny it reads the shipped pose prior (a dep).",
        ),
        Step(
            "evaluate_bodies",
            _m(result="{results}/fit_bodies", capture="{capture}"),
            deps=("{results}/fit_bodies/people.json",),
            summary=_BODY_SUMMARY,
            display=_BODY_DISPLAY,
            command=("evaluate", "bodies"),
            needs_ground_truth=True,
            help="body fits against 2D / 3D ground truth: error, PCK, MPJPE, PA-MPJPE",
        ),
    ),
    terminal=_m(bodies_fitted="fitted", body_mpjpe_mm="MPJPE mm", body_pa_mpjpe_mm="PA-MPJPE mm"),
)

PIPELINES: tuple[Pipeline, ...] = (PHOTOS, SCANS, FCGF, BODIES)
"""Every pipeline, in dvc.yaml order."""


def pipeline(kind: str) -> Pipeline:
    """The pipeline of a capture kind; ``KeyError`` naming the known kinds otherwise."""
    for p in PIPELINES:
        if p.kind == kind:
            return p
    raise KeyError(f"unknown capture kind {kind!r} (known: {', '.join(p.kind for p in PIPELINES)})")


def batch_kinds() -> tuple[str, ...]:
    """The capture kinds the batch and the flows process."""
    return tuple(p.kind for p in PIPELINES if p.batch)


def steps() -> tuple[Step, ...]:
    """Every step of every pipeline, in dvc.yaml order."""
    return tuple(s for p in PIPELINES for s in p.steps)


def step(name: str) -> Step:
    """A step by name; ``KeyError`` otherwise."""
    for s in steps():
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}")


def pipeline_of(name: str) -> Pipeline:
    """The pipeline a step belongs to."""
    return next(p for p in PIPELINES if any(s.name == name for s in p.steps))


def summary_keys() -> tuple[str, ...]:
    """Every summary key, in pipeline order: the columns of status tables and reports."""
    keys = [k for s in steps() for k in s.summary.values() if k != "partial" and "*" not in k]
    return tuple(dict.fromkeys(keys))


def fill(template: str, **values: object) -> str:
    """Fill a path template: ``{capture}``, ``{results}``, ``{name}`` and ``{data}`` from ``values``;
    ``{param:SECTION.KEY}`` through ``values["param"]``, a function of the key or a format string
    such as ``"${{{}}}"`` (DVC's templating)."""
    param = values.pop("param", None)
    text = template
    while "{param:" in text:
        start = text.index("{param:")
        end = text.index("}", start)
        key = text[start + len("{param:") : end]
        value = param(key) if callable(param) else str(param).format(key)
        text = text[:start] + value + text[end + 1 :]
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text
