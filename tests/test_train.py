"""Training runs on the embedded digits set: every method, resume, label blindness."""

from __future__ import annotations

import json

import pytest
import torch

from duel import train as train_module
from duel.cli import main
from duel.config import METHODS, build_config
from duel.io import read_jsonl
from duel.train import ConfigMismatchError, NonFiniteLossError, open_session, train


def smoke(tmp_path, **overrides):
    return build_config("smoke", runs_dir=str(tmp_path), **overrides)


def final_state(config):
    """The method's parameters, buffers and memory as the last checkpoint holds them."""
    state = torch.load(config.run_dir() / "checkpoint.pt", weights_only=True)
    return state["step"], state["method"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_evaluates(tmp_path, method):
    config = smoke(tmp_path, method=method, steps=40, lr=3e-3)
    summary = train(config, progress=False)

    losses = [r["loss"] for r in read_jsonl(config.run_dir() / "metrics.jsonl")]
    assert len(losses) == 40
    assert all(torch.isfinite(torch.tensor(losses)))
    # Memory methods add negatives while the memory fills: compare once it is full.
    start = 4
    assert sum(losses[-5:]) / 5 < sum(losses[start : start + 5]) / 5

    written = json.loads((config.run_dir() / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    for key in (
        "knn_accuracy",
        "linear_probe_accuracy",
        "intra_class_variance",
        "inter_class_similarity",
    ):
        assert 0 <= written[key] <= 4, key
        assert key in written["random_init"]
    assert written["steps"] == 40
    assert written["config"]["method"] == method
    if method in ("moco", "d-moco", "d-simclr"):
        memory = written["memory"]
        assert memory["filled"] == config.memory_size
        assert sum(memory["class_counts"]) == config.memory_size
        snapshots = read_jsonl(config.run_dir() / "memory.jsonl")
        assert [s["step"] for s in snapshots] == list(range(5, 41, 5))
        assert sorted(p.name for p in (config.run_dir() / "memory").iterdir()) == [
            "step=0000020.pt",
            "step=0000040.pt",
        ]
    else:
        assert "memory" not in written


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    whole = smoke(tmp_path / "whole", method="d-simclr")
    pieces = smoke(tmp_path / "pieces", method="d-simclr")
    train(whole, progress=False, evaluate=False)
    assert train(pieces, progress=False, stop_at=13) is None
    assert final_state(pieces)[0] == 13
    train(pieces, progress=False, evaluate=False)

    step_a, state_a = final_state(whole)
    step_b, state_b = final_state(pieces)
    assert step_a == step_b == 30
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        if name.endswith("_extra_state"):
            continue
        assert torch.equal(state_a[name], state_b[name]), name

    def without_time(path):
        return [
            {k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(path)
        ]

    for name in ("metrics.jsonl", "memory.jsonl"):
        assert without_time(whole.run_dir() / name) == without_time(
            pieces.run_dir() / name
        )


def test_labels_never_reach_training(tmp_path, monkeypatch):
    """Permuting the labels the learner could see leaves training bit-identical.

    The environment keeps drawing the same stream (it is built from the true
    labels); every label a run can read afterwards is permuted.
    """
    plain = smoke(tmp_path / "plain", method="d-moco")
    train(plain, progress=False, evaluate=False)

    real_load = train_module.load_dataset
    real_stream = train_module.ImbalancedStream
    true_labels = {}

    def permuted_load(name, split, *args, **kwargs):
        dataset = real_load(name, split, *args, **kwargs)
        true_labels[split] = dataset.labels.clone()
        generator = torch.Generator().manual_seed(0)
        dataset.labels = (
            dataset.labels + 1 + torch.randint(8, (1,), generator=generator)
        ) % 10
        return dataset

    def environment(labels, *args, **kwargs):
        return real_stream(true_labels["train"], *args, **kwargs)

    monkeypatch.setattr(train_module, "load_dataset", permuted_load)
    monkeypatch.setattr(train_module, "ImbalancedStream", environment)
    permuted = smoke(tmp_path / "permuted", method="d-moco")
    train(permuted, progress=False, evaluate=False)

    _, state_plain = final_state(plain)
    _, state_permuted = final_state(permuted)
    for name in state_plain:
        if name.endswith("_extra_state"):
            continue
        if name.endswith("memory.labels"):
            assert not torch.equal(state_plain[name], state_permuted[name])
        else:
            assert torch.equal(state_plain[name], state_permuted[name]), name


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(
    tmp_path, monkeypatch
):
    config = smoke(tmp_path, method="simclr", checkpoint_every=2)
    real_forward = train_module.Method.__call__
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss, logs = real_forward(self, *args, **kwargs)
        if calls["n"] == 5:
            loss = loss * float("nan")
            logs["loss"] = float("nan")
        return loss, logs

    monkeypatch.setattr(train_module.Method, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        train(config, progress=False)
    assert final_state(config)[0] == 4
    assert not (config.run_dir() / "summary.json").exists()


def test_a_run_directory_of_another_configuration_is_refused(tmp_path):
    train(smoke(tmp_path, method="simclr", steps=4), progress=False, evaluate=False)
    with pytest.raises(ConfigMismatchError, match=r"steps: 4 -> 6; tau: 0.5 -> 0.2"):
        train(smoke(tmp_path, method="simclr", steps=6, tau=0.2), progress=False)


def test_eval_command_rewrites_a_complete_summary(tmp_path, capsys):
    config = smoke(tmp_path, method="byol", steps=6)
    first = train(config, progress=False)
    (config.run_dir() / "summary.json").unlink()

    assert main(["--quiet", "eval", str(config.run_dir())]) == 0
    again = json.loads((config.run_dir() / "summary.json").read_text())
    assert again["knn_accuracy"] == first["knn_accuracy"]
    assert again["linear_probe_accuracy"] == first["linear_probe_accuracy"]
    assert "kNN accuracy" in capsys.readouterr().out


def test_train_command_line(tmp_path, capsys):
    code = main(
        [
            "--quiet",
            "train",
            "--profile",
            "smoke",
            "--method",
            "d-moco",
            "--p-max",
            "0.5",
            "--steps",
            "4",
            "--runs-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    run_dir = tmp_path / "smoke" / "digits" / "d-moco" / "p_max=0.5" / "seed=0"
    assert (run_dir / "summary.json").exists()
    assert "linear probe" in capsys.readouterr().out


def test_session_uses_the_profile_data(tmp_path):
    session = open_session(smoke(tmp_path))
    assert session.train_set.name == "digits"
    assert session.images.dtype == torch.uint8
    assert session.method.memory.size == 64


def test_session_crops_at_the_configured_scale(tmp_path):
    session = open_session(smoke(tmp_path, crop_scale=0.5))
    assert session.augmentation.crop
    assert session.augmentation.crop_scale == (0.5, 1.0)


def test_profiles_layer_method_then_dataset_defaults():
    byol = build_config("cpu", method="byol")
    simclr = build_config("cpu", method="simclr")
    assert (byol.projector, byol.projector_batch_norm, byol.lr) == ("mlp2", True, 1e-3)
    assert (simclr.projector, simclr.projector_batch_norm) == ("linear", False)
    assert simclr.lr == 3e-3 and byol.steps == simclr.steps
    # An explicit value beats every layer of the profile.
    assert build_config("cpu", method="byol", lr=5e-3).lr == 5e-3

    cifar = build_config("paper", method="byol")
    assert (cifar.projector, cifar.hidden_dim, cifar.projector_batch_norm) == (
        "mlp2",
        2048,
        False,
    )
    # STL-10's own BYOL head sits on top of both the method's and the dataset's.
    stl = build_config("paper", method="byol", dataset="stl10")
    assert (stl.hidden_dim, stl.projector_batch_norm, stl.projection_dim) == (
        4096,
        True,
        512,
    )
    stl_simclr = build_config("paper", method="simclr", dataset="stl10")
    assert (stl_simclr.projector, stl_simclr.projector_batch_norm) == ("mlp2", False)
