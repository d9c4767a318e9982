"""The book's figures: one function per figure, each returning a matplotlib Figure.

Every method keeps one colour from seaborn's colour-blind palette in every
figure (:data:`METHOD_COLORS`); ordered quantities (p_max, training step) use
the colour-blind-safe ``cividis`` map. Titles that state a finding are computed
from the data they plot.

Figures are built with :class:`matplotlib.figure.Figure`, outside pyplot's
global state, so a notebook shows each one exactly once: as the value of the
cell that returns it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from duel.book import (
    DUEL_PAIRS,
    METHOD_LABELS,
    accuracy_drops,
    main_runs,
    method_label,
    stream_entropy,
)
from duel.data import class_probabilities, long_tailed_probabilities

_PALETTE = sns.color_palette("colorblind", 10)

METHOD_COLORS = {
    "moco": _PALETTE[0],
    "d-moco": _PALETTE[1],
    "simclr": _PALETTE[2],
    "d-simclr": _PALETTE[3],
    "byol": _PALETTE[4],
    "barlow": _PALETTE[5],
    # The D-SimCLR negatives ablation (Table 4).
    "d-simclr+batch-eps1": _PALETTE[6],
    "d-simclr+memory-eps0": _PALETTE[8],
    "d-simclr+mixed-eps0": _PALETTE[9],
}
"""One colour per method (and per D-SimCLR ablation setting), in every figure."""

_OTHER_COLOR = _PALETTE[7]


def method_color(run: str) -> tuple[float, float, float]:
    """The colour of a method or a run's variant; grey for anything else."""
    return METHOD_COLORS.get(run, _OTHER_COLOR)


def _figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6):
    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, axes


def set_title(figure: Figure, text: str, ax: Axes | None = None) -> None:
    """A title wrapped to the width of the figure (or of one of its panels)."""
    width_inches = figure.get_figwidth()
    if ax is not None:
        width_inches *= ax.get_position().width
    wrapped = textwrap.fill(text, max(30, int(width_inches * 11)))
    if ax is None:
        figure.suptitle(wrapped)
    else:
        ax.set_title(wrapped)


def _relative(difference: float, unit: str) -> str:
    """``"4.0 points below"``, ``"1.2 points above"`` or ``"level with"``."""
    if round(abs(difference), 1) == 0:
        return "level with"
    side = "above" if difference > 0 else "below"
    return f"{abs(difference):.1f} {unit} {side}"


def _legend_below(figure: Figure, axes: np.ndarray) -> None:
    handles, labels = {}, []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if labels:
        figure.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside lower center",
            ncols=min(len(labels), 6),
            frameon=False,
        )


# ------------------------------------------------------------- environment


def plot_class_probabilities(
    num_classes: int = 10, p_values: Sequence[float] = (0.1, 0.25, 0.5, 0.75)
) -> Figure:
    """Class probabilities of the two-step sampler, one bar group per class."""
    figure, axes = _figure(width=8)
    ax = axes[0, 0]
    colors = sns.color_palette("cividis", len(p_values))
    width = 0.8 / len(p_values)
    classes = np.arange(num_classes)
    for i, (p_max, color) in enumerate(zip(p_values, colors, strict=True)):
        probabilities = class_probabilities(num_classes, p_max).numpy()
        ax.bar(
            classes + (i - (len(p_values) - 1) / 2) * width,
            100 * probabilities,
            width,
            color=color,
            label=f"p_max = {p_max:g}",
        )
    ax.set_xticks(classes)
    ax.set_xlabel("class (0 is the dominant class c_max)")
    ax.set_ylabel("probability of the class (%)")
    rarest = (1 - max(p_values)) / (num_classes - 1)
    set_title(
        figure,
        f"At p_max = {max(p_values):g} each of the {num_classes - 1} other classes "
        f"gets {100 * rarest:.1f}%",
        ax,
    )
    ax.legend(frameon=False)
    return figure


