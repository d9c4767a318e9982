"""The six self-supervised methods of the paper's Table 1 (SPEC 5).

Every method is a :class:`Method`: one shared training step (input checks,
the forward call, the logs, and an ``after_step`` that runs the momentum
updates and the memory update), to which each method adds only its loss and,
where it has a memory, what it offers to it. A trainer drives them all alike::

    loss, logs = method(view1, view2, indices)
    loss.backward()
    optimizer.step()
    method.after_step(labels)  # momentum networks, then the memory

``moco`` and ``d-moco`` are the same class: the key memory's replacement policy
is the only difference (FIFO queue vs DUEL), and ``memory_policy`` in the
config swaps it for any policy of :mod:`duel.memory`.

Labels reach a method only through ``after_step``, which hands them to the
memory's analysis buffer. No loss and no memory decision reads them.

Example:
    >>> import torch
    >>> from duel.methods import MethodConfig, build_method
    >>> config = MethodConfig(in_channels=1, image_size=8, memory_size=32)
    >>> method = build_method("d-moco", config)
    >>> views = torch.randn(16, 1, 8, 8), torch.randn(16, 1, 8, 8)
    >>> loss, logs = method(*views, indices=torch.arange(16))
    >>> loss.backward()
    >>> method.after_step()
    >>> method.memory.num_filled
    16
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from duel.losses import barlow_twins_loss, byol_loss, info_nce_from_logits, nt_xent
from duel.memory import POLICIES, ActiveMemory
from duel.models import (
    build_backbone,
    build_predictor,
    build_projector,
    make_target,
    momentum_update,
)

METHODS = ("simclr", "moco", "byol", "barlow", "d-moco", "d-simclr")
NEGATIVE_MODES = ("batch", "memory", "mixed")

# The memory policy each memory-based method uses when the config leaves it None.
DEFAULT_MEMORY_POLICY = {"moco": "fifo", "d-moco": "duel", "d-simclr": "duel"}

# Maps dataset indices (n,) to freshly augmented images (n, C, H, W).
FetchViews = Callable[[Tensor], Tensor]

# Collects rows (B, ...) from every training process, in rank order, into
# (world_size * B, ...); see duel.distributed.
GatherRows = Callable[[Tensor], Tensor]

# Spreads a batch (B, ...) over the training processes before an encoder (MoCo's
# shuffled BN): returns the rows this process encodes and the function that puts
# the encoded rows back in the batch's order.
ShuffleBatch = Callable[[Tensor], tuple[Tensor, Callable[[Tensor], Tensor]]]


def keep_local(rows: Tensor) -> Tensor:
    """The single-process :data:`GatherRows`: a process's own rows are all rows."""
    return rows


