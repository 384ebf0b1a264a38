"""``volseg calibrate``: a threshold with a finite-sample guarantee, written to ``calibration.json``.

Input: out-of-fold predictions (every ``MODEL/fold_K/validation/`` folder with its
``reference/``), or any prediction folder with probabilities and a reference folder.
Steps: losses of every case on the threshold grid (:mod:`volseg.conformal.cases`), then per
group (all cases; reference-lesion size bins with ``by="size"``; classes with
``by="class"``) conformal risk control (:func:`volseg.conformal.crc.crc_calibrate`,
``E[risk] <= alpha``) or Learn-then-Test (:func:`volseg.conformal.ltt.ltt_calibrate`,
``P(risk <= alpha) >= 1 - delta``, chosen by giving ``delta``).

``calibration.json`` keeps everything needed to recompute λ̂: the grid, every case's loss on
it per group, the false positives per case on it, the chosen index and threshold per
group, the threshold applied at prediction (per target), and the calibration cases'
empirical risk and price (false positives per case) at that threshold and at the plain 0.5.
With size groups, the applied threshold is the lowest of the groups' (a lesion's size is not
known before it is found, and a lower threshold keeps every group's guarantee).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from volseg.conformal.mondrian import check_edges
from volseg.conformal.risks import (DEFAULT_CONNECTIVITY, DEFAULT_COVERAGE, DEFAULT_GRID, RISKS, CaseLosses, Risk,
                                    get_risk, ordered_grid)
from volseg.errors import VolsegError

log = logging.getLogger(__name__)

FORMAT = {"format": "volseg-calibration", "version": 1}
NAIVE_THRESHOLD = 0.5
WSR_SEED = 0


def group_matrices(cases: Sequence[CaseLosses]) -> dict[str, tuple[list[str], np.ndarray]]:
    """group → (case ids, (n_g, G) loss matrix) over the cases that have the group."""
    groups: dict[str, list] = {}
    for c in cases:
        for g, loss in c.losses.items():
            groups.setdefault(g, []).append((c.case_id, loss))
    return {g: ([i for i, _ in rows], np.stack([v for _, v in rows])) for g, rows in sorted(groups.items())}


def choose_method(risk: Risk, delta: float | None, method: str | None) -> str:
    """"crc" or "ltt": LTT when ``delta`` is given or asked for; CRC needs a monotone risk."""
    method = method or ("ltt" if delta is not None else "crc")
    if method not in ("crc", "ltt"):
        raise VolsegError(None, f"--method must be crc or ltt, got {method!r}")
    if method == "ltt" and delta is None:
        raise VolsegError(None, "Learn-then-Test needs --delta (the allowed probability of exceeding alpha)")
    if method == "crc" and delta is not None:
        raise VolsegError(None, "--delta is a Learn-then-Test level: conformal risk control bounds the expected "
                          "risk and takes no delta (drop --method crc, or --delta)")
    if method == "crc" and not risk.monotone:
        raise VolsegError(None, f"risk {risk.name} is not monotone in the threshold, so conformal risk control "
                          "does not apply: give --delta for Learn-then-Test")
    return method


def fit_calibration(cases: Sequence[CaseLosses], risk: str, alpha: float, grid: np.ndarray, *,
                    delta: float | None = None, method: str | None = None, by: str | None = None,
                    pvalue: str = "hb", fwer: str = "fixed_sequence") -> dict:
    """Calibrate ``cases`` (losses on ``grid``, ordered safest first) and return the record of
    ``calibration.json`` without its sources (see the module docstring).

    Raises:
        VolsegError: Bad alpha / delta, a non-monotone risk for CRC, no case with a reference
            lesion, or no grid threshold meeting alpha (e.g. too few cases).
    """
    from volseg.conformal import NotMonotoneError, NoValidThresholdError, calibrate_groups

    r = get_risk(risk)
    if not 0.0 < alpha < 1.0:
        raise VolsegError(None, f"--alpha must be in (0, 1), got {alpha}")
    if delta is not None and not 0.0 < delta < 1.0:
        raise VolsegError(None, f"--delta must be in (0, 1), got {delta}")
    method = choose_method(r, delta, method)
    if method == "ltt" and pvalue == "wsr":  # the betting p-value depends on the order: a fixed shuffle
        order = np.random.default_rng(WSR_SEED).permutation(len(cases))
        cases = [cases[i] for i in order]
    matrices = group_matrices(cases)
    if not matrices:
        raise VolsegError(None, f"no calibration case has a reference finding, so {r.words} is undefined on all "
                          f"{len(cases)} case(s)")
    kw = {"pvalue": pvalue, "fwer": fwer} if method == "ltt" else {}
    try:
        results = calibrate_groups({g: m for g, (_, m) in matrices.items()}, method, alpha, delta, 1.0, **kw)
    except (NotMonotoneError, NoValidThresholdError) as e:
        raise VolsegError(None, str(e)) from None
    groups = {}
    for g, res in results.items():
        ids, m = matrices[g]
        groups[g] = {"n": len(ids), "index": int(res.index), "threshold": float(grid[res.index]),
                     "empirical_risk": float(m[:, res.index].mean()), "cases": ids, **_stats(res)}
    applied = applied_thresholds(groups, by, r)
    naive = int(np.argmin(np.abs(grid - NAIVE_THRESHOLD)))
    return {**FORMAT, "method": method, "risk": r.name, "risk_words": r.words, "alpha": alpha, "delta": delta,
            "pvalue": pvalue if method == "ltt" else None, "fwer": fwer if method == "ltt" else None,
            "bound": 1.0, "by": by, "n": len({i for ids, _ in matrices.values() for i in ids}),
            "n_cases": len(cases), "wsr_seed": WSR_SEED if method == "ltt" and pvalue == "wsr" else None,
            "grid": [float(t) for t in grid],
            "grid_order": "safest first: thresholds " + ("ascending" if r.ascending else "descending"),
            "groups": groups, "thresholds": applied,
            "calibration_cases": _price(cases, matrices, grid, applied, by),
            "naive": {"threshold": float(grid[naive]), **_price(cases, matrices, grid, _same(applied, grid[naive]), by)},
            "losses": {c.case_id: {g: [float(v) for v in loss] for g, loss in c.losses.items()} for c in cases},
            "fp": {c.case_id: {g: [int(v) for v in fp] for g, fp in c.fp.items()} for c in cases}}


def _stats(res) -> dict:
    d = res.to_dict()
    return {k: d[k] for k in ("adjusted", "pvalues", "valid") if k in d}


def _same(applied: dict, t: float) -> dict:
    return {k: float(t) for k in applied}


def applied_thresholds(groups: dict, by: str | None, risk: Risk) -> dict[str, float]:
    """Target → threshold applied at prediction: per class, or the safest of the size groups."""
    if by == "class":
        return {g: rec["threshold"] for g, rec in groups.items()}
    ts = [rec["threshold"] for rec in groups.values()]
    return {"all": float(min(ts) if risk.ascending else max(ts))}


def _index(grid: np.ndarray, t: float) -> int:
    return int(np.argmin(np.abs(grid - t)))


def _price(cases, matrices, grid, applied: dict, by: str | None) -> dict:
    """Empirical risk per group and false positives per case at the applied thresholds."""
    def target_of(g: str) -> str:
        return g if by == "class" else "all"

    risk = {g: float(m[:, _index(grid, applied[target_of(g)])].mean()) for g, (_, m) in matrices.items()}
    fp = [sum(v[_index(grid, applied[t])] for t, v in c.fp.items() if t in applied) for c in cases]
    return {"empirical_risk": risk, "fp_per_case": float(np.mean(fp)) if fp else 0.0}


def guarantee(cal: dict) -> str:
    """The calibration's guarantee in one sentence."""
    ts = ", ".join(f"{g} {t:.2f}" if g != "all" else f"{t:.2f}" for g, t in cal["thresholds"].items())
    finding = "nodule" if cal["risk"].startswith("box") else "lesion"
    fnr = cal["risk"].endswith("fnr")
    cases = f"a new case with at least one reference {finding}" if fnr else "a new case"
    sizes = "/".join(str(g["n"]) for g in cal["groups"].values())
    if cal["by"] is None:
        where, n = "", f"the {sizes} calibration cases"
    else:
        where, n = f", in each {cal['by']} group separately ({', '.join(cal['groups'])})", \
            f"the calibration cases of each group ({sizes})"
    if cal["method"] == "crc":
        return (f"At threshold {ts}, the expected {cal['risk_words']} on {cases} exchangeable with {n} is at most "
                f"{cal['alpha']:.3g}{where} (conformal risk control).")
    return (f"At threshold {ts}, the expected {cal['risk_words']} on {cases} like {n} is at most {cal['alpha']:.3g}"
            f"{where}, with probability at least {1 - cal['delta']:g} over the draw of the calibration cases "
            f"(Learn-then-Test, {cal['pvalue']} p-values, {cal['fwer'].replace('_', ' ')}).")


