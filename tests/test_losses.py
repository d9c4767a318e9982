"""Tests of duel.losses against direct implementations and hand-computed cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from duel.losses import (
    barlow_twins_loss,
    byol_loss,
    info_nce,
    info_nce_from_logits,
    nt_xent,
)


def unit(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def reference_info_nce(query, positive, negatives, tau, eps):
    """Equation 17 term by term, with plain exponentials (float64 inputs)."""
    positive_term = torch.exp((query * positive).sum(1) / tau)
    negative_terms = torch.exp(query @ negatives.T / tau).sum(1)
    return (-torch.log(positive_term / (eps * positive_term + negative_terms))).mean()


def reference_nt_xent(z1, z2, tau):
    """SimCLR's NT-Xent as cross-entropy over the 2B - 1 other views."""
    views = torch.cat([z1, z2])
    logits = views @ views.T / tau
    logits.fill_diagonal_(float("-inf"))
    batch = z1.shape[0]
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
    return F.cross_entropy(logits, targets)


# ------------------------------------------------------------------ info_nce


def test_info_nce_eps_one_is_cross_entropy_with_positive_first():
    query, positive, negatives = unit(8, 5, seed=1), unit(8, 5, seed=2), unit(12, 5)
    logits = torch.cat(
        [(query * positive).sum(1, keepdim=True), query @ negatives.T], dim=1
    )
    expected = F.cross_entropy(logits / 0.5, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(info_nce(query, positive, negatives, tau=0.5), expected)


@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
def test_info_nce_matches_equation_17(eps):
    query, positive, negatives = unit(6, 4, seed=3), unit(6, 4, seed=4), unit(9, 4)
    torch.testing.assert_close(
        info_nce(query, positive, negatives, tau=0.2, eps=eps),
        reference_info_nce(query, positive, negatives, 0.2, eps),
    )


def test_info_nce_eps_zero_hand_computed_and_below_zero():
    # s+ = 1, s- = {0, -1}, tau = 1:
    # eps = 0: -log(e / (1 + 1/e)) = -1 + log(1 + 1/e) < 0, no lower bound at 0;
    # eps = 1: -1 + log(e + 1 + 1/e) > 0, as any cross-entropy.
    query = torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss_eps0 = info_nce(query, query, negatives, tau=1.0, eps=0.0)
    loss_eps1 = info_nce(query, query, negatives, tau=1.0, eps=1.0)
    assert loss_eps0.item() == pytest.approx(-1 + math.log(1 + math.exp(-1)))
    assert loss_eps1.item() == pytest.approx(-1 + math.log(math.e + 1 + math.exp(-1)))
    assert loss_eps0 < 0 < loss_eps1


def test_info_nce_grows_with_eps():
    query, positive, negatives = unit(8, 5, seed=5), unit(8, 5, seed=6), unit(7, 5)
    losses = [info_nce(query, positive, negatives, 0.5, eps) for eps in (0, 0.5, 1)]
    assert losses[0] < losses[1] < losses[2]


@pytest.mark.parametrize("eps", [0.0, 1e-6, 1.0])
def test_info_nce_stable_at_tiny_temperature(eps):
    query = unit(4, 3, seed=7, dtype=torch.float32).requires_grad_()
    negatives = unit(5, 3, seed=8, dtype=torch.float32)
    loss = info_nce(query, query.detach(), negatives, tau=1e-3, eps=eps)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(query.grad).all()


def test_info_nce_without_negatives():
    query = unit(3, 4)
    no_negatives = query.new_zeros(0, 4)
    assert info_nce(query, query, no_negatives, tau=0.5).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="eps = 0 needs at least one negative"):
        info_nce(query, query, no_negatives, tau=0.5, eps=0.0)


@pytest.mark.parametrize("tau", [0, -0.5, float("nan"), float("inf")])
def test_info_nce_rejects_bad_tau(tau):
    query = unit(3, 4)
    with pytest.raises(ValueError, match=r"tau must be .* got"):
        info_nce(query, query, query, tau=tau)


@pytest.mark.parametrize("eps", [-0.1, 1.5])
def test_info_nce_rejects_bad_eps(eps):
    query = unit(3, 4)
    with pytest.raises(ValueError, match=r"eps must be .*\[0, 1\].* got"):
        info_nce(query, query, query, tau=0.5, eps=eps)


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="query and positive"):
        info_nce(unit(3, 4), unit(2, 4), unit(5, 4), tau=0.5)
    with pytest.raises(ValueError, match=r"negatives must be \(N, 4\)"):
        info_nce(unit(3, 4), unit(3, 4), unit(5, 3), tau=0.5)
    with pytest.raises(ValueError, match="same batch size"):
        info_nce_from_logits(torch.zeros(3), torch.zeros(2, 4))


# ------------------------------------------------------------------- nt_xent


def test_nt_xent_matches_simclr_reference():
    z1, z2 = unit(16, 8, seed=9), unit(16, 8, seed=10)
    torch.testing.assert_close(nt_xent(z1, z2, tau=0.5), reference_nt_xent(z1, z2, 0.5))


