"""DetectionLoss: classification over sampled anchors and GIoU box loss, with hand-checked values."""

import math

import pytest
import torch
from torch import nn

from volseg.detection.losses import DetectionLoss
from volseg.detection.matching import AnchorMatcher, HardNegativeSampler


def row_anchors(n=6):
    """4 x 4 x 4 anchors along x: x in [4i, 4i + 4), one level, one anchor per location."""
    return torch.tensor([[0., 0., 4. * i, 4., 4., 4. * i + 4.] for i in range(n)])


def make_loss(**kwargs):
    sampler = HardNegativeSampler(generator=torch.Generator().manual_seed(0))
    return DetectionLoss(matcher=AnchorMatcher(num_candidates=3, anchors_per_location=1), sampler=sampler, **kwargs)


def test_values_by_hand():
    # the box equals anchor #2, its only positive; all 5 negatives are sampled (min_neg 16 > 5)
    loss = make_loss(num_classes=2)
    anchors = row_anchors()
    logits = torch.zeros(1, 6, 2, requires_grad=True)
    deltas = torch.zeros(1, 6, 6)
    deltas[0, 2, 2] = 0.5                          # anchor #2 moved by half its x extent: x [10, 14)
    deltas.requires_grad_(True)
    terms = loss(logits, deltas, anchors, [6], [torch.tensor([[0., 0., 8., 4., 4., 12.]])], [torch.tensor([1])])
    # cls: 6 anchors x 2 classes of BCE(0 logit) = log 2 each, over 1 positive
    assert terms["cls"].item() == pytest.approx(12 * math.log(2), rel=1e-6)
    # box: IoU (2 x 4 x 4) / (6 x 4 x 4) = 1/3, enclosure = union -> GIoU 1/3, loss 2/3
    assert terms["box"].item() == pytest.approx(2 / 3, rel=1e-5)


def test_weights_scale_the_terms_and_focal_with_gamma_0_is_bce():
    anchors, gt = row_anchors(), [torch.tensor([[0., 0., 7., 4., 4., 13.]])]
    logits, deltas = torch.randn(1, 6, 1), torch.randn(1, 6, 6) * 0.1
    plain = make_loss(num_classes=1)(logits, deltas, anchors, [6], gt, [torch.tensor([0])])
    weighted = make_loss(num_classes=1, weights={"cls": 2.0, "box": 0.5})(logits, deltas, anchors, [6], gt,
                                                                         [torch.tensor([0])])
    assert weighted["cls"].item() == pytest.approx(2 * plain["cls"].item(), rel=1e-6)
    assert weighted["box"].item() == pytest.approx(0.5 * plain["box"].item(), rel=1e-6)
    focal = make_loss(num_classes=1, cls_loss="focal", focal_gamma=0.0, focal_alpha=None)
    assert focal(logits, deltas, anchors, [6], gt, [torch.tensor([0])])["cls"].item() == \
        pytest.approx(plain["cls"].item(), rel=1e-5)
    focal2 = make_loss(num_classes=1, cls_loss="focal")(logits, deltas, anchors, [6], gt, [torch.tensor([0])])
    assert 0 < focal2["cls"].item() < plain["cls"].item()


class ToyHead(nn.Module):
    """Per-anchor learnable features → class logits and deltas through two linear heads."""

    def __init__(self, n, num_classes):
        super().__init__()
        self.features = nn.Parameter(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)))
        self.cls, self.box = nn.Linear(8, num_classes), nn.Linear(8, 6)

    def forward(self, batch):
        f = self.features.expand(batch, -1, -1)
        return self.cls(f), self.box(f) * 0.1


