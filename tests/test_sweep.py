"""The sweep: planning, notebook cleaning, and skip / resume / failure on a grid."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from duel import book
from duel.cli import main
from duel.config import ConfigError, build_config
from duel.io import read_jsonl
from duel.sweep import (
    WIDGET_VIEW,
    clean_notebook,
    notebook_name,
    package_digest,
    plan_sweep,
    run_sweep,
)
from duel.train import train

REPO = Path(__file__).resolve().parents[1]


def test_plan_covers_the_grid_with_one_page_per_run(tmp_path):
    planned = plan_sweep(
        "smoke",
        ["moco", "d-simclr"],
        [0.1, 0.75],
        [0, 1],
        runs_dir=tmp_path / "runs",
        notebooks_dir=tmp_path / "pages",
    )
    assert len(planned) == 8
    names = [run.notebook.name for run in planned]
    assert names[0] == "moco_p_max-0.1_seed-0.ipynb"
    assert len(set(names)) == 8
    assert all(run.notebook.parent == tmp_path / "pages" / "smoke" for run in planned)
    assert planned[-1].title == "D-SimCLR at p_max = 0.75, seed 1"
    assert planned[0].parameters["method"] == "moco"


def test_ablation_variants_get_their_own_page_name(tmp_path):
    config = build_config("smoke", method="d-simclr", negatives="memory", eps=0.0)
    assert notebook_name(config) == "d-simclr+memory-eps0_p_max-0.75_seed-0.ipynb"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"methods": ["mocoo"]}, "method must be one of"),
        ({"p_values": [1.0]}, r"p_max must be a number in \(0, 1\), got 1.0"),
        ({"seeds": []}, "seeds must list at least one value"),
        ({"profile": "laptop"}, "profile must be one of"),
    ],
)
def test_a_bad_grid_is_refused_before_any_work(tmp_path, arguments, message):
    options = {"profile": "smoke", "methods": ["moco"], "p_values": [0.5]}
    options.update(arguments)
    with pytest.raises((ConfigError, ValueError), match=message):
        plan_sweep(
            options.pop("profile"),
            options.pop("methods"),
            options.pop("p_values"),
            options.pop("seeds", [0]),
            runs_dir=tmp_path,
        )


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="jobs must be an integer >= 1, got 0"):
        run_sweep("smoke", ["moco"], [0.5], runs_dir=tmp_path, jobs=0, source=REPO)


def test_clean_notebook_drops_widgets_and_retitles():
    document = nbformat.v4.new_notebook()
    document.metadata["widgets"] = {"state": {}}
    document.cells = [
        nbformat.v4.new_markdown_cell("# Train one run\n\nText."),
        nbformat.v4.new_code_cell("x"),
    ]
    document.cells[1].outputs = [
        nbformat.v4.new_output(
            "display_data", data={WIDGET_VIEW: {"model_id": "a"}, "text/plain": "bar"}
        ),
        nbformat.v4.new_output("display_data", data={"text/plain": "kept"}),
    ]
    clean_notebook(document, title="MoCoV2 at p_max = 0.5, seed 0")
    assert "widgets" not in document.metadata
    assert document.cells[0].source == "# MoCoV2 at p_max = 0.5, seed 0\n\nText."
    assert [o["data"]["text/plain"] for o in document.cells[1].outputs] == ["kept"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_resumes_skips_and_lists_failures(tmp_path, monkeypatch, capsys):
    """A 2-method x 2-p_max grid: one run half-trained before the sweep, one run
    directory holding another configuration (so it fails)."""
    monkeypatch.chdir(REPO)
    runs, pages = tmp_path / "runs", tmp_path / "pages"
    steps = 10

    def config(method, p_max, **overrides):
        values = {"steps": steps, "runs_dir": str(runs), **overrides}
        return build_config("smoke", method=method, p_max=p_max, **values)

    assert train(config("moco", 0.1), progress=False, stop_at=5) is None
    conflicting = config("d-moco", 0.75, steps=4)
    train(conflicting, progress=False)

    arguments = [
        "--quiet",
        "sweep",
        "--profile",
        "smoke",
        "--methods",
        "moco",
        "d-moco",
        "--p-max",
        "0.1",
        "0.75",
        "--steps",
        str(steps),
        "--runs-dir",
        str(runs),
        "--notebooks-dir",
        str(pages),
        "--jobs",
        "2",
    ]
    assert main(arguments) == 1
    report = capsys.readouterr().out
    assert "sweep: 3 executed, 0 already done, 1 failed" in report
    assert "FAILED d-moco_p_max-0.75_seed-0: ConfigMismatchError:" in report
    assert "steps: 4 -> 10" in report

    page_dir = pages / "smoke"
    assert sorted(p.name for p in page_dir.glob("*.ipynb")) == [
        "d-moco_p_max-0.1_seed-0.ipynb",
        "moco_p_max-0.1_seed-0.ipynb",
        "moco_p_max-0.75_seed-0.ipynb",
    ]
    assert (page_dir / "d-moco_p_max-0.75_seed-0.ipynb.failed").exists()
    assert list(page_dir.glob(".*")) == []  # no partial notebook left behind

    # The half-trained run resumed from its checkpoint and went on to the end.
    resumed = book.read_numbers(page_dir / "moco_p_max-0.1_seed-0.ipynb")
    assert (resumed["status"], resumed["start_step"]) == ("resumed", 5)
    metrics = read_jsonl(config("moco", 0.1).run_dir() / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, steps + 1))
    fresh = book.read_numbers(page_dir / "moco_p_max-0.75_seed-0.ipynb")
    assert (fresh["status"], fresh["start_step"]) == ("trained", 0)

    # With the conflicting run gone, only that run is executed.
    shutil.rmtree(conflicting.run_dir())
    again = run_sweep(
        "smoke",
        ["moco", "d-moco"],
        [0.1, 0.75],
        runs_dir=runs,
        notebooks_dir=pages,
        steps=steps,
        progress=False,
    )
    assert again.ok, again.report()
    assert [run.name for run in again.executed] == ["d-moco_p_max-0.75_seed-0"]
    assert len(again.skipped) == 3
    assert not (page_dir / "d-moco_p_max-0.75_seed-0.ipynb.failed").exists()

    # Nothing left to do: every run is skipped.
    done = run_sweep(
        "smoke",
        ["moco", "d-moco"],
        [0.1, 0.75],
        runs_dir=runs,
        notebooks_dir=pages,
        steps=steps,
        progress=False,
    )
    assert done.executed == [] and len(done.skipped) == 4

    # A re-evaluated run (a new summary) makes its page out of date.
    summary = config("moco", 0.75).run_dir() / "summary.json"
    summary.write_text(summary.read_text().replace('"steps": 10', '"steps": 10 '))
    redone = run_sweep(
        "smoke",
        ["moco"],
        [0.75],
        runs_dir=runs,
        notebooks_dir=pages,
        steps=steps,
        progress=False,
    )
    assert [run.name for run in redone.executed] == ["moco_p_max-0.75_seed-0"]
    assert book.read_numbers(redone.executed[0].notebook)["status"] == "loaded"


def test_a_reworded_departure_redoes_the_profile_pages(monkeypatch):
    from duel.config import PROFILES

    before = {profile: package_digest(profile) for profile in PROFILES}
    assert before["cpu"] != package_digest()
    reworded = [*PROFILES["cpu"]["departures"][:-1], "Something else."]
    monkeypatch.setitem(PROFILES["cpu"], "departures", reworded)
    assert package_digest("cpu") != before["cpu"]
    assert package_digest("smoke") == before["smoke"]
