"""Recorded candidates replayed through the aggregator's steps: the same boxes as predicting again.

``NoisyHeads`` gives many overlapping boxes of varied scores in every tile (fixed random 1×1×1
heads on the pooled image), so that NMS and WBC thresholds change the result.
"""

import json

import numpy as np
import pytest
import torch

from volseg.detection.aggregation import BoxAggregator
from volseg.detection.candidates import CANDIDATES_SUFFIX, fused_with, load_candidates, save_candidates
from volseg.detection.export import boxes_to_input_grid, case_boxes_record
from volseg.detection.replay import replay_case, world_candidates
from volseg.inference.sliding_window import run_sliding_window
from volseg.io.nifti import Geometry
from volseg.networks.retina_unet import level_shapes

PATCH = (16, 32, 32)
ANCHORS = {"levels": [{"stride": [2, 4, 4], "shapes": [[4, 4, 4], [3, 6, 6]]},
                      {"stride": [4, 8, 8], "shapes": [[6, 10, 10], [8, 12, 12]]}]}
K, A = 2, 2


class NoisyHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.strides = [lv["stride"] for lv in ANCHORS["levels"]]
        self.cls = [torch.randn(A * K, 1, generator=g) * 4 for _ in self.strides]
        self.box = [torch.randn(A * 6, 1, generator=g) * 0.4 for _ in self.strides]

    def forward(self, x):
        cls, box = [], []
        for s, wc, wb in zip(self.strides, self.cls, self.box):
            p = torch.nn.functional.avg_pool3d(x, s, s)              # (B, 1, z_l, y_l, x_l)
            cls.append(torch.einsum("oc,bczyx->bozyx", wc, p) - 3.0)   # zero input: sigmoid 0.047, below the floor
            box.append(torch.einsum("oc,bczyx->bozyx", wb, p))
        assert [tuple(c.shape[2:]) for c in cls] == level_shapes(tuple(x.shape[2:]), self.strides)
        return {"cls": cls, "box": box}


def _image(shape=(30, 56, 72), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, *shape), generator=g)


def _predict(nms_iou=0.5, wbc_iou=0.2, record=False, image=None):
    agg = BoxAggregator(ANCHORS, PATCH, num_classes=K, num_anchors=A, score_floor=0.05, top_k_per_tile=300,
                        nms_iou=nms_iou, wbc_iou=wbc_iou, max_detections=40, record=record)
    res, _ = run_sliding_window(NoisyHeads(), _image() if image is None else image, PATCH, agg, mirror_axes=(2,),
                                tile_batch=3)
    return res


@pytest.fixture(scope="module")
def recorded():
    return _predict(record=True)


def test_replay_at_the_thresholds_used_gives_the_prediction_bit_for_bit(recorded):
    rec = recorded.candidates
    assert rec is not None and len(rec["scores"]) > 500 and len(rec["offsets"]) > 10
    assert int(rec["members"]) == 2 and float(rec["nms_iou"]) == 0.5
    again = replay_case(rec, 0.5, 0.2)
    assert len(recorded.boxes) == 40
    assert np.array_equal(again.boxes, recorded.boxes) and np.array_equal(again.scores, recorded.scores)
    assert np.array_equal(again.labels, recorded.classes)


@pytest.mark.parametrize("nms_iou,wbc_iou", [(0.3, 0.4), (0.7, 0.1)])
def test_replay_at_other_thresholds_equals_predicting_with_them(recorded, nms_iou, wbc_iou):
    direct = _predict(nms_iou, wbc_iou)
    replayed = replay_case(recorded.candidates, nms_iou, wbc_iou)
    assert np.array_equal(replayed.boxes, direct.boxes) and np.array_equal(replayed.scores, direct.scores)
    base = replay_case(recorded.candidates, 0.5, 0.2)
    assert not np.array_equal(replayed.scores, base.scores)   # the thresholds matter on these boxes


def test_recording_changes_nothing_and_an_empty_case_records_nothing(recorded):
    plain = _predict()
    assert plain.candidates is None
    assert np.array_equal(plain.boxes, recorded.boxes) and np.array_equal(plain.scores, recorded.scores)
    empty = _predict(record=True, image=torch.zeros(1, 30, 56, 72))
    assert len(empty.boxes) == 0 and len(empty.candidates["scores"]) == 0
    assert len(replay_case(empty.candidates, 0.3, 0.3)) == 0


def test_file_round_trip_and_world_rows_match_the_boxes_json(recorded, tmp_path):
    props = {"crop_bbox": [[1, 31], [0, 56], [2, 74]], "shape_after_crop": [30, 56, 72],
             "shape_after_resampling": [30, 56, 72]}
    geometry = Geometry((33, 56, 80), (2.5, 0.8, 0.7), (10.0, -20.0, 5.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    path = save_candidates(tmp_path, "c1", recorded.candidates, props, geometry)
    assert path.name == f"c1{CANDIDATES_SUFFIX}"
    rec = load_candidates(path)
    assert fused_with(path) == (0.5, 0.2)
    assert rec["geometry"] == geometry and rec["props"]["crop_bbox"] == props["crop_bbox"]
    for k in ("boxes", "scores", "labels", "weights", "group", "offsets"):
        assert np.array_equal(rec[k], recorded.candidates[k]) and rec[k].dtype == recorded.candidates[k].dtype
    rows = world_candidates(rec, replay_case(rec, 0.5, 0.2))
    box_rec = case_boxes_record("c1", boxes_to_input_grid(recorded.boxes, props), recorded.scores,
                                recorded.classes, geometry, ["a", "b"])
    expected = np.asarray([[*b["centre_world_mm"], b["score"], b["diameter_mm"]] for b in box_rec["boxes"]])
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-9)


def test_a_file_that_is_not_a_candidates_file_is_named(tmp_path):
    bad = tmp_path / "x_candidates.npz"
    np.savez(bad, boxes=np.zeros((0, 6)))
    with pytest.raises(ValueError, match=r"x_candidates.npz: not a candidates file: missing scores"):
        load_candidates(bad)
    (tmp_path / "y_candidates.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"y_candidates.npz: cannot read"):
        load_candidates(tmp_path / "y_candidates.npz")
    with pytest.raises(ValueError, match=r"x_candidates.npz: cannot read"):
        fused_with(bad)
    obj = tmp_path / "z_candidates.npz"
    np.savez(obj, **{k: np.zeros(1) for k in json.loads('["boxes"]')}, props=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"z_candidates.npz"):
        load_candidates(obj)
