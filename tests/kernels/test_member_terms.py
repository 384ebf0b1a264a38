"""Ensemble-member statistics (expected entropy, mutual information) and finalize with member terms,
torch path (the Triton kernels are checked against it in interpret_check.py)."""

import pytest
import torch

from volseg.kernels.accumulate import add_member_torch, member_entropy_terms, member_probabilities
from volseg.kernels.finalize import finalize, finalize_torch


def _binary(p):
    return -(p * p.log() + (1 - p) * (1 - p).log())


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_member_terms_equal_the_definitions(mode):
    torch.manual_seed(0)
    members = torch.randn(5, 2, 4, 3, 6, 7, dtype=torch.float64) * 2  # M, B, K, z, y, x
    total, sum_p = torch.zeros(2, 6, 3, 6, 7), torch.zeros(2, 4, 3, 6, 7)
    for m in members:
        add_member_torch(total, sum_p, m.float(), mode)
    eh, mi = member_entropy_terms(sum_p, total[:, 4], 5, mode)
    torch.testing.assert_close(total[:, :4], members.sum(0).float(), atol=1e-5, rtol=0)
    assert torch.equal(total[:, 5], torch.zeros_like(total[:, 5]))  # the MI channel is written at commit
    # by hand, in float64, voxel by voxel of the definitions
    if mode == "softmax":
        p = members.softmax(2)
        h = -(p * p.log()).sum(2)
        pm = p.mean(0)
        h_mean = -(pm * pm.log()).sum(1)
    else:
        p = members.sigmoid()
        h = _binary(p).mean(2)
        pm = p.mean(0)
        h_mean = _binary(pm).mean(1)
    torch.testing.assert_close(eh.double(), h.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(mi.double(), h_mean - h.mean(0), atol=1e-5, rtol=0)
    assert (mi >= 0).all() and mi.max() > 0.05


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_identical_members_have_zero_mutual_information(mode):
    logits = torch.randn(1, 3, 4, 5, 6) * 4
    total, sum_p = torch.zeros(1, 5, 4, 5, 6), torch.zeros(1, 3, 4, 5, 6)
    for _ in range(3):
        add_member_torch(total, sum_p, logits, mode)
    eh, mi = member_entropy_terms(sum_p, total[:, 3], 3, mode)
    assert (mi >= 0).all() and mi.max() < 1e-5
    torch.testing.assert_close(eh, member_probabilities(logits, mode)[1], atol=1e-6, rtol=0)


def test_member_probabilities_survive_extreme_logits():
    logits = torch.tensor([[300.0, -300.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 1, 2)
    for mode in ("softmax", "sigmoid"):
        p, h = member_probabilities(logits, mode)
        eh, mi = member_entropy_terms(p, h, 1, mode)
        assert torch.isfinite(p).all() and torch.isfinite(h).all() and torch.isfinite(mi).all()
        assert (mi >= 0).all()


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_finalize_member_terms_leave_the_class_outputs_bit_identical(monkeypatch, mode):
    import sys

    monkeypatch.setattr(sys.modules[finalize_torch.__module__], "CHUNK_BYTES", 4000)  # several z-chunks
    torch.manual_seed(1)
    acc = torch.randn(4, 9, 10, 11) * 3
    norms = [torch.rand(s) + 0.5 for s in acc.shape[1:]]
    extra = torch.rand(2, 9, 10, 11)
    plain = finalize_torch(acc, *norms, mode=mode, return_probabilities=True, return_uncertainty=True)
    terms = finalize_torch(torch.cat([acc, extra]), *norms, mode=mode, return_probabilities=True,
                           return_uncertainty=True, member_terms=True)
    for f in ("labels", "probabilities", "max_prob", "entropy"):
        a, b = getattr(plain, f), getattr(terms, f)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), f
    assert plain.expected_entropy is None and plain.mutual_information is None
    norm = norms[0][:, None, None] * norms[1][None, :, None] * norms[2][None, None, :]
    for i, f in enumerate(("expected_entropy", "mutual_information")):
        out = getattr(terms, f)
        assert out.dtype == torch.float16 and out.shape == (9, 10, 11)
        torch.testing.assert_close(out.float(), extra[i] / norm, atol=2e-3, rtol=1e-3)


def test_finalize_member_terms_without_normalizers_and_errors():
    acc = torch.cat([torch.randn(3, 4, 5, 6), torch.full((2, 4, 5, 6), 0.25)])
    res = finalize(acc, member_terms=True, backend="torch")
    assert res.max_prob is None and res.probabilities is None and res.labels.shape == (4, 5, 6)
    assert (res.expected_entropy == 0.25).all() and (res.mutual_information == 0.25).all()
    with pytest.raises(ValueError, match="K \\+ 2 channels"):
        finalize(torch.zeros(2, 3, 3, 3), member_terms=True, backend="torch")

