"""What every benchmark shares: the machine's description and the clocks.

Timing rules, the same in every benchmark:

- every figure is the median over repeats, with its quartiles;
- a comparison of A with B is measured in one process, interleaved
  (A, B, A, B, ...), and its ratio is the median of the per-round ratios, so a
  change of load on a shared machine hits both sides of a ratio alike;
- CUDA work is synchronised before a clock is read.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

# Where `make bench` writes, relative to the repository root.
RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def cpu_model() -> str:
    """The processor's name as the kernel reports it, else platform's guess."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a reader needs to weigh a number: processor, cores, versions, GPU."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": device.type,
        "cuda_device": None,
        "load_average": load_average(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["cuda_device"] = {
            "name": properties.name,
            "memory_mb": round(properties.total_memory / 2**20),
            "cuda": torch.version.cuda,
        }
    return info


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU.

    Raises:
        ValueError: on an unknown name, or ``cuda`` without a GPU.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be one of auto, cpu, cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(samples_s: list[float]) -> dict[str, Any]:
    """Median and quartiles of timings in seconds, as milliseconds."""
    ms = sorted(1e3 * value for value in samples_s)
    quartiles = np.percentile(ms, [25, 75]) if ms else [float("nan")] * 2
    return {
        "median_ms": statistics.median(ms),
        "q25_ms": float(quartiles[0]),
        "q75_ms": float(quartiles[1]),
        "repeats": len(ms),
    }


def interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    rounds: int,
    device: torch.device,
    warmup: int = 1,
    budget_s: float | None = None,
) -> dict[str, list[float]]:
    """Times each candidate once per round, in turn (A, B, A, B, ...).

    Args:
        candidates: name -> a call to time; it may change state between calls
            (a memory update does), as long as every call is alike.
        rounds: timed rounds, >= 1.
        device: synchronised around each call.
        warmup: untimed rounds first (lazy initialisation, caches).
        budget_s: stop after the round in which this many seconds have
            passed (at least one timed round always runs).

    Returns:
        name -> the seconds of each timed round.
    """
    for _ in range(warmup):
        for call in candidates.values():
            call()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    started = time.perf_counter()
    for _ in range(rounds):
        for name, call in candidates.items():
            synchronize(device)
            begin = time.perf_counter()
            call()
            synchronize(device)
            samples[name].append(time.perf_counter() - begin)
        if budget_s is not None and time.perf_counter() - started > budget_s:
            break
    return samples


def spread(values: list[float]) -> dict[str, Any]:
    """Median and quartiles of a list of numbers."""
    quartiles = np.percentile(values, [25, 75])
    return {
        "median": statistics.median(values),
        "q25": float(quartiles[0]),
        "q75": float(quartiles[1]),
    }


def ratio(numerator: list[float], denominator: list[float]) -> dict[str, Any]:
    """Median and quartiles of the per-round ratios of two interleaved timings."""
    return spread([a / b for a, b in zip(numerator, denominator, strict=True)])


class Deadline:
    """A time budget that benchmarks consult to shrink or skip work.

    Args:
        seconds: the budget, or None for none.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def left(self) -> float:
        """Seconds left; infinite without a budget."""
        if self.seconds is None:
            return float("inf")
        return self.seconds - (time.perf_counter() - self.started)

    def expired(self) -> bool:
        return self.left() <= 0
