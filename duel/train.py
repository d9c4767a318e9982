"""Training: one run of one method on the endless imbalanced stream, resumable.

A run lives in ``config.run_dir()``:

- ``config.json``: the configuration (with the profile's departures);
- ``metrics.jsonl``: loss, learning rate, memory class entropy, kNN accuracy;
- ``memory.jsonl``: the memory's slot labels and items every ``snapshot_every``
  steps (labels for analysis only);
- ``memory/step=<N>.pt``: memory features, labels and items at a few steps;
- ``checkpoint.pt`` (+ ``.sha256``): everything needed to resume exactly;
- ``summary.json``: the final evaluation, written only once it is complete.

Labels never reach training: the learner sees images and dataset indices; the
labels of a batch are handed to the memory's analysis buffer and nothing else.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from duel import __version__
from duel.augment import Augmentation, build_augmentation
from duel.config import RunConfig, load_config, replace
from duel.data import (
    DATASETS,
    ImageDataset,
    ImbalancedStream,
    class_probabilities,
    load_dataset,
    long_tailed_probabilities,
)
from duel.evaluate import balanced_subset, evaluate_features, extract_features
from duel.io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    read_jsonl,
    save_checkpoint,
    truncate_jsonl,
)
from duel.methods import FetchViews, Method, MethodConfig, build_method
from duel.metrics import class_counts, class_entropy, knn_accuracy

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ConfigMismatchError(ValueError):
    """A run directory holds a checkpoint of a different configuration."""


# ------------------------------------------------------------------ building


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device must be one of auto, cpu, cuda; 'cuda' is not available"
        )
    return torch.device(name)


def stream_probabilities(config: RunConfig, num_classes: int) -> torch.Tensor:
    """Class probabilities of the environment (SPEC 2)."""
    if config.imbalance == "long-tailed":
        return long_tailed_probabilities(num_classes, config.long_tail_ratio)
    return class_probabilities(num_classes, config.p_max)


def method_config(config: RunConfig, channels: int) -> MethodConfig:
    return MethodConfig(
        backbone=config.backbone,
        in_channels=channels,
        image_size=config.image_size,
        projector=config.projector,
        projection_dim=config.projection_dim,
        hidden_dim=config.hidden_dim,
        projector_batch_norm=config.projector_batch_norm,
        tau=config.tau,
        momentum=config.momentum,
        byol_momentum=config.byol_momentum,
        barlow_lambda=config.barlow_lambda,
        memory_size=config.memory_size,
        memory_policy=config.memory_policy,
        memory_draw=config.memory_draw,
        negatives=config.negatives,
        eps=config.eps,
        safe=config.safe,
        memory_seed=config.seed,
    )


def build_seeded_method(
    config: RunConfig, channels: int, fetch_views: FetchViews | None
) -> Method:
    """The method at the initialisation the run's seed gives it."""
    torch.manual_seed(config.seed)
    return build_method(config.method, method_config(config, channels), fetch_views)


