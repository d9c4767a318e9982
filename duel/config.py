"""Run configuration: one flat record per run, named profiles, validation.

A profile is a named set of defaults (``smoke``, ``cpu``, ``gpu-quick``, ``paper``);
any field can be overridden on top of it. Each profile lists where it departs from
the paper's Appendix E and why, and that list is saved with every run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

METHODS = ("simclr", "moco", "byol", "barlow", "d-moco", "d-simclr")
MEMORY_METHODS = ("moco", "d-moco", "d-simclr")
DEFAULT_POLICY = {"moco": "fifo", "d-moco": "duel", "d-simclr": "duel"}
POLICIES = ("duel", "fifo", "reservoir", "random")
NEGATIVES = ("batch", "memory", "mixed")
IMBALANCES = ("dominant", "long-tailed")
DEVICES = ("auto", "cpu", "cuda")
AUGMENTATIONS = ("paper", "simclr", "none")
BACKBONES = ("small", "resnet18", "resnet50")
PROJECTORS = ("linear", "mlp2", "mlp3")
DATASETS = ("digits", "fashion-mnist", "cifar10", "stl10", "imagenet-lt")
BN_SYNC_MODES = ("sync", "shuffle", "local")


class ConfigError(ValueError):
    """A configuration value outside what is accepted; the message is one line."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run computes, plus where it is written.

    Fields in ``NOT_IDENTITY`` (where and how fast the run goes) may change when a
    run is resumed; every other field must match the checkpoint's.
    """

    # What is trained, on what stream.
    method: str = "d-moco"
    dataset: str = "fashion-mnist"
    profile: str = "cpu"
    p_max: float = 0.75
    imbalance: str = "dominant"
    long_tail_ratio: float = 100.0
    seed: int = 0

    # Optimisation.
    steps: int = 600
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 0

    # Model (SPEC 6).
    backbone: str = "small"
    image_size: int = 28
    projector: str = "linear"
    projection_dim: int = 128
    hidden_dim: int = 512
    projector_batch_norm: bool = False
    augmentation: str = "simclr"
    crop: bool | None = None
    crop_scale: float = 0.2  # smallest area of the random resized crop, in (0, 1]

    # Method (SPEC 5).
    tau: float = 0.5
    momentum: float = 0.9
    byol_momentum: float = 0.99
    barlow_lambda: float = 5e-3
    memory_size: int = 512
    memory_policy: str | None = None
    memory_draw: int = 256
    negatives: str = "mixed"
    eps: float = 1.0
    safe: bool = False

    # Multi-process training (torchrun): how BatchNorm sees the global batch.
    bn_sync: str = "sync"

    # Bookkeeping during training.
    checkpoint_every: int = 100
    eval_every: int = 100
    snapshot_every: int = 20
    feature_snapshots: int = 4
    knn_subset_per_class: int = 100

    # Evaluation (SPEC 6, linear probe as the paper).
    eval_train_per_class: int = 1000
    knn_k: int = 200
    knn_temperature: float = 0.1
    probe_epochs: int = 100
    probe_lr: float = 1e-3
    probe_weight_decay: float = 1e-6
    probe_batch_size: int = 256

    # Where and how it runs (free to change between a run and its resumption).
    runs_dir: str = "runs"
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    num_threads: int | None = None

    departures: tuple[str, ...] = field(default_factory=tuple)

    @property
    def policy(self) -> str | None:
        """The memory policy in force: the explicit one or the method's default."""
        if self.method not in MEMORY_METHODS:
            return None
        return self.memory_policy or DEFAULT_POLICY[self.method]

    def run_dir(self) -> Path:
        """``<runs_dir>/<profile>/<dataset>/<method>/p_max=<v>/seed=<s>``."""
        method = self.method
        if self.memory_policy and self.memory_policy != DEFAULT_POLICY.get(method):
            method = f"{method}+{self.memory_policy}"
        if self.method == "d-simclr" and (self.negatives, self.eps) != ("mixed", 1.0):
            method = f"{method}+{self.negatives}-eps{self.eps:g}"
        stream = f"p_max={self.p_max:g}"
        if self.imbalance == "long-tailed":
            stream = f"long-tailed={self.long_tail_ratio:g}"
        return (
            Path(self.runs_dir)
            / self.profile
            / self.dataset
            / method
            / stream
            / f"seed={self.seed}"
        )

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["departures"] = list(self.departures)
        return record

    def identity(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be resumed."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_IDENTITY}


NOT_IDENTITY = frozenset(
    {"runs_dir", "data_dir", "download", "device", "num_threads", "departures"}
)

# ----------------------------------------------------------------------- profiles

_PAPER_MODEL = {
    "backbone": "resnet50",
    "image_size": 32,
    "batch_size": 256,
    "lr": 0.05,
    "memory_size": 2048,
    "memory_draw": 256,
    "augmentation": "paper",
    "projector": "linear",
    "projection_dim": 256,
}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "defaults": {
            "dataset": "digits",
            "image_size": 8,
            "steps": 30,
            "batch_size": 32,
            "memory_size": 64,
            "memory_draw": 16,
            "projection_dim": 32,
            "hidden_dim": 64,
            "checkpoint_every": 10,
            "eval_every": 10,
            "snapshot_every": 5,
            "feature_snapshots": 2,
            "knn_subset_per_class": 10,
            "eval_train_per_class": 100,
            "knn_k": 20,
            "probe_epochs": 5,
        },
        "departures": [
            "Seconds per run for tests: the 8x8 digits set, a small CNN, 30 steps.",
        ],
    },
    "cpu": {
        "defaults": {
            "dataset": "fashion-mnist",
            "image_size": 28,
            "steps": 1500,
            "batch_size": 64,
            "lr": 3e-3,
            "tau": 0.2,
            "memory_size": 512,
            "memory_draw": 64,
            "crop_scale": 0.4,
            "snapshot_every": 30,
        },
        "methods": {
            "byol": {
                "projector": "mlp2",
                "projector_batch_norm": True,
                "lr": 1e-3,
                "byol_momentum": 0.9,
            },
        },
        "departures": [
            "Fashion-MNIST (grayscale 28x28) instead of CIFAR-10 and STL-10, which "
            "cannot be fetched offline.",
            "A small CNN instead of ResNet-50, batch 64 instead of 256 and 1500 "
            "steps instead of 160k, so that the whole grid trains on a 2-core CPU "
            "in 30 minutes. For the same compute, batch 64 learned more than "
            "batch 128 or batch 32.",
            "Memory K = 512 instead of 2048 and D-SimCLR draws 64 memory items "
            "instead of 256: 8 batches and 1 batch, the paper's proportions.",
            "Adam lr 3e-3 instead of the printed 0.05: 3e-3 learned fastest of "
            "the rates we tried, and at 0.05 D-MoCo at p_max 0.75 ended below "
            "the random-init floor of the linear probe.",
            "SimCLR augmentations with a random resized crop of 40% to 100% of "
            "the image: the paper's colour distortion does nothing to grayscale "
            "images, and in trials with crops down to 20% (SimCLR's setting) the "
            "kNN accuracy of BYOL and Barlow Twins stayed below the random-init "
            "floor.",
            "Temperature tau = 0.2 instead of 0.5 (for the losses and the DUEL "
            "kernel alike): in trials with 0.5, D-MoCo at p_max 0.75 ended with "
            "kNN accuracy below the random-init floor.",
            "BYOL: Adam lr 1e-3 and target momentum 0.9 instead of 0.99, and the "
            "paper's 2-layer head in its STL-10 form, with BatchNorm, at hidden "
            "width 512. In trials, lr 3e-3 and momentum 0.99 each left BYOL's "
            "kNN accuracy below the random-init floor, and a linear head gave a "
            "lower linear-probe accuracy.",
            "Linear probe and kNN on 1000 training images per class.",
        ],
    },
    "gpu-quick": {
        "defaults": {
            "dataset": "cifar10",
            "backbone": "resnet18",
            "image_size": 32,
            "steps": 5000,
            "batch_size": 256,
            "memory_size": 2048,
            "memory_draw": 256,
            "projection_dim": 256,
            "checkpoint_every": 500,
            "eval_every": 500,
            "snapshot_every": 100,
            "eval_train_per_class": 5000,
        },
        "methods": {
            "byol": {
                "projector": "mlp2",
                "hidden_dim": 2048,
                "projector_batch_norm": True,
            },
        },
        "departures": [
            "ResNet-18 and 5k steps instead of ResNet-50 and 160k, sized for about "
            "ten minutes on one GPU (an estimate, not yet timed).",
            "Adam lr 1e-3 instead of the printed 0.05.",
            "SimCLR augmentations with random resized crop instead of the paper's "
            "colour distortion and flip only.",
            "BYOL's 2-layer projector (hidden 2048, the paper's CIFAR-10 head) "
            "gets BatchNorm, as the paper's STL-10 head does: without it, BYOL "
            "collapsed in the cpu profile's trials.",
        ],
    },
    "paper": {
        "defaults": {
            "dataset": "cifar10",
            **_PAPER_MODEL,
            "steps": 160_000,
            "checkpoint_every": 2000,
            "eval_every": 5000,
            "snapshot_every": 1000,
            "eval_train_per_class": 5000,
        },
        "methods": {"byol": {"projector": "mlp2", "hidden_dim": 2048}},
        "datasets": {
            "stl10": {
                "steps": 40_000,
                "image_size": 96,
                "projector": "mlp2",
                "projection_dim": 512,
                "eval_train_per_class": 500,
                "methods": {
                    "byol": {"hidden_dim": 4096, "projector_batch_norm": True},
                },
            },
            "imagenet-lt": {
                "image_size": 64,
                "projector": "mlp3",
                "projection_dim": 512,
                "hidden_dim": 512,
                "eval_train_per_class": 5,
            },
        },
        "departures": [
            "None intended: Appendix E's settings as printed, including Adam at "
            "lr 0.05 (unusually high for Adam).",
        ],
    },
}


