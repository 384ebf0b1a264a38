"""A readable table of a plan's configurations."""

from __future__ import annotations


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "×".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def plan_table(plans: dict) -> str:
    """Configurations side by side: spacing, shape, patch, batch, topology, budgets."""
    configs = plans["configurations"]
    names = list(configs)
    rows = [("", [n + (" *" if n == plans["default_configuration"] else "") for n in names])]

    def row(label, fn):
        rows.append((label, [fn(configs[n]) for n in names]))

    row("spacing (mm, z×y×x)", lambda c: _fmt(c["spacing"]))
    row("median shape", lambda c: _fmt(c.get("median_shape", "-")))
    row("patch", lambda c: _fmt(c["patch_size"]))
    row("batch", lambda c: str(c["batch_size"]))
    row("stages", lambda c: str(len(c["network"]["strides"])))
    for axis, name in enumerate("zyx"):
        row(f"pooling {name}", lambda c, a=axis: " ".join(str(s[a]) for s in c["network"]["strides"][1:]))
    row("kernels (z)", lambda c: " ".join(str(k[0]) for k in c["network"]["kernel_sizes"]))
    row("features", lambda c: "-".join(str(f) for f in c["network"]["features_per_stage"]))
    row("sized for", lambda c: c.get("device", "-"))
    row("memory est. (GB)", lambda c: _fmt(c.get("memory_estimate_gb", "-")))
    row("GFLOP / iteration", lambda c: _fmt(c.get("gflop_per_iteration", "-")))
    row("epochs × iterations", lambda c: f'{c["training"]["epochs"]}×{c["training"]["iterations_per_epoch"]}')
    if any("detection" in c for c in configs.values()):
        row("detection levels", lambda c: " ".join(str(v) for v in c["network"].get("detection_levels", [])) or "-")
        row("anchor mean best IoU", lambda c: _fmt(c["detection"]["anchors"]["mean_best_iou"]) if "detection" in c
            else "-")
        for i in range(max(len(c.get("detection", {}).get("anchors", {}).get("levels", [])) for c in configs.values())):
            row(f"anchors, level {i + 1}", lambda c, i=i: _anchor_shapes(c, i))
    width = max(len(r[0]) for r in rows)
    cols = [max(len(r[1][i]) for r in rows) for i in range(len(names))]
    lines = [f"{label:<{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(vals, cols)) for label, vals in rows]
    norm = ", ".join(f'{n["channel"]}:{n["scheme"]}' + ("(masked)" if n.get("use_nonzero_mask") else "")
                     for n in plans["normalization"])
    ds = plans["dataset"]
    head = (f'dataset {ds["name"]}  task {plans.get("task", ds["task"])}  outputs {plans["outputs"]["mode"]}×'
            f'{plans["outputs"]["num_outputs"]}  normalization {norm}')
    return "\n".join([head, *lines, "(* default configuration)"])


def _anchor_shapes(config: dict, level: int) -> str:
    """Anchor shapes (z×y×x voxels, rounded) of one detection level of a configuration, or "-"."""
    levels = config.get("detection", {}).get("anchors", {}).get("levels", [])
    if level >= len(levels):
        return "-"
    return " ".join("×".join(f"{v:.0f}" for v in shape) for shape in levels[level]["shapes"])
