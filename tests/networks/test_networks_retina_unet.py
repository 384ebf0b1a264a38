"""Retina U-Net: output contract, head init, a train and an eval step, anchor / flatten ordering."""

import math

import numpy as np
import pytest
import torch

from volseg.networks import (RetinaUNet, UNet, anchor_boxes, anchor_centres, build_network, flatten_level_outputs,
                             level_shapes, list_networks)
from volseg.planning.anchors import level_strides, plan_anchors

# anisotropic: no pooling along z in the first downsampling stage
TOPOLOGY = dict(features_per_stage=[4, 8, 16], kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1])
DETECTION = dict(detection_levels=[1, 2], num_anchors=3, num_classes=2, head_channels=8, head_convs=2)
PATCH = (16, 32, 32)
LEVEL_SHAPES = [(16, 16, 16), (8, 8, 8)]  # strides (1, 2, 2) and (2, 4, 4)


def make(deep_supervision=True, **over):
    torch.manual_seed(0)
    return build_network("retina_unet", **{"in_channels": 1, "deep_supervision": deep_supervision, **TOPOLOGY,
                                            **DETECTION, **over})


def anchor_plan(num_anchors=3):
    extents_mm = np.array([[4.0, 6.0, 6.0], [8.0, 10.0, 12.0], [12.0, 20.0, 16.0], [3.0, 4.0, 4.0]])
    totals = level_strides(TOPOLOGY["strides"])
    return plan_anchors(extents_mm, [1.0, 1.0, 1.0], [totals[i] for i in DETECTION["detection_levels"]],
                        anchors_per_level=num_anchors)


def test_registered_and_built_by_name():
    assert "retina_unet" in list_networks()
    net = make()
    assert type(net) is RetinaUNet and isinstance(net.backbone, UNet)
    assert (net.num_classes, net.num_outputs, net.num_anchors) == (2, 3, 3)
    assert net.detection_strides == [(1, 2, 2), (2, 4, 4)]


def test_output_shapes_anisotropic_two_levels():
    net = make()
    out = net(torch.randn(2, 1, *PATCH))
    assert set(out) == {"seg", "cls", "box"}
    assert [tuple(s.shape) for s in out["seg"]] == [(2, 3, 16, 32, 32), (2, 3, 16, 16, 16)]
    assert [tuple(c.shape) for c in out["cls"]] == [(2, 3 * 2, *s) for s in LEVEL_SHAPES]
    assert [tuple(b.shape) for b in out["box"]] == [(2, 3 * 6, *s) for s in LEVEL_SHAPES]


def test_full_resolution_detection_level():
    net = make(detection_levels=[0], num_anchors=1, num_classes=1, head_convs=0)
    out = net(torch.randn(1, 1, 4, 8, 8))
    assert out["cls"][0].shape == (1, 1, 4, 8, 8) and out["box"][0].shape == (1, 6, 4, 8, 8)


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_seg_output_is_the_backbone_unets(deep_supervision):
    net = make(deep_supervision=deep_supervision).eval()
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        seg, expected = net(x)["seg"], net.backbone(x)
    if deep_supervision:
        assert len(seg) == len(expected) == 2
        assert all(torch.equal(a, b) for a, b in zip(seg, expected))
    else:
        assert torch.equal(seg, expected)


def test_classifier_prior_bias_gives_sigmoid_one_percent():
    net = make().eval()
    assert torch.allclose(net.cls_head.out.bias, torch.full((6,), -math.log(99.0)))
    assert torch.count_nonzero(net.box_head.out.bias) == 0
    with torch.no_grad():
        probs = torch.cat([c.sigmoid().flatten() for c in net(torch.randn(1, 1, *PATCH))["cls"]])
    assert abs(float(probs.mean()) - 0.01) < 1e-3 and float(probs.max()) < 0.02 and float(probs.min()) > 0.005


def test_train_step_reaches_every_parameter_and_changes_weights():
    net = make().train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, *PATCH, generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    out = net(x)
    seg_loss = sum(torch.nn.functional.cross_entropy(s, torch.zeros((2, *s.shape[2:]), dtype=torch.long))
                   for s in out["seg"])
    cls_loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(c, torch.ones_like(c)) for c in out["cls"])
    box_loss = sum(torch.nn.functional.smooth_l1_loss(b, torch.ones_like(b)) for b in out["box"])
    (seg_loss + cls_loss + box_loss).backward()
    # every parameter takes part (DDP requires it); conv biases before a norm get a zero gradient
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    opt.step()
    after = net.state_dict()
    for key in ("backbone.encoder.stages.0.0.0.weight", "backbone.decoder.seg_layers.0.weight",
                "cls_head.projections.0.weight", "cls_head.projections.1.weight", "cls_head.tower.0.0.weight",
                "cls_head.out.weight", "cls_head.out.bias", "box_head.projections.1.weight", "box_head.out.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert all(torch.isfinite(v).all() for v in after.values())


def test_deep_supervision_false_gives_one_seg_tensor_and_same_state_dict():
    net = make()
    keys = set(net.state_dict())
    net.deep_supervision = False
    assert not net.deep_supervision and not net.backbone.deep_supervision
    out = net(torch.randn(1, 1, *PATCH))
    assert isinstance(out["seg"], torch.Tensor) and out["seg"].shape == (1, 3, *PATCH)
    assert set(net.state_dict()) == keys
    assert not make(deep_supervision=False).deep_supervision


def test_eval_on_empty_input_is_finite():
    net = make(deep_supervision=False).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 1, *PATCH))
    assert torch.isfinite(out["seg"]).all()
    assert all(torch.isfinite(t).all() for t in out["cls"] + out["box"])
    cls, box = net.flatten_outputs(out)
    assert torch.isfinite(cls).all() and torch.isfinite(box).all()


