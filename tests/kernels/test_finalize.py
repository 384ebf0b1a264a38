"""Finalize on the torch path: only what is asked for is computed, and the labels never change."""

import sys

import pytest
import torch

from volseg.kernels.finalize import finalize_torch


@pytest.mark.parametrize("member_terms", [False, True])
def test_labels_only_path_equals_the_full_path(monkeypatch, member_terms):
    monkeypatch.setattr(sys.modules[finalize_torch.__module__], "CHUNK_BYTES", 2000)  # several z-chunks
    torch.manual_seed(3)
    acc = torch.randn(5 + 2 * member_terms, 9, 10, 11) * 4
    norms = [torch.rand(s) * 3 + 0.1 for s in acc.shape[1:]]  # far from uniform: the scale varies per voxel
    full = finalize_torch(acc, *norms, return_probabilities=True, return_uncertainty=True, member_terms=member_terms)
    only = finalize_torch(acc, *norms, member_terms=member_terms)
    assert torch.equal(only.labels, full.labels)
    assert only.probabilities is None and only.max_prob is None and only.entropy is None
    if member_terms:
        assert torch.equal(only.expected_entropy, full.expected_entropy)
        assert torch.equal(only.mutual_information, full.mutual_information)
    # and the labels are the argmax of the normalized logits
    norm = norms[0][:, None, None] * norms[1][None, :, None] * norms[2][None, None, :]
    assert torch.equal(full.labels, (acc[:5] / norm).argmax(0).to(torch.uint8))


def test_sigmoid_labels_only_writes_nothing_but_member_terms():
    acc = torch.randn(3, 4, 5, 6)
    norms = [torch.ones(s) for s in acc.shape[1:]]
    out = finalize_torch(acc, *norms, mode="sigmoid")
    assert all(getattr(out, f) is None for f in ("labels", "probabilities", "max_prob", "entropy"))
