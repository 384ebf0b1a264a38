"""Fused stitching kernels (Triton) and the pure-torch references they must agree with.

* :mod:`volseg.kernels.gaussian` — tile positions, 1D Gaussian weights, separable normalizer.
* :mod:`volseg.kernels.accumulate` — weighted accumulation of tile logits.
* :mod:`volseg.kernels.finalize` — normalize + softmax + argmax + max probability + entropy in one pass.

Triton is imported only when a Triton path runs, so that ``TRITON_INTERPRET=1`` can be set
before that (the tests run the kernels on the CPU that way).
"""

from volseg.kernels.finalize import Finalized, finalize, triton_available

__all__ = ["Finalized", "finalize", "triton_available"]