def test_level_shapes_and_centres():
    assert level_shapes(PATCH, [(1, 2, 2), (2, 4, 4)]) == LEVEL_SHAPES
    c = anchor_centres((2, 1, 3), (2, 4, 4))
    assert c.tolist() == [[1.0, 2.0, 2.0], [1.0, 2.0, 6.0], [1.0, 2.0, 10.0],
                          [3.0, 2.0, 2.0], [3.0, 2.0, 6.0], [3.0, 2.0, 10.0]]


def test_anchor_boxes_match_explicit_loops():
    plan = {"levels": [{"stride": [1, 2, 2], "shapes": [[2, 4, 4], [3, 5, 7]]},
                       {"stride": [2, 4, 4], "shapes": [[4, 8, 8], [6, 10, 14]]}]}
    patch = (2, 4, 8)
    expected = []
    for level in plan["levels"]:
        s = level["stride"]
        for iz in range(patch[0] // s[0]):
            for iy in range(patch[1] // s[1]):
                for ix in range(patch[2] // s[2]):
                    centre = [(iz + 0.5) * s[0], (iy + 0.5) * s[1], (ix + 0.5) * s[2]]
                    for shape in level["shapes"]:
                        expected.append([c - e / 2 for c, e in zip(centre, shape)]
                                        + [c + e / 2 for c, e in zip(centre, shape)])
    boxes = anchor_boxes(patch, plan)
    assert boxes.shape == (len(expected), 6) == (2 * 2 * 4 * 2 + 1 * 1 * 2 * 2, 6)
    assert torch.allclose(boxes, torch.tensor(expected))


def test_flattened_head_outputs_land_on_their_anchors():
    # A head map whose box channels hold each anchor's own centre and extent, and whose class
    # channels hold (level, anchor, class), must flatten row by row onto anchor_boxes.
    plan, k, a = anchor_plan(), 2, 3
    cls_maps, box_maps, tags = [], [], []
    for li, (level, shape) in enumerate(zip(plan["levels"], LEVEL_SHAPES)):
        centres = anchor_centres(shape, level["stride"]).T.reshape(3, *shape)            # (3, z, y, x)
        extents = torch.tensor(level["shapes"], dtype=torch.float32)                     # (A, 3)
        box = torch.cat([torch.cat([centres, extents[i].view(3, 1, 1, 1).expand(3, *shape)]) for i in range(a)])
        cls = torch.tensor([100.0 * li + 10 * i + j for i in range(a) for j in range(k)]).view(a * k, 1, 1, 1)
        cls_maps.append(cls.expand(a * k, *shape)[None].repeat(2, 1, 1, 1, 1))
        box_maps.append(box[None].repeat(2, 1, 1, 1, 1))
        tags += [[100.0 * li + 10 * i + j for j in range(k)] for _ in range(math.prod(shape)) for i in range(a)]
    cls, box = flatten_level_outputs(cls_maps, box_maps, num_anchors=a)
    anchors = anchor_boxes(PATCH, plan)
    assert cls.shape == (2, len(anchors), k) and box.shape == (2, len(anchors), 6)
    assert torch.allclose(box[1, :, :3], (anchors[:, :3] + anchors[:, 3:]) / 2)
    assert torch.allclose(box[1, :, 3:], anchors[:, 3:] - anchors[:, :3], atol=1e-5)
    assert torch.equal(cls[0], torch.tensor(tags))


def test_network_outputs_flatten_to_the_planned_anchors():
    net, plan = make(), anchor_plan()
    net.check_anchors(plan)
    out = net(torch.randn(2, 1, *PATCH))
    cls, box = net.flatten_outputs(out)
    n = len(anchor_boxes(PATCH, plan))
    assert n == sum(math.prod(s) for s in LEVEL_SHAPES) * 3
    assert cls.shape == (2, n, 2) and box.shape == (2, n, 6)
    # row of cell (iz, iy, ix) = (1, 2, 3), anchor 2 on level 1 (offset: all level-0 anchors)
    row = math.prod(LEVEL_SHAPES[0]) * 3 + ((1 * 8 + 2) * 8 + 3) * 3 + 2
    assert torch.equal(box[0, row], out["box"][1][0, 2 * 6:3 * 6, 1, 2, 3])
    assert torch.equal(cls[0, row], out["cls"][1][0, 2 * 2:3 * 2, 1, 2, 3])


@pytest.mark.parametrize("over, message", [
    (dict(detection_levels=[3]), r"detection_levels: .*in \[0, 2\]"),
    (dict(detection_levels=[2, 1]), "detection_levels: expected a non-empty, strictly increasing"),
    (dict(detection_levels=[1, 1]), "detection_levels: expected a non-empty, strictly increasing"),
    (dict(detection_levels=[]), "detection_levels: expected a non-empty"),
    (dict(detection_levels=1), "detection_levels: expected"),
    (dict(num_anchors=0), "num_anchors: expected an integer >= 1, found 0"),
    (dict(num_anchors=2.0), "num_anchors: expected an integer >= 1"),
    (dict(head_channels=0), "head_channels: expected an integer >= 1"),
    (dict(head_convs=-1), "head_convs: expected an integer >= 0"),
    (dict(prior_probability=0.0), r"prior_probability: expected a number in \(0, 1\)"),
    (dict(prior_probability=1.5), r"prior_probability: expected a number in \(0, 1\)"),
    (dict(num_classes=0), "num_classes: expected an integer >= 1"),
    (dict(num_classes=None), "num_classes: expected the number of foreground classes"),
    (dict(num_outputs=4), r"num_outputs: .*expected num_classes \+ 1 = 3, found 4"),
    (dict(in_channels=0), "in_channels: expected a positive integer"),
    (dict(strides=[[1, 2, 2], [1, 2, 2], [2, 2, 2]]), r"strides\[0\]: the first stage must not downsample"),
    (dict(norm="layer"), "norm: expected one of"),
])
def test_bad_arguments_raise(over, message):
    with pytest.raises(ValueError, match=message):
        make(**over)


def test_num_classes_from_num_outputs():
    net = make(num_classes=None, num_outputs=4)
    assert (net.num_classes, net.num_outputs) == (3, 4)


def test_bad_inputs_and_helpers_raise():
    net = make()
    with pytest.raises(ValueError, match="not divisible by the network's total stride"):
        net(torch.zeros(1, 1, 16, 32, 30))
    with pytest.raises(ValueError, match=r"expected input \(B, 1, z, y, x\)"):
        net(torch.zeros(1, 2, *PATCH))
    out = net(torch.zeros(1, 1, *PATCH))
    with pytest.raises(ValueError, match="A \\* 6 box channels with A = 2"):
        flatten_level_outputs(out["cls"], out["box"], num_anchors=2)
    with pytest.raises(ValueError, match="same positive number of cls and box levels"):
        flatten_level_outputs(out["cls"], out["box"][:1], num_anchors=3)
    with pytest.raises(ValueError, match="level 1: expected cls and box maps"):
        flatten_level_outputs(out["cls"], [out["box"][0], out["box"][0]], num_anchors=3)
    with pytest.raises(ValueError, match=r"patch_size: \(16, 32, 30\) is not divisible by the level stride \(1, 4, 4\)"):
        level_shapes((16, 32, 30), [(1, 2, 2), (1, 4, 4)])
    with pytest.raises(ValueError, match="patch_size: expected 3 positive integers"):
        level_shapes((32, 32), [(1, 2, 2)])
    with pytest.raises(ValueError, match="anchors: expected"):
        anchor_boxes(PATCH, {"levels": []})
    with pytest.raises(ValueError, match=r"anchors.levels\[0\].shapes: expected a non-empty list"):
        anchor_boxes(PATCH, {"levels": [{"stride": [1, 2, 2], "shapes": [[0, 2, 2]]}]})
    with pytest.raises(ValueError, match=r"anchors.levels\[0\].stride: expected 3 positive integers"):
        anchor_boxes(PATCH, {"levels": [{"stride": [1, 2], "shapes": [[2, 2, 2]]}]})


def test_check_anchors_names_the_mismatch():
    net, plan = make(), anchor_plan()
    with pytest.raises(ValueError, match=r"anchors: expected 2 levels \(detection_levels \[1, 2\]\), found 1"):
        net.check_anchors({"levels": plan["levels"][:1]})
    with pytest.raises(ValueError, match=r"anchors.levels\[1\].stride: expected \[2, 4, 4\] \(level 2\)"):
        net.check_anchors({"levels": [plan["levels"][0], {**plan["levels"][1], "stride": [1, 4, 4]}]})
    with pytest.raises(ValueError, match=r"anchors.levels\[0\].shapes: expected 3 shapes \(num_anchors\), found 2"):
        net.check_anchors(anchor_plan(num_anchors=2))
