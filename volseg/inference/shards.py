"""Prediction split over ranks: which cases each rank predicts, and one summary from all ranks.

A rank is given by ``--shard K/N`` (K = 0 … N − 1) or, under ``torchrun``, by the ``RANK`` and
``WORLD_SIZE`` environment variables (global over every node). Nothing is exchanged between
ranks: each lists the same inputs and computes the same split, predicts its own cases
(atomically, resumable), writes ``summary.shard-K-of-N.json``, and whichever rank finds every
shard's summary present merges them into ``summary.json``.

The split balances the network's work: a case's cost is its voxel count on the model's grid
(voxels × its spacing / the plan's spacing, per axis), and cases go, largest first, to the
rank with the least work so far (ties: the lower rank).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from volseg.errors import VolsegError

_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Rank ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    @property
    def name(self) -> str:
        """``K-of-N``, as the shard's summary file is named."""
        return f"{self.index}-of-{self.count}"

    @property
    def summary_file(self) -> str:
        return f"summary.shard-{self.name}.json"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` → :class:`Shard` (0 ≤ K < N).

    Raises:
        ValueError: Not of that form.
    """
    m = _SHARD.match(text.strip())
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"expected K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_from_env(env: dict | None = None) -> Shard | None:
    """The rank ``torchrun`` gives this process (``RANK`` of ``WORLD_SIZE``), or None for one process."""
    env = os.environ if env is None else env
    try:
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    except ValueError:
        raise VolsegError("WORLD_SIZE/RANK", f"not integers ({env.get('WORLD_SIZE')!r}, {env.get('RANK')!r})") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise VolsegError("RANK", f"{rank} is outside 0 … {world - 1} (WORLD_SIZE {world})")
    return Shard(rank, world)


def case_cost(image: Path | None, target_spacing: Sequence[float]) -> float:
    """Voxels of a case on the model's grid; 1 when its header cannot be read (the case then
    fails on its rank like it would anywhere)."""
    from volseg.io.nifti import read_geometry

    if image is None:
        return 1.0
    try:
        geom = read_geometry(image)
    except Exception:  # noqa: BLE001 - a broken file is reported when it is predicted
        return 1.0
    return float(math.prod(s * sp / t for s, sp, t in zip(geom.shape, geom.spacing, target_spacing)))


def split_by_cost(costs: Sequence[float], count: int) -> list[list[int]]:
    """Indices of ``costs`` per rank, largest first to the least loaded rank; each list sorted.

    Example:
        >>> split_by_cost([5, 1, 4, 2, 3], 2)
        [[0, 3, 4], [1, 2]]
    """
    loads = [0.0] * count
    parts: list[list[int]] = [[] for _ in range(count)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(count), key=lambda r: (loads[r], r))
        parts[r].append(i)
        loads[r] += costs[i]
    return [sorted(p) for p in parts]


def shard_cases(cases: list, shard: Shard, target_spacing: Sequence[float]) -> list:
    """The cases of ``shard`` (each an :class:`~volseg.inference.cases.InputCase`), in input order."""
    costs = [case_cost(next((p for p in c.images if p is not None), None), target_spacing) for c in cases]
    return [cases[i] for i in split_by_cost(costs, shard.count)[shard.index]]


def merge_summaries(out_dir: Path, count: int) -> dict | None:
    """``summary.json`` from every ``summary.shard-K-of-N.json`` of ``out_dir``, or None while
    some shard has not written its summary. Written atomically; any rank may call it."""
    from volseg.io.atomic import write_json

    parts = []
    for k in range(count):
        path = out_dir / Shard(k, count).summary_file
        if not path.is_file():
            return None
        try:
            parts.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None  # being rewritten by a resumed rank: that rank merges when it is done
    merged = {key: value for key, value in parts[0].items() if key not in ("cases", "counts", "shard", "shift")}
    merged["cases"] = dict(sorted((cid, rec) for p in parts for cid, rec in p["cases"].items()))
    merged["shards"] = {p["shard"]["name"]: {"cases": p["shard"]["cases"], "counts": p["counts"]} for p in parts}
    statuses = [c["status"] for c in merged["cases"].values()]
    merged["counts"] = {s: statuses.count(s) for s in ("done", "skipped", "failed", "refused")}
    if "shift" in parts[0]:
        merged["shift"] = {**parts[0]["shift"], "flagged": sorted(c for p in parts for c in p["shift"]["flagged"])}
    write_json(out_dir / "summary.json", merged)
    return merged
