"""The sweep through submitit: one job per run, in local subprocesses."""

from __future__ import annotations

from pathlib import Path

import pytest

from duel.cli import main
from duel.config import build_config
from duel.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]


def sweep_arguments(tmp_path: Path, *extra: str) -> list[str]:
    """A 2-run smoke sweep with its runs, pages and job logs under tmp_path."""
    return [
        "--quiet",
        "sweep",
        "--profile",
        "smoke",
        "--methods",
        "moco",
        "d-moco",
        "--p-max",
        "0.75",
        "--steps",
        "4",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--notebooks-dir",
        str(tmp_path / "pages"),
        "--slurm-log-dir",
        str(tmp_path / "slurm"),
        "--jobs",
        "2",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_submitit_local_runs_each_run_as_a_job_and_skips_done_runs(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(REPO)
    arguments = sweep_arguments(tmp_path, "--executor", "submitit-local")

    assert main(arguments) == 0
    assert "sweep: 2 executed, 0 already done, 0 failed" in capsys.readouterr().out
    for method in ("moco", "d-moco"):
        config = build_config(
            "smoke", method=method, p_max=0.75, steps=4, runs_dir=str(tmp_path / "runs")
        )
        run_dir = config.run_dir()
        page = tmp_path / "pages" / "smoke" / f"{method}_p_max-0.75_seed-0.ipynb"
        assert (run_dir / "summary.json").exists(), run_dir
        assert page.exists()
    # Each run was its own job, with its own logs.
    assert len(list((tmp_path / "slurm").glob("*/*_log.err"))) == 2

    assert main(arguments) == 0
    assert "sweep: 0 executed, 2 already done, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--executor", "dask"],
            "--executor must be one of local, slurm, submitit-local, got 'dask'",
        ),
        (["--gpus-per-run", "0"], "--gpus-per-run must be an integer >= 1, got 0"),
        (["--time-minutes", "0"], "--time-minutes must be an integer >= 1, got 0"),
        (
            ["--executor", "slurm"],
            "--partition must name a Slurm partition with --executor slurm, got None",
        ),
    ],
)
def test_bad_executor_options_fail_before_any_work(
    tmp_path, monkeypatch, capsys, extra, message
):
    monkeypatch.chdir(REPO)
    assert main(sweep_arguments(tmp_path, *extra)) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "slurm").exists()


def test_bad_executor_options_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="--executor must be one of"):
        run_sweep("smoke", ["moco"], [0.5], runs_dir=tmp_path, executor="ray")
