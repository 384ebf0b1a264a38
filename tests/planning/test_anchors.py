"""Anchor planning from object extents: search quality, determinism, levels, edge cases."""

import json

import numpy as np
import pytest

from volseg.planning.anchors import (centred_iou, choose_detection_levels, determine_anchors, instance_extents_mm,
                                     level_strides, mean_best_iou, plan_anchors)

STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]   # totals 1, 2, 4, 8, 16


def synthetic_fingerprint(seed=0, n_cases=20, per_case=15):
    """Objects of three size groups (about 5, 12 and 30 mm) with ±15% aspect jitter per axis."""
    rng = np.random.default_rng(seed)
    cases = []
    for c in range(n_cases):
        objects = []
        for _ in range(per_case):
            size = rng.choice([5.0, 12.0, 30.0]) * rng.uniform(0.85, 1.15, 3)
            objects.append({"class": 1, "extent_mm": [round(float(e), 3) for e in size]})
        cases.append({"case_id": f"c{c:03d}", "objects": objects})
    return {"cases": cases}


def test_extents_come_from_every_case_in_order():
    fp = {"cases": [{"objects": [{"extent_mm": [1.0, 2.0, 3.0]}]}, {"objects": []},
                    {"objects": [{"extent_mm": [4.0, 5.0, 6.0]}, {"extent_mm": [7.0, 8.0, 9.0]}]}]}
    assert instance_extents_mm(fp).tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.mark.parametrize("fp", [{"cases": []}, {"cases": [{"objects": []}, {"case_id": "x"}]}, {}])
def test_no_instances_is_a_clear_error(fp):
    with pytest.raises(ValueError, match="no training instances"):
        instance_extents_mm(fp)


def test_mean_best_iou_by_hand():
    # (2,4,4) vs anchor (4,4,4): 32 / (32 + 64 - 32) = 0.5; (4,4,4) vs (2,2,2): 8 / 64 = 0.125
    assert mean_best_iou(np.array([[2, 4, 4], [4, 4, 4]]), np.array([[4, 4, 4]])) == pytest.approx((0.5 + 1.0) / 2)
    assert mean_best_iou(np.array([[4, 4, 4]]), np.array([[2, 2, 2]])) == pytest.approx(0.125)
    # the best anchor counts, per box
    assert mean_best_iou(np.array([[2, 4, 4], [4, 4, 4]]), np.array([[2, 4, 4], [4, 4, 4]])) == pytest.approx(1.0)


def test_centred_iou_is_symmetric_and_one_on_itself():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(1, 20, (5, 3)), rng.uniform(1, 20, (4, 3))
    np.testing.assert_allclose(centred_iou(a, b), centred_iou(b, a).T)
    np.testing.assert_allclose(np.diag(centred_iou(a, a)), 1.0)


def test_level_strides_are_cumulative():
    assert level_strides([[1, 1, 1], [1, 2, 2], [2, 2, 2]]) == [[1, 1, 1], [1, 2, 2], [2, 4, 4]]


def test_planned_anchors_fit_the_boxes_and_beat_one_size():
    ext_mm = instance_extents_mm(synthetic_fingerprint())
    spacing = [1.0, 0.8, 0.8]
    ext_vox = ext_mm / np.asarray(spacing)
    strides = level_strides(STRIDES)[1:4]
    plan = plan_anchors(ext_mm, spacing, strides, anchors_per_level=3)
    shapes = np.asarray([s for level in plan["levels"] for s in level["shapes"]])
    assert plan["num_boxes"] == 300 and shapes.shape == (9, 3)
    assert plan["mean_best_iou"] == pytest.approx(mean_best_iou(ext_vox, shapes), abs=1e-6)
    assert plan["mean_best_iou"] > 0.8
    naive = mean_best_iou(ext_vox, np.median(ext_vox, axis=0)[None])
    assert plan["mean_best_iou"] > naive + 0.3
    # three sizes of boxes, three sizes of anchors overall would already do well: each group is matched
    for size in (5.0, 12.0, 30.0):
        group = ext_vox[np.abs(ext_mm.mean(axis=1) - size) < 0.2 * size]
        assert mean_best_iou(group, shapes) > 0.75


def test_anchor_shapes_are_shared_bases_scaled_by_stride():
    plan = plan_anchors(instance_extents_mm(synthetic_fingerprint()), [1.0, 1.0, 1.0], [[2, 2, 2], [4, 4, 4], [8, 8, 8]])
    bases = [np.asarray(level["shapes"]) / np.asarray(level["stride"]) for level in plan["levels"]]
    for b in bases[1:]:
        np.testing.assert_allclose(b, bases[0], atol=0.01)
    volumes = np.prod(plan["levels"][0]["shapes"], axis=1)
    assert np.all(np.diff(volumes) > 0)   # ordered by volume, and distinct