def no_shuffle(batch: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The single-process :data:`ShuffleBatch`: the batch stays as it is."""
    return batch, keep_local


@dataclass
class MethodConfig:
    """Hyper-parameters of every method; each method reads the ones it needs.

    Defaults follow the paper's CIFAR-10 setting (SPEC 6) except the backbone,
    which is the CPU profile's ``small`` CNN instead of ResNet-50.

    Attributes:
        backbone: one of :data:`duel.models.BACKBONES`.
        in_channels: image channels.
        image_size: image side length in pixels.
        projector: one of :data:`duel.models.PROJECTORS`.
        projection_dim: output dimension of the projector (the memory's dim).
        hidden_dim: hidden width of MLP projectors and of BYOL's predictor.
        projector_batch_norm: BatchNorm1d in the projector's hidden layers.
        tau: temperature of the contrastive losses and of the DUEL kernel.
        momentum: MoCo key-encoder momentum (paper: 0.9).
        byol_momentum: BYOL target momentum, constant (BYOL's paper anneals it
            toward 1; a constant keeps short CPU runs comparable).
        barlow_lambda: Barlow Twins' off-diagonal weight.
        memory_size: memory slots K.
        memory_policy: replacement policy, or None for the method's default
            (``moco``: fifo, ``d-moco`` and ``d-simclr``: duel). Ignored by the
            methods without a memory.
        memory_draw: D-SimCLR: memory items drawn per step as negatives.
        negatives: D-SimCLR: ``batch`` (SimCLR's), ``memory`` or ``mixed``.
        eps: weight of the positive in the InfoNCE denominator (SPEC 5);
            used by simclr, moco, d-moco and d-simclr.
        safe: DUEL's safe insertion rule (the paper's Algorithm 2).
        memory_seed: seed of the memory's random generator.
    """

    backbone: str = "small"
    in_channels: int = 3
    image_size: int = 32
    projector: str = "linear"
    projection_dim: int = 256
    hidden_dim: int = 2048
    projector_batch_norm: bool = False
    tau: float = 0.5
    momentum: float = 0.9
    byol_momentum: float = 0.99
    barlow_lambda: float = 5e-3
    memory_size: int = 2048
    memory_policy: str | None = None
    memory_draw: int = 256
    negatives: str = "mixed"
    eps: float = 1.0
    safe: bool = False
    memory_seed: int = 0


class Method(nn.Module):
    """The shared training step; subclasses add their loss and memory offer.

    Attributes:
        backbone: the encoder f that evaluation reads (frozen features).
        projector: the projection head g.
        memory: the active memory, or None for methods without one.
        config: the configuration, with ``memory_policy`` resolved.
        gather_rows: how ``after_step`` collects what every training process
            offers the memory; :func:`keep_local` in a single process. A
            multi-process trainer sets it, and every process then applies the
            same update to the same gathered batch, so all memories agree.
    """

    def __init__(self, config: MethodConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.feature_dim = build_backbone(
            config.backbone, config.in_channels, config.image_size
        )
        self.projector = build_projector(
            config.projector,
            self.feature_dim,
            config.projection_dim,
            config.hidden_dim,
            config.projector_batch_norm,
        )
        self.memory: ActiveMemory | None = None
        # What the last forward offers the memory: features (B, Z) detached and
        # unit norm, items (B,). after_step inserts it once the optimiser has
        # stepped, so a step's own batch never serves as memory negatives.
        self._memory_offer: tuple[Tensor, Tensor] | None = None
        self.gather_rows: GatherRows = keep_local

    def project(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, projection_dim), through backbone and projector."""
        return self.projector(self.backbone(images))

    def encode(self, images: Tensor) -> Tensor:
        """Backbone features (B, feature_dim) for evaluation.

        Call under ``torch.no_grad()`` and ``eval()`` for frozen features.
        """
        return self.backbone(images)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters an optimiser should update (not the momentum copies)."""
        return (parameter for parameter in self.parameters() if parameter.requires_grad)

    def forward(
        self, view1: Tensor, view2: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """One training step's loss.

        Args:
            view1: (B, C, H, W) first augmented views, B >= 2.
            view2: (B, C, H, W) second views of the same images.
            indices: (B,) dataset indices of the images (D-SimCLR stores them in
                its memory; every memory keeps them for analysis).

        Returns:
            The scalar loss, with gradient, and logs of floats (``loss`` and
            method-specific entries).

        Raises:
            ValueError: on mismatched shapes.
        """
        if view1.ndim != 4 or view1.shape != view2.shape or view1.shape[0] < 2:
            raise ValueError(
                "view1 and view2 must both be (B, C, H, W) with B >= 2, got "
                f"{tuple(view1.shape)} and {tuple(view2.shape)}"
            )
        if tuple(indices.shape) != (view1.shape[0],):
            raise ValueError(
                f"indices must have shape ({view1.shape[0]},), "
                f"got {tuple(indices.shape)}"
            )

        self._memory_offer = None
        loss, logs = self.training_loss(view1, view2, indices)
        return loss, {"loss": float(loss.detach()), **logs}

    def training_loss(
        self, view1: Tensor, view2: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """The method's loss; may set ``self._memory_offer``."""
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module, float]]:
        """(online, target, momentum) triples that ``after_step`` updates."""
        return []

    @torch.no_grad()
    def after_step(self, labels: Tensor | None = None) -> None:
        """Momentum updates, then the memory update; call after ``optimizer.step()``.

        In a multi-process run the offers of all processes are gathered in rank
        order first (``gather_rows``), so every process must call it, and all
        with labels or all without.

        Args:
            labels: (B,) class labels of the last batch, or None. They are only
                written into the memory's analysis buffer (``memory.labels``);
                nothing that trains or decides reads them.
        """
        for online, target, momentum in self.momentum_pairs():
            momentum_update(online, target, momentum)

        if self.memory is None or self._memory_offer is None:
            return
        features, items = self._memory_offer
        self._memory_offer = None
        if labels is not None:
            labels = self.gather_rows(labels)
        self.memory.update(
            self.gather_rows(features), labels=labels, items=self.gather_rows(items)
        )