def build_config(profile: str = "cpu", **overrides: Any) -> RunConfig:
    """A validated config: the profile's defaults, then the overrides.

    Args:
        profile: one of ``PROFILES``.
        **overrides: any ``RunConfig`` field; ``None`` values are ignored, so
            unset command-line options fall through to the profile.

    Raises:
        ConfigError: on an unknown profile or field, or a value out of range.
    """
    if profile not in PROFILES:
        raise ConfigError(
            f"profile must be one of {', '.join(PROFILES)}, got {profile!r}"
        )
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}

    spec = PROFILES[profile]
    values = profile_defaults(
        profile,
        dataset=overrides.get("dataset"),
        method=overrides.get("method"),
    )
    values.update(overrides)
    values["profile"] = profile
    values["departures"] = tuple(spec["departures"])
    values = {k: _coerce(k, v) for k, v in values.items()}
    config = RunConfig(**values)
    validate(config)
    return config


def profile_defaults(
    profile: str, dataset: str | None = None, method: str | None = None
) -> dict[str, Any]:
    """A profile's defaults for one dataset and method, before any override.

    Layers, each over the one before: the profile's ``defaults``, its
    ``methods`` entry for the method, its ``datasets`` entry for the dataset,
    and that entry's own ``methods`` entry. ``None`` takes the profile's
    dataset and the package's default method.
    """
    spec = PROFILES[profile]
    values: dict[str, Any] = dict(spec["defaults"])
    dataset = dataset or values.get("dataset", RunConfig.dataset)
    method = method or values.get("method", RunConfig.method)
    per_dataset = spec.get("datasets", {}).get(dataset, {})
    values.update(spec.get("methods", {}).get(method, {}))
    values.update({k: v for k, v in per_dataset.items() if k != "methods"})
    values.update(per_dataset.get("methods", {}).get(method, {}))
    return values


