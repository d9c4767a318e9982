"""What a trained encoder makes of the data: test features, class geometry, t-SNE.

Everything starts from a run directory's final checkpoint. Test features are
cached beside the run (``analysis/test_features.pt``) together with the
checkpoint's SHA-256, so they are recomputed only when the checkpoint changes.

Figure 5 of the paper is a t-SNE map of the representations with the memory's
items highlighted. :func:`memory_map` builds it with openTSNE: the map is
fitted on test features, and the memory's items at several training steps
(dataset indices from ``memory.jsonl``) are re-encoded by the final encoder and
placed into the same map with ``TSNEEmbedding.transform``. The positions of old
memory items therefore show where the *final* encoder puts them, not where the
encoder of that step did.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from duel.book import METHOD_LABELS, load_memory_snapshots
from duel.config import RunConfig, load_config, replace
from duel.evaluate import extract_features
from duel.figures import set_title
from duel.io import atomic_write_bytes, load_checkpoint
from duel.metrics import (
    class_entropy,
    inter_class_similarity_per_class,
    intra_class_variance_per_class,
)

if TYPE_CHECKING:
    from duel.train import Session

log = logging.getLogger(__name__)

_CACHE = Path("analysis") / "test_features.pt"


def config_at(run_dir: str | os.PathLike) -> RunConfig:
    """A run's configuration, pointed at where the run directory is now.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.json``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.json")
    config = load_config(path)
    depth = len(config.run_dir().relative_to(config.runs_dir).parts)
    runs_dir = run_dir
    for _ in range(depth):
        runs_dir = runs_dir.parent
    if Path(config.runs_dir).resolve() != runs_dir.resolve():
        config = replace(config, runs_dir=str(runs_dir))
    return config


@dataclass
class TrainedRun:
    """A run's final encoder with the data it was trained and tested on."""

    config: RunConfig
    session: Session
    step: int

    @property
    def train_images(self) -> torch.Tensor:
        """(N, C, H, W) uint8 training images; memory items index into them."""
        return self.session.train_set.images

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (n, D) of uint8 images (n, C, H, W), on the CPU."""
        return extract_features(
            self.session.method.backbone,
            images,
            self.session.evaluation_view,
            self.session.device,
        )


def open_trained(run_dir: str | os.PathLike) -> TrainedRun:
    """Loads a run's data and its final checkpoint's encoder.

    Raises:
        FileNotFoundError: no config.json or no checkpoint.
        duel.io.CheckpointError: the checkpoint is corrupted.
    """
    from duel.train import open_session

    run_dir = Path(run_dir)
    config = config_at(run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{run_dir} has no checkpoint.pt: it never trained")
    session = open_session(config)
    state = load_checkpoint(checkpoint)
    session.method.load_state_dict(state["method"])
    session.method.eval()
    return TrainedRun(config, session, int(state["step"]))


def test_features(
    run_dir: str | os.PathLike, trained: TrainedRun | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features of the whole test set under the final checkpoint, cached.

    Args:
        run_dir: a run directory with a checkpoint.
        trained: the run already opened (saves loading it again on a cache miss).

    Returns:
        features (n, D) float32 and labels (n,) int64.
    """
    run_dir = Path(run_dir)
    digest = (run_dir / "checkpoint.pt.sha256").read_text().split()[0]
    cache = run_dir / _CACHE
    if cache.exists():
        record = torch.load(cache, weights_only=True)
        if record.get("checkpoint_sha256") == digest:
            return record["features"], record["labels"]
    trained = trained or open_trained(run_dir)
    test_set = trained.session.test_set
    features = trained.encode(test_set.images)
    buffer = io.BytesIO()
    torch.save(
        {
            "checkpoint_sha256": digest,
            "features": features,
            "labels": test_set.labels.clone(),
        },
        buffer,
    )
    atomic_write_bytes(cache, buffer.getvalue())
    return features, test_set.labels


def per_class_geometry(
    run_dirs: Mapping[str, Sequence[str | os.PathLike]],
) -> pd.DataFrame:
    """Per-class intra-class variance and inter-class similarity (Figure 9's data).

    Args:
        run_dirs: method -> its runs (e.g. one per seed) at one p_max.

    Returns:
        Rows ``method, seed, class, intra_class_variance,
        inter_class_similarity`` computed on the test features (Eq. 8 and 9 as
        reconstructed in SPEC 7).
    """
    rows = []
    for method, directories in run_dirs.items():
        for run_dir in directories:
            features, labels = test_features(run_dir)
            intra = intra_class_variance_per_class(features, labels)
            inter = inter_class_similarity_per_class(features, labels)
            seed = config_at(run_dir).seed
            rows += [
                {
                    "method": method,
                    "seed": seed,
                    "class": c,
                    "intra_class_variance": intra[c],
                    "inter_class_similarity": inter[c],
                }
                for c in sorted(intra)
            ]
    return pd.DataFrame(
        rows,
        columns=[
            "method",
            "seed",
            "class",
            "intra_class_variance",
            "inter_class_similarity",
        ],
    )


