"""The book's analysis: finished runs as tables, claim checks, the paper's numbers.

A run directory (see :mod:`duel.train`) is the unit everything here reads. The
notebooks stay thin: they call :func:`load_runs`, the ``table*`` functions, the
plots of :mod:`duel.figures` and :func:`check_claims`, and every sentence that
states a measured number is built here from the data.

Example:
    >>> from duel import book
    >>> runs = book.load_runs("runs", "smoke")  # one row per finished run
    >>> book.table1(runs)  # linear-probe accuracy, method x p_max
    >>> for check in book.check_claims(runs):
    ...     print(check.sentence())
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from duel.config import RunConfig, build_config
from duel.data import DATASETS, class_probabilities
from duel.io import read_jsonl
from duel.sweep import P_MAX_GRID

__all__ = ["P_MAX_GRID"]  # re-exported: the notebooks read the grid from here

log = logging.getLogger(__name__)

# The paper's row order of Table 1.
TABLE1_ORDER = ("moco", "simclr", "barlow", "byol", "d-moco", "d-simclr")

# How the paper names each method.
METHOD_LABELS = {
    "moco": "MoCoV2",
    "d-moco": "D-MoCo",
    "simclr": "SimCLR",
    "d-simclr": "D-SimCLR",
    "byol": "BYOL",
    "barlow": "Barlow Twins",
}

# Each DUEL method and the method it extends (claim 2, the cost table).
DUEL_PAIRS = (("moco", "d-moco"), ("simclr", "d-simclr"))

# Table 4: D-SimCLR's negatives ablation, as (negatives, eps) with its label.
ABLATION_SETTINGS = (
    ("batch", 1.0, "batch only, eps 1 (= SimCLR)"),
    ("memory", 0.0, "memory only, eps 0"),
    ("mixed", 0.0, "mixed, eps 0"),
    ("mixed", 1.0, "mixed, eps 1 (default)"),
)

VERDICTS = ("supported", "not supported", "not measured")

# A mime type of our own for the numbers a notebook hands to its tests.
NUMBERS_MIME = "application/vnd.duel.numbers+json"

# ------------------------------------------------------------- the paper's values
# Typed in from the paper, never measured here (SPEC 7). Tables 1, 2 and 4 lost
# their numbers in the text we have, so only these two tables are known.

PAPER_TABLE5 = pd.DataFrame(
    {
        "MoCoV2": [42.61, 82.47, 86.59],
        "D-MoCo": [46.64, 86.19, 88.59],
        "SimCLR": [63.17, 98.90, 99.94],
        "D-SimCLR": [65.84, 99.31, 99.94],
    },
    index=pd.Index(
        ["Tiny-ImageNet (train)", "STL-10 (test)", "ImageNet (val)"],
        name="probe set",
    ),
)
"""The paper's Table 5: linear-probe accuracy (%) after ImageNet-LT pre-training."""

PAPER_MINORITY_PROBABILITY = {0.1: 0.1, 0.25: 0.083, 0.5: 0.056, 0.75: 0.028}
"""The paper's printed probability of each non-dominant class (Table 1's header)."""

PAPER_COST = pd.DataFrame(
    {
        "time (h)": [9.37, 13.47, 10.99, 17.34],
        "VRAM (MB)": [7764, 13196, 7764, 13198],
    },
    index=pd.Index(["moco", "simclr", "d-moco", "d-simclr"], name="method"),
)
"""The paper's Appendix D cost table: one RTX 3090 Ti, CIFAR-10, 160k steps."""

# ------------------------------------------------------------------ loading runs

_SUMMARY_METRICS = (
    "linear_probe_accuracy",
    "knn_accuracy",
    "intra_class_variance",
    "inter_class_similarity",
)

RUN_COLUMNS = (
    "run",
    "method",
    "dataset",
    "p_max",
    "imbalance",
    "seed",
    "steps",
    "backbone",
    "batch_size",
    "memory_size",
    "policy",
    "negatives",
    "eps",
    *_SUMMARY_METRICS,
    *(f"random_init_{name}" for name in _SUMMARY_METRICS),
    "memory_class_entropy",
    "memory_class_counts",
    "num_classes",
    "training_seconds",
    "evaluation_seconds",
    "run_dir",
)