class SimCLR(Method):
    """SimCLR: NT-Xent over the two views, in-batch negatives."""

    def training_loss(
        self, view1: Tensor, view2: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        z1 = F.normalize(self.project(view1), dim=1)  # (B, Z)
        z2 = F.normalize(self.project(view2), dim=1)
        return nt_xent(z1, z2, self.config.tau, self.config.eps), {}


class MoCo(Method):
    """MoCoV2, and D-MoCo when the key memory follows the DUEL policy.

    The query encoder is backbone + projector; the key encoder is its momentum
    copy. Like the original MoCo the loss is one-directional (queries from
    view1, keys from view2), which is half the cost of a symmetric loss and
    matches the paper's cost table, where MoCoV2 trains faster than SimCLR.
    Negatives of a query are the memory's keys plus the other keys of the
    batch; the batch's keys then enter the memory.

    In a multi-process run the other keys of the batch are this process's only
    (local in-batch negatives, as in the original MoCo); the memory's keys are
    those of every process. ``shuffle_keys`` is the original's shuffled
    BatchNorm across processes (:class:`duel.distributed.KeyShuffle`).

    Known limit: a single process has no shuffled BatchNorm (``shuffle_keys``
    is :func:`no_shuffle`), so the key encoder's batch statistics can leak
    information between a query and its key on a single device.
    """

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        self.key_backbone = make_target(self.backbone)
        self.key_projector = make_target(self.projector)
        self.memory = ActiveMemory(
            size=config.memory_size,
            dim=config.projection_dim,
            policy=config.memory_policy,
            tau=config.tau,
            safe=config.safe,
            seed=config.memory_seed,
        )
        self.shuffle_keys: ShuffleBatch = no_shuffle

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module, float]]:
        momentum = self.config.momentum
        return [
            (self.backbone, self.key_backbone, momentum),
            (self.projector, self.key_projector, momentum),
        ]

    def training_loss(
        self, view1: Tensor, view2: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        tau, batch = self.config.tau, view1.shape[0]
        query = F.normalize(self.project(view1), dim=1)  # (B, Z)
        with torch.no_grad():
            shuffled, unshuffle = self.shuffle_keys(view2)
            key = unshuffle(self.key_projector(self.key_backbone(shuffled)))
            key = F.normalize(key, dim=1)  # (B, Z)
        # A copy, so that the memory update after the step cannot alter what
        # the graph saved for backward.
        memory_keys = self.memory.stored_features().clone()  # (K', Z), K' filled

        positive_logits = (query * key).sum(dim=1) / tau  # (B,)
        batch_logits = query @ key.T / tau  # (B, B), the diagonal holds positives
        off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=query.device)
        other_key_logits = batch_logits[off_diagonal].view(batch, batch - 1)
        memory_logits = query @ memory_keys.T / tau  # (B, K')
        negative_logits = torch.cat([other_key_logits, memory_logits], dim=1)
        loss = info_nce_from_logits(positive_logits, negative_logits, self.config.eps)

        self._memory_offer = (key, indices)
        return loss, {"memory_negatives": float(memory_keys.shape[0])}


