"""Box aggregation through the sliding-window engine, with a hand-made detector as the oracle.

``CubeDetector`` looks at its input tile, finds the bright cube and, when the cube lies fully
inside the tile, fires one strong anchor whose deltas decode exactly to the cube's box (plus a
weaker, shifted duplicate that NMS must remove). Its answers are exact, so the fused box must
come back at the cube, through tiling, mirroring TTA and padding.
"""

import math

import numpy as np
import pytest
import torch

from volseg.detection.aggregation import BoxAggregator, BoxResult, centre_weight, peak_mask, tile_nms
from volseg.detection.boxes import flip_boxes
from volseg.detection.clustering import nms
from volseg.detection.coder import BoxCoder
from volseg.inference.dense import DenseAggregator
from volseg.inference.sliding_window import run_sliding_window
from volseg.kernels.gaussian import gaussian_1d
from volseg.networks.retina_unet import level_shapes
from volseg.tasks.base import TileGrid

PATCH = (16, 32, 32)
ANCHORS = {"levels": [{"stride": [2, 4, 4], "shapes": [[4, 4, 4], [3, 6, 6]]},
                      {"stride": [4, 8, 8], "shapes": [[6, 10, 10], [8, 12, 12]]}]}
K, A = 2, 2
STRONG = 6.0          # sigmoid 0.9975
WEAK = -1.0           # sigmoid 0.27


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


class CubeDetector(torch.nn.Module):
    """Retina U-Net-shaped outputs that box the voxels > 0.5 of each tile (class 1, level 1, anchor 1).

    ``x_bias``: the reported box is moved along x by ``x_bias * (local centre x - patch_x / 2)``,
    so that tiles disagree and the tile weighting decides the fused position.
    """

    def __init__(self, x_bias: float = 0.0):
        super().__init__()
        self.coder, self.x_bias = BoxCoder(), x_bias
        self.strides = [lv["stride"] for lv in ANCHORS["levels"]]

    def forward(self, x):
        b = x.shape[0]
        shapes = level_shapes(tuple(x.shape[2:]), self.strides)
        cls = [torch.full((b, A * K, *s), -10.0, device=x.device) for s in shapes]
        box = [torch.zeros((b, A * 6, *s), device=x.device) for s in shapes]
        for i in range(b):
            fg = torch.nonzero(x[i, 0] > 0.5)
            if len(fg) == 0:
                continue
            lo, hi = fg.min(0).values.float(), fg.max(0).values.float() + 1
            if (lo == 0).any() or (hi >= torch.tensor(x.shape[2:], device=x.device)).any():
                continue                          # cut off by the tile border: not fired
            target = torch.cat([lo, hi])
            target[[2, 5]] += self.x_bias * ((lo[2] + hi[2]) / 2 - x.shape[4] / 2)
            self._fire(cls[1], box[1], i, target, anchor=1, logit=STRONG)
            jitter = torch.tensor([0., 0, 1, 0, 0, 1], device=x.device)
            self._fire(cls[1], box[1], i, target + jitter, anchor=0, logit=WEAK)
        seg = torch.cat([-x[:, :1], x[:, :1]], 1) * 4.0
        return {"seg": seg, "cls": cls, "box": box}

    def _fire(self, cls_map, box_map, i, target, anchor, logit):
        stride = torch.tensor(self.strides[1], dtype=torch.float32, device=target.device)
        centre = (target[:3] + target[3:]) / 2
        cell = torch.div(centre, stride, rounding_mode="floor").long()
        half = torch.tensor(ANCHORS["levels"][1]["shapes"][anchor], dtype=torch.float32, device=target.device) / 2
        c = (cell.float() + 0.5) * stride
        deltas = self.coder.encode(target[None], torch.cat([c - half, c + half])[None])[0]
        cls_map[i, anchor * K + 1, cell[0], cell[1], cell[2]] = logit
        box_map[i, anchor * 6:anchor * 6 + 6, cell[0], cell[1], cell[2]] = deltas


class SegOnly(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)["seg"]


def _image(shape, cube):
    img = torch.zeros((1, *shape))
    (z0, y0, x0, z1, y1, x1) = cube
    img[0, z0:z1, y0:y1, x0:x1] = 1.0
    return img


def _aggregator(**kw):
    return BoxAggregator(ANCHORS, PATCH, num_classes=K, num_anchors=A, **kw)


CUBE = (10, 18, 20, 15, 28, 31)        # inside 2 × 2 × 2 tiles of the 40 × 48 × 48 image