# --------------------------------------------------------------------- t-SNE


@dataclass
class MemoryFrame:
    """The memory at one training step, placed in a run's t-SNE map."""

    step: int
    positions: np.ndarray  # (k, 2)
    labels: np.ndarray  # (k,), analysis only
    items: np.ndarray  # (k,) dataset indices
    images: np.ndarray  # (k, C, H, W) uint8


@dataclass
class MemoryMap:
    """A t-SNE map of a run's test features and its memory over training."""

    method: str
    run_dir: str
    num_classes: int
    points: np.ndarray  # (n, 2) test features
    labels: np.ndarray  # (n,)
    frames: list[MemoryFrame] = field(default_factory=list)


def memory_map(
    run_dir: str | os.PathLike,
    frames: int = 4,
    max_points: int = 2000,
    perplexity: float = 30.0,
    seed: int = 0,
    progress: bool = True,
) -> MemoryMap:
    """Fits a t-SNE map on test features and places the memory's items in it.

    Args:
        run_dir: a finished run of a memory method.
        frames: memory snapshots to place, evenly spaced, the last one included.
        max_points: test features to fit the map on (a random subset if more).
        perplexity: t-SNE perplexity (reduced for tiny test sets).
        seed: seeds the subset and the map.
        progress: show a progress bar over the frames.

    Raises:
        ValueError: when the run has no memory snapshots or frames < 1.
    """
    from openTSNE import TSNE

    if frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}")
    run_dir = Path(run_dir)
    snapshots = load_memory_snapshots(run_dir)
    if snapshots.empty:
        raise ValueError(f"run_dir must hold a memory method's run, got {run_dir}")
    trained = open_trained(run_dir)
    features, labels = test_features(run_dir, trained)

    generator = np.random.default_rng(seed)
    subset = np.arange(len(features))
    if len(subset) > max_points:
        subset = np.sort(generator.choice(len(features), max_points, replace=False))
    unit = F.normalize(features[subset], dim=1).numpy().astype(np.float64)
    perplexity = min(perplexity, max(2.0, (len(unit) - 1) / 3))
    embedding = TSNE(
        perplexity=perplexity, metric="cosine", n_jobs=1, random_state=seed
    ).fit(unit)

    chosen = np.linspace(0, len(snapshots) - 1, min(frames, len(snapshots)))
    picks = sorted({int(round(i)) for i in chosen})
    result = MemoryMap(
        method=trained.config.method,
        run_dir=str(run_dir),
        num_classes=trained.session.num_classes,
        points=np.asarray(embedding),
        labels=labels[subset].numpy(),
    )
    for index in tqdm(picks, desc="memory frames", disable=not progress):
        snapshot = snapshots.iloc[index]
        items = torch.as_tensor(snapshot["items"], dtype=torch.long)
        images = trained.train_images[items]
        memory_features = F.normalize(trained.encode(images), dim=1).numpy()
        positions = embedding.transform(memory_features.astype(np.float64))
        result.frames.append(
            MemoryFrame(
                step=int(snapshot["step"]),
                positions=np.asarray(positions),
                labels=np.asarray(snapshot["labels"]),
                items=items.numpy(),
                images=images.numpy(),
            )
        )
    return result


def _class_colors(num_classes: int) -> list:
    return sns.color_palette("colorblind", num_classes)


