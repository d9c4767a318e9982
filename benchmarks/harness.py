"""One training step of a method, as ``duel.train`` runs it, for timing.

:class:`StepHarness` repeats the body of the training loop in
``duel.train._train_steps`` (draw a batch from the imbalanced stream, augment
two views, forward, backward, optimiser step, ``after_step`` with the memory
update) without its bookkeeping (metrics, kNN probes, checkpoints), which is
the same for every method and would only blur the comparison.

The images are synthetic (uniform random pixels of the dataset's shape): a
step's cost does not depend on what the pixels show, and the benchmarks then
run where the datasets are not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from duel.config import RunConfig, build_config, replace
from duel.data import DATASETS, ImbalancedStream, class_probabilities
from duel.methods import DSimCLR
from duel.train import build_seeded_method, training_augmentation

# Synthetic images per setting: enough for the stream to draw distinct batches.
NUM_IMAGES = 4096


@dataclass(frozen=True)
class Setting:
    """A named configuration the step benchmarks run at.

    Attributes:
        name: ``cpu`` or ``paper-like`` (``quick`` in the smoke mode).
        config: the run configuration of the profile's default method.
        note: how it departs from the profile it is built on.
        overrides: the fields set on top of the profile.
    """

    name: str
    config: RunConfig
    note: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def config_for(self, method: str) -> RunConfig:
        """The configuration a run of ``method`` gets, with the profile's
        per-method defaults (BYOL's head, for one)."""
        return build_config(self.config.profile, **self.overrides, method=method)


def _setting(name: str, profile: str, note: str, **overrides: Any) -> Setting:
    return Setting(name, build_config(profile, **overrides), note, overrides)


def settings(quick: bool = False) -> list[Setting]:
    """The cpu profile, and a paper-like setting that fits a CPU.

    The paper-like setting keeps Appendix E's batch 256, memory K 2048, 256
    memory draws, projection Z 256, 32 px three-channel images and the
    paper's augmentation, but trains the ``small`` CNN instead of ResNet-50
    and Adam at lr 1e-3 (the printed 0.05 diverges, and a NaN would stop the
    memory update).
    """
    if quick:
        return [
            _setting(
                "quick",
                "smoke",
                "the smoke profile at batch 16, K 32",
                batch_size=16,
                memory_size=32,
                memory_draw=8,
                projection_dim=16,
            )
        ]
    return [
        _setting("cpu", "cpu", "the cpu profile as it trains"),
        _setting(
            "paper-like",
            "paper",
            "the paper's CIFAR-10 sizes (batch 256, K 2048, Z 256, 32 px RGB) "
            "with the small CNN instead of ResNet-50",
            backbone="small",
            lr=1e-3,
        ),
    ]


def synthetic_data(config: RunConfig, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random uint8 images of the dataset's shape and balanced labels.

    Returns:
        images (N, C, S, S) uint8 and labels (N,) long, on the CPU.
    """
    info = DATASETS[config.dataset]
    generator = torch.Generator().manual_seed(seed)
    shape = (NUM_IMAGES, info.channels, config.image_size, config.image_size)
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    labels = torch.arange(NUM_IMAGES) % info.num_classes
    return images, labels


class StepHarness:
    """A method with its optimiser, augmentation and stream, ready to step.

    Args:
        config: the setting's configuration.
        method: one of :data:`duel.methods.METHODS`.
        images: (N, C, S, S) uint8 images, shared between harnesses.
        labels: (N,) labels (the stream's classes and the memory's analysis).
        device: where the method trains.
        seed: initialisation and stream seed; the same for every method, so
            that every method sees the same batches.
    """

    def __init__(
        self,
        config: RunConfig,
        method: str,
        images: Tensor,
        labels: Tensor,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.config = config = replace(config, method=method, seed=seed)
        self.device = device
        info = DATASETS[config.dataset]
        self.images = images.to(device)
        self.labels = labels
        self.augmentation = training_augmentation(config)
        self.generator = torch.Generator().manual_seed(seed + 1)

        def fetch_views(indices: Tensor) -> Tensor:
            return self.augmentation(self.images[indices.to(device)], self.generator)

        self.method = build_seeded_method(config, images.shape[1], fetch_views, device)
        self.optimizer = torch.optim.Adam(
            self.method.trainable_parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
        self.stream = ImbalancedStream(
            labels,
            class_probabilities(info.num_classes, config.p_max),
            config.batch_size,
            seed=seed,
        )
        self.method.train()

    def views(self) -> tuple[Tensor, Tensor, Tensor]:
        """The next batch's indices (B,) and its two augmented views."""
        indices = self.stream.next_batch()
        batch = self.images[indices.to(self.device)]
        view1 = self.augmentation(batch, self.generator)
        view2 = self.augmentation(batch, self.generator)
        return indices, view1, view2

    def step(self) -> float:
        """One training step, augmentation included; returns the loss."""
        indices, view1, view2 = self.views()
        autocast = self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss, logs = self.method(view1, view2, indices.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.method.after_step(labels=self.labels[indices])
        return logs["loss"]

    def warm_up(self) -> None:
        """Steps until the memory (if any) is full, plus one."""
        memory = self.method.memory
        steps = 1
        if memory is not None:
            steps += -(-memory.size // self.config.batch_size)
        for _ in range(steps):
            self.step()

    def reencoding(self) -> Callable[[], Tensor]:
        """D-SimCLR only: a call that re-encodes ``memory_draw`` memory images.

        It draws the items, fetches and augments their images and encodes them
        under no_grad, exactly as the method's step does.

        Raises:
            ValueError: when the method is not D-SimCLR.
        """
        if not isinstance(self.method, DSimCLR):
            raise ValueError(
                f"re-encoding is D-SimCLR's, got method {self.config.method!r}"
            )
        _, template, _ = self.views()
        autocast = self.device.type == "cuda"

        def reencode() -> Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                return self.method._memory_negatives(template)

        return reencode


_DATA: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}
_WARM: dict[tuple[str, str, str, int], StepHarness] = {}


def warm_harness(
    setting: Setting, method: str, device: torch.device, threads: int | None = None
) -> StepHarness:
    """A harness past its warm-up, shared by the benchmarks of one process.

    The steps, peer and throughput benchmarks time the same methods at the
    same settings; sharing the harnesses spares each its own warm-up (a full
    K 2048 memory takes nine steps to fill). Their state moves on as they are
    timed, which changes no step's cost.
    """
    key = (setting.name, method, device.type, threads or torch.get_num_threads())
    if key not in _WARM:
        data_key = (setting.name, device.type)
        if data_key not in _DATA:
            _DATA[data_key] = synthetic_data(setting.config)
        images, labels = _DATA[data_key]
        config = setting.config_for(method)
        harness = StepHarness(config, method, images, labels, device)
        harness.warm_up()
        _WARM[key] = harness
    return _WARM[key]


def clear_harnesses() -> None:
    """Frees the shared harnesses (between sections, to bound memory)."""
    _WARM.clear()
    _DATA.clear()