def test_one_fused_box_at_the_cube_through_tiles_and_mirroring():
    res, _ = run_sliding_window(CubeDetector(), _image((40, 48, 48), CUBE), PATCH, _aggregator(),
                                mirror_axes=(0, 1, 2), tile_batch=3)
    assert isinstance(res, BoxResult) and res.dense is None
    assert res.boxes.shape == (1, 6) and res.classes.tolist() == [1]
    assert np.abs(res.boxes[0] - np.array(CUBE)).max() < 1e-3          # well within 0.5 voxel
    assert res.scores[0] == pytest.approx(_sigmoid(STRONG), abs=1e-4)
    # 8 tiles see the whole cube, 8 mirrorings each; NMS removed every weak duplicate
    assert res.num_candidates == 64
    assert set(res.timings) == {"boxes", "clustering"}


def test_peak_picking_keeps_the_firing_cell_and_its_fused_box():
    plain, _ = run_sliding_window(CubeDetector(), _image((40, 48, 48), CUBE), PATCH, _aggregator(),
                                  mirror_axes=(0,), tile_batch=3)
    peaks, _ = run_sliding_window(CubeDetector(), _image((40, 48, 48), CUBE), PATCH, _aggregator(peak_window=3),
                                  mirror_axes=(0,), tile_batch=3)
    np.testing.assert_array_equal(peaks.boxes, plain.boxes)      # the firing cell is a peak: same fusion
    np.testing.assert_array_equal(peaks.scores, plain.scores)
    assert peaks.num_candidates == plain.num_candidates


def test_peak_mask_keeps_every_anchor_of_the_peak_cells_per_class():
    b, z, y, x = 2, 4, 6, 6
    logits = torch.full((b, A, K, z, y, x), -5.0)
    logits[0, 1, 1, 1, 2, 2] = 3.0                                 # class 1: a blob around (1, 2, 2) ...
    logits[0, 0, 1, 1, 2, 3] = 2.0
    logits[0, 1, 1, 2, 2, 2] = 1.0
    logits[0, 0, 1, 3, 5, 5] = 0.5                                 # ... and a weaker, distant peak
    logits[1, 0, 0, 0, 0, 0] = 1.0                                 # tile 1, class 0: two tied cells
    logits[1, 1, 0, 0, 0, 1] = 1.0
    mask = peak_mask(logits.reshape(b, A * K, z, y, x), A, 3).view(b, A, K, z, y, x)
    assert mask[0, :, 1, 1, 2, 2].all() and mask[0, :, 1, 3, 5, 5].all()   # both anchors of each peak cell
    assert not mask[0, :, 1, 1, 2, 3].any() and not mask[0, :, 1, 2, 2, 2].any()   # the blob's other cells
    assert not mask[0, :, 1, 0, 1, 1].any()                       # background next to the blob
    assert mask[0, :, 0, 1, 2, 3].all()                           # class 0 does not see class 1's blob
    assert mask[1, :, 0, 0, 0, 0].all() and mask[1, :, 0, 0, 0, 1].all()   # ties both stay
    assert not mask[1, :, 0, 0, 1, 1].any()
    assert peak_mask(logits.reshape(b, A * K, z, y, x), A, 1).all()


def test_mirrored_image_gives_the_mirrored_box():
    shape, axes = (40, 48, 48), (0, 2)
    image = _image(shape, CUBE)
    plain, _ = run_sliding_window(CubeDetector(), image, PATCH, _aggregator(), mirror_axes=(1,))
    flipped, _ = run_sliding_window(CubeDetector(), torch.flip(image, [a + 1 for a in axes]), PATCH, _aggregator(),
                                    mirror_axes=(1,))
    np.testing.assert_allclose(flipped.boxes, flip_boxes(plain.boxes, axes, shape), atol=1e-4)
    np.testing.assert_allclose(flipped.scores, plain.scores, atol=1e-6)


def test_image_smaller_than_the_patch_gives_unpadded_boxes():
    cube = (3, 5, 20, 7, 15, 31)
    image = _image((10, 20, 48), cube)             # padded to 16 × 32 in z and y
    dense = DenseAggregator(2, return_probabilities=True)
    res, _ = run_sliding_window(CubeDetector(), image, PATCH, _aggregator(dense=dense), mirror_axes=(0, 1))
    assert res.boxes.shape == (1, 6)
    np.testing.assert_allclose(res.boxes[0], cube, atol=1e-3)
    assert tuple(res.dense.labels.shape) == (10, 20, 48)


