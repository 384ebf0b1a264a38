"""ATSS matching, ignore boxes and hard-negative sampling on hand-made anchors and boxes."""

import pytest
import torch

from volseg.detection.matching import (BACKGROUND, IGNORE, AnchorMatcher, HardNegativeSampler, anchor_labels,
                                       ignored_anchors)


def row_anchors():
    """Two levels of anchors along x, z and y in [0, 4).

    Level 1 (indices 0-7): 4 x 4 x 4 cubes at x = [4i, 4i + 4), centres 2, 6, 10, ...
    Level 2 (indices 8-11): 4 x 4 x 8 boxes at x = [8i, 8i + 8), centres 4, 12, 20, 28.
    """
    level1 = [[0, 0, 4 * i, 4, 4, 4 * i + 4] for i in range(8)]
    level2 = [[0, 0, 8 * i, 4, 4, 8 * i + 8] for i in range(4)]
    return torch.tensor(level1 + level2, dtype=torch.float32), [8, 4]


def box_x(x0, x1):
    return [0.0, 0.0, float(x0), 4.0, 4.0, float(x1)]


def positives(matches):
    return torch.nonzero(matches >= 0).reshape(-1).tolist()


def test_atss_on_two_levels_worked_by_hand():
    # box x [7, 14), volume 112, centre 10.5; 3 nearest centres per level:
    #   level 1: #2 [8, 12) IoU 64/112 = .5714, #3 [12, 16) 32/144 = .2222, #1 [4, 8) 16/160 = .1
    #   level 2: #9 [8, 16) 96/144 = .6667, #8 [0, 8) 16/224 = .0714, #10 [16, 24) 0
    # mean .2720 + std (n - 1) .2799 = threshold .5518 -> positives #2 and #9
    anchors, levels = row_anchors()
    matches = AnchorMatcher(num_candidates=3, anchors_per_location=1)(anchors, torch.tensor([box_x(7, 14)]), levels)
    assert positives(matches) == [2, 9]
    assert matches.dtype == torch.int64 and set(matches.tolist()) == {0, BACKGROUND}


def test_an_anchor_positive_for_two_boxes_takes_the_higher_iou():
    # box 1 equals anchor #9 (IoU 1); its candidates' IoUs .5, .5, 0 | 1, 0, 0 give threshold .7416,
    # so only #9 is positive for it; #9 is also positive for box 0 (IoU .6667, see above) and goes to box 1
    anchors, levels = row_anchors()
    boxes = torch.tensor([box_x(7, 14), box_x(8, 16)])
    matches = AnchorMatcher(num_candidates=3, anchors_per_location=1)(anchors, boxes, levels)
    assert positives(matches) == [2, 9]
    assert matches[2].item() == 0 and matches[9].item() == 1


def test_candidates_count_all_anchors_of_a_location():
    # one location with three anchor shapes: 3 candidates, IoUs .125, 1, .125, threshold .92 -> the middle one
    anchors = torch.tensor([[6., 6., 6., 10., 10., 10.], [4., 4., 4., 12., 12., 12.], [0., 0., 0., 16., 16., 16.]])
    matcher = AnchorMatcher(num_candidates=1, anchors_per_location=3)
    assert matcher(anchors, torch.tensor([[4., 4., 4., 12., 12., 12.]]), [3]).tolist() == [-1, 0, -1]


def test_center_in_gt_drops_candidates_centred_outside_the_box():
    # box y in [2.2, 4): anchor #2 (IoU .45, threshold .41) is positive, but its centre y = 2 lies outside
    anchors, _ = row_anchors()
    anchors = anchors[:8]
    box = torch.tensor([[0., 2.2, 8., 4., 4., 12.]])
    assert positives(AnchorMatcher(3, 1, center_in_gt=False)(anchors, box, [8])) == [2]
    assert positives(AnchorMatcher(3, 1, center_in_gt=True)(anchors, box, [8])) == []


def test_no_boxes_gives_background_on_the_anchors_device():
    anchors, levels = row_anchors()
    matches = AnchorMatcher(3, 1)(anchors, torch.zeros(0, 6), levels)
    assert matches.tolist() == [BACKGROUND] * 12
    assert matches.device == anchors.device and matches.dtype == torch.int64


def test_ignore_boxes_by_iou_and_by_centre():
    # ignore box x [9, 11): anchor #2 [8, 12) has IoU .5 and its centre (x = 10) inside; #1 and #3 touch it not
    anchors, levels = row_anchors()
    ignore = torch.tensor([box_x(9, 11)])
    none = torch.zeros(0, 6)
    both = AnchorMatcher(3, 1, ignore_iou=0.1)(anchors, none, levels, ignore)
    assert torch.nonzero(both == IGNORE).reshape(-1).tolist() == [2, 9]   # #9 [8, 16): IoU 32/128 = .25
    by_centre = AnchorMatcher(3, 1, ignore_iou=0.6, ignore_center=True)(anchors, none, levels, ignore)
    assert torch.nonzero(by_centre == IGNORE).reshape(-1).tolist() == [2]     # IoU .5 < .6, centre inside
    neither = AnchorMatcher(3, 1, ignore_iou=0.6, ignore_center=False)(anchors, none, levels, ignore)
    assert (neither == BACKGROUND).all()


