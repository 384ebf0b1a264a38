"""Choosing the runtime of the forward pass: export, one-tile check against torch, timing.

:func:`select_runtime` runs one seeded N(0, 1) tile batch through torch (float32, the
reference) and through each candidate runtime. A float32 candidate passes when every output
is within ``F32_RTOL`` × (largest |torch output|) + ``F32_ATOL`` of torch's and its labels
are torch's, except at voxels where torch's own decision margin (top-1 minus top-2 logit,
or |logit| for sigmoid outputs) is inside that tolerance. A bfloat16 candidate passes when
at least ``BF16_MIN_AGREEMENT`` of its labels are torch's. ``auto`` takes the fastest
passing runtime (torch unless another is at least ``AUTO_MIN_GAIN`` faster); a named runtime
that is missing or fails falls back to torch with a one-line notice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch.utils._pytree import tree_flatten

from volseg.runtime.engines import PRECISIONS, RUNTIMES, TorchBF16Network, build_engine, runtime_installed
from volseg.runtime.export import cached_onnx

log = logging.getLogger(__name__)

F32_RTOL = 1e-3
F32_ATOL = 1e-3
BF16_MIN_AGREEMENT = 0.99
AUTO_MIN_GAIN = 1.05  # another runtime replaces torch under "auto" only when this much faster
INSTALL_HINT = "pip install 'volseg[cpu-fast]'"


@dataclass
class RuntimeChoice:
    """What runs the forward pass, and why.

    ``checks`` maps each tried ``RUNTIME-PRECISION`` (the precision asked for; ``torch-f32``
    is the reference) to its one-tile check: ``max_abs_diff`` and
    ``tolerance`` (outputs), ``label_agreement`` (share of voxels with torch's label),
    ``seconds`` (one tile batch), ``passed`` and ``precision`` (the one the runtime used).
    """

    runtime: str = "torch"
    precision: str = "f32"
    requested: str = "auto"
    requested_precision: str = "f32"
    notice: str | None = None
    checks: dict[str, dict] = field(default_factory=dict)

    def record(self) -> dict:
        """The ``runtime`` record of ``summary.json``."""
        return {"runtime": self.runtime, "precision": self.precision, "requested": self.requested,
                "requested_precision": self.requested_precision, "notice": self.notice, "checks": self.checks}

    def describe(self) -> str:
        """One line: the runtime, its speed against torch and its agreement."""
        text = f"runtime: {self.runtime} {self.precision}"
        chk, ref = self.checks.get(f"{self.runtime}-{self.requested_precision}"), self.checks.get("torch-f32")
        if chk and ref and (self.runtime != "torch" or self.precision != "f32"):
            text += (f" ({ref['seconds'] / chk['seconds']:.2f}× torch f32's speed on one tile batch; "
                     f"labels {100 * chk['label_agreement']:.2f}% torch's, max |Δ| {chk['max_abs_diff']:.1e})")
        return text


def _decisions(t: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of a (B, K, z, y, x) output and torch's margin for them."""
    if mode == "sigmoid" or t.shape[1] == 1:
        return t > 0, t.abs()
    top = t.topk(2, dim=1).values
    return t.argmax(dim=1), top[:, 0] - top[:, 1]


def compare(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor], mode: str = "softmax") -> dict:
    """Agreement of a runtime's output leaves with torch's: ``max_abs_diff``, ``tolerance``,
    ``label_agreement`` and ``unexplained`` (labels that differ where torch's margin exceeds
    the tolerance), labels taken from the first 5-D output."""
    diff = max(float((a - b).abs().max()) for a, b in zip(reference, other))
    scale = max(float(a.abs().max()) for a in reference)
    tol = F32_RTOL * scale + F32_ATOL
    dense = next((i for i, a in enumerate(reference) if a.ndim == 5), None)
    agreement, unexplained = 1.0, 0
    if dense is not None:
        ref_labels, margin = _decisions(reference[dense], mode)
        other_labels, _ = _decisions(other[dense], mode)
        differ = ref_labels != other_labels
        agreement = 1.0 - float(differ.float().mean())
        unexplained = int((differ & (margin > tol)).sum())
    return {"max_abs_diff": diff, "tolerance": tol, "label_agreement": agreement, "unexplained": unexplained}


def _seconds(net, x: torch.Tensor, repeats: int = 2) -> tuple[list[torch.Tensor], float]:
    """Output leaves of ``net(x)`` (after one warm-up call) and the best of ``repeats`` timings."""
    with torch.inference_mode():
        out = net(x)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x)
            best = min(best, time.perf_counter() - t0)
    leaves = [t.float() for t in tree_flatten(out)[0]]
    return leaves, best


