"""Multi-process training: one process per device, one synchronised memory.

``torchrun --nproc_per_node N -m duel train ...`` starts N processes; each
finds its place in the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), joins the process group
(NCCL on GPUs, gloo on the CPU) and trains a DistributedDataParallel copy of
the method on its shard of every global batch. Without that environment, or
with ``WORLD_SIZE=1``, nothing here runs and training is the plain
single-process loop.

What is shared and what is not:

- The stream: every process draws the same global batch of
  ``batch_size x world_size`` indices and keeps its own ``batch_size`` rows
  (:meth:`duel.data.ImbalancedStream.next_batch`), so ``batch_size`` is the
  per-process batch.
- The memory: each step the features, items and labels every process offers
  are gathered in rank order and every process applies the same
  :meth:`duel.memory.ActiveMemory.update` to the concatenation, as a single
  process with the global batch would (:attr:`duel.methods.Method.gather_rows`).
  All memories stay identical, and so do their random generators, which
  every process calls the same number of times: D-SimCLR draws the same
  memory items everywhere (each process augments them with its own
  augmentation generator).
- Gradients: DDP averages them, so an update is the gradient of the mean of
  the per-process losses. For the optimiser the batch is global
  (``batch_size x world_size``), but each process's contrastive loss only
  contrasts its own ``batch_size`` samples: in-batch negatives stay local
  (MoCo's other keys, SimCLR's other views), as in the original MoCo, while
  memory negatives are the whole, shared memory.
- Batch normalisation (``bn_sync``): ``sync`` normalises with the statistics
  of the global batch (torch's SyncBatchNorm on GPUs,
  :class:`CrossProcessBatchNorm` on the CPU); ``shuffle`` is MoCo's shuffled
  BN, where the key encoder sees a batch mixed from every process
  (:class:`KeyShuffle`) and every other BN layer stays local; ``local``
  normalises each process's batch alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from duel.config import BN_SYNC_MODES

log = logging.getLogger(__name__)


# Rank r's augmentation generator is seeded with seed + r * stride: rank 0 keeps
# the single-process seed and no two ranks share a stream for seeds below 2^32.
RANK_SEED_STRIDE = 1 << 32

T = TypeVar("T")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a per-process random stream; ``seed`` itself on rank 0."""
    return seed + rank * RANK_SEED_STRIDE


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the processes of one run.

    A single process is ``DistributedContext(device=...)``: rank 0 of 1, and
    every collective below returns its input untouched, so the single-process
    training step computes exactly what it computes without this module.

    Attributes:
        device: the device this process trains on (``cuda:<local_rank>`` for
            NCCL); collectives run on it.
        rank: this process's rank, in ``[0, world_size)``.
        world_size: number of processes.
        local_rank: rank among the processes of this machine.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def gather_rows(self, rows: Tensor) -> Tensor:
        """Every process's rows, in rank order: (B, ...) -> (world_size * B, ...).

        Every process must call it with the same shape and dtype. The result
        is detached (no gradient flows back to other processes) and lies on
        ``rows``'s device.
        """
        if not self.is_distributed:
            return rows
        local = rows.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(rows.device)

    def average(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of every value over the processes (logs: the mean loss).

        Every process must pass the same keys, in the same order.
        """
        if not self.is_distributed:
            return values
        names = list(values)
        totals = torch.tensor(
            [values[name] for name in names], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(totals)
        return {
            name: total / self.world_size
            for name, total in zip(names, totals.tolist(), strict=True)
        }

    def on_main(self, work: Callable[[], T]) -> T:
        """Runs ``work`` on rank 0 alone; every process gets its result or error.

        For what only rank 0 may do (check and write the run directory, read
        the checkpoint): the others wait, receive the same result, and raise
        the same error when rank 0's ``work`` raised, so a bad run directory
        stops every process with one message instead of leaving them waiting.
        """
        if not self.is_distributed:
            return work()
        outcome: list[Any] = [None]
        if self.is_main:
            try:
                outcome = [(True, work())]
            except Exception as error:  # handed to every process, then raised
                outcome = [(False, _picklable(error))]
        dist.broadcast_object_list(outcome, src=0, device=self.device)
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        return value


def _picklable(error: Exception) -> Exception:
    """The error itself when it survives pickling, else its message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # an exception type whose arguments do not round-trip
        return RuntimeError(str(error))
    return error


def environment_ranks() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's variables, or None.

    Raises:
        ValueError: when ``WORLD_SIZE`` is set and the variables are not
            integers or are inconsistent.
    """
    if "WORLD_SIZE" not in os.environ:
        return None
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = os.environ.get(name, "0" if name == "LOCAL_RANK" else None)
        try:
            values[name] = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be an integer when WORLD_SIZE is set (launch with "
                f"torchrun), got {raw!r}"
            ) from None
    rank, world_size, local_rank = (
        values["RANK"],
        values["WORLD_SIZE"],
        values["LOCAL_RANK"],
    )
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"RANK must be in [0, WORLD_SIZE) and LOCAL_RANK >= 0, got RANK {rank}, "
            f"WORLD_SIZE {world_size}, LOCAL_RANK {local_rank}"
        )
    return rank, world_size, local_rank


def _process_device(device: torch.device, local_rank: int) -> torch.device:
    """The device a process of a multi-process run trains on."""
    if device.type != "cuda":
        return device
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise ValueError(
            f"LOCAL_RANK {local_rank} needs a CUDA device of index {local_rank}, "
            f"but {visible} are visible: start at most {visible} processes per "
            "machine (--nproc_per_node)"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def join(device: torch.device) -> DistributedContext:
    """This process's context, joining the process group torchrun describes.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. With more than one
    process it pins ``cuda:<LOCAL_RANK>`` (CUDA runs) and, on first use,
    initialises the group: NCCL for CUDA, gloo otherwise, meeting through
    ``MASTER_ADDR`` and ``MASTER_PORT``. The group then stays open for later
    runs of the same process and is destroyed at exit: torchrun's store
    cannot host a second group in one process. A group the caller
    initialised is used as it is.

    Args:
        device: the device the configuration asks for (``cpu`` or ``cuda``).

    Returns:
        This process's context; a single-process one without torchrun or
        with one process.

    Raises:
        ValueError: on inconsistent torchrun variables or too few GPUs.
    """
    ranks = environment_ranks()
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = ranks[2] if ranks is not None else rank
    elif ranks is not None:
        rank, world_size, local_rank = ranks
    else:
        return DistributedContext(device=device)
    if world_size == 1:
        return DistributedContext(device=device)

    device = _process_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        device_id = device if device.type == "cuda" else None
        dist.init_process_group(backend, device_id=device_id)
        atexit.register(_leave)
        log.debug("rank %d of %d joined a %s group", rank, world_size, backend)
    return DistributedContext(
        device=device, rank=rank, world_size=world_size, local_rank=local_rank
    )


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------- batch norm


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, gradient: Tensor) -> Tensor:
        # Every process's output is the same sum of every process's input, so
        # an input's gradient sums what each process's loss owes that output.
        total = gradient.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def sum_over_processes(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all processes, differentiable."""
    return _SumOverProcesses.apply(tensor)


class CrossProcessBatchNorm(_BatchNorm):
    """Batch normalisation over the global batch, on any device gloo reaches.

    torch's SyncBatchNorm only runs on accelerators; this layer computes the
    same statistics with two differentiable all-reduces (sums, then centred
    squares, which is steadier than one pass of sums of squares), so a CPU
    run under gloo normalises as one process with the global batch would.
    The backward pass all-reduces the statistics' gradients, so each
    process's gradient holds what every process's loss owes to its samples.
    Outside training, or without a process group, it is a plain BatchNorm.
    Accepts (N, C) and (N, C, ...) inputs.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of 2 or more dims, got {input.dim()}")

    def forward(self, input: Tensor) -> Tensor:
        synced = (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        )
        if not synced:
            return super().forward(input)
        self._check_input_dim(input)

        channels = input.shape[1]
        reduced = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        count = input.new_tensor([input.numel() / channels])
        sums = sum_over_processes(torch.cat([input.sum(reduced), count]))
        total = sums[-1].detach()
        mean = sums[:-1] / total  # (C,)
        centred = input - mean.view(shape)
        variance = sum_over_processes(centred.square().sum(reduced)) / total
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)

        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum
                if factor is None:  # cumulative average, as BatchNorm does
                    factor = 1.0 / float(self.num_batches_tracked)
                unbiased = variance * total / max(float(total) - 1.0, 1.0)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(unbiased.detach(), factor)
        return output


def convert_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``module`` normalising over the global batch.

    CUDA modules get torch's SyncBatchNorm; others :class:`CrossProcessBatchNorm`.
    Parameters and buffers are moved over, not copied, so an optimiser built
    before the conversion still updates them, and state dict keys are unchanged.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, CrossProcessBatchNorm):
        converted = CrossProcessBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_batch_norm(child, device))
    return module


class KeyShuffle:
    """MoCo's shuffled BN: the key encoder sees a batch mixed from all processes.

    With per-process BN, a query and its key would be normalised with the same
    batch's statistics, which lets the model find the positive by those
    statistics rather than by content. Called on the key views (B, C, H, W),
    it gathers the global batch, permutes it, and hands this process its share;
    the function it returns gathers the encoded keys and puts this process's
    rows back in order. The permutation comes from a generator seeded alike
    on every process, so no process has to broadcast it; its state belongs in
    checkpoints.

    Args:
        context: this process's place among the others.
        seed: seed of the permutations, the same on every process.
    """

    def __init__(self, context: DistributedContext, seed: int) -> None:
        self.context = context
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        context = self.context
        gathered = context.gather_rows(batch)  # (world_size * B, ...)
        permutation = torch.randperm(len(gathered), generator=self.generator)
        permutation = permutation.to(gathered.device)
        shares = permutation.view(context.world_size, -1)
        restore = torch.argsort(permutation).view(context.world_size, -1)
        mine, back = shares[context.rank], restore[context.rank]

        def unshuffle(encoded: Tensor) -> Tensor:
            return context.gather_rows(encoded)[back]

        return gathered[mine], unshuffle


def check_bn_sync(bn_sync: str, method: str) -> None:
    """Raises ValueError unless ``bn_sync`` is a mode this method supports."""
    if bn_sync not in BN_SYNC_MODES:
        raise ValueError(
            f"bn_sync must be one of {', '.join(BN_SYNC_MODES)}, got {bn_sync!r}"
        )
    if bn_sync == "shuffle" and method not in ("moco", "d-moco"):
        raise ValueError(
            "bn_sync 'shuffle' needs a key encoder (moco, d-moco), "
            f"got method {method!r}"
        )


def wrap_method(
    method: nn.Module, context: DistributedContext, bn_sync: str, seed: int
) -> tuple[DistributedDataParallel, KeyShuffle | None]:
    """Makes a method ready for multi-process training; call it on every process.

    Converts BatchNorm for ``bn_sync``, hands the method the row gathering its
    memory update needs (and MoCo its key shuffle), and wraps it in DDP. The
    method keeps its identity: call ``after_step``, ``state_dict`` and the
    rest on it, and only the training forward on the returned wrapper.

    Buffers are synchronised once, when DDP wraps the method, and not at every
    forward (``forward_sync_buffers=False``): the memory is identical on every
    process by construction, and BN running statistics serve evaluation only,
    which reads rank 0's.

    Args:
        method: a :class:`duel.methods.Method` on ``context.device``.
        context: this process's context, with ``world_size > 1``.
        bn_sync: one of ``BN_SYNC_MODES``.
        seed: seed of the key shuffle, the same on every process.

    Returns:
        The DDP wrapper and the key shuffle (``shuffle`` only, else None).
    """
    if bn_sync == "sync":
        convert_batch_norm(method, context.device)
    method.gather_rows = context.gather_rows
    key_shuffle = None
    if bn_sync == "shuffle":
        key_shuffle = KeyShuffle(context, seed)
        method.shuffle_keys = key_shuffle
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    wrapper = DistributedDataParallel(
        method, device_ids=device_ids, forward_sync_buffers=False
    )
    return wrapper, key_shuffle
