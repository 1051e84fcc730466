"""2D keypoint formats as ordered tuples of canonical names, their mapping onto a body model, and
the skeleton drawn over images.

Inputs: a format's name (``coco17``, ``coco18``, ``body25``, ``hand21_left``, ``hand21_right``,
``face70``) or a number of points; a model's ``keypoint_names``. Outputs: the format's names in
file order (:data:`FORMATS`), ``(index in format, canonical name)`` pairs for the points a model
can use (:func:`mapping_table`), and :data:`SKELETON_EDGES` (pairs of canonical names).

Orders (each checked against its source):

* ``coco17``: the COCO person keypoints (``categories[0].keypoints`` of the COCO annotations).
* ``body25``: OpenPose ``POSE_BODY_25_BODY_PARTS`` (openpose ``poseParameters.cpp`` and
  ``doc/02_output.md``): Nose, Neck, RShoulder, RElbow, RWrist, LShoulder, LElbow, LWrist, MidHip,
  RHip, RKnee, RAnkle, LHip, LKnee, LAnkle, REye, LEye, REar, LEar, LBigToe, LSmallToe, LHeel,
  RBigToe, RSmallToe, RHeel.
* ``coco18``: OpenPose ``POSE_COCO_BODY_PARTS`` (BODY_25 without MidHip and the feet).
* ``hand21_*``: OpenPose's hand model: root (wrist), then thumb, index, middle, ring, pinky, 4
  points each from the palm outwards (the canonical ``{side}_hand_root``, ``{side}_thumb1``...).
* ``face70``: OpenPose's 70 face points, named ``face00``..``face69``. They are not canonical: no
  model maps them; they are read and carried but unused.

A file that declares its own joint names (COCO ``categories[].keypoints``) is read by name with
:func:`layout_from_names`: case, separators, camelCase and ``l_``/``left``/``_l`` side spellings are
normalised (``LShoulder``, ``shoulder_left`` -> ``left_shoulder``), the Human3.6M ``*_foot`` is the
ankle, and the joints of Human3.6M / MPI-INF-3DHP that no model has (``pelvis`` / ``root``,
``spine``, ``thorax``, ``neck_base``, ``head``, ``head_top``) are carried under those names but unused.
Any other name, or two names for one joint, is refused (:class:`LayoutError`).
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Sequence
from types import MappingProxyType

from capture3d.tasks.body.model import COCO17, FINGERS, HANDS

logger = logging.getLogger(__name__)

BODY25 = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "mid_hip",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
    "left_big_toe",
    "left_small_toe",
    "left_heel",
    "right_big_toe",
    "right_small_toe",
    "right_heel",
)
COCO18 = tuple(name for name in BODY25[:19] if name != "mid_hip")
HAND21_LEFT = HANDS[:21]
HAND21_RIGHT = HANDS[21:]
FACE70 = tuple(f"face{i:02d}" for i in range(70))

FORMATS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "coco17": COCO17,
        "coco18": COCO18,
        "body25": BODY25,
        "hand21_left": HAND21_LEFT,
        "hand21_right": HAND21_RIGHT,
        "face70": FACE70,
    }
)

# Which format a part of a file holds, by its number of points. Parts: "pose" (a body),
# "hand_left", "hand_right", "face" (OpenPose's ``*_keypoints_2d`` arrays).
_FORMAT_BY_PART_AND_COUNT: MappingProxyType[tuple[str, int], str] = MappingProxyType(
    {
        ("pose", 17): "coco17",
        ("pose", 18): "coco18",
        ("pose", 25): "body25",
        ("hand_left", 21): "hand21_left",
        ("hand_right", 21): "hand21_right",
        ("face", 70): "face70",
    }
)


def format_names(name: str) -> tuple[str, ...]:
    """The names of format ``name`` in file order; ``a+b`` concatenates formats (OpenPose files
    hold a body, two hands and a face per person). Raises KeyError for an unknown format."""
    names: tuple[str, ...] = ()
    for part in name.split("+"):
        if part not in FORMATS:
            raise KeyError(f"unknown keypoint format {part!r} (known: {', '.join(FORMATS)})")
        names += FORMATS[part]
    return names


def format_for(num_points: int, part: str = "pose") -> str | None:
    """The format of ``num_points`` points of ``part`` (``pose``, ``hand_left``, ``hand_right``,
    ``face``): 17 -> coco17, 18 -> coco18, 25 -> body25 for a pose; None when none fits."""
    return _FORMAT_BY_PART_AND_COUNT.get((part, int(num_points)))


class LayoutError(ValueError):
    """Declared keypoint names that cannot be mapped onto the canonical vocabulary (one line)."""


# Joints of other skeletons (Human3.6M, MPI-INF-3DHP) that no model has: carried by these names, unused.
_EXTRA_JOINTS: MappingProxyType[str, str] = MappingProxyType(
    {
        "pelvis": "pelvis",
        "root": "pelvis",
        "hip": "pelvis",
        "hips": "pelvis",
        "spine": "spine",
        "thorax": "thorax",
        "chest": "thorax",
        "neck_base": "neck_base",
        "neck_nose": "neck_base",
        "head": "head",
        "head_top": "head_top",
        "headtop": "head_top",
        "top_of_head": "head_top",
    }
)
# Sided joints spelt differently in other layouts (the part after the side).
_PART_ALIASES: MappingProxyType[str, str] = MappingProxyType(
    {
        "foot": "ankle",
        "bigtoe": "big_toe",
        "smalltoe": "small_toe",
    }
)
_SIDES = (("left", "l"), ("right", "r"))


def _normalise(name: str) -> str:
    """``LShoulder`` / ``Left Shoulder`` / ``left-shoulder`` -> ``l_shoulder`` / ``left_shoulder``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", str(name).strip())
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def _known_names() -> dict[str, str]:
    """Normalised spelling -> canonical name, for every name :func:`layout_from_names` accepts."""
    known: dict[str, str] = {}
    for names in FORMATS.values():
        for name in names:
            known[_normalise(name)] = name
    known.update(_EXTRA_JOINTS)
    for canonical in list(known.values()):
        for side, short in _SIDES:
            if canonical.startswith(f"{side}_"):
                part = canonical[len(side) + 1 :]
                for spelling in (f"{short}_{part}", f"{part}_{side}", f"{part}_{short}", f"{side}{part}"):
                    known.setdefault(spelling, canonical)
    for alias, part in _PART_ALIASES.items():
        for side, short in _SIDES:
            for spelling in (f"{side}_{alias}", f"{short}_{alias}", f"{alias}_{side}", f"{alias}_{short}"):
                known.setdefault(spelling, f"{side}_{part}")
    known.update({"midhip": "mid_hip", "mid_hip": "mid_hip"})
    return known


