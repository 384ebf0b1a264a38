import numpy as np
import pytest

from volseg.postprocessing.choose import choose_rules
from volseg.postprocessing.components import apply_rules, keep_largest_component, remove_small_components


def _two_blobs():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:10, 2:10, 2:10] = 1      # 512 voxels
    lab[14:16, 14:16, 14:16] = 1   # 8 voxels
    return lab


def test_remove_small_uses_mm3():
    lab = _two_blobs()
    out = remove_small_components(lab, 1, 10.0, (1.0, 1.0, 1.0))
    assert out.sum() == 512 and lab.sum() == 520  # input not modified
    # at 2 mm³ per voxel the small blob is 16 mm³ and survives
    assert remove_small_components(lab, 1, 10.0, (2.0, 1.0, 1.0)).sum() == 520


def test_keep_largest_and_regions():
    lab = _two_blobs()
    lab[14:16, 14:16, 14:16] = 2
    assert set(np.unique(keep_largest_component(lab, 1))) == {0, 1, 2}  # only label 1 considered
    out = keep_largest_component(lab, [1, 2])
    assert (out == 2).sum() == 0 and (out == 1).sum() == 512


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown post-processing rule"):
        apply_rules(np.zeros((2, 2, 2), np.uint8), [{"kind": "dilate", "label": 1}], (1, 1, 1))


def test_choose_rules_finds_spurious_specks_and_leaves_good_predictions():
    cases = []
    for seed in range(3):
        ref = np.zeros((20, 20, 20), np.uint8)
        ref[2:10, 2:10, 2:10] = 1
        pred = ref.copy()
        pred[15:17, 15:17, 15 - seed:17 - seed] = 1  # a false-positive speck
        cases.append((pred, ref, (1.0, 1.0, 1.0)))
    chosen = choose_rules(cases, [1])
    assert chosen["rules"] and chosen["scores_after"]["1"] > chosen["scores_before"]["1"]
    clean = [(ref, ref, sp) for _, ref, sp in cases]
    assert choose_rules(clean, [1])["rules"] == []
