"""Cost of one DUEL update against its floor, FIFO and the plain reference.

One ``duel`` update offers B new samples to a FULL memory of K slots at feature
dimension Z (:meth:`duel.memory.ActiveMemory.update`, checks and writes
included). It is compared, interleaved in one process, with:

- ``floor``: the arithmetic it cannot avoid, one B x (K + B) similarity
  product with its exponential (``duel.memory.duplication_probability``, the
  (K + B, Z) operand built beforehand), on the benchmark's device;
- ``fifo``: the FIFO queue's update of the same memory size (MoCo's policy);
- ``reference``: DUEL recomputing every score for every insertion
  (:func:`duel.reference.reference_duel_update`, O(B K^2 Z)); only where it
  fits the time, and never extrapolated.

The batched update computes its product on the CPU whatever the device, so
that its decisions do not depend on the device; on CUDA the floor is the GPU's.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    Deadline,
    interleaved,
    machine_info,
    ratio,
    summarize,
)
from duel.config import build_config
from duel.memory import ActiveMemory, duplication_probability
from duel.reference import reference_duel_update

log = logging.getLogger(__name__)

TAU = 0.5  # the paper's temperature, also the DUEL kernel's

# Fill a memory this many samples at a time: one update of K samples would form
# a K x 2K similarity matrix (2 GiB at K = 16384).
FILL_CHUNK = 2048

# Targets the benchmark reports against (Appendix D's point, made measurable).
TARGET_FLOOR_RATIO = 2.0
TARGET_REFERENCE_SPEEDUP = 50.0


@dataclass(frozen=True)
class Sizes:
    """One measurement point: K slots, B incoming samples, dimension Z."""

    memory_size: int
    batch_size: int
    dim: int


def paper_sizes() -> Sizes:
    """The paper's CIFAR-10 setting (Appendix E): K 2048, B 256, Z 256."""
    config = build_config("paper", method="d-moco")
    return Sizes(config.memory_size, config.batch_size, config.projection_dim)


def cpu_sizes() -> Sizes:
    """The ``cpu`` profile's memory, batch and projection dimension."""
    config = build_config("cpu", method="d-moco")
    return Sizes(config.memory_size, config.batch_size, config.projection_dim)


def full_memory(
    policy: str, sizes: Sizes, device: torch.device, seed: int = 0
) -> ActiveMemory:
    """A memory of ``policy`` whose K slots are all occupied (random features)."""
    generator = torch.Generator().manual_seed(seed)
    memory = ActiveMemory(sizes.memory_size, sizes.dim, policy=policy, tau=TAU)
    memory = memory.to(device)
    for start in range(0, sizes.memory_size, FILL_CHUNK):
        count = min(FILL_CHUNK, sizes.memory_size - start)
        features = F.normalize(
            torch.randn(count, sizes.dim, generator=generator), dim=1
        )
        memory.update(features.to(device))
    return memory


def random_batches(
    sizes: Sizes, count: int, device: torch.device, seed: int = 1
) -> list[torch.Tensor]:
    """``count`` batches of B unit-norm features, (B, Z) each, on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    shape = (sizes.batch_size, sizes.dim)
    return [
        F.normalize(torch.randn(shape, generator=generator), dim=1).to(device)
        for _ in range(count)
    ]


def _cycle(batches: list[torch.Tensor]):
    """A call that hands out the batches in turn, forever."""
    position = [0]

    def next_batch() -> torch.Tensor:
        batch = batches[position[0] % len(batches)]
        position[0] += 1
        return batch

    return next_batch


def measure_point(
    sizes: Sizes,
    device: torch.device,
    rounds: int,
    reference_rounds: int = 0,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Times duel, fifo and the floor interleaved; the reference if asked.

    Args:
        sizes: K, B, Z.
        device: where memories and batches live.
        rounds: timed rounds of (duel, fifo, floor).
        reference_rounds: timed rounds of (duel, reference); 0 skips it.
        budget_s: seconds after which the rounds stop early.

    Returns:
        Timings (median and quartiles, ms) and the ratios duel / floor,
        duel / fifo and reference / duel.
    """
    duel = full_memory("duel", sizes, device)
    fifo = full_memory("fifo", sizes, device)
    batches = random_batches(sizes, 4, device)
    next_duel, next_fifo, next_floor = _cycle(batches), _cycle(batches), _cycle(batches)
    operand = torch.cat([duel.features, batches[0]])  # (K + B, Z)

    samples = interleaved(
        {
            "duel": lambda: duel.update(next_duel()),
            "fifo": lambda: fifo.update(next_fifo()),
            "floor": lambda: duplication_probability(next_floor(), operand, TAU),
        },
        rounds=rounds,
        device=device,
        budget_s=budget_s,
    )
    result: dict[str, Any] = {
        "sizes": asdict(sizes),
        "torch_threads": torch.get_num_threads(),
        "duel": summarize(samples["duel"]),
        "fifo": summarize(samples["fifo"]),
        "floor": summarize(samples["floor"]),
        "duel_over_floor": ratio(samples["duel"], samples["floor"]),
        "duel_over_fifo": ratio(samples["duel"], samples["fifo"]),
    }
    if reference_rounds:
        # The reference updates its own copy of the memory, on the CPU.
        reference_memory = duel.features.detach().cpu().clone()
        next_reference = _cycle([batch.cpu() for batch in batches])
        reference_samples = interleaved(
            {
                "duel": lambda: duel.update(next_duel()),
                "reference": lambda: reference_duel_update(
                    reference_memory, next_reference(), TAU
                ),
            },
            rounds=reference_rounds,
            device=device,
            warmup=0,
        )
        result["reference"] = summarize(reference_samples["reference"])
        result["reference_over_duel"] = ratio(
            reference_samples["reference"], reference_samples["duel"]
        )
    return result