@pytest.mark.parametrize("slab", [False, True])
def test_dense_head_is_forwarded_and_equals_the_dense_aggregator_alone(slab):
    image = _image((40, 48, 48), CUBE) + 0.1 * torch.randn(1, 40, 48, 48, generator=torch.Generator().manual_seed(0))
    kw = dict(return_probabilities=True, return_uncertainty=True, slab=slab)
    agg = _aggregator(dense=DenseAggregator(2, **kw))
    assert agg.row_wise == slab
    res, _ = run_sliding_window(CubeDetector(), image, PATCH, agg, mirror_axes=(0, 2), tile_batch=2)
    alone, _ = run_sliding_window(SegOnly(CubeDetector()), image, PATCH, DenseAggregator(2, **kw),
                                  mirror_axes=(0, 2), tile_batch=2)
    for f in ("labels", "probabilities", "max_prob", "entropy"):
        assert torch.equal(getattr(res.dense, f), getattr(alone, f)), f
    assert res.boxes.shape == (1, 6)


def test_nothing_above_the_floor_gives_no_boxes():
    res, _ = run_sliding_window(CubeDetector(), torch.zeros(1, 40, 48, 48), PATCH, _aggregator(), mirror_axes=(0,))
    assert res.boxes.shape == (0, 6) and res.scores.shape == (0,) and res.classes.shape == (0,)
    assert res.num_candidates == 0


def test_members_that_miss_lower_the_score_although_other_tiles_see_the_object():
    # Regression: with one WBC over all tiles and expected = members, the 8 tiles holding the cube
    # filled in for the blind network and the score stayed 0.9975. Members are counted per tile,
    # so the blind half of the ensemble halves the score. The floor also drops the weak duplicate.
    class Blind(torch.nn.Module):
        def forward(self, x):
            return CubeDetector()(torch.zeros_like(x))

    image = _image((40, 48, 48), CUBE)
    res, _ = run_sliding_window([CubeDetector(), Blind()], image, PATCH, _aggregator(score_floor=0.5))
    assert res.boxes.shape == (1, 6)
    assert res.scores[0] == pytest.approx(_sigmoid(STRONG) / 2, abs=1e-4)
    assert res.num_candidates == 8          # 8 tiles × the seeing network; no weak duplicates


