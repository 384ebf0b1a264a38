import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from volseg.cli.main import main
from volseg.errors import DatasetError
from volseg.fingerprint.case import load_case
from volseg.io.dataset import load_dataset, read_ignore, read_instances
from volseg.io.luna16 import COLUMNS, assign_case_ids, import_luna16, read_annotations
from volseg.io.nifti import Geometry, geometry_of, read_image
from volseg.io.world import draw_spheres, voxel_to_world

UID_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"  # rotated + flipped, .mhd
UID_B = "1.3.6.1.4.1.14519.5.2.1.6279.6001.108197895896446896160048741492"  # identity direction, .mhd
UID_C = "1.3.6.1.4.1.14519.5.2.1.6279.6001.111172165674661221381920536987"  # negative, .nii.gz
SHAPE = (16, 36, 40)  # z, y, x


def _direction(deg: float, flip_x: bool) -> tuple[float, ...]:
    a = np.deg2rad(deg)
    d = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    d = d @ np.diag([-1.0 if flip_x else 1.0, 1.0, 1.0])
    b = np.deg2rad(7.0)  # and a tilt about x, so no voxel axis stays aligned with the world
    return tuple((np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]]) @ d).ravel())


def _scan(path, spacing_xyz, origin, direction, seed) -> sitk.Image:
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.integers(-1000, 400, SHAPE).astype(np.int16))
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return img


def _world(img: sitk.Image, zyx) -> list[float]:
    return list(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))


def _write_csv(path, rows, header=COLUMNS):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def luna(tmp_path):
    """Three scans in LUNA16's subset folders, two nodules + one excluded finding on A, one on B."""
    images = tmp_path / "luna16"
    a = _scan(images / "subset0" / f"{UID_A}.mhd", (0.7, 0.8, 2.5), (-150.2, 20.5, -310.0), _direction(25, True), 0)
    b = _scan(images / "subset1" / f"{UID_B}.mhd", (0.9, 0.9, 1.25), (10.0, -5.0, 40.0), _direction(0, False), 1)
    _scan(images / "subset1" / f"{UID_C}.nii.gz", (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), _direction(-10, False), 2)
    ann = _write_csv(tmp_path / "annotations.csv", [
        [UID_A, *_world(a, (7.3, 17.6, 12.2)), 7.0],
        [UID_B, *_world(b, (8.0, 18.0, 20.0)), 9.5],
        [UID_A, *_world(a, (9.0, 20.4, 29.5)), 5.5],
    ])
    exc = _write_csv(tmp_path / "annotations_excluded.csv", [
        [UID_A, *_world(a, (4.0, 6.0, 8.0)), -1],            # unknown size: 10 mm
        [UID_B, *_world(b, (8.0, 18.0, 20.0)), 2.0],          # inside B's nodule: nothing left to ignore
    ])
    return {"images": images, "ann": ann, "exc": exc, "sitk": {UID_A: a, UID_B: b}, "root": tmp_path}


@pytest.fixture
def imported(luna):
    out = import_luna16(luna["ann"], luna["images"], luna["root"] / "out", excluded=luna["exc"], progress=False)
    return luna, out


def test_layout_loads_as_a_detection_dataset(imported):
    luna, out = imported
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["task"] == "detection" and meta["instance_labels"] is True
    assert meta["channel_names"] == {"0": "CT"} and meta["labels"] == {"background": 0, "nodule": 1}
    ds = load_dataset(out)
    assert [c.case_id for c in ds.cases] == sorted([UID_A, UID_B, UID_C]) and meta["numTraining"] == 3
    for case in ds.cases:
        images, label, geometry, instances = load_case(case, ds)
        assert images.shape == (1, *SHAPE) and label.shape == SHAPE
    assert read_instances(out / "labelsTr" / f"{UID_C}.json") == {}  # the negative scan is there, empty
    assert not (read_image(out / "labelsTr" / f"{UID_C}.nii.gz")[0] > 0).any()
    assert {r["case_id"]: r["image"] for r in _rows(out / "case_ids.csv")} == {
        UID_A: f"subset0/{UID_A}.mhd", UID_B: f"subset1/{UID_B}.mhd", UID_C: f"subset1/{UID_C}.nii.gz"}


