"""What DUEL adds to a training step: D-MoCo over MoCo, D-SimCLR over SimCLR.

A step is the training loop's body (:class:`benchmarks.harness.StepHarness`):
the batch's two augmented views (augmentation INCLUDED, as in training; its
time is also reported alone), forward, backward, Adam step and ``after_step``
with the memory update. Each pair shares backbone, batch, data and seed, and
the four methods are timed interleaved in one process.

For D-SimCLR the re-encoding of its ``memory_draw`` memory images (fetch,
augment, encode under no_grad) is also timed on its own, so that the claim
"D-SimCLR / SimCLR <= 1 + re-encoding / SimCLR + 3%" can be judged.

Peak memory is measured in a fresh process per method: the largest resident
set on the CPU (``VmHWM``; tracemalloc does not see torch's allocations, and
getrusage's max RSS inherits the parent's), ``torch.cuda.max_memory_allocated``
on CUDA.

The paper's own figures (SPEC 7, Appendix D: 160k steps on one RTX 3090 Ti
with ResNet-50) are reported beside ours: D-MoCo 1.17x MoCoV2, D-SimCLR 1.29x
SimCLR.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from benchmarks.common import (
    Deadline,
    interleaved,
    machine_info,
    ratio,
    resolve_device,
    spread,
    summarize,
)
from benchmarks.harness import Setting, settings, warm_harness

log = logging.getLogger(__name__)

PAIRS = (("moco", "d-moco"), ("simclr", "d-simclr"))
METHODS = tuple(method for pair in PAIRS for method in pair)

# Appendix D (SPEC 7): training time of the DUEL method over its base.
PAPER_RATIOS = {"d-moco/moco": 10.99 / 9.37, "d-simclr/simclr": 17.34 / 13.47}

# The margin beyond the re-encoding cost that D-SimCLR's step may take.
REENCODING_MARGIN = 0.03


def measure_setting(
    setting: Setting, device: torch.device, rounds: int, budget_s: float | None
) -> dict[str, Any]:
    """Times the four methods, D-SimCLR's re-encoding and the augmentation."""
    harnesses = {method: warm_harness(setting, method, device) for method in METHODS}
    calls = {method: harness.step for method, harness in harnesses.items()}
    calls["d-simclr re-encoding"] = harnesses["d-simclr"].reencoding()
    calls["augmentation"] = harnesses["simclr"].views
    samples = interleaved(calls, rounds, device, warmup=1, budget_s=budget_s)

    simclr, dsimclr = samples["simclr"], samples["d-simclr"]
    reencoding = samples["d-simclr re-encoding"]
    reencoding_share = ratio(reencoding, simclr)
    without_reencoding = [
        (d - e) / s for d, e, s in zip(dsimclr, reencoding, simclr, strict=True)
    ]
    step_ratio = ratio(dsimclr, simclr)
    allowed = 1 + reencoding_share["median"] + REENCODING_MARGIN
    config = setting.config
    return {
        "setting": {
            "name": setting.name,
            "note": setting.note,
            "dataset_shape": config.dataset,
            "image_size": config.image_size,
            "backbone": config.backbone,
            "batch_size": config.batch_size,
            "memory_size": config.memory_size,
            "memory_draw": config.memory_draw,
            "projection_dim": config.projection_dim,
            "augmentation": config.augmentation,
            "data": "synthetic uint8 images of the dataset's shape",
        },
        "augmentation_included": True,
        "torch_threads": torch.get_num_threads(),
        "times": {name: summarize(values) for name, values in samples.items()},
        "ratios": {
            "d-moco/moco": ratio(samples["d-moco"], samples["moco"]),
            "d-simclr/simclr": step_ratio,
            "d-simclr re-encoding/simclr": reencoding_share,
            "d-simclr without re-encoding/simclr": spread(without_reencoding),
        },
        "d-simclr within re-encoding + 3%": {
            "allowed": allowed,
            "measured": step_ratio["median"],
            "holds": step_ratio["median"] <= allowed,
        },
    }


