"""The active memory: the batched DUEL update against a plain reference."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duel import data
from duel.memory import POLICIES, ActiveMemory
from duel.metrics import class_entropy
from duel.reference import reference_duel


def unit(tensor: torch.Tensor) -> torch.Tensor:
    return F.normalize(tensor, dim=1)


@st.composite
def duel_cases(draw):
    dim = draw(st.integers(2, 5))
    size = draw(st.integers(1, 10))
    pool_size = draw(st.integers(1, 12))
    length = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    pool = unit(torch.randn(pool_size, dim, generator=generator, dtype=torch.float64))
    # Drawing from a small pool makes exact duplicates and tied scores common.
    choice = torch.randint(pool_size, (length,), generator=generator)
    stream = pool[choice]
    cuts = sorted(draw(st.lists(st.integers(1, length), max_size=3)))
    tau = draw(st.sampled_from([0.1, 0.5, 1.0]))
    safe = draw(st.booleans()) and size >= 2
    return stream, size, cuts, tau, safe


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(duel_cases())
def test_batched_duel_matches_reference(case):
    stream, size, cuts, tau, safe = case
    memory = ActiveMemory(
        size, stream.shape[1], tau=tau, safe=safe, dtype=torch.float64
    )
    slots = []
    for batch in torch.tensor_split(stream, cuts):
        if len(batch):
            slots += memory.update(batch).tolist()

    assert slots == reference_duel(stream, size, tau, safe)
    assert torch.allclose(memory.duplication_scores(), memory.recompute_scores())


def test_batch_larger_than_memory_and_not_yet_full():
    generator = torch.Generator().manual_seed(3)
    stream = unit(torch.randn(50, 4, generator=generator, dtype=torch.float64))
    memory = ActiveMemory(8, 4, dtype=torch.float64)
    first = memory.update(stream[:3])  # memory not yet full
    second = memory.update(stream[3:])  # B = 47 > K = 8
    assert first.tolist() == [0, 1, 2]
    assert first.tolist() + second.tolist() == reference_duel(stream, 8, 0.5)
    assert memory.num_filled == 8


def test_memory_features_are_the_last_writes():
    generator = torch.Generator().manual_seed(4)
    stream = unit(torch.randn(30, 3, generator=generator))
    memory = ActiveMemory(5, 3)
    slots = memory.update(stream, items=torch.arange(30))
    for slot in range(5):
        last = max(t for t, s in enumerate(slots.tolist()) if s == slot)
        assert torch.equal(memory.features[slot], stream[last])
        assert int(memory.items[slot]) == last


def one_hot_stream(p_max: float, steps: int, batch_size: int, seed: int = 0):
    num_classes = 10
    labels = torch.arange(num_classes).repeat_interleave(50)
    sampler = data.ImbalancedStream(
        labels, data.class_probabilities(num_classes, p_max), batch_size, seed=seed
    )
    for _ in range(steps):
        indices = sampler.next_batch()
        yield F.one_hot(labels[indices], num_classes).float(), labels[indices]


def test_duel_balances_the_memory_while_fifo_follows_the_stream():
    histories = {}
    for policy in ("duel", "fifo"):
        memory = ActiveMemory(100, 10, policy=policy)
        for features, labels in one_hot_stream(0.75, steps=60, batch_size=32):
            memory.update(features, labels=labels)
        histories[policy] = class_entropy(memory.labels, 10)

    stream_entropy = class_entropy(
        torch.distributions.Categorical(
            probs=data.class_probabilities(10, 0.75)
        ).sample((100_000,)),
        10,
    )
    assert histories["duel"] > 0.99 * math.log(10)
    assert abs(histories["fifo"] - stream_entropy) < 0.2
    assert histories["fifo"] < 0.7 * math.log(10)


def test_safe_rule_never_lowers_total_distinctiveness():
    memory = ActiveMemory(20, 10, safe=True)
    totals = []
    for features, labels in one_hot_stream(0.75, steps=20, batch_size=16, seed=1):
        features = unit(features + 0.05 * torch.randn(features.shape))
        slots = memory.update(features, labels=labels)
        if memory.is_full:
            totals.append(float(memory.distinctiveness().sum()))
            assert ((slots >= -1) & (slots < 20)).all()
    assert all(b >= a - 1e-9 for a, b in zip(totals, totals[1:], strict=False))


@pytest.mark.parametrize("policy", POLICIES)
def test_state_dict_round_trip_continues_identically(policy):
    generator = torch.Generator().manual_seed(5)
    stream = unit(torch.randn(120, 6, generator=generator))
    labels = torch.randint(4, (120,), generator=generator)
    original = ActiveMemory(16, 6, policy=policy, seed=7)
    original.update(stream[:40], labels=labels[:40], items=torch.arange(40))

    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = ActiveMemory(16, 6, policy=policy, seed=99)
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    for start in (40, 80):
        batch = slice(start, start + 40)
        items = torch.arange(start, start + 40)
        a = original.update(stream[batch], labels=labels[batch], items=items)
        b = restored.update(stream[batch], labels=labels[batch], items=items)
        assert torch.equal(a, b)
    for name, value in original.state_dict().items():
        if name != "_extra_state":
            assert torch.equal(value, restored.state_dict()[name]), name
    assert torch.equal(original.sample(5), restored.sample(5))


def test_fifo_cycles_through_slots():
    memory = ActiveMemory(4, 2, policy="fifo")
    features = unit(torch.randn(10, 2))
    assert memory.update(features).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_random_policy_always_stores_once_full():
    memory = ActiveMemory(4, 2, policy="random")
    slots = memory.update(unit(torch.randn(50, 2)))
    assert slots[:4].tolist() == [0, 1, 2, 3]
    assert ((slots >= 0) & (slots < 4)).all()


def test_reservoir_keeps_a_uniform_sample_of_the_stream():
    # Every sample of the stream ends in memory with probability K / N.
    kept_first_half = 0
    runs, size, length = 200, 10, 100
    for seed in range(runs):
        memory = ActiveMemory(size, 2, policy="reservoir", seed=seed)
        memory.update(unit(torch.randn(length, 2)), items=torch.arange(length))
        kept_first_half += int((memory.items < length // 2).sum())
    share = kept_first_half / (runs * size)
    assert abs(share - 0.5) < 0.05


def test_sample_draws_distinct_filled_slots():
    memory = ActiveMemory(10, 2)
    memory.update(unit(torch.randn(6, 2)))
    drawn = memory.sample(20)
    assert sorted(drawn.tolist()) == list(range(6))


def test_labels_do_not_change_decisions():
    generator = torch.Generator().manual_seed(8)
    stream = unit(torch.randn(60, 5, generator=generator))
    a, b = ActiveMemory(10, 5), ActiveMemory(10, 5)
    slots_a = a.update(stream, labels=torch.zeros(60, dtype=torch.long))
    slots_b = b.update(stream, labels=torch.randint(9, (60,), generator=generator))
    assert torch.equal(slots_a, slots_b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0, "dim": 2}, "size must be an integer >= 1, got 0"),
        ({"size": 2, "dim": 0}, "dim must be an integer >= 1, got 0"),
        ({"size": 2, "dim": 2, "policy": "lru"}, "policy must be one of"),
        ({"size": 2, "dim": 2, "tau": 0}, "tau must be a finite number > 0, got 0"),
        ({"size": 2, "dim": 2, "tau": float("nan")}, "tau must be a finite"),
        ({"size": 2, "dim": 2, "policy": "fifo", "safe": True}, "safe=True needs"),
        ({"size": 2, "dim": 2, "seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActiveMemory(**kwargs)


@pytest.mark.parametrize(
    ("features", "extra", "message"),
    [
        (torch.ones(3, 4) / 2, {}, r"features must have shape \(B, 3\)"),
        (torch.full((2, 3), float("nan")), {}, "features must be finite"),
        (torch.ones(2, 3), {}, "features must be unit norm"),
        (unit(torch.ones(2, 3)), {"labels": torch.zeros(3)}, r"labels must have"),
        (unit(torch.ones(2, 3)), {"items": torch.zeros(2, 2)}, r"items must have"),
    ],
)
def test_update_errors(features, extra, message):
    with pytest.raises(ValueError, match=message):
        ActiveMemory(4, 3).update(features, **extra)
