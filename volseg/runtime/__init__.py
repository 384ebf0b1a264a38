"""CPU runtimes for the network's forward pass (OpenVINO, ONNX Runtime), checked against torch.

Only the forward pass changes: the sliding window, TTA, fold ensembling and finalize are the
same for every runtime. Each fold's network is exported once to ONNX and cached in
``fold_K/export/``, keyed by a digest of its weights (:mod:`volseg.runtime.export`); one tile
batch through torch and the runtime decides whether the runtime is used
(:mod:`volseg.runtime.select`). The runtimes are the optional extra ``volseg[cpu-fast]``.
"""

from volseg.runtime.engines import PRECISIONS, RUNTIMES, runtime_installed
from volseg.runtime.select import RuntimeChoice, select_runtime

__all__ = ["PRECISIONS", "RUNTIMES", "RuntimeChoice", "runtime_installed", "select_runtime"]
