"""LUNA16 FROC / CPM, COCO AP of 3D boxes, the LUNA16 CSV reader and ``volseg evaluate --candidates``."""

import csv
import json
import time

import numpy as np
import pytest

from volseg.cli.main import main
from volseg.errors import DatasetError
from volseg.evaluation.detection import (
    average_precision,
    box_iou_3d,
    evaluate_detection_csv,
    read_points_csv,
    read_scan_list,
)
from volseg.evaluation.froc import (
    LUNA16_FP_RATES,
    bootstrap_froc,
    cap_candidates,
    evaluate_froc,
    froc_curve,
    match_scan,
    sensitivity_at,
    to_points,
)

# Four scans, world (x, y, z) mm. A and B hold four nodules, C and D none (D has no candidate
# either and exists only through the scan list).
ANNOTATIONS = {
    "A": [((0, 0, 0), 10.0), ((100, 0, 0), 6.0)],  # n1 (radius 5), n2 (radius 3)
    "B": [((0, 50, 0), 8.0), ((0, -80, 0), 5.0)],  # n3 (radius 4), n4 (never hit)
}
CANDIDATES = {
    "A": [((0, 0, 5), 0.95),  # distance 5 = n1's radius: not a hit (strict <), a false positive
          ((1, 0, 0), 0.9),  # hits n1
          ((0, 3, 0), 0.6),  # hits n1 again: n1 keeps 0.9, this one is neither TP nor FP
          ((100, 2.9, 0), 0.3)],  # hits n2 (2.9 < 3)
    "B": [((0, 50, 3), 0.7),  # hits n3
          ((200, 0, 0), 0.7),  # false positive tied with the hit on n3
          ((300, 0, 0), 0.2)],  # false positive
    "C": [((0, 0, 0), 0.7)],  # n1's position, but in another scan: a false positive
}
SCANS = ["A", "B", "C", "D"]
# Entries by score: 0.95 FP | 0.9 TP(n1) | 0.7 TP(n3) + FP(B) + FP(C) | 0.3 TP(n2) | 0.2 FP.
# With 4 scans and 4 nodules the operating points (FP/4, TP/4) are
#   (0, 0) (0.25, 0) (0.25, 1/4) (0.75, 2/4) (0.75, 3/4) (1.0, 3/4).
# Linear (LUNA16): at 1/8 → 0; 1/4 → 1/4; 1/2 → halfway from (0.25, 1/4) to (0.75, 2/4) = 3/8;
# 1, 2, 4, 8 → 3/4. CPM = (0 + 1/4 + 3/8 + 4 · 3/4) / 7 = 29/56.
# Step: 1/2 → 1/4 (the point at 0.25), the rest as linear. CPM = (0 + 1/4 + 1/4 + 3) / 7 = 1/2.
LINEAR = [0, 1 / 4, 3 / 8, 3 / 4, 3 / 4, 3 / 4, 3 / 4]
STEP = [0, 1 / 4, 1 / 4, 3 / 4, 3 / 4, 3 / 4, 3 / 4]


def test_hand_computed_froc_points_and_cpm():
    r = evaluate_froc(ANNOTATIONS, CANDIDATES, scans=SCANS, n_bootstrap=0)
    np.testing.assert_allclose(r.curve.fps_per_scan, [0, 0.25, 0.25, 0.75, 0.75, 1.0])
    np.testing.assert_allclose(r.curve.sensitivity, [0, 0, 0.25, 0.5, 0.75, 0.75])
    np.testing.assert_allclose(r.curve.thresholds, [np.inf, 0.95, 0.9, 0.7, 0.3, 0.2])
    np.testing.assert_allclose(r.sensitivity, LINEAR, atol=1e-12)
    assert r.cpm == pytest.approx(29 / 56, abs=1e-12)
    assert r.counts == {"scans": 4, "scans_with_nodules": 2, "nodules": 4, "nodules_hit": 3, "candidates": 8,
                        "candidates_kept": 8, "false_positives": 4, "ignored_on_excluded": 0}
    step = evaluate_froc(ANNOTATIONS, CANDIDATES, scans=SCANS, n_bootstrap=0, interpolation="step")
    np.testing.assert_allclose(step.sensitivity, STEP, atol=1e-12)
    assert step.cpm == pytest.approx(0.5, abs=1e-12)