def calibrate_model(model_dir: str | Path, risk: str, alpha: float, *, delta: float | None = None,
                    by: str | None = None, method: str | None = None, predictions: str | Path | None = None,
                    references: str | Path | None = None, out: str | Path | None = None,
                    grid: Sequence[float] = DEFAULT_GRID, coverage: float = DEFAULT_COVERAGE,
                    connectivity: int = DEFAULT_CONNECTIVITY, size_edges: Sequence[float] | None = None,
                    pvalue: str = "hb", fwer: str = "fixed_sequence") -> dict:
    """Calibrate a model folder's threshold and write ``calibration.json`` (default ``MODEL/calibration.json``).

    Args:
        model_dir: The model folder (its plan names the task and the outputs).
        risk: One of :data:`volseg.conformal.risks.RISKS`.
        alpha: The risk level, in (0, 1).
        delta: With Learn-then-Test: the allowed probability that the risk exceeds ``alpha``.
        by: ``None``, ``"size"`` (reference-lesion volume or nodule diameter bins) or ``"class"``.
        method: ``"crc"`` or ``"ltt"`` (default: LTT when ``delta`` is given).
        predictions, references: A prediction folder and its reference folder, instead of the
            out-of-fold validation folders.
        out: Where to write the record.
        grid: Probability (score) thresholds to choose from.
        coverage: Fraction of a reference lesion that the set must cover to find it.
        connectivity: Connectivity of lesions (6, 18, 26).
        size_edges: Bin edges for ``by="size"`` (mm³ for lesions, mm for nodules; default terciles).
        pvalue, fwer: Learn-then-Test p-values ("hb", "wsr") and multiple testing
            ("fixed_sequence", "bonferroni").

    Returns:
        The record written.
    """
    from volseg.conformal.cases import box_case_losses, dense_case_losses
    from volseg.io.atomic import write_json
    from volseg.planning.plans import load_plans
    from volseg.tasks import make_task

    model_dir = Path(model_dir)
    plans = load_plans(model_dir / "plans.json")
    task = make_task(plans)
    r = get_risk(risk)
    if by not in (None, "size", "class"):
        raise VolsegError(None, f"--by must be size or class, got {by!r}")
    if r.kind != task.conformal_kind:
        raise VolsegError(None, f"risk {r.name} needs a {r.kind} model; {model_dir} is a {plans.get('task')} "
                          f"model ({task.conformal_kind}): choose one of "
                          f"{', '.join(k for k, v in RISKS.items() if v.kind == task.conformal_kind)}")
    if by == "size" and r.name == "lesion_fdr":
        raise VolsegError(None, "--by size groups reference lesions by size; false discoveries have none")
    if size_edges is not None:
        if by != "size":
            raise VolsegError(None, "--size-edges needs --by size")
        try:
            size_edges = [float(e) for e in check_edges(size_edges)]
        except ValueError as e:
            raise VolsegError(None, f"--size-edges: {e}") from None
    pairs = _pairs(model_dir, predictions, references)
    g = ordered_grid(r, grid)
    if r.kind == "boxes":
        if by == "class":
            raise VolsegError(None, "--by class is not available for box risks (candidates carry no class)")
        cases, edges = box_case_losses(pairs, g, by, size_edges)
    else:
        ending = plans["dataset"].get("file_ending", ".nii.gz")
        cases, edges = dense_case_losses(pairs, task, ending, r, g, by, size_edges, coverage, connectivity)
    if by == "class":  # every class needs calibration cases, or predict would have no threshold for it
        seen = {t for c in cases for t in c.losses}
        unseen = sorted({t for c in cases for t in c.fp} - seen)
        if unseen:
            raise VolsegError(None, f"no calibration case has a reference lesion of {', '.join(unseen)}: "
                              "calibrate without --by class, or with cases that have one")
    cal = fit_calibration(cases, r.name, alpha, g, delta=delta, method=method, by=by, pvalue=pvalue, fwer=fwer)
    cal.update(size_edges=edges, coverage=coverage if r.kind == "dense" else None,
               connectivity=connectivity if r.kind == "dense" else None, task=plans.get("task", "segmentation"),
               sources=[{"predictions": str(p), "references": str(q), **prediction_settings(p)} for p, q in pairs])
    cal["guarantee"] = guarantee(cal)
    target = Path(out) if out else model_dir / "calibration.json"
    write_json(target, cal)
    log.info("%s → %s", cal["guarantee"], target)
    return cal


