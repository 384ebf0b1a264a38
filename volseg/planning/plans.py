"""Loading, validating and saving plans.json; the plan hash that preprocessing records."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from functools import lru_cache
from pathlib import Path

from volseg.errors import PlanError
from volseg.io.atomic import write_json
from volseg.io.dataset import load_dataset_json

SCHEMA_NAME = "plans.schema.json"


@lru_cache(maxsize=1)
def plans_schema() -> dict:
    """The JSON schema of plans.json (``plans/plans.schema.json`` in the source tree)."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "plans" / SCHEMA_NAME,
                      Path(sys.prefix) / "share" / "volseg" / "plans" / SCHEMA_NAME):
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"{SCHEMA_NAME} not found beside the volseg package or in {sys.prefix}/share/volseg")


def validate_plans(plans: dict, path: str | os.PathLike | None = None) -> dict:
    """Check ``plans`` against the schema and its internal consistency.

    Raises:
        PlanError: One line naming ``path``, the field and what is wrong: a key the schema
            does not list (the key ends the path, e.g. ``configurations/3d_fullres/augmentation/
            rotaton``, and the message names the nearest known key), a missing required key,
            a value out of range, an unregistered task or loss, or a NaN or Infinity anywhere
            in the plan (Python's ``json`` reads both, and no plan field may hold one).
    """
    import jsonschema

    bad = first_non_finite(plans)
    if bad is not None:
        where, value = bad
        raise PlanError(path, f"invalid plan at {where or '(top level)'}: {value} is not a finite number")

    validator = jsonschema.Draft202012Validator(plans_schema())
    errors = sorted(validator.iter_errors(plans), key=_error_order)
    if errors:
        where, message = describe_schema_error(errors[0])
        raise PlanError(path, f"invalid plan at {where}: {message}")
    from volseg.tasks import list_tasks
    from volseg.training.losses import list_losses

    for name, cfg in plans["configurations"].items():
        loss = cfg["training"]["loss"]["name"]
        if loss not in list_losses():
            raise PlanError(path, f"invalid plan at configurations/{name}/training/loss/name: unknown loss {loss!r}; "
                            f"registered: {', '.join(list_losses())}")

    if plans.get("task", "segmentation") not in list_tasks():
        raise PlanError(path, f"task {plans['task']!r} is not a registered task; registered: {', '.join(list_tasks())}")
    if plans["default_configuration"] not in plans["configurations"]:
        raise PlanError(path, f'default_configuration {plans["default_configuration"]!r} is not one of '
                        f'{sorted(plans["configurations"])}')
    n_channels = len(plans["dataset"]["channel_names"])
    if len(plans["normalization"]) != n_channels:
        raise PlanError(path, f"normalization has {len(plans['normalization'])} entries for {n_channels} channels")
    outputs = plans["outputs"]
    order = outputs.get("regions_class_order")
    if order is not None and len(order) != len(outputs.get("regions") or {}):
        raise PlanError(path, f"invalid plan at outputs/regions_class_order: {len(order)} values for "
                        f"{len(outputs.get('regions') or {})} regions")
    from volseg.networks import list_networks

    for name, cfg in plans["configurations"].items():
        net = cfg["network"]
        if net["architecture"] not in list_networks():
            raise PlanError(path, f"invalid plan at configurations/{name}/network/architecture: unknown architecture "
                            f"{net['architecture']!r}; registered: {', '.join(list_networks())}")
        n = len(net["features_per_stage"])
        for key, want in (("kernel_sizes", n), ("strides", n), ("n_conv_per_stage", n), ("n_conv_per_stage_decoder", n - 1)):
            if len(net[key]) != want:
                raise PlanError(path, f"configurations/{name}/network/{key} has {len(net[key])} entries, expected {want}")
        step = [1, 1, 1]
        for s in net["strides"]:
            step = [a * b for a, b in zip(step, s)]
        bad = [p for p, s in zip(cfg["patch_size"], step) if p % s]
        if bad:
            raise PlanError(path, f"configurations/{name}/patch_size {cfg['patch_size']} is not a multiple of the "
                            f"network's total stride {step}")
        window = ((cfg.get("detection") or {}).get("inference") or {}).get("peak_window", 1)
        if window % 2 == 0:
            raise PlanError(path, f"invalid plan at configurations/{name}/detection/inference/peak_window: {window} is "
                            "even; a peak's neighbourhood needs an odd edge (1 keeps every cell)")
    return plans


def _error_order(error) -> tuple:
    """Schema errors in file-path order; at one path an unknown key first (a misspelt key also
    makes the key it was meant to be missing, and the unknown one is what needs fixing)."""
    where = [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path]
    return where, error.validator != "additionalProperties"


def describe_schema_error(error) -> tuple[str, str]:
    """``(path, message)`` of one ``jsonschema`` error; an unknown key is named in the path.

    Example:
        >>> import jsonschema
        >>> schema = {"type": "object", "properties": {"rotation": {}, "scaling": {}}, "additionalProperties": False}
        >>> describe_schema_error(next(jsonschema.Draft202012Validator(schema).iter_errors({"rotaton": {}})))
        ('rotaton', "unknown key 'rotaton' (did you mean 'rotation'?); expected one of rotation, scaling")
    """
    import difflib

    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict) \
            and isinstance(error.schema.get("properties"), dict):
        known = error.schema["properties"]
        unknown = [k for k in error.instance if k not in known]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return "/".join([*path, key]), f"unknown key {key!r}{hint}; expected one of {', '.join(sorted(known))}"
    return "/".join(path) or "(top level)", error.message


def first_non_finite(obj, where: str = "") -> tuple[str, float] | None:
    """The JSON path (``a/b/0``) and value of the first NaN or ±Infinity in ``obj``, in file order.

    Example:
        >>> first_non_finite({"training": {"lr": float("nan")}})
        ('training/lr', nan)
    """
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where, obj)
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = first_non_finite(value, f"{where}/{key}" if where else str(key))
        if found is not None:
            return found
    return None


def load_plans(path: str | os.PathLike) -> dict:
    """Read and validate a plans.json file."""
    path = Path(path)
    if path.is_dir():
        path = path / "plans.json"
    plans = load_dataset_json(path)
    if plans.get("format") != "volseg-plans":
        raise PlanError(path, f"not a volseg plan (format {plans.get('format')!r})")
    return validate_plans(plans, path)


def save_plans(plans: dict, path: str | os.PathLike) -> Path:
    """Validate and write ``plans`` atomically."""
    validate_plans(plans, path)
    return write_json(path, plans)


def configuration(plans: dict, name: str | None, path: str | os.PathLike | None = None) -> tuple[str, dict]:
    """The named configuration (default: the plan's ``default_configuration``)."""
    name = name or plans["default_configuration"]
    if name not in plans["configurations"]:
        raise PlanError(path, f"no configuration {name!r} in the plan; it has {sorted(plans['configurations'])}")
    return name, plans["configurations"][name]


def preprocessing_hash(plans: dict, config_name: str) -> str:
    """Hash of every plan field that changes the preprocessed data of ``config_name``."""
    cfg = plans["configurations"][config_name]
    key = {"spacing": cfg["spacing"], "resampling": cfg["resampling"], "normalization": plans["normalization"],
           "crop_to_nonzero": plans["crop_to_nonzero"], "labels": plans["dataset"]["labels"],
           "instance_labels": plans["dataset"].get("instance_labels", False), "format": 1}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
