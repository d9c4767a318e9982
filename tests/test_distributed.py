"""Multi-process training on the CPU: two gloo processes on the loopback interface.

Each test starts two worker processes with the variables torchrun would set
(or torchrun itself), so nothing leaves this machine. Workers write what they
hold to files, and the test compares them with each other and with a single
process fed the two ranks' batches together.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from duel import distributed
from duel import train as train_module
from duel.cli import main
from duel.config import build_config
from duel.io import load_checkpoint
from duel.methods import MethodConfig, build_method

WORLD_SIZE = 2
STEPS = 6
POLICIES = {"d-moco": ("duel", "fifo", "reservoir"), "d-simclr": ("duel",)}

WORKER_PREAMBLE = """
import json, os, sys
from pathlib import Path

import torch
import torch.distributed as dist

rank = int(os.environ["RANK"])
out = Path(sys.argv[1])
torch.set_num_threads(1)
"""

# The gather + update mechanism with fixed features, the cross-process
# BatchNorm and the key shuffle, in one pair of processes.
MECHANISM = WORKER_PREAMBLE + textwrap.dedent(
    """
    from duel.distributed import CrossProcessBatchNorm, DistributedContext, KeyShuffle
    from duel.methods import MethodConfig, build_method

    dist.init_process_group("gloo")
    context = DistributedContext(
        device=torch.device("cpu"), rank=rank, world_size=dist.get_world_size()
    )
    results = {}

    for name, policies in json.loads(sys.argv[2]).items():
        for policy in policies:
            config = MethodConfig(
                in_channels=1, image_size=8, projection_dim=8, hidden_dim=16,
                memory_size=12, memory_policy=policy, memory_draw=5,
            )
            method = build_method(name, config, fetch_views=lambda i: i)
            method.gather_rows = context.gather_rows
            offers = torch.load(out / "offers.pt")
            for features, items, labels in offers:
                # What a forward offers: this rank's rows of the step's batch.
                method._memory_offer = (features[rank], items[rank])
                method.after_step(labels=labels[rank])
            results[f"{name}/{policy}"] = {
                "memory": method.memory.state_dict(),
                "drawn": method.memory.sample(5),
            }

    generator = torch.Generator().manual_seed(rank)
    for shape in [(5, 3), (5, 3, 4, 4)]:
        inputs = torch.randn(shape, generator=generator, requires_grad=True)
        weights = torch.randn(shape, generator=generator)
        layer = CrossProcessBatchNorm(3)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
            layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        output = layer(inputs)
        (output * weights).sum().backward()
        results[f"bn{len(shape)}"] = {
            "inputs": inputs.detach(), "weights": weights, "output": output.detach(),
            "input_grad": inputs.grad, "weight_grad": layer.weight.grad,
            "bias_grad": layer.bias.grad, "running_mean": layer.running_mean,
            "running_var": layer.running_var,
        }

    shuffle = KeyShuffle(context, seed=7)
    batch = (rank * 6 + torch.arange(6.0))[:, None].repeat(1, 3)  # (6, 3)
    shuffled, unshuffle = shuffle(batch)
    results["shuffle"] = {
        "batch": batch, "shuffled": shuffled, "restored": unshuffle(shuffled * 2)
    }
    torch.save(results, out / f"mechanism-rank{rank}.pt")
    dist.destroy_process_group()
    """
)

# End-to-end runs through duel.train.train; every rank saves what it trained.
TRAINING = WORKER_PREAMBLE + textwrap.dedent(
    """
    from duel import train as train_module
    from duel.config import build_config

    real_train_steps = train_module._train_steps
    tag = {"name": ""}

    def recording(session, *args, **kwargs):
        real_train_steps(session, *args, **kwargs)
        torch.save(
            {
                "memory": session.method.memory.state_dict(),
                "parameters": {
                    n: p.detach() for n, p in session.method.named_parameters()
                },
                "labels": session.train_set.labels,
                "batch_norm": sorted(
                    {type(m).__name__ for m in session.method.modules()
                     if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
                ),
                "key_shuffle": session.key_shuffle is not None,
            },
            out / f"{tag['name']}-rank{rank}.pt",
        )

    train_module._train_steps = recording

    def run(name, runs, bn_sync="sync", **kwargs):
        tag["name"] = name
        runs_dir = out / (runs if rank == 0 else f"{runs}-rank{rank}")
        return build_config(
            "smoke", runs_dir=str(runs_dir), steps=STEPS, device="cpu",
            num_threads=1, bn_sync=bn_sync, **kwargs,
        )

    # train() joins the group from the variables torchrun would set, once, and
    # the later runs of this process reuse it.
    train = train_module.train
    config = run("pieces", "pieces", method="d-moco")
    assert train(config, progress=False, stop_at=3) is None
    summary = train(config, progress=False)
    assert (summary is None) == (rank != 0), summary
    train(run("whole", "whole", method="d-moco"), progress=False, evaluate=False)
    try:  # rank 0 checks the run directory; every rank gets its error
        train(run("refused", "whole", method="d-moco", tau=0.2), progress=False)
    except train_module.ConfigMismatchError as error:
        (out / f"refused-rank{rank}.txt").write_text(str(error))
    shuffled = run("shuffle", "shuffle", bn_sync="shuffle", method="d-moco")
    train(shuffled, progress=False, evaluate=False)
    simclr = run("d-simclr", "d-simclr", method="d-simclr")
    train(simclr, progress=False, evaluate=False)
    assert dist.is_initialized() and dist.get_world_size() == 2
    """
).replace("STEPS", str(STEPS))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _loopback_environment() -> dict[str, str]:
    """Rendezvous and gloo traffic on the loopback interface only."""
    environment = dict(os.environ, MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    environment["MASTER_PORT"] = str(_free_port())
    loopback = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    if loopback:
        environment["GLOO_SOCKET_IFNAME"] = loopback[0]
    return environment


def _run_pair(script: str, out: Path, *arguments: str) -> None:
    """Runs ``script`` as ranks 0 and 1, as torchrun would start them.

    The workers get ``out`` as first argument; their errors go to files there,
    so that neither blocks on a full pipe while the other is read.
    """
    environment = _loopback_environment()
    workers, logs = [], []
    for rank in range(WORLD_SIZE):
        ranks = {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD_SIZE),
            "LOCAL_WORLD_SIZE": str(WORLD_SIZE),
        }
        logs.append(out / f"stderr-rank{rank}.txt")
        with logs[-1].open("w") as errors:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-c", script, str(out), *arguments],
                    env={**environment, **ranks},
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                )
            )
    failures = []
    for rank, worker in enumerate(workers):
        try:
            worker.wait(timeout=240)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            pytest.fail(f"rank {rank} did not finish")
        if worker.returncode != 0:
            errors = logs[rank].read_text()
            failures.append(f"rank {rank} exited {worker.returncode}:\n{errors}")
    assert not failures, "\n".join(failures)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith("_extra_state"):
            continue
        assert torch.equal(a[name], b[name]), name


# ------------------------------------------------------------------ mechanism


def _offers(steps: int = 5, per_rank: int = 4) -> list[tuple[list, list, list]]:
    """Fixed per-rank memory offers: unit features clustered so DUEL evicts."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator))
    offers = []
    for step in range(steps):
        features, items, labels = [], [], []
        for rank in range(WORLD_SIZE):
            cluster = torch.randint(3, (per_rank,), generator=generator)
            noise = 0.05 * torch.randn(per_rank, 8, generator=generator)
            features.append(torch.nn.functional.normalize(centres[cluster] + noise))
            start = (step * WORLD_SIZE + rank) * per_rank
            items.append(torch.arange(start, start + per_rank))
            labels.append(cluster)
        offers.append((features, items, labels))
    return offers


@pytest.fixture(scope="module")
def mechanism(tmp_path_factory):
    out = tmp_path_factory.mktemp("mechanism")
    offers = _offers()
    torch.save(offers, out / "offers.pt")
    _run_pair(MECHANISM, out, json.dumps(POLICIES))
    ranks = [torch.load(out / f"mechanism-rank{r}.pt") for r in range(WORLD_SIZE)]
    return offers, ranks


@pytest.mark.parametrize(
    "memory", [f"{name}/{policy}" for name, ps in POLICIES.items() for policy in ps]
)
def test_gathered_update_equals_one_process_with_the_global_batch(mechanism, memory):
    offers, ranks = mechanism
    name, policy = memory.split("/")
    config = MethodConfig(
        in_channels=1,
        image_size=8,
        projection_dim=8,
        hidden_dim=16,
        memory_size=12,
        memory_policy=policy,
        memory_draw=5,
    )
    single = build_method(name, config, fetch_views=lambda indices: indices)
    for features, items, labels in offers:
        single._memory_offer = (torch.cat(features), torch.cat(items))
        single.after_step(labels=torch.cat(labels))

    expected = single.memory.state_dict()
    drawn = single.memory.sample(5)
    assert int(expected["seen"]) == 5 * WORLD_SIZE * 4
    assert (expected["labels"] >= 0).all()
    for rank in ranks:
        _assert_same_state(rank[memory]["memory"], expected)
        # The memory's generator agrees too: every rank draws the same negatives.
        assert torch.equal(rank[memory]["drawn"], drawn)


@pytest.mark.parametrize("dims", [2, 4])
def test_cross_process_batch_norm_equals_batch_norm_on_the_global_batch(
    mechanism, dims
):
    _, ranks = mechanism
    parts = [rank[f"bn{dims}"] for rank in ranks]
    layer = nn.BatchNorm1d(3) if dims == 2 else nn.BatchNorm2d(3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    inputs = torch.cat([p["inputs"] for p in parts]).requires_grad_()
    output = layer(inputs)
    (output * torch.cat([p["weights"] for p in parts])).sum().backward()

    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(torch.cat([p["output"] for p in parts]), output, **close)
    # Each rank's input gradient holds every rank's loss: the global gradient.
    input_grads = torch.cat([p["input_grad"] for p in parts])
    torch.testing.assert_close(input_grads, inputs.grad, **close)
    weight_grad = sum(p["weight_grad"] for p in parts)
    torch.testing.assert_close(weight_grad, layer.weight.grad, **close)
    torch.testing.assert_close(sum(p["bias_grad"] for p in parts), layer.bias.grad)
    for p in parts:
        torch.testing.assert_close(p["running_mean"], layer.running_mean, **close)
        torch.testing.assert_close(p["running_var"], layer.running_var, **close)


def test_key_shuffle_spreads_the_global_batch_and_puts_it_back(mechanism):
    _, ranks = mechanism
    shuffles = [rank["shuffle"] for rank in ranks]
    everything = torch.cat([s["batch"] for s in shuffles])
    spread = torch.cat([s["shuffled"] for s in shuffles])
    assert sorted(spread[:, 0].tolist()) == sorted(everything[:, 0].tolist())
    assert not torch.equal(spread, everything)
    for shuffle in shuffles:
        assert torch.equal(shuffle["restored"], shuffle["batch"] * 2)


# ------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    _run_pair(TRAINING, out)
    return out


def _ranks(out: Path, name: str) -> list[dict]:
    return [torch.load(out / f"{name}-rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.parametrize(
    ("name", "batch_norm"),
    [
        ("whole", "CrossProcessBatchNorm"),
        ("shuffle", "BatchNorm2d"),
        ("d-simclr", "CrossProcessBatchNorm"),
    ],
)
def test_ranks_hold_the_same_memory_and_model(trained, name, batch_norm):
    first, second = _ranks(trained, name)
    assert first["batch_norm"] == [batch_norm]
    assert first["key_shuffle"] == (name == "shuffle")
    _assert_same_state(first["memory"], second["memory"])
    _assert_same_state(first["parameters"], second["parameters"])

    memory = first["memory"]
    assert int(memory["seen"]) == STEPS * WORLD_SIZE * 32  # smoke batch: 32
    assert int(memory["filled"]) == 64
    # The labels filed beside the items are those of the items' images.
    assert torch.equal(memory["labels"], first["labels"][memory["items"].flatten()])


def test_only_rank_zero_writes_and_the_checkpoint_records_the_world_size(trained):
    for runs in ("pieces", "whole", "shuffle", "d-simclr"):
        assert (trained / runs).is_dir()
        assert not (trained / f"{runs}-rank1").exists()

    config = build_config("smoke", method="d-moco", steps=STEPS)
    run_dir = trained / "pieces" / config.run_dir().relative_to(config.runs_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == WORLD_SIZE and summary["steps"] == STEPS
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [record["step"] for record in metrics] == list(range(1, STEPS + 1))
    assert load_checkpoint(run_dir / "checkpoint.pt")["world_size"] == WORLD_SIZE


def test_rank_zero_s_refusal_stops_every_rank_with_its_message(trained):
    first, second = (trained / f"refused-rank{r}.txt" for r in range(WORLD_SIZE))
    assert first.read_text() == second.read_text()
    assert "tau: 0.5 -> 0.2" in first.read_text()


def test_resumed_multi_process_run_equals_an_unbroken_one(trained):
    config = build_config("smoke", method="d-moco", steps=STEPS)
    relative = config.run_dir().relative_to(config.runs_dir)
    pieces = load_checkpoint(trained / "pieces" / relative / "checkpoint.pt")
    whole = load_checkpoint(trained / "whole" / relative / "checkpoint.pt")
    assert pieces["step"] == whole["step"] == STEPS
    _assert_same_state(pieces["method"], whole["method"])
    for key in ("augmentation_generator", "torch_rng"):
        assert torch.equal(pieces["rank_states"][key], whole["rank_states"][key])


def test_resume_with_another_world_size_fails_with_one_line(trained, capsys):
    arguments = ["--quiet", "train", "--profile", "smoke", "--method", "d-moco"]
    arguments += ["--steps", str(STEPS), "--runs-dir", str(trained / "whole")]
    config = build_config("smoke", method="d-moco", steps=STEPS)
    run_dir = trained / "whole" / config.run_dir().relative_to(config.runs_dir)
    before = (run_dir / "checkpoint.pt").read_bytes()

    assert main(arguments) != 0
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert "world_size 2" in error and "world_size 1" in error
    assert (run_dir / "checkpoint.pt").read_bytes() == before


# -------------------------------------------------------------------- torchrun


def test_torchrun_command_line_trains_and_evaluates(tmp_path):
    environment = _loopback_environment()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD_SIZE}",
        "--master_addr=127.0.0.1",
        f"--master_port={environment['MASTER_PORT']}",
        "-m",
        "duel",
        "--quiet",
        "train",
        "--profile",
        "smoke",
        "--method",
        "d-simclr",
        "--steps",
        "4",
        "--device",
        "cpu",
        "--num-threads",
        "1",
        "--runs-dir",
        str(tmp_path),
    ]
    finished = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=240
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.count("linear probe") == 1  # rank 0 reports
    config = build_config("smoke", method="d-simclr", runs_dir=str(tmp_path))
    summary = json.loads((config.run_dir() / "summary.json").read_text())
    assert summary["world_size"] == WORLD_SIZE and summary["steps"] == 4


# ------------------------------------------------------------- in one process


def test_without_torchrun_training_is_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = distributed.join(torch.device("cpu"))
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    rows = torch.arange(6).view(3, 2)
    assert context.gather_rows(rows) is rows
    assert context.average({"loss": 1.5}) == {"loss": 1.5}
    assert context.on_main(lambda: 7) == 7


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK must be an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK must be in [0, WORLD_SIZE)"),
    ],
)
def test_inconsistent_torchrun_variables_are_refused(monkeypatch, variables, expected):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(expected)):
        distributed.join(torch.device("cpu"))


def test_multi_process_settings_are_checked_before_any_work(tmp_path):
    context = distributed.DistributedContext(
        device=torch.device("cpu"), rank=0, world_size=3
    )
    config = build_config("smoke", method="d-moco", runs_dir=str(tmp_path))
    with pytest.raises(ValueError, match=re.escape("(32 x 3 = 96) for d-moco, got 64")):
        train_module._check_distributed(config, context)
    with pytest.raises(ValueError, match="bn_sync must be one of sync, shuffle"):
        distributed.check_bn_sync("global", "d-moco")
    with pytest.raises(ValueError, match="'shuffle' needs a key encoder"):
        distributed.check_bn_sync("shuffle", "simclr")
