"""Lesion-wise detection metrics: which lesions were found, which were made up.

A lesion is a connected component of a binary mask (cc3d). Components too small are removed
on both sides before matching and count as background afterwards. Two matching rules exist,
chosen by :attr:`LesionConfig.rule`; both are symmetric: a reference lesion is tested against
the prediction to decide whether it was *detected*, and a predicted lesion against the
reference, with the roles swapped, to decide whether it is a *true positive*.

**"anima" (default): the MSSEG-2 rule**, that of anima's ``animaSegPerfAnalyzer`` with the
challenge's parameters. Components use 6-connectivity (face neighbours, ITK's default);
components of fewer than ``floor(min_volume_mm3 / voxel volume) + 1`` voxels are removed, so
a kept lesion is strictly larger than ``min_volume_mm3`` (3 mm³). A reference lesion R is
detected when both hold:

1. *alpha*: the voxels of R covered by (kept) predicted lesions, divided by ``|R|``, are
   strictly more than ``alpha`` (10%).
2. *beta / gamma*: the predicted lesions overlapping R are taken by decreasing overlap with
   R (ties by label number). While the share of R's covered voxels accounted for by the
   lesions taken so far is below ``gamma`` (65%), the next one is examined: its *outside
   ratio* is the fraction of its voxels on reference background (in no kept reference
   lesion). If one examined lesion has an outside ratio above ``beta`` (70%), R is not
   detected. So the few predictions that make up most of the overlap must lie mostly on
   lesions, while a small stray one contributing little to the overlap does not matter.

Note: anima's own loop stops after as many predicted components as there are reference
labels (a quirk of its loop bound); here every overlapping component is examined as the
rule states, so a lesion touched by more predictions than the reference has lesions can
differ from anima's verdict.

**"dilated"**: an earlier rule in the spirit of MSSEG-2. Components use 26-connectivity by
default; components smaller than ``min_volume_mm3`` (``size × voxel volume <
min_volume_mm3``) are removed. A reference lesion R is detected when both hold:

1. *Overlap*: at least ``min_overlap`` (default 10%) of R's voxels are predicted.
2. *Containment*: the predicted lesions that touch R, taken together, have at least
   ``min_inside`` (default 50%) of their volume inside the reference foreground dilated
   by ``dilation_mm`` (default 1 mm). The reference foreground (all reference lesions,
   not R alone) is used so that one prediction merging two neighbouring lesions detects
   both, while a prediction that covers R but lies mostly in healthy tissue does not.

Scores per case (both rules): sensitivity = detected reference lesions / reference lesions,
precision (PPV) = true-positive predicted lesions / predicted lesions, F1 = 2·S·P / (S + P).
No reference lesions: sensitivity NaN. No predicted lesions: precision NaN. F1 is NaN when
both sides have no lesion, 0 when only one side has none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

RULES = ("anima", "dilated")
DEFAULT_CONNECTIVITY = {"anima": 6, "dilated": 26}


@dataclass(frozen=True)
class LesionConfig:
    """Settings of lesion-wise matching (see the module docstring).

    Attributes:
        connectivity: Voxel connectivity of a lesion: 6, 18 or 26; ``None`` (default): the
            rule's own, 6 for "anima" and 26 for "dilated" (resolved on creation).
        min_volume_mm3: Smallest lesion volume (mm³). "anima" keeps lesions of at least
            ``floor(min_volume_mm3 / voxel volume) + 1`` voxels (strictly larger than it);
            "dilated" keeps those of at least ``min_volume_mm3``.
        min_overlap: "dilated": fraction of a lesion that must be covered by the other side.
        min_inside: "dilated": fraction of the touching lesions of the other side that must
            lie inside this side's dilated foreground.
        dilation_mm: "dilated": dilation radius (mm) of the foreground used by ``min_inside``.
        rule: "anima" (default, MSSEG-2) or "dilated".
        alpha: "anima": a lesion must be covered by strictly more than this fraction.
        beta: "anima": largest outside ratio allowed for the examined lesions of the other side.
        gamma: "anima": share of the overlap up to which the other side's lesions are examined.
    """

    connectivity: int | None = None
    min_volume_mm3: float = 3.0
    min_overlap: float = 0.10
    min_inside: float = 0.50
    dilation_mm: float = 1.0
    rule: str = "anima"
    alpha: float = 0.10
    beta: float = 0.70
    gamma: float = 0.65

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be 'anima' or 'dilated', got {self.rule!r}")
        if self.connectivity is None:
            object.__setattr__(self, "connectivity", DEFAULT_CONNECTIVITY[self.rule])
        if self.connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26, got {self.connectivity}")
        if not (0.0 < self.min_overlap <= 1.0 and 0.0 <= self.min_inside <= 1.0):
            raise ValueError(f"min_overlap must be in (0, 1] and min_inside in [0, 1], "
                             f"got {self.min_overlap} and {self.min_inside}")
        if not self.min_volume_mm3 >= 0 or not self.dilation_mm >= 0 or not math.isfinite(self.min_volume_mm3):
            raise ValueError(f"min_volume_mm3 and dilation_mm must be >= 0, got {self.min_volume_mm3} "
                             f"and {self.dilation_mm}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")

    def to_dict(self) -> dict:
        return asdict(self)


def lesion_components(mask: np.ndarray, spacing: tuple[float, float, float],
                      cfg: LesionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Label the lesions of a bool (z, y, x) mask.

    Returns:
        ``(labels, sizes)``: uint32 (z, y, x) map with lesions numbered 1..N (0 is
        background; lesions under the size limit of ``cfg`` removed) and their sizes in voxels
        (array of N + 1, ``sizes[0] = 0``).
    """
    import cc3d

    mask = np.ascontiguousarray(mask, dtype=bool)
    labels, n = cc3d.connected_components(mask, connectivity=cfg.connectivity, return_N=True)
    labels = labels.astype(np.uint32, copy=False)
    fg = labels[mask]  # sizes from the foreground only: a bincount of the volume casts it to int64
    sizes = np.bincount(fg, minlength=n + 1)
    sizes[0] = 0
    voxel_volume = float(np.prod(spacing))
    if cfg.rule == "anima":  # at least floor(V / v) + 1 voxels, as animaSegPerfAnalyzer
        keep = sizes >= math.floor(cfg.min_volume_mm3 / voxel_volume) + 1
    else:
        keep = sizes * voxel_volume >= cfg.min_volume_mm3
    keep[0] = False
    if keep[1:].all():
        return labels, sizes
    new_id = np.zeros(sizes.size, np.uint32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    labels[mask] = new_id[fg]
    return labels, np.concatenate([[0], sizes[keep]])


def _inside_counts(other: np.ndarray, n_other: int, own_fg: np.ndarray, candidates: np.ndarray,
                   spacing, radius_mm: float) -> np.ndarray:
    """Voxels of each ``other`` lesion within ``radius_mm`` of ``own_fg`` (only ``candidates``; others 0).

    Works per candidate lesion on its bounding box padded by the radius. Voxels outside
    ``own_fg`` are looked up in a k-d tree of ``own_fg``'s surface voxels (the nearest voxel
    of a mask to a point outside it is always a surface voxel): a distance transform of the
    box costs seconds when a lesion is organ-sized.
    """
    inside = np.bincount(other[own_fg], minlength=n_other)[:n_other].astype(np.int64)
    if radius_mm <= 0:
        return inside
    from scipy.ndimage import find_objects
    from scipy.spatial import cKDTree

    from volseg.evaluation.surface import surface_voxels

    scale = np.asarray(spacing, dtype=np.float64)
    pad = [int(np.ceil(radius_mm / s)) for s in scale]
    boxes = find_objects(other, max_label=n_other - 1)
    for j in candidates:
        box = boxes[j - 1]
        big = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(box, pad, other.shape))
        outside = np.argwhere((other[box] == j) & ~own_fg[box])
        if outside.size == 0:
            continue
        outside += [b.start - g.start for b, g in zip(box, big)]
        targets = np.argwhere(surface_voxels(own_fg[big]))
        dist = cKDTree(targets * scale).query(outside * scale, distance_upper_bound=radius_mm * (1 + 1e-9))[0]
        inside[j] += int(np.count_nonzero(dist <= radius_mm))
    return inside