def assess_calibration(model_dir: str | Path, cal: dict, predictions: str | Path, references: str | Path) -> dict:
    """The risk and price of a calibration on other cases (e.g. a labelled test set).

    Args:
        model_dir: The model folder the record was made for.
        cal: The record (:func:`calibrate_model` or :func:`load_calibration`).
        predictions, references: Predictions with probabilities (or ``candidates.csv``) and
            their references, as for :func:`calibrate_model`.

    Returns:
        ``{"n", "empirical_risk": group → mean loss at the applied threshold, "fp_per_case",
        "naive": the same at 0.5}``; n counts the cases with a reference finding.
    """
    from volseg.conformal.cases import box_case_losses, dense_case_losses
    from volseg.planning.plans import load_plans
    from volseg.tasks import make_task

    plans = load_plans(Path(model_dir) / "plans.json")
    r, g = get_risk(cal["risk"]), np.asarray(cal["grid"], np.float64)
    pairs = _pairs(Path(model_dir), predictions, references)
    if r.kind == "boxes":
        cases, _ = box_case_losses(pairs, g, cal["by"], cal.get("size_edges"))
    else:
        cases, _ = dense_case_losses(pairs, make_task(plans), plans["dataset"].get("file_ending", ".nii.gz"), r, g,
                                     cal["by"], cal.get("size_edges"), cal.get("coverage") or DEFAULT_COVERAGE,
                                     cal.get("connectivity") or DEFAULT_CONNECTIVITY)
    matrices = group_matrices(cases)
    naive = float(g[int(np.argmin(np.abs(g - NAIVE_THRESHOLD)))])
    return {"n": len(cases), **_price(cases, matrices, g, cal["thresholds"], cal["by"]),
            "naive": {"threshold": naive, **_price(cases, matrices, g, _same(cal["thresholds"], naive), cal["by"])}}