def plot_stream_histogram(
    drawn_labels: np.ndarray, num_classes: int, p_max: float
) -> Figure:
    """Class frequencies of labels drawn from the stream beside the target ones.

    Args:
        drawn_labels: (n,) labels of the drawn images (looked up for analysis).
        num_classes: C.
        p_max: the stream's dominant-class probability.
    """
    figure, axes = _figure(width=8)
    ax = axes[0, 0]
    counts = np.bincount(np.asarray(drawn_labels), minlength=num_classes)
    drawn = counts / counts.sum()
    expected = class_probabilities(num_classes, p_max).numpy()
    classes = np.arange(num_classes)
    colors = sns.color_palette("cividis", 2)
    ax.bar(classes - 0.2, 100 * expected, 0.4, color=colors[0], label="target")
    ax.bar(classes + 0.2, 100 * drawn, 0.4, color=colors[1], label="drawn")
    ax.set_xticks(classes)
    ax.set_xlabel("class (0 is the dominant class c_max)")
    ax.set_ylabel("share of the draws (%)")
    worst = 100 * np.abs(drawn - expected).max()
    set_title(
        figure,
        f"{len(drawn_labels):,} draws at p_max = {p_max:g} match the target "
        f"within {worst:.1f} points",
        ax,
    )
    ax.legend(frameon=False)
    return figure