def test_nt_xent_float32_gradients_match_reference():
    z1 = unit(8, 6, seed=11, dtype=torch.float32).requires_grad_()
    z2 = unit(8, 6, seed=12, dtype=torch.float32)
    nt_xent(z1, z2, tau=0.1).backward()
    ours = z1.grad.clone()
    z1.grad = None
    reference_nt_xent(z1, z2, 0.1).backward()
    torch.testing.assert_close(ours, z1.grad)


def test_nt_xent_memory_only_is_info_nce_both_ways():
    z1, z2, memory = unit(6, 5, seed=13), unit(6, 5, seed=14), unit(10, 5, seed=15)
    expected = (
        info_nce(z1, z2, memory, 0.5, eps=0.0) + info_nce(z2, z1, memory, 0.5, eps=0.0)
    ) / 2
    loss = nt_xent(z1, z2, 0.5, eps=0.0, extra_negatives=memory, include_batch=False)
    torch.testing.assert_close(loss, expected)


def test_nt_xent_mixed_adds_memory_to_the_batch_negatives():
    z1, z2, memory = unit(4, 5, seed=16), unit(4, 5, seed=17), unit(3, 5, seed=18)
    views = torch.cat([z1, z2])
    pairs = [4, 5, 6, 7, 0, 1, 2, 3]
    expected = 0.0
    for i, j in enumerate(pairs):
        others = [k for k in range(8) if k not in (i, j)]
        negatives = torch.cat([views[others], memory])
        expected += info_nce(views[i : i + 1], views[j : j + 1], negatives, 0.5)
    loss = nt_xent(z1, z2, 0.5, extra_negatives=memory)
    torch.testing.assert_close(loss, expected / 8)


def test_nt_xent_errors():
    z = unit(4, 5)
    with pytest.raises(ValueError, match="eps = 0 needs at least one negative"):
        nt_xent(z, z, 0.5, eps=0.0, include_batch=False)
    with pytest.raises(ValueError, match="z1 and z2"):
        nt_xent(z, unit(3, 5), 0.5)
    with pytest.raises(ValueError, match=r"extra_negatives must be \(M, 5\)"):
        nt_xent(z, z, 0.5, extra_negatives=unit(3, 4))
    with pytest.raises(ValueError, match="tau"):
        nt_xent(z, z, 0.0)


# ---------------------------------------------------------------- byol_loss


def test_byol_loss_values():
    a = torch.randn(5, 7, dtype=torch.float64)
    assert byol_loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(a, -a).item() == pytest.approx(4.0)
    b = torch.tensor([[1.0, 0.0]])
    assert byol_loss(b, torch.tensor([[0.0, 2.0]])).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="prediction and target"):
        byol_loss(a, a[:3])


# --------------------------------------------------------- barlow_twins_loss


def decorrelated(batch: int, dim: int) -> torch.Tensor:
    """(batch, dim) columns with zero mean, unit variance, zero correlation."""
    centred = torch.randn(batch, dim, dtype=torch.float64)
    centred = centred - centred.mean(0)
    orthonormal, _ = torch.linalg.qr(centred)
    return orthonormal * math.sqrt(batch)


def test_barlow_twins_zero_for_identical_decorrelated_views():
    z = decorrelated(32, 6)
    assert barlow_twins_loss(z, z).item() == pytest.approx(0.0, abs=1e-4)
    # Only the diagonal cares about scale and shift: standardisation removes both.
    assert barlow_twins_loss(z, 5 * z + 2).item() == pytest.approx(0.0, abs=1e-4)


def test_barlow_twins_diagonal_and_off_diagonal_terms():
    z = decorrelated(32, 6)
    # Anti-correlated views: every diagonal entry is -1, (1 - (-1))^2 = 4 each.
    assert barlow_twins_loss(z, -z).item() == pytest.approx(4 * 6, rel=1e-4)
    # Two copies of one column: the diagonal is fine, two off-diagonal entries
    # are 1, so the loss is 2 lambda.
    twin = torch.cat([z[:, :1], z[:, :1]], dim=1)
    loss = barlow_twins_loss(twin, twin, lambda_offdiag=0.1)
    assert loss.item() == pytest.approx(0.2, rel=1e-4)


def test_barlow_twins_matches_batchnorm_reference():
    generator = torch.Generator().manual_seed(19)
    z1, z2 = torch.randn(2, 10, 4, generator=generator)
    normalise = torch.nn.BatchNorm1d(4, affine=False)
    correlation = normalise(z1).T @ normalise(z2) / 10
    on_diagonal = torch.diagonal(correlation)
    off_diagonal = correlation - torch.diag(on_diagonal)
    expected = (1 - on_diagonal).pow(2).sum() + 5e-3 * off_diagonal.pow(2).sum()
    torch.testing.assert_close(barlow_twins_loss(z1, z2), expected)


def test_barlow_twins_errors():
    with pytest.raises(ValueError, match="B >= 2"):
        barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="lambda_offdiag must be >= 0, got -1"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 3), lambda_offdiag=-1)
