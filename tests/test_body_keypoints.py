"""Keypoint formats and readers: real COCO and OpenPose files, round trips, detection, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capture3d.tasks.body.keypoint_formats import (
    BODY25,
    FACE70,
    FORMATS,
    HAND21_LEFT,
    HAND21_RIGHT,
    SKELETON_EDGES,
    format_for,
    format_names,
    mapping_table,
)
from capture3d.tasks.body.keypoint_io import (
    KeypointError,
    PersonKeypoints,
    detect_format,
    load_keypoints,
    read_coco,
    read_openpose,
    sanitize,
    write_coco,
    write_openpose,
)
from capture3d.tasks.body.model import CANONICAL_KEYPOINTS, COCO17


@pytest.fixture(scope="module")
def body_data() -> Path:
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "body"
    if not (path / "coco" / "test_coco.json").is_file() or not (path / "spin_example").is_dir():
        pytest.skip("../shared/data/body is absent: real keypoint data test skipped")
    return path


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def _person(names: tuple[str, ...], seed: int = 0, **kw) -> PersonKeypoints:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(10, 90, size=(len(names), 2))
    conf = rng.uniform(0.3, 1.0, size=len(names))
    fields = dict(image="a.jpg", person="a#0", names=names, xy=xy, conf=conf, image_size=(100, 100), source_format="x")
    fields.update(kw)
    return PersonKeypoints(**fields)


# --------------------------------------------------------------------------- formats


def test_formats_are_canonical_and_ordered() -> None:
    canonical = set(CANONICAL_KEYPOINTS)
    for name, names in FORMATS.items():
        assert len(set(names)) == len(names), name
        if name != "face70":
            assert set(names) <= canonical, name
    assert not set(FACE70) & canonical
    assert all(a in canonical and b in canonical for a, b in SKELETON_EDGES)
    assert len(BODY25) == 25 and BODY25[1] == "neck" and BODY25[8] == "mid_hip"
    assert BODY25[19:] == (
        "left_big_toe",
        "left_small_toe",
        "left_heel",
        "right_big_toe",
        "right_small_toe",
        "right_heel",
    )
    assert HAND21_LEFT[0] == "left_hand_root" and HAND21_LEFT[1:5] == tuple(f"left_thumb{i}" for i in range(1, 5))
    assert HAND21_RIGHT[17:] == tuple(f"right_pinky{i}" for i in range(1, 5))
    assert format_for(25) == "body25" and format_for(17) == "coco17" and format_for(18) == "coco18"
    assert format_for(21, "hand_right") == "hand21_right" and format_for(70, "face") == "face70"
    assert format_for(21) is None and format_for(19) is None
    assert len(format_names("body25+hand21_left+hand21_right+face70")) == 137


def test_mapping_table_is_the_intersection_in_format_order() -> None:
    names = format_names("body25+face70")
    model = COCO17 + ("left_big_toe",)  # a model without neck / mid_hip / other foot points
    table = mapping_table(names, model)
    assert [n for _, n in table] == [n for n in BODY25 if n in model]
    assert all(names[i] == n for i, n in table)
    assert (BODY25.index("left_big_toe"), "left_big_toe") in table
    assert mapping_table(("nose", "nose", "face00"), CANONICAL_KEYPOINTS) == [(0, "nose")]


# --------------------------------------------------------------------------- real data


def test_read_coco_real_people_per_image_and_sizes(body_data: Path) -> None:
    path = body_data / "coco" / "test_coco.json"
    doc = json.loads(path.read_text())
    expected = Counter(a["image_id"] for a in doc["annotations"] if not a.get("iscrowd"))
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in doc["images"]}
    people = read_coco(path)
    assert Counter(p.image for p in people) == {names[i]: n for i, n in expected.items()}
    by_id = {str(a["id"]): a for a in doc["annotations"]}
    for p in people:
        assert p.image_size == sizes[p.image]
        assert p.names == COCO17 and p.source_format == "coco17" and not p.bbox_derived
        ann = by_id[p.person]
        v = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
        np.testing.assert_array_equal(p.conf, (v[:, 2] > 0).astype(float))
        np.testing.assert_array_equal(p.xy, v[:, :2])
        assert p.num_visible() == ann["num_keypoints"]
        assert p.bbox == pytest.approx(tuple(ann["bbox"]))
    # the image headers agree with the JSON sizes
    for name, size in sizes.items():
        with Image.open(body_data / "coco" / name) as im:
            assert im.size == size


def test_load_keypoints_coco_resolves_images(body_data: Path) -> None:
    people = load_keypoints(body_data / "coco" / "test_coco.json")
    assert len(people) == 14
    assert all((body_data / "coco" / p.image).is_file() for p in people)
    assert sum(p.num_visible() >= 8 for p in people) == 12


def test_read_openpose_real(body_data: Path) -> None:
    path = body_data / "spin_example" / "im1010_openpose.json"
    doc = json.loads(path.read_text())
    [person] = read_openpose(path)
    assert person.image == "im1010" and person.person == "im1010#0"
    assert person.source_format == "body25+hand21_left+hand21_right+face70"
    assert person.names[:25] == BODY25 and len(person.names) == 25 + 21 + 21 + 70
    body = np.asarray(doc["people"][0]["pose_keypoints_2d"]).reshape(25, 3)
    np.testing.assert_allclose(person.xy[:25], body[:, :2])
    np.testing.assert_allclose(person.conf[:25], body[:, 2])
    assert 0 < person.conf.max() <= 1
    assert person.num_visible(BODY25) == int((body[:, 2] > 0).sum())
    assert person.num_visible(HAND21_RIGHT) == 0 and person.num_visible(FACE70) == 0
    assert person.num_visible(HAND21_LEFT) == 21
    assert person.bbox_derived and person.image_size is None
    ok = person.conf > 0
    x0, y0 = person.xy[ok].min(axis=0)
    assert person.bbox[:2] == pytest.approx((x0, y0))


def test_load_keypoints_openpose_folder_with_box_sidecar(body_data: Path) -> None:
    [person] = load_keypoints(body_data / "spin_example")
    assert person.image == "im1010.jpg"
    with Image.open(body_data / "spin_example" / "im1010.jpg") as im:
        assert person.image_size == im.size
    assert person.bbox == (17.0, 37.0, 117.0, 142.0) and not person.bbox_derived
    # a single file with the images folder given explicitly
    [single] = load_keypoints(body_data / "spin_example" / "im1010_openpose.json", body_data / "spin_example")
    assert single.image == "im1010.jpg" and single.bbox_derived


# --------------------------------------------------------------------------- round trips


def test_write_coco_round_trip(body_data: Path, tmp_path: Path) -> None:
    people = read_coco(body_data / "coco" / "test_coco.json")
    sizes = {p.image: p.image_size for p in people}
    write_coco(people, tmp_path / "out.json", sizes)
    back = read_coco(tmp_path / "out.json")
    assert [p.person for p in back] == [p.person for p in people]
    for a, b in zip(people, back):
        assert (a.image, a.image_size) == (b.image, b.image_size)
        np.testing.assert_array_equal(a.conf, b.conf)
        np.testing.assert_allclose(a.xy[a.visible], b.xy[b.visible], atol=1e-3)
        assert b.bbox == pytest.approx(a.bbox, abs=1e-3)


def test_write_coco_from_body25_and_write_openpose_round_trip(tmp_path: Path) -> None:
    p = _person(BODY25, person="synthetic#0")
    p.conf[BODY25.index("left_knee")] = 0.0
    write_coco([p], tmp_path / "c.json", {"a.jpg": (100, 100)})
    [c] = read_coco(tmp_path / "c.json")
    for i, name in enumerate(COCO17):
        j = BODY25.index(name)
        assert c.conf[i] == (1.0 if p.conf[j] > 0 else 0.0)
        if p.conf[j] > 0:
            np.testing.assert_allclose(c.xy[i], p.xy[j], atol=1e-3)
    assert c.person.isdigit()  # a fresh numeric annotation id

    # a coco17 person written as OpenPose gets neck / mid_hip derived
    q = _person(COCO17, seed=1)
    write_openpose(q, tmp_path / "q_keypoints.json")
    [r] = read_openpose(tmp_path / "q_keypoints.json")
    assert r.image == "q" and r.source_format == "body25"
    neck = r.point("neck")
    ls, rs = q.point("left_shoulder"), q.point("right_shoulder")
    np.testing.assert_allclose(neck[0], 0.5 * (ls[0] + rs[0]), atol=1e-3)
    for i, name in enumerate(COCO17):
        np.testing.assert_allclose(r.point(name)[0], q.xy[i], atol=1e-3)
        assert r.point(name)[1] == pytest.approx(q.conf[i], abs=1e-3)
    assert r.num_visible(("left_heel", "right_big_toe")) == 0


def test_write_openpose_real_round_trip(body_data: Path, tmp_path: Path) -> None:
    [p] = read_openpose(body_data / "spin_example" / "im1010_openpose.json")
    write_openpose(p, tmp_path / "im1010_keypoints.json")
    [q] = read_openpose(tmp_path / "im1010_keypoints.json")
    assert q.names == p.names and q.source_format == p.source_format
    np.testing.assert_allclose(q.xy[p.visible], p.xy[p.visible], atol=1e-3)
    np.testing.assert_allclose(q.conf, p.conf, atol=1e-3)


# --------------------------------------------------------------------------- detection


def test_format_auto_detection(body_data: Path, tmp_path: Path) -> None:
    coco = [p for p in read_coco(body_data / "coco" / "test_coco.json") if p.image != "000000000785.jpg"]
    results = [
        {
            "image_id": int(p.image.split(".")[0]),
            "category_id": 1,
            "score": 0.9,
            "keypoints": np.column_stack([p.xy, p.conf * 0.8]).ravel().tolist(),
        }
        for p in coco
    ]
    folder = tmp_path / "kp"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results))
    op = {"version": 1.3, "people": [{"pose_keypoints_2d": [50.0, 60.0, 0.9] * 25}]}
    (folder / "000000000785_keypoints.json").write_text(json.dumps(op))  # an image no result is for
    assert detect_format(results) == "coco_results" and detect_format(op) == "openpose"
    assert detect_format(json.loads((body_data / "coco" / "test_coco.json").read_text())) == "coco"
    assert detect_format({"bbox": [0, 0, 1, 1]}) == "bbox" and detect_format({"x": 1}) is None

    people = load_keypoints(folder, body_data / "coco")
    assert len(people) == len(coco) + 1
    detected = [p for p in people if p.source_format == "coco17"]
    assert [p.image for p in detected] == [p.image for p in coco]
    assert [p.image_size for p in detected] == [p.image_size for p in coco]  # read from the headers
    assert all(p.score == pytest.approx(0.9) for p in detected)
    np.testing.assert_allclose(detected[0].conf, coco[0].conf * 0.8)
    [openpose] = [p for p in people if p.source_format == "body25"]
    assert openpose.image == "000000000785.jpg" and openpose.image_size == (640, 425)


# --------------------------------------------------------------------------- errors


def test_errors_are_one_line_keypoint_errors(tmp_path: Path) -> None:
    with pytest.raises(KeypointError) as exc:
        load_keypoints(tmp_path / "missing.json")
    _one_line(exc, "missing.json", "no such file")
    with pytest.raises(KeypointError) as exc:
        read_openpose(tmp_path / "missing.json")
    _one_line(exc, "missing.json")

    bad = tmp_path / "bad.json"
    bad.write_text('{"people": [')
    with pytest.raises(KeypointError) as exc:
        load_keypoints(bad)
    _one_line(exc, "bad.json", "not valid JSON")

    other = tmp_path / "a.json"
    other.write_text('{"cameras": []}')
    with pytest.raises(KeypointError) as exc:
        load_keypoints(other)
    _one_line(exc, "a.json", "not OpenPose or COCO")
    with pytest.raises(KeypointError) as exc:
        read_coco(other)
    _one_line(exc, "a.json", "not COCO")

    short = tmp_path / "short.json"
    short.write_text(
        json.dumps(
            {"people": [{"pose_keypoints_2d": [1.0, 2.0, 0.5] * 25}, {"pose_keypoints_2d": [1.0, 2.0, 0.5] * 20}]}
        )
    )
    with pytest.raises(KeypointError) as exc:
        load_keypoints(short)
    _one_line(exc, "short.json", "person 1", "20 points")
    ragged = tmp_path / "ragged.json"
    ragged.write_text(json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 74}]}))
    with pytest.raises(KeypointError) as exc:
        read_openpose(ragged)
    _one_line(exc, "ragged.json", "person 0", "not a multiple of 3")

    coco = tmp_path / "coco.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x.jpg", "width": 9, "height": 9}],
                "annotations": [{"id": 77, "image_id": 1, "keypoints": [0, 0, 0] * 16}],
            }
        )
    )
    with pytest.raises(KeypointError) as exc:
        load_keypoints(coco)
    _one_line(exc, "coco.json", "annotation 77", "16 keypoints")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeypointError) as exc:
        load_keypoints(empty)
    _one_line(exc, "empty", "no .json")


def test_duplicate_person_ids_across_files(tmp_path: Path) -> None:
    op = json.dumps({"people": [{"pose_keypoints_2d": [5.0, 5.0, 0.9] * 25}]})
    (tmp_path / "im_keypoints.json").write_text(op)
    (tmp_path / "im_openpose.json").write_text(op)
    with pytest.raises(KeypointError) as exc:
        load_keypoints(tmp_path)
    _one_line(exc, "im#0", "also appears")


# --------------------------------------------------------------------------- sanitize


def test_sanitize_drops_out_of_image_and_non_finite_points() -> None:
    p = _person(COCO17, bbox_derived=True)
    p.xy[COCO17.index("left_ankle")] = (130.0, 50.0)  # outside a 100 x 100 image
    p.xy[COCO17.index("right_ankle")] = (50.0, -30.0)  # outside
    p.xy[COCO17.index("left_knee")] = (101.0, 50.0)  # within the 2 % margin: kept
    p.xy[COCO17.index("nose")] = (np.nan, 3.0)
    p.conf[COCO17.index("right_knee")] = 0.0
    p.xy[COCO17.index("right_knee")] = (-500.0, -500.0)  # already missing: not reported
    clean, notes = sanitize(p, (100, 100))
    dropped = {n for n, a, b in zip(COCO17, p.conf, clean.conf) if a > 0 and b == 0}
    assert dropped == {"left_ankle", "right_ankle", "nose"}
    assert len(notes) == 2
    assert "left_ankle" in notes[1] and "right_ankle" in notes[1] and "100x100" in notes[1]
    assert "nose" in notes[0] and "non-finite" in notes[0]
    assert all("\n" not in n for n in notes)
    assert p.conf[COCO17.index("nose")] > 0  # the input is not modified
    assert clean.bbox is not None and clean.bbox[0] + clean.bbox[2] <= 101.0 + 1e-9
    again, notes2 = sanitize(clean, (100, 100))
    assert notes2 == [] and np.array_equal(again.conf, clean.conf)
    _, strict = sanitize(p, (100, 100), margin=0.0)
    assert "left_knee" in strict[-1]
