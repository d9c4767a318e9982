"""Training: one run of one method on the endless imbalanced stream, resumable.

A run lives in ``config.run_dir()``:

- ``config.json``: the configuration (with the profile's departures);
- ``metrics.jsonl``: loss, learning rate, memory class entropy, kNN accuracy;
- ``memory.jsonl``: the memory's slot labels and items every ``snapshot_every``
  steps (labels for analysis only);
- ``memory/step=<N>.pt``: memory features, labels and items at a few steps;
- ``checkpoint.pt`` (+ ``.sha256``): everything needed to resume exactly;
- ``summary.json``: the final evaluation, written only once it is complete.

Under ``torchrun`` (more than one process, see :mod:`duel.distributed`) every
process computes every step on its shard of the global batch, and only rank 0
writes these files. ``batch_size`` is the per-process batch; the checkpoint and
the summary record the number of processes (``world_size``), and a run resumes
only with as many processes as it was started with.

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

from duel import __version__, distributed
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
from duel.distributed import DistributedContext, KeyShuffle
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


class WorldSizeMismatchError(ConfigMismatchError):
    """A run is resumed with another number of processes than it was started with."""


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
    config: RunConfig,
    channels: int,
    fetch_views: FetchViews | None,
    device: torch.device | None = None,
) -> Method:
    """The method at the initialisation the run's seed gives it.

    With a ``device``, it is moved there in channels-last memory format, which
    speeds up convolutions on CUDA and, through oneDNN, on CPU (a sixth off a
    training step of the small CNN).
    """
    torch.manual_seed(config.seed)
    method = build_method(config.method, method_config(config, channels), fetch_views)
    if device is not None:
        method = method.to(device, memory_format=torch.channels_last)
    return method


def training_augmentation(config: RunConfig) -> Augmentation:
    """The random views a run of ``config`` trains on."""
    info = DATASETS[config.dataset]
    return build_augmentation(
        config.augmentation,
        image_size=config.image_size,
        mean=info.mean,
        std=info.std,
        crop=config.crop,
        crop_scale=config.crop_scale,
    )


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
    # Multi-process runs: this process's place, the DDP wrapper that the
    # training forward goes through (None: the method itself), MoCo's key
    # shuffle (bn_sync "shuffle"), and the processes that trained the run.
    context: DistributedContext | None = None
    model: torch.nn.Module | None = None
    key_shuffle: KeyShuffle | None = None
    world_size: int = 1

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes


def open_session(
    config: RunConfig, context: DistributedContext | None = None
) -> Session:
    """Loads data, builds the method at its seeded initialisation.

    Args:
        config: a validated configuration.
        context: this process's place in a multi-process run; None for a
            single process on ``config.device``. With more than one process
            the method is wrapped for DDP (:func:`duel.distributed.wrap_method`)
            and each process augments with its own generator.
    """
    if context is None:
        context = DistributedContext(device=resolve_device(config.device))
    device = context.device
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    info = DATASETS[config.dataset]
    train_set, test_set = _load_datasets(config, context)

    augmentation = training_augmentation(config)
    evaluation_view = build_augmentation(
        "none", image_size=config.image_size, mean=info.mean, std=info.std
    )
    # Rank 0 keeps the single-process seed; other ranks draw other augmentations.
    augmentation_generator = torch.Generator().manual_seed(
        distributed.rank_seed(config.seed + 1, context.rank)
    )
    images = train_set.images.to(device)

    def fetch_views(indices: torch.Tensor) -> torch.Tensor:
        return augmentation(images[indices.to(device)], augmentation_generator)

    channels = train_set.images.shape[1]
    method = build_seeded_method(config, channels, fetch_views, device)
    model, key_shuffle = None, None
    if context.is_distributed:
        # The seed + 2 stream is the same on every process, as the shuffle needs.
        model, key_shuffle = distributed.wrap_method(
            method, context, config.bn_sync, seed=config.seed + 2
        )
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
        context=context,
        model=model,
        key_shuffle=key_shuffle,
        world_size=context.world_size,
    )


def _load_datasets(
    config: RunConfig, context: DistributedContext
) -> tuple[ImageDataset, ImageDataset]:
    def load() -> tuple[ImageDataset, ImageDataset]:
        return (
            load_dataset(config.dataset, "train", config.data_dir, config.download),
            load_dataset(config.dataset, "test", config.data_dir, config.download),
        )

    if not (config.download and context.is_distributed):
        return load()
    # Rank 0 downloads first and the others then read its files instead of
    # racing it; its error, if any, stops them all.
    loaded: list[tuple[ImageDataset, ImageDataset]] = []
    context.on_main(lambda: loaded.append(load()))
    return loaded[0] if loaded else load()


def _check_distributed(config: RunConfig, context: DistributedContext) -> None:
    """What a multi-process run needs beyond a valid configuration."""
    distributed.check_bn_sync(config.bn_sync, config.method)
    global_batch = config.batch_size * context.world_size
    # The single-process rule (validate): MoCo's queue holds at least one batch
    # of keys, and every process now adds the keys of the global batch.
    if config.method in ("moco", "d-moco") and config.memory_size < global_batch:
        raise ValueError(
            f"memory_size must be >= batch_size x world_size ({config.batch_size} x "
            f"{context.world_size} = {global_batch}) for {config.method}, "
            f"got {config.memory_size}"
        )


# ------------------------------------------------------------ checkpointing


def _checkpoint_state(session: Session) -> dict[str, Any]:
    """The run's state; in a multi-process run every process must call it."""
    state = {
        "step": session.step,
        "identity": session.config.identity(),
        "method": session.method.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "stream": session.stream.state_dict(),
        "augmentation_generator": session.augmentation_generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "world_size": session.world_size,
        "version": __version__,
    }
    context = session.context
    if context is not None and context.is_distributed:
        # Everything else is identical on every process; the random streams
        # of augmentation are per process: (world_size, state bytes) each.
        state["rank_states"] = {
            "augmentation_generator": context.gather_rows(
                session.augmentation_generator.get_state()[None]
            ),
            "torch_rng": context.gather_rows(torch.get_rng_state()[None]),
        }
    if session.key_shuffle is not None:
        state["key_shuffle"] = session.key_shuffle.generator.get_state()
    return state