def _memory_ratios(
    memory: dict[str, dict[str, Any]], device: torch.device
) -> dict[str, Any]:
    """Peak memory per method and the DUEL/base ratios.

    On the CPU the resident set includes the interpreter, torch and the data
    (``rss_before_mb``), which DUEL does not change; the ratio of what training
    added above that baseline is reported too.
    """
    key = "cuda_max_allocated_mb" if device.type == "cuda" else "max_rss_mb"
    ratios, above = {}, {}
    for base, duel in PAIRS:
        if key not in memory.get(base, {}) or key not in memory.get(duel, {}):
            continue
        ratios[f"{duel}/{base}"] = memory[duel][key] / memory[base][key]
        if key == "max_rss_mb":
            added = {
                m: memory[m][key] - memory[m]["rss_before_mb"] for m in (base, duel)
            }
            if added[base] > 0:
                above[f"{duel}/{base}"] = added[duel] / added[base]
    record = {"per_method": memory, "measure": key, "ratios": ratios}
    if key == "max_rss_mb":
        record["ratios_above_baseline"] = above
    return record


def peak_memory(
    setting_name: str, method: str, device: torch.device, quick: bool, steps: int
) -> dict[str, Any]:
    """Peak memory of a few training steps, in a fresh Python process.

    Returns:
        ``max_rss_mb`` (resident set, whole process), ``rss_before_mb`` (after
        imports and data, before the method is built) and on CUDA
        ``cuda_max_allocated_mb``; or ``error`` when the process failed.
    """
    command = [
        sys.executable,
        "-m",
        "benchmarks.steps",
        "--peak-memory",
        "--setting",
        setting_name,
        "--method",
        method,
        "--device",
        device.type,
        "--steps",
        str(steps),
    ] + (["--quick"] if quick else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=root, env=environment
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_memory_child(
    setting_name: str, method: str, device: torch.device, quick: bool, steps: int
) -> dict[str, Any]:
    """The body of the fresh process :func:`peak_memory` starts."""
    setting = next(s for s in settings(quick) if s.name == setting_name)
    before = _max_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    harness = warm_harness(setting, method, device)
    for _ in range(steps):
        harness.step()
    record = {"max_rss_mb": _max_rss_mb(), "rss_before_mb": before}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        record["cuda_max_allocated_mb"] = (
            torch.cuda.max_memory_allocated(device) / 2**20
        )
    return record


def _max_rss_mb() -> float:
    """The process's peak resident set so far, in MiB.

    Linux's ``VmHWM`` belongs to the current program image. getrusage's
    ``ru_maxrss`` is not used there: it survives fork and exec, so a child of
    a large parent reports the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    # Elsewhere: getrusage, in kilobytes on Linux and bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run(
    device: torch.device, quick: bool = False, deadline: Deadline | None = None
) -> dict[str, Any]:
    """The steps section of the results, at every setting.

    Args:
        device: where the methods train.
        quick: the smoke setting and two rounds.
        deadline: a budget; a setting is skipped once it is spent.

    Returns:
        A JSON-ready record.
    """
    deadline = deadline or Deadline(None)
    rounds = 2 if quick else 9
    record: dict[str, Any] = {
        "machine": machine_info(device),
        "paper": {
            "ratios": PAPER_RATIOS,
            "source": "Appendix D: CIFAR-10, 160k steps, ResNet-50, one RTX 3090 Ti",
        },
        "settings": {},
        "skipped_for_time": [],
    }
    for setting in settings(quick):
        if deadline.expired():
            record["skipped_for_time"].append(setting.name)
            continue
        log.info("steps: %s", setting.name)
        result = measure_setting(setting, device, rounds, deadline.left())
        # Peak memory: one process per method, two at a time (each uses the
        # same thread count; only the resident sets are read).
        # The smoke check measures one pair only: each process costs seconds.
        measured = PAIRS[0] if quick else METHODS
        with ThreadPoolExecutor(max_workers=2 if device.type == "cpu" else 1) as pool:
            futures = {
                method: pool.submit(peak_memory, setting.name, method, device, quick, 2)
                for method in measured
            }
            memory = {method: future.result() for method, future in futures.items()}
        result["peak_memory"] = _memory_ratios(memory, device)
        record["settings"][setting.name] = result
    return record


def main(argv: list[str] | None = None) -> None:
    """Entry point of the peak-memory child process (``--peak-memory``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-memory", action="store_true", required=True)
    parser.add_argument("--setting", required=True)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    record = _peak_memory_child(
        args.setting, args.method, device, args.quick, args.steps
    )
    sys.stdout.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
