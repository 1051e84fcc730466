"""2D person keypoints: reading OpenPose and COCO JSON, sanitising, writing.

Inputs: OpenPose JSON files (``people[].pose_keypoints_2d`` and optionally the hand and face
arrays, flat ``x, y, c``), COCO keypoint annotation JSON (``images`` + ``annotations``, ``x, y, v``
per person in the order its ``categories[].keypoints`` declares, mapped by name; COCO-17 when the
category declares none), COCO results JSON (a list of ``{image_id, keypoints, score}``), or a
folder of such files; optionally the images folder. A SPIN-style ``<image>_bbox.json`` sidecar
(``{"bbox": [x, y, w, h]}``) in a folder gives the box of that image's person.
Outputs: :class:`PersonKeypoints`, one per detected or annotated person: canonical names (see
:mod:`capture3d.tasks.body.keypoint_formats`), pixel positions (K, 2), confidences (K,) in
[0, 1] (0 = missing), the person box and the image size. Writers: :func:`write_coco` (COCO
annotation JSON, coco17 order) and :func:`write_openpose` (BODY_25 with the feet, plus hands and
face when the person has them).

Problems with a file (missing, not JSON, neither format, wrong-length arrays, declared keypoint
names that are not known joints) raise :class:`KeypointError` with one line naming the file (and the
person). An identity given by the file (OpenPose ``person_id`` >= 0, COCO ``track_id`` or
``person_id``) is kept as ``PersonKeypoints.track``: it ties one person's views across images.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from capture3d.atomic import atomic_write_text
from capture3d.errors import Capture3dError
from capture3d.tasks.body.keypoint_formats import (
    BODY25,
    COCO17,
    EDGE_GROUPS,
    FACE70,
    HAND21_LEFT,
    HAND21_RIGHT,
    LayoutError,
    format_for,
    format_names,
    layout_from_names,
    layout_label,
)
from capture3d.tasks.body.model import derived_keypoint

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_NAME_SUFFIXES = ("_keypoints", "_openpose")  # stripped from OpenPose file stems to get the image
_OPENPOSE_PARTS = (  # (JSON key, part for format_for)
    ("pose_keypoints_2d", "pose"),
    ("hand_left_keypoints_2d", "hand_left"),
    ("hand_right_keypoints_2d", "hand_right"),
    ("face_keypoints_2d", "face"),
)


class KeypointError(Capture3dError):
    """A keypoint file that cannot be read; the one-line message names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"keypoints file '{path}': {problem}")


@dataclass
class PersonKeypoints:
    """One person's 2D keypoints in one image.

    image:        the image's file name (no folder); without a suffix until resolved.
    person:       an id unique within the capture (``<image stem>#<index>`` or a COCO id).
    names:        (K,) canonical keypoint names (``face00``.. for face points), file order.
    xy:           (K, 2) float64 pixel positions (x right, y down); meaningless where conf = 0.
    conf:         (K,) float64 confidences in [0, 1], 0 = missing.
    bbox:         (x, y, w, h) in pixels, or None.
    bbox_derived: True when bbox is the extent of the visible keypoints, not a given box.
    image_size:   (width, height) in pixels, or None when unknown.
    source_format: the format(s) read, e.g. ``body25+hand21_left+hand21_right+face70``.
    score:        the detector's score of the whole person (COCO results), else None.
    track:        the identity the file gives (OpenPose ``person_id``, COCO ``track_id``), else None:
                  people of different images with the same track are the same person.
    """

    image: str
    person: str
    names: tuple[str, ...]
    xy: np.ndarray
    conf: np.ndarray
    bbox: tuple[float, float, float, float] | None = None
    image_size: tuple[int, int] | None = None
    source_format: str = ""
    bbox_derived: bool = False
    score: float | None = None
    track: str | None = None

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        self.xy = np.asarray(self.xy, dtype=np.float64).reshape(-1, 2)
        self.conf = np.asarray(self.conf, dtype=np.float64).reshape(-1)
        if not len(self.names) == len(self.xy) == len(self.conf):
            raise ValueError(
                f"person {self.person!r}: {len(self.names)} names, {len(self.xy)} positions, "
                f"{len(self.conf)} confidences"
            )

    @property
    def visible(self) -> np.ndarray:
        """(K,) bool: the points with a confidence above 0."""
        return self.conf > 0

    def num_visible(self, names: Sequence[str] | None = None) -> int:
        """How many points (of ``names``, default all) have a confidence above 0."""
        if names is None:
            return int(self.visible.sum())
        wanted = set(names)
        return int(sum(1 for n, c in zip(self.names, self.conf) if n in wanted and c > 0))

    def point(self, name: str) -> tuple[np.ndarray, float] | None:
        """``(xy (2,), conf)`` of the named point, or None when the person has no such point."""
        try:
            i = self.names.index(name)
        except ValueError:
            return None
        return self.xy[i], float(self.conf[i])