def test_positives_stay_positive_inside_an_ignore_box():
    anchors, levels = row_anchors()
    boxes = torch.tensor([box_x(7, 14)])
    matches = AnchorMatcher(3, 1)(anchors, boxes, levels, ignore_boxes=torch.tensor([box_x(4, 16)]))
    assert positives(matches) == [2, 9]
    # ignore box x [4, 16), volume 192: #1 and #3 lie inside it, #8 [0, 8) has IoU 64/256 = .25
    assert matches[[1, 3, 8]].tolist() == [IGNORE] * 3
    assert matches[[0, 4, 5, 10, 11]].tolist() == [BACKGROUND] * 5     # #10 [16, 24) only touches it


def test_ignored_anchors_is_half_open():
    anchors = torch.tensor([[0., 0., 0., 2., 2., 2.], [0., 0., 2., 2., 2., 4.]])   # centres x = 1 and 3
    flagged = ignored_anchors(anchors, torch.tensor([[0., 0., 0., 2., 2., 3.]]), iou_threshold=0.99)
    assert flagged.tolist() == [True, False]                                       # x = 3 is outside [0, 3)


def test_matcher_rejects_bad_level_counts_and_shapes():
    anchors, _ = row_anchors()
    with pytest.raises(ValueError, match="num_anchors_per_level"):
        AnchorMatcher(3, 1)(anchors, torch.tensor([box_x(7, 14)]), [8, 3])
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        AnchorMatcher(3, 1)(anchors, torch.zeros(2, 4), [8, 4])
    with pytest.raises(ValueError, match="ignore_iou"):
        AnchorMatcher(ignore_iou=1.0)


def test_anchor_labels():
    matches = torch.tensor([-1, 1, 0, -2, 1])
    assert anchor_labels(matches, torch.tensor([2, 0])).tolist() == [0, 1, 3, -1, 1]
    assert anchor_labels(torch.tensor([-1, -2]), torch.zeros(0, dtype=torch.int64)).tolist() == [0, -1]


def sampler_labels(n_pos, n_neg, n_ignore):
    return torch.cat([torch.ones(n_pos), torch.zeros(n_neg), -torch.ones(n_ignore)]).long()


@pytest.mark.parametrize("n_pos, n_neg, want_pos, want_neg", [
    (100, 1000, 84, 170),   # int(256 * .33) = 84 positives; int(84 * (1 / .33 - 1)) = 170 negatives
    (0, 1000, 0, 16),       # no positives: min_neg negatives
    (5, 10, 5, 10),         # fewer negatives than wanted: all of them
    (10, 1000, 10, 20),     # int(10 * 2.0303) = 20
])
def test_sampler_counts(n_pos, n_neg, want_pos, want_neg):
    labels = sampler_labels(n_pos, n_neg, 7)
    sampler = HardNegativeSampler(generator=torch.Generator().manual_seed(0))
    pos, neg = sampler.select_samples_img_list([labels], [torch.rand(len(labels))])
    assert int(pos[0].sum()) == want_pos and int(neg[0].sum()) == want_neg
    assert (labels[pos[0].bool()] >= 1).all() and (labels[neg[0].bool()] == 0).all()   # ignored never sampled


def test_sampler_takes_the_hardest_negatives_with_a_pool_of_one():
    labels = sampler_labels(1, 50, 0)
    scores = torch.arange(51, dtype=torch.float32)          # negative scores 1..50, highest last
    sampler = HardNegativeSampler(min_neg=4, pool_size=1, generator=torch.Generator().manual_seed(0))
    _, neg = sampler.select_samples_img_list([labels], [scores])
    assert torch.nonzero(neg[0]).reshape(-1).tolist() == [47, 48, 49, 50]


def test_sampler_is_deterministic_with_a_generator():
    labels = sampler_labels(200, 2000, 0)
    scores = torch.rand(len(labels), generator=torch.Generator().manual_seed(1))

    def draw(seed):
        sampler = HardNegativeSampler(generator=torch.Generator().manual_seed(seed))
        pos, neg = sampler.select_samples_img_list([labels, labels], [scores, scores])
        return torch.stack(pos + neg)

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_sampler_rejects_bad_settings():
    with pytest.raises(ValueError, match="positive_fraction"):
        HardNegativeSampler(positive_fraction=1.0)