_KNOWN_NAMES: MappingProxyType[str, str] = MappingProxyType(_known_names())


def layout_from_names(declared: Sequence[str]) -> tuple[str, ...]:
    """The canonical names of a file's declared keypoint names, in the file's order.

    Raises :class:`LayoutError` (one line) for a name that is not a known joint, or two names that
    are the same joint (e.g. ``right_foot`` and ``right_ankle``)."""
    out: list[str] = []
    unknown = [str(n) for n in declared if _normalise(n) not in _KNOWN_NAMES]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise LayoutError(
            f"unknown keypoint name(s) {shown}: known layouts are COCO-17, BODY_25, Human3.6M "
            "and MPI-INF-3DHP joint names"
        )
    first: dict[str, str] = {}
    for name in declared:
        canonical = _KNOWN_NAMES[_normalise(name)]
        if canonical in first:
            raise LayoutError(
                f"keypoint names {first[canonical]!r} and {str(name)!r} are the same joint ({canonical!r})"
            )
        first[canonical] = str(name)
        out.append(canonical)
    return tuple(out)


def layout_label(names: Sequence[str]) -> str:
    """``coco17`` (or another format's name) when ``names`` are exactly that format, else ``custom<K>``."""
    names = tuple(names)
    for label, fmt in FORMATS.items():
        if names == fmt:
            return label
    return f"custom{len(names)}"


def mapping_table(format_names: Sequence[str], model_keypoints: Sequence[str]) -> list[tuple[int, str]]:
    """``(index in the format, canonical name)`` for every point of the format that the model
    produces, in format order. Names the model lacks (``face00``, or ``neck`` for a model without
    it) are left out; a name repeated in the format maps once, from its first index."""
    usable = set(model_keypoints)
    table: list[tuple[int, str]] = []
    seen: set[str] = set()
    for i, name in enumerate(format_names):
        if name in usable and name not in seen:
            table.append((i, name))
            seen.add(name)
    return table


def _hand_edges(side: str) -> tuple[tuple[str, str], ...]:
    edges: list[tuple[str, str]] = [(f"{side}_wrist", f"{side}_hand_root")]
    for finger in FINGERS:
        chain = [f"{side}_hand_root", *(f"{side}_{finger}{i}" for i in range(1, 5))]
        edges += itertools.pairwise(chain)
    return tuple(edges)


# Skeleton edges (pairs of canonical names) by body part; a drawing draws the edges whose two
# ends a person has. Both the COCO torso (shoulders, hips) and OpenPose's neck / mid_hip are here.
EDGE_GROUPS: MappingProxyType[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "limbs": tuple(
            (f"{side}_{a}", f"{side}_{b}")
            for side in ("left", "right")
            for a, b in (("shoulder", "elbow"), ("elbow", "wrist"), ("hip", "knee"), ("knee", "ankle"))
        ),
        "torso": (
            ("left_shoulder", "right_shoulder"),
            ("left_hip", "right_hip"),
            ("left_shoulder", "left_hip"),
            ("right_shoulder", "right_hip"),
            ("neck", "left_shoulder"),
            ("neck", "right_shoulder"),
            ("neck", "mid_hip"),
            ("mid_hip", "left_hip"),
            ("mid_hip", "right_hip"),
            ("nose", "neck"),
        ),
        "face": (
            ("nose", "left_eye"),
            ("nose", "right_eye"),
            ("left_eye", "left_ear"),
            ("right_eye", "right_ear"),
        ),
        "feet": tuple(
            (f"{side}_{a}", f"{side}_{b}")
            for side in ("left", "right")
            for a, b in (("ankle", "heel"), ("ankle", "big_toe"), ("big_toe", "small_toe"))
        ),
        "fingers": _hand_edges("left") + _hand_edges("right"),
    }
)
SKELETON_EDGES: tuple[tuple[str, str], ...] = tuple(e for group in EDGE_GROUPS.values() for e in group)
