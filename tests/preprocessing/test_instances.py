"""Instance-labelled datasets: the instance map is preprocessed beside the class map, id by id."""

import json

import numpy as np


def test_instance_map_is_resampled_with_the_class_map_and_keeps_its_ids(tmp_path):
    from volseg.demo import generate_lung_dataset
    from volseg.planning.run import plan_and_preprocess

    data = generate_lung_dataset(tmp_path / "lung", num_cases=3, num_test=0, shape=(32, 64, 64), seed=6)
    plans = plan_and_preprocess(data, tmp_path / "plan", device="cpu", num_workers=1, progress=False, cpu_gflop=5.0)
    folder = tmp_path / "plan" / "preprocessed" / plans["default_configuration"]
    checked = 0
    for props_path in sorted(folder.glob("*.json")):
        case = props_path.stem
        props = json.loads(props_path.read_text())
        image = np.load(folder / f"{case}.npy")
        seg, inst = np.load(folder / f"{case}_seg.npy"), np.load(folder / f"{case}_inst.npy")
        assert inst.shape == seg.shape == (1, *image.shape[1:]) and inst.dtype == np.int16
        source = json.loads((data / "labelsTr" / f"{case}.json").read_text())["instances"]
        present = set(np.unique(inst).tolist()) - {0}
        assert present and {int(k) for k in props["instances"]} == present
        assert present <= {int(k) for k in source}  # ids are kept, never renumbered
        for k in present:  # the class map is each instance's class + 1, voxel for voxel
            assert np.all(seg[inst == k] == props["instances"][str(k)] + 1)
        assert np.all(seg[inst == 0] == 0)
        for k, locations in props["instance_locations"].items():
            pts = np.asarray(locations)
            assert len(pts) and np.all(inst[0][tuple(pts.T)] == int(k))  # sampling points lie in their instance
        checked += 1
    assert checked == 3