def plot_long_tail(num_classes: int = 1000, ratio: float = 256.0) -> Figure:
    """The long-tailed class profile (ImageNet-LT: 1280 down to 5 images)."""
    figure, axes = _figure(width=7)
    ax = axes[0, 0]
    probabilities = long_tailed_probabilities(num_classes, ratio).numpy()
    ax.plot(np.arange(1, num_classes + 1), 100 * probabilities, color="black")
    ax.set_yscale("log")
    ax.set_xlabel("class rank (1 is the most frequent)")
    ax.set_ylabel("probability of the class (%, log scale)")
    head = probabilities[: max(1, num_classes // 10)].sum()
    set_title(
        figure,
        f"Long tail over {num_classes} classes: the top 10% of classes draw "
        f"{100 * head:.0f}% of the stream",
        ax,
    )
    return figure


# ------------------------------------------------------------------ one run


def plot_run_curves(
    curves: pd.DataFrame, method: str, p_max: float, num_classes: int
) -> Figure:
    """Loss, kNN accuracy and (for memory methods) memory class entropy of one run.

    Args:
        curves: rows of :func:`duel.book.load_curves` for one run.
        method: the run's method folder name.
        p_max: the stream's p_max.
        num_classes: C, for log C and the stream's entropy.
    """
    has_memory = curves["memory_class_entropy"].notna().any()
    figure, axes = _figure(ncols=3 if has_memory else 2, width=4.2)
    color = method_color(method)
    loss_ax, knn_ax = axes[0, 0], axes[0, 1]
    loss_ax.plot(curves["step"], curves["loss"], color=color, linewidth=1)
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel("training loss (nats)")
    loss_ax.set_title("Training loss")

    knn = curves.dropna(subset=["knn_accuracy"])
    knn_ax.plot(knn["step"], 100 * knn["knn_accuracy"], "o-", color=color)
    knn_ax.set_xlabel("training step")
    knn_ax.set_ylabel("kNN accuracy, test subset (%)")
    knn_ax.set_title("kNN accuracy during training")

    title = f"{method_label(method)} at p_max = {p_max:g}"
    if len(knn):
        title += (
            f": kNN accuracy {100 * knn['knn_accuracy'].iloc[0]:.1f}% at step "
            f"{int(knn['step'].iloc[0])}, {100 * knn['knn_accuracy'].iloc[-1]:.1f}%"
            f" at step {int(knn['step'].iloc[-1])}"
        )
    if has_memory:
        ax = axes[0, 2]
        entropy = curves.dropna(subset=["memory_class_entropy"])
        ax.plot(entropy["step"], entropy["memory_class_entropy"], color=color)
        _entropy_references(ax, num_classes, p_max)
        ax.set_xlabel("training step")
        ax.set_ylabel("class entropy of the memory (nats)")
        ax.set_title("Memory class entropy")
        ax.legend(frameon=False, loc="lower right")
        title += (
            f"; memory entropy ends at {entropy['memory_class_entropy'].iloc[-1]:.2f}"
            f" nats (stream {stream_entropy(num_classes, p_max):.2f})"
        )
    set_title(figure, title)
    return figure


def _entropy_references(ax: Axes, num_classes: int, p_max: float) -> None:
    ax.axhline(
        math.log(num_classes), color="black", linestyle=":", label="log C (balanced)"
    )
    ax.axhline(
        stream_entropy(num_classes, p_max),
        color="grey",
        linestyle="--",
        label="the stream's entropy",
    )


# -------------------------------------------------------------- the grid


def plot_linear_probe_vs_p_max(runs: pd.DataFrame) -> Figure:
    """Table 1 as a figure: linear-probe accuracy against p_max, per method."""
    figure, axes = _figure(width=7, height=4.2)
    ax = axes[0, 0]
    chosen = main_runs(runs)
    for method, group in chosen.groupby("method", sort=False):
        stats = group.groupby("p_max")["linear_probe_accuracy"].agg(["mean", "std"])
        ax.errorbar(
            stats.index,
            100 * stats["mean"],
            yerr=100 * stats["std"].fillna(0),
            marker="o",
            capsize=3,
            color=method_color(method),
            label=METHOD_LABELS[method],
        )
    ax.set_xlabel("p_max, probability of the dominant class")
    ax.set_ylabel("linear-probe accuracy (%)")
    set_title(figure, _drop_title(runs), ax)
    _legend_below(figure, axes)
    return figure


def _drop_title(runs: pd.DataFrame) -> str:
    drops = accuracy_drops(runs)
    parts = [
        f"{METHOD_LABELS[m]} {100 * -drops.loc[m, 'drop']:+.1f}"
        for pair in DUEL_PAIRS
        for m in pair
        if m in drops.index
    ]
    if not parts:
        return "Linear-probe accuracy against p_max"
    low, high = drops["low"].min(), drops["high"].max()
    return (
        f"Change in accuracy from p_max = {low:g} to {high:g} (points): "
        + ", ".join(parts)
    )


def _curves_per_p_max(
    curves: pd.DataFrame,
    column: str,
    ylabel: str,
    empty: str,
    decorate: Callable[[Axes, float], None] | None = None,
    **line: Any,
) -> tuple[Figure, list[float]]:
    """One panel per p_max, one line per method of ``column`` over steps.

    Lines are means over seeds, bands one standard deviation. ``decorate``
    adds to each panel (given its p_max) before the shared legend is drawn;
    ``line`` goes to seaborn's ``lineplot``. Returns the figure and the p_max
    of its panels (none, and a figure saying ``empty``, when no run recorded
    ``column``).
    """
    curves = curves[curves["run"] == curves["method"]].dropna(subset=[column])
    p_values = sorted(set(curves["p_max"].dropna()))
    if not p_values:
        figure, axes = _figure()
        axes[0, 0].set_title(empty)
        return figure, []
    figure, axes = _figure(ncols=len(p_values), width=4.2)
    for ax, p_max in zip(axes[0], p_values, strict=True):
        panel = curves[np.isclose(curves["p_max"], p_max)]
        for method, group in panel.groupby("method", sort=False):
            sns.lineplot(
                data=group,
                x="step",
                y=column,
                errorbar="sd",
                color=method_color(method),
                label=METHOD_LABELS[method],
                ax=ax,
                **line,
            )
        if decorate is not None:
            decorate(ax, p_max)
        ax.set_title(f"p_max = {p_max:g}")
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
    _legend_below(figure, axes)
    return figure, p_values


def plot_accuracy_curves(curves: pd.DataFrame) -> Figure:
    """Figures 4 and 8: kNN accuracy over training, one panel per p_max."""
    curves = curves.assign(accuracy=100 * curves["knn_accuracy"])
    figure, p_values = _curves_per_p_max(
        curves,
        "accuracy",
        "kNN accuracy, test subset (%)",
        "No kNN accuracy recorded yet",
        marker="o",
    )
    if p_values:
        curves = curves.dropna(subset=["accuracy"])
        title = _final_gap_title(curves, "accuracy", max(p_values), "points")
        set_title(figure, title)
    return figure


def _final_gap_title(curves: pd.DataFrame, column: str, p_max: float, unit: str):
    panel = curves[np.isclose(curves["p_max"], p_max)].dropna(subset=[column])
    last = panel[panel["step"] == panel.groupby("run")["step"].transform("max")]
    final = last.groupby("method")[column].mean()
    parts = [
        f"{METHOD_LABELS[d]} ends {_relative(final[d] - final[b], unit)} "
        f"{METHOD_LABELS[b]}"
        for b, d in DUEL_PAIRS
        if b in final and d in final
    ]
    if not parts:
        best = final.idxmax() if len(final) else None
        if best is None:
            return f"kNN accuracy during training at p_max = {p_max:g}"
        return f"At p_max = {p_max:g}, {METHOD_LABELS[best]} ends highest"
    return f"At p_max = {p_max:g}, " + "; ".join(parts) + " (kNN accuracy)"


def plot_entropy_curves(curves: pd.DataFrame, num_classes: int) -> Figure:
    """Figure 8a: class entropy of the memory over training, one panel per p_max."""
    figure, p_values = _curves_per_p_max(
        curves,
        "memory_class_entropy",
        "class entropy of the memory (nats)",
        "No memory method has finished a run",
        decorate=lambda ax, p_max: _entropy_references(ax, num_classes, p_max),
    )
    if not p_values:
        return figure
    p_max = max(p_values)
    curves = curves[curves["run"] == curves["method"]]
    panel = curves[np.isclose(curves["p_max"], p_max)].dropna(
        subset=["memory_class_entropy"]
    )
    last = panel[panel["step"] == panel.groupby("run")["step"].transform("max")]
    final = last.groupby("method")["memory_class_entropy"].mean()
    parts = [f"{METHOD_LABELS[m]} {final[m]:.2f}" for m in final.index]
    set_title(
        figure,
        f"Memory class entropy at the end, p_max = {p_max:g}: "
        + ", ".join(parts)
        + f" nats (stream {stream_entropy(num_classes, p_max):.2f}, "
        f"log C {math.log(num_classes):.2f})",
    )
    return figure


def plot_per_class_geometry(per_class: pd.DataFrame, p_max: float) -> Figure:
    """Figure 9: per-class intra-class variance and inter-class similarity.

    Args:
        per_class: rows ``method, class, intra_class_variance,
            inter_class_similarity`` (one run or a mean over seeds per method).
        p_max: the stream's p_max, for the title.
    """
    if per_class.empty:
        figure, axes = _figure()
        set_title(figure, f"No run to measure at p_max = {p_max:g}", axes[0, 0])
        return figure
    figure, axes = _figure(ncols=2, width=6)
    methods = list(dict.fromkeys(per_class["method"]))
    palette = {METHOD_LABELS[m]: method_color(m) for m in methods}
    shown = per_class.assign(method=per_class["method"].map(METHOD_LABELS))
    for ax, column, label in (
        (axes[0, 0], "intra_class_variance", "intra-class variance (lower is better)"),
        (
            axes[0, 1],
            "inter_class_similarity",
            "inter-class similarity (lower is better)",
        ),
    ):
        sns.barplot(
            data=shown,
            x="class",
            y=column,
            hue="method",
            palette=palette,
            errorbar="sd",
            ax=ax,
        )
        ax.set_xlabel("class (0 is the dominant class c_max)")
        ax.set_ylabel(label)
    _legend_below(figure, axes)
    set_title(figure, _geometry_title(per_class, p_max))
    return figure


def _geometry_title(per_class: pd.DataFrame, p_max: float) -> str:
    table = per_class.pivot_table(
        index="class", columns="method", values="inter_class_similarity"
    )
    if not {"moco", "d-moco"} <= set(table.columns):
        return f"Per-class geometry of the test features at p_max = {p_max:g}"
    lower = int((table["d-moco"] < table["moco"]).sum())
    return (
        f"At p_max = {p_max:g} D-MoCo's inter-class similarity is below "
        f"MoCoV2's for {lower} of {len(table)} classes"
    )


def memory_class_frequencies(snapshots: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """Sorted class frequencies of the memory at each snapshot (Figure 10's data).

    Args:
        snapshots: rows of :func:`duel.book.load_memory_snapshots`.
        num_classes: C.

    Returns:
        Rows ``step, rank`` (1 = the memory's most frequent class), ``share`` (%)
        and ``class`` (which class holds that rank).
    """
    rows = []
    for snapshot in snapshots.itertuples():
        labels = np.asarray(snapshot.labels)
        counts = np.bincount(labels[labels >= 0], minlength=num_classes)
        order = np.argsort(-counts, kind="stable")
        total = max(counts.sum(), 1)
        for rank, c in enumerate(order, start=1):
            rows.append(
                {
                    "step": snapshot.step,
                    "rank": rank,
                    "share": 100 * counts[c] / total,
                    "class": int(c),
                }
            )
    return pd.DataFrame(rows, columns=["step", "rank", "share", "class"])


def plot_memory_frequencies(
    snapshots: Mapping[str, pd.DataFrame], num_classes: int, frames: int = 6
) -> Figure:
    """Figure 10: the memory's class frequencies, sorted, at several steps.

    Args:
        snapshots: method -> rows of :func:`duel.book.load_memory_snapshots`.
        num_classes: C.
        frames: how many snapshots (evenly spaced over training) to draw.
    """
    figure, axes = _figure(ncols=max(1, len(snapshots)), width=4.6)
    if not snapshots:
        set_title(figure, "No memory snapshots to show", axes[0, 0])
        return figure
    finals = {}
    for ax, (method, table) in zip(axes[0], snapshots.items(), strict=False):
        shares = memory_class_frequencies(table, num_classes)
        steps = sorted(set(shares["step"]))
        if not steps:
            ax.set_title(f"{METHOD_LABELS.get(method, method)}: no snapshot")
            continue
        picks = sorted(
            {steps[round(i)] for i in np.linspace(0, len(steps) - 1, frames)}
        )
        colors = sns.color_palette("cividis", len(picks))
        for step, color in zip(picks, colors, strict=True):
            frame = shares[shares["step"] == step]
            ax.plot(frame["rank"], frame["share"], "o-", color=color, label=f"{step}")
        ax.axhline(100 / num_classes, color="black", linestyle=":", label="balanced")
        ax.set_xlabel("class rank in the memory (1 is the most frequent)")
        ax.set_ylabel("share of the memory (%)")
        ax.set_title(METHOD_LABELS.get(method, method), color=method_color(method))
        ax.legend(title="step", frameon=False, fontsize="small")
        last = shares[shares["step"] == picks[-1]]
        finals[method] = (picks[-1], float(last["share"].max()))
    if finals:
        parts = [
            f"{share:.0f}% of the {METHOD_LABELS.get(m, m)} memory"
            for m, (_, share) in finals.items()
        ]
        step = max(step for step, _ in finals.values())
        set_title(
            figure,
            f"By step {step} the largest class fills "
            + " and ".join(parts)
            + f" (balanced: {100 / num_classes:.0f}%)",
        )
    return figure


def plot_ablation(runs: pd.DataFrame, p_max: float = 0.75) -> Figure:
    """Table 4 as a figure: D-SimCLR's linear-probe accuracy per negatives setting."""
    from duel.book import ABLATION_SETTINGS, ablation_runs

    figure, axes = _figure(width=7, height=3.8)
    ax = axes[0, 0]
    names, means, spreads, colors = [], [], [], []
    for negatives, eps, label in ABLATION_SETTINGS:
        values = ablation_runs(runs, negatives, eps, p_max)["linear_probe_accuracy"]
        if not len(values):
            continue
        names.append(label)
        means.append(100 * values.mean())
        spreads.append(100 * values.std() if len(values) > 1 else 0.0)
        variant = f"d-simclr+{negatives}-eps{eps:g}"
        colors.append(
            method_color("d-simclr" if variant not in METHOD_COLORS else variant)
        )
    if not names:
        set_title(figure, f"No D-SimCLR ablation run at p_max = {p_max:g}", ax)
        return figure
    ax.barh(names, means, xerr=spreads, color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel("linear-probe accuracy (%)")
    ax.set_ylabel("negatives, eps")
    best = names[int(np.argmax(means))]
    set_title(figure, f"At p_max = {p_max:g} the best D-SimCLR setting is {best}", ax)
    return figure
