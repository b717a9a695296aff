"""The sensitivity measurement itself: its KL is exact enough to rank layers whose scores differ by 1e-4."""

from __future__ import annotations

import torch

from flexq_cli.analyze import AnalyzeConfig, _Reference, select_a8


def _kl64(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    lp, lq = torch.log_softmax(base.double(), -1), torch.log_softmax(other.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1).mean()


def test_kl_is_zero_for_the_base_and_matches_float64():
    torch.manual_seed(0)
    logits = torch.randn(64, 49152) * 4
    labels = torch.randint(0, 49152, (63,))
    ref = _Reference(logits, labels)
    kl, nll = ref.kl_and_nll(logits)
    assert kl == 0.0 and abs(nll - ref.nll) < 1e-4
    for scale in (1e-3, 1e-2, 1e-1):
        other = logits + torch.randn_like(logits) * scale
        kl, nll = ref.kl_and_nll(other)
        want = _kl64(logits, other).item()
        assert abs(kl - want) <= 1e-3 * want + 1e-7
        want_nll = torch.nn.functional.cross_entropy(other[:-1].double(), labels).item()
        assert abs(nll - want_nll) < 1e-4


def test_budget_selection():
    scores = torch.tensor([0.1, 0.5, 0.3, 0.05, 0.2])
    assert select_a8(scores, AnalyzeConfig(a8_budget=0.4)) == [1, 2]
    assert select_a8(scores, AnalyzeConfig(a8_count=3)) == [1, 2, 4]
    # the smallest A8 set whose remaining (A6) scores sum to at most the target
    assert select_a8(scores, AnalyzeConfig(kl_target=0.36)) == [1, 2]
    assert select_a8(scores, AnalyzeConfig(kl_target=10.0)) == []
