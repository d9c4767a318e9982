"""Training throughput of the six methods in the ``cpu`` profile.

Images per second of the stream (batch size over the median step time), with
augmentation included, at the process's thread count and at one thread, so
that the cpu profile's step count can be sized from it. A step sees each image
twice (two views); D-SimCLR also encodes ``memory_draw`` memory images.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from benchmarks.common import Deadline, interleaved, machine_info, summarize
from benchmarks.harness import settings, warm_harness
from duel.methods import METHODS

log = logging.getLogger(__name__)


def run(
    device: torch.device, quick: bool = False, deadline: Deadline | None = None
) -> dict[str, Any]:
    """The throughput section of the results.

    Args:
        device: where the methods train.
        quick: the smoke setting and two rounds.
        deadline: a budget; a thread setting is skipped once it is spent.

    Returns:
        A JSON-ready record: per thread count, per method, the step time and
        images per second.
    """
    deadline = deadline or Deadline(None)
    setting = settings(quick)[0]  # the cpu profile (smoke in quick mode)
    config = setting.config
    default_threads = torch.get_num_threads()
    record: dict[str, Any] = {
        "machine": machine_info(device),
        "setting": {
            "name": setting.name,
            "dataset_shape": config.dataset,
            "image_size": config.image_size,
            "backbone": config.backbone,
            "batch_size": config.batch_size,
            "memory_size": config.memory_size,
            "augmentation": config.augmentation,
            "data": "synthetic uint8 images of the dataset's shape",
        },
        "augmentation_included": True,
        "threads": {},
        "skipped_for_time": [],
    }
    for threads in sorted({default_threads, 1}, reverse=True):
        if deadline.expired():
            record["skipped_for_time"].append(threads)
            continue
        log.info("throughput: %d thread(s)", threads)
        torch.set_num_threads(threads)
        try:
            calls = {
                method: warm_harness(setting, method, device, threads).step
                for method in METHODS
            }
            samples = interleaved(
                calls, 2 if quick else 9, device, warmup=0, budget_s=deadline.left()
            )
        finally:
            torch.set_num_threads(default_threads)
        per_method = {}
        for method, values in samples.items():
            step = summarize(values)
            per_method[method] = {
                "step": step,
                "images_per_second": 1e3 * config.batch_size / step["median_ms"],
            }
        record["threads"][str(threads)] = per_method
    return record
