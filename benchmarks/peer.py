"""Our MoCo and SimCLR steps against the same steps built on ``lightly``.

The peer step keeps everything but the loss and memory machinery: the same
backbone and projection head (``duel.models``, same seed), the same batches,
augmentation, Adam and momentum update; only the loss is lightly's
``NTXentLoss`` (with ``memory_bank_size=(K, Z)`` for MoCo, whose queue lightly
keeps inside the loss). Ratios are ours / theirs, interleaved in one process.

One difference remains in MoCo and is part of what is compared: our MoCo
contrasts a query with the memory's keys AND the batch's other keys (B - 1
more negatives, as in MoCo's paper), lightly's with the memory bank alone.

lightly is an optional dependency (``pip install -e '.[bench]'``); where it
cannot be imported this benchmark records why and skips.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from benchmarks.common import Deadline, interleaved, machine_info, ratio, summarize
from benchmarks.harness import Setting, StepHarness, settings, warm_harness
from duel.models import make_target, momentum_update

log = logging.getLogger(__name__)


def lightly_version() -> str | None:
    """lightly's version, or None when it cannot be imported."""
    try:
        import lightly
    except Exception:  # noqa: BLE001 - any import failure means "skip"
        return None
    return str(lightly.__version__)


class LightlyHarness(StepHarness):
    """MoCo or SimCLR with lightly's NT-Xent loss on our networks and data.

    Args:
        setting: the configuration, data shape and sizes.
        kind: ``moco`` or ``simclr``.
        images, labels, device, seed: as for :class:`StepHarness`.
    """

    def __init__(
        self,
        setting: Setting,
        kind: str,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        from lightly.loss import NTXentLoss

        if kind not in ("moco", "simclr"):
            raise ValueError(f"kind must be moco or simclr, got {kind!r}")
        # A SimCLR method carries exactly the backbone, projector, optimiser,
        # augmentation and stream we need; its loss is never called.
        super().__init__(setting.config, "simclr", images, labels, device, seed)
        self.kind = kind
        config = setting.config
        self.backbone = self.method.backbone
        self.projector = self.method.projector
        if kind == "moco":
            self.key_backbone = make_target(self.backbone).to(device)
            self.key_projector = make_target(self.projector).to(device)
            self.criterion = NTXentLoss(
                temperature=config.tau,
                memory_bank_size=(config.memory_size, config.projection_dim),
            ).to(device)
        else:
            self.criterion = NTXentLoss(temperature=config.tau).to(device)

    def step(self) -> float:
        _, view1, view2 = self.views()
        autocast = self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            first = self.projector(self.backbone(view1))
            if self.kind == "moco":
                with torch.no_grad():
                    second = self.key_projector(self.key_backbone(view2))
            else:
                second = self.projector(self.backbone(view2))
            # lightly normalises inside its loss.
            loss = self.criterion(first, second)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.kind == "moco":
            with torch.no_grad():
                momentum = self.config.momentum
                momentum_update(self.backbone, self.key_backbone, momentum)
                momentum_update(self.projector, self.key_projector, momentum)
        return float(loss.detach())

    def warm_up(self) -> None:
        # lightly's bank starts full of random vectors: nothing to fill.
        self.step()


def measure_setting(
    setting: Setting, device: torch.device, rounds: int, budget_s: float | None
) -> dict[str, Any]:
    """Ours (moco, d-moco, simclr) and lightly's (moco, simclr), interleaved."""
    ours = {m: warm_harness(setting, m, device) for m in ("moco", "d-moco", "simclr")}
    images, labels = ours["moco"].images.cpu(), ours["moco"].labels
    theirs = {}
    for kind in ("moco", "simclr"):
        theirs[kind] = LightlyHarness(setting, kind, images, labels, device)
        theirs[kind].warm_up()
    calls = {f"ours {m}": harness.step for m, harness in ours.items()}
    calls.update({f"lightly {k}": harness.step for k, harness in theirs.items()})
    samples = interleaved(calls, rounds, device, warmup=1, budget_s=budget_s)
    config = setting.config
    return {
        "setting": {
            "name": setting.name,
            "backbone": config.backbone,
            "image_size": config.image_size,
            "batch_size": config.batch_size,
            "memory_size": config.memory_size,
            "projection_dim": config.projection_dim,
        },
        "augmentation_included": True,
        "times": {name: summarize(values) for name, values in samples.items()},
        "ratios": {
            "ours moco/lightly moco": ratio(
                samples["ours moco"], samples["lightly moco"]
            ),
            "ours d-moco/lightly moco": ratio(
                samples["ours d-moco"], samples["lightly moco"]
            ),
            "ours simclr/lightly simclr": ratio(
                samples["ours simclr"], samples["lightly simclr"]
            ),
        },
    }


def run(
    device: torch.device, quick: bool = False, deadline: Deadline | None = None
) -> dict[str, Any]:
    """The peer section of the results; skipped without lightly.

    Args:
        device: where the steps run.
        quick: the smoke setting and two rounds.
        deadline: a budget; a setting is skipped once it is spent.

    Returns:
        A JSON-ready record.
    """
    deadline = deadline or Deadline(None)
    version = lightly_version()
    record: dict[str, Any] = {
        "machine": machine_info(device),
        "lightly": version,
        "loss": "lightly.loss.NTXentLoss (memory_bank_size=(K, Z) for MoCo)",
        "settings": {},
        "skipped_for_time": [],
    }
    if version is None:
        record["skipped"] = (
            "lightly cannot be imported here; install the bench extra "
            "(pip install -e '.[bench]') where PyPI is reachable"
        )
        return record
    for setting in settings(quick):
        if deadline.expired():
            record["skipped_for_time"].append(setting.name)
            continue
        log.info("peer: %s", setting.name)
        record["settings"][setting.name] = measure_setting(
            setting, device, 2 if quick else 9, deadline.left()
        )
    return record