def test_tile_weight_decides_between_disagreeing_tiles():
    # Tiles start at x = 0 and 16; the cube's local centre is 23 (tile 0) and 7 (tile 16), so the
    # boxes come back moved by +0.7 and -0.9 along x; the fused box is their tile-weighted mean.
    cube = (5, 10, 18, 11, 20, 28)
    res, _ = run_sliding_window(CubeDetector(x_bias=0.1), _image((16, 32, 48), cube), PATCH, _aggregator())
    local = torch.tensor([[5., 10, 18.7, 11, 20, 28.7], [5., 10, 1.1, 11, 20, 11.1]])
    w = centre_weight(local, [gaussian_1d(p, 0.125) for p in PATCH]).double().numpy()
    x0 = (w[0] * 18.7 + w[1] * 17.1) / w.sum()
    assert w[0] > w[1]
    assert res.boxes[0, 2] == pytest.approx(x0, abs=1e-4)
    assert res.scores[0] == pytest.approx(_sigmoid(STRONG), abs=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_boxes():
    image = _image((40, 48, 48), CUBE)
    kw = dict(mirror_axes=(0, 1, 2), tile_batch=4)
    cpu, _ = run_sliding_window(CubeDetector(), image, PATCH, _aggregator(dense=DenseAggregator(2)), **kw)
    gpu, _ = run_sliding_window(CubeDetector(), image, PATCH, _aggregator(dense=DenseAggregator(2)), device="cuda", **kw)
    np.testing.assert_allclose(gpu.boxes, cpu.boxes, atol=1e-4)
    np.testing.assert_allclose(gpu.scores, cpu.scores, atol=1e-6)
    assert torch.equal(gpu.dense.labels, cpu.dense.labels) and gpu.num_candidates == cpu.num_candidates


def test_centre_weight_is_the_dense_gaussian_at_the_box_centre():
    w = [gaussian_1d(p, 0.125) for p in (5, 8, 9)]
    boxes = torch.tensor([[2., 3., 4., 3., 5., 5.],      # centres at voxels (2, 3.5, 4): the middle
                          [0., 0., 0., 1., 1., 1.],      # the corner voxel
                          [-9., -9., -9., -7., -7., -7.]])   # outside: clamped to the corner
    got = centre_weight(boxes, w)
    mid_y = (w[1][3] + w[1][4]) / 2
    torch.testing.assert_close(got[0], w[0][2] * mid_y * w[2][4])
    torch.testing.assert_close(got[1], w[0][0] * w[1][0] * w[2][0])
    torch.testing.assert_close(got[2], got[1])
    mirrored = torch.as_tensor(flip_boxes(boxes[:2], [0, 1, 2], (5, 8, 9)))
    torch.testing.assert_close(centre_weight(mirrored, w), got[:2])


@pytest.mark.parametrize("iou", [0.1, 0.3, 0.5])
def test_tile_nms_keeps_what_the_reference_nms_keeps(iou):
    rng = np.random.default_rng(int(iou * 10))
    lo = rng.uniform(0, 8, (400, 3))
    boxes = np.concatenate([lo, lo + rng.uniform(2, 8, (400, 3))], axis=1)
    scores = rng.uniform(0, 1, 400)
    scores[::7] = 0.5                                      # ties keep the earlier box
    labels = rng.integers(0, 3, 400)
    ours, ref = tile_nms(boxes, scores, labels, iou), nms(boxes, scores, iou, labels)
    assert 0 < len(ours) < 400 and sorted(ours.tolist()) == sorted(ref.tolist())
    assert np.all(np.diff(scores[ours]) <= 0)              # highest first (ties: any class order)
    assert tile_nms(np.zeros((0, 6)), np.zeros(0), np.zeros(0, int), iou).shape == (0,)


def _grid(patch=PATCH):
    return TileGrid((40, 48, 48), [(0, 0)] * 3, patch, [[0], [0], [0]], torch.device("cpu"), 1)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="num_anchors"):
        BoxAggregator(ANCHORS, PATCH, num_classes=K, num_anchors=3)
    with pytest.raises(ValueError, match="nms_iou"):
        _aggregator(nms_iou=0.0)
    with pytest.raises(ValueError, match="top_k_per_tile"):
        _aggregator(top_k_per_tile=0)
    with pytest.raises(ValueError, match="peak_window"):
        _aggregator(peak_window=2)
    with pytest.raises(ValueError, match="divisible"):
        BoxAggregator(ANCHORS, (15, 32, 32), num_classes=K, num_anchors=A)
    agg = _aggregator()
    with pytest.raises(ValueError, match="patch_size"):
        agg.setup(_grid((16, 32, 64)))
    agg.setup(_grid())
    out = CubeDetector()(torch.zeros(1, 1, *PATCH))
    with pytest.raises(ValueError, match="keys"):
        agg.add(out["cls"], [(0, 0, 0)], [])
    with pytest.raises(ValueError, match="anchors"):
        agg.add(CubeDetector()(torch.zeros(1, 1, 16, 32, 64)), [(0, 0, 0)], [])
    with pytest.raises(ValueError, match="keys"):
        dense = _aggregator(dense=DenseAggregator(2))
        dense.setup(_grid())
        dense.add({"cls": out["cls"], "box": out["box"]}, [(0, 0, 0)], [])


def test_an_untrained_retina_unet_goes_through():
    from volseg.networks.retina_unet import RetinaUNet

    torch.manual_seed(0)
    net = RetinaUNet(in_channels=1, num_classes=2, features_per_stage=[4, 8, 16],
                     kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                     n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1], detection_levels=[1, 2],
                     num_anchors=2, head_channels=8).eval()
    plan = {"levels": [{"stride": list(s), "shapes": [[2, 4, 4], [4, 6, 6]]} for s in net.detection_strides]}
    net.check_anchors(plan)
    agg = BoxAggregator(plan, (8, 16, 16), num_classes=2, num_anchors=2, max_detections=20,
                        dense=DenseAggregator(3))
    image = torch.randn(1, 10, 16, 20, generator=torch.Generator().manual_seed(0))
    res, _ = run_sliding_window(net, image, (8, 16, 16), agg, mirror_axes=(2,))
    assert 0 < len(res.boxes) <= 20 and res.boxes.shape[1] == 6
    assert (res.boxes[:, :3] >= 0).all() and (res.boxes[:, 3:] <= np.array([10, 16, 20])).all()
    assert (res.boxes[:, 3:] > res.boxes[:, :3]).all() and set(res.classes.tolist()) <= {0, 1}
    assert np.all(np.diff(res.scores) <= 0) and tuple(res.dense.labels.shape) == (10, 16, 20)