def test_loss_decreases_under_a_few_optimizer_steps():
    torch.manual_seed(0)
    anchors = row_anchors(12)
    boxes = [torch.tensor([[0., 0., 7., 4., 4., 14.], [1., 0., 30., 4., 5., 38.]]),
             torch.tensor([[0., 0., 19.5, 4., 4., 24.5]])]
    classes = [torch.tensor([0, 1]), torch.tensor([1])]
    head, loss = ToyHead(12, 2), make_loss(num_classes=2)
    assert [int((loss.matcher(anchors, b, [12]) >= 0).sum()) for b in boxes] == [2, 1]   # positives per image
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    history = []
    for _ in range(30):
        terms = loss(*head(2), anchors, [12], boxes, classes)
        total = terms["cls"] + terms["box"]
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append((terms["cls"].item(), terms["box"].item()))
    assert all(math.isfinite(c) and math.isfinite(b) for c, b in history)
    assert history[-1][0] < 0.5 * history[0][0]
    assert history[-1][1] < 0.8 * history[0][1]


def test_zero_positives_give_a_finite_loss_and_zero_box_gradients_for_every_parameter():
    head, loss = ToyHead(6, 1), make_loss(num_classes=1)
    logits, deltas = head(2)
    empty = [torch.zeros(0, 6), torch.zeros(0, 6)]
    terms = loss(logits, deltas, row_anchors(), [6], empty, [torch.zeros(0, dtype=torch.int64)] * 2)
    assert torch.isfinite(terms["cls"]) and terms["cls"].item() > 0
    assert terms["box"].item() == 0.0
    (terms["cls"] + terms["box"]).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.count_nonzero(head.box.weight.grad) == 0 and torch.count_nonzero(head.box.bias.grad) == 0


def test_all_anchors_ignored_gives_zero_terms_with_gradients():
    head, loss = ToyHead(6, 1), make_loss(num_classes=1)
    logits, deltas = head(1)
    ignore = [torch.tensor([[0., 0., 0., 4., 4., 24.]])]
    terms = loss(logits, deltas, row_anchors(), [6], [torch.zeros(0, 6)], [torch.zeros(0, dtype=torch.int64)], ignore)
    assert terms["cls"].item() == 0.0 and terms["box"].item() == 0.0
    (terms["cls"] + terms["box"]).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_ignored_anchors_take_no_part_in_classification():
    anchors = row_anchors()
    logits = torch.zeros(1, 6, 1)
    logits[0, 5] = 8.0                              # a confident prediction on anchor #5, inside an ignore box
    args = (torch.zeros(1, 6, 6), anchors, [6], [torch.zeros(0, 6)], [torch.zeros(0, dtype=torch.int64)])
    ignored = make_loss(num_classes=1)(logits, *args, [torch.tensor([[0., 0., 20., 4., 4., 24.]])])
    plain = make_loss(num_classes=1)(logits, *args)
    # 5 sampled negatives at log 2 each, against 6 with the confident one at 8 + log(1 + e^-8)
    assert ignored["cls"].item() == pytest.approx(5 * math.log(2), rel=1e-5)
    assert plain["cls"].item() == pytest.approx(5 * math.log(2) + 8 + math.log1p(math.exp(-8)), rel=1e-5)


def test_bad_inputs_raise():
    loss = make_loss(num_classes=2)
    anchors, logits, deltas = row_anchors(), torch.zeros(1, 6, 2), torch.zeros(1, 6, 6)
    gt = [torch.tensor([[0., 0., 8., 4., 4., 12.]])]
    with pytest.raises(ValueError, match="class indices"):
        loss(logits, deltas, anchors, [6], gt, [torch.tensor([2])])
    with pytest.raises(ValueError, match="1 boxes but 2 classes"):
        loss(logits, deltas, anchors, [6], gt, [torch.tensor([0, 1])])
    with pytest.raises(ValueError, match="one entry per image"):
        loss(logits, deltas, anchors, [6], gt * 2, [torch.tensor([0])] * 2)
    with pytest.raises(ValueError, match="cls_logits"):
        loss(torch.zeros(1, 6, 3), deltas, anchors, [6], gt, [torch.tensor([0])])
    with pytest.raises(ValueError, match="box_deltas"):
        loss(logits, torch.zeros(1, 5, 6), anchors, [6], gt, [torch.tensor([0])])
    with pytest.raises(ValueError, match="cls_loss"):
        DetectionLoss(num_classes=1, cls_loss="softmax")
    with pytest.raises(ValueError, match="unknown terms"):
        DetectionLoss(num_classes=1, weights={"seg": 1.0})
