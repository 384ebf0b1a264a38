"""Forward passes through runtimes other than torch, behind the same call as a torch network.

A :class:`ForeignNetwork` takes a float32 CPU tensor (n, C, z, y, x) with n at most the
export's batch B (smaller batches are zero-padded to B), and returns the torch network's
output structure (a tensor, or the dict/list of a Retina U-Net) as CPU float32 tensors.
:class:`TorchBF16Network` is torch itself under CPU bfloat16 autocast.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import numpy as np
import torch
from torch.utils._pytree import TreeSpec, tree_map, tree_unflatten

RUNTIMES = ("torch", "openvino", "onnxruntime")
PRECISIONS = ("f32", "bf16")
_MODULES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}


def runtime_installed(name: str) -> bool:
    """Whether runtime ``name`` ("torch", "openvino" or "onnxruntime") can be imported."""
    return name == "torch" or importlib.util.find_spec(_MODULES[name]) is not None


def _threads() -> int:
    return max(1, torch.get_num_threads())


class ForeignNetwork:
    """A network exported to ONNX and run by another runtime (see the module docstring).

    Args:
        spec: The torch network's output structure (``tree_flatten(net(x))[1]``).
        batch: B, the batch the export was made for.
    """

    name = "foreign"
    n_outputs = 0  # outputs of the export: the network's leaves, then its pooled features

    def __init__(self, spec: TreeSpec, batch: int) -> None:
        self.spec = spec
        self.batch = int(batch)
        self.n_leaves = spec.num_leaves
        self._sink: Callable[[torch.Tensor], None] | None = None

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    @property
    def precision(self) -> str:
        return "f32"

    def set_feature_sink(self, sink: Callable[[torch.Tensor], None] | None) -> bool:
        """Hand every call's pooled bottleneck features (n, 2 C) to ``sink`` (None: stop);
        returns whether the export has them."""
        self._sink = sink
        return self.n_outputs > self.n_leaves

    def eval(self) -> "ForeignNetwork":
        return self

    def __call__(self, x: torch.Tensor):
        n = x.shape[0]
        if n > self.batch:
            parts = [self(x[i:i + self.batch]) for i in range(0, n, self.batch)]
            return tree_map(lambda *ts: torch.cat(ts), *parts) if len(parts) > 1 else parts[0]
        arr = x.detach().to("cpu", torch.float32).numpy()
        if n < self.batch:
            arr = np.concatenate([arr, np.zeros((self.batch - n, *arr.shape[1:]), np.float32)])
        outs = [torch.from_numpy(np.array(o[:n], dtype=np.float32)) for o in self._run(np.ascontiguousarray(arr))]
        if self._sink is not None:
            for f in outs[self.n_leaves:]:
                self._sink(f)
        return tree_unflatten(outs[:self.n_leaves], self.spec)


class OpenVINONetwork(ForeignNetwork):
    """An ONNX export compiled by OpenVINO for the CPU, at f32 or bf16 inference precision."""

    name = "openvino"

    def __init__(self, onnx_path: str | os.PathLike, spec: TreeSpec, batch: int, precision: str = "f32") -> None:
        import openvino as ov

        super().__init__(spec, batch)
        core = ov.Core()
        self._compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": _threads(),
            "PERFORMANCE_HINT": "LATENCY"})
        self._request = self._compiled.create_infer_request()
        self._outputs = list(self._compiled.outputs)
        self.n_outputs = len(self._outputs)

    @property
    def precision(self) -> str:
        """The inference precision the CPU plugin actually uses ("f32" on a CPU without bf16)."""
        name = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return {"f32": "f32", "bf16": "bf16", "f16": "f16"}.get(name, name)

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        res = self._request.infer({0: x}, share_inputs=True)
        return [res[o] for o in self._outputs]


class OnnxRuntimeNetwork(ForeignNetwork):
    """An ONNX export run by ONNX Runtime's CPU execution provider (f32)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, spec: TreeSpec, batch: int) -> None:
        import onnxruntime as ort

        super().__init__(spec, batch)
        so = ort.SessionOptions()
        so.intra_op_num_threads = _threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.n_outputs = len(self._session.get_outputs())

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self._input: x})


class TorchBF16Network(torch.nn.Module):
    """``net`` run under CPU bfloat16 autocast; outputs back in float32. Hooks on ``net``'s
    modules (the shift check's feature probe) still fire."""

    name = "torch"
    precision = "bf16"

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.net(x)
        return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) else t, out)


def build_engine(name: str, onnx_path, spec: TreeSpec, batch: int, precision: str):
    """The :class:`ForeignNetwork` of runtime ``name`` on an export."""
    if name == "openvino":
        return OpenVINONetwork(onnx_path, spec, batch, precision)
    if name == "onnxruntime":
        if precision != "f32":
            raise ValueError("onnxruntime runs f32 only on the CPU")
        return OnnxRuntimeNetwork(onnx_path, spec, batch)
    raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIMES[1:])}")
