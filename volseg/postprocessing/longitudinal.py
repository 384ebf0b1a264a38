"""Lesion-level change between two timepoints: stable, new and vanishing lesions with a table.

Input: the longitudinal network's four sigmoid maps on one grid, in the order of
:data:`HEADS`: lesions at baseline, lesions at follow-up, new lesions, vanishing lesions.

1. Threshold: follow-up lesion mask ``F = (p_followup > t) ∪ (p_new > t)`` (a new lesion is a
   follow-up lesion), baseline mask ``B = (p_baseline > t) ∪ (p_vanishing > t)``. With
   ``change_heads``, the change maps also remove voxels: ``F ∖ (p_vanishing > t)`` and
   ``B ∖ (p_new > t)`` (a vanished lesion is no follow-up lesion, even where the follow-up
   map still sees some of it after misregistration).
2. Connected components of ``F`` and of ``B`` (``connectivity``); components smaller than
   ``min_volume_mm3`` are dropped.
3. Matching: a follow-up component ``C`` and a baseline component ``D`` are the same lesion
   when ``|C ∩ D| ≥ min_match · min(|C|, |D|)``; lesions are the connected groups of this
   relation, so a lesion that grows, shrinks, splits or merges stays one stable lesion.
4. Types: a group with components at both timepoints is *stable*; a follow-up-only group is
   *new*; a baseline-only group is *vanishing*.
5. Label map (baseline grid): 1 stable on every voxel of the group's components, 2 new, 3
   vanishing (a voxel in two unmatched lesions takes the follow-up one).

Per lesion: volumes at each timepoint (mm³), centre (voxels, z, y, x; world millimetres
once exported), a confidence (mean over its voxels of the probability of its type: stable
``max(p_baseline, p_followup)``, new ``max(p_new, p_followup · (1 − p_baseline))``, vanishing
``max(p_vanishing, p_baseline · (1 − p_followup))``) and its mean uncertainty (binary entropy
of that probability, nats).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

HEADS = ("baseline", "followup", "new", "vanishing")
TYPE_VALUES = {"stable": 1, "new": 2, "vanishing": 3}


@dataclass(frozen=True)
class MatchingParams:
    """Settings of :func:`classify_lesions` (chosen on the held-out fold, see ``lesion_matching.json``).

    Attributes:
        threshold: Probability above which a voxel belongs to a lesion mask.
        min_volume_mm3: Components smaller than this at a timepoint are dropped.
        min_match: Overlap, as a share of the smaller component, that makes two components
            at different timepoints one lesion.
        connectivity: 6, 18 or 26.
        change_heads: Let the new / vanishing maps remove voxels from the other timepoint's mask.
    """

    threshold: float = 0.5
    min_volume_mm3: float = 0.0
    min_match: float = 0.1
    connectivity: int = 6
    change_heads: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0 or not 0.0 < self.min_match <= 1.0 or self.min_volume_mm3 < 0:
            raise ValueError(f"lesion matching: threshold must be in (0, 1), min_match in (0, 1] and min_volume_mm3 "
                             f">= 0, got {self.threshold}, {self.min_match}, {self.min_volume_mm3}")
        if self.connectivity not in (6, 18, 26):
            raise ValueError(f"lesion matching: connectivity must be 6, 18 or 26, got {self.connectivity}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "MatchingParams":
        d = d or {}
        return cls(**{k: d[k] for k in ("threshold", "min_volume_mm3", "min_match", "connectivity", "change_heads")
                      if k in d})

    def to_dict(self) -> dict:
        return asdict(self)


def _components(mask: np.ndarray, spacing: Sequence[float], params: MatchingParams) -> tuple[np.ndarray, int]:
    import cc3d

    lab, n = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=params.connectivity, return_N=True)
    lab = lab.astype(np.int64, copy=False)
    if n == 0 or params.min_volume_mm3 <= 0:
        return lab, int(n)
    sizes = np.bincount(lab[mask], minlength=n + 1)
    keep = sizes * float(np.prod(spacing)) >= params.min_volume_mm3
    keep[0] = False
    new_id = np.zeros(n + 1, np.int64)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1)
    return new_id[lab], int(keep.sum())


def _groups(fu: np.ndarray, n_fu: int, bl: np.ndarray, n_bl: int, min_match: float) -> tuple[np.ndarray, np.ndarray]:
    """Group id (1..G) per follow-up component (index 1..n_fu) and per baseline component."""
    parent = list(range(n_fu + n_bl + 1))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    both = (fu > 0) & (bl > 0)
    if both.any():
        size_fu = np.bincount(fu[fu > 0], minlength=n_fu + 1)
        size_bl = np.bincount(bl[bl > 0], minlength=n_bl + 1)
        pairs, counts = np.unique(fu[both] * (n_bl + 1) + bl[both], return_counts=True)
        for key, count in zip(pairs.tolist(), counts.tolist()):
            c, d = divmod(key, n_bl + 1)
            if count >= min_match * min(size_fu[c], size_bl[d]):
                parent[find(n_fu + d)] = find(c)
    roots = [find(a) for a in range(1, n_fu + n_bl + 1)]
    ids = {r: i + 1 for i, r in enumerate(dict.fromkeys(roots))}
    g = np.array([0] + [ids[r] for r in roots], np.int64)
    return g[: n_fu + 1], np.concatenate([[0], g[n_fu + 1:]])


def _type_probability(probs: np.ndarray) -> dict[str, np.ndarray]:
    pb, pf, pn, pv = (probs[i].astype(np.float32) for i in range(4))
    return {"stable": np.maximum(pb, pf), "new": np.maximum(pn, pf * (1 - pb)),
            "vanishing": np.maximum(pv, pb * (1 - pf))}


def classify_lesions(probs: np.ndarray, spacing: Sequence[float],
                     params: MatchingParams | None = None) -> tuple[np.ndarray, list[dict]]:
    """Stable, new and vanishing lesions from the four sigmoid maps (see the module docstring).

    Args:
        probs: (4, Z, Y, X) probabilities in :data:`HEADS` order (any float dtype).
        spacing: Voxel size (z, y, x), mm.
        params: Thresholds and matching; default :class:`MatchingParams()`.

    Returns:
        ``(labels, lesions)``: uint8 (Z, Y, X) map (0 background, 1 stable, 2 new,
        3 vanishing) and one dict per lesion, ordered by type then size: ``id`` (1..N),
        ``type``, ``volume_baseline_mm3``, ``volume_followup_mm3``, ``centre_voxel`` (z, y, x),
        ``confidence``, ``uncertainty`` (nats).
    """
    params = params or MatchingParams()
    if probs.ndim != 4 or probs.shape[0] != len(HEADS):
        raise ValueError(f"expected (4, Z, Y, X) probabilities ({', '.join(HEADS)}), got {probs.shape}")
    t = np.float32(params.threshold)
    above = [np.asarray(probs[i], dtype=np.float32) > t for i in range(4)]  # float32: fp16 would round t
    fu_mask = above[1] | above[2]
    bl_mask = above[0] | above[3]
    if params.change_heads:
        fu_mask, bl_mask = fu_mask & ~above[3], bl_mask & ~above[2]
    fu, n_fu = _components(fu_mask, spacing, params)
    bl, n_bl = _components(bl_mask, spacing, params)
    g_fu, g_bl = _groups(fu, n_fu, bl, n_bl, params.min_match)
    n_groups = int(max(g_fu.max(initial=0), g_bl.max(initial=0)))
    voxel_mm3 = float(np.prod(spacing))
    vox_fu = np.bincount(g_fu[fu[fu > 0]], minlength=n_groups + 1)
    vox_bl = np.bincount(g_bl[bl[bl > 0]], minlength=n_groups + 1)
    kinds = np.where((vox_fu > 0) & (vox_bl > 0), 1, np.where(vox_fu > 0, 2, 3))
    kinds[0] = 0
    group = np.where(fu > 0, g_fu[fu], g_bl[bl])  # a voxel's lesion (the follow-up one where two disagree)
    labels = kinds[group].astype(np.uint8)
    lesions = []
    where = group > 0
    ids = group[where]
    if ids.size:
        q = _type_probability(probs)
        names = {1: "stable", 2: "new", 3: "vanishing"}
        counts = np.bincount(ids, minlength=n_groups + 1).astype(np.float64)
        coords = np.nonzero(where)
        centre = [np.bincount(ids, weights=c, minlength=n_groups + 1) / np.maximum(counts, 1) for c in coords]
        per_type = {}
        for name, p in q.items():
            pv = np.clip(p[where].astype(np.float64), 1e-6, 1 - 1e-6)
            ent = -(pv * np.log(pv) + (1 - pv) * np.log(1 - pv))
            per_type[name] = (np.bincount(ids, weights=pv, minlength=n_groups + 1) / np.maximum(counts, 1),
                              np.bincount(ids, weights=ent, minlength=n_groups + 1) / np.maximum(counts, 1))
        for gid in range(1, n_groups + 1):
            if counts[gid] == 0:
                continue
            name = names[int(kinds[gid])]
            lesions.append({"type": name, "volume_baseline_mm3": float(vox_bl[gid] * voxel_mm3),
                            "volume_followup_mm3": float(vox_fu[gid] * voxel_mm3),
                            "centre_voxel": [float(c[gid]) for c in centre],
                            "confidence": float(per_type[name][0][gid]), "uncertainty": float(per_type[name][1][gid])})
    order = {"stable": 0, "new": 1, "vanishing": 2}
    lesions.sort(key=lambda r: (order[r["type"]], -max(r["volume_baseline_mm3"], r["volume_followup_mm3"])))
    for i, r in enumerate(lesions, 1):
        r["id"] = i
    return labels, lesions


LESION_COLUMNS = ("id", "type", "volume_baseline_mm3", "volume_followup_mm3", "centre_x_mm", "centre_y_mm",
                  "centre_z_mm", "confidence", "uncertainty")


def lesion_rows(lesions: list[dict], geometry) -> list[dict]:
    """Lesion records with their centres in world millimetres (``geometry``: the label map's grid),
    as rows of ``CASE_lesions.csv`` (:data:`LESION_COLUMNS`)."""
    from volseg.io.world import voxel_to_world

    centres = voxel_to_world(np.asarray([r["centre_voxel"] for r in lesions], np.float64).reshape(-1, 3), geometry)
    return [{"id": r["id"], "type": r["type"], "volume_baseline_mm3": round(r["volume_baseline_mm3"], 3),
             "volume_followup_mm3": round(r["volume_followup_mm3"], 3), "centre_x_mm": round(float(x), 3),
             "centre_y_mm": round(float(y), 3), "centre_z_mm": round(float(z), 3),
             "confidence": round(r["confidence"], 4), "uncertainty": round(r["uncertainty"], 4)}
            for r, (x, y, z) in zip(lesions, centres)]


def write_lesion_table(path, lesions: list[dict], geometry) -> None:
    """Write ``CASE_lesions.csv`` (:data:`LESION_COLUMNS`, one row per lesion) atomically."""
    import csv

    from volseg.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LESION_COLUMNS)
        writer.writeheader()
        writer.writerows(lesion_rows(lesions, geometry))