def test_per_nodule_table():
    r = evaluate_froc(ANNOTATIONS, CANDIDATES, scans=SCANS, n_bootstrap=0)
    got = [(n.seriesuid, n.centre_mm, n.diameter_mm, n.hit, n.score) for n in r.nodules]
    assert got == [("A", (0.0, 0.0, 0.0), 10.0, True, 0.9), ("A", (100.0, 0.0, 0.0), 6.0, True, 0.3),
                   ("B", (0.0, 50.0, 0.0), 8.0, True, 0.7), ("B", (0.0, -80.0, 0.0), 5.0, False, None)]


def test_scans_without_nodules_count_in_the_number_of_scans():
    # without D (no nodule, no candidate) there are 3 scans: the FP rates grow by 4/3
    r = evaluate_froc(ANNOTATIONS, CANDIDATES, n_bootstrap=0)
    assert r.counts["scans"] == 3
    np.testing.assert_allclose(r.curve.fps_per_scan, [0, 1 / 3, 1 / 3, 1, 1, 4 / 3])
    # and dropping C also drops its false positive
    r = evaluate_froc(ANNOTATIONS, CANDIDATES, scans=["A", "B"], n_bootstrap=0)
    np.testing.assert_allclose(r.curve.fps_per_scan, [0, 0.5, 0.5, 1.0, 1.0, 1.5])


def test_excluded_findings_are_ignored_not_counted():
    nodules = [((0, 0, 0), 10.0)]
    excluded = [((30, 0, 0), -1.0),  # no size: taken as 10 mm
                ((0, 0, 0), 20.0)]  # overlaps the nodule
    cands = [((1, 0, 0), 0.8),  # hits the nodule (and an excluded finding): a hit
             ((32, 0, 0), 0.9),  # on the unsized finding only: ignored
             ((36, 0, 0), 0.6),  # 6 mm from it: a false positive
             ((0, 8, 0), 0.5)]  # outside the nodule, inside the 20 mm finding: ignored
    m = match_scan(to_points(nodules), to_points(cands), to_points(excluded))
    np.testing.assert_array_equal(m.nodule_scores, [0.8])
    np.testing.assert_array_equal(m.fp_scores, [0.6])
    assert m.n_ignored == 2
    r = evaluate_froc({"s": nodules}, {"s": cands}, {"s": excluded}, n_bootstrap=0)
    assert r.counts["nodules"] == 1 and r.counts["ignored_on_excluded"] == 2 and r.counts["false_positives"] == 1
    assert r.cpm == 1.0
    without = evaluate_froc({"s": nodules}, {"s": cands}, n_bootstrap=0)
    assert without.counts["false_positives"] == 3
    np.testing.assert_allclose(without.curve.fps_per_scan, [0, 1, 1, 2, 3])  # 0.9 FP, 0.8 hit, 0.6 and 0.5 FPs


def test_one_candidate_hits_two_nodules_and_two_candidates_one_nodule():
    nodules = to_points([((0, 0, 0), 10.0), ((6, 0, 0), 10.0)])
    m = match_scan(nodules, to_points([((3, 0, 0), 0.7), ((-2, 0, 0), 0.9), ((-1, 0, 0), 0.4)]))
    np.testing.assert_array_equal(m.nodule_scores, [0.9, 0.7])  # each nodule keeps its best hit
    assert m.fp_scores.size == 0 and m.n_ignored == 0
    r = evaluate_froc({"s": nodules}, {"s": [((3, 0, 0), 0.7)]}, n_bootstrap=0)
    assert r.counts["nodules_hit"] == 2 and r.counts["false_positives"] == 0 and r.cpm == 1.0


