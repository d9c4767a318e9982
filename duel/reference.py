"""DUEL as the paper states it, one insertion at a time (SPEC 4).

Two plain implementations that recompute every duplication score for every
insertion, with no cache and no incremental bookkeeping:

- :func:`reference_duel` is the specification the batched
  :meth:`duel.memory.ActiveMemory.update` is tested against (float64, safe rule
  included);
- :func:`reference_duel_update` is the same rule arranged for timing: it starts
  from a full memory and recomputes the scores with one (K+1) x (K+1) product
  per insertion, in the memory's dtype. It is what ``benchmarks/policy.py``
  compares the batched update with, so its cost is the O(B K^2 Z) the paper's
  Appendix D avoids.

Example:
    >>> import torch
    >>> from duel.reference import reference_duel
    >>> a, b, c = torch.eye(3, dtype=torch.float64)
    >>> reference_duel(torch.stack([a, a, b, c]), size=3, tau=0.5)
    [0, 1, 2, 0]
"""

from __future__ import annotations

import torch
from torch import Tensor

from duel.memory import SAFE_TOLERANCE, TIE_TOLERANCE


def reference_duel(
    stream: Tensor, size: int, tau: float, safe: bool = False
) -> list[int]:
    """DUEL as the paper states it: every score recomputed for every insertion.

    Args:
        stream: (N, dim) float64 unit features, offered one at a time.
        size: memory slots K.
        tau: temperature of the duplication probability.
        safe: apply the safe insertion rule (Algorithm 2).

    Returns:
        For each sample, the slot it was written to, or -1 where the safe rule
        skipped it.
    """
    memory: list[Tensor] = []
    slots = []
    for x in stream:
        if len(memory) < size:
            memory.append(x)
            slots.append(len(memory) - 1)
            continue
        everyone = torch.stack([*memory, x])
        probability = torch.exp((everyone @ everyone.T - 1) / tau)
        probability.fill_diagonal_(0)
        scores = probability[:size].sum(1)  # each slot over M + {x}
        best = scores.max()
        r = int(torch.nonzero(scores >= best - TIE_TOLERANCE * abs(best))[0])
        if safe:
            before = probability[:size, :size].sum(1)
            kept = [i for i in range(size + 1) if i != r]
            after = probability[kept][:, kept].sum(1)
            old, new = float(before.log().sum()), float(after.log().sum())
            if not new < old - SAFE_TOLERANCE * max(1.0, abs(old)):
                slots.append(-1)
                continue
        memory[r] = x
        slots.append(r)
    return slots


@torch.no_grad()
def reference_duel_update(memory: Tensor, incoming: Tensor, tau: float) -> Tensor:
    """Offers a batch to a full memory, recomputing all scores per insertion.

    The timing twin of :func:`reference_duel` (no safe rule): the same
    decisions, but the memory lives in one preallocated (K+1, dim) tensor and
    each insertion costs one (K+1) x (K+1) similarity product.

    Args:
        memory: (K, dim) unit-norm features of a full memory; updated in place.
        incoming: (B, dim) unit-norm features, offered one at a time.
        tau: temperature of the duplication probability, > 0.

    Returns:
        (B,) long tensor, the slot each sample was written to.
    """
    size = memory.shape[0]
    everyone = torch.cat([memory, memory[:1]])  # (K+1, dim): M, then x
    slots = torch.empty(len(incoming), dtype=torch.long)
    for t, x in enumerate(incoming):
        everyone[size] = x
        probability = (everyone @ everyone.T).sub_(1.0).div_(tau).exp_()
        probability.fill_diagonal_(0.0)
        scores = probability[:size].sum(1, dtype=torch.float64)  # over M + {x}
        best = scores.max()
        r = int(torch.nonzero(scores >= best - TIE_TOLERANCE * abs(best))[0])
        everyone[r] = x
        slots[t] = r
    memory.copy_(everyone[:size])
    return slots
