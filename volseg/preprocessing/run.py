"""Preprocess every training case of a dataset into the on-disk training format.

Per case, in ``OUT/preprocessed/<configuration>/``: ``CASE.npy`` float32 (C, Z, Y, X),
``CASE_seg.npy`` int16 (1, Z, Y, X) class values, ``CASE_inst.npy`` int16 (1, Z, Y, X)
instance ids (instance-labelled datasets only) and ``CASE.json`` (properties). The JSON is
written last, so a case is complete exactly when its JSON exists and records the current
plan hash and source files, and each ``.npy`` is as long as its header says; such cases are
skipped on a re-run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from volseg.fingerprint.case import load_case, semantic_label
from volseg.io.atomic import save_npy, write_json
from volseg.io.dataset import CaseFiles, Dataset, read_ignore
from volseg.io.npy import npy_complete
from volseg.parallel import process_pool
from volseg.planning.plans import preprocessing_hash
from volseg.preprocessing.case import MAX_LOCATIONS_PER_INSTANCE, class_locations, preprocess_image, preprocess_label

log = logging.getLogger(__name__)


def source_record(case: CaseFiles, plan_hash: str) -> dict:
    """What a preprocessed case was made from: the plan hash and each file's size and mtime."""
    files = [p for p in (*case.images, case.label, case.instances) if p is not None]
    return {"plan_hash": plan_hash,
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def array_files(out_dir: Path, case: CaseFiles) -> list[Path]:
    """The ``.npy`` files a preprocessed ``case`` has: image, label map and instance map where they apply."""
    names = [f"{case.case_id}.npy"]
    if case.label is not None:
        names.append(f"{case.case_id}_seg.npy")
        if case.instances is not None:
            names.append(f"{case.case_id}_inst.npy")
    return [out_dir / n for n in names]


def is_up_to_date(out_dir: Path, case: CaseFiles, plan_hash: str) -> bool:
    """True when ``out_dir`` holds a complete preprocessed ``case`` made from the same files and plan.

    Every ``.npy`` of the case must be intact by its header (see :func:`~volseg.io.npy.npy_complete`),
    so a file damaged after it was written is preprocessed again rather than reported up to date.
    """
    props_path = out_dir / f"{case.case_id}.json"
    if not props_path.is_file():
        return False
    damaged = [p for p in array_files(out_dir, case) if not npy_complete(p)]
    if damaged:
        log.info("%s: missing or damaged, preprocessing case %s again", damaged[0], case.case_id)
        return False
    try:
        props = json.loads(props_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return props.get("source") == source_record(case, plan_hash)


def preprocess_case_to_disk(case: CaseFiles, dataset: Dataset, plans: dict, config_name: str, out_dir: Path,
                            seed: int = 0) -> str:
    """Preprocess one case and write its files (see the module docstring)."""
    config = plans["configurations"][config_name]
    images, label, geometry, instances = load_case(case, dataset)
    data, props = preprocess_image(images, geometry, plans, config)
    values = list(dataset.label_values) if instances is None else [0, *sorted({c + 1 for c in instances.values()})]
    save_npy(out_dir / f"{case.case_id}.npy", data)
    if label is not None:
        if instances is None:
            seg = preprocess_label(label, props, values, config["resampling"]["label"])
        else:  # one resampling of the instance map; the class map follows it voxel for voxel
            inst = preprocess_label(label, props, [], "nearest")
            seg = semantic_label(inst, instances).astype(inst.dtype)
        save_npy(out_dir / f"{case.case_id}_seg.npy", seg[None])
        props["class_locations"] = class_locations(seg, values, seed)
        if instances is not None:
            save_npy(out_dir / f"{case.case_id}_inst.npy", inst[None])
            present = set(np.unique(inst).tolist())
            props["instances"] = {str(k): v for k, v in instances.items() if k in present}
            props["ignore"] = [i for i in read_ignore(case.instances) if i in present] if case.instances else []
            props["instance_locations"] = class_locations(inst, sorted(present - {0}), seed,
                                                          MAX_LOCATIONS_PER_INSTANCE)
    props["case_id"] = case.case_id
    props["source"] = source_record(case, preprocessing_hash(plans, config_name))
    write_json(out_dir / f"{case.case_id}.json", props)
    return case.case_id


def _job(args: tuple) -> str:
    return preprocess_case_to_disk(*args)


def preprocess_dataset(dataset: Dataset, plans: dict, config_name: str, out_dir: str | os.PathLike,
                       num_workers: int = 2, progress: bool = True) -> dict[str, int]:
    """Preprocess every case of ``dataset`` for ``config_name`` into ``out_dir``, in parallel.

    Cases that are up to date are skipped.

    Returns:
        Counts: ``{"processed": n, "skipped": m}``.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_hash = preprocessing_hash(plans, config_name)
    todo = [c for c in dataset.cases if not is_up_to_date(out_dir, c, plan_hash)]
    jobs = [(c, dataset, plans, config_name, out_dir, i) for i, c in enumerate(todo)]
    bar = tqdm(total=len(jobs), desc=f"preprocess {config_name}", unit="case", disable=not progress or not jobs,
               leave=False)
    if num_workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _job(job)
            bar.update()
    else:
        with process_pool(min(num_workers, len(jobs))) as pool:
            for _ in pool.map(_job, jobs):
                bar.update()
    bar.close()
    return {"processed": len(todo), "skipped": len(dataset.cases) - len(todo)}