def test_images_keep_voxels_and_geometry(imported):
    luna, out = imported
    for uid, img in luna["sitk"].items():
        array, geom = read_image(out / "imagesTr" / f"{uid}_0000.nii.gz")
        assert array.dtype == np.int16 and np.array_equal(array, sitk.GetArrayFromImage(img))
        assert geometry_of(img).matches(geom, rtol=1e-6, atol=1e-5) is None


def test_spheres_are_centred_on_the_world_centres(imported):
    luna, out = imported
    for row in _rows(out / "annotations.csv"):
        centre = np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")])
        label_img = sitk.ReadImage(str(out / "labelsTr" / f"{row['seriesuid']}.nii.gz"))
        idx = label_img.TransformPhysicalPointToIndex(tuple(centre))  # SimpleITK's own nearest voxel
        assert label_img[idx] == int(row["instance"])
        label, geom = read_image(out / "labelsTr" / f"{row['seriesuid']}.nii.gz")
        voxels = np.argwhere(label == int(row["instance"]))
        centroid = voxel_to_world(voxels.mean(0), geom)
        assert np.linalg.norm(centroid - centre) < 0.5 * min(geom.spacing)


def test_sphere_radius_is_in_mm_in_world_space(imported):
    """Brute force through SimpleITK: exactly the voxels within the radius, in physical space."""
    luna, out = imported
    for row in _rows(out / "annotations.csv"):
        img = luna["sitk"][row["source_seriesuid"]]
        centre = np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")])
        r = float(row["diameter_mm"]) / 2
        label, geom = read_image(out / "labelsTr" / f"{row['seriesuid']}.nii.gz")
        mine = label == int(row["instance"])
        near = np.argwhere(np.ones(SHAPE, bool))
        near = near[np.abs(near - np.argwhere(mine).mean(0)).max(1) <= r / min(geom.spacing) + 2]
        dist = np.array([np.linalg.norm(np.subtract(img.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]),
                                                    centre)) for p in near])
        expected = np.zeros(SHAPE, bool)
        expected[tuple(near[dist <= r].T)] = True
        assert np.array_equal(mine, expected)
        assert mine.sum() * np.prod(geom.spacing) == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.15)


def test_excluded_findings_become_ignore_ids(imported):
    luna, out = imported
    assert read_instances(out / "labelsTr" / f"{UID_A}.json") == {1: 0, 2: 0}
    assert read_ignore(out / "labelsTr" / f"{UID_A}.json") == [3]
    assert read_ignore(out / "labelsTr" / f"{UID_B}.json") == []  # fully inside the nodule
    label, geom = read_image(out / "labelsTr" / f"{UID_A}.nii.gz")
    assert label[4, 6, 8] == 3
    volume = (label == 3).sum() * np.prod(geom.spacing)  # unknown diameter → 10 mm (part may lie outside)
    assert 0.3 * 4 / 3 * np.pi * 5 ** 3 < volume <= 1.05 * 4 / 3 * np.pi * 5 ** 3
    excluded = _rows(out / "annotations_excluded.csv")
    assert [(r["seriesuid"], r["instance"], r["diameter_mm"]) for r in excluded] == [(UID_A, "3", "-1"), (UID_B, "", "2.0")]
    assert [r["instance"] for r in _rows(out / "annotations.csv")] == ["1", "1", "2"]


def test_inputs_are_not_modified(luna):
    files = sorted(p for p in luna["root"].rglob("*") if p.is_file())
    before = {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in files}
    import_luna16(luna["ann"], luna["images"], luna["root"] / "out", excluded=luna["exc"], progress=False)
    assert {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in files} == before


