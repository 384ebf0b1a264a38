"""Losses: hand-computed values, MONAI's Dice as oracle, empty targets, regions, deep supervision."""

import math

import monai
import pytest
import torch
import torch.nn.functional as F

from volseg.training.losses import (DeepSupervisionLoss, DiceBCELoss, DiceCELoss, build_loss,
                                    default_deep_supervision_weights, labels_to_regions, list_losses, soft_dice)


def random_case(b=2, c=3, shape=(3, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, *shape, generator=g)
    target = torch.randint(0, c, (b, 1, *shape), generator=g).to(torch.int16)
    return logits, target


def test_dice_ce_matches_hand_computation():
    # one sample, two classes, two voxels: logits favour class 1 at voxel 0, class 0 at voxel 1
    logits = torch.tensor([[[[[0.0, 2.0]]], [[[1.0, 0.0]]]]])  # (1, 2, 1, 1, 2): channel 0 then channel 1
    target = torch.tensor([[[[[1, 1]]]]])
    p1 = [1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(2.0))]  # softmax prob of class 1 per voxel
    ce = -(math.log(p1[0]) + math.log(p1[1])) / 2
    s = 1e-5
    dice = (2 * sum(p1) + s) / (sum(p1) + 2 + s)  # foreground class only (do_bg False)
    loss = DiceCELoss()(logits, target)
    assert float(loss) == pytest.approx(ce + 1 - dice, rel=1e-6)


@pytest.mark.parametrize("batch_dice", [True, False])
def test_dice_term_matches_monai(batch_dice):
    logits, target = random_case()
    ours = DiceCELoss(batch_dice=batch_dice, weight_ce=0.0)(logits, target)
    ref = monai.losses.DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=batch_dice,
                                smooth_nr=1e-5, smooth_dr=1e-5)(logits, target.long())
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)


def test_ce_term_matches_torch():
    logits, target = random_case()
    ours = DiceCELoss(weight_dice=0.0)(logits, target)
    assert float(ours) == pytest.approx(float(F.cross_entropy(logits, target[:, 0].long())), rel=1e-6)


def test_perfect_prediction_has_near_zero_loss():
    _, target = random_case()
    logits = 50.0 * F.one_hot(target[:, 0].long(), 3).permute(0, 4, 1, 2, 3).float()
    assert float(DiceCELoss()(logits, target)) < 1e-4


@pytest.mark.parametrize("batch_dice", [True, False])
def test_empty_target_gives_finite_loss_and_gradients(batch_dice):
    logits, _ = random_case()
    logits.requires_grad_(True)
    target = torch.zeros(2, 1, 3, 4, 5, dtype=torch.int16)
    loss = DiceCELoss(batch_dice=batch_dice)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # an empty class with an empty prediction scores Dice 1
    empty = soft_dice(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2))
    assert float(empty) == pytest.approx(1.0)


def test_ignore_label_voxels_do_not_count():
    logits, target = random_case()
    target[:, :, 0] = 9  # ignore the first z slice
    loss_fn = DiceCELoss(ignore_label=9)
    loss = loss_fn(logits, target)
    changed = logits.clone()
    changed[:, :, 0] = torch.randn_like(changed[:, :, 0]) * 10
    assert float(loss_fn(changed, target)) == pytest.approx(float(loss), rel=1e-6)
    # the same as scoring only the remaining voxels
    assert float(loss) == pytest.approx(float(DiceCELoss()(logits[:, :, 1:], target[:, :, 1:])), rel=1e-5)
    all_ignored = loss_fn(logits, torch.full_like(target, 9))
    assert torch.isfinite(all_ignored)


def test_region_loss_label_maps_equal_binary_targets():
    regions = {"whole": [1, 2], "core": [2]}  # overlapping
    _, labels = random_case()
    binary = labels_to_regions(labels, regions)
    assert binary.shape == (2, 2, 3, 4, 5)
    assert torch.equal(binary[:, 0].bool(), labels[:, 0] > 0) and torch.equal(binary[:, 1].bool(), labels[:, 0] == 2)
    logits = torch.randn(2, 2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    from_labels = DiceBCELoss(regions=regions)(logits, labels)
    from_binary = DiceBCELoss()(logits, binary)
    assert float(from_labels) == pytest.approx(float(from_binary), rel=1e-6)
    # hand/oracle check: BCE mean + (1 - batch soft Dice on sigmoid, every region counted)
    ref_dice = monai.losses.DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, binary)
    ref = F.binary_cross_entropy_with_logits(logits, binary) + ref_dice
    assert float(from_binary) == pytest.approx(float(ref), rel=1e-5)