def _grid(quick: bool) -> dict[str, Any]:
    """The sweep: K at the paper's B and Z, B at the paper's K and Z."""
    if quick:
        return {
            "dim": 16,
            "memory_sizes": [32, 64],
            "batch_size": 8,
            "batch_sizes": [4, 8],
            "memory_size": 32,
            "reference_memory_sizes": [32],
            "reference_batch_sizes": [4],
        }
    paper = paper_sizes()
    return {
        "dim": paper.dim,
        "memory_sizes": [512, 1024, 2048, 4096, 8192, 16384],
        "batch_size": paper.batch_size,
        "batch_sizes": [32, 64, 128, 256, 512, 1024],
        "memory_size": paper.memory_size,
        # The reference costs O(B K^2 Z): about 13 s per update at the paper's
        # size on two cores, so only the small points (and the headline).
        "reference_memory_sizes": [512, 1024],
        "reference_batch_sizes": [32, 64],
    }


def run(
    device: torch.device,
    quick: bool = False,
    deadline: Deadline | None = None,
) -> dict[str, Any]:
    """The policy section of the results: headline points and the sweep.

    Args:
        device: where the memories live.
        quick: tiny sizes and few rounds, for a smoke check.
        deadline: a budget; sweep points are skipped once it is spent.

    Returns:
        A JSON-ready record.
    """
    deadline = deadline or Deadline(None)
    rounds = 3 if quick else 25
    reference_rounds = 1 if quick else 5
    if quick:
        headline_sizes = {"paper": Sizes(32, 8, 16), "cpu": Sizes(16, 8, 8)}
    else:
        headline_sizes = {"paper": paper_sizes(), "cpu": cpu_sizes()}

    # Headline points at the default thread count and at one thread: the
    # product uses every core, the per-insertion loop only one.
    default_threads = torch.get_num_threads()
    thread_settings = sorted({default_threads, 1}, reverse=True)
    headline: dict[str, Any] = {}
    for name, sizes in headline_sizes.items():
        headline[name] = {}
        for threads in thread_settings:
            log.info("policy: %s sizes %s, %d thread(s)", name, sizes, threads)
            torch.set_num_threads(threads)
            # The reference runs once per size, at the default thread count.
            with_reference = reference_rounds if threads == default_threads else 0
            try:
                point = measure_point(
                    sizes, device, rounds, with_reference, deadline.left()
                )
            finally:
                torch.set_num_threads(default_threads)
            headline[name][f"threads={threads}"] = point

    grid = _grid(quick)
    sweep: list[dict[str, Any]] = []
    points = [
        (Sizes(k, grid["batch_size"], grid["dim"]), k in grid["reference_memory_sizes"])
        for k in grid["memory_sizes"]
    ] + [
        (Sizes(grid["memory_size"], b, grid["dim"]), b in grid["reference_batch_sizes"])
        for b in grid["batch_sizes"]
    ]
    seen: set[Sizes] = set()
    skipped: list[dict[str, int]] = []
    for sizes, with_reference in points:
        if sizes in seen:
            continue
        seen.add(sizes)
        if deadline.expired():
            skipped.append(asdict(sizes))
            continue
        log.info("policy sweep: %s", sizes)
        sweep.append(
            measure_point(
                sizes,
                device,
                rounds=3 if quick else 11,
                reference_rounds=reference_rounds if with_reference else 0,
                budget_s=deadline.left(),
            )
        )

    return {
        "machine": machine_info(device),
        "what": (
            "one update of B samples into a full memory of K at dimension Z "
            "(float32 features, tau 0.5)"
        ),
        "targets": {
            "duel_over_floor_at_most": TARGET_FLOOR_RATIO,
            "reference_over_duel_at_least": TARGET_REFERENCE_SPEEDUP,
        },
        "headline": headline,
        "sweep": sweep,
        "sweep_skipped_for_time": skipped,
        "grid": grid,
    }