def _restore(session: Session, state: dict[str, Any]) -> None:
    session.method.load_state_dict(state["method"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.stream.load_state_dict(state["stream"])
    session.augmentation_generator.set_state(state["augmentation_generator"])
    torch.set_rng_state(state["torch_rng"])
    session.step = int(state["step"])
    session.world_size = int(state.get("world_size", 1))
    context = session.context
    if context is not None and context.is_distributed:
        rank_states = state["rank_states"]
        session.augmentation_generator.set_state(
            rank_states["augmentation_generator"][context.rank].clone()
        )
        torch.set_rng_state(rank_states["torch_rng"][context.rank].clone())
    if session.key_shuffle is not None and "key_shuffle" in state:
        session.key_shuffle.generator.set_state(state["key_shuffle"])


def _check_world_size(state: dict[str, Any], world_size: int, run_dir: Path) -> None:
    stored = int(state.get("world_size", 1))
    if stored != world_size:
        raise WorldSizeMismatchError(
            f"{run_dir} was trained with world_size {stored} (processes) and this "
            f"launch has world_size {world_size}; resume it with {stored} "
            "process(es) or use another runs_dir"
        )


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
    """Writes the checkpoint (rank 0); every process of a run must call it."""
    state = _checkpoint_state(session)
    if _is_main(session):
        save_checkpoint(session.run_dir / "checkpoint.pt", state)


def _is_main(session: Session) -> bool:
    return session.context is None or session.context.is_main


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

    Launched by ``torchrun`` with more than one process, every process calls
    this: each trains on its shard of the global batch (``batch_size`` per
    process) with DDP and a memory synchronised across processes (see
    :mod:`duel.distributed`). DDP averages the gradients, so an update is the
    gradient of the mean per-process loss over a global batch of
    ``batch_size x world_size``, while each process's contrastive loss only
    contrasts its own ``batch_size`` samples (plus the shared memory). Rank 0
    alone writes files; every process evaluates (they would otherwise idle at
    a barrier whose timeout evaluation may outlast) and rank 0 writes the
    summary.

    Args:
        config: a validated configuration.
        progress: show a progress bar (rank 0 only).
        stop_at: stop after this step with a checkpoint and no evaluation (to
            train in pieces).
        evaluate: evaluate at the end and write ``summary.json``.

    Returns:
        The summary on rank 0; None when stopped early, not evaluated, or on
        another rank.

    Raises:
        ConfigMismatchError: the run directory holds another configuration.
        WorldSizeMismatchError: the run was started with another number of
            processes.
        NonFiniteLossError: the loss became NaN or infinite.
        duel.io.CheckpointError: the checkpoint is corrupted.
    """
    context = distributed.join(resolve_device(config.device))
    return _train(config, context, progress, stop_at, evaluate)


def _train(
    config: RunConfig,
    context: DistributedContext,
    progress: bool,
    stop_at: int | None,
    evaluate: bool,
) -> dict[str, Any] | None:
    run_dir = config.run_dir()

    def check_run_dir() -> None:
        _check_writable(config.runs_dir)
        _check_same_run(run_dir, config)

    def start_run() -> dict[str, Any] | None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", config.to_dict())
        checkpoint = run_dir / "checkpoint.pt"
        return load_checkpoint(checkpoint) if checkpoint.exists() else None

    # Rank 0 alone reads and writes the run directory (other machines need not
    # see it); the checkpoint it reads reaches every process.
    context.on_main(check_run_dir)
    if context.is_distributed:
        _check_distributed(config, context)
        if context.is_main:
            log.info(
                "training on %d processes (%s), bn_sync %s, global batch %d",
                context.world_size,
                context.device.type,
                config.bn_sync,
                config.batch_size * context.world_size,
            )
    session = open_session(config, context)
    state = context.on_main(start_run)
    if state is not None:
        _check_world_size(state, context.world_size, run_dir)
        _restore(session, state)
        if context.is_main:
            log.info("resuming %s from step %d", run_dir, session.step)
    if context.is_main:
        for name in ("metrics.jsonl", "memory.jsonl"):
            truncate_jsonl(run_dir / name, session.step)

    if session.step < config.steps:
        _train_steps(session, progress, stop_at)
    if session.step < config.steps or not evaluate:
        return None
    summary = evaluate_session(session, progress=progress)
    return summary if context.is_main else None


def _train_steps(session: Session, progress: bool, stop_at: int | None) -> None:
    config, method, run_dir = session.config, session.method, session.run_dir
    context = session.context or DistributedContext(device=session.device)
    model = method if session.model is None else session.model
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
        disable=not (progress and context.is_main),
        dynamic_ncols=True,
    )
    method.train()
    started = time.perf_counter()
    pending_metrics: list[dict[str, Any]] = []
    pending_memory: list[dict[str, Any]] = []

    def record_step(lr: float, logs: dict[str, float]) -> None:
        """Rank 0: the step's record, in-training kNN and memory snapshots."""
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

        shown = {"loss": f"{logs['loss']:.3f}", "lr": f"{lr:.1e}"}
        if "memory_class_entropy" in record:
            shown["H(mem)"] = f"{record['memory_class_entropy']:.2f}"
        bar.set_postfix(shown, refresh=False)

    while session.step < last:
        step = session.step
        lr = learning_rate(config, step)
        for group in session.optimizer.param_groups:
            group["lr"] = lr

        indices = session.stream.next_batch(context.rank, context.world_size)
        batch = session.images[indices.to(session.device)]
        view1 = session.augmentation(batch, session.augmentation_generator)
        view2 = session.augmentation(batch, session.augmentation_generator)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss, logs = model(view1, view2, indices.to(session.device))
        # The logged loss is the mean over processes; a NaN on one process
        # makes it NaN everywhere, so all processes stop at the same step.
        logs = context.average(logs)
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

        if context.is_main:
            record_step(lr, logs)
        if session.step % config.checkpoint_every == 0 or session.step == last:
            if context.is_main:
                append_jsonl(run_dir / "metrics.jsonl", pending_metrics)
                append_jsonl(run_dir / "memory.jsonl", pending_memory)
            pending_metrics.clear()
            pending_memory.clear()
            _save(session)
        bar.update(1)
    bar.close()


def _checkpointed_step(run_dir: Path) -> int:
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    return metrics[-1]["step"] if metrics else 0


# ---------------------------------------------------------------- evaluation


def evaluate_session(session: Session, progress: bool = False) -> dict[str, Any]:
    """Evaluates the trained backbone and its random-init twin; writes summary.json.

    In a multi-process run every process may call it; rank 0 alone writes.
    """
    config = session.config
    progress = progress and _is_main(session)
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
    untrained = build_seeded_method(
        config, channels, session.fetch_views, session.device
    )
    floor = measure(untrained.backbone)

    summary: dict[str, Any] = {
        "config": config.to_dict(),
        "steps": session.step,
        "world_size": session.world_size,
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
    if _is_main(session):
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
