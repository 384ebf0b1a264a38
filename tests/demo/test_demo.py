import csv

import numpy as np
import pytest

from volseg.cli.main import main
from volseg.demo.lung import generate_lung_dataset, make_lung_case
from volseg.demo.ms import generate_ms_dataset, make_ms_case
from volseg.errors import VolsegError
from volseg.fingerprint.case import load_case
from volseg.io.dataset import load_dataset
from volseg.io.nifti import read_image


@pytest.fixture(scope="module")
def lung(tmp_path_factory):
    return generate_lung_dataset(tmp_path_factory.mktemp("d") / "lung", num_cases=3, seed=1, shape=(40, 96, 96))


def test_lung_dataset_loads_and_validates(lung):
    ds = load_dataset(lung)
    assert ds.task == "detection" and ds.instance_labels and len(ds.cases) == 3
    for case in ds.cases:
        images, label, geom, instances = load_case(case, ds)
        assert images.min() >= -1024 and images.max() <= 3071
        assert set(np.unique(label)) - {0} == set(instances)
    assert len(list((lung / "imagesTs").glob("*.nii.gz"))) == 1


def test_nodule_annotations_land_on_the_nodules_in_world_coordinates(lung):
    rows = list(csv.DictReader(open(lung / "annotations.csv")))
    assert rows, "the seed gives nodules"
    for row in rows:
        inst, geom = read_image(lung / "labelsTr" / f"{row['seriesuid']}.nii.gz")
        world = np.array([[float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]])
        z, y, x = np.round(geom.world_to_voxel(world)[0]).astype(int)
        value = inst[z, y, x]
        assert value > 0, row
        volume = (inst == value).sum() * np.prod(geom.spacing)
        assert float(row["diameter_mm"]) == pytest.approx((6 * volume / np.pi) ** (1 / 3), rel=0.05)


def test_lung_cases_are_deterministic_and_anisotropic():
    a, b = make_lung_case(5, (32, 64, 64)), make_lung_case(5, (32, 64, 64))
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    spacing = a[2].spacing
    assert 1.0 <= spacing[0] <= 2.5 and 0.6 <= spacing[1] == spacing[2] <= 0.9


@pytest.mark.parametrize("template", [None, False])
def test_ms_lesion_kinds_show_at_the_right_timepoint(template):
    base, follow, label, geom = make_ms_case(3, use_template=template)
    assert set(np.unique(label)) <= {0, 1, 2, 3} and (label > 0).any()
    wm_level = np.median(base[(base > 0) & (label == 0)])
    for kind, bright_base, bright_follow in ((1, True, True), (2, False, True), (3, True, False)):
        m = label == kind
        if m.sum() < 5:
            continue
        assert (np.median(base[m]) > wm_level * 1.2) == bright_base, kind
        # the follow-up is misregistered by < 1 voxel: look at the lesion cores
        core = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
        if core.sum() >= 3:
            assert (np.median(follow[core]) > wm_level * 1.2) == bright_follow, kind


def test_ms_dataset_and_cli(tmp_path):
    assert main(["demo-data", "ms", "--out", str(tmp_path / "ms"), "--cases", "2", "--phantom"]) == 0
    ds = load_dataset(tmp_path / "ms")
    assert ds.task == "longitudinal" and ds.timepoints == {0: "baseline", 1: "followup"} and len(ds.cases) == 2
    again = generate_ms_dataset(tmp_path / "ms", num_cases=2, use_template=False)  # regenerating is fine
    assert again == tmp_path / "ms"


def test_refuses_foreign_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(VolsegError, match="not a volseg demo dataset"):
        generate_ms_dataset(tmp_path / "x", num_cases=1)