def learning_rate(config: RunConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to zero over ``steps`` (Appendix E)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = (step - config.warmup_steps) / span
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Session:
    """Everything a run holds in memory while it trains or evaluates."""

    config: RunConfig
    run_dir: Path
    device: torch.device
    train_set: ImageDataset
    test_set: ImageDataset
    images: torch.Tensor  # (N, C, H, W) uint8 on the device
    augmentation: Augmentation
    evaluation_view: Augmentation
    augmentation_generator: torch.Generator
    stream: ImbalancedStream
    method: Method
    fetch_views: FetchViews
    optimizer: torch.optim.Optimizer
    step: int = 0

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes


def open_session(config: RunConfig) -> Session:
    """Loads data, builds the method at its seeded initialisation."""
    device = resolve_device(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    info = DATASETS[config.dataset]
    train_set = load_dataset(config.dataset, "train", config.data_dir, config.download)
    test_set = load_dataset(config.dataset, "test", config.data_dir, config.download)

    augmentation = build_augmentation(
        config.augmentation,
        image_size=config.image_size,
        mean=info.mean,
        std=info.std,
        crop=config.crop,
    )
    evaluation_view = build_augmentation(
        "none", image_size=config.image_size, mean=info.mean, std=info.std
    )
    augmentation_generator = torch.Generator().manual_seed(config.seed + 1)
    images = train_set.images.to(device)

    def fetch_views(indices: torch.Tensor) -> torch.Tensor:
        return augmentation(images[indices.to(device)], augmentation_generator)

    method = build_seeded_method(config, train_set.images.shape[1], fetch_views)
    method = method.to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(
        method.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    stream = ImbalancedStream(
        train_set.labels,
        stream_probabilities(config, train_set.num_classes),
        config.batch_size,
        seed=config.seed,
    )
    return Session(
        config=config,
        run_dir=config.run_dir(),
        device=device,
        train_set=train_set,
        test_set=test_set,
        images=images,
        augmentation=augmentation,
        evaluation_view=evaluation_view,
        augmentation_generator=augmentation_generator,
        stream=stream,
        method=method,
        fetch_views=fetch_views,
        optimizer=optimizer,
    )


# ------------------------------------------------------------ checkpointing


def _checkpoint_state(session: Session) -> dict[str, Any]:
    return {
        "step": session.step,
        "identity": session.config.identity(),
        "method": session.method.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "stream": session.stream.state_dict(),
        "augmentation_generator": session.augmentation_generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "version": __version__,
    }


def _restore(session: Session, state: dict[str, Any]) -> None:
    session.method.load_state_dict(state["method"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.stream.load_state_dict(state["stream"])
    session.augmentation_generator.set_state(state["augmentation_generator"])
    torch.set_rng_state(state["torch_rng"])
    session.step = int(state["step"])


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field: stored -> current`` for every identity field that differs."""
    differences = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, list):
            a = tuple(a)
        if isinstance(b, list):
            b = tuple(b)
        if a != b:
            differences.append(f"{key}: {a!r} -> {b!r}")
    return differences


def _check_same_run(run_dir: Path, config: RunConfig) -> None:
    path = run_dir / "config.json"
    if not path.exists():
        return
    differences = config_differences(load_config(path).identity(), config.identity())
    if differences:
        listed = "; ".join(differences)
        raise ConfigMismatchError(
            f"{run_dir} holds a run of another configuration ({listed}); "
            "use another runs_dir or delete that run"
        )


def _check_writable(runs_dir: str) -> None:
    """Fails before any work when runs cannot be written under ``runs_dir``."""
    try:
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(runs_dir) / ".writable", b"")
        (Path(runs_dir) / ".writable").unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(
            f"runs_dir {runs_dir!r} cannot be written ({reason}); "
            "pass a writable directory"
        ) from None


def _save(session: Session) -> None:
    save_checkpoint(session.run_dir / "checkpoint.pt", _checkpoint_state(session))


def _memory_snapshot(session: Session) -> dict[str, Any] | None:
    memory = session.method.memory
    if memory is None:
        return None
    filled = memory.num_filled
    return {
        "step": session.step,
        "labels": memory.labels[:filled].tolist(),
        "items": memory.items[:filled].reshape(filled, -1)[:, 0].tolist(),
    }


def _feature_snapshot_steps(config: RunConfig) -> set[int]:
    count = config.feature_snapshots
    return {max(1, round(config.steps * (i + 1) / count)) for i in range(count)}


def _save_feature_snapshot(session: Session) -> None:
    memory = session.method.memory
    filled = memory.num_filled
    record = {
        "step": session.step,
        "features": memory.features[:filled].float().cpu(),
        "labels": memory.labels[:filled].cpu(),
        "items": memory.items[:filled].cpu(),
    }
    buffer = io.BytesIO()
    torch.save(record, buffer)
    path = session.run_dir / "memory" / f"step={session.step:07d}.pt"
    atomic_write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------ training


def _prepare(session: Session):
    view = session.evaluation_view

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return view(batch)

    return prepare


def _in_training_knn(session: Session, reference: torch.Tensor, queries: torch.Tensor):
    method, prepare = session.method, _prepare(session)
    train_features = extract_features(
        method.backbone, session.train_set.images[reference], prepare, session.device
    )
    test_features = extract_features(
        method.backbone, session.test_set.images[queries], prepare, session.device
    )
    return knn_accuracy(
        train_features,
        session.train_set.labels[reference],
        test_features,
        session.test_set.labels[queries],
        session.num_classes,
        k=session.config.knn_k,
        temperature=session.config.knn_temperature,
    )


def train(
    config: RunConfig,
    *,
    progress: bool = True,
    stop_at: int | None = None,
    evaluate: bool = True,
) -> dict[str, Any] | None:
    """Trains (or resumes) one run, then evaluates it.

    Args:
        config: a validated configuration.
        progress: show a progress bar.
        stop_at: stop after this step with a checkpoint and no evaluation (to
            train in pieces).
        evaluate: evaluate at the end and write ``summary.json``.

    Returns:
        The summary, or None when stopped early or not evaluated.

    Raises:
        ConfigMismatchError: the run directory holds another configuration.
        NonFiniteLossError: the loss became NaN or infinite.
        duel.io.CheckpointError: the checkpoint is corrupted.
    """
    run_dir = config.run_dir()
    _check_writable(config.runs_dir)
    _check_same_run(run_dir, config)
    session = open_session(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.to_dict())

    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists():
        _restore(session, load_checkpoint(checkpoint))
        log.info("resuming %s from step %d", run_dir, session.step)
    for name in ("metrics.jsonl", "memory.jsonl"):
        truncate_jsonl(run_dir / name, session.step)

    if session.step < config.steps:
        _train_steps(session, progress, stop_at)
    if session.step < config.steps or not evaluate:
        return None
    summary = evaluate_session(session, progress=progress)
    return summary


def _train_steps(session: Session, progress: bool, stop_at: int | None) -> None:
    config, method, run_dir = session.config, session.method, session.run_dir
    subset_reference = balanced_subset(
        session.train_set.labels, config.knn_subset_per_class
    )
    subset_queries = balanced_subset(
        session.test_set.labels, config.knn_subset_per_class, seed=1
    )
    feature_steps = _feature_snapshot_steps(config)
    autocast = session.device.type == "cuda"
    last = config.steps if stop_at is None else min(stop_at, config.steps)

    bar = tqdm(
        total=config.steps,
        initial=session.step,
        desc=f"{config.method} p_max={config.p_max:g}",
        disable=not progress,
        dynamic_ncols=True,
    )
    method.train()
    started = time.perf_counter()
    pending_metrics: list[dict[str, Any]] = []
    pending_memory: list[dict[str, Any]] = []
    while session.step < last:
        step = session.step
        lr = learning_rate(config, step)
        for group in session.optimizer.param_groups:
            group["lr"] = lr

        indices = session.stream.next_batch()
        batch = session.images[indices.to(session.device)]
        view1 = session.augmentation(batch, session.augmentation_generator)
        view2 = session.augmentation(batch, session.augmentation_generator)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss, logs = method(view1, view2, indices.to(session.device))
        if not math.isfinite(logs["loss"]):
            raise NonFiniteLossError(
                f"loss became {logs['loss']} at step {step + 1}; the last good "
                f"checkpoint (step {_checkpointed_step(run_dir)}) is kept in {run_dir}"
            )
        session.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        session.optimizer.step()
        # Analysis only: the memory files the labels beside its slots.
        method.after_step(labels=session.train_set.labels[indices])
        session.step = step + 1

        record = {"step": session.step, "lr": lr, **logs}
        record["seconds"] = time.perf_counter() - started
        if method.memory is not None:
            record["memory_class_entropy"] = class_entropy(
                method.memory.labels, session.num_classes
            )
        if session.step % config.eval_every == 0 or session.step == config.steps:
            record["knn_accuracy"] = _in_training_knn(
                session, subset_reference, subset_queries
            )
            method.train()
        pending_metrics.append(record)
        if method.memory is not None and (
            session.step % config.snapshot_every == 0 or session.step == config.steps
        ):
            pending_memory.append(_memory_snapshot(session))
        if method.memory is not None and session.step in feature_steps:
            _save_feature_snapshot(session)

        if session.step % config.checkpoint_every == 0 or session.step == last:
            append_jsonl(run_dir / "metrics.jsonl", pending_metrics)
            append_jsonl(run_dir / "memory.jsonl", pending_memory)
            pending_metrics, pending_memory = [], []
            _save(session)

        shown = {"loss": f"{logs['loss']:.3f}", "lr": f"{lr:.1e}"}
        if "memory_class_entropy" in record:
            shown["H(mem)"] = f"{record['memory_class_entropy']:.2f}"
        bar.set_postfix(shown, refresh=False)
        bar.update(1)
    bar.close()


def _checkpointed_step(run_dir: Path) -> int:
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    return metrics[-1]["step"] if metrics else 0


# ---------------------------------------------------------------- evaluation


def evaluate_session(session: Session, progress: bool = False) -> dict[str, Any]:
    """Evaluates the trained backbone and its random-init twin; writes summary.json."""
    config = session.config
    started = time.perf_counter()
    reference = balanced_subset(session.train_set.labels, config.eval_train_per_class)
    train_images = session.train_set.images[reference]
    train_labels = session.train_set.labels[reference]
    test_labels = session.test_set.labels
    settings = {
        "knn_k": config.knn_k,
        "knn_temperature": config.knn_temperature,
        "probe_epochs": config.probe_epochs,
        "probe_lr": config.probe_lr,
        "probe_weight_decay": config.probe_weight_decay,
        "probe_batch_size": config.probe_batch_size,
        "seed": config.seed,
    }

    def measure(backbone: torch.nn.Module) -> dict[str, float]:
        prepare = _prepare(session)
        train_features = extract_features(
            backbone, train_images, prepare, session.device, progress=progress
        )
        test_features = extract_features(
            backbone,
            session.test_set.images,
            prepare,
            session.device,
            progress=progress,
        )
        return evaluate_features(
            train_features,
            train_labels,
            test_features,
            test_labels,
            session.num_classes,
            **settings,
        )

    trained = measure(session.method.backbone)
    channels = session.train_set.images.shape[1]
    untrained = build_seeded_method(config, channels, session.fetch_views)
    floor = measure(untrained.to(session.device).backbone)

    summary: dict[str, Any] = {
        "config": config.to_dict(),
        "steps": session.step,
        "evaluated_on": {
            "train_images": len(reference),
            "test_images": len(test_labels),
            "features": "backbone output (before the projector)",
        },
        **trained,
        "random_init": floor,
        "training_seconds": _training_seconds(session.run_dir),
        "evaluation_seconds": time.perf_counter() - started,
        "version": __version__,
    }
    memory = session.method.memory
    if memory is not None:
        counts = class_counts(memory.labels, session.num_classes)
        summary["memory"] = {
            "policy": memory.policy,
            "size": memory.size,
            "filled": memory.num_filled,
            "class_entropy": class_entropy(memory.labels, session.num_classes),
            "class_counts": counts.tolist(),
        }
    summary["evaluation_seconds"] = time.perf_counter() - started
    atomic_write_json(session.run_dir / "summary.json", summary)
    return summary


def _training_seconds(run_dir: Path) -> float | None:
    records = read_jsonl(run_dir / "metrics.jsonl")
    if not records:
        return None
    # Each resumed piece restarts its clock: add up the pieces.
    total, previous = 0.0, 0.0
    for record in records:
        seconds = record.get("seconds", 0.0)
        total += seconds - previous if seconds >= previous else seconds
        previous = seconds
    return total


def evaluate_run(run_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Re-evaluates a finished (or partly trained) run from its checkpoint."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.json")
    config = load_config(config_path)
    stored_root = config.run_dir()
    # The run may have been moved: read it where it is.
    if stored_root.resolve() != run_dir.resolve():
        runs_dir = run_dir
        for _ in stored_root.relative_to(config.runs_dir).parts:
            runs_dir = runs_dir.parent
        config = replace(config, runs_dir=str(runs_dir))
    session = open_session(config)
    _restore(session, load_checkpoint(run_dir / "checkpoint.pt"))
    return evaluate_session(session, progress=progress)