def test_cap_keeps_the_100_most_probable_and_drops_ties_across_the_cut():
    rng = np.random.default_rng(1)
    fps = [((500 + i, 0, 0), p) for i, p in enumerate(rng.uniform(0.5, 1.0, 100))]
    nodule = {"s": [((0, 0, 0), 10.0)]}
    missed = evaluate_froc(nodule, {"s": fps + [((0, 0, 0), 0.1)]}, n_bootstrap=0)  # the hit is the 101st
    assert missed.counts["candidates"] == 101 and missed.counts["candidates_kept"] == 100
    assert missed.nodules[0].hit is False and missed.cpm == 0.0
    found = evaluate_froc(nodule, {"s": fps + [((0, 0, 0), 0.1)]}, max_candidates=101, n_bootstrap=0)
    assert found.nodules[0].hit is True
    tied = to_points([((i, 0, 0), 0.9) for i in range(99)] + [((0, 0, 0), 0.5), ((1, 1, 1), 0.5)])
    kept = cap_candidates(tied, 100)
    assert len(kept) == 99 and (kept[:, 3] == 0.9).all()
    assert len(cap_candidates(tied[::-1], 100)) == 99  # the order of the rows does not matter
    assert cap_candidates(tied, 101) is tied


def test_perfect_detector_scores_one_and_no_candidates_score_zero():
    annotations = {f"s{i}": [((10.0 * i, 0, 0), 8.0), ((10.0 * i, 40, 0), 4.0)] for i in range(5)}
    perfect = {uid: [(c, 1.0) for c, _ in nodules] for uid, nodules in annotations.items()}
    r = evaluate_froc(annotations, perfect, scans=[*annotations, "empty"], n_bootstrap=50)
    assert r.cpm == 1.0 and list(r.sensitivity) == [1.0] * 7 and r.cpm_ci == (1.0, 1.0)
    late_fps = {uid: v + [((999, 999, 999), 0.01)] * 20 for uid, v in perfect.items()}  # 20 FP/scan, scored lower
    assert evaluate_froc(annotations, late_fps, n_bootstrap=0).cpm == 1.0
    none = evaluate_froc(annotations, {}, n_bootstrap=50)
    assert none.cpm == 0.0 and none.counts["nodules_hit"] == 0 and none.cpm_ci == (0.0, 0.0)
    assert all(n.score is None for n in none.nodules)