def test_workers_give_the_same_dataset(imported):
    luna, out = imported
    out2 = import_luna16(luna["ann"], luna["images"], luna["root"] / "out2", excluded=luna["exc"], num_workers=2,
                         progress=False)
    for p in sorted((out / "labelsTr").glob("*.nii.gz")):
        assert np.array_equal(read_image(p)[0], read_image(out2 / "labelsTr" / p.name)[0]), p.name
    for p in sorted((out / "labelsTr").glob("*.json")):
        assert p.read_text() == (out2 / "labelsTr" / p.name).read_text(), p.name
    assert (out / "annotations_excluded.csv").read_text() == (out2 / "annotations_excluded.csv").read_text()


def test_reimport_replaces_the_previous_cases(imported):
    luna, out = imported
    first = {p.name: read_image(p)[0] for p in (out / "labelsTr").glob("*.nii.gz")}
    shutil.rmtree(luna["images"] / "subset1")  # the re-import drops B and C
    _write_csv(luna["ann"], [r for r in csv.reader(open(luna["ann"]))][1:2])
    import_luna16(luna["ann"], luna["images"], out, progress=False)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{UID_A}.json", f"{UID_A}.nii.gz"]
    assert not (out / "annotations_excluded.csv").exists()
    assert np.array_equal(read_image(out / "labelsTr" / f"{UID_A}.nii.gz")[0], np.where(first[f"{UID_A}.nii.gz"] == 1, 1, 0))
    load_dataset(out)


def test_case_ids():
    assert assign_case_ids(["b.1", "a.2"]) == {"a.2": "a.2", "b.1": "b.1"}
    assert assign_case_ids(["b.1", "a 2"]) == {"a 2": "case_0000", "b.1": "case_0001"}
    assert assign_case_ids(["b.1", "a.2"], "index") == {"a.2": "case_0000", "b.1": "case_0001"}
    with pytest.raises(DatasetError, match="'a 2' is not usable as a case id"):
        assign_case_ids(["a 2"], "seriesuid")


def test_index_case_ids_keep_the_mapping(luna):
    out = import_luna16(luna["ann"], luna["images"], luna["root"] / "out", case_ids="index", progress=False)
    mapping = {r["seriesuid"]: r["case_id"] for r in _rows(out / "case_ids.csv")}
    assert mapping == {UID_A: "case_0000", UID_B: "case_0001", UID_C: "case_0002"}
    rows = _rows(out / "annotations.csv")
    assert list(rows[0]) == [*COLUMNS, "source_seriesuid", "instance"]
    assert [(r["seriesuid"], r["source_seriesuid"]) for r in rows] == [
        ("case_0000", UID_A), ("case_0001", UID_B), ("case_0000", UID_A)]
    assert [c.case_id for c in load_dataset(out).cases] == ["case_0000", "case_0001", "case_0002"]


def test_skip_missing(luna):
    rows = list(csv.reader(open(luna["ann"])))[1:] + [["9.9.9", 0, 0, 0, 5]]
    _write_csv(luna["ann"], rows)
    out = import_luna16(luna["ann"], luna["images"], luna["root"] / "out", skip_missing=True, progress=False)
    assert len(_rows(out / "annotations.csv")) == 3


def test_draw_spheres_overlap_goes_to_the_smaller_sphere_and_keeps_centres():
    geom = Geometry((9, 9, 30), (1.0, 1.0, 1.0))
    centres = voxel_to_world([[4, 4, 10], [4, 4, 13], [4, 4, 21]], geom)
    label = draw_spheres(centres, [12.0, 4.0, 12.0], geom)
    # x = 4..16 lies in sphere 1, 11..15 in 2, 15..27 in 3; 16 is 6 mm from 1 and 5 mm from 3
    assert [int(v) for v in label[4, 4, 3:29]] == [0] + [1] * 7 + [2] * 5 + [3] * 12 + [0]
    tiny = draw_spheres(centres[:2], [12.0, 0.0], geom)  # zero diameter: just the centre voxel
    assert (tiny == 2).sum() == 1 and tiny[4, 4, 13] == 2


# ---------------------------------------------------------------- bad input: one line, file, row, problem

def _edit(path, fn):
    rows = list(csv.reader(open(path)))
    _write_csv(path, *fn(rows[0], rows[1:])[::-1])


