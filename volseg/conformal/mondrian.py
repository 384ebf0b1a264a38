"""Per-group (Mondrian) calibration: one conformal calibration per group of cases or lesions.

Convention: each group's ``losses`` is a float matrix (n_g, G) over the same grid of G
settings, columns ordered from the safest setting (index 0) to the most permissive
(index G-1), losses in [0, B].  Each group gets its own most permissive valid index, so the
guarantee holds within every group (for example, per lesion-size bin), not only on average.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from volseg.conformal.crc import CRCResult, NotMonotoneError, NoValidThresholdError, _check_level, crc_calibrate
from volseg.conformal.ltt import LTTResult, ltt_calibrate

METHODS = ("crc", "ltt")


def calibrate_groups(groups: dict[str, np.ndarray], method: str, alpha: float, delta: float | None = None,
                     bound: float = 1.0, **kw) -> dict[str, CRCResult | LTTResult]:
    """Calibrate each group on its own loss matrix.

    Args:
        groups: Group name -> float array (n_g, G) of that group's losses in [0, ``bound``],
            columns ordered safest first; every group shares the grid.
        method: "crc" (expected risk <= alpha) or "ltt" (risk <= alpha with probability 1 - delta).
        alpha: Risk level in (0, 1), the same for every group.
        delta: For "ltt" only: the allowed failure probability, in (0, 1), per group.
        bound: Upper bound B of the losses.
        **kw: Passed on to :func:`~volseg.conformal.crc.crc_calibrate` (``check``) or
            :func:`~volseg.conformal.ltt.ltt_calibrate` (``pvalue``, ``fwer``).

    Returns:
        Group name -> that group's result, in the order of ``groups``.

    Raises:
        ValueError: On an unknown method, bad levels, no groups, or grids of different sizes.
        NoValidThresholdError, NotMonotoneError: As the method raises them, the message
            starting with the group's name, e.g. "group 'small': ...".

    Example:
        >>> small = np.array([[0.0, 0.5, 1.0]] * 20)  # 20 small lesions, 3 thresholds
        >>> large = np.array([[0.0, 0.0, 0.5]] * 20)
        >>> res = calibrate_groups({"small": small, "large": large}, "crc", alpha=0.3)
        >>> {name: r.index for name, r in res.items()}
        {'small': 0, 'large': 1}
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _check_level("alpha", alpha)
    if method == "ltt":
        if delta is None:
            raise ValueError("method 'ltt' needs delta, the allowed failure probability in (0, 1)")
        _check_level("delta", delta)
    elif delta is not None:
        raise ValueError(f"delta ({delta!r}) applies to method 'ltt' only; CRC controls the expected risk")
    if not groups:
        raise ValueError("groups is empty: give at least one group of losses")
    widths = {name: np.shape(losses)[-1] if np.ndim(losses) else None for name, losses in groups.items()}
    if len(set(widths.values())) > 1:
        raise ValueError(f"every group needs the same grid size G, got {widths}")
    out: dict[str, CRCResult | LTTResult] = {}
    for name, losses in groups.items():
        try:
            if method == "crc":
                out[name] = crc_calibrate(losses, alpha, bound=bound, **kw)
            else:
                out[name] = ltt_calibrate(losses, alpha, delta, bound=bound, **kw)
        except ValueError as err:
            cls = type(err) if isinstance(err, (NoValidThresholdError, NotMonotoneError)) else ValueError
            raise cls(f"group {name!r}: {err}") from err
    return out


def check_edges(edges_mm3: Sequence[float]) -> np.ndarray:
    """Bin edges as a float array: at least one, finite, strictly increasing (``ValueError`` otherwise)."""
    edges = np.asarray(edges_mm3, dtype=float).ravel()
    if edges.size == 0:
        raise ValueError("edges_mm3 needs at least one edge")
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges_mm3 must be finite and strictly increasing, got {list(edges_mm3)}")
    return edges


def size_bins(volumes_mm3: np.ndarray, edges_mm3: Sequence[float]) -> np.ndarray:
    """Size bin of each lesion: 0 below edges[0], k for edges[k-1] <= v < edges[k], len(edges) above.

    Args:
        volumes_mm3: Float array (n,) of lesion volumes in mm³ (>= 0).
        edges_mm3: Strictly increasing bin edges in mm³, e.g. (10, 100).

    Returns:
        Int array (n,) of bin indices in 0..len(edges); :func:`bin_names` names them.

    Example:
        >>> size_bins(np.array([5.0, 10.0, 50.0, 400.0]), [10, 100]).tolist()
        [0, 1, 1, 2]
    """
    edges = check_edges(edges_mm3)
    vol = np.asarray(volumes_mm3, dtype=float)
    if vol.ndim != 1:
        raise ValueError(f"volumes_mm3 must be 1-D (lesions,), got shape {vol.shape}")
    if not np.all(np.isfinite(vol)) or np.any(vol < 0):
        raise ValueError("volumes_mm3 must be finite and non-negative")
    return np.searchsorted(edges, vol, side="right").astype(int)


def bin_names(edges_mm3: Sequence[float], unit: str = "mm3") -> list[str]:
    """Names of the size bins of :func:`size_bins`, e.g. ["<10 mm3", "10-100 mm3", ">=100 mm3"].

    Args:
        edges_mm3: Strictly increasing bin edges in mm³ (or in ``unit``).
        unit: The unit written after each edge (e.g. "mm" for nodule diameters).

    Returns:
        len(edges) + 1 names, in bin order.
    """
    edges = check_edges(edges_mm3)
    e = [f"{v:g}" for v in edges]
    return [f"<{e[0]} {unit}"] + [f"{lo}-{hi} {unit}" for lo, hi in zip(e[:-1], e[1:])] + [f">={e[-1]} {unit}"]
