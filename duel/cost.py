"""The book's cost appendix: benchmark results as tables and figures.

Reads what ``make bench`` wrote (``benchmarks/results/cpu.json`` and, where a
GPU was lent, ``cuda.json``) and lays it beside the paper's Appendix D cost
table (SPEC 7), which is typed in (:data:`duel.book.PAPER_COST`), never
measured here. Every number says which machine it came from.

Example:
    >>> from duel.cost import load_results, appendix_d_table
    >>> results = load_results()  # {} before the benchmarks have run
    >>> table = appendix_d_table(results)  # the paper's columns at least
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from duel.book import DUEL_PAIRS, METHOD_LABELS, PAPER_COST
from duel.figures import method_color

# The device kinds the benchmarks write, in the order the book shows them.
DEVICE_KINDS = ("cpu", "cuda")

# Targets the policy benchmark reports against (see benchmarks/policy.py).
TARGET_FLOOR_RATIO = 2.0
TARGET_REFERENCE_SPEEDUP = 50.0


def default_results_dir() -> Path:
    """``benchmarks/results`` of the repository this package was installed from."""
    return Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def load_results(
    results_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Every results file present, by device kind (``cpu``, ``cuda``).

    Args:
        results_dir: the folder; :func:`default_results_dir` when None.

    Returns:
        kind -> the record ``python -m benchmarks.run`` wrote; missing kinds
        are absent, so an empty dict means nothing was measured yet.
    """
    folder = Path(results_dir) if results_dir is not None else default_results_dir()
    results = {}
    for kind in DEVICE_KINDS:
        path = folder / f"{kind}.json"
        if path.is_file():
            results[kind] = json.loads(path.read_text())
    return results


def machine_label(record: dict[str, Any]) -> str:
    """``AMD EPYC, 2 cores, torch 2.14.1 (2 threads)``, or the GPU's name."""
    machine = record["machine"]
    if machine.get("cuda_device"):
        return f"{machine['cuda_device']['name']}, torch {machine['torch']}"
    threads = machine["torch_threads"]
    return (
        f"{machine['cpu_model']}, {machine['cpu_cores']} cores, torch "
        f"{machine['torch']} ({threads} thread{'' if threads == 1 else 's'})"
    )


def _spread(value: dict[str, float], digits: int = 2, unit: str = "") -> str:
    """``1.23 [1.20-1.31]``: median and interquartile range."""
    if "median" in value:
        median, low, high = value["median"], value["q25"], value["q75"]
    else:
        median, low, high = value["median_ms"], value["q25_ms"], value["q75_ms"]
    return f"{median:.{digits}f}{unit} [{low:.{digits}f}-{high:.{digits}f}]"


def appendix_d_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The paper's Appendix D cost table with our step costs beside it.

    Rows are the four methods of the table. The paper's columns are hours for
    160k steps and VRAM on one RTX 3090 Ti; ours are the median training step
    (ms, interquartile range in brackets), the DUEL method's step over its
    base's, and the peak memory, for each machine and setting measured.
    """
    table = pd.DataFrame(index=pd.Index(PAPER_COST.index, name="method"))
    table.insert(0, "method", [METHOD_LABELS[m] for m in table.index])
    table["paper: time (h)"] = PAPER_COST["time (h)"]
    table["paper: VRAM (MB)"] = PAPER_COST["VRAM (MB)"].astype(int)
    table["paper: overhead"] = [_paper_overhead(method) for method in PAPER_COST.index]
    for kind, record in results.items():
        steps = record.get("sections", {}).get("steps", {})
        for name, setting in steps.get("settings", {}).items():
            label = f"ours ({kind}, {name})"
            times, ratios = setting["times"], setting["ratios"]
            memory = setting.get("peak_memory", {})
            measure = memory.get("measure", "max_rss_mb")
            table[f"{label}: step (ms)"] = [
                _spread(times[m], 0) if m in times else "not measured"
                for m in table.index
            ]
            table[f"{label}: overhead"] = [
                _overhead(method, ratios) for method in table.index
            ]
            memory_name = "GPU memory" if measure.startswith("cuda") else "peak RSS"
            table[f"{label}: {memory_name} (MB)"] = [
                f"{memory['per_method'][m][measure]:.0f}"
                if measure in memory.get("per_method", {}).get(m, {})
                else "not measured"
                for m in table.index
            ]
    return table.set_index("method")


def _paper_overhead(method: str) -> str:
    base = next((b for b, d in DUEL_PAIRS if d == method), None)
    if base is None:
        return "-"
    ratio = PAPER_COST.loc[method, "time (h)"] / PAPER_COST.loc[base, "time (h)"]
    return f"{ratio:.2f}x"


def _overhead(method: str, ratios: dict[str, Any]) -> str:
    base = next((b for b, d in DUEL_PAIRS if d == method), None)
    if base is None:
        return "-"
    return _spread(ratios[f"{method}/{base}"], 3) + "x"


def machines_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Where each results file was measured, and how loaded the machine was."""
    rows = []
    for kind, record in results.items():
        for name, section in record.get("sections", {}).items():
            rows.append(
                {
                    "results": kind,
                    "section": name,
                    "machine": machine_label(section)
                    if "machine" in section
                    else machine_label(record),
                    "measured at (UTC)": section.get("measured_at", "-"),
                    "load average before": section.get("load_average_before"),
                    "seconds": round(section.get("seconds", float("nan"))),
                }
            )
    return pd.DataFrame(rows)


