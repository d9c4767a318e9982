"""The active memory and its replacement policies (SPEC 3-4, the paper's Definition 2).

An :class:`ActiveMemory` holds ``size`` slots. Each slot stores a unit-norm feature
used by the policy, an item (by default a dataset index, so a method can fetch the
image again) and a label kept for analysis only: no policy reads a label.

The ``duel`` policy evicts, for every incoming sample and one sample at a time, the
memory element with the highest duplication score

    s_i = sum_{j in S, j != i} p(m_i, m_j),   S = M + {x},
    p(a, b) = exp((a . b - 1) / tau),

which is the element with the least distinctiveness ``-log(s_i / |S|)``. The
similarity kernel and the rule that the incoming sample counts as a neighbour are
reconstructed from the paper's text (SPEC 3 and 4).

Example:
    >>> import torch
    >>> from duel.memory import ActiveMemory
    >>> memory = ActiveMemory(size=3, dim=3, policy="duel")
    >>> a, b, c = torch.eye(3)
    >>> memory.update(torch.stack([a, a, b])).tolist()  # fills the empty slots
    [0, 1, 2]
    >>> memory.update(c[None]).tolist()  # evicts the first of the duplicated a
    [0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

POLICIES = ("duel", "fifo", "reservoir", "random")

# Two scores closer than this (relative to the larger) count as a tie and the lowest
# slot wins. Accumulated and freshly computed scores differ by rounding only, far
# below this, so both give the same evictions.
TIE_TOLERANCE = 1e-9

# The safe rule (Algorithm 2) inserts only when the memory's total log-score drops
# by more than this, relative: scores kept by adding and subtracting columns carry
# rounding that a sum of logarithms of small scores amplifies.
SAFE_TOLERANCE = 1e-6

# Features further than this from unit norm are refused: the duplication
# probability is only bounded by 1 for unit vectors.
NORM_TOLERANCE = 1e-3


def duplication_probability(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Mutual duplication probability of every pair (SPEC 3, reconstructed).

    Args:
        a: (n, dim) unit-norm features.
        b: (m, dim) unit-norm features.
        tau: temperature, > 0.

    Returns:
        (n, m) values in (0, 1]; 1 for identical features.
    """
    return torch.exp((a @ b.T - 1.0) / tau)


