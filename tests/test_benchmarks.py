"""The benchmarks' smoke mode: structure of the results, not their speed.

No assertion here reads a clock: the machine that runs the tests may be
loaded. Only the shape of the JSON and the sanity of its numbers are checked.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run as bench_run  # noqa: E402
from duel import cost  # noqa: E402
from duel.reference import reference_duel, reference_duel_update  # noqa: E402

SECTIONS = ("policy", "steps", "peer", "throughput")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run at one thread, then a second run of one section."""
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        arguments = ["--quick", "--device", "cpu", "--out", str(out), "--threads", "1"]
        bench_run.main(arguments)
        first = json.loads((out / "cpu-quick.json").read_text())
        bench_run.main([*arguments, "--only", "throughput"])
        second = json.loads((out / "cpu-quick.json").read_text())
    finally:
        torch.set_num_threads(threads)
    return first, second, out


def spreads(node, path=""):
    """Every {median, q25, q75} record in the JSON, with where it is."""
    if isinstance(node, dict):
        if {"median", "q25", "q75"} <= node.keys():
            yield path, node
        for key, value in node.items():
            yield from spreads(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from spreads(value, f"{path}[{index}]")


def test_quick_run_writes_every_section_with_the_machine(quick):
    record, _, out = quick
    assert record["schema_version"] == bench_run.SCHEMA_VERSION
    assert record["device_kind"] == "cpu" and record["quick"] is True
    for key in ("cpu_model", "cpu_cores", "torch", "torch_threads", "load_average"):
        assert key in record["machine"]
    assert record["machine"]["torch_threads"] == 1
    assert set(SECTIONS) <= record["sections"].keys()
    for name in SECTIONS:
        section = record["sections"][name]
        assert section["seconds"] >= 0
        assert "load_average_before" in section and "machine" in section
    assert (out / record["sections"]["policy"]["plot"]).is_file()
    assert not (out / "cpu.json").exists()  # --quick never overwrites results


def test_every_ratio_is_a_positive_finite_number(quick):
    record, _, _ = quick
    found = list(spreads(record))
    assert len(found) > 10
    for path, value in found:
        for key in ("median", "q25", "q75"):
            assert math.isfinite(value[key]) and value[key] > 0, path
        assert value["q25"] <= value["median"] <= value["q75"], path


def test_policy_section_compares_with_floor_fifo_and_reference(quick):
    policy = quick[0]["sections"]["policy"]
    assert set(policy["headline"]) == {"paper", "cpu"}
    for by_threads in policy["headline"].values():
        assert "threads=1" in by_threads
        point = by_threads["threads=1"]
        for key in ("duel", "fifo", "floor"):
            assert point[key]["median_ms"] > 0
        assert "reference_over_duel" in point
    assert policy["sweep"] and all("duel_over_floor" in p for p in policy["sweep"])
    assert any("reference" in p for p in policy["sweep"])


def test_steps_peer_and_throughput_sections(quick):
    sections = quick[0]["sections"]
    steps = sections["steps"]["settings"]["quick"]
    for key in ("d-moco/moco", "d-simclr/simclr", "d-simclr re-encoding/simclr"):
        assert key in steps["ratios"]
    assert steps["augmentation_included"] is True
    memory = steps["peak_memory"]
    assert memory["per_method"]["moco"]["max_rss_mb"] > 0
    assert memory["ratios"]["d-moco/moco"] > 0

    peer = sections["peer"]
    if peer["lightly"] is None:
        assert "skipped" in peer
    else:
        assert "ours moco/lightly moco" in peer["settings"]["quick"]["ratios"]

    rates = sections["throughput"]["threads"]["1"]
    assert len(rates) == 6
    assert all(v["images_per_second"] > 0 for v in rates.values())


def test_only_reruns_one_section_and_keeps_the_others(quick):
    first, second, _ = quick
    assert second["sections"]["policy"] == first["sections"]["policy"]
    assert (
        second["sections"]["throughput"]["measured_at"]
        >= first["sections"]["throughput"]["measured_at"]
    )


def test_cost_tables_render_the_results_beside_the_paper(quick, tmp_path):
    record, _, _ = quick
    (tmp_path / "cpu.json").write_text(json.dumps(record))
    results = cost.load_results(tmp_path)
    assert list(results) == ["cpu"]

    table = cost.appendix_d_table(results)
    assert list(table.index) == ["MoCoV2", "SimCLR", "D-MoCo", "D-SimCLR"]
    assert table.loc["D-MoCo", "paper: overhead"] == "1.17x"
    assert "ours (cpu, quick): step (ms)" in table.columns
    for frame in (
        cost.policy_table(results),
        cost.peer_table(results),
        cost.throughput_table(results),
        cost.machines_table(results),
    ):
        assert isinstance(frame, pd.DataFrame) and len(frame) > 0
    cost.policy_figure(record["sections"]["policy"])
    cost.overhead_figure(results)


def test_cost_tables_without_results_show_the_paper_alone(tmp_path):
    table = cost.appendix_d_table(cost.load_results(tmp_path))
    assert table.shape == (4, 3)


def test_timing_reference_decides_as_the_plain_reference():
    generator = torch.Generator().manual_seed(0)
    pool = F.normalize(
        torch.randn(6, 4, generator=generator, dtype=torch.float64), dim=1
    )
    stream = pool[torch.randint(6, (40,), generator=generator)]
    memory = stream[:8].clone()
    slots = reference_duel_update(memory, stream[8:], tau=0.5)
    assert slots.tolist() == reference_duel(stream, 8, 0.5)[8:]