def policy_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One DUEL update against its floor, FIFO and the reference, per point."""
    rows = []
    for kind, record in results.items():
        headline = record.get("sections", {}).get("policy", {}).get("headline", {})
        for name, by_threads in headline.items():
            for threads, point in by_threads.items():
                sizes = point["sizes"]
                floor = point["duel_over_floor"]["median"]
                row = {
                    "results": kind,
                    "sizes": name,
                    "K, B, Z": (
                        f"{sizes['memory_size']}, {sizes['batch_size']}, {sizes['dim']}"
                    ),
                    "threads": threads.split("=")[-1],
                    "duel (ms)": _spread(point["duel"]),
                    "floor (ms)": _spread(point["floor"]),
                    "duel / floor": _spread(point["duel_over_floor"]) + "x",
                    "target <= 2x": "met" if floor <= TARGET_FLOOR_RATIO else "missed",
                    "duel / fifo": _spread(point["duel_over_fifo"], 1) + "x",
                }
                if "reference_over_duel" in point:
                    speedup = point["reference_over_duel"]["median"]
                    row["reference / duel"] = _spread(point["reference_over_duel"], 0)
                    row["target >= 50x"] = (
                        "met" if speedup >= TARGET_REFERENCE_SPEEDUP else "missed"
                    )
                else:
                    row["reference / duel"] = "not measured"
                    row["target >= 50x"] = "-"
                rows.append(row)
    return pd.DataFrame(rows)


def peer_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Our MoCo and SimCLR steps over lightly's, per machine and setting."""
    rows = []
    for kind, record in results.items():
        peer = record.get("sections", {}).get("peer", {})
        if "skipped" in peer:
            rows.append({"results": kind, "setting": "-", "skipped": peer["skipped"]})
        for name, setting in peer.get("settings", {}).items():
            row = {"results": kind, "setting": name, "lightly": peer.get("lightly")}
            for key, value in setting["ratios"].items():
                row[key] = _spread(value, 3) + "x"
            rows.append(row)
    return pd.DataFrame(rows)