class ActiveMemory(nn.Module):
    """A fixed-size memory of features and items, updated by a replacement policy.

    All state (features, items, analysis labels, duplication scores, fill count,
    samples seen and the random generator of the random policies) lives in the
    module's ``state_dict``, so checkpoints restore the memory exactly.

    Args:
        size: number of slots K, >= 1.
        dim: feature dimension Z, >= 1.
        policy: one of ``POLICIES``.
        tau: temperature of the duplication probability, > 0 (``duel`` only).
        safe: ``duel`` only: skip an insertion that would not raise the memory's
            total distinctiveness (the paper's Appendix C, Algorithm 2).
        seed: seed of the generator used by ``reservoir`` and ``random`` and by
            :meth:`sample`.
        item_shape: shape of one stored item; ``()`` stores one integer per slot.
        item_dtype: dtype of stored items.
        dtype: dtype of stored features and of the policy's arithmetic.

    Raises:
        ValueError: on an argument outside the accepted range.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        policy: str = "duel",
        tau: float = 0.5,
        safe: bool = False,
        seed: int = 0,
        item_shape: Sequence[int] = (),
        item_dtype: torch.dtype = torch.long,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        _check_int("size", size, minimum=1)
        _check_int("dim", dim, minimum=1)
        if policy not in POLICIES:
            raise ValueError(
                f"policy must be one of {', '.join(POLICIES)}, got {policy!r}"
            )
        if not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
        if safe and (policy != "duel" or size < 2):
            raise ValueError(
                "safe=True needs policy 'duel' and size >= 2, "
                f"got policy {policy!r} and size {size}"
            )
        _check_int("seed", seed, minimum=0)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"dtype must be torch.float32 or torch.float64, got {dtype}"
            )

        self.size = size
        self.dim = dim
        self.policy = policy
        self.tau = float(tau)
        self.safe = safe
        self.item_shape = tuple(item_shape)
        self.generator = torch.Generator().manual_seed(seed)

        self.register_buffer("features", torch.zeros(size, dim, dtype=dtype))
        self.register_buffer(
            "items", torch.full((size, *self.item_shape), -1, dtype=item_dtype)
        )
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        # Duplication score of each slot among the memory (float64: it is updated
        # incrementally over many steps and must not drift).
        self.register_buffer("scores", torch.zeros(size, dtype=torch.float64))
        # Number of samples offered when each slot was last written (its age).
        self.register_buffer("written_at", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

        # p(m_i, m_j) of every pair of slots, kept between updates so that a step
        # costs O(K B Z) rather than O(K^2 Z). Derived state: rebuilt from the
        # features when missing (after a move to another device, say).
        self._pairwise: np.ndarray | None = None

    # ------------------------------------------------------------------ state

    @property
    def num_filled(self) -> int:
        """Number of occupied slots (the first ``num_filled`` slots)."""
        return int(self.filled)

    @property
    def is_full(self) -> bool:
        return self.num_filled == self.size

    def stored_features(self) -> Tensor:
        """Features of the occupied slots, (num_filled, dim)."""
        return self.features[: self.num_filled]

    def get_extra_state(self) -> dict[str, Tensor]:
        # The pairwise cache is saved too: rebuilt from the features it would round
        # differently, and a resumed run would not evict exactly as an unbroken one.
        pairwise = torch.empty(0) if self._pairwise is None else self._pairwise
        return {
            "generator_state": self.generator.get_state(),
            "pairwise": torch.as_tensor(pairwise).clone(),
        }

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator_state"])
        pairwise = state.get("pairwise")
        usable = pairwise is not None and tuple(pairwise.shape) == (self.size,) * 2
        self._pairwise = pairwise.numpy().copy() if usable else None

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        # Moving or casting the buffers invalidates the cached pairwise matrix.
        self._pairwise = None
        return super()._apply(fn, recurse)

    # --------------------------------------------------------------- analysis

    def duplication_scores(self) -> Tensor:
        """Duplication score of each occupied slot among the memory, (num_filled,)."""
        return self.scores[: self.num_filled].clone()

    def distinctiveness(self) -> Tensor:
        """Distinctiveness information ``-log(s_i / |M|)`` per occupied slot (nats).

        Only meaningful for the ``duel`` policy, which keeps the scores.
        """
        n = self.num_filled
        if n < 2:
            return torch.zeros(n, dtype=torch.float64)
        return -torch.log(self.scores[:n] / n)

    def recompute_scores(self) -> Tensor:
        """Scores from scratch, (num_filled,) float64; the stored ones are unchanged."""
        n = self.num_filled
        stored = self.features[:n].to(torch.float64)
        pairwise = duplication_probability(stored, stored, self.tau)
        pairwise.fill_diagonal_(0.0)
        return pairwise.sum(dim=1).cpu()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws occupied slots uniformly without replacement.

        Args:
            n: how many, >= 1; fewer come back while the memory holds fewer.
            generator: CPU generator; the memory's own when None.

        Returns:
            (min(n, num_filled),) slot indices on the memory's device.
        """
        _check_int("n", n, minimum=1)
        generator = self.generator if generator is None else generator
        order = torch.randperm(self.num_filled, generator=generator)
        return order[:n].to(self.features.device)

    # ----------------------------------------------------------------- update

    @torch.no_grad()
    def update(
        self,
        features: Tensor,
        labels: Tensor | None = None,
        items: Tensor | None = None,
    ) -> Tensor:
        """Offers a batch to the memory, one sample at a time, in order.

        Args:
            features: (B, dim) unit-norm features of the incoming samples.
            labels: (B,) class labels, stored for analysis only; -1 when None.
            items: (B, *item_shape) items to store beside the features.

        Returns:
            (B,) long tensor: the slot each sample was written to, or -1 where the
            policy did not store it. A later sample of the same batch may overwrite
            an earlier one.

        Raises:
            ValueError: on a shape, dimension or non-finite/non-unit feature.
        """
        batch = self._check_batch(features, labels, items)
        features = features.detach().to(self.features.dtype)
        if self.policy == "duel":
            slots = self._duel(features)
        else:
            slots = self._simple_policy(batch)
        self._write(slots, features, labels, items)
        return slots.to(features.device)

    def _check_batch(
        self, features: Tensor, labels: Tensor | None, items: Tensor | None
    ) -> int:
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"features must have shape (B, {self.dim}), got {tuple(features.shape)}"
            )
        batch = features.shape[0]
        if not torch.isfinite(features).all():
            raise ValueError("features must be finite, got NaN or infinite values")
        norms = features.detach().double().norm(dim=1)
        if batch and (norms - 1).abs().max() > NORM_TOLERANCE:
            raise ValueError(
                "features must be unit norm (normalise them first), got norms in "
                f"[{norms.min():.4f}, {norms.max():.4f}]"
            )
        if labels is not None and tuple(labels.shape) != (batch,):
            raise ValueError(
                f"labels must have shape ({batch},), got {tuple(labels.shape)}"
            )
        if items is not None and tuple(items.shape) != (batch, *self.item_shape):
            raise ValueError(
                f"items must have shape {(batch, *self.item_shape)}, "
                f"got {tuple(items.shape)}"
            )
        return batch

    def _write(
        self,
        slots: Tensor,
        features: Tensor,
        labels: Tensor | None,
        items: Tensor | None,
    ) -> None:
        # Later samples of the batch overwrite earlier ones in the same slot, so
        # keep only the last write per slot before scattering.
        seen_before = int(self.seen)
        order = torch.arange(len(slots))
        final: dict[int, int] = {}
        for position, slot in zip(order.tolist(), slots.tolist(), strict=True):
            if slot >= 0:
                final[slot] = position
        if final:
            where = torch.tensor(list(final.keys()), device=self.features.device)
            source = torch.tensor(list(final.values()), device=self.features.device)
            self.features[where] = features[source].to(self.features.device)
            if labels is not None:
                self.labels[where] = labels[source].to(self.labels.device)
            else:
                self.labels[where] = -1
            if items is not None:
                self.items[where] = items[source].to(
                    self.items.device, self.items.dtype
                )
            else:
                self.items[where] = -1
            self.written_at[where] = source + seen_before
        self.seen += len(slots)

    # ------------------------------------------------------- simple policies

    def _simple_policy(self, batch: int) -> Tensor:
        """FIFO, reservoir and random replacement; slots on the CPU."""
        slots = torch.full((batch,), -1, dtype=torch.long)
        filled, seen = self.num_filled, int(self.seen)
        for t in range(batch):
            if self.policy == "fifo":
                slots[t] = (seen + t) % self.size
            elif filled < self.size:
                slots[t] = filled
            elif self.policy == "reservoir":
                # Classic reservoir sampling: keep the (n+1)-th sample with
                # probability K / (n+1), in a uniformly chosen slot.
                j = int(torch.randint(seen + t + 1, (1,), generator=self.generator))
                slots[t] = j if j < self.size else -1
            else:
                slots[t] = int(torch.randint(self.size, (1,), generator=self.generator))
            filled = min(filled + 1, self.size)
        self.filled.fill_(filled)
        return slots

    # ----------------------------------------------------------- DUEL policy

    def _pairwise_matrix(self) -> np.ndarray:
        """Cached (K, K) duplication probabilities among occupied slots, diag 0."""
        if self._pairwise is None:
            stored = self.features.cpu()
            pairwise = duplication_probability(stored, stored, self.tau)
            pairwise.fill_diagonal_(0.0)
            self._pairwise = pairwise.numpy()
        return self._pairwise

    def _duel(self, incoming: Tensor) -> Tensor:
        """The batched DUEL update (SPEC 4, "selection array" form).

        One similarity product of the batch against memory and batch, then
        O(K + B) work per insertion: add the newcomer's row to every score,
        take the argmax over the slots, subtract the evicted element's column.

        The per-insertion loop is numpy on preallocated float64 buffers: at
        K = 2048 one insertion is a handful of vector operations whose cost is
        mostly numpy's per-call overhead, so the loop issues as few calls as
        it can (see ``benchmarks/policy.py`` for what it costs).
        """
        size, batch = self.size, incoming.shape[0]
        filled = self.num_filled
        pairwise = self._pairwise_matrix()

        # to_slot: (B, K) p(content of slot k, x_t), a view into the product;
        # column k is rewritten when slot k changes, so row t stays current.
        # among_batch: (B, B) p(x_t, x_u), diagonal 0.
        both = torch.cat([self.features, incoming]).cpu()
        similarity = duplication_probability(incoming.cpu(), both, self.tau).numpy()
        to_slot = similarity[:, :size]
        among_batch = similarity[:, size:].copy()
        np.fill_diagonal(among_batch, 0.0)
        scores = self.scores.cpu().numpy().copy()

        # source[k]: which incoming sample slot k now holds (-1: the stored one).
        # replaced_slots[:n_replaced] lists those slots, in first-replaced order,
        # and replaced_sources the sample each holds, so that the column of an
        # evicted stored element is patched without scanning all K slots.
        # Scalars live in Python lists: numpy's scalar access costs more than
        # Python's, and the loop does a few per insertion.
        source = [-1] * size
        position = [-1] * size
        replaced_slots = np.empty(batch, dtype=np.int64)
        replaced_sources = np.empty(batch, dtype=np.int64)
        n_replaced = 0
        slots = [-1] * batch
        candidate, after, evicted = np.empty(size), np.empty(size), np.empty(size)
        total_log: float | None = None  # sum log(scores), for the safe rule
        for t in range(batch):
            to_new = to_slot[t]
            if filled < size:
                r = filled
                scores[:filled] += to_new[:filled]
                scores[r] = to_new[:filled].sum()
                filled += 1
            else:
                np.add(scores, to_new, out=candidate)
                r = int(candidate.argmax())
                best = float(candidate[r])
                # argmax already returns the first exact maximum; a slot before
                # r within the tie tolerance wins too (lowest index).
                threshold = best - TIE_TOLERANCE * abs(best)
                if r and candidate[:r].max() >= threshold:
                    r = int(np.argmax(candidate[:r] >= threshold))

                # after = scores - p(content of r, every slot) + to_new.
                if source[r] >= 0:
                    # Slot r holds a sample of this batch: its row is current,
                    # and 0 at r itself.
                    np.subtract(scores, to_slot[source[r]], out=after)
                else:
                    np.copyto(evicted, pairwise[r])
                    if n_replaced:
                        sources = replaced_sources[:n_replaced]
                        evicted[replaced_slots[:n_replaced]] = to_slot[sources, r]
                    np.subtract(scores, evicted, out=after)
                after += to_new
                after[r] = to_new.sum() - to_new[r]
                if self.safe:
                    if total_log is None:
                        total_log = float(np.log(scores).sum())
                    new_log = float(np.log(after).sum())
                    if not _total_log_drops(total_log, new_log):
                        continue
                    total_log = new_log
                scores, after = after, scores
            slots[t] = r
            if source[r] < 0:
                position[r] = n_replaced
                replaced_slots[n_replaced] = r
                n_replaced += 1
            replaced_sources[position[r]] = t
            source[r] = t
            to_slot[:, r] = among_batch[t]

        self.filled.fill_(filled)
        self.scores.copy_(torch.from_numpy(scores))
        self._refresh_pairwise(
            pairwise,
            replaced_slots[:n_replaced],
            to_slot[replaced_sources[:n_replaced]],
        )
        return torch.tensor(slots, dtype=torch.long)

    @staticmethod
    def _refresh_pairwise(
        pairwise: np.ndarray, replaced: np.ndarray, rows: np.ndarray
    ) -> None:
        """Writes the rows and columns of the slots replaced in this batch.

        Args:
            pairwise: (K, K) cache, updated in place.
            replaced: (R,) slots whose content changed.
            rows: (R, K) p(new content of replaced[i], content of slot k).
        """
        if len(replaced) == 0:
            return
        # Columns first, then rows: where two replaced slots meet, the row write
        # wins, as it always has (the product need not be bit-symmetric).
        # torch's index_copy_ writes the R scattered columns several times
        # faster than numpy's fancy assignment.
        torch.from_numpy(pairwise).index_copy_(
            1, torch.from_numpy(replaced), torch.from_numpy(rows.T)
        )
        pairwise[replaced, :] = rows
        pairwise[replaced, replaced] = 0.0


def _total_log_drops(old: float, new: float) -> bool:
    """Whether the total distinctiveness -sum log(s_i / K) goes up (Algorithm 2).

    Args:
        old: sum of log scores before the insertion.
        new: sum of log scores after it.

    A change within rounding of zero (swapping a duplicate for its twin) is no rise.
    """
    return new < old - SAFE_TOLERANCE * max(1.0, abs(old))


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