def load_config(path: str | os.PathLike) -> RunConfig:
    """Reads a run's ``config.json``."""
    record = json.loads(Path(path).read_text())
    record["departures"] = tuple(record.get("departures", ()))
    known = {f.name for f in fields(RunConfig)}
    return RunConfig(**{k: v for k, v in record.items() if k in known})


def replace(config: RunConfig, **changes: Any) -> RunConfig:
    """A copy with some fields changed, validated."""
    changed = dataclasses.replace(
        config, **{k: _coerce(k, v) for k, v in changes.items()}
    )
    validate(changed)
    return changed


_FIELD_TYPES = {f.name: f.type for f in fields(RunConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Turns strings (command line, papermill) into the field's type, or fails."""
    kind = str(_FIELD_TYPES.get(name, ""))
    if value is None or not isinstance(value, str) or kind.startswith("str"):
        return value
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("bool"):
            lowered = value.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError(value)
    except ValueError:
        raise ConfigError(f"{name} must be {_describe(kind)}, got {value!r}") from None
    return value


def _describe(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false"}.get(
        kind.split(" ")[0], kind
    )


def validate(config: RunConfig) -> None:
    """Checks every field; the error names the field, the value and what is accepted.

    Raises:
        ConfigError: on the first bad value.
    """
    choices = {
        "method": METHODS,
        "dataset": DATASETS,
        "imbalance": IMBALANCES,
        "backbone": BACKBONES,
        "projector": PROJECTORS,
        "augmentation": AUGMENTATIONS,
        "negatives": NEGATIVES,
        "device": DEVICES,
        "bn_sync": BN_SYNC_MODES,
    }
    for name, accepted in choices.items():
        value = getattr(config, name)
        if value not in accepted:
            raise ConfigError(
                f"{name} must be one of {', '.join(accepted)}, got {value!r}"
            )
    if config.memory_policy is not None and config.memory_policy not in POLICIES:
        raise ConfigError(
            f"memory_policy must be one of {', '.join(POLICIES)}, "
            f"got {config.memory_policy!r}"
        )

    _number(config, "p_max", low=0.0, high=1.0, open_low=True, open_high=True)
    _number(config, "crop_scale", low=0.0, high=1.0, open_low=True)
    _number(config, "long_tail_ratio", low=1.0)
    _number(config, "tau", low=0.0, open_low=True)
    _number(config, "eps", low=0.0, high=1.0)
    _number(config, "lr", low=0.0, open_low=True)
    _number(config, "weight_decay", low=0.0)
    _number(config, "momentum", low=0.0, high=1.0)
    _number(config, "byol_momentum", low=0.0, high=1.0)
    _number(config, "barlow_lambda", low=0.0)
    _number(config, "knn_temperature", low=0.0, open_low=True)
    _number(config, "probe_lr", low=0.0, open_low=True)
    _number(config, "probe_weight_decay", low=0.0)

    minimums = {
        "seed": 0,
        "steps": 1,
        "batch_size": 2,
        "warmup_steps": 0,
        "image_size": 4,
        "projection_dim": 1,
        "hidden_dim": 1,
        "memory_size": 1,
        "memory_draw": 1,
        "checkpoint_every": 1,
        "eval_every": 1,
        "snapshot_every": 1,
        "feature_snapshots": 0,
        "knn_subset_per_class": 1,
        "eval_train_per_class": 1,
        "knn_k": 1,
        "probe_epochs": 0,
        "probe_batch_size": 1,
    }
    for name, minimum in minimums.items():
        _integer(config, name, minimum)
    if config.num_threads is not None:
        _integer(config, "num_threads", 1)
    for name in ("projector_batch_norm", "safe", "download"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(
                f"{name} must be true or false, got {getattr(config, name)!r}"
            )

    if config.safe and config.policy != "duel":
        raise ConfigError(
            f"safe applies to the duel memory policy only, got method "
            f"{config.method!r} with policy {config.policy!r}"
        )
    if config.bn_sync == "shuffle" and config.method not in ("moco", "d-moco"):
        raise ConfigError(
            "bn_sync 'shuffle' needs a key encoder (moco, d-moco), "
            f"got method {config.method!r}"
        )
    # MoCo's queue must hold at least one batch of keys, as in the original.
    if config.method in ("moco", "d-moco") and config.memory_size < config.batch_size:
        raise ConfigError(
            f"memory_size must be >= batch_size ({config.batch_size}) for "
            f"{config.method}, got {config.memory_size}"
        )


def _integer(config: RunConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _number(
    config: RunConfig,
    name: str,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    value = getattr(config, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value < high if open_high else value <= high
    if ok:
        return
    left = "(" if open_low else "["
    right = ")" if open_high else "]"
    if high is None:
        accepted = f"a number {'>' if open_low else '>='} {low:g}"
    else:
        accepted = f"a number in {left}{low:g}, {high:g}{right}"
    raise ConfigError(f"{name} must be {accepted}, got {value!r}")