def test_no_nodules_gives_undefined_sensitivity(caplog):
    r = evaluate_froc({}, {"s": [((0, 0, 0), 0.5)]}, n_bootstrap=10)
    assert np.isnan(r.cpm) and np.isnan(r.cpm_ci).all() and r.counts["false_positives"] == 1
    assert "no nodules" in caplog.text


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="no scans"):
        evaluate_froc({}, {})
    with pytest.raises(ValueError, match="expected rows of x, y, z"):
        to_points([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="not finite"):
        to_points([((0, 0, 0), float("nan"))])
    with pytest.raises(ValueError, match="interpolation"):
        evaluate_froc(ANNOTATIONS, CANDIDATES, interpolation="cubic")
    with pytest.raises(ValueError, match="max_candidates"):
        evaluate_froc(ANNOTATIONS, CANDIDATES, max_candidates=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_froc([match_scan(np.empty((0, 4)), np.empty((0, 4)))], confidence=1.5)


def _random_study(seed, n_scans=100, n_candidates=100):
    """Scans with 0-3 nodules; candidates near nodules score higher than the random ones on average."""
    rng = np.random.default_rng(seed)
    annotations, candidates = {}, {}
    for i in range(n_scans):
        uid = f"scan{i:03d}"
        centres = rng.uniform(-150, 150, (rng.integers(0, 4), 3))
        diam = rng.uniform(3, 30, len(centres))
        annotations[uid] = [(tuple(c), d) for c, d in zip(centres, diam)]
        pts = rng.uniform(-150, 150, (n_candidates, 3))
        probs = rng.uniform(0, 0.8, n_candidates)
        for j, (c, d) in enumerate(zip(centres, diam)):
            if rng.random() < 0.8:
                pts[j] = c + rng.normal(0, d / 6, 3)
                probs[j] = rng.uniform(0.3, 1.0)
        probs = np.round(probs, 2)  # ties between scans and within scans
        candidates[uid] = [(tuple(p), float(s)) for p, s in zip(pts, probs)]
    return annotations, candidates


def _luna16_reference(annotations, excluded, candidates, scans, rates):
    """Straight loops after LUNA16's evaluation script, sklearn for the ROC: an independent oracle."""
    from sklearn.metrics import roc_curve

    labels, probs, n_nodules = [], [], 0
    for uid in scans:
        cands = [(*c, p) for c, p in candidates.get(uid, [])]
        if len(cands) > 100:
            cut = sorted((c[3] for c in cands), reverse=True)[100]
            cands = [c for c in cands if c[3] > cut]
        left = set(range(len(cands)))
        findings = [((*c, d), True) for c, d in annotations.get(uid, [])]
        findings += [((*c, d), False) for c, d in excluded.get(uid, [])]
        for f, included in findings:
            r2 = ((f[3] if f[3] >= 0 else 10.0) / 2) ** 2
            hits = [i for i, c in enumerate(cands) if sum((c[k] - f[k]) ** 2 for k in range(3)) < r2]
            left -= set(hits)
            if included:
                n_nodules += 1
                if hits:
                    labels.append(1)
                    probs.append(max(cands[i][3] for i in hits))
        labels += [0] * len(left)
        probs += [cands[i][3] for i in left]
    fpr, tpr, _ = roc_curve(labels, probs)
    n_tp = sum(labels)
    return np.interp(rates, fpr * (len(labels) - n_tp) / len(scans), tpr * n_tp / n_nodules)


def test_matches_the_luna16_procedure_on_random_scans():
    annotations, candidates = _random_study(3, n_scans=40, n_candidates=110)  # 110 > the cap
    excluded = {uid: [(tuple(np.asarray(c[0][0]) + 2), -1.0)] for uid, c in list(candidates.items())[::3]}
    scans = [*annotations, "extra"]
    r = evaluate_froc(annotations, candidates, excluded, scans, n_bootstrap=0)
    expected = _luna16_reference(annotations, excluded, candidates, scans, LUNA16_FP_RATES)
    np.testing.assert_allclose(r.sensitivity, expected, atol=1e-12)
    assert r.counts["ignored_on_excluded"] > 0 and r.counts["candidates_kept"] < r.counts["candidates"]
    assert 0.05 < r.sensitivity[0] < r.sensitivity[-1] < 1


def test_linear_reading_is_np_interp_and_step_never_exceeds_it():
    annotations, candidates = _random_study(4, n_scans=10, n_candidates=30)
    curve = evaluate_froc(annotations, candidates, n_bootstrap=0).curve
    rates = np.linspace(0, 40, 333)
    linear = sensitivity_at(curve, rates)
    np.testing.assert_allclose(linear, np.interp(rates, curve.fps_per_scan, curve.sensitivity), atol=1e-12)
    step = sensitivity_at(curve, rates, "step")
    assert (step <= linear + 1e-12).all() and (step < linear - 1e-6).any()


def test_bootstrap_interval_contains_the_estimate_is_deterministic_and_fast():
    annotations, candidates = _random_study(0)
    r = evaluate_froc(annotations, candidates, n_bootstrap=0)
    matches = [match_scan(to_points(annotations[u]), cap_candidates(to_points(candidates[u])))
               for u in annotations]
    np.testing.assert_allclose(froc_curve(matches).sensitivity, r.curve.sensitivity)
    start = time.perf_counter()
    cpm_ci, sens_ci = bootstrap_froc(matches, n_resamples=1000, seed=7)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5, f"bootstrap of 100 scans × 100 candidates took {elapsed:.2f} s"
    assert cpm_ci[0] < r.cpm < cpm_ci[1] and cpm_ci[1] - cpm_ci[0] < 0.2
    assert ((sens_ci[:, 0] <= r.sensitivity) & (r.sensitivity <= sens_ci[:, 1])).all()
    again = bootstrap_froc(matches, n_resamples=1000, seed=7)
    assert again[0] == cpm_ci and np.array_equal(again[1], sens_ci)
    assert bootstrap_froc(matches, n_resamples=1000, seed=8)[0] != cpm_ci


def test_box_iou_and_average_precision_at_iou_0_1():
    cube = [0, 0, 0, 10, 10, 10]
    np.testing.assert_allclose(box_iou_3d([cube], [[0, 0, 0, 10, 10, 1], [5, 0, 0, 15, 10, 10], [20] * 3 + [30] * 3]),
                               [[0.1, 500 / 1500, 0.0]])
    # two references; detections 0.9 (hit), 0.8 (miss), 0.7 (hit): recalls 1/2, 1/2, 1, precisions 1, 1/2, 2/3
    # → envelope 1, 2/3, 2/3; recall points 0..0.50 (51) read 1, 0.51..1 (50) read 2/3
    gt = {"a": [cube, [50, 50, 50, 60, 60, 60]]}
    det = {"a": [cube, [100] * 3 + [110] * 3, [50, 50, 50, 60, 60, 61]]}
    assert average_precision(det, {"a": [0.9, 0.8, 0.7]}, gt) == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert average_precision(det, {"a": [0.9, 0.1, 0.7]}, gt) == pytest.approx(1.0)  # the miss ranked last
    # IoU exactly 0.1 matches, just below does not
    assert average_precision({"a": [[0, 0, 0, 10, 10, 1]]}, {"a": [1.0]}, {"a": [cube]}) == 1.0
    assert average_precision({"a": [[0, 0, 0, 10, 10, 0.99]]}, {"a": [1.0]}, {"a": [cube]}) == 0.0
    assert average_precision({"a": [[0, 0, 0, 10, 10, 0.99]]}, {"a": [1.0]}, {"a": [cube]}, iou_threshold=0.05) == 1.0
    # a second detection of the same box is a false positive; detections in an image without boxes count
    assert average_precision({"a": [cube, cube]}, {"a": [0.9, 0.95]}, {"a": [cube]}) == 1.0
    assert average_precision({"a": [cube], "b": [cube]}, {"a": [0.5], "b": [0.9]}, {"a": [cube]}) == pytest.approx(0.5)
    assert average_precision({}, {}, {"a": [cube]}) == 0.0
    assert np.isnan(average_precision({"a": [cube]}, {"a": [1.0]}, {}))
    assert average_precision({"a": [cube, cube]}, {"a": [0.1, 0.9]}, {"a": [cube, cube]}, max_detections=1) == \
        pytest.approx(51 / 101)
    with pytest.raises(ValueError, match="z0 <= z1"):
        box_iou_3d([[0, 0, 0, -1, 1, 1]], [cube])
    with pytest.raises(ValueError, match="2 detected boxes but 1 scores"):
        average_precision({"a": [cube, cube]}, {"a": [1.0]}, {"a": [cube]})


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _write_study(root, excluded=True):
    cand = _write_csv(root / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "probability"],
                      [(uid, *c, p) for uid, rows in CANDIDATES.items() for c, p in rows])
    ann = _write_csv(root / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
                     [(uid, *c, d) for uid, rows in ANNOTATIONS.items() for c, d in rows])
    exc = _write_csv(root / "annotations_excluded.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
                     [("C", 0, 0, 1, -1)] if excluded else [])  # covers C's false positive
    (root / "scans.txt").write_text("A\nB\n\nC\nD\n")
    return cand, ann, exc


def test_csv_reader_and_scan_list(tmp_path):
    cand, ann, _ = _write_study(tmp_path)
    points = read_points_csv(cand, "probability")
    assert list(points) == ["A", "B", "C"] and points["A"].shape == (4, 4)
    np.testing.assert_array_equal(points["A"][3], [100, 2.9, 0, 0.3])
    assert read_scan_list(tmp_path / "scans.txt") == SCANS
    (tmp_path / "seriesuids.csv").write_text("seriesuid\nX,1\nY\nX\n")
    assert read_scan_list(tmp_path / "seriesuids.csv") == ["X", "Y"]
    images = tmp_path / "images"
    for name in ("a.mhd", "a.raw", "b.nii.gz", "sub/c.mhd", "d.nrrd", "notes.txt"):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_text("")
    assert read_scan_list(images) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("text, message", [
    ("seriesuid,coordX,coordY,coordZ\nA,1,2,3\n", "line 1: missing column(s) probability"),
    ("seriesuid,coordX,coordY,coordZ,probability\nA,1,2,3,0.5\nA,1,x,3,0.5\n", "line 3: coordY is not a finite number: 'x'"),
    ("seriesuid,coordX,coordY,coordZ,probability\nA,1,2,3,nan\n", "line 2: probability is not a finite number"),
    ("seriesuid,coordX,coordY,coordZ,probability\nA,1,2\n", "line 2: 3 value(s), expected 5"),
    ("seriesuid,coordX,coordY,coordZ,probability\n,1,2,3,0.5\n", "line 2: empty seriesuid"),
    ("", "missing column(s) seriesuid, coordX"),
])
def test_csv_reader_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "candidates.csv"
    path.write_text(text)
    with pytest.raises(DatasetError) as e:
        read_points_csv(path, "probability")
    assert str(e.value).startswith(str(path)) and message in str(e.value) and "\n" not in str(e.value)


def test_missing_files_are_dataset_errors(tmp_path):
    cand, ann, _ = _write_study(tmp_path)
    with pytest.raises(DatasetError, match="nope.csv: file not found"):
        evaluate_detection_csv(cand, tmp_path / "nope.csv", tmp_path / "out")
    with pytest.raises(DatasetError, match="scan list not found"):
        evaluate_detection_csv(cand, ann, tmp_path / "out", scans=tmp_path / "missing.txt")
    assert not (tmp_path / "out").exists()


def test_cli_detection_end_to_end(tmp_path, capsys):
    cand, ann, exc = _write_study(tmp_path)
    out = tmp_path / "out"
    rc = main(["evaluate", "--candidates", str(cand), "--annotations", str(ann), "--excluded", str(exc),
               "--scans", str(tmp_path / "scans.txt"), "--bootstrap", "200", "-o", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    # C's false positive lies on an excluded finding: the operating points become
    # (0,0) (0.25,0) (0.25,1/4) (0.5,2/4) (0.5,3/4) (0.75,3/4); at 1/2 → 3/4, CPM = (0 + 1/4 + 5 · 3/4) / 7 = 4/7
    assert summary["cpm"] == pytest.approx(4 / 7, abs=1e-12)
    assert summary["sensitivity"] == pytest.approx({"0.125": 0, "0.25": 0.25, "0.5": 0.75, "1": 0.75, "2": 0.75,
                                                    "4": 0.75, "8": 0.75})
    assert summary["counts"]["ignored_on_excluded"] == 1 and summary["counts"]["scans"] == 4
    lo, hi = summary["cpm_ci"]
    assert lo <= summary["cpm"] <= hi
    assert summary["froc"]["thresholds"][0] is None  # +inf, the (0, 0) point
    assert summary["settings"]["scans"] == str(tmp_path / "scans.txt")
    rows = list(csv.DictReader((out / "nodules.csv").open()))
    assert [(r["seriesuid"], r["hit"], r["probability"]) for r in rows] == [
        ("A", "1", "0.9"), ("A", "1", "0.3"), ("B", "1", "0.7"), ("B", "0", "")]
    assert (out / "froc.png").stat().st_size > 1000
    assert not list(out.glob(".*tmp*"))
    printed = capsys.readouterr().out
    assert "CPM 0.571 (95% CI" in printed and "0.125" in printed and "summary.json" in printed


def test_cli_detection_without_excluded_matches_the_hand_computed_cpm(tmp_path, capsys):
    cand, ann, _ = _write_study(tmp_path)
    rc = main(["evaluate", "--candidates", str(cand), "--annotations", str(ann), "--scans", str(tmp_path / "scans.txt"),
               "--bootstrap", "0", "--interpolation", "step", "--no-plots", "-o", str(tmp_path / "out")])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cpm"] == pytest.approx(0.5) and summary["cpm_ci"] == [None, None]
    assert not (tmp_path / "out" / "froc.png").exists()
    assert "CPM 0.500  ·" in capsys.readouterr().out


def test_cli_mode_errors_are_one_line(tmp_path, capsys):
    cand, ann, _ = _write_study(tmp_path)
    (tmp_path / "bad.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\nA,1,2,3,high\n")
    out = ["-o", str(tmp_path / "out")]
    assert main(["evaluate", *out]) == 2  # neither --pred nor --candidates
    assert main(["evaluate", "--candidates", str(cand), *out]) == 2  # no --annotations
    assert main(["evaluate", "--candidates", str(cand), "--annotations", str(ann), "--pred", str(tmp_path), *out]) == 2
    assert main(["evaluate", "--candidates", str(tmp_path / "bad.csv"), "--annotations", str(ann), *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("volseg evaluate: error:") for line in err)
    assert "--pred DIR (segmentation) or --candidates" in err[0]
    assert "bad.csv: line 2: probability is not a finite number: 'high'" in err[3]