class BYOL(Method):
    """BYOL: an online network with a predictor regresses a momentum target.

    The loss is the sum of both directions, as in BYOL's paper.
    """

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        self.predictor = build_predictor(config.projection_dim, config.hidden_dim)
        self.target_backbone = make_target(self.backbone)
        self.target_projector = make_target(self.projector)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module, float]]:
        momentum = self.config.byol_momentum
        return [
            (self.backbone, self.target_backbone, momentum),
            (self.projector, self.target_projector, momentum),
        ]

    def training_loss(
        self, view1: Tensor, view2: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        prediction1 = self.predictor(self.project(view1))  # (B, Z)
        prediction2 = self.predictor(self.project(view2))
        with torch.no_grad():
            target1 = self.target_projector(self.target_backbone(view1))  # (B, Z)
            target2 = self.target_projector(self.target_backbone(view2))
        loss = byol_loss(prediction1, target2) + byol_loss(prediction2, target1)
        return loss, {}


class BarlowTwins(Method):
    """Barlow Twins: the views' cross-correlation is pushed to the identity."""

    def training_loss(
        self, view1: Tensor, view2: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        z1, z2 = self.project(view1), self.project(view2)  # (B, Z), not normalised
        return barlow_twins_loss(z1, z2, self.config.barlow_lambda), {}


class DSimCLR(Method):
    """D-SimCLR: SimCLR plus negatives re-encoded from a DUEL memory of images.

    The memory stores dataset indices as items. Each step draws
    ``memory_draw`` of them at random, fetches freshly augmented images through
    ``fetch_views`` and encodes them with the current encoder under no_grad;
    they serve as extra negatives for both views (``negatives``: ``memory``
    alone or ``mixed`` with the batch's; ``batch`` is plain SimCLR).

    The features the DUEL policy compares are the detached projections of the
    batch's first view, stored at insertion and not recomputed. Re-encoding all
    K items every step to refresh them is what made the paper's D-SimCLR 29%
    slower than SimCLR; here only the ``memory_draw`` negatives are encoded.

    While the memory is empty (the first step) there are no memory negatives,
    and in ``memory`` mode the batch's negatives stand in for them so that the
    loss is defined. The memory images pass through the backbone in training
    mode, so BatchNorm normalises them with their own batch statistics and
    they also enter the running statistics.

    In a multi-process run every process draws the same memory items (the
    memories and their generators agree) and augments them with its own
    augmentation generator; in-batch negatives stay local to each process.
    """

    def __init__(self, config: MethodConfig, fetch_views: FetchViews | None) -> None:
        super().__init__(config)
        self.fetch_views = fetch_views
        self.memory = ActiveMemory(
            size=config.memory_size,
            dim=config.projection_dim,
            policy=config.memory_policy,
            tau=config.tau,
            safe=config.safe,
            seed=config.memory_seed,
            item_shape=(),
            item_dtype=torch.long,
        )

    def training_loss(
        self, view1: Tensor, view2: Tensor, indices: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        z1 = F.normalize(self.project(view1), dim=1)  # (B, Z)
        z2 = F.normalize(self.project(view2), dim=1)
        memory_negatives = self._memory_negatives(view1)  # (M, Z) or None

        include_batch = self.config.negatives != "memory" or memory_negatives is None
        loss = nt_xent(
            z1,
            z2,
            self.config.tau,
            self.config.eps,
            extra_negatives=memory_negatives,
            include_batch=include_batch,
        )

        self._memory_offer = (z1.detach(), indices)
        drawn = 0 if memory_negatives is None else memory_negatives.shape[0]
        return loss, {"memory_negatives": float(drawn)}

    @torch.no_grad()
    def _memory_negatives(self, view1: Tensor) -> Tensor | None:
        """(M, Z) unit-norm projections of M re-augmented memory images, or None."""
        if self.config.negatives == "batch" or self.memory.num_filled == 0:
            return None
        slots = self.memory.sample(self.config.memory_draw)  # (M,)
        images = self.fetch_views(self.memory.items[slots]).to(view1.device)
        if images.ndim != 4 or images.shape[1:] != view1.shape[1:]:
            raise ValueError(
                f"fetch_views must return (M, {', '.join(map(str, view1.shape[1:]))})"
                f" images, got {tuple(images.shape)}"
            )
        return F.normalize(self.project(images), dim=1)


def build_method(
    name: str, config: MethodConfig, fetch_views: FetchViews | None = None
) -> Method:
    """Builds a method from its name and a configuration.

    Args:
        name: one of ``METHODS``.
        config: hyper-parameters; ``memory_policy`` None picks the method's
            default (``DEFAULT_MEMORY_POLICY``).
        fetch_views: ``d-simclr`` only, required unless ``negatives`` is
            ``batch``: maps dataset indices (n,) to augmented images
            (n, C, H, W) of the training set.

    Returns:
        The method, randomly initialised.

    Raises:
        ValueError: on an unknown name, policy or negatives mode, or a
            hyper-parameter outside its range.
    """
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    _check_config(config)
    if name in DEFAULT_MEMORY_POLICY and config.memory_policy is None:
        config = dataclasses.replace(config, memory_policy=DEFAULT_MEMORY_POLICY[name])

    if name == "simclr":
        return SimCLR(config)
    if name in ("moco", "d-moco"):
        return MoCo(config)
    if name == "byol":
        return BYOL(config)
    if name == "barlow":
        return BarlowTwins(config)
    if fetch_views is None and config.negatives != "batch":
        raise ValueError(
            f"d-simclr with negatives {config.negatives!r} needs fetch_views, got None"
        )
    return DSimCLR(config, fetch_views)


def _check_config(config: MethodConfig) -> None:
    """Raises ValueError on the first field of ``config`` outside its range."""
    if config.memory_policy is not None and config.memory_policy not in POLICIES:
        raise ValueError(
            f"memory_policy must be None or one of {', '.join(POLICIES)}, "
            f"got {config.memory_policy!r}"
        )
    if config.negatives not in NEGATIVE_MODES:
        raise ValueError(
            f"negatives must be one of {', '.join(NEGATIVE_MODES)}, "
            f"got {config.negatives!r}"
        )
    if not (math.isfinite(config.tau) and config.tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {config.tau!r}")
    if not 0.0 <= config.eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {config.eps!r}")
    for parameter in ("momentum", "byol_momentum"):
        value = getattr(config, parameter)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{parameter} must be in [0, 1], got {value!r}")
    if not config.barlow_lambda >= 0:
        raise ValueError(f"barlow_lambda must be >= 0, got {config.barlow_lambda!r}")
    for parameter in ("memory_size", "memory_draw", "projection_dim", "hidden_dim"):
        value = getattr(config, parameter)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{parameter} must be an integer >= 1, got {value!r}")
