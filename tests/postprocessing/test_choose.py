"""choose_rules scores with evaluation's Dice and is not swayed by empty/empty cases."""

import math

import numpy as np
import pytest

from volseg.evaluation import evaluate_case
from volseg.evaluation.overlap import dice_score
from volseg.postprocessing.choose import choose_rules, dice, paired_gain

SP = (1.0, 1.0, 1.0)


def test_choose_uses_the_dice_that_evaluation_reports():
    """Regression: empty prediction on empty reference scored 1.0 here and NaN in evaluation."""
    rng = np.random.default_rng(0)
    empty = np.zeros((6, 6, 6), np.uint8)
    assert math.isnan(dice(empty, empty, 1)) and math.isnan(evaluate_case(empty, empty, SP, {"x": 1})["x"]["dice"])
    for _ in range(5):
        pred, ref = (rng.random((2, 6, 6, 6)) < 0.3).astype(np.uint8)
        assert dice(pred, ref, 1) == pytest.approx(evaluate_case(pred, ref, SP, {"x": 1})["x"]["dice"])
        assert dice(pred, ref, 1) == dice_score(pred == 1, ref == 1)
    assert dice(empty, empty + 1, 1) == 0.0


def _lesion_case():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:8, 2:8, 2:8] = 1            # 216 voxels
    ref[14:16, 14:16, 14:16] = 1      # the smallest lesion: 8 voxels
    pred = ref.copy()
    pred[14:16, 14:16, 15] = 0        # only 4 of its voxels are predicted
    return pred, ref, SP


def _lesion_free_case(z):
    pred = np.zeros((20, 20, 20), np.uint8)
    pred[z, 10:12, 10:12] = 1         # a 4-voxel false positive
    return pred, np.zeros_like(pred), SP


def test_rule_that_empties_lesion_free_cases_is_not_rewarded():
    """With empty/empty = 1.0, removing the specks on lesion-free cases earned a full point per case and
    outweighed the partial lesions the same rule deletes on the other cases."""
    cases = [_lesion_case(), _lesion_case(), *(_lesion_free_case(z) for z in (3, 9, 17))]
    chosen = choose_rules(cases, [1])
    assert chosen["rules"] == []
    assert chosen["scores_after"] == chosen["scores_before"]


def test_class_absent_everywhere_neither_blocks_nor_scores():
    cases = []
    for seed in range(3):
        ref = np.zeros((20, 20, 20), np.uint8)
        ref[2:10, 2:10, 2:10] = 1
        pred = ref.copy()
        pred[15:17, 15:17, 15 - seed:17 - seed] = 1  # a false-positive speck
        cases.append((pred, ref, SP))
    chosen = choose_rules(cases, [1, 2])  # label 2 is in no reference and no prediction
    assert [r["label"] for r in chosen["rules"]] == [1]
    assert chosen["scores_before"]["2"] is None and chosen["scores_after"]["2"] is None
    assert chosen["scores_after"]["1"] > chosen["scores_before"]["1"]


def test_paired_gain_uses_cases_defined_on_both_sides():
    nan = float("nan")
    before = np.array([[0.5, nan], [0.0, nan], [0.8, 0.2]])
    after = np.array([[0.7, nan], [nan, 0.3], [0.8, 0.4]])
    np.testing.assert_allclose(paired_gain(after, before), [0.1, 0.2])
    assert paired_gain(np.full((2, 1), nan), np.full((2, 1), nan)).tolist() == [0.0]
