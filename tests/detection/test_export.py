"""Boxes back on the input grid, CASE_boxes.json and candidates.csv."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from volseg.detection.boxes import boxes_from_instances
from volseg.detection.export import (AXIS_ORDER, CSV_COLUMNS, boxes_to_input_grid, case_boxes_record,
                                     write_candidates_csv, write_case_boxes)
from volseg.io.nifti import Geometry, geometry_of
from volseg.preprocessing.case import preprocess_image, preprocess_label


def test_boxes_to_input_grid_by_hand():
    props = {"crop_bbox": [[2, 22], [5, 45], [0, 30]], "shape_after_crop": [20, 40, 30],
             "shape_after_resampling": [10, 80, 30]}
    out = boxes_to_input_grid(np.array([[1, 10, 3, 5, 30, 9], [0, 0, 0, 10, 80, 30]]), props)
    assert out.dtype == np.float64
    # z: × 2 + 2; y: × 0.5 + 5; x: + 0; the whole preprocessed image maps onto the crop box
    np.testing.assert_allclose(out, [[4, 10, 3, 12, 20, 9], [2, 5, 0, 22, 45, 30]])
    assert boxes_to_input_grid(np.zeros((0, 6)), props).shape == (0, 6)


def test_boxes_to_input_grid_undoes_crop_and_resampling_of_the_pipeline():
    # Input (Z, Y, X) = (12, 32, 20) at (2, 0.5, 1) mm, non-zero region [1:11, 4:28, 2:19]; the plan's
    # 1 mm grid doubles z and halves y, and an instance boxed on it must come back at its input box.
    image = np.zeros((1, 12, 32, 20), np.float32)
    image[0, 1:11, 4:28, 2:19] = 1.0
    label = np.zeros((12, 32, 20), np.int16)
    label[5:10, 10:18, 5:10] = 1
    geometry = Geometry((12, 32, 20), (2.0, 0.5, 1.0))
    plans = {"normalization": [{"channel": 0, "scheme": "none"}], "crop_to_nonzero": True}
    config = {"spacing": [1.0, 1.0, 1.0], "resampling": {"image": "linear"}}
    _, props = preprocess_image(image, geometry, plans, config)
    assert props["crop_bbox"] == [[1, 11], [4, 28], [2, 19]] and props["shape_after_resampling"] == [20, 12, 17]
    resampled = preprocess_label(label, props, [0, 1], "nearest")
    back = boxes_to_input_grid(boxes_from_instances(resampled.astype(np.int64)), props)
    np.testing.assert_allclose(back, boxes_from_instances(label.astype(np.int64)))


def test_boxes_to_input_grid_refuses_bad_props():
    with pytest.raises(ValueError, match="crop_bbox"):
        boxes_to_input_grid(np.zeros((1, 6)), {"shape_after_crop": [1, 1, 1], "shape_after_resampling": [1, 1, 1]})
    with pytest.raises(ValueError, match="positive"):
        boxes_to_input_grid(np.zeros((1, 6)), {"crop_bbox": [[0, 1]] * 3, "shape_after_crop": [1, 1, 1],
                                               "shape_after_resampling": [0, 1, 1]})
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        boxes_to_input_grid(np.zeros((2, 4)), {})


def _rotated_flipped_image() -> sitk.Image:
    """Rotated about z and x, the x axis flipped (det −1), anisotropic spacing."""
    a, b = np.deg2rad(23.0), np.deg2rad(-11.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    img = sitk.Image(40, 30, 12, sitk.sitkInt16)          # ITK size (x, y, z): array (12, 30, 40)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((-120.5, 33.0, 210.25))
    img.SetDirection(tuple((rz @ rx @ np.diag([-1.0, 1.0, 1.0])).ravel()))
    return img


def test_world_centres_match_sitk_on_a_rotated_flipped_anisotropic_grid():
    img = _rotated_flipped_image()
    geometry = geometry_of(img)
    boxes = np.array([[2, 3, 4, 5, 9, 11], [0, 0, 0, 12, 30, 40], [1.25, 7.5, 3.0, 2.75, 12.0, 20.5]])
    rec = case_boxes_record("case_a", boxes, np.array([0.2, 0.9, 0.5]), np.array([0, 1, 0]), geometry,
                            ["nodule", "mass"])
    assert rec["case_id"] == "case_a" and rec["axis_order"] == AXIS_ORDER and rec["num_boxes"] == 3
    assert rec["geometry"] == geometry.to_dict()
    assert [b["score"] for b in rec["boxes"]] == [0.9, 0.5, 0.2]                     # highest first
    assert [b["class_name"] for b in rec["boxes"]] == ["mass", "nodule", "nodule"]
    spacing_zyx = np.array(img.GetSpacing()[::-1])
    for entry, i in zip(rec["boxes"], [1, 2, 0]):
        box = boxes[i]
        centre_index_xyz = ((box[:3] + box[3:]) / 2 - 0.5)[::-1]
        ref = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in centre_index_xyz))
        np.testing.assert_allclose(entry["centre_world_mm"], ref, atol=1e-9)
        assert entry["box_voxel"] == box.tolist()
        assert entry["diameter_mm"] == pytest.approx(((box[3:] - box[:3]) * spacing_zyx).mean(), abs=1e-12)
    json.dumps(rec, allow_nan=False)                    # plain JSON


def test_case_boxes_record_refuses_bad_input():
    g = Geometry((4, 4, 4), (1.0, 1.0, 1.0))
    one = np.array([[0, 0, 0, 1, 1, 1]])
    with pytest.raises(ValueError, match="1 boxes but 2 scores"):
        case_boxes_record("c", one, np.array([0.1, 0.2]), np.array([0]), g, ["a"])
    with pytest.raises(ValueError, match="no name"):
        case_boxes_record("c", one, np.array([0.1]), np.array([1]), g, ["a"])
    with pytest.raises(ValueError, match="no name"):
        case_boxes_record("c", one, np.array([0.1]), np.array([-1]), g, ["a"])
    with pytest.raises(ValueError, match="finite"):
        case_boxes_record("c", one, np.array([np.nan]), np.array([0]), g, ["a"])
    rec = case_boxes_record("c", np.zeros((0, 6)), np.zeros(0), np.zeros(0, int), g, {0: "a"})
    assert rec["boxes"] == [] and rec["num_boxes"] == 0


def _write(out, case_id, centres_scores):
    g = Geometry((8, 8, 8), (1.0, 1.0, 1.0), origin=(10.0, 20.0, 30.0))
    boxes = np.array([[z, y, x, z + 1, y + 1, x + 1] for (z, y, x), _ in centres_scores], float).reshape(-1, 6)
    scores = np.array([s for _, s in centres_scores])
    rec = case_boxes_record(case_id, boxes, scores, np.zeros(len(scores), int), g, ["nodule"])
    return write_case_boxes(out, case_id, rec)


def _no_temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name] == []


def test_candidates_csv_gathers_every_case_sorted(tmp_path):
    path = _write(tmp_path, "case_b", [((1, 2, 3), 0.3), ((4, 5, 6), 0.8)])
    assert path == tmp_path / "case_b_boxes.json"
    assert json.loads(path.read_text())["boxes"][0]["score"] == 0.8
    _write(tmp_path, "case_a", [((0, 0, 0), 0.5)])
    _write(tmp_path, "case_c", [])
    (tmp_path / "case_a.nii.gz").write_bytes(b"")        # other files are not read
    csv_path = write_candidates_csv(tmp_path)
    assert csv_path == tmp_path / "candidates.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    # world (x, y, z) = origin + index (x, y, z) of the unit box's voxel
    assert rows[1:] == [["case_a", "10.0", "20.0", "30.0", "0.5"],
                        ["case_b", "16.0", "25.0", "34.0", "0.8"],
                        ["case_b", "13.0", "22.0", "31.0", "0.3"]]
    assert _no_temporaries(tmp_path)

    only_b = write_candidates_csv(tmp_path, case_ids=["case_b"])
    assert [r[0] for r in csv.reader(only_b.open())][1:] == ["case_b", "case_b"]
    with pytest.raises(FileNotFoundError, match="case_x"):
        write_candidates_csv(tmp_path, case_ids=["case_b", "case_x"])


def test_candidates_csv_of_an_empty_folder_has_the_header(tmp_path):
    path = write_candidates_csv(tmp_path)
    assert path.read_text() == ",".join(CSV_COLUMNS) + "\n"


def test_a_broken_boxes_file_is_named(tmp_path):
    (tmp_path / "bad_boxes.json").write_text("{\"boxes\": [{\"score\": 1}]}")
    with pytest.raises(ValueError, match="bad_boxes.json"):
        write_candidates_csv(tmp_path)
    assert not (tmp_path / "candidates.csv").exists()


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    with pytest.raises(TypeError):
        write_case_boxes(tmp_path, "c", {"boxes": [object()]})
    assert list(tmp_path.iterdir()) == []
    _write(tmp_path, "c", [((1, 1, 1), 0.5)])
    with pytest.raises(TypeError):                       # an existing record is not touched
        write_case_boxes(tmp_path, "c", {"boxes": [object()]})
    assert json.loads((tmp_path / "c_boxes.json").read_text())["num_boxes"] == 1
    assert _no_temporaries(tmp_path)


def test_box_uncertainty_is_the_mean_inside_each_box():
    from volseg.detection.export import box_uncertainty

    m = np.zeros((8, 8, 8), np.float16)
    m[2:4, 2:4, 2:4] = 1.0
    boxes = np.array([[2, 2, 2, 4, 4, 4], [1.5, 2, 2, 4, 4, 4], [6, 6, 6, 6, 6, 6]], float)
    out = box_uncertainty(boxes, {"entropy": m})
    assert out[0]["entropy"] == 1.0 and out[1]["entropy"] == pytest.approx(8 / 12) and np.isnan(out[2]["entropy"])
    rec = case_boxes_record("c", boxes[:1], np.array([0.5]), np.array([0]), Geometry((8, 8, 8), (1.0, 1.0, 1.0)),
                            ["nodule"], out[:1])
    assert rec["boxes"][0]["uncertainty"] == {"entropy": 1.0}
