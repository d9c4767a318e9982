"""Self-supervised losses: general InfoNCE, NT-Xent, BYOL and Barlow Twins.

The contrastive losses take the paper's general InfoNCE (Appendix E,
Equation 17, SPEC 5)

    L = -log( e^{s+/tau} / (eps * e^{s+/tau} + sum_neg e^{s-/tau}) ),

where ``eps = 1`` is the usual InfoNCE and ``eps = 0`` drops the positive from
the denominator. Everything is computed in log space, so no exponential is
ever formed.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from duel.losses import nt_xent
    >>> z1 = F.normalize(torch.randn(8, 16), dim=1)
    >>> z2 = F.normalize(z1 + 0.1 * torch.randn(8, 16), dim=1)
    >>> nt_xent(z1, z2, tau=0.5).shape
    torch.Size([])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_tau_eps(tau: float, eps: float) -> None:
    if not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if not (isinstance(eps, int | float) and 0.0 <= eps <= 1.0):
        raise ValueError(f"eps must be a number in [0, 1], got {eps!r}")


def info_nce_from_logits(
    positive_logits: Tensor, negative_logits: Tensor, eps: float = 1.0
) -> Tensor:
    """General InfoNCE from logits that already carry the temperature.

    Args:
        positive_logits: (B,) s+/tau per query.
        negative_logits: (B, N) s-/tau per query and negative.
        eps: weight of the positive in the denominator, in [0, 1].

    Returns:
        Scalar, the mean loss over the B queries.

    Raises:
        ValueError: on mismatched shapes, eps outside [0, 1], or eps = 0 with no
            negatives (the denominator would be empty).
    """
    if not (isinstance(eps, int | float) and 0.0 <= eps <= 1.0):
        raise ValueError(f"eps must be a number in [0, 1], got {eps!r}")
    if positive_logits.ndim != 1 or negative_logits.ndim != 2:
        raise ValueError(
            "positive_logits must be (B,) and negative_logits (B, N), got "
            f"{tuple(positive_logits.shape)} and {tuple(negative_logits.shape)}"
        )
    if negative_logits.shape[0] != positive_logits.shape[0]:
        raise ValueError(
            "positive_logits and negative_logits must have the same batch size, got "
            f"{positive_logits.shape[0]} and {negative_logits.shape[0]}"
        )
    if eps == 0 and negative_logits.shape[1] == 0:
        raise ValueError("eps = 0 needs at least one negative, got none")

    # denominator_logits: (B, 1 + N) or (B, N); log(eps * e^x) = x + log(eps).
    if eps == 0:
        denominator_logits = negative_logits
    else:
        weighted_positive = positive_logits + math.log(eps)
        denominator_logits = torch.cat([weighted_positive[:, None], negative_logits], 1)
    return (torch.logsumexp(denominator_logits, dim=1) - positive_logits).mean()


def info_nce(
    query: Tensor, positive: Tensor, negatives: Tensor, tau: float, eps: float = 1.0
) -> Tensor:
    """General InfoNCE with one set of negatives shared by all queries.

    Args:
        query: (B, Z) unit norm.
        positive: (B, Z) unit norm, the positive of each query.
        negatives: (N, Z) unit norm, shared by all queries; N may be 0 if eps > 0.
        tau: temperature, > 0.
        eps: weight of the positive in the denominator, in [0, 1].

    Returns:
        Scalar, the mean loss over the batch.

    Raises:
        ValueError: on tau <= 0, eps outside [0, 1] or mismatched shapes.
    """
    _check_tau_eps(tau, eps)
    if query.ndim != 2 or query.shape != positive.shape:
        raise ValueError(
            "query and positive must both be (B, Z), got "
            f"{tuple(query.shape)} and {tuple(positive.shape)}"
        )
    if negatives.ndim != 2 or negatives.shape[1] != query.shape[1]:
        raise ValueError(
            f"negatives must be (N, {query.shape[1]}), got {tuple(negatives.shape)}"
        )

    positive_logits = (query * positive).sum(dim=1) / tau  # (B,)
    negative_logits = query @ negatives.T / tau  # (B, N)
    return info_nce_from_logits(positive_logits, negative_logits, eps)


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    tau: float,
    eps: float = 1.0,
    extra_negatives: Tensor | None = None,
    include_batch: bool = True,
) -> Tensor:
    """SimCLR's symmetric NT-Xent over the 2B views, with optional extra negatives.

    Each of the 2B views is a query whose positive is its pair; its negatives are
    the other 2B - 2 views (when ``include_batch``) and ``extra_negatives``.
    With ``include_batch=True``, ``eps=1`` and no extras it is the standard
    NT-Xent of SimCLR.

    Args:
        z1: (B, Z) unit norm, first views.
        z2: (B, Z) unit norm, second views; row i pairs with z1's row i.
        tau: temperature, > 0.
        eps: weight of the positive in the denominator, in [0, 1].
        extra_negatives: (M, Z) unit norm, negatives for every view (D-SimCLR's
            memory items). Gradients flow into them unless they are detached.
        include_batch: whether the other views of the batch are negatives.

    Returns:
        Scalar, the mean loss over the 2B views.

    Raises:
        ValueError: on tau <= 0, eps outside [0, 1], mismatched shapes, or eps = 0
            with no negatives at all.
    """
    _check_tau_eps(tau, eps)
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            "z1 and z2 must both be (B, Z), got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if extra_negatives is not None and (
        extra_negatives.ndim != 2 or extra_negatives.shape[1] != z1.shape[1]
    ):
        raise ValueError(
            f"extra_negatives must be (M, {z1.shape[1]}), "
            f"got {tuple(extra_negatives.shape)}"
        )

    batch = z1.shape[0]
    views = torch.cat([z1, z2])  # (2B, Z)
    pair = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
    pair = pair.to(views.device)
    positive_logits = (views * views[pair]).sum(dim=1) / tau  # (2B,)

    negative_blocks = []
    if include_batch:
        similarity = views @ views.T / tau  # (2B, 2B)
        is_negative = torch.ones_like(similarity, dtype=torch.bool)
        is_negative.fill_diagonal_(False)
        is_negative[torch.arange(2 * batch, device=views.device), pair] = False
        negative_blocks.append(similarity[is_negative].view(2 * batch, 2 * batch - 2))
    if extra_negatives is not None:
        negative_blocks.append(views @ extra_negatives.T / tau)  # (2B, M)
    if negative_blocks:
        negative_logits = torch.cat(negative_blocks, dim=1)  # (2B, N)
    else:
        negative_logits = views.new_zeros(2 * batch, 0)
    return info_nce_from_logits(positive_logits, negative_logits, eps)


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's regression loss 2 - 2 cos(prediction, target), mean over the batch.

    Both inputs are normalised here. The target should come from the target
    network under ``torch.no_grad()``; this function does not detach it.

    Args:
        prediction: (B, Z) online predictions.
        target: (B, Z) target projections.

    Returns:
        Scalar in [0, 4].

    Raises:
        ValueError: on mismatched shapes.
    """
    if prediction.ndim != 2 or prediction.shape != target.shape:
        raise ValueError(
            "prediction and target must both be (B, Z), got "
            f"{tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    cosine = torch.nn.functional.cosine_similarity(prediction, target, dim=1)
    return (2 - 2 * cosine).mean()


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float = 5e-3) -> Tensor:
    """Barlow Twins' redundancy-reduction loss.

    Each dimension is standardised over the batch (as a BatchNorm without affine
    parameters: biased variance, 1e-5 added), the cross-correlation matrix
    ``C = z1_std^T z2_std / B`` is formed, and the loss is
    ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``.

    Args:
        z1: (B, Z) projections of the first views, B >= 2.
        z2: (B, Z) projections of the second views.
        lambda_offdiag: weight of the redundancy term, >= 0 (paper: 5e-3).

    Returns:
        Scalar.

    Raises:
        ValueError: on mismatched shapes, B < 2 or a negative lambda.
    """
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(
            "z1 and z2 must both be (B, Z) with B >= 2, got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if not lambda_offdiag >= 0:
        raise ValueError(f"lambda_offdiag must be >= 0, got {lambda_offdiag!r}")

    batch = z1.shape[0]
    cross_correlation = _standardise(z1).T @ _standardise(z2) / batch  # (Z, Z)
    on_diagonal = torch.diagonal(cross_correlation)
    off_diagonal = cross_correlation - torch.diag_embed(on_diagonal)
    return (1 - on_diagonal).pow(2).sum() + lambda_offdiag * off_diagonal.pow(2).sum()


def _standardise(z: Tensor, variance_eps: float = 1e-5) -> Tensor:
    """(B, Z) -> (B, Z), zero mean and unit (biased) variance per dimension."""
    mean = z.mean(dim=0)
    variance = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(variance + variance_eps)