def load_runs(runs_dir: str | os.PathLike, profile: str) -> pd.DataFrame:
    """Every finished run (one with a ``summary.json``) of a profile, one per row.

    Args:
        runs_dir: the folder that holds ``<profile>/<dataset>/<method>/...``.
        profile: the profile's name, e.g. ``"cpu"``.

    Returns:
        A frame with the columns of ``RUN_COLUMNS``: ``run`` is the run's method
        folder (``d-simclr+memory-eps0`` for a variant, the method's name
        otherwise), accuracies are fractions in [0, 1] and
        ``memory_class_entropy`` is in nats (NaN without a memory). Rows are
        ordered by method, p_max and seed; the frame is empty (with the same
        columns) when no run is finished.
    """
    root = Path(runs_dir) / profile
    rows = []
    for summary_path in sorted(root.glob("*/*/*/seed=*/summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            log.warning("skipping %s: %s", summary_path, error)
            continue
        rows.append(_run_row(summary_path.parent, summary))
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    if runs.empty:
        return runs
    runs["_order"] = runs["method"].map(_method_rank)
    runs = runs.sort_values(["_order", "run", "p_max", "seed"], kind="stable")
    return runs.drop(columns="_order").reset_index(drop=True)


def _run_row(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    config = summary["config"]
    memory = summary.get("memory") or {}
    floor = summary.get("random_init", {})
    p_max = config["p_max"] if config.get("imbalance") == "dominant" else math.nan
    row = {
        "run": run_dir.parts[-3],
        "method": config["method"],
        "dataset": config["dataset"],
        "p_max": float(p_max),
        "imbalance": config.get("imbalance", "dominant"),
        "seed": int(config["seed"]),
        "steps": int(summary.get("steps", config["steps"])),
        "backbone": config["backbone"],
        "batch_size": config["batch_size"],
        "memory_size": config["memory_size"],
        "policy": memory.get("policy"),
        "negatives": config.get("negatives"),
        "eps": config.get("eps"),
        "memory_class_entropy": memory.get("class_entropy", math.nan),
        "memory_class_counts": memory.get("class_counts"),
        "num_classes": DATASETS[config["dataset"]].num_classes,
        "training_seconds": summary.get("training_seconds"),
        "evaluation_seconds": summary.get("evaluation_seconds"),
        "run_dir": str(run_dir),
    }
    for name in _SUMMARY_METRICS:
        row[name] = summary.get(name, math.nan)
        row[f"random_init_{name}"] = floor.get(name, math.nan)
    return row


def _method_rank(method: str) -> int:
    order = ("moco", "d-moco", "simclr", "d-simclr", "byol", "barlow")
    return order.index(method) if method in order else len(order)


def main_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of Table 1: each method with its default memory and negatives,
    on the dominant-class stream (variants and ablations left out)."""
    chosen = runs[(runs["run"] == runs["method"]) & (runs["imbalance"] == "dominant")]
    return chosen.reset_index(drop=True)


def load_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-step records of every run in ``runs``, long format.

    Returns:
        Columns ``run, method, p_max, seed, step, loss, knn_accuracy,
        memory_class_entropy`` (NaN where a step has no such record: kNN
        accuracy exists every ``eval_every`` steps only).
    """
    frames = []
    for row in runs.itertuples():
        records = read_jsonl(Path(row.run_dir) / "metrics.jsonl")
        if not records:
            continue
        frame = pd.DataFrame.from_records(records)
        for column in ("loss", "knn_accuracy", "memory_class_entropy"):
            if column not in frame:
                frame[column] = math.nan
        frame = frame[["step", "loss", "knn_accuracy", "memory_class_entropy"]]
        frames.append(
            frame.assign(run=row.run, method=row.method, p_max=row.p_max, seed=row.seed)
        )
    columns = [
        "run",
        "method",
        "p_max",
        "seed",
        "step",
        "loss",
        "knn_accuracy",
        "memory_class_entropy",
    ]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def load_memory_snapshots(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The memory's slots over training, from ``memory.jsonl``.

    Returns:
        One row per snapshot: ``step``, ``labels`` (list, analysis only) and
        ``items`` (list of dataset indices of the filled slots).
    """
    records = read_jsonl(Path(run_dir) / "memory.jsonl")
    return pd.DataFrame.from_records(records, columns=["step", "labels", "items"])


def run_curves(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Per-step records of one run (see :func:`load_curves`)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    row = pd.DataFrame(
        [
            {
                "run": run_dir.parts[-3],
                "method": config["method"],
                "p_max": config["p_max"],
                "seed": config["seed"],
                "run_dir": str(run_dir),
            }
        ]
    )
    return load_curves(row)


def run_dirs(
    runs: pd.DataFrame, methods: Sequence[str], p_max: float
) -> dict[str, list[str]]:
    """method -> run directories (one per seed) of the main grid at one p_max."""
    chosen = main_runs(runs)
    found = {}
    for method in methods:
        rows = chosen[(chosen["method"] == method) & np.isclose(chosen["p_max"], p_max)]
        if len(rows):
            found[method] = rows["run_dir"].tolist()
    return found


def memory_snapshots(
    runs: pd.DataFrame, methods: Sequence[str], p_max: float
) -> dict[str, pd.DataFrame]:
    """method -> memory snapshots of its first seed's run at one p_max."""
    return {
        method: load_memory_snapshots(directories[0])
        for method, directories in run_dirs(runs, methods, p_max).items()
    }


def num_classes_of(runs: pd.DataFrame, default: int = 10) -> int:
    """The number of classes of the runs' dataset (``default`` without runs)."""
    return int(runs["num_classes"].iloc[0]) if len(runs) else default


def run_name(config: RunConfig) -> str:
    """The run's method folder: the method, or ``method+variant``."""
    return config.run_dir().parts[-3]


# ------------------------------------------------------------------- numbers


def stream_entropy(num_classes: int, p_max: float) -> float:
    """Entropy (nats) of the environment's class distribution (SPEC 2)."""
    probabilities = class_probabilities(num_classes, p_max)
    return float(-(probabilities * probabilities.log()).sum())


def summarise(
    runs: pd.DataFrame, value: str, by: Sequence[str] = ("run", "p_max")
) -> pd.DataFrame:
    """Mean, standard deviation and count of ``value`` over seeds.

    Args:
        runs: rows of :func:`load_runs`.
        value: a numeric column.
        by: the columns that name a cell.

    Returns:
        One row per cell with ``mean``, ``std`` (NaN for a single seed) and ``n``.

    Raises:
        ValueError: when ``value`` is not a column of ``runs``.
    """
    if value not in runs:
        raise ValueError(f"value must be a column of runs, got {value!r}")
    grouped = runs.dropna(subset=[value]).groupby(list(by), sort=False)[value]
    return grouped.agg(["mean", "std", "count"]).rename(columns={"count": "n"})


def mean_std(
    mean: float, std: float, n: int, scale: float = 1.0, digits: int = 3
) -> str:
    """``"71.2 ± 1.3"``; a single seed has no spread and shows the mean alone."""
    if n == 0 or not np.isfinite(mean):
        return "–"
    if n < 2 or not np.isfinite(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def method_label(run: str) -> str:
    """The paper's name of a method, plus a run's variant if any.

    ``d-simclr+memory-eps0`` becomes ``D-SimCLR (memory-eps0)``.
    """
    base, _, variant = run.partition("+")
    label = METHOD_LABELS.get(base, base)
    return f"{label} ({variant})" if variant else label


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 1: linear-probe accuracy (%) per method and p_max, mean ± std.

    Args:
        runs: rows of :func:`load_runs` (variants are left out).

    Returns:
        Rows: methods in the paper's order; columns: ``p_max = v``; cells are
        strings such as ``"71.2 ± 1.3"`` (a single seed shows the mean only,
        ``–`` marks a cell without a finished run).
    """
    chosen = main_runs(runs)
    methods = [m for m in TABLE1_ORDER if m in set(chosen["method"])]
    p_values = sorted(set(chosen["p_max"]))
    stats = summarise(chosen, "linear_probe_accuracy")
    table = pd.DataFrame(
        index=pd.Index([METHOD_LABELS[m] for m in methods], name="method"),
        columns=[f"p_max = {p:g}" for p in p_values],
        dtype=object,
    )
    for method in methods:
        for p_max in p_values:
            cell = (
                stats.loc[(method, p_max)] if (method, p_max) in stats.index else None
            )
            table.loc[METHOD_LABELS[method], f"p_max = {p_max:g}"] = (
                "–"
                if cell is None
                else mean_std(cell["mean"], cell["std"], int(cell["n"]), 100, 1)
            )
    return table


def table1_means(runs: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Table 1's means as numbers: ``{method: {"0.75": accuracy, ...}}``."""
    stats = summarise(main_runs(runs), "linear_probe_accuracy")
    means: dict[str, dict[str, float]] = {}
    for (method, p_max), row in stats.iterrows():
        means.setdefault(method, {})[f"{p_max:g}"] = float(row["mean"])
    return means


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 2: memory class entropy and class geometry per method and p_max.

    MoCoV2 and D-MoCo come first (the paper's comparison), then the other
    methods. The stream's own class entropy is given beside the memory's.

    Returns:
        Index (method, p_max); string cells, mean ± std over seeds; ``–``
        where a method has no memory.
    """
    chosen = main_runs(runs)
    rows = []
    for (method, p_max), group in chosen.groupby(["method", "p_max"], sort=False):
        num_classes = int(group["num_classes"].iloc[0])
        row = {
            "method": METHOD_LABELS[method],
            "p_max": p_max,
            "_rank": _method_rank(method),
            "stream class entropy (nats)": f"{stream_entropy(num_classes, p_max):.3f}",
        }
        for column, title in (
            ("memory_class_entropy", "memory class entropy (nats, higher is better)"),
            ("intra_class_variance", "intra-class variance (lower is better)"),
            ("inter_class_similarity", "inter-class similarity (lower is better)"),
        ):
            values = group[column].dropna()
            row[title] = mean_std(values.mean(), values.std(), len(values))
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).sort_values(["_rank", "p_max"], kind="stable")
    return table.drop(columns="_rank").set_index(["method", "p_max"])


def table4(runs: pd.DataFrame, p_max: float = 0.75) -> pd.DataFrame:
    """Table 4: D-SimCLR's negatives and eps at one p_max.

    Returns:
        One row per setting of ``ABLATION_SETTINGS`` that has a finished run,
        with linear-probe and kNN accuracy (%) and the memory's class entropy.
    """
    rows = []
    for negatives, eps, label in ABLATION_SETTINGS:
        group = ablation_runs(runs, negatives, eps, p_max)
        if group.empty:
            continue
        row = {"setting": label}
        for column, title, scale, digits in (
            ("linear_probe_accuracy", "linear-probe accuracy (%)", 100, 1),
            ("knn_accuracy", "kNN accuracy (%)", 100, 1),
            ("memory_class_entropy", "memory class entropy (nats)", 1, 3),
        ):
            values = group[column].dropna()
            row[title] = mean_std(
                values.mean(), values.std(), len(values), scale, digits
            )
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index("setting")


def ablation_runs(
    runs: pd.DataFrame, negatives: str, eps: float, p_max: float
) -> pd.DataFrame:
    """The D-SimCLR runs (DUEL memory) of one negatives setting at one p_max."""
    if runs.empty:
        return runs
    chosen = runs[
        (runs["method"] == "d-simclr")
        & (runs["negatives"] == negatives)
        & np.isclose(runs["eps"].astype(float), eps)
        & np.isclose(runs["p_max"], p_max)
        & (runs["policy"] == "duel")
    ]
    return chosen


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's Appendix D cost beside our training time per method.

    Our time is the mean training time of a run (seconds, all p_max and seeds
    of the profile); the overhead is relative to the method DUEL extends.
    VRAM is not measured here.
    """
    chosen = main_runs(runs)
    ours = chosen.groupby("method")["training_seconds"].mean()
    rows = []
    for method in PAPER_COST.index:
        base = next((b for b, d in DUEL_PAIRS if d == method), None)
        paper_time = PAPER_COST.loc[method, "time (h)"]
        row = {
            "method": METHOD_LABELS[method],
            "paper: time (h)": paper_time,
            "paper: VRAM (MB)": int(PAPER_COST.loc[method, "VRAM (MB)"]),
            "paper: overhead": _overhead(paper_time, PAPER_COST, base),
            "ours: time per run (s)": (
                f"{ours[method]:.1f}" if method in ours else "not measured"
            ),
            "ours: overhead": "–",
        }
        if base is not None and method in ours and base in ours:
            row["ours: overhead"] = f"{ours[method] / ours[base] - 1:+.0%}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def _overhead(time: float, table: pd.DataFrame, base: str | None) -> str:
    if base is None:
        return "–"
    return f"{time / table.loc[base, 'time (h)'] - 1:+.0%}"


def profile_tag(runs: pd.DataFrame, profile: str) -> str:
    """A short provenance for captions: ``smoke profile: digits, small, 30 steps``."""
    if runs.empty:
        return f"{profile} profile: no finished run"

    def listed(column: str) -> str:
        return "/".join(str(v) for v in sorted(set(runs[column])))

    return (
        f"{profile} profile: {listed('dataset')}, {listed('backbone')} backbone, "
        f"{listed('steps')} steps"
    )


def describe_profile(runs: pd.DataFrame, profile: str | None = None) -> str:
    """One sentence on where the numbers come from: dataset, backbone, steps, seeds.

    Args:
        runs: rows of :func:`load_runs`.
        profile: the profile's name, to say so when ``runs`` is empty.
    """
    if runs.empty:
        return f"No finished run of the {profile or 'requested'} profile was found."
    seeds = runs.groupby(["run", "p_max"])["seed"].nunique()

    def listed(column: str) -> str:
        return ", ".join(str(v) for v in sorted(set(runs[column])))

    seed_text = (
        f"{seeds.min()} seed per cell"
        if seeds.max() == seeds.min() == 1
        else f"{seeds.min()} to {seeds.max()} seeds per cell"
        if seeds.max() != seeds.min()
        else f"{seeds.min()} seeds per cell"
    )
    profile = profile or "?"
    return (
        f"Measured on the {profile} profile: dataset {listed('dataset')}, "
        f"{listed('backbone')} backbone, {listed('steps')} steps of batch "
        f"{listed('batch_size')}, memory K = {listed('memory_size')}; "
        f"{len(runs)} finished runs, {seed_text} (mean ± std over seeds where "
        "there are several)."
    )


def environment_table(
    num_classes: int = 10, p_values: Sequence[float] = P_MAX_GRID
) -> pd.DataFrame:
    """The stream per p_max: class probabilities and entropy, beside the paper's
    printed probability of a non-dominant class."""
    rows = []
    for p_max in p_values:
        probabilities = class_probabilities(num_classes, p_max)
        paper = PAPER_MINORITY_PROBABILITY.get(p_max)
        rows.append(
            {
                "p_max": p_max,
                "dominant class": round(float(probabilities[0]), 3),
                "each other class": round(float(probabilities[1]), 3),
                "paper: each other class": "–" if paper is None else paper,
                "stream entropy (nats)": round(stream_entropy(num_classes, p_max), 3),
                "log C (nats)": round(math.log(num_classes), 3),
            }
        )
    return pd.DataFrame(rows).set_index("p_max")


def draw_stream_labels(
    labels: Any, p_max: float, batches: int, batch_size: int, seed: int = 0
) -> np.ndarray:
    """Labels of ``batches`` batches drawn by the two-step sampler (analysis).

    Args:
        labels: (N,) class labels of the dataset the stream draws from.
        p_max: the dominant class's probability.
        batches: number of batches to draw, >= 1.
        batch_size: images per batch, >= 1.
        seed: the stream's seed.

    Returns:
        (batches * batch_size,) labels of the drawn images.
    """
    import torch

    from duel.data import ImbalancedStream

    if batches < 1:
        raise ValueError(f"batches must be an integer >= 1, got {batches!r}")
    labels = torch.as_tensor(labels)
    num_classes = int(labels.max()) + 1
    stream = ImbalancedStream(
        labels, class_probabilities(num_classes, p_max), batch_size, seed=seed
    )
    drawn = torch.cat([labels[stream.next_batch()] for _ in range(batches)])
    return drawn.numpy()


def config_table(config: RunConfig) -> pd.DataFrame:
    """The fields of a run's configuration that a reader compares with the paper."""
    rows = {
        "method": config.method,
        "memory policy": config.policy or "none",
        "dataset": config.dataset,
        "p_max": config.p_max,
        "seed": config.seed,
        "steps": config.steps,
        "batch size": config.batch_size,
        "backbone": config.backbone,
        "projection": f"{config.projector}, {config.projection_dim}-d",
        "optimiser": f"Adam, lr {config.lr:g}, weight decay {config.weight_decay:g}",
        "tau": config.tau,
        "memory size K": config.memory_size if config.policy else "–",
        "run directory": str(config.run_dir()),
    }
    frame = pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=rows)
    frame.index.name = "setting"
    return frame


def departures_markdown(profile: str) -> str:
    """A profile's departures from the paper as a Markdown list."""
    from duel.config import PROFILES

    if profile not in PROFILES:
        raise ValueError(
            f"profile must be one of {', '.join(PROFILES)}, got {profile!r}"
        )
    lines = [f"- {departure}" for departure in PROFILES[profile]["departures"]]
    return "\n".join(lines) + "\n"


def evaluation_sentence(summary: dict[str, Any]) -> str:
    """What training did to the frozen backbone, against its random init."""
    floor = summary.get("random_init", {})
    text = (
        f"Linear-probe accuracy is {100 * summary['linear_probe_accuracy']:.1f}% "
        f"after training against {100 * floor['linear_probe_accuracy']:.1f}% for "
        f"the same backbone at its random initialisation; kNN accuracy is "
        f"{100 * summary['knn_accuracy']:.1f}% against "
        f"{100 * floor['knn_accuracy']:.1f}%."
    )
    memory = summary.get("memory")
    if memory:
        counts = memory["class_counts"]
        text += (
            f" The memory ({memory['policy']}, {memory['filled']} of "
            f"{memory['size']} slots filled) ends with class entropy "
            f"{memory['class_entropy']:.3f} nats; its largest class holds "
            f"{max(counts)} slots and its smallest {min(counts)}."
        )
    return text


def ablation_configs(
    profile: str,
    p_max: float = 0.75,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    runs_dir: str | None = None,
) -> list[RunConfig]:
    """The D-SimCLR runs of Table 4: every setting of ``ABLATION_SETTINGS`` per seed."""
    return [
        run_config(
            profile,
            method="d-simclr",
            negatives=negatives,
            eps=eps,
            p_max=p_max,
            seed=seed,
            steps=steps,
            runs_dir=runs_dir,
        )
        for negatives, eps, _ in ABLATION_SETTINGS
        for seed in seeds
    ]


# -------------------------------------------------------------------- claims


@dataclass(frozen=True)
class ClaimCheck:
    """What the data says about one of SPEC 8's claims.

    Attributes:
        number: the claim's number (1-4).
        claim: the claim in words.
        verdict: ``supported``, ``not supported`` or ``not measured``.
        evidence: a sentence with the numbers behind the verdict.
    """

    number: int
    claim: str
    verdict: str
    evidence: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(
                f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}"
            )

    def sentence(self) -> str:
        """``"Claim 1 (...): supported. <evidence>"``."""
        return f"Claim {self.number} ({self.claim}): {self.verdict}. {self.evidence}"


CLAIMS = {
    1: "the DUEL memory's class entropy rises toward log C while a FIFO queue's "
    "tracks the stream's entropy",
    2: "D-MoCo and D-SimCLR lose less linear-probe accuracy than their bases as "
    "p_max grows",
    3: "at p_max = 0.75 D-MoCo's inter-class similarity stays low while MoCo's "
    "rises, and intra-class variance is about the same",
    4: "mixed negatives with eps = 1 is the best D-SimCLR setting",
}

# Claim 3's "about the same": intra-class variances within this relative gap.
SAME_VARIANCE_GAP = 0.10


def check_claims(runs: pd.DataFrame, p_max: float = 0.75) -> list[ClaimCheck]:
    """Tests SPEC 8's four claims on finished runs; one :class:`ClaimCheck` each.

    Args:
        runs: rows of :func:`load_runs` (the main grid and, for claim 4, the
            negatives ablation).
        p_max: the imbalance at which claims 3 and 4 are read.
    """
    return [
        _claim_memory_entropy(runs),
        _claim_accuracy_drop(runs),
        _claim_geometry(runs, p_max),
        _claim_negatives(runs, p_max),
    ]


def _cell(runs: pd.DataFrame, method: str, p_max: float, value: str) -> pd.Series:
    chosen = runs[(runs["method"] == method) & np.isclose(runs["p_max"], p_max)]
    return chosen[value].dropna()


def _seeds_note(*groups: pd.Series) -> str:
    counts = sorted({len(g) for g in groups})
    if counts == [1]:
        return " One seed per cell, so the spread over seeds is unknown."
    if len(counts) == 1:
        return f" Means over {counts[0]} seeds."
    return f" Means over {counts[0]} to {counts[-1]} seeds."


def _claim_memory_entropy(runs: pd.DataFrame) -> ClaimCheck:
    chosen = main_runs(runs)
    p_values = sorted(
        p
        for p in set(chosen["p_max"])
        if len(_cell(chosen, "moco", p, "memory_class_entropy"))
        and len(_cell(chosen, "d-moco", p, "memory_class_entropy"))
    )
    if not p_values:
        return ClaimCheck(
            1,
            CLAIMS[1],
            "not measured",
            "No p_max has finished MoCoV2 and D-MoCo runs.",
        )
    num_classes = int(chosen["num_classes"].iloc[0])
    parts, holds, groups = [], [], []
    for p_max in p_values:
        fifo = _cell(chosen, "moco", p_max, "memory_class_entropy")
        duel = _cell(chosen, "d-moco", p_max, "memory_class_entropy")
        stream = stream_entropy(num_classes, p_max)
        groups += [fifo, duel]
        parts.append(
            f"at p_max = {p_max:g} the DUEL memory holds {duel.mean():.3f} nats, "
            f"the FIFO queue {fifo.mean():.3f}, the stream {stream:.3f}"
        )
        # A balanced stream leaves nothing to rise toward: read imbalanced ones.
        if p_max > 1 / num_classes + 1e-9:
            holds.append(
                duel.mean() > stream
                and duel.mean() > fifo.mean()
                and abs(fifo.mean() - stream) < abs(duel.mean() - stream)
            )
    if not holds:
        return ClaimCheck(
            1,
            CLAIMS[1],
            "not measured",
            f"Only balanced streams were measured: {'; '.join(parts)}.",
        )
    verdict = "supported" if all(holds) else "not supported"
    evidence = (
        f"With log C = {math.log(num_classes):.3f} nats, {'; '.join(parts)}. "
        f"The DUEL memory is above both the stream and the FIFO queue, and the "
        f"queue is closer to the stream, at {sum(holds)} of {len(holds)} "
        "imbalanced p_max values." + _seeds_note(*groups)
    )
    return ClaimCheck(1, CLAIMS[1], verdict, evidence)


def accuracy_drops(runs: pd.DataFrame) -> pd.DataFrame:
    """Linear-probe accuracy at the lowest and highest measured p_max per method.

    Returns:
        Rows per method with ``low``, ``high`` (the two p_max), ``at_low``,
        ``at_high`` (mean accuracy, fraction) and ``drop`` (at_low - at_high);
        methods measured at fewer than two p_max are left out.
    """
    chosen = main_runs(runs)
    rows = []
    for method, group in chosen.groupby("method", sort=False):
        p_values = sorted(set(group["p_max"]))
        if len(p_values) < 2:
            continue
        low, high = p_values[0], p_values[-1]
        at_low = _cell(group, method, low, "linear_probe_accuracy")
        at_high = _cell(group, method, high, "linear_probe_accuracy")
        rows.append(
            {
                "method": method,
                "low": low,
                "high": high,
                "at_low": at_low.mean(),
                "at_high": at_high.mean(),
                "drop": at_low.mean() - at_high.mean(),
                "seeds": min(len(at_low), len(at_high)),
            }
        )
    return pd.DataFrame(
        rows, columns=["method", "low", "high", "at_low", "at_high", "drop", "seeds"]
    ).set_index("method")


def _claim_accuracy_drop(runs: pd.DataFrame) -> ClaimCheck:
    drops = accuracy_drops(runs)
    parts, holds = [], []
    for base, duel in DUEL_PAIRS:
        if base not in drops.index or duel not in drops.index:
            continue
        a, b = drops.loc[base], drops.loc[duel]
        holds.append(b["drop"] < a["drop"])
        parts.append(
            f"from p_max = {a['low']:g} to {a['high']:g} {METHOD_LABELS[base]} "
            f"moved {_points(-a['drop'])} ({100 * a['at_low']:.1f}% to "
            f"{100 * a['at_high']:.1f}%) and {METHOD_LABELS[duel]} "
            f"{_points(-b['drop'])} ({100 * b['at_low']:.1f}% to "
            f"{100 * b['at_high']:.1f}%)"
        )
    if not holds:
        return ClaimCheck(
            2,
            CLAIMS[2],
            "not measured",
            "No DUEL method and its base were both measured at two p_max values.",
        )
    verdict = "supported" if all(holds) else "not supported"
    seeds = int(drops["seeds"].min())
    note = (
        " One seed per cell, so the spread over seeds is unknown."
        if seeds < 2
        else f" Means over at least {seeds} seeds."
    )
    evidence = (
        "Linear-probe accuracy: "
        + "; ".join(parts)
        + f". The DUEL method lost less in {sum(holds)} of {len(holds)} pairs."
        + note
    )
    return ClaimCheck(2, CLAIMS[2], verdict, evidence)


def _points(change: float) -> str:
    return f"{100 * change:+.1f} points"


def _claim_geometry(runs: pd.DataFrame, p_max: float) -> ClaimCheck:
    chosen = main_runs(runs)
    inter = {
        m: _cell(chosen, m, p_max, "inter_class_similarity") for m in DUEL_PAIRS[0]
    }
    intra = {m: _cell(chosen, m, p_max, "intra_class_variance") for m in DUEL_PAIRS[0]}
    if any(len(v) == 0 for v in (*inter.values(), *intra.values())):
        return ClaimCheck(
            3,
            CLAIMS[3],
            "not measured",
            f"MoCoV2 and D-MoCo are not both finished at p_max = {p_max:g}.",
        )
    fifo_inter, duel_inter = inter["moco"].mean(), inter["d-moco"].mean()
    fifo_intra, duel_intra = intra["moco"].mean(), intra["d-moco"].mean()
    gap = abs(duel_intra - fifo_intra) / max(abs(fifo_intra), 1e-12)
    holds = [duel_inter < fifo_inter, gap <= SAME_VARIANCE_GAP]
    text = (
        f"At p_max = {p_max:g} D-MoCo's inter-class similarity is "
        f"{duel_inter:.3f} against MoCoV2's {fifo_inter:.3f}; intra-class "
        f"variance is {duel_intra:.3f} against {fifo_intra:.3f}, "
        f"{gap:.0%} apart (about the same means within "
        f"{SAME_VARIANCE_GAP:.0%})."
    )
    p_values = sorted(set(chosen["p_max"]))
    low = p_values[0]
    if low < p_max:
        rise = {
            m: inter[m].mean() - _cell(chosen, m, low, "inter_class_similarity").mean()
            for m in inter
        }
        if all(np.isfinite(v) for v in rise.values()):
            holds.append(rise["moco"] > rise["d-moco"])
            text += (
                f" From p_max = {low:g} MoCoV2's inter-class similarity moved by "
                f"{rise['moco']:+.3f} and D-MoCo's by {rise['d-moco']:+.3f}."
            )
    verdict = "supported" if all(holds) else "not supported"
    return ClaimCheck(3, CLAIMS[3], verdict, text + _seeds_note(*inter.values()))


def _claim_negatives(runs: pd.DataFrame, p_max: float) -> ClaimCheck:
    measured = []
    for negatives, eps, label in ABLATION_SETTINGS:
        group = ablation_runs(runs, negatives, eps, p_max)["linear_probe_accuracy"]
        if len(group):
            measured.append((label, negatives, eps, group))
    if len(measured) < 2 or not any(
        (n, e) == ("mixed", 1.0) for _, n, e, _ in measured
    ):
        return ClaimCheck(
            4,
            CLAIMS[4],
            "not measured",
            f"The D-SimCLR negatives ablation at p_max = {p_max:g} has "
            f"{len(measured)} of {len(ABLATION_SETTINGS)} settings finished.",
        )
    best = max(measured, key=lambda entry: entry[3].mean())
    verdict = "supported" if best[1:3] == ("mixed", 1.0) else "not supported"
    listed = "; ".join(
        f"{label}: {100 * values.mean():.1f}%" for label, _, _, values in measured
    )
    evidence = (
        f"Linear-probe accuracy at p_max = {p_max:g}: {listed}. The best is "
        f"{best[0]}." + _seeds_note(*(entry[3] for entry in measured))
    )
    return ClaimCheck(4, CLAIMS[4], verdict, evidence)


def claims_markdown(checks: Iterable[ClaimCheck]) -> str:
    """The checks as a Markdown list, one generated sentence per claim."""
    lines = []
    for check in checks:
        lines.append(
            f"- **Claim {check.number}** ({check.claim}): **{check.verdict}**. "
            f"{check.evidence}"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------- training runs


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`train_or_load` did.

    Attributes:
        config: the run's configuration.
        summary: its ``summary.json`` contents.
        status: ``trained`` (from scratch), ``resumed`` or ``loaded`` (finished
            before, read back without training or evaluating again).
        start_step: the step training started from.
    """

    config: RunConfig
    summary: dict[str, Any]
    status: str
    start_step: int

    def sentence(self) -> str:
        """One sentence on what happened, for the notebook."""
        steps = self.config.steps
        if self.status == "loaded":
            return (
                f"This run had finished before ({steps} steps): its evaluation "
                "was read back from summary.json, nothing was trained."
            )
        if self.status == "resumed":
            return (
                f"Training resumed from step {self.start_step} (the last "
                f"checkpoint) and went on to step {steps}."
            )
        return f"Trained from scratch for {steps} steps."


def summary_matches(summary: dict[str, Any], config: RunConfig) -> bool:
    """Whether a summary was written by a run of the same configuration."""
    from duel.train import config_differences

    record = dict(summary.get("config", {}))
    record["departures"] = tuple(record.get("departures", ()))
    known = {f.name for f in fields(RunConfig)}
    try:
        stored = RunConfig(**{k: v for k, v in record.items() if k in known})
    except TypeError:
        return False
    return not config_differences(stored.identity(), config.identity())


def train_or_load(config: RunConfig, progress: bool = True) -> RunOutcome:
    """Trains a run, resumes it from its checkpoint, or reads its finished summary.

    A run whose ``summary.json`` was written by the same configuration is not
    trained or evaluated again.

    Args:
        config: a validated configuration.
        progress: show training's progress bar.

    Raises:
        duel.train.ConfigMismatchError: the run directory holds another
            configuration.
    """
    from duel.train import train

    summary_path = config.run_dir() / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary_matches(summary, config):
            return RunOutcome(config, summary, "loaded", config.steps)
    metrics = read_jsonl(config.run_dir() / "metrics.jsonl")
    checkpoint = config.run_dir() / "checkpoint.pt"
    start = metrics[-1]["step"] if metrics and checkpoint.exists() else 0
    summary = train(config, progress=progress)
    if summary is None:  # only when evaluation is off or training stopped early
        raise RuntimeError(f"run {config.run_dir()} did not finish")
    return RunOutcome(config, summary, "resumed" if start else "trained", start)


def outcomes_sentence(outcomes: Sequence[RunOutcome]) -> str:
    """How many runs were trained, resumed or read back."""
    counts = {status: 0 for status in ("trained", "resumed", "loaded")}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return (
        f"Of {len(outcomes)} runs, {counts['trained']} were trained from scratch, "
        f"{counts['resumed']} resumed from a checkpoint and {counts['loaded']} "
        "had finished before and were read back."
    )


def run_config(profile: str, **parameters: Any) -> RunConfig:
    """:func:`duel.config.build_config` for notebooks: a bad parameter raises a
    :class:`~duel.config.ConfigError` whose one-line message names it, without
    the chain of library frames behind it."""
    from duel.config import ConfigError

    try:
        return build_config(profile, **parameters)
    except ConfigError as error:
        raise ConfigError(str(error)) from None


def summary_table(summary: dict[str, Any]) -> pd.DataFrame:
    """A run's final evaluation beside its random-initialisation floor."""
    floor = summary.get("random_init", {})
    rows = []
    for name, title, scale in (
        ("linear_probe_accuracy", "linear-probe accuracy (%)", 100),
        ("knn_accuracy", "kNN accuracy (%)", 100),
        ("intra_class_variance", "intra-class variance", 1),
        ("inter_class_similarity", "inter-class similarity", 1),
    ):
        rows.append(
            {
                "measure": title,
                "trained": round(summary[name] * scale, 3),
                "random init": round(floor.get(name, math.nan) * scale, 3),
            }
        )
    memory = summary.get("memory")
    if memory:
        rows.append(
            {
                "measure": f"memory class entropy (nats, {memory['policy']})",
                "trained": round(memory["class_entropy"], 3),
                "random init": math.nan,
            }
        )
    return pd.DataFrame(rows).set_index("measure")


# ------------------------------------------------------- notebook numbers


def record_numbers(numbers: dict[str, Any]) -> None:
    """Shows ``numbers`` as a notebook output that :func:`read_numbers` finds.

    Notebooks call this in a cell tagged ``remove-cell`` so the book does not
    show it; tests read the executed notebook instead of parsing figures.
    """
    from IPython.display import display

    clean = json.loads(json.dumps(numbers, default=_plain), parse_constant=_nan_to_none)
    display({NUMBERS_MIME: clean, "text/plain": json.dumps(clean)}, raw=True)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot record a {type(value).__name__}")


def _nan_to_none(_: str) -> None:
    return None


def read_numbers(notebook: str | os.PathLike) -> dict[str, Any]:
    """The numbers an executed notebook recorded with :func:`record_numbers`."""
    import nbformat

    document = nbformat.read(str(notebook), as_version=4)
    numbers: dict[str, Any] = {}
    for cell in document.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if NUMBERS_MIME in data:
                numbers.update(data[NUMBERS_MIME])
    return numbers


def styled(table: pd.DataFrame, caption: str) -> Any:
    """A table with its caption, for display in a notebook.

    Numbers show as written (``0.75``, ``51.4``), missing ones as ``–``.
    """

    def number(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "–" if not np.isfinite(value) else f"{value:g}"
        return str(value)

    return table.style.set_caption(caption).format(number).format_index(number)
