"""Per-channel intensity normalization schemes."""

from __future__ import annotations

MASK_IF_CROP_KEEPS_LESS_THAN = 0.75


def determine_normalization(channel_names: dict[str, str], intensity: list[dict],
                            median_fraction_kept_by_crop: float) -> list[dict]:
    """One normalization entry per channel.

    Rules: a channel named "CT" (any case) is clipped to the 0.5 / 99.5 percentiles of
    the foreground intensities of the whole dataset and z-scored with the foreground
    mean and standard deviation (Hounsfield units mean the same in every case). Every
    other channel is z-scored per image; inside the non-zero mask only when cropping to
    the non-zero region removed at least a quarter of the median image (skull-stripped
    MR, where the zero background would otherwise dominate the statistics).

    Args:
        channel_names: Channel index (as a string) → name, from dataset.json.
        intensity: Per-channel foreground statistics from the fingerprint.
        median_fraction_kept_by_crop: Median fraction of voxels kept by the crop.

    Returns:
        A list of dicts, in channel order, each with ``channel`` and ``scheme`` ("ct" with
        ``clip``, ``mean``, ``std``; or "zscore" with ``use_nonzero_mask``).
    """
    out = []
    use_mask = median_fraction_kept_by_crop < MASK_IF_CROP_KEEPS_LESS_THAN
    for idx in sorted(channel_names, key=int):
        name = channel_names[idx]
        stats = intensity[int(idx)]
        if name.strip().lower() == "ct":
            out.append({"channel": int(idx), "scheme": "ct", "clip": [stats["p00_5"], stats["p99_5"]],
                        "mean": stats["mean"], "std": max(stats["std"], 1e-8)})
        else:
            out.append({"channel": int(idx), "scheme": "zscore", "use_nonzero_mask": bool(use_mask)})
    return out