def _detected(own: np.ndarray, own_sizes: np.ndarray, other: np.ndarray, other_sizes: np.ndarray,
              spacing, cfg: LesionConfig) -> np.ndarray:
    """Bool per lesion of ``own`` (index 1..N): found by ``other`` under the two "dilated" criteria."""
    own_fg = own > 0
    both = own_fg & (other > 0)
    n_own, n_other = own_sizes.size, other_sizes.size
    pairs = np.unique(own[both].astype(np.int64) * n_other + other[both])
    own_of, other_of = pairs // n_other, pairs % n_other
    covered = np.bincount(own[both], minlength=n_own)[:n_own]
    inside = _inside_counts(other, n_other, own_fg, np.unique(other_of), spacing, cfg.dilation_mm)
    touch_size = np.zeros(n_own)
    touch_inside = np.zeros(n_own)
    np.add.at(touch_size, own_of, other_sizes[other_of])
    np.add.at(touch_inside, own_of, inside[other_of])
    ok = (covered >= cfg.min_overlap * own_sizes) & (touch_size > 0) & (touch_inside >= cfg.min_inside * touch_size)
    return ok[1:]


def _detected_anima(own: np.ndarray, own_sizes: np.ndarray, other: np.ndarray, other_sizes: np.ndarray,
                    cfg: LesionConfig) -> np.ndarray:
    """Bool per lesion of ``own`` (index 1..N): found by ``other`` under the alpha and beta/gamma tests.

    Works on the (own lesion, other lesion, overlap) triples only: one pass over the voxels
    where both sides are foreground, then sorting the pairs.
    """
    n_own, n_other = own_sizes.size, other_sizes.size
    both = (own > 0) & (other > 0)
    codes, overlap = np.unique(own[both].astype(np.int64) * n_other + other[both], return_counts=True)
    own_of, other_of = codes // n_other, codes % n_other
    covered = np.bincount(own_of, weights=overlap, minlength=n_own)[:n_own]
    # outside ratio of each other lesion: its voxels on own background / its size
    on_own = np.bincount(other_of, weights=overlap, minlength=n_other)[:n_other]
    outside = np.zeros(n_other)
    np.divide(other_sizes - on_own, other_sizes, out=outside, where=other_sizes > 0)
    # pairs grouped by own lesion, largest overlap first (ties: lower label first)
    order = np.lexsort((other_of, -overlap, own_of))
    own_of, other_of, overlap = own_of[order], other_of[order], overlap[order]
    cum = np.cumsum(overlap)
    group_start = np.searchsorted(own_of, own_of)  # first pair of the same own lesion
    before = cum - overlap - (cum[group_start] - overlap[group_start])  # overlap of earlier pairs of the lesion
    examined = before / covered[own_of] < cfg.gamma
    bad = np.zeros(n_own, bool)
    bad[own_of[examined & (outside[other_of] > cfg.beta)]] = True
    ratio = np.zeros(n_own)
    np.divide(covered, own_sizes, out=ratio, where=own_sizes > 0)
    return ((ratio > cfg.alpha) & (covered > 0) & ~bad)[1:]