@pytest.mark.parametrize("edit,where,match", [
    (lambda h, r: (h[:-1], [x[:-1] for x in r]), "annotations.csv", r"line 1: missing column\(s\) 'diameter_mm'"),
    (lambda h, r: ([*h, "extra"], [[*x, 1] for x in r]), "annotations.csv", r"line 1: unexpected column\(s\) 'extra'"),
    (lambda h, r: (h, [r[0], [*r[1], "7"], r[2]]), "annotations.csv", r"line 3: expected 5 fields, got 6"),
    (lambda h, r: (h, [r[0], [r[1][0], "abc", *r[1][2:]], r[2]]), "annotations.csv",
     rf"line 3 \(seriesuid {UID_B}\): coordX is 'abc', expected a finite number"),
    (lambda h, r: (h, [r[0], r[1], [*r[2][:4], "nan"]]), "annotations.csv", r"line 4 .*diameter_mm is 'nan'"),
    (lambda h, r: (h, [r[0], r[1], [*r[2][:4], "-3"]]), "annotations.csv", r"line 4 .*diameter_mm is -3, expected >= 0"),
    (lambda h, r: (h, [r[0], [r[1][0], float(r[1][1]) + 500, *r[1][2:]], r[2]]), "annotations.csv",
     rf"line 3 \(seriesuid {UID_B}\): centre .* lies outside its image {UID_B}.mhd"),
    (lambda h, r: (h, [*r, ["1.2.3.4", 0, 0, 0, 5]]), "annotations.csv",
     r"line 5 \(seriesuid 1.2.3.4\): no image for this seriesuid"),
    (lambda h, r: (h, [*r, [r[0][0], *r[0][1:4], 4]]), "annotations.csv",
     r"line 5 .*: centre falls in the same voxel .* as line 2"),
])
def test_bad_annotations(luna, edit, where, match):
    _edit(luna["ann"], edit)
    with pytest.raises(DatasetError, match=rf"{where}: {match}"):
        import_luna16(luna["ann"], luna["images"], luna["root"] / "out", excluded=luna["exc"], progress=False)
    assert not (luna["root"] / "out" / "dataset.json").exists()


def test_bad_excluded_row(luna):
    _edit(luna["exc"], lambda h, r: (h, [r[0], [r[1][0], *r[1][1:3], -1000.0, 2.0]]))
    with pytest.raises(DatasetError, match=rf"annotations_excluded.csv: line 3 \(seriesuid {UID_B}\): centre .* outside"):
        import_luna16(luna["ann"], luna["images"], luna["root"] / "out", excluded=luna["exc"], progress=False)


def test_duplicate_images(luna):
    shutil.copy(luna["images"] / "subset0" / f"{UID_A}.mhd", luna["images"] / "subset1" / f"{UID_A}.mhd")
    with pytest.raises(DatasetError, match=rf"subset1/{UID_A}.mhd: second image for seriesuid {UID_A}, the first is "):
        import_luna16(luna["ann"], luna["images"], luna["root"] / "out", progress=False)


@pytest.mark.parametrize("out,match", [
    (lambda L: L["images"], "output folder is the image folder"),
    (lambda L: L["images"] / "subset0" / "out", "lies inside .*luna16; the output and image folders must be separate"),
    (lambda L: L["root"], "lies inside .*; the output and image folders must be separate"),
])
def test_output_folder_must_be_separate(luna, out, match):
    with pytest.raises(DatasetError, match=match):
        import_luna16(luna["ann"], luna["images"], out(luna), progress=False)