def prediction_settings(pred_dir: Path) -> dict:
    """Folds and mirroring that made a prediction folder (its ``summary.json``), when known."""
    import json

    try:
        s = json.loads((Path(pred_dir) / "summary.json").read_text(encoding="utf-8"))
        return {"folds": [str(f) for f in s["folds"]], "tta": bool(s["tta"]), "configuration": s["configuration"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def settings_warning(cal: dict, folds: Sequence[str], tta: bool, configuration: str) -> str | None:
    """A warning when new cases are predicted otherwise than the calibration cases were (e.g. by an
    ensemble of folds where each calibration case had one fold): exchangeability then fails, and
    the guarantee may not hold in either direction."""
    seen = [s for s in cal.get("sources", []) if "folds" in s]
    if not seen:
        return None
    same_folds = all(len(s["folds"]) == len(folds) for s in seen)
    if same_folds and all(s["tta"] == tta and s["configuration"] == configuration for s in seen):
        return None
    made = "; ".join(f"{'+'.join(s['folds'])} ({s['configuration']}, tta {'on' if s['tta'] else 'off'})" for s in seen)
    return (f"calibrated on predictions by fold(s) {made}, but predicting with fold(s) {'+'.join(folds)} "
            f"({configuration}, tta {'on' if tta else 'off'}): the guarantee assumes the same prediction settings; "
            "calibrate on predictions made like these (--predictions with --references) to keep it")


def _pairs(model_dir: Path, predictions, references) -> list[tuple[Path, Path]]:
    """(prediction folder, reference folder) pairs: the given ones, or every validated fold's."""
    if (predictions is None) != (references is None):
        raise VolsegError(None, "give both --predictions and --references, or neither (out-of-fold predictions)")
    if predictions is not None:
        if not Path(predictions).is_dir():
            raise VolsegError(predictions, "folder not found")
        if not Path(references).exists():
            raise VolsegError(references, "not found (a folder of references, or an annotations CSV for boxes)")
        return [(Path(predictions), Path(references))]
    pairs = [(p, p / "reference") for p in sorted(model_dir.glob("fold_*/validation")) if (p / "reference").is_dir()]
    if not pairs:
        raise VolsegError(model_dir, "no fold_K/validation/ with references: train a fold with validation, or give "
                          "--predictions and --references")
    return pairs


def load_calibration(path: str | Path, task: str | None = None) -> dict:
    """Read a ``calibration.json`` for ``predict --calibrated`` (one-line errors naming the file).

    Args:
        path: The record (``MODEL/calibration.json`` by default at prediction).
        task: The model's task; a record calibrated for another task is refused.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise VolsegError(path, "no calibration found: run volseg calibrate MODEL --risk RISK --alpha A first")
    try:
        cal = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VolsegError(path, f"cannot read as JSON: {e}") from None
    if not isinstance(cal, dict) or cal.get("format") != FORMAT["format"]:
        raise VolsegError(path, "not a volseg calibration record")
    ts = cal.get("thresholds")
    if not isinstance(ts, dict) or not ts or not all(isinstance(v, (int, float)) and np.isfinite(v)
                                                     for v in ts.values()):
        raise VolsegError(path, "the record has no finite thresholds")
    if task is not None and cal.get("task", task) != task:
        raise VolsegError(path, f"calibrated for a {cal.get('task')} model, but the model is a {task} model")
    return cal


def summary_record(cal: dict, path: str | Path) -> dict:
    """What ``predict --calibrated`` states in ``summary.json``: the guarantee and its terms."""
    keys = ("method", "risk", "alpha", "delta", "n", "by", "thresholds", "guarantee")
    return {"file": str(path), **{k: cal.get(k) for k in keys}}
