"""Figures for people: score distributions and overlays of the worst cases (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from volseg.io.atomic import atomic_path

PLOTTED = (("dice", "Dice"), ("surface_dice", "surface Dice"), ("hd95_mm", "HD95 (mm)"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return Path(path)


def plot_distributions(cases: list[dict], names: list[str], path: str | os.PathLike,
                       tolerance_mm: float) -> Path:
    """Box plot with the per-case points on top, one panel per metric, one box per label.

    Args:
        cases: Case records of ``evaluate_folders`` (failed cases are skipped; cases without a
            prediction are shown with the scores of an empty prediction, as the means count them).
        names: Labels and regions to show, in order.
        path: PNG file to write.
        tolerance_mm: Shown in the surface Dice panel title.
    """
    plt = _pyplot()
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.5 * len(PLOTTED), 4.2), squeeze=False)
    for ax, (metric, title) in zip(axes[0], PLOTTED):
        data = [[c["metrics"][n][metric] for c in cases if "metrics" in c and n in c["metrics"]] for n in names]
        data = [[v for v in d if np.isfinite(v)] for d in data]
        ax.boxplot([d if d else [np.nan] for d in data], showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=10, alpha=0.6, color="tab:blue", zorder=3)
        ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(d)})" for n, d in zip(names, data)], fontsize=8)
        ax.set_title(title if metric != "surface_dice" else f"{title} at {tolerance_mm:g} mm")
        if metric != "hd95_mm":
            ax.set_ylim(-0.03, 1.03)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def error_slices(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) indices of the axial, coronal and sagittal slices holding the most wrong voxels.

    Falls back to the slices with the most reference (or predicted) voxels when the masks agree.
    """
    err = pred ^ ref
    src = err if err.any() else (ref | pred)
    if not src.any():
        return tuple(s // 2 for s in src.shape)
    return tuple(int(np.argmax(src.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3))


def plot_overlay(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], title: str,
                 path: str | os.PathLike, image: np.ndarray | None = None) -> Path:
    """Three orthogonal slices through the largest error, with both contours.

    Reference contour green, prediction contour red; missed voxels (false negatives)
    shaded yellow, spurious voxels (false positives) shaded magenta.

    Args:
        pred: Predicted mask, bool (z, y, x).
        ref: Reference mask, bool (z, y, x).
        spacing: Voxel size (z, y, x) in mm, for the aspect ratio.
        title: Figure title (case, label, score).
        path: PNG file to write.
        image: Optional (z, y, x) image shown in grey underneath.
    """
    from volseg.evaluation.surface import bounding_box

    plt = _pyplot()
    centre = error_slices(pred, ref)
    box = bounding_box(pred | ref) or tuple(slice(0, s) for s in pred.shape)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    names = ("axial (z={})", "coronal (y={})", "sagittal (x={})")
    for axis, ax in enumerate(axes):
        p, r = np.take(pred, centre[axis], axis=axis), np.take(ref, centre[axis], axis=axis)
        other = [i for i in range(3) if i != axis]
        # axial: y down as radiologists view it; coronal and sagittal: z up
        opts = {"aspect": spacing[other[0]] / spacing[other[1]], "interpolation": "nearest",
                "origin": "upper" if axis == 0 else "lower"}
        if image is not None:
            ax.imshow(np.take(image, centre[axis], axis=axis), cmap="gray", **opts)
        else:
            ax.imshow(np.zeros(p.shape), cmap="gray", vmin=0, vmax=1, **opts)
        shade = np.zeros(p.shape + (4,))
        shade[r & ~p] = (1.0, 0.85, 0.0, 0.55)
        shade[p & ~r] = (1.0, 0.0, 1.0, 0.55)
        ax.imshow(shade, **opts)
        for m, color in ((r, "lime"), (p, "red")):
            if m.any() and not m.all():
                ax.contour(m.astype(float), levels=[0.5], colors=color, linewidths=1.0)
        _zoom(ax, box[other[0]], box[other[1]], pred.shape[other[0]], pred.shape[other[1]], axis == 0)
        ax.set_title(names[axis].format(centre[axis]), fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{title}   —   reference: green, prediction: red, missed: yellow, spurious: magenta", fontsize=9)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _zoom(ax, rows: slice, cols: slice, n_rows: int, n_cols: int, rows_down: bool, margin: int = 12) -> None:
    """Show the structures' bounding box with a margin rather than the whole slice."""
    r0, r1 = max(rows.start - margin, 0) - 0.5, min(rows.stop + margin, n_rows) - 0.5
    c0, c1 = max(cols.start - margin, 0) - 0.5, min(cols.stop + margin, n_cols) - 0.5
    ax.set_xlim(c0, c1)
    ax.set_ylim((r1, r0) if rows_down else (r0, r1))
