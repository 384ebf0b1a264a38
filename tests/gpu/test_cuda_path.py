"""The CUDA path: compiled Triton kernels against their torch references, a mixed-precision train
step, and prediction on the GPU in full and slab mode. Skipped without a CUDA device (the
kernels are also checked on the CPU under ``TRITON_INTERPRET=1``, tests/kernels)."""

import copy
import json
import math
import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="checks the compiled Triton kernels: unset TRITON_INTERPRET"),
]

CUDA = torch.device("cuda")


@pytest.fixture()
def seed() -> int:
    """A fresh random seed per test (printed on failure), so that every run draws new inputs."""
    value = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(value)
    print(f"seed {value}")
    return value


@pytest.fixture()
def poisoned_outputs(monkeypatch):
    """Finalize outputs start as NaN (maps) and 255 (labels): an element a kernel does not write shows."""
    import sys

    from volseg.kernels.finalize import finalize_torch

    fin = sys.modules[finalize_torch.__module__]  # the module: the package exports a function of that name
    allocate = fin.allocate_outputs

    def poisoned(*args, **kwargs):
        out = allocate(*args, **kwargs)
        for name in ("probabilities", "max_prob", "entropy", "expected_entropy", "mutual_information"):
            t = getattr(out, name)
            if t is not None:
                t.fill_(float("nan"))
        if out.labels is not None:
            out.labels.fill_(255)
        return out

    monkeypatch.setattr(fin, "allocate_outputs", poisoned)