def _draw_map(ax: Axes, memory: MemoryMap, frame: MemoryFrame | None) -> None:
    colors = _class_colors(memory.num_classes)
    point_colors = [colors[c] for c in memory.labels]
    size = max(3.0, 3000 / max(len(memory.points), 1))  # visible on small maps too
    ax.scatter(*memory.points.T, s=size, c=point_colors, alpha=0.35, linewidths=0)
    if frame is not None:
        ax.scatter(
            *frame.positions.T,
            s=18,
            c=[colors[c] for c in frame.labels],
            edgecolors="black",
            linewidths=0.5,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE axis 1 (arbitrary units)")
    ax.set_ylabel("t-SNE axis 2 (arbitrary units)")


def _frame_entropy(memory: MemoryMap, frame: MemoryFrame) -> float:
    return class_entropy(torch.as_tensor(frame.labels), memory.num_classes)


def plot_memory_maps(maps: Sequence[MemoryMap]) -> Figure:
    """Figure 5: each run's map with its final memory's items outlined in black."""
    figure = Figure(figsize=(5.5 * len(maps), 5.2), layout="constrained")
    axes = figure.subplots(1, len(maps), squeeze=False)[0]
    parts = []
    for ax, memory in zip(axes, maps, strict=True):
        frame = memory.frames[-1] if memory.frames else None
        _draw_map(ax, memory, frame)
        label = METHOD_LABELS.get(memory.method, memory.method)
        if frame is not None:
            covered = len(set(frame.labels.tolist()))
            entropy = _frame_entropy(memory, frame)
            set_title(
                figure,
                f"{label}: memory at step {frame.step} covers {covered} of "
                f"{memory.num_classes} classes",
                ax,
            )
            parts.append(f"{label} {entropy:.2f}")
    _class_legend(figure, maps[0].num_classes)
    set_title(
        figure,
        "Test features (dots) and the final memory (outlined); memory class "
        "entropy in nats: " + ", ".join(parts),
    )
    return figure


def plot_memory_frames(maps: Sequence[MemoryMap]) -> Figure:
    """The memory at several steps, re-encoded by the final encoder: one row per
    run, one column per step (the static version of :func:`memory_explorer`)."""
    columns = max(len(m.frames) for m in maps)
    figure = Figure(figsize=(3.4 * columns, 3.4 * len(maps)), layout="constrained")
    axes = figure.subplots(len(maps), columns, squeeze=False)
    for row, memory in zip(axes, maps, strict=True):
        label = METHOD_LABELS.get(memory.method, memory.method)
        for ax, frame in zip(row, memory.frames, strict=False):
            _draw_map(ax, memory, frame)
            ax.set_title(
                f"{label}, step {frame.step}: {_frame_entropy(memory, frame):.2f} nats",
                fontsize="medium",
            )
        for ax in row[len(memory.frames) :]:
            ax.set_visible(False)
    _class_legend(figure, maps[0].num_classes)
    set_title(
        figure,
        "Where the memory's items sit over training (title: class entropy of the "
        "memory at that step)",
    )
    return figure


def _class_legend(figure: Figure, num_classes: int) -> None:
    from matplotlib.lines import Line2D

    colors = _class_colors(num_classes)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colors[c], label=f"class {c}")
        for c in range(num_classes)
    ]
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(num_classes, 5),
        frameon=False,
    )


def nearest_items(frame: MemoryFrame, x: float, y: float, count: int) -> np.ndarray:
    """Indices into ``frame`` of the ``count`` memory items nearest to (x, y)."""
    distance = np.hypot(frame.positions[:, 0] - x, frame.positions[:, 1] - y)
    return np.argsort(distance, kind="stable")[:count]


def plot_pointer(
    memory: MemoryMap, frame: MemoryFrame, x: float, y: float, count: int = 8
) -> Figure:
    """The map at one step with a pointer, and the images of the memory items
    nearest to it."""
    figure = Figure(figsize=(10, 4.6), layout="constrained")
    grid = figure.add_gridspec(
        2, 2 + (count + 1) // 2, width_ratios=[2, 2] + [1] * ((count + 1) // 2)
    )
    ax = figure.add_subplot(grid[:, :2])
    _draw_map(ax, memory, frame)
    ax.plot([x], [y], marker="+", markersize=18, color="black", mew=2)
    label = METHOD_LABELS.get(memory.method, memory.method)
    ax.set_title(f"{label}, memory at step {frame.step}")
    nearest = nearest_items(frame, x, y, count)
    for k, index in enumerate(nearest):
        image_ax = figure.add_subplot(grid[k % 2, 2 + k // 2])
        image = frame.images[index]
        if image.shape[0] == 1:
            image_ax.imshow(image[0], cmap="gray")
        else:
            image_ax.imshow(np.transpose(image, (1, 2, 0)))
        image_ax.set_title(
            f"class {frame.labels[index]}\nitem {frame.items[index]}",
            fontsize="small",
        )
        image_ax.axis("off")
    return figure


def memory_explorer(maps: Sequence[MemoryMap], count: int = 8) -> Any:
    """An ipywidgets view: pick a run and a step, move a pointer over the map and
    see the images of the memory items under it.

    The view is a PNG in an ``Image`` widget redrawn on every change, with no
    output capture, so it also runs headless (papermill) where it is drawn once.

    Args:
        maps: results of :func:`memory_map`.
        count: images shown under the pointer.

    Returns:
        The widget (an ``ipywidgets.VBox``).
    """
    import ipywidgets as widgets

    by_name = {METHOD_LABELS.get(m.method, m.method): m for m in maps}
    run = widgets.Dropdown(options=list(by_name), description="run")
    frames = max(len(m.frames) for m in maps)
    step = widgets.IntSlider(0, 0, frames - 1, description="snapshot")
    points = np.concatenate([m.points for m in maps])
    low, high = points.min(0), points.max(0)
    x = widgets.FloatSlider(0.0, min=low[0], max=high[0], description="pointer x")
    y = widgets.FloatSlider(0.0, min=low[1], max=high[1], description="pointer y")
    view = widgets.Image(format="png")

    def draw(change: Any = None) -> None:
        memory = by_name[run.value]
        frame = memory.frames[min(step.value, len(memory.frames) - 1)]
        buffer = io.BytesIO()
        plot_pointer(memory, frame, x.value, y.value, count).savefig(
            buffer, format="png", dpi=80
        )
        view.value = buffer.getvalue()

    for control in (run, step, x, y):
        control.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([run, step]), widgets.HBox([x, y]), view])