def throughput_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Images per second of each method in the cpu profile, per thread count."""
    rows = []
    for kind, record in results.items():
        section = record.get("sections", {}).get("throughput", {})
        for threads, methods in section.get("threads", {}).items():
            for method, value in methods.items():
                rows.append(
                    {
                        "results": kind,
                        "threads": int(threads),
                        "method": METHOD_LABELS.get(method, method),
                        "step (ms)": _spread(value["step"], 0),
                        "images / s": round(value["images_per_second"]),
                    }
                )
    return pd.DataFrame(rows)


def policy_figure(section: dict[str, Any]) -> Figure:
    """Cost of one update against K and against B (log-log), measured points.

    Args:
        section: a results record's ``policy`` section.
    """
    grid = section["grid"]
    palette = sns.color_palette("colorblind", 4)
    styles = {
        "duel": ("DUEL, batched", palette[0], "o"),
        "floor": ("floor: B x (K+B) product + exp", palette[2], "s"),
        "fifo": ("FIFO", palette[1], "^"),
        "reference": ("DUEL, per-insertion reference", palette[3], "D"),
    }
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    axes = figure.subplots(1, 2)
    panels = (
        (axes[0], "memory_size", "batch_size", grid["batch_size"], "memory size K"),
        (axes[1], "batch_size", "memory_size", grid["memory_size"], "batch size B"),
    )
    # The headline points at the default thread count join the sweep where
    # they add something (the reference at the paper's size).
    threads = f"threads={section['machine']['torch_threads']}"
    headline = [
        point[threads]
        for point in section["headline"].values()
        if threads in point and point[threads]["sizes"]["dim"] == grid["dim"]
    ]
    for ax, varied, fixed, value, label in panels:
        candidates = [
            p for p in section["sweep"] + headline if p["sizes"][fixed] == value
        ]
        for key, (name, color, marker) in styles.items():
            # One value per size: the sweep's where both measured it.
            by_size: dict[int, float] = {}
            for point in candidates:
                if key in point:
                    by_size.setdefault(point["sizes"][varied], point[key]["median_ms"])
            xs = sorted(by_size)
            ys = [by_size[x] for x in xs]
            if xs:
                ax.plot(xs, ys, marker=marker, color=color, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("time per update (ms)")
        ax.set_title(f"{fixed.replace('_', ' ')} {value}, dimension {grid['dim']}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    ratios = [
        p["duel_over_floor"]["median"]
        for p in section["sweep"]
        if p["sizes"]["batch_size"] == grid["batch_size"]
    ]
    if ratios:
        figure.suptitle(
            f"A DUEL update costs {min(ratios):.1f}-{max(ratios):.1f}x its "
            f"similarity floor ({machine_label(section)})"
        )
    return figure


def overhead_figure(results: dict[str, dict[str, Any]]) -> Figure:
    """DUEL's step overhead over its base method: the paper's and ours."""
    bars: list[tuple[str, str, float, float, float]] = []
    for base, duel in DUEL_PAIRS:
        paper = PAPER_COST.loc[duel, "time (h)"] / PAPER_COST.loc[base, "time (h)"]
        bars.append((duel, "paper (RTX 3090 Ti)", paper, paper, paper))
        for kind, record in results.items():
            steps = record.get("sections", {}).get("steps", {})
            for name, setting in steps.get("settings", {}).items():
                value = setting["ratios"][f"{duel}/{base}"]
                bars.append((duel, f"ours ({kind}, {name})", *_triple(value)))
    sources = list(dict.fromkeys(source for _, source, *_ in bars))
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / max(1, len(sources))
    hatches = ["", "//", "..", "xx", "\\\\", "--"]
    for j, (_, duel) in enumerate(DUEL_PAIRS):
        for i, source in enumerate(sources):
            match = [b for b in bars if b[0] == duel and b[1] == source]
            if not match:
                continue
            _, _, median, low, high = match[0]
            ax.bar(
                j + (i - (len(sources) - 1) / 2) * width,
                median,
                width,
                yerr=[[median - low], [high - median]],
                color=method_color(duel),
                hatch=hatches[i % len(hatches)],
                edgecolor="black",
                label=source if j == 0 else None,
            )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(
        range(len(DUEL_PAIRS)),
        [f"{METHOD_LABELS[d]} / {METHOD_LABELS[b]}" for b, d in DUEL_PAIRS],
    )
    ax.set_ylabel("training step time ratio")
    ax.legend(fontsize=8)
    ours = [b[2] for b in bars if b[1].startswith("ours")]
    if ours:
        ax.set_title(
            f"DUEL adds {min(ours) - 1:+.0%} to {max(ours) - 1:+.0%} to a step here; "
            "the paper reports +17% and +29%"
        )
    return figure


def _triple(value: dict[str, float]) -> tuple[float, float, float]:
    return value["median"], value["q25"], value["q75"]