def _label_mismatch(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of voxels whose labels differ (near-ties may flip under a different rounding)."""
    return float((a.cpu() != b.cpu()).float().mean())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


@pytest.fixture(scope="module", autouse=True)
def _triton():
    pytest.importorskip("triton")


# --- kernels --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_accumulate_triton_matches_torch(seed, dtype):
    from volseg.kernels.accumulate import accumulate_torch, accumulate_triton
    from volseg.kernels.gaussian import gaussian_1d, patch_weight

    k, shape, patch = 5, (40, 52, 61), (16, 24, 32)
    w = [gaussian_1d(p, 0.125, CUDA) for p in patch]
    tiles = torch.randn(4, k, *patch, device=CUDA).to(dtype)
    offsets = [(0, 0, 0), (8, 12, 16), (24, 28, 29), (24, 0, 29)]  # overlapping, touching the far borders
    start = torch.randn(k, *shape, device=CUDA)  # not zeros: every voxel is read, and kept where no tile lands
    ref, got = start.clone(), start.clone()
    accumulate_torch(ref, tiles, offsets, patch_weight(*w))
    accumulate_triton(got, tiles, offsets, *w)
    torch.cuda.synchronize()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, msg=lambda m: f"seed {seed}: {m}")
    rel = float((got - ref).norm() / (ref - start).norm())
    assert rel < 1e-6, f"seed {seed}: relative error {rel:.2e}"


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
@pytest.mark.parametrize("member_terms", [False, True])
def test_finalize_triton_matches_torch(seed, poisoned_outputs, mode, member_terms):
    from volseg.kernels.finalize import finalize_torch, finalize_triton

    k, shape = 7, (19, 33, 47)
    acc = torch.randn(k, *shape, device=CUDA) * 3
    if member_terms:
        acc = torch.cat([acc, torch.rand(2, *shape, device=CUDA) * 1.5])
    norms = [torch.rand(s, device=CUDA) + 0.5 for s in shape]
    kw = dict(mode=mode, return_probabilities=True, return_uncertainty=True, member_terms=member_terms)
    ref = finalize_torch(acc, *norms, **kw)
    got = finalize_triton(acc, *norms, **kw)
    torch.cuda.synchronize()
    if mode == "softmax":
        assert _label_mismatch(got.labels, ref.labels) <= 1e-4, f"seed {seed}"
        assert int(got.labels.max()) < k
    fields = ["probabilities", "max_prob", "entropy"] + (["expected_entropy", "mutual_information"] if member_terms
                                                          else [])
    for f in fields:
        a, b = getattr(got, f), getattr(ref, f)
        assert torch.isfinite(a).all(), f"seed {seed}: {f} has unwritten (NaN) elements"
        assert _max_diff(a, b) <= 2e-3, f"seed {seed}: {f} differs by {_max_diff(a, b):.2e}"


def test_finalize_labels_only_on_a_large_accumulator(seed, poisoned_outputs):
    """The predict path's default (labels only), on more voxels than one program block covers many times."""
    from volseg.kernels.finalize import finalize

    acc = torch.randn(13, 64, 160, 150, device=CUDA)
    got = finalize(acc, backend="triton")
    ref = finalize(acc, backend="torch")
    assert got.probabilities is None and got.max_prob is None
    assert _label_mismatch(got.labels, ref.labels) <= 1e-5, f"seed {seed}"
    assert int(got.labels.max()) < 13


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_member_triton_matches_torch(seed, mode, dtype):
    from volseg.kernels.accumulate import add_member_torch, add_member_triton

    logits = (torch.randn(2, 4, 9, 10, 11, device=CUDA) * 3).to(dtype)
    total, sum_p = torch.rand(2, 6, 9, 10, 11, device=CUDA), torch.rand(2, 4, 9, 10, 11, device=CUDA)
    t_ref, p_ref, t_got, p_got = total.clone(), sum_p.clone(), total.clone(), sum_p.clone()
    add_member_torch(t_ref, p_ref, logits, mode)
    add_member_triton(t_got, p_got, logits, mode)
    torch.cuda.synchronize()
    torch.testing.assert_close(t_got, t_ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")
    torch.testing.assert_close(p_got, p_ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")
    assert torch.equal(t_got[:, 5], total[:, 5])  # the mutual-information channel is written at commit only


# --- sliding window -------------------------------------------------------------------------------------

def _net(c_in: int = 2, k: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(c_in, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(8, k, 3, padding=1)).eval()


def test_cuda_sliding_window_full_and_slab_match_the_cpu(seed, monkeypatch):
    from volseg.inference.dense import dense_aggregator
    from volseg.inference.sliding_window import predict_sliding_window

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the CPU reference convolves in fp32
    nets = [_net(seed=0), _net(seed=1)]
    gpu_nets = [copy.deepcopy(n).to(CUDA) for n in nets]
    image, patch = torch.randn(2, 45, 38, 41), (16, 24, 24)
    kw = dict(return_probabilities=True, return_uncertainty=True, mirror_axes=(0, 2), tile_batch=3)
    cpu = predict_sliding_window(nets, image, patch, 3, device="cpu", backend="torch", slab=False, **kw)
    for backend in ("torch", "triton"):
        for slab in (False, True):
            got = predict_sliding_window(gpu_nets, image, patch, 3, device="cuda", backend=backend, slab=slab, **kw)
            where = f"seed {seed}, {backend}, slab {slab}"
            assert got.labels.device.type == "cpu" and got.timings["slab_mode"] is slab
            assert _label_mismatch(got.labels, cpu.labels) <= 1e-3, where
            for f in ("probabilities", "max_prob", "entropy", "expected_entropy", "mutual_information"):
                assert _max_diff(getattr(got, f), getattr(cpu, f)) <= 3e-3, f"{where}: {f}"
            assert bool((got.mutual_information >= 0).all()), where
    agg = dense_aggregator(3, image.shape[1:], patch, device="cuda", memory_budget_bytes=1000)
    assert agg.triton and agg.row_wise  # "auto" is Triton on CUDA; over the budget, slab mode


def test_slab_mode_on_a_volume_of_many_rows(seed):
    """Slab mode over many z rows (the buffer shifts each time) gives full mode's labels, Triton on CUDA."""
    from volseg.inference.sliding_window import predict_sliding_window

    net = _net(c_in=1, k=5).to(CUDA)
    image = torch.randn(1, 150, 40, 36)
    full = predict_sliding_window(net, image, (16, 32, 32), 5, device="cuda", slab=False, return_uncertainty=True)
    slab = predict_sliding_window(net, image, (16, 32, 32), 5, device="cuda", slab=True, return_uncertainty=True)
    assert slab.timings["slab_mode"] and not full.timings["slab_mode"]
    assert torch.equal(full.labels, slab.labels), f"seed {seed}"
    assert _max_diff(full.entropy, slab.entropy) <= 1e-3


# --- predict and train through the package --------------------------------------------------------------

def test_predict_cli_on_cuda_equals_the_cpu_in_full_and_slab_mode(tiny_model, tmp_path, monkeypatch):
    from synthetic import blob_case

    import volseg.inference.dense as dense
    from volseg.cli.main import main
    from volseg.io.nifti import Geometry, read_image, write_image

    chosen = []
    make = dense.dense_aggregator

    def recording(*args, **kwargs):
        agg = make(*args, **kwargs)
        chosen.append((agg.triton, agg.row_wise))
        return agg

    monkeypatch.setattr(dense, "dense_aggregator", recording)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compared with the CPU's fp32 below
    folder = tmp_path / "in"
    geometry = Geometry((20, 40, 36), (1.0, 1.0, 1.0))
    image, _ = blob_case(geometry.shape, seed=3, n_labels=2)
    write_image(folder / "a_0000.nii.gz", image, geometry)
    labels = {}
    runs = {"cpu": ["--device", "cpu"], "cuda": ["--device", "cuda"],
            "cuda_slab": ["--device", "cuda", "--memory-gb", "1e-6"]}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["predict", "-i", str(folder), "-o", str(out), "-m", str(tiny_model), "--no-progress",
                     "--save-probabilities", "--no-shift-check", *extra]) == 0
        labels[name] = read_image(out / "a.nii.gz")[0]
        assert json.loads((out / "summary.json").read_text())["device"].startswith(extra[1])
    assert chosen == [(False, False), (True, False), (True, True)]
    for name in ("cuda", "cuda_slab"):
        assert (labels[name] != labels["cpu"]).mean() <= 1e-3, name


def test_amp_train_step_on_cuda(tiny_plan):
    from volseg.planning.plans import configuration, load_plans
    from volseg.training.build import build_parts
    from volseg.training.distributed import DistContext
    from volseg.training.trainer import Schedule, TrainState, train_epoch

    plans = load_plans(tiny_plan / "plans.json")
    name, config = configuration(plans, "3d_cpu")
    folder = tiny_plan / "preprocessed" / name
    ids = sorted(p.stem for p in folder.glob("*.json"))
    ctx = DistContext(device=CUDA)
    parts = build_parts(plans, config, folder, ids, [], ctx, num_workers=0, seed=0)
    dtypes = []

    def hook(module, inputs, output):
        dtypes.append((output[0] if isinstance(output, (list, tuple)) else output).dtype)

    handle = parts.network.register_forward_hook(hook)
    before = {k: v.detach().clone() for k, v in parts.network.state_dict().items()}
    t = config["training"]
    sched = Schedule(epochs=1, iterations_per_epoch=8, val_iterations=0, base_lr=t["optimizer"]["lr"],
                     lr_schedule=t["lr_schedule"], grad_clip=t.get("grad_clip"), amp=True)
    scaler = torch.amp.GradScaler("cuda")
    try:
        loss, _, terms = train_epoch(parts, sched, TrainState(), ctx, scaler)
    finally:
        handle.remove()
        parts.close()
    assert dtypes and all(d == torch.float16 for d in dtypes), dtypes  # the forward ran in half precision
    assert math.isfinite(loss) and all(math.isfinite(v) for v in terms.values())
    after = parts.network.state_dict()
    assert all(after[k].dtype == before[k].dtype for k in before)  # the weights stay fp32
    assert all(bool(torch.isfinite(v).all()) for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert scaler.get_scale() > 0


def test_training_run_on_cuda_validates_on_cuda(tiny_plan, tmp_path):
    """``train_fold`` on CUDA: mixed precision, checkpoints, then the held-out case predicted on the GPU."""
    from volseg.model.checkpoint import load_checkpoint
    from volseg.workflow import train_fold

    fold_dir = train_fold(tiny_plan, tmp_path / "m", fold=0, epochs=1, iterations=3, device="cuda", progress=False)
    records = [json.loads(x) for x in (fold_dir / "log.jsonl").read_text().splitlines()]
    assert len(records) == 1 and math.isfinite(records[0]["train_loss"])
    weights = load_checkpoint(fold_dir / "checkpoint_final.pt")["network"]
    assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["counts"]["done"] == 1


# Last in this file on purpose: an out-of-bounds access leaves the CUDA context unusable for what follows.
def test_finalize_triton_beyond_2_31_accumulator_elements(seed):
    """Channel offsets of a K × N accumulator reach past 2^31 elements (an 8.8 GB fp32 accumulator, what
    full mode holds for 100 classes of 22 M voxels): the kernel's addressing must not wrap around."""
    from volseg.kernels.finalize import finalize

    k, shape = 100, (128, 384, 448)
    assert (k - 1) * math.prod(shape) >= 2 ** 31
    acc = torch.randn(k, *shape, device=CUDA)
    top = torch.randint(0, k, shape, device=CUDA)
    acc.scatter_add_(0, top[None], torch.full((1, *shape), 20.0, device=CUDA))  # a clear winner per voxel
    got = finalize(acc, backend="triton")
    torch.cuda.synchronize()
    assert torch.equal(got.labels.long(), top), f"seed {seed}: labels wrong beyond 2^31 elements"
