"""The book: analysis functions on made-up runs, then a whole smoke book.

The made-up runs have chosen numbers, so each claim check and table is tested
against a known answer. The smoke book runs the real pipeline once (a small
sweep, the four analysis notebooks through papermill, Jupyter Book with
warnings as errors) and the tests read the numbers the notebooks recorded, the
built pages and, in headless Chromium, the results page.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import importlib.util
import json
import math
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from duel import book, figures
from duel.build_book import build_book
from duel.config import PROFILES, build_config
from duel.io import atomic_write_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

# ------------------------------------------------------------- made-up runs


def fake_run(
    runs_dir: Path,
    method: str,
    p_max: float,
    *,
    probe: float,
    seed: int = 0,
    entropy: float | None = None,
    intra: float = 0.2,
    inter: float = 0.5,
    negatives: str = "mixed",
    eps: float = 1.0,
    seconds: float = 10.0,
) -> Path:
    """A finished run directory with a summary of the given numbers."""
    config = build_config(
        "smoke",
        method=method,
        p_max=p_max,
        seed=seed,
        negatives=negatives,
        eps=eps,
        runs_dir=str(runs_dir),
    )
    run_dir = config.run_dir()
    summary = {
        "config": config.to_dict(),
        "steps": config.steps,
        "linear_probe_accuracy": probe,
        "knn_accuracy": probe,
        "intra_class_variance": intra,
        "inter_class_similarity": inter,
        "random_init": {
            "linear_probe_accuracy": 0.1,
            "knn_accuracy": 0.1,
            "intra_class_variance": 0.1,
            "inter_class_similarity": 0.9,
        },
        "training_seconds": seconds,
        "evaluation_seconds": 1.0,
    }
    if config.policy is not None:
        summary["memory"] = {
            "policy": config.policy,
            "size": 64,
            "filled": 64,
            "class_entropy": entropy,
            "class_counts": [10, 6, 6, 6, 6, 6, 6, 6, 6, 6],
        }
    atomic_write_json(run_dir / "config.json", config.to_dict())
    atomic_write_json(run_dir / "summary.json", summary)
    records = [
        {"step": step, "loss": 5.0 - step / 10, "memory_class_entropy": entropy}
        for step in range(1, 11)
    ]
    for record in records:
        if record["step"] % 5 == 0:
            record["knn_accuracy"] = probe * record["step"] / 10
        if entropy is None:
            del record["memory_class_entropy"]
    write_jsonl(run_dir / "metrics.jsonl", records)
    return run_dir


STREAM = {p: book.stream_entropy(10, p) for p in (0.1, 0.75)}


@pytest.fixture
def supporting_runs(tmp_path):
    """MoCo and D-MoCo runs that agree with claims 1-3."""
    for seed, jitter in ((0, 0.0), (1, 0.02)):
        fake_run(
            tmp_path,
            "moco",
            0.1,
            probe=0.80 + jitter,
            seed=seed,
            entropy=STREAM[0.1] - 0.01,
            inter=0.50,
        )
        fake_run(
            tmp_path,
            "moco",
            0.75,
            probe=0.60 + jitter,
            seed=seed,
            entropy=STREAM[0.75] - 0.02,
            intra=0.20,
            inter=0.70,
        )
        fake_run(
            tmp_path,
            "d-moco",
            0.1,
            probe=0.80 + jitter,
            seed=seed,
            entropy=STREAM[0.1] - 0.02,
            inter=0.50,
        )
        fake_run(
            tmp_path,
            "d-moco",
            0.75,
            probe=0.75 + jitter,
            seed=seed,
            entropy=1.9,
            intra=0.21,
            inter=0.55,
        )
    return book.load_runs(tmp_path, "smoke")


def test_load_runs_reads_every_finished_run(supporting_runs, tmp_path):
    assert len(supporting_runs) == 8
    assert list(supporting_runs["run"].unique()) == ["moco", "d-moco"]
    assert set(supporting_runs["policy"]) == {"fifo", "duel"}
    unfinished = build_config("smoke", method="byol", runs_dir=str(tmp_path))
    unfinished.run_dir().mkdir(parents=True)
    assert len(book.load_runs(tmp_path, "smoke")) == 8
    assert book.load_runs(tmp_path, "cpu").empty


def test_table1_is_mean_and_std_in_percent(supporting_runs):
    table = book.table1(supporting_runs)
    assert list(table.index) == ["MoCoV2", "D-MoCo"]
    assert list(table.columns) == ["p_max = 0.1", "p_max = 0.75"]
    # Two seeds: 0.60 and 0.62 -> 61.0 ± 1.4.
    assert table.loc["MoCoV2", "p_max = 0.75"] == "61.0 ± 1.4"
    assert book.table1_means(supporting_runs)["d-moco"]["0.75"] == pytest.approx(0.76)


def test_single_seed_shows_the_mean_alone():
    assert book.mean_std(0.5, math.nan, 1, 100, 1) == "50.0"
    assert book.mean_std(math.nan, math.nan, 0) == "–"


def test_table2_puts_moco_and_d_moco_first(tmp_path):
    fake_run(tmp_path, "simclr", 0.75, probe=0.7)
    fake_run(tmp_path, "d-moco", 0.75, probe=0.7, entropy=1.5)
    fake_run(tmp_path, "moco", 0.75, probe=0.7, entropy=1.1)
    table = book.table2(book.load_runs(tmp_path, "smoke"))
    assert [m for m, _ in table.index] == ["MoCoV2", "D-MoCo", "SimCLR"]
    entropy = "memory class entropy (nats, higher is better)"
    assert table.loc[("SimCLR", 0.75), entropy] == "–"
    assert table.loc[("D-MoCo", 0.75), entropy] == "1.500"


def test_claims_supported_by_agreeing_runs(supporting_runs):
    checks = {check.number: check for check in book.check_claims(supporting_runs)}
    assert checks[1].verdict == "supported"
    assert checks[2].verdict == "supported"
    assert checks[3].verdict == "supported"
    assert checks[4].verdict == "not measured"
    # The sentences carry the numbers they judge.
    assert "1.900 nats" in checks[1].evidence
    assert "-20.0 points (81.0% to 61.0%)" in checks[2].evidence
    assert "-5.0 points (81.0% to 76.0%)" in checks[2].evidence
    assert "0.550 against MoCoV2's 0.700" in checks[3].evidence
    assert checks[3].evidence.endswith("Means over 2 seeds.")
    assert checks[1].sentence().startswith("Claim 1 (")


def test_claims_not_supported_by_contradicting_runs(tmp_path):
    fake_run(tmp_path, "moco", 0.1, probe=0.8, entropy=2.2, inter=0.5)
    fake_run(tmp_path, "moco", 0.75, probe=0.75, entropy=1.5, inter=0.5, intra=0.2)
    fake_run(tmp_path, "d-moco", 0.1, probe=0.8, entropy=2.2, inter=0.5)
    fake_run(tmp_path, "d-moco", 0.75, probe=0.6, entropy=1.0, inter=0.6, intra=0.4)
    checks = book.check_claims(book.load_runs(tmp_path, "smoke"))
    assert [c.verdict for c in checks] == ["not supported"] * 3 + ["not measured"]
    assert "One seed per cell" in checks[0].evidence


def test_claims_not_measured_without_runs(tmp_path):
    checks = book.check_claims(book.load_runs(tmp_path, "smoke"))
    assert [c.verdict for c in checks] == ["not measured"] * 4


@pytest.mark.parametrize(
    ("best", "verdict"),
    [(("mixed", 1.0), "supported"), (("memory", 0.0), "not supported")],
)
def test_claim_4_reads_the_negatives_ablation(tmp_path, best, verdict):
    for negatives, eps, _ in book.ABLATION_SETTINGS:
        probe = 0.9 if (negatives, eps) == best else 0.5
        fake_run(
            tmp_path,
            "d-simclr",
            0.75,
            probe=probe,
            entropy=1.5,
            negatives=negatives,
            eps=eps,
        )
    runs = book.load_runs(tmp_path, "smoke")
    assert len(book.table4(runs)) == 4
    check = book.check_claims(runs)[3]
    assert check.verdict == verdict
    # The default setting is a main-grid run; the other three are variants.
    assert list(book.main_runs(runs)["run"]) == ["d-simclr"]


def test_cost_table_sets_ours_beside_the_papers(tmp_path):
    fake_run(tmp_path, "moco", 0.75, probe=0.7, entropy=1.0, seconds=10.0)
    fake_run(tmp_path, "d-moco", 0.75, probe=0.7, entropy=1.0, seconds=12.0)
    table = book.cost_table(book.load_runs(tmp_path, "smoke"))
    assert table.loc["D-MoCo", "paper: overhead"] == "+17%"
    assert table.loc["D-SimCLR", "paper: overhead"] == "+29%"
    assert table.loc["D-MoCo", "ours: overhead"] == "+20%"
    assert table.loc["SimCLR", "ours: time per run (s)"] == "not measured"


def test_paper_values_are_typed_in_as_printed():
    assert book.PAPER_TABLE5.loc["STL-10 (test)", "D-MoCo"] == 86.19
    assert book.PAPER_COST.loc["d-simclr", "VRAM (MB)"] == 13198
    table = book.environment_table(10)
    assert table.loc[0.75, "each other class"] == 0.028
    assert table.loc[0.75, "paper: each other class"] == 0.028


def test_figure_titles_state_what_the_data_shows(supporting_runs):
    curves = book.load_curves(supporting_runs)
    title = figures.plot_linear_probe_vs_p_max(supporting_runs).axes[0].get_title()
    assert "MoCoV2 -20.0, D-MoCo -5.0" in title.replace("\n", " ")
    accuracy = figures.plot_accuracy_curves(curves)
    assert "D-MoCo ends 15.0 points above MoCoV2" in accuracy._suptitle.get_text()
    entropy = figures.plot_entropy_curves(curves, 10)
    assert "D-MoCo 1.90" in entropy._suptitle.get_text()
    assert figures.method_color("moco") != figures.method_color("d-moco")
    assert figures.method_color("something-else") == figures.method_color("other")


def test_run_config_fails_with_one_line():
    with pytest.raises(
        ValueError, match=r"^p_max must be a number in \(0, 1\), got 1.5$"
    ):
        book.run_config("smoke", p_max=1.5)


# ------------------------------------------------------------- notebooks


def _generator():
    spec = importlib.util.spec_from_file_location(
        "generate", REPO / "notebooks" / "generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_generated_without_outputs():
    written = _generator().build_all()
    assert set(written) == {
        "01_environment",
        "02_train",
        "03_results",
        "04_memory_tsne",
        "05_ablation_negatives",
    }
    for name, text in written.items():
        path = REPO / "notebooks" / f"{name}.ipynb"
        assert path.read_text() == text, f"{path.name}: run notebooks/generate.py"
        document = nbformat.reads(text, as_version=4)
        nbformat.validate(document)
        code = [c for c in document.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code)
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        first = document.cells[0].source
        for heading in ("## Overview", "## Prerequisites", "## Time to learn"):
            assert heading in first, (name, heading)
        # A sentence before every code cell.
        for before, cell in zip(document.cells, document.cells[1:], strict=False):
            if cell.cell_type == "code" and "remove-cell" not in cell.metadata.get(
                "tags", []
            ):
                assert before.cell_type == "markdown", (name, cell.source[:40])


@pytest.mark.slow
def test_train_notebook_stops_on_a_bad_parameter_with_one_line(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            "notebooks/02_train.ipynb",
            str(tmp_path / "out.ipynb"),
            "-p",
            "p_max",
            "1.5",
            "-p",
            "profile",
            "smoke",
            "-p",
            "runs_dir",
            str(tmp_path / "runs"),
            "--no-progress-bar",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0
    assert "ConfigError: p_max must be a number in (0, 1), got 1.5" in completed.stderr
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------ a smoke book

GRID = {"methods": ["moco", "d-moco"], "p_values": [0.1, 0.75]}


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """The smoke profile's book, built once for the tests below."""
    base = tmp_path_factory.mktemp("smoke_book")
    result = build_book(
        "smoke",
        root=base / "root",
        source=REPO,
        runs_dir=base / "runs",
        jobs=2,
        progress=False,
        **GRID,
    )
    return base, result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_book_builds_with_warnings_as_errors(smoke_book):
    base, result = smoke_book
    assert result.ok, result.report()
    assert len(result.sweep.executed) == 4
    assert result.executed == [
        "01_environment",
        "05_ablation_negatives",
        "04_memory_tsne",
        "03_results",
        "06_cost",
    ]
    html = base / "root" / "_build" / "html"
    assert result.html == html / "index.html"
    for page in ("intro", "method", "reproduction", "runs", "03_results"):
        assert (html / "book" / f"{page}.html").exists(), page
    run_pages = sorted(
        p.stem for p in (html / "book" / "runs" / "smoke").glob("*.html")
    )
    assert run_pages == sorted(run.name for run in result.sweep.executed)
    leftovers = list((base / "root").rglob(".*.partial.ipynb"))
    assert leftovers == []


