"""The project's promises: bad input fails early and clearly, a crash loses nothing."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from duel import train as train_module
from duel.cli import main
from duel.config import build_config
from duel.io import CheckpointError, load_checkpoint, save_checkpoint
from duel.train import train

SMOKE = ["train", "--profile", "smoke", "--method", "d-moco"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--p-max", "0"], "p_max must be a number in (0, 1), got 0.0"),
        (["--p-max", "1"], "p_max must be a number in (0, 1), got 1.0"),
        (["--p-max", "1.5"], "p_max must be a number in (0, 1), got 1.5"),
        (["--p-max", "-0.1"], "p_max must be a number in (0, 1), got -0.1"),
        (["--p-max", "abc"], "p_max must be a number, got 'abc'"),
        (["--seed", "1.5"], "seed must be an integer, got '1.5'"),
        (["--method", "simsiam"], "method must be one of simclr, moco, byol"),
        (["--dataset", "mnist"], "dataset must be one of digits, fashion-mnist"),
        (["--profile", "tpu"], "profile must be one of smoke, cpu, gpu-quick, paper"),
        (["--memory-policy", "lru"], "memory_policy must be one of duel, fifo"),
        (["--device", "tpu"], "device must be one of auto, cpu, cuda, got 'tpu'"),
        (["--memory-size", "0"], "memory_size must be an integer >= 1, got 0"),
        (["--batch-size", "1"], "batch_size must be an integer >= 2, got 1"),
        (["--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["--steps", "-3"], "steps must be an integer >= 1, got -3"),
        (["--tau", "0"], "tau must be a number > 0, got 0.0"),
        (["--eps", "1.5"], "eps must be a number in [0, 1], got 1.5"),
        (["--eps", "-1"], "eps must be a number in [0, 1], got -1.0"),
        (["--crop-scale", "0"], "crop_scale must be a number in (0, 1], got 0.0"),
        (["--crop-scale", "1.2"], "crop_scale must be a number in (0, 1], got 1.2"),
        (
            ["--memory-size", "16", "--batch-size", "32"],
            "memory_size must be >= batch_size (32) for d-moco, got 16",
        ),
    ],
)
def test_bad_parameters_fail_with_one_line(tmp_path, capsys, arguments, expected):
    if "--profile" in arguments:
        command = ["train", "--method", "d-moco", *arguments]
    else:
        command = [*SMOKE, *arguments]
    code = main([*command, "--runs-dir", str(tmp_path / "runs")])

    error = capsys.readouterr().err
    assert code != 0
    assert error.count("\n") == 1, error
    assert expected in error
    assert "Traceback" not in error
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="p_max"):
        main(["--debug", *SMOKE, "--p-max", "2", "--runs-dir", str(tmp_path)])


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    code = main(
        [
            *SMOKE,
            "--dataset",
            "cifar10",
            "--data-dir",
            str(empty),
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
    )
    error = capsys.readouterr().err
    assert code != 0
    assert error.count("\n") == 1
    assert "cifar10" in error and str(empty) in error
    assert "download" in error


def test_unwritable_runs_dir_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main([*SMOKE, "--runs-dir", str(blocker / "runs")])
    error = capsys.readouterr().err
    assert code != 0
    assert "runs_dir" in error and "cannot be written" in error
    assert error.count("\n") == 1


# ---------------------------------------------------------------------- faults

RUNNER = textwrap.dedent(
    """
    import os, signal, sys
    import duel.io
    from duel.config import build_config
    from duel.train import train

    runs_dir, kill_at_write = sys.argv[1], int(sys.argv[2])
    if kill_at_write:
        real = duel.io.atomic_write_bytes
        calls = {"n": 0}

        def dying(path, data):
            calls["n"] += 1
            if calls["n"] == kill_at_write:
                # Die halfway through writing the temporary file.
                folder, name = os.path.split(str(path))
                with open(os.path.join(folder, "." + name + ".dying"), "wb") as out:
                    out.write(data[: len(data) // 2])
                    out.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, data)

        duel.io.atomic_write_bytes = dying
    config = build_config(
        "smoke", method="d-simclr", runs_dir=runs_dir, checkpoint_every=4
    )
    train(config, progress=False, evaluate=False)
    """
)


def _run(runs_dir: Path, kill_at_write: int = 0, kill_after: float | None = None):
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(runs_dir), str(kill_at_write)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if kill_after is not None:
        # Wait for the first checkpoint, so that the kill lands mid-run.
        config = build_config("smoke", method="d-simclr", runs_dir=str(runs_dir))
        while not (config.run_dir() / "checkpoint.pt").exists():
            time.sleep(0.01)
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=300)
    return process.returncode


def _final(runs_dir: Path) -> dict:
    config = build_config("smoke", method="d-simclr", runs_dir=str(runs_dir))
    return load_checkpoint(config.run_dir() / "checkpoint.pt")


def _assert_same_training(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == 30
    for name, value in a["method"].items():
        if not name.endswith("_extra_state"):
            assert torch.equal(value, b["method"][name]), name


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("unbroken")
    assert _run(runs_dir) == 0
    return _final(runs_dir)


@pytest.mark.parametrize("kill_at_write", [3, 6, 8])
def test_kill_during_a_checkpoint_write_then_resume(tmp_path, unbroken, kill_at_write):
    # Writes per checkpoint: config.json once, then per checkpoint two checksum
    # files around the checkpoint itself, so 3, 6 and 8 land inside checkpoints.
    assert _run(tmp_path, kill_at_write=kill_at_write) == -signal.SIGKILL
    assert _run(tmp_path) == 0
    _assert_same_training(unbroken, _final(tmp_path))


def test_kill_at_a_random_moment_then_resume(tmp_path, unbroken):
    moment = random.Random(os.getpid()).uniform(0.0, 0.2)
    assert _run(tmp_path, kill_after=moment) == -signal.SIGKILL
    assert _run(tmp_path) == 0
    _assert_same_training(unbroken, _final(tmp_path))


def _trained(tmp_path) -> Path:
    config = build_config("smoke", method="simclr", steps=4, runs_dir=str(tmp_path))
    train(config, progress=False, evaluate=False)
    return config.run_dir() / "checkpoint.pt"


def test_truncated_checkpoint_is_reported_not_restarted(tmp_path, capsys):
    checkpoint = _trained(tmp_path)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])

    code = main(
        [
            "--quiet",
            "train",
            "--profile",
            "smoke",
            "--method",
            "simclr",
            "--steps",
            "4",
            "--runs-dir",
            str(tmp_path),
        ]
    )
    error = capsys.readouterr().err
    assert code != 0
    assert "corrupted or truncated" in error and error.count("\n") == 1
    assert checkpoint.read_bytes() == data[: len(data) // 3]  # left for inspection


def test_flipped_byte_is_detected(tmp_path):
    checkpoint = _trained(tmp_path)
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(checkpoint)


def test_checkpoint_without_checksum_is_refused(tmp_path):
    checkpoint = _trained(tmp_path)
    checkpoint.with_name("checkpoint.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="no checksum file"):
        load_checkpoint(checkpoint)


class Payload:
    """An arbitrary object: unpickling it could run code."""


def test_checkpoints_only_unpickle_tensors_and_plain_data(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "object": Payload()}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name("checkpoint.pt.sha256").write_text(digest + "\n")
    with pytest.raises(CheckpointError, match="does not load"):
        load_checkpoint(path)

    save_checkpoint(path, {"step": 2, "weights": torch.ones(2)})
    assert load_checkpoint(path)["step"] == 2


def test_summary_is_written_only_when_evaluation_completes(tmp_path, monkeypatch):
    config = build_config("smoke", method="moco", steps=4, runs_dir=str(tmp_path))

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(train_module, "evaluate_features", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(config, progress=False)
    assert not (config.run_dir() / "summary.json").exists()
    assert (config.run_dir() / "checkpoint.pt").exists()

    monkeypatch.undo()
    assert train(config, progress=False) is not None
    assert (config.run_dir() / "summary.json").exists()


# ----------------------------------------------------------------------- sweeps


def _sweep(runs_dir: Path, pages: Path) -> subprocess.Popen:
    # A session of its own, so that a kill reaches the notebook kernels too.
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "duel",
            "--quiet",
            "sweep",
            "--profile",
            "smoke",
            "--methods",
            "d-moco",
            "simclr",
            "--p-max",
            "0.75",
            "--steps",
            "60",
            "--runs-dir",
            str(runs_dir),
            "--notebooks-dir",
            str(pages),
        ],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_sweep_rerun_gives_the_tables_of_an_unbroken_one(tmp_path):
    from duel.book import load_runs, table1, table2

    unbroken = _sweep(tmp_path / "whole", tmp_path / "whole-pages")
    assert unbroken.wait(timeout=300) == 0

    runs_dir = tmp_path / "killed"
    sweep = _sweep(runs_dir, tmp_path / "killed-pages")
    # Kill the sweep and its kernels once the simclr run is partly trained.
    second = build_config("smoke", method="simclr", p_max=0.75, steps=60)
    second_dir = runs_dir / second.run_dir().relative_to(second.runs_dir)
    while not (second_dir / "checkpoint.pt").exists():
        assert sweep.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.01)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait(timeout=60)
    assert not (second_dir / "summary.json").exists()

    rerun = _sweep(runs_dir, tmp_path / "killed-pages")
    assert rerun.wait(timeout=300) == 0

    whole = load_runs(tmp_path / "whole", "smoke")
    again = load_runs(runs_dir, "smoke")
    assert len(whole) == len(again) == 2
    assert table1(whole).equals(table1(again))
    assert table2(whole).equals(table2(again))