def test_planning_is_deterministic_and_json_ready():
    ext = instance_extents_mm(synthetic_fingerprint(seed=3))
    a = plan_anchors(ext, [1.0, 0.8, 0.8], [[2, 2, 2], [4, 4, 4]], seed=7)
    b = plan_anchors(ext, [1.0, 0.8, 0.8], [[2, 2, 2], [4, 4, 4]], seed=7)
    assert a == b
    assert json.loads(json.dumps(a)) == a


def test_many_boxes_use_sampling_and_still_fit():
    rng = np.random.default_rng(0)
    d = np.exp(rng.normal(np.log(10.0), 0.5, 5000))
    ext = d[:, None] * rng.uniform(0.8, 1.2, (5000, 3))
    plan = plan_anchors(ext, [1.0, 1.0, 1.0], [[2, 2, 2], [4, 4, 4], [8, 8, 8]], seed=0)
    assert plan["num_boxes"] == 5000 and plan["mean_best_iou"] > 0.7


def test_one_box_is_matched_exactly_with_distinct_anchors():
    plan = plan_anchors(np.array([[9.0, 6.0, 3.0]]), [1.5, 1.0, 1.0], [[1, 2, 2]], anchors_per_level=3)
    shapes = np.asarray(plan["levels"][0]["shapes"])
    assert plan["mean_best_iou"] > 0.995
    assert len(np.unique(shapes, axis=0)) == 3
    assert np.any(np.all(np.abs(shapes - [6.0, 6.0, 3.0]) < 0.05, axis=1))   # 9 mm / 1.5 mm = 6 voxels in z


def test_anisotropic_spacing_gives_anchors_in_voxels():
    # 12 mm spheres on 3 mm slices with 0.75 mm pixels: 4 x 16 x 16 voxels
    ext_mm = np.full((10, 3), 12.0)
    plan = plan_anchors(ext_mm, [3.0, 0.75, 0.75], [[1, 2, 2], [1, 4, 4], [2, 8, 8]], anchors_per_level=2)
    shapes = np.asarray([s for level in plan["levels"] for s in level["shapes"]])
    best = shapes[np.argmax(centred_iou(np.array([[4.0, 16.0, 16.0]]), shapes)[0])]
    np.testing.assert_allclose(best, [4.0, 16.0, 16.0], rtol=0.02)
    assert plan["mean_best_iou"] > 0.97


@pytest.mark.parametrize("kwargs,match", [
    (dict(extents_mm=np.zeros((0, 3))), "no boxes"),
    (dict(extents_mm=np.ones((4, 2))), r"\(N, 3\)"),
    (dict(extents_mm=np.array([[1.0, 0.0, 1.0]])), "positive"),
    (dict(spacing=[1.0, -1.0, 1.0]), "spacing"),
    (dict(level_strides=[]), "level_strides"),
    (dict(anchors_per_level=0), "anchors_per_level"),
])
def test_bad_inputs_are_named(kwargs, match):
    args = dict(extents_mm=np.ones((4, 3)), spacing=[1.0, 1.0, 1.0], level_strides=[[2, 2, 2]])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        plan_anchors(**args)


def test_detection_levels_follow_box_sizes():
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]   # totals 1, 2, 4, 8
    # 8 voxels: 8, 4, 2, 1 cells -> home level 2; 40 voxels: 40, 20, 10, 5 -> home level 3
    assert choose_detection_levels(strides, np.array([[8.0, 8.0, 8.0]])) == [2]
    assert choose_detection_levels(strides, np.array([[8.0, 8.0, 8.0], [40.0, 40.0, 40.0]])) == [2, 3]
    # 3 voxels fit nowhere above full resolution (1.5 cells at level 1), which carries no head by default
    assert choose_detection_levels(strides, np.array([[3.0, 3.0, 3.0]])) == [1]
    assert choose_detection_levels(strides, np.array([[3.0, 3.0, 3.0]]), min_level=0) == [0]
    # a contiguous range even with nothing in between
    assert choose_detection_levels(strides, np.array([[4.0, 4.0, 4.0], [100.0, 100.0, 100.0]])) == [1, 2, 3]


def test_detection_levels_of_flat_boxes_on_anisotropic_strides():
    strides = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]   # totals (1,1,1), (1,2,2), (1,4,4), (2,8,8)
    # 2 x 40 x 40: level 2 gives (2, 10, 10) cells, level 3 gives (1, 5, 5): z decides
    assert choose_detection_levels(strides, np.array([[2.0, 40.0, 40.0]])) == [2]


def test_determine_anchors_names_the_levels():
    fp = synthetic_fingerprint()
    out = determine_anchors(fp, [1.0, 0.8, 0.8], STRIDES)
    assert out["detection_levels"] == [level["level"] for level in out["levels"]]
    totals = level_strides(STRIDES)
    assert [level["stride"] for level in out["levels"]] == [totals[i] for i in out["detection_levels"]]
    # 5 mm at 0.8 mm is ~6 voxels: home level 1; 30 mm is ~37 voxels: home level 4 (2.3 cells at stride 16)
    assert out["detection_levels"] == [1, 2, 3, 4]
    assert out["mean_best_iou"] > 0.8