@pytest.mark.slow
def test_environment_notebook_draws_the_target_shares(smoke_book):
    base, _ = smoke_book
    numbers = book.read_numbers(base / "root" / "book" / "01_environment.ipynb")
    assert numbers["num_classes"] == 10
    assert numbers["draws"] == 50 * PROFILES["smoke"]["defaults"]["batch_size"]
    assert numbers["drawn_dominant_share"] == pytest.approx(0.75, abs=0.05)


@pytest.mark.slow
def test_run_pages_show_their_runs(smoke_book):
    base, result = smoke_book
    for run in result.sweep.executed:
        numbers = book.read_numbers(run.notebook)
        summary = json.loads((run.config.run_dir() / "summary.json").read_text())
        assert numbers["status"] == "trained"
        assert numbers["linear_probe_accuracy"] == summary["linear_probe_accuracy"]
        assert numbers["steps"] == summary["steps"] == 30
        document = nbformat.read(run.notebook, as_version=4)
        assert document.cells[0].source.startswith(f"# {run.title}\n")
        assert "widgets" not in document.metadata
        for cell in document.cells:
            for output in cell.get("outputs", []):
                assert "application/vnd.jupyter.widget-view+json" not in output.get(
                    "data", {}
                )


@pytest.mark.slow
def test_results_notebook_numbers_match_the_runs(smoke_book):
    base, _ = smoke_book
    numbers = book.read_numbers(base / "root" / "book" / "03_results.ipynb")
    runs = book.load_runs(base / "runs", "smoke")
    # The main grid and the four D-SimCLR settings of the ablation.
    assert numbers["runs"] == len(runs) == 8
    assert set(numbers["verdicts"]) == {"1", "2", "3", "4"}
    assert set(numbers["verdicts"].values()) <= set(book.VERDICTS)
    assert numbers["verdicts"]["4"] != "not measured"
    moco = runs[(runs["run"] == "moco") & (runs["p_max"] == 0.75)]
    assert numbers["table1"]["moco"]["0.75"] == pytest.approx(
        float(moco["linear_probe_accuracy"].iloc[0])
    )