# --------------------------------------------------------------------------- helpers


def _load_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise KeypointError(path, "no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KeypointError(path, f"not valid JSON ({str(exc).splitlines()[0]})") from None


def _extent(xy: np.ndarray, conf: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x, y, w, h) of the confident, finite points, or None when there are none."""
    ok = (conf > 0) & np.isfinite(xy).all(axis=1)
    if not ok.any():
        return None
    lo, hi = xy[ok].min(axis=0), xy[ok].max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


def _triples(values: Any, path: Path, who: str, what: str) -> np.ndarray:
    """A flat ``x, y, c`` list as (K, 3) float64; non-numbers raise KeypointError."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise KeypointError(path, f"{who}: {what} is not a list of numbers") from None
    if arr.size % 3:
        raise KeypointError(path, f"{who}: {what} has {arr.size} values, not a multiple of 3 (x, y, c)")
    return arr.reshape(-1, 3)


def _box(values: Any, path: Path, who: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
        raise KeypointError(path, f"{who}: bbox {values!r} is not [x, y, w, h]")
    return box  # type: ignore[return-value]


def image_name_from_path(path: Path) -> str:
    """The image an OpenPose file describes: its stem without ``_keypoints`` / ``_openpose``
    (``im1010_openpose.json`` -> ``im1010``). The suffix is resolved by :func:`load_keypoints`."""
    stem = Path(path).stem
    for suffix in _NAME_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def detect_format(data: Any) -> str | None:
    """``openpose``, ``coco``, ``coco_results``, ``bbox`` (a SPIN box sidecar) or None, from a
    parsed JSON document's structure."""
    if isinstance(data, dict):
        if "people" in data:
            return "openpose"
        if "annotations" in data:
            return "coco"
        if set(data) == {"bbox"}:
            return "bbox"
    if isinstance(data, list) and all(isinstance(d, dict) and "image_id" in d and "keypoints" in d for d in data):
        return "coco_results"
    return None


# --------------------------------------------------------------------------- readers


def _parse_openpose(data: Any, path: Path, image: str | None) -> list[PersonKeypoints]:
    if not isinstance(data, dict) or not isinstance(data.get("people"), list):
        raise KeypointError(path, "not OpenPose keypoint JSON (no 'people' list)")
    image = image if image is not None else image_name_from_path(path)
    stem = Path(image).stem
    people: list[PersonKeypoints] = []
    for index, entry in enumerate(data["people"]):
        who = f"person {index}"
        if not isinstance(entry, dict):
            raise KeypointError(path, f"{who} is not an object")
        names: tuple[str, ...] = ()
        formats: list[str] = []
        rows: list[np.ndarray] = []
        for key, part in _OPENPOSE_PARTS:
            values = entry.get(key)
            if not values:  # absent or empty: that part was not run
                continue
            pts = _triples(values, path, who, key)
            fmt = format_for(len(pts), part)
            if fmt is None:
                raise KeypointError(path, f"{who}: {key} has {len(pts)} points, not a known {part} format")
            names += format_names(fmt)
            formats.append(fmt)
            rows.append(pts)
        if not rows:
            logger.warning("%s: person %d has no 2D keypoints; skipped", path, index)
            continue
        pts = np.concatenate(rows)  # (K, 3)
        xy = pts[:, :2].copy()
        conf = np.clip(np.nan_to_num(pts[:, 2], nan=0.0), 0.0, 1.0)
        conf[~np.isfinite(xy).all(axis=1)] = 0.0
        people.append(
            PersonKeypoints(
                image=image,
                person=f"{stem}#{index}",
                names=names,
                xy=xy,
                conf=conf,
                bbox=_extent(xy, conf),
                bbox_derived=True,
                source_format="+".join(formats),
                track=_track(entry.get("person_id")),
            )
        )
    return people


def read_openpose(path: Path, image: str | None = None) -> list[PersonKeypoints]:
    """The people of an OpenPose JSON file (``--write_json`` output), one per ``people`` entry.

    Body, hands and face (those present and non-empty) are concatenated into one person, names
    in that order. ``image`` names the image; by default it is the file's stem without
    ``_keypoints`` / ``_openpose``. The box is the extent of the confident points (derived)."""
    path = Path(path)
    return _parse_openpose(_load_json(path), path, image)


def _track(value: Any) -> str | None:
    """A person identity from a file: an int >= 0 or a non-empty string (OpenPose writes ``[-1]``
    for none; a one-element list is unwrapped), else None."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _coco_layouts(data: Mapping[str, Any], path: Path) -> dict[Any, tuple[str, ...]]:
    """Canonical keypoint names by category id, from ``categories[].keypoints`` (mapped by name;
    an unknown name or two names for one joint raise KeypointError). Categories without a
    ``keypoints`` list are absent (their people are read as COCO-17)."""
    layouts: dict[Any, tuple[str, ...]] = {}
    categories = data.get("categories") or []
    if not isinstance(categories, list):
        raise KeypointError(path, "'categories' is not a list")
    for index, cat in enumerate(categories):
        if not isinstance(cat, dict) or not cat.get("keypoints"):
            continue
        declared = cat["keypoints"]
        if not isinstance(declared, list) or not all(isinstance(n, str) for n in declared):
            raise KeypointError(path, f"categories[{index}].keypoints is not a list of names")
        try:
            names = layout_from_names(declared)
        except LayoutError as exc:
            raise KeypointError(path, f"categories[{index}].keypoints: {exc}") from None
        if names != COCO17:
            logger.info(
                "%s: category %s declares %d keypoints (%s); mapped by name",
                path,
                cat.get("id", index),
                len(names),
                layout_label(names),
            )
        layouts[cat.get("id", index)] = names
    return layouts


def _coco_person(
    path: Path, who: str, values: Any, *, binary: bool, names: Sequence[str] = COCO17
) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) positions and (K,) confidences of K = len(names) COCO ``x, y, v|score`` triples."""
    pts = _triples(values, path, who, "keypoints")
    if len(pts) != len(names):
        layout = "COCO" if tuple(names) == COCO17 else "as categories[].keypoints declares"
        raise KeypointError(path, f"{who}: {len(pts)} keypoints, expected {len(names)} ({layout})")
    xy = pts[:, :2].copy()
    c = np.nan_to_num(pts[:, 2], nan=0.0)
    conf = (c > 0).astype(np.float64) if binary else np.clip(c, 0.0, 1.0)
    conf[~np.isfinite(xy).all(axis=1)] = 0.0
    return xy, conf


def _parse_coco(
    data: Any,
    path: Path,
    images: Mapping[int | str, str] | None,
) -> list[PersonKeypoints]:
    fmt = detect_format(data)
    if fmt not in ("coco", "coco_results"):
        raise KeypointError(path, "not COCO keypoint JSON (no 'annotations', not a results list)")
    names_by_id: dict[Any, str] = dict(images or {})
    sizes: dict[Any, tuple[int, int]] = {}

    def name_of(image_id: Any) -> str:
        if image_id in names_by_id:
            return names_by_id[image_id]
        if isinstance(image_id, str):
            return image_id
        try:
            return f"{int(image_id):012d}.jpg"  # the COCO file naming
        except (TypeError, ValueError):
            raise KeypointError(path, f"image_id {image_id!r} is neither a name nor a number") from None

    people: list[PersonKeypoints] = []
    if fmt == "coco":
        for im in data.get("images") or []:
            if isinstance(im, dict) and "id" in im and "file_name" in im:
                names_by_id.setdefault(im["id"], str(im["file_name"]))
                if "width" in im and "height" in im:
                    sizes[im["id"]] = (int(im["width"]), int(im["height"]))
        if not isinstance(data["annotations"], list):
            raise KeypointError(path, "'annotations' is not a list")
        layouts = _coco_layouts(data, path)
        only = next(iter(layouts.values())) if len(layouts) == 1 else None
        for index, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise KeypointError(path, f"annotation {index} has no image_id")
            if ann.get("iscrowd"):
                continue
            if "keypoints" not in ann:
                logger.debug("%s: annotation %s has no keypoints; skipped", path, ann.get("id", index))
                continue
            image = name_of(ann["image_id"])
            person = str(ann["id"]) if "id" in ann else f"{Path(image).stem}#{index}"
            who = f"annotation {person}"
            category = ann.get("category_id")
            names = layouts.get(category) or only or COCO17  # one declared layout serves every category
            xy, conf = _coco_person(path, who, ann["keypoints"], binary=True, names=names)
            given = ann.get("bbox")
            bbox = _box(given, path, who) if given else _extent(xy, conf)
            track = _track(ann.get("track_id", ann.get("person_id")))
            people.append(
                PersonKeypoints(
                    image=image,
                    person=person,
                    names=names,
                    xy=xy,
                    conf=conf,
                    bbox=bbox,
                    bbox_derived=not given,
                    image_size=sizes.get(ann["image_id"]),
                    source_format=layout_label(names),
                    track=track,
                )
            )
        return people
    count: dict[str, int] = {}
    for index, det in enumerate(data):
        image = name_of(det["image_id"])
        k = count[image] = count.get(image, -1) + 1
        person = f"{Path(image).stem}#{k}"
        who = f"result {index} ({person})"
        xy, conf = _coco_person(path, who, det["keypoints"], binary=False)
        given = det.get("bbox")
        bbox = _box(given, path, who) if given else _extent(xy, conf)
        score = det.get("score")
        people.append(
            PersonKeypoints(
                image=image,
                person=person,
                names=COCO17,
                xy=xy,
                conf=conf,
                bbox=bbox,
                bbox_derived=not given,
                source_format="coco17",
                score=float(score) if isinstance(score, (int, float)) else None,
            )
        )
    return people


def read_coco(path: Path, images: Mapping[int | str, str] | None = None) -> list[PersonKeypoints]:
    """The people of a COCO keypoint file.

    Annotation JSON: one person per non-crowd annotation with keypoints; ``v > 0`` -> conf 1,
    ``v = 0`` -> conf 0; the annotation's box; the image size from ``images``; the person id is the
    annotation id. Keypoints are read in the order the annotation's category declares in
    ``categories[].keypoints``, mapped to canonical names by name (COCO-17 when it declares none);
    an unknown name is refused. ``track_id`` (or ``person_id``) becomes the person's track. Results
    JSON (a list of ``{image_id, keypoints (x, y, score), score}``):
    conf = the keypoint score clipped to [0, 1]; ids ``<image stem>#<index>``. Image names come
    from ``images`` (image id -> file name), the file's ``images`` table, a string image_id, or
    COCO's ``%012d.jpg``."""
    path = Path(path)
    return _parse_coco(_load_json(path), path, images)


# --------------------------------------------------------------------------- folders and images


def _image_index(images_dir: Path) -> dict[str, list[str]]:
    """Image file names in ``images_dir`` by stem."""
    index: dict[str, list[str]] = {}
    for p in sorted(images_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(p.stem, []).append(p.name)
    return index


def _apply_sidecar_box(people: list[PersonKeypoints], image: str, box: tuple[float, float, float, float]) -> None:
    """Give ``box`` to the person of ``image`` whose keypoint extent overlaps it most."""
    stem = Path(image).stem
    candidates = [p for p in people if Path(p.image).stem == stem]
    if not candidates:
        logger.warning("box for %s matches no person; ignored", image)
        return

    def overlap(p: PersonKeypoints) -> float:
        e = _extent(p.xy, p.conf)
        if e is None:
            return 0.0
        w = min(e[0] + e[2], box[0] + box[2]) - max(e[0], box[0])
        h = min(e[1] + e[3], box[1] + box[3]) - max(e[1], box[1])
        return max(w, 0.0) * max(h, 0.0)

    best = max(candidates, key=overlap)
    best.bbox, best.bbox_derived = box, False


def load_keypoints(
    source: Path, images_dir: Path | None = None, skipped: dict[str, str] | None = None
) -> list[PersonKeypoints]:
    """Every person in ``source``: a keypoint JSON file or a folder of them (``*.json``, sorted),
    each format detected from its content (OpenPose, COCO annotations, COCO results).

    Image names are resolved against ``images_dir`` (default: the keypoints' folder) by exact
    name, else by stem with any image suffix; a missing image size is read from the image's header.
    Unresolved images keep their name (with a warning). Person ids must be unique.

    ``skipped`` (a dict to fill): a file of a folder that is not valid JSON is skipped with a
    warning and recorded there (file name -> reason), capture3d's policy for unreadable items;
    without it, or when every file is unreadable, it is a :class:`KeypointError`. A file that is
    valid JSON in an unknown or mismatching layout is always refused (it would be misread)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() == ".json")
        if not files:
            raise KeypointError(source, "folder holds no .json keypoint files")
    elif source.is_file():
        files = [source]
    else:
        raise KeypointError(source, "no such file or folder")
    people: list[PersonKeypoints] = []
    boxes: list[tuple[Path, str, tuple[float, float, float, float]]] = []
    origin: dict[str, Path] = {}
    for path in files:
        try:
            data = _load_json(path)
        except KeypointError as exc:
            if skipped is None or len(files) == 1:
                raise
            skipped[path.name] = exc.problem
            logger.warning("skipping keypoint file %s: %s", path, exc.problem)
            continue
        fmt = detect_format(data)
        if fmt == "openpose":
            found = _parse_openpose(data, path, None)
        elif fmt in ("coco", "coco_results"):
            found = _parse_coco(data, path, None)
        elif fmt == "bbox" and source.is_dir():
            boxes.append((path, path.stem.removesuffix("_bbox"), _box(data["bbox"], path, "sidecar")))
            continue
        else:
            raise KeypointError(path, "not OpenPose or COCO keypoint JSON (no 'people' or 'annotations')")
        for p in found:
            if p.person in origin:
                raise KeypointError(path, f"person id '{p.person}' also appears in '{origin[p.person]}'")
            origin[p.person] = path
        people += found
    if skipped is not None and len(skipped) == len(files):
        raise KeypointError(source, f"no readable keypoint file ({len(files)} skipped: {next(iter(skipped.values()))})")
    for _path, image, box in boxes:
        _apply_sidecar_box(people, image, box)

    folder = Path(images_dir) if images_dir is not None else (source if source.is_dir() else source.parent)
    if images_dir is not None and not folder.is_dir():
        raise KeypointError(source, f"images folder '{folder}' does not exist")
    index = _image_index(folder) if folder.is_dir() else {}
    sizes: dict[str, tuple[int, int]] = {}
    for p in people:
        name = p.image
        if not (folder / name).is_file():
            matches = index.get(Path(name).stem, [])
            if not matches:
                logger.warning("%s: no image for %r in %s", origin[p.person], name, folder)
                continue
            if len(matches) > 1:
                logger.warning("image %r is ambiguous in %s (%s); using %s", name, folder, matches, matches[0])
            name = p.image = matches[0]
        if p.image_size is None:
            if name not in sizes:
                try:
                    with Image.open(folder / name) as im:  # reads the header only
                        sizes[name] = (int(im.width), int(im.height))
                except OSError as exc:
                    raise KeypointError(origin[p.person], f"cannot read image '{folder / name}': {exc}") from None
            p.image_size = sizes[name]
    logger.info("read %d people from %d file(s) in %s", len(people), len(files), source)
    return people


# --------------------------------------------------------------------------- sanitising


def sanitize(
    person: PersonKeypoints,
    image_size: tuple[int, int] | None = None,
    margin: float = 0.02,
) -> tuple[PersonKeypoints, list[str]]:
    """A copy of ``person`` whose non-finite points and points outside the image get conf 0.

    ``image_size`` (w, h) defaults to the person's; a point counts as inside when it lies within
    ``margin`` x the image's larger side of it. A derived box is recomputed. Returns the copy and
    notes (one line each) on what was dropped; points already at conf 0 are not reported."""
    size = image_size if image_size is not None else person.image_size
    xy, conf = person.xy.copy(), np.clip(np.nan_to_num(person.conf, nan=0.0), 0.0, 1.0)
    notes: list[str] = []
    finite = np.isfinite(xy).all(axis=1)
    bad = (conf > 0) & ~finite
    if bad.any():
        names = ", ".join(n for n, b in zip(person.names, bad) if b)
        notes.append(f"person '{person.person}': {int(bad.sum())} non-finite keypoint(s) dropped ({names})")
        conf[bad] = 0.0
    if size is not None:
        w, h = size
        pad = margin * max(w, h)
        with np.errstate(invalid="ignore"):
            inside = (xy[:, 0] >= -pad) & (xy[:, 0] <= w + pad) & (xy[:, 1] >= -pad) & (xy[:, 1] <= h + pad)
        out = (conf > 0) & ~inside
        if out.any():
            names = ", ".join(n for n, o in zip(person.names, out) if o)
            notes.append(
                f"person '{person.person}': {int(out.sum())} keypoint(s) outside the {w}x{h} image dropped ({names})"
            )
            conf[out] = 0.0
    bbox = _extent(xy, conf) if person.bbox_derived else person.bbox
    cleaned = replace(person, xy=xy, conf=conf, bbox=bbox, image_size=tuple(size) if size else None)
    for note in notes:
        logger.info("%s", note)
    return cleaned, notes


# --------------------------------------------------------------------------- writers


def _points_in(person: PersonKeypoints, names: Sequence[str]) -> np.ndarray:
    """(len(names), 3) ``x, y, c`` of ``person`` in the order ``names``; absent names are zeros.
    ``neck`` / ``mid_hip`` absent from the person are derived from their two parents."""
    out = np.zeros((len(names), 3))
    where = {n: i for i, n in enumerate(person.names)}
    for k, name in enumerate(names):
        i = where.get(name)
        if i is not None and person.conf[i] > 0 and np.isfinite(person.xy[i]).all():
            out[k] = (*person.xy[i], person.conf[i])
            continue
        parents = derived_keypoint(name)
        if i is None and parents is not None:
            a, b = (where.get(p) for p in parents)
            if a is not None and b is not None and person.conf[a] > 0 and person.conf[b] > 0:
                out[k] = (*(0.5 * (person.xy[a] + person.xy[b])), min(person.conf[a], person.conf[b]))
    return out


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in values.reshape(-1)]


def write_coco(
    people: Sequence[PersonKeypoints],
    path: Path,
    images: Mapping[str, tuple[int, int]],
) -> None:
    """Write ``people`` as COCO keypoint annotation JSON (coco17 order, ``v = 2`` where conf > 0).

    ``images`` maps file names to (width, height) (a person's own image_size is used for an image
    not listed). Image ids number the images from 1 in order; annotation ids are the person ids
    where numeric, else fresh numbers. Written through a temporary file."""
    sizes = dict(images)
    for p in people:
        if p.image not in sizes:
            if p.image_size is None:
                raise ValueError(f"write_coco: no size for image {p.image!r} of person {p.person!r}")
            sizes[p.image] = p.image_size
    image_ids = {name: i for i, name in enumerate(sizes, start=1)}
    used = {int(p.person) for p in people if p.person.isdigit()}
    next_id = max(used, default=0) + 1
    annotations = []
    for p in people:
        pts = _points_in(p, COCO17)
        vis = pts[:, 2] > 0
        kps = np.zeros((len(COCO17), 3))
        kps[vis, :2] = pts[vis, :2]
        kps[vis, 2] = 2
        if p.person.isdigit():
            ann_id = int(p.person)
        else:
            ann_id, next_id = next_id, next_id + 1
        box = p.bbox if p.bbox is not None else _extent(pts[:, :2], pts[:, 2]) or (0.0, 0.0, 0.0, 0.0)
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_ids[p.image],
                "category_id": 1,
                "iscrowd": 0,
                "keypoints": _round(kps),
                "num_keypoints": int(vis.sum()),
                "bbox": [round(float(v), 3) for v in box],
                "area": round(float(box[2] * box[3]), 3),
            }
        )
    coco_edges = [
        [COCO17.index(a) + 1, COCO17.index(b) + 1]
        for group in ("limbs", "torso", "face")
        for a, b in EDGE_GROUPS[group]
        if a in COCO17 and b in COCO17
    ]
    doc = {
        "images": [
            {"id": i, "file_name": n, "width": int(sizes[n][0]), "height": int(sizes[n][1])}
            for n, i in image_ids.items()
        ],
        "annotations": annotations,
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO17), "skeleton": coco_edges}
        ],
    }
    atomic_write_text(Path(path), json.dumps(doc))
    logger.debug("wrote %d annotations to %s", len(annotations), path)


def write_openpose(person: PersonKeypoints | Sequence[PersonKeypoints], path: Path) -> None:
    """Write one person (or several) as an OpenPose JSON file: ``pose_keypoints_2d`` in BODY_25
    order (feet included; neck and mid_hip derived when absent), and the hand and face arrays
    when the person has any of those points (else empty lists, as OpenPose writes)."""
    people = [person] if isinstance(person, PersonKeypoints) else list(person)
    entries = []
    for p in people:
        have = set(p.names)
        entry: dict[str, Any] = {"person_id": [-1], "pose_keypoints_2d": _round(_points_in(p, BODY25))}
        for key, names in (
            ("face_keypoints_2d", FACE70),
            ("hand_left_keypoints_2d", HAND21_LEFT),
            ("hand_right_keypoints_2d", HAND21_RIGHT),
        ):
            entry[key] = _round(_points_in(p, names)) if have & set(names) else []
        for key in ("pose", "face", "hand_left", "hand_right"):
            entry[f"{key}_keypoints_3d"] = []
        entries.append(entry)
    atomic_write_text(Path(path), json.dumps({"version": 1.3, "people": entries}))