def _passes(check: dict, precision: str) -> bool:
    if precision == "f32":
        return check["max_abs_diff"] <= check["tolerance"] and check["unexplained"] == 0
    return check["label_agreement"] >= BF16_MIN_AGREEMENT


def select_runtime(networks: Sequence[torch.nn.Module], fold_folders: Sequence[str | Path],
                   input_shape: Sequence[int], requested: str = "auto", precision: str = "f32",
                   device: torch.device | str = "cpu", mode: str = "softmax") -> tuple[list, RuntimeChoice]:
    """The networks that the sliding window should call, and the :class:`RuntimeChoice`.

    Args:
        networks: The folds' torch networks (eval mode, CPU for another runtime).
        fold_folders: Each network's ``fold_K`` folder, where its ONNX export is cached.
        input_shape: (B, C, z, y, x) of one tile batch: the plan's ``inference.tile_batch``, the
            model's input channels and its patch in voxels.
        requested: "auto", "torch", "openvino" or "onnxruntime".
        precision: "f32" or "bf16" (reduced precision only when asked for).
        device: Where prediction runs; other runtimes serve the CPU only.
        mode: "softmax" or "sigmoid": how labels are read from the outputs.
    """
    if requested not in ("auto", *RUNTIMES):
        raise ValueError(f"unknown runtime {requested!r}; expected auto or one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    choice = RuntimeChoice(requested=requested, requested_precision=precision)
    nets = list(networks)
    if torch.device(device).type != "cpu":
        if requested not in ("auto", "torch"):
            choice.notice = f"{requested} serves the CPU only; torch runs the network on {device}"
        return nets, choice
    if requested == "torch" and precision == "f32":
        return nets, choice
    shape = tuple(int(s) for s in input_shape)
    batch = shape[0]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    reference, t_ref = _seconds(nets[0], x)
    with torch.inference_mode():
        spec = tree_flatten(nets[0](x[:1]))[1]
    choice.checks["torch-f32"] = {"precision": "f32", "seconds": t_ref, "passed": True, "max_abs_diff": 0.0,
                              "tolerance": 0.0, "label_agreement": 1.0, "unexplained": 0}
    names = [r for r in RUNTIMES[1:] if runtime_installed(r)] if requested == "auto" else [requested]
    if precision == "bf16" and requested in ("auto", "torch"):
        names = ["torch", *names]
    if precision == "bf16":
        names = [r for r in names if r != "onnxruntime" or requested == "onnxruntime"]
    candidates: dict[str, list] = {}
    for name in names:
        if not runtime_installed(name):
            choice.notice = f"{name} is not installed ({INSTALL_HINT}); torch runs the network"
            continue
        try:
            if name == "torch":
                engines = [TorchBF16Network(n) for n in nets]
            else:
                engines = [build_engine(name, cached_onnx(n, shape, f), spec, batch, precision)
                           for n, f in zip(nets, fold_folders)]
            leaves, seconds = _seconds(engines[0], x)
            check = {"precision": getattr(engines[0], "precision", precision), "seconds": seconds,
                     **compare(reference, leaves, mode)}
            check["passed"] = _passes(check, precision)
            for net, engine in zip(nets[1:], engines[1:]):  # every fold's export, on the same tile
                with torch.inference_mode():
                    ref_k = [t.float() for t in tree_flatten(net(x))[0]]
                    out_k = [t.float() for t in tree_flatten(engine(x))[0]]
                check["passed"] = check["passed"] and _passes(compare(ref_k, out_k, mode), precision)
        except Exception as e:  # noqa: BLE001 - a runtime that cannot take this network leaves torch
            choice.checks[f"{name}-{precision}"] = {"precision": precision, "passed": False, "error": f"{type(e).__name__}: {e}"[:300]}
            if requested != "auto":
                choice.notice = f"{name} could not run the network ({type(e).__name__}); torch runs it"
            continue
        choice.checks[f"{name}-{precision}"] = check
        if check["passed"]:
            candidates[name] = engines
        elif requested != "auto":
            choice.notice = (f"{name} {precision} disagrees with torch on the check tile (labels "
                             f"{100 * check['label_agreement']:.2f}% torch's, max |Δ| {check['max_abs_diff']:.1e}); "
                             "torch runs the network")
    if requested != "auto":
        best = requested if requested in candidates else None
    else:
        best = "torch" if precision == "f32" else None  # (torch-f32 is the f32 reference)
        for name in candidates:
            seconds = choice.checks[f"{name}-{precision}"]["seconds"]
            if best is None or seconds * AUTO_MIN_GAIN < choice.checks[f"{best}-{precision}"]["seconds"]:
                best = name
    if best is None or (best == "torch" and precision == "f32"):
        return nets, choice
    choice.runtime, choice.precision = best, choice.checks[f"{best}-{precision}"]["precision"]
    return candidates[best], choice