def test_output_folder_with_other_files(luna):
    (luna["root"] / "out").mkdir()
    (luna["root"] / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a previous import-luna16 output"):
        import_luna16(luna["ann"], luna["images"], luna["root"] / "out", progress=False)


def test_cli(luna, capsys):
    out = luna["root"] / "out"
    args = ["import-luna16", "--annotations", str(luna["ann"]), "--excluded", str(luna["exc"]),
            "--images", str(luna["images"]), "-o", str(out), "-j", "1"]
    assert main(args) == 0
    assert load_dataset(out).task == "detection"
    _edit(luna["ann"], lambda h, r: (h, [r[0], [r[1][0], "abc", *r[1][2:]], r[2]]))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "annotations.csv: line 3" in err and "coordX is 'abc'" in err


# ---------------------------------------------------------------- load_case: instance map and CASE.json agree

def _rewrite_json(out, uid, obj):
    (out / "labelsTr" / f"{uid}.json").write_text(json.dumps(obj))
    ds = load_dataset(out)
    return next(c for c in ds.cases if c.case_id == uid), ds


@pytest.mark.parametrize("obj,where,match", [
    ({"instances": {"1": 0, "2": 0}}, f"{UID_A}.nii.gz", rf"instance ids \[3\] are not listed in {UID_A}.json"),
    ({"instances": {"1": 0, "2": 0, "4": 0}, "ignore": [3]}, f"{UID_A}.json",
     rf"instance ids \[4\] are listed but do not occur in {UID_A}.nii.gz"),
    ({"instances": {"1": 0, "2": 0}, "ignore": [3, 7]}, f"{UID_A}.json", r"instance ids \[7\] are listed but do not"),
    ({"instances": {"1": 0, "2": 1}, "ignore": [3]}, f"{UID_A}.json", r"class indices \[1\] outside 0..0"),
    ({"instances": {"1": 0, "2": 0, "3": 0}, "ignore": [3]}, f"{UID_A}.json", r"instance ids \[3\] are listed both"),
    ({"instances": {"1": 0, "2": 0}, "ignore": 3}, f"{UID_A}.json", r'"ignore" must be a list of positive instance ids'),
    ({"instances": {"1": 0, "2": 0}, "ignore": [0, 3]}, f"{UID_A}.json", r'"ignore" must be a list'),
])
def test_load_case_rejects_disagreeing_instance_files(imported, obj, where, match):
    _, out = imported
    case, ds = _rewrite_json(out, UID_A, obj)
    with pytest.raises(DatasetError, match=rf"{where}: {match}"):
        load_case(case, ds)


def test_read_annotations_accepts_any_column_order_and_bom(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("\ufeffdiameter_mm,coordZ,coordY,coordX,seriesuid\n4.5,3,2,1,u.1\n\n", encoding="utf-8")
    (f,) = read_annotations(p)
    assert f.seriesuid == "u.1" and f.centre_xyz == (1.0, 2.0, 3.0) and f.diameter_mm == 4.5 and f.line == 2


# ---------------------------------------------------------------- round trip from the lung demo

def test_lung_demo_round_trip(tmp_path):
    """Importing the demo's images with its own annotations.csv puts each sphere on the demo's nodule."""
    from volseg.demo import generate_lung_dataset

    demo = generate_lung_dataset(tmp_path / "demo", num_cases=2, seed=1, num_test=0, shape=(40, 80, 80))
    rows = _rows(demo / "annotations.csv")
    assert list(rows[0]) == list(COLUMNS) and {r["seriesuid"] for r in rows} == {"lung_000", "lung_001"}
    images = tmp_path / "scans"
    images.mkdir()
    for p in (demo / "imagesTr").glob("*_0000.nii.gz"):  # LUNA16 names a scan by its seriesuid alone
        shutil.copy(p, images / p.name.replace("_0000.nii.gz", ".nii.gz"))
    out = import_luna16(demo / "annotations.csv", images, tmp_path / "out", progress=False)
    for case in ("lung_000", "lung_001"):
        ours, geom = read_image(out / "labelsTr" / f"{case}.nii.gz")
        theirs, _ = read_image(demo / "labelsTr" / f"{case}.nii.gz")
        n = len(read_instances(demo / "labelsTr" / f"{case}.json"))
        assert read_instances(out / "labelsTr" / f"{case}.json") == {i: 0 for i in range(1, n + 1)}
        for i in range(1, n + 1):  # rows keep the demo's nodule order
            a, b = ours == i, theirs == i
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.6, (case, i)
    ds = load_dataset(out)
    for case in ds.cases:
        load_case(case, ds)
