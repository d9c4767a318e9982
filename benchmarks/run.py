"""Runs the benchmarks and writes ``benchmarks/results/<device-kind>.json``.

Usage::

    python -m benchmarks.run                      # everything, about 10 min on 2 cores
    python -m benchmarks.run --quick              # a smoke check in seconds
    python -m benchmarks.run --only policy,peer   # some sections; others are kept
    python -m benchmarks.run --device cuda --budget 420

Sections: ``policy`` (one DUEL update against its floor, FIFO and the
per-insertion reference, with a sweep over K and B and its plot), ``steps``
(D-MoCo over MoCo, D-SimCLR over SimCLR, peak memory), ``peer`` (against
lightly) and ``throughput`` (images per second of the six methods in the cpu
profile). The file is written atomically after every section, so a run cut
short keeps what it finished; sections not run this time are kept from the
file that was there. ``--quick`` writes ``<device-kind>-quick.json`` instead,
so a smoke check never overwrites real results.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import torch

from benchmarks import peer, policy, steps, throughput
from benchmarks.common import (
    RESULTS_DIR,
    Deadline,
    load_average,
    machine_info,
    resolve_device,
)
from benchmarks.harness import clear_harnesses
from duel.cost import policy_figure
from duel.io import atomic_write_json

log = logging.getLogger("benchmarks")

SCHEMA_VERSION = 1

SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "policy": policy.run,
    "steps": steps.run,
    "peer": peer.run,
    "throughput": throughput.run,
}

# Under a --budget, each section may use this share of what is left when it
# starts (relative to the sections still to run), so that no section starves
# the ones after it.
WEIGHTS = {"policy": 3.0, "steps": 3.0, "peer": 1.5, "throughput": 2.0}


def results_path(out_dir: str, device: torch.device, quick: bool) -> str:
    """``<out_dir>/<device-kind>.json``, or ``<kind>-quick.json`` for --quick."""
    name = device.type + ("-quick" if quick else "")
    return os.path.join(out_dir, f"{name}.json")


def _previous(path: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return {}
    if record.get("schema_version") != SCHEMA_VERSION:
        return {}
    return record


def finite(node: Any) -> Any:
    """The record with every non-finite float replaced by None.

    JSON has no NaN, and the results writer refuses one rather than lose ten
    minutes of measurements over a single empty statistic.
    """
    if isinstance(node, dict):
        return {key: finite(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [finite(value) for value in node]
    if isinstance(node, float) and not math.isfinite(node):
        return None
    return node


def run(
    only: list[str],
    device: torch.device,
    quick: bool,
    out_dir: str,
    budget_s: float | None,
) -> dict[str, Any]:
    """Runs the chosen sections in order, writing the results after each.

    Returns:
        The full record as written.
    """
    os.makedirs(out_dir, exist_ok=True)
    path = results_path(out_dir, device, quick)
    record = _previous(path)
    sections = record.get("sections", {})
    record.update(
        {
            "schema_version": SCHEMA_VERSION,
            "device_kind": device.type,
            "quick": quick,
            "machine": machine_info(device),
            "command": ["python", "-m", "benchmarks.run", *sys.argv[1:]],
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sections": sections,
        }
    )
    deadline = Deadline(budget_s)
    for name in only:
        if deadline.expired():
            log.warning("budget spent: section %s not run", name)
            sections[name] = {"skipped": "time budget spent before it started"}
            continue
        share = None
        if budget_s is not None:
            remaining = only[only.index(name) :]
            weight = WEIGHTS[name] / sum(WEIGHTS[n] for n in remaining)
            share = deadline.left() * weight
        log.info(
            "section %s (budget %s s)",
            name,
            "none" if share is None else f"{share:.0f}",
        )
        began, load_before = time.perf_counter(), load_average()
        section = SECTIONS[name](device, quick=quick, deadline=Deadline(share))
        section["seconds"] = time.perf_counter() - began
        section["load_average_before"] = load_before
        section["load_average_after"] = load_average()
        section["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        section["command"] = record["command"]
        if name == "policy":
            suffix = "-quick" if quick else ""
            image = f"policy-{device.type}{suffix}.png"
            policy_figure(section).savefig(os.path.join(out_dir, image), dpi=120)
            section["plot"] = image
        sections[name] = section
        atomic_write_json(path, finite(record))
        log.info("section %s done in %.0f s", name, section["seconds"])
    clear_harnesses()
    return record


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The headline numbers of a record, one per line, for the terminal."""
    lines = [f"results for {record['device_kind']} ({record['machine']['cpu_model']})"]
    sections = record["sections"]
    for name, threads in sections.get("policy", {}).get("headline", {}).items():
        for setting, point in threads.items():
            sizes = point["sizes"]
            line = (
                f"policy {name:5s} K={sizes['memory_size']} B={sizes['batch_size']} "
                f"Z={sizes['dim']} {setting}: duel {point['duel']['median_ms']:.2f} ms"
                f", {point['duel_over_floor']['median']:.2f}x floor"
                f", {point['duel_over_fifo']['median']:.1f}x fifo"
            )
            if "reference_over_duel" in point:
                speedup = point["reference_over_duel"]["median"]
                line += f", {speedup:.0f}x faster than the reference"
            lines.append(line)
    for name, setting in sections.get("steps", {}).get("settings", {}).items():
        ratios = setting["ratios"]
        lines.append(
            f"steps {name}: d-moco/moco {ratios['d-moco/moco']['median']:.3f}"
            f" (paper 1.17), d-simclr/simclr "
            f"{ratios['d-simclr/simclr']['median']:.3f} (paper 1.29), re-encoding "
            f"{ratios['d-simclr re-encoding/simclr']['median']:.3f} of a simclr step"
        )
    peer_section = sections.get("peer", {})
    if "skipped" in peer_section:
        lines.append(f"peer: skipped ({peer_section['skipped']})")
    for name, setting in peer_section.get("settings", {}).items():
        ratios = ", ".join(
            f"{key} {value['median']:.3f}" for key, value in setting["ratios"].items()
        )
        lines.append(f"peer {name}: {ratios}")
    for threads, methods in sections.get("throughput", {}).get("threads", {}).items():
        rates = ", ".join(
            f"{m} {v['images_per_second']:.0f}" for m, v in methods.items()
        )
        lines.append(f"throughput ({threads} thread(s), images/s): {rates}")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections among {', '.join(SECTIONS)}",
    )
    parser.add_argument("--out", default=RESULTS_DIR, help="results folder")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's own choice, one per core)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds; later sections and sweep points are skipped past it",
    )
    args = parser.parse_args(argv)
    only = list(dict.fromkeys(n.strip() for n in args.only.split(",") if n.strip()))
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(
            f"--only accepts {', '.join(SECTIONS)}; got unknown {', '.join(unknown)}"
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    record = run(only, device, args.quick, args.out, args.budget)
    print("\n".join(summary_lines(record)))
    print(f"written: {results_path(args.out, device, args.quick)}")


if __name__ == "__main__":
    main()