@pytest.mark.slow
def test_tsne_and_ablation_notebooks(smoke_book):
    base, _ = smoke_book
    tsne = book.read_numbers(base / "root" / "book" / "04_memory_tsne.ipynb")
    assert tsne["frames"] == {"moco": 4, "d-moco": 4}
    assert tsne["points"] == {"moco": 360, "d-moco": 360}  # the digits test set
    ablation = book.read_numbers(base / "root" / "book" / "05_ablation_negatives.ipynb")
    assert ablation["settings"] == 4
    assert ablation["statuses"] == ["trained"] * 4
    assert ablation["verdict"] in ("supported", "not supported")


@pytest.mark.slow
def test_generated_pages_carry_the_profile_and_the_claims(smoke_book):
    base, _ = smoke_book
    page = (
        base / "root" / "_build" / "html" / "book" / "reproduction.html"
    ).read_text()
    for departure in PROFILES["smoke"]["departures"]:
        assert departure.split(":")[0] in page
    for number in (1, 2, 3, 4):
        assert f"Claim {number}" in page


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_second_build_executes_nothing(smoke_book):
    base, _ = smoke_book
    again = build_book(
        "smoke",
        root=base / "root",
        source=REPO,
        runs_dir=base / "runs",
        progress=False,
        **GRID,
    )
    assert again.ok, again.report()
    assert again.sweep.executed == [] and len(again.sweep.skipped) == 4
    assert again.executed == [] and len(again.skipped) == 5