def lesion_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float],
                   cfg: LesionConfig | None = None) -> dict[str, float | int]:
    """Lesion-wise detection scores of one case and one label or region.

    Args:
        pred: Predicted mask, bool (z, y, x).
        ref: Reference mask, bool (z, y, x), same shape.
        spacing: Voxel size (z, y, x) in mm.
        cfg: Matching settings; default :class:`LesionConfig()`.

    Returns:
        ``n_ref``, ``n_pred`` (lesion counts), ``tp_ref`` (detected reference lesions),
        ``tp_pred`` (true-positive predicted lesions), ``fn``, ``fp`` (counts),
        ``fp_volume_mm3`` (total volume of false-positive lesions), ``sensitivity``,
        ``precision`` and ``f1`` (NaN where undefined, see the module docstring), and
        ``count_error`` (``n_pred - n_ref``).
    """
    cfg = cfg or LesionConfig()
    from volseg.evaluation.surface import bounding_box

    box = bounding_box(pred | ref)
    if box is not None:  # everything below only looks at voxels inside the box
        pred, ref = pred[box], ref[box]
        ref_lab, ref_sizes = lesion_components(ref, spacing, cfg)
        pred_lab, pred_sizes = lesion_components(pred, spacing, cfg)
        if cfg.rule == "anima":
            ref_hit = _detected_anima(ref_lab, ref_sizes, pred_lab, pred_sizes, cfg)
            pred_hit = _detected_anima(pred_lab, pred_sizes, ref_lab, ref_sizes, cfg)
        else:
            ref_hit = _detected(ref_lab, ref_sizes, pred_lab, pred_sizes, spacing, cfg)
            pred_hit = _detected(pred_lab, pred_sizes, ref_lab, ref_sizes, spacing, cfg)
    else:
        ref_hit = pred_hit = np.zeros(0, bool)
        pred_sizes = np.zeros(1, np.int64)
    fp_voxels = int(pred_sizes[1:][~pred_hit].sum())
    out = detection_scores(int(ref_hit.size), int(pred_hit.size), int(ref_hit.sum()), int(pred_hit.sum()),
                           fp_voxels * float(np.prod(spacing)))
    out["count_error"] = out["n_pred"] - out["n_ref"]
    return out


def detection_scores(n_ref: int, n_pred: int, tp_ref: int, tp_pred: int, fp_volume_mm3: float) -> dict:
    """Counts and sensitivity / precision / F1 (see the module docstring for NaN rules)."""
    nan = float("nan")
    sens = tp_ref / n_ref if n_ref else nan
    prec = tp_pred / n_pred if n_pred else nan
    if not n_ref and not n_pred:
        f1 = nan
    elif not n_ref or not n_pred or sens + prec == 0:
        f1 = 0.0
    else:
        f1 = 2 * sens * prec / (sens + prec)
    return {"n_ref": n_ref, "n_pred": n_pred, "tp_ref": tp_ref, "tp_pred": tp_pred,
            "fn": n_ref - tp_ref, "fp": n_pred - tp_pred, "fp_volume_mm3": fp_volume_mm3,
            "sensitivity": sens, "precision": prec, "f1": f1}