def test_region_loss_ignore_label_and_errors():
    regions = [[1, 2], [2]]
    _, labels = random_case()
    labels[:, :, -1] = 7
    logits = torch.randn(2, 2, 3, 4, 5)
    loss = DiceBCELoss(regions=regions, ignore_label=7)
    ref = DiceBCELoss(regions=regions)(logits[:, :, :-1], labels[:, :, :-1])
    assert float(loss(logits, labels)) == pytest.approx(float(ref), rel=1e-5)
    with pytest.raises(ValueError, match="ignore_label: needs regions"):
        DiceBCELoss(ignore_label=7)
    with pytest.raises(ValueError, match=r"target \(B, 2, z, y, x\)"):
        DiceBCELoss()(logits, labels)


def test_shape_mismatch_raises():
    logits, target = random_case()
    with pytest.raises(ValueError, match="same size"):
        DiceCELoss()(logits, target[:, :, 1:])


def test_default_deep_supervision_weights():
    assert default_deep_supervision_weights(1) == [1.0]
    assert default_deep_supervision_weights(2) == [1.0, 0.0]
    w = default_deep_supervision_weights(4)
    assert w == pytest.approx([8 / 14, 4 / 14, 2 / 14, 0.0]) and sum(w) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        default_deep_supervision_weights(0)


def test_deep_supervision_loss_is_the_weighted_sum():
    outs, tgts = zip(*(random_case(shape=s, seed=i) for i, s in enumerate([(4, 8, 8), (4, 4, 4), (2, 2, 2)])))
    base = DiceCELoss()
    ds = DeepSupervisionLoss(base, [0.5, 0.3, 0.2])
    expected = sum(w * float(base(o, t)) for w, o, t in zip([0.5, 0.3, 0.2], outs, tgts))
    assert float(ds(list(outs), list(tgts))) == pytest.approx(expected, rel=1e-6)
    # default weights; the zero-weight output still gets a (zero) gradient, as DDP needs
    outs = [o.clone().requires_grad_(True) for o in outs]
    default = DeepSupervisionLoss(base)(outs, list(tgts))
    w = default_deep_supervision_weights(3)
    with torch.no_grad():
        expected = w[0] * float(base(outs[0], tgts[0])) + w[1] * float(base(outs[1], tgts[1]))
    assert float(default.detach()) == pytest.approx(expected)
    default.backward()
    assert outs[2].grad is not None and torch.count_nonzero(outs[2].grad) == 0
    # deep supervision switched off: a single tensor output is scored against the first target
    with torch.no_grad():
        assert float(ds(outs[0], list(tgts))) == pytest.approx(float(base(outs[0], tgts[0])))
    with pytest.raises(ValueError, match="expected 3 targets"):
        ds(list(outs), list(tgts[:2]))
    with pytest.raises(ValueError, match="deep_supervision_weights: expected 3 weights"):
        DeepSupervisionLoss(base, [1.0, 0.0])(list(outs), list(tgts))


def test_build_loss():
    assert "dice_ce" in list_losses()
    assert isinstance(build_loss({"name": "dice_ce"}), DiceCELoss)
    assert isinstance(build_loss({"name": "dice_ce"}, mode="sigmoid", regions={"a": [1]}), DiceBCELoss)
    assert isinstance(build_loss({"name": "dice_ce", "region_based": True}), DiceBCELoss)
    ds = build_loss({"name": "dice_ce", "deep_supervision_weights": [0.6, 0.4]}, mode="softmax",
                    deep_supervision=True)
    assert isinstance(ds, DeepSupervisionLoss) and ds.weights == [0.6, 0.4]
    cfg = build_loss({"name": "dice_ce", "batch_dice": False, "ignore_label": 4, "weight_ce": 2.0})
    assert (cfg.batch_dice, cfg.ignore_label, cfg.weight_ce) == (False, 4, 2.0)
    with pytest.raises(ValueError, match="training.loss.name: unknown loss 'focal'"):
        build_loss({"name": "focal"})
    with pytest.raises(ValueError, match="region_based: True contradicts outputs mode 'softmax'"):
        build_loss({"name": "dice_ce", "region_based": True}, mode="softmax")
    with pytest.raises(ValueError, match="mode: expected 'softmax' or 'sigmoid'"):
        build_loss({"name": "dice_ce"}, mode="softmx")
