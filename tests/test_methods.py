"""Tests of duel.methods: each method trains on a tiny fixed data set on the CPU."""

import dataclasses

import pytest
import torch

from duel.methods import (
    METHODS,
    BarlowTwins,
    DSimCLR,
    MethodConfig,
    MoCo,
    SimCLR,
    build_method,
)

BATCH = 16
NUM_IMAGES = 64
CONFIG = MethodConfig(
    in_channels=1,
    image_size=8,
    projection_dim=32,
    hidden_dim=64,
    memory_size=32,
    memory_draw=16,
)


class TinyData:
    """64 random 1x8x8 images with fixed noisy views, in 4 fixed batches."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(NUM_IMAGES, 1, 8, 8, generator=generator)
        self.noise = 0.1 * torch.randn(3, NUM_IMAGES, 1, 8, 8, generator=generator)
        self.labels = torch.randint(4, (NUM_IMAGES,), generator=generator)
        self.fetched: list[torch.Tensor] = []

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = torch.arange(BATCH) + BATCH * (step % (NUM_IMAGES // BATCH))
        images = self.images[indices]
        return images + self.noise[0, indices], images + self.noise[1, indices], indices

    def fetch_views(self, indices: torch.Tensor) -> torch.Tensor:
        self.fetched.append(indices.clone())
        return self.images[indices] + self.noise[2, indices]


def build(name, data, **changes):
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIG, **changes)
    return build_method(name, config, fetch_views=data.fetch_views)


def train(method, data, steps, labels=None, after_forward=None):
    """Adam on the fixed batches; returns the losses and the last logs."""
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    labels = data.labels if labels is None else labels
    losses, logs = [], {}
    for step in range(steps):
        view1, view2, indices = data.batch(step)
        loss, logs = method(view1, view2, indices)
        if after_forward is not None:
            after_forward(method)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(labels[indices])
        losses.append(loss.item())
    return losses, logs


@pytest.mark.parametrize("name", METHODS)
def test_each_method_trains_and_its_loss_falls(name):
    data = TinyData()
    method = build(name, data)
    losses, logs = train(method, data, steps=16)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])
    assert logs["loss"] == losses[-1]


def test_method_classes():
    data = TinyData()
    kinds = {name: type(build(name, data)) for name in METHODS}
    assert kinds["simclr"] is SimCLR
    assert kinds["moco"] is kinds["d-moco"] is MoCo
    assert kinds["barlow"] is BarlowTwins
    assert kinds["d-simclr"] is DSimCLR


def test_encode_gives_backbone_features():
    method = build("simclr", TinyData())
    assert method.encode(torch.randn(3, 1, 8, 8)).shape == (3, method.feature_dim)


@pytest.mark.parametrize("name", ["moco", "byol"])
def test_momentum_networks_are_not_trained_by_the_optimiser(name):
    method = build(name, TinyData())
    trainable = {id(p) for p in method.trainable_parameters()}
    frozen = [
        p for n, p in method.named_parameters() if n.startswith(("key", "target"))
    ]
    assert frozen and not any(id(p) in trainable for p in frozen)
    assert {id(p) for p in method.backbone.parameters()} <= trainable


def test_momentum_network_follows_the_online_one():
    data = TinyData()
    method = build("moco", data, momentum=0.5)
    key_before = [p.clone() for p in method.key_backbone.parameters()]
    train(method, data, steps=1)
    for old, key, online in zip(
        key_before,
        method.key_backbone.parameters(),
        method.backbone.parameters(),
        strict=True,
    ):
        torch.testing.assert_close(key, 0.5 * old + 0.5 * online)


# --------------------------------------------------------------- the memories


def test_moco_and_d_moco_differ_only_in_the_memory_policy():
    data = TinyData()
    moco, d_moco = build("moco", data), build("d-moco", data)
    assert moco.memory.policy == "fifo" and d_moco.memory.policy == "duel"
    assert moco.config == dataclasses.replace(d_moco.config, memory_policy="fifo")
    assert moco.state_dict().keys() == d_moco.state_dict().keys()
    for name, tensor in moco.state_dict().items():
        if isinstance(tensor, torch.Tensor):  # not the memory's generator state
            assert tensor.shape == d_moco.state_dict()[name].shape, name

    # moco with the duel policy is d-moco, bit for bit.
    moco_duel = build("moco", data, memory_policy="duel")
    train(moco_duel, data, steps=4)
    train(d_moco, data, steps=4)
    for name, tensor in d_moco.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, moco_duel.state_dict()[name]), name


@pytest.mark.parametrize("name", ["moco", "d-moco", "d-simclr"])
def test_memory_fills_during_training(name):
    data = TinyData()
    method = build(name, data, memory_size=40)
    assert method.memory.num_filled == 0
    for steps, filled in [(1, 16), (1, 32), (1, 40), (2, 40)]:
        train(method, data, steps=steps)
        assert method.memory.num_filled == filled
    stored = method.memory.items[: method.memory.num_filled]
    assert ((stored >= 0) & (stored < NUM_IMAGES)).all()
    assert (method.memory.labels >= 0).all()


def test_moco_negatives_grow_with_the_memory():
    data = TinyData()
    method = build("moco", data)
    logged = [train(method, data, steps=1)[1]["memory_negatives"] for _ in range(3)]
    assert logged == [0.0, 16.0, 32.0]


def test_reservoir_is_one_parameter_away():
    data = TinyData()
    method = build("moco", data, memory_policy="reservoir")
    assert method.memory.policy == "reservoir"
    losses, _ = train(method, data, steps=3)
    assert all(map(torch.isfinite, torch.tensor(losses)))


def test_d_simclr_fetches_images_of_its_memory_items():
    data = TinyData()
    method = build("d-simclr", data)

    def check_fetches(method):
        stored = set(method.memory.items[: method.memory.num_filled].tolist())
        if method.memory.num_filled == 0:
            assert not data.fetched  # no memory negatives on the first step
            return
        fetched = data.fetched.pop()
        assert len(fetched) == min(CONFIG.memory_draw, method.memory.num_filled)
        assert len(set(fetched.tolist())) == len(fetched)  # without replacement
        assert set(fetched.tolist()) <= stored

    losses, logs = train(method, data, steps=5, after_forward=check_fetches)
    assert logs["memory_negatives"] == CONFIG.memory_draw
    assert not data.fetched


def test_d_simclr_with_batch_negatives_is_simclr():
    data = TinyData()
    simclr = build("simclr", data)
    d_simclr = build("d-simclr", data, negatives="batch")
    simclr_losses, _ = train(simclr, data, steps=4)
    d_simclr_losses, _ = train(d_simclr, data, steps=4)
    assert simclr_losses == d_simclr_losses
    assert not data.fetched
    for name, parameter in simclr.named_parameters():
        assert torch.equal(parameter, d_simclr.get_parameter(name)), name


def test_d_simclr_memory_only_negatives_with_eps_zero():
    data = TinyData()
    method = build("d-simclr", data, negatives="memory", eps=0.0)
    losses, logs = train(method, data, steps=3)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert logs["memory_negatives"] == CONFIG.memory_draw


@pytest.mark.parametrize("name", ["d-moco", "d-simclr"])
def test_labels_do_not_change_training(name):
    data = TinyData()
    permuted = data.labels[torch.randperm(NUM_IMAGES)]
    runs = []
    for labels in (data.labels, permuted):
        method = build(name, data)
        train(method, data, steps=4, labels=labels)
        runs.append(method)
    first, second = runs
    for parameter_name, parameter in first.named_parameters():
        assert torch.equal(parameter, second.get_parameter(parameter_name))
    assert torch.equal(first.memory.features, second.memory.features)
    assert torch.equal(first.memory.items, second.memory.items)
    assert not torch.equal(first.memory.labels, second.memory.labels)


def test_training_without_labels_leaves_them_unknown():
    data = TinyData()
    method = build("d-moco", data)
    view1, view2, indices = data.batch(0)
    loss, _ = method(view1, view2, indices)
    loss.backward()
    method.after_step()
    assert method.memory.num_filled == BATCH
    assert (method.memory.labels[:BATCH] == -1).all()


def test_after_step_without_forward_does_nothing_to_the_memory():
    method = build("d-moco", TinyData())
    method.after_step()
    assert method.memory.num_filled == 0


def test_checkpoint_restores_the_memory():
    data = TinyData()
    method = build("d-simclr", data)
    train(method, data, steps=3)
    restored = build("d-simclr", data)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.memory.features, method.memory.features)
    assert restored.memory.num_filled == method.memory.num_filled
    view1, view2, indices = data.batch(3)
    assert method(view1, view2, indices)[0] == restored(view1, view2, indices)[0]


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"memory_policy": "lru"}, "memory_policy must be None or one of duel, fifo"),
        ({"negatives": "all"}, "negatives must be one of batch, memory, mixed"),
        ({"tau": 0.0}, "tau must be a finite number > 0, got 0.0"),
        ({"tau": -1.0}, "tau must be"),
        ({"eps": 1.5}, r"eps must be in \[0, 1\], got 1.5"),
        ({"eps": -0.1}, "eps must be"),
        ({"memory_size": 0}, "memory_size must be an integer >= 1, got 0"),
        ({"memory_draw": 0}, "memory_draw must be an integer >= 1, got 0"),
        ({"momentum": 2.0}, "momentum must be in"),
        ({"barlow_lambda": -1.0}, "barlow_lambda must be >= 0"),
        ({"backbone": "vgg"}, "backbone must be one of small"),
    ],
)
def test_build_method_rejects_bad_config(changes, message):
    with pytest.raises(ValueError, match=message):
        build_method("d-simclr", dataclasses.replace(CONFIG, **changes), lambda i: i)


def test_build_method_rejects_unknown_names_and_missing_fetch_views():
    with pytest.raises(
        ValueError, match="simclr, moco, byol, barlow, d-moco, d-simclr"
    ):
        build_method("swav", CONFIG)
    with pytest.raises(ValueError, match="needs fetch_views"):
        build_method("d-simclr", CONFIG)
    assert isinstance(
        build_method("d-simclr", dataclasses.replace(CONFIG, negatives="batch")),
        DSimCLR,
    )


def test_forward_rejects_bad_batches():
    method = build("simclr", TinyData())
    view = torch.randn(4, 1, 8, 8)
    with pytest.raises(ValueError, match="view1 and view2"):
        method(view, view[:3], torch.arange(4))
    with pytest.raises(ValueError, match=r"indices must have shape \(4,\)"):
        method(view, view, torch.arange(5))


def test_d_simclr_rejects_badly_shaped_fetched_images():
    data = TinyData()
    method = build_method(
        "d-simclr", CONFIG, fetch_views=lambda indices: torch.zeros(len(indices), 3)
    )
    train(method, data, steps=1)
    with pytest.raises(ValueError, match="fetch_views must return"):
        train(method, data, steps=1)