# ------------------------------------------------------- headless Chromium


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

    Chromium reads commands on its file descriptor 3 and writes replies and
    events on 4, as NUL-terminated JSON; no network port is opened.
    """

    def __init__(self, user_data_dir: Path) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # Out of the way of 3 and 4 so that the child's dup2 cannot clobber them.
        high_in = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 64)
        high_out = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 64)
        for fd in (to_browser_read, from_browser_write):
            os.close(fd)

        def place_pipes() -> None:
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,2000",
                f"--user-data-dir={user_data_dir}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=place_pipes,
        )
        os.close(high_in)
        os.close(high_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive(timeout=60)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = self._receive(timeout=deadline - time.monotonic())
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(f"no {method} within {timeout} s")

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self.events.append(self._receive(timeout=left))
            except TimeoutError:
                return

    def _receive(self, timeout: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(timeout, 0))
            if not ready:
                raise TimeoutError("Chromium sent nothing")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its debugging pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)


def console_errors(events: list[dict]) -> list[str]:
    """Uncaught exceptions, console.error calls and failed loads among the events."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description", str(details)))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            errors.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
    return errors


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (make system installs it)",
)
def test_results_page_renders_without_console_errors(smoke_book, tmp_path):
    base, _ = smoke_book
    page = base / "root" / "_build" / "html" / "book" / "03_results.html"
    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session)
        browser.send("Page.navigate", session, url=page.as_uri())
        browser.wait_for("Page.loadEventFired")
        browser.drain(1.0)
        found = browser.send(
            "Runtime.evaluate",
            session,
            returnByValue=True,
            expression=(
                "JSON.stringify({"
                "tables: document.querySelectorAll('table').length,"
                "images: document.querySelectorAll('img').length,"
                "broken: [...document.images].filter("
                "  i => !i.complete || i.naturalWidth === 0).length,"
                "title: document.title,"
                "text: document.body.innerText})"
            ),
        )
        dom = json.loads(found["result"]["value"])
        shot = browser.send(
            "Page.captureScreenshot", session, format="png", captureBeyondViewport=True
        )
        (tmp_path / "results.png").write_bytes(base64.b64decode(shot["data"]))
        errors = console_errors(browser.events)
    finally:
        browser.close()

    assert errors == []
    assert "Results" in dom["title"]
    # Tables 1, 2 and 4, the cost table and Table 5.
    assert dom["tables"] >= 5
    # Figures 1/Table 1's figure, 4/8, 8a, 9 and 10.
    assert dom["images"] >= 5 and dom["broken"] == 0
    for claim in ("Claim 1", "Claim 2", "Claim 3", "Claim 4"):
        assert claim in dom["text"]
    assert (tmp_path / "results.png").stat().st_size > 10_000
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
