"""``python -m duel book``: train the sweep, execute the analysis notebooks, build.

The book's pages are executed notebooks: the sweep's training notebooks under
``book/runs/<profile>/`` and the analysis notebooks (environment, ablation,
t-SNE, results) under ``book/``. Each analysis notebook is executed again only
when its inputs changed. Its fingerprint covers the source notebook, its
parameters, the package's code that draws the pages and, for the notebooks
that read runs, the ``summary.json`` of every run of the profile. It is stored
beside the executed notebook (``book/.<name>.fingerprint``) once the notebook
has run, so a notebook that trains runs of its own (the ablation) counts them
among its inputs.

The book is then built by Jupyter Book with warnings as errors. Pages generated
from data (the departures of the profile, the runs, the claim checks) are
written under ``book/_generated/`` and included by the Markdown pages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from duel.config import METHODS
from duel.io import atomic_write_bytes
from duel.sweep import (
    P_MAX_GRID,
    SweepResult,
    add_grid_options,
    execute_notebook,
    file_digest,
    package_digest,
    run_sweep,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Execution order: the ablation trains runs that the results page reads.
ANALYSIS_NOTEBOOKS = (
    "01_environment",
    "05_ablation_negatives",
    "04_memory_tsne",
    "03_results",
    "06_cost",
)

# What a book root holds besides executed notebooks; copied when building
# elsewhere than in the source tree.
STATIC_FILES = ("_config.yml", "_toc.yml")


class BookBuildError(RuntimeError):
    """Jupyter Book failed (a warning counts); the message ends with its output."""


@dataclass
class BookResult:
    """What a book build did."""

    html: Path | None
    sweep: SweepResult
    build: bool = True
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every run and notebook succeeded and the book was built."""
        built = self.html is not None or not self.build
        return self.sweep.ok and not self.failed and built

    def report(self) -> str:
        """A few lines for people: the sweep, the notebooks, where the book is."""
        lines = [self.sweep.report()]
        lines.append(
            f"notebooks: {len(self.executed)} executed, {len(self.skipped)} "
            f"unchanged, {len(self.failed)} failed"
        )
        lines += [f"  FAILED {name}: {message}" for name, message in self.failed]
        if self.html is not None:
            lines.append(f"book: {self.html}")
        elif self.build:
            lines.append("book not built: a notebook failed")
        lines.append(f"took {self.seconds:.0f} s")
        return "\n".join(lines)


# ------------------------------------------------------------ fingerprints


def runs_digest(runs_dir: str | os.PathLike, profile: str) -> dict[str, str]:
    """``{run path: SHA-256 of its summary.json}`` for every run of a profile."""
    root = Path(runs_dir) / profile
    return {
        str(path.parent.relative_to(root)): file_digest(path)
        for path in sorted(root.glob("*/*/*/seed=*/summary.json"))
    }


def fingerprint(
    notebook: Path, parameters: dict[str, Any], runs_dir: str | os.PathLike
) -> str:
    """The digest of everything an analysis notebook's output depends on.

    The runs count only for a notebook that reads them, one that is given a
    ``runs_dir`` parameter; benchmark results likewise for a ``results_dir``.
    """
    reads_runs = "runs_dir" in parameters
    results = parameters.get("results_dir")
    record = {
        "notebook": file_digest(notebook),
        "parameters": parameters,
        "package": package_digest(),
        "runs": runs_digest(runs_dir, parameters["profile"]) if reads_runs else None,
        "results": (
            {p.name: file_digest(p) for p in sorted(Path(results).glob("*.json"))}
            if results
            else None
        ),
    }
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _fingerprint_path(executed: Path) -> Path:
    return executed.with_name(f".{executed.stem}.fingerprint")


# ------------------------------------------------------------ generated pages


def _write_if_changed(path: Path, text: str) -> None:
    # An unchanged file keeps its time stamp, so Sphinx does not rebuild pages
    # that include it.
    if path.exists() and path.read_text() == text:
        return
    atomic_write_bytes(path, text.encode())


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown pipe table (index included)."""
    frame = table.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows]) + "\n"


def write_generated_pages(
    root: Path, profile: str, runs_dir: str | os.PathLike
) -> None:
    """Writes ``book/_generated/*.md`` from the profile and the finished runs."""
    import pandas as pd

    from duel.book import (
        check_claims,
        claims_markdown,
        departures_markdown,
        describe_profile,
        load_runs,
        method_label,
    )

    generated = root / "book" / "_generated"
    runs = load_runs(runs_dir, profile)
    notice = ""
    if profile == "smoke":
        notice = (
            "\n\n:::{warning}\nThese pages come from the **smoke** profile: "
            "runs of seconds on the 8x8 digits set, made to test the pipeline. "
            "Their numbers say nothing about the paper's claims; build the book "
            "with the `cpu` profile (`make book`) for a measurement.\n:::\n"
        )
    _write_if_changed(
        generated / "profile.md",
        f"This book was built with the **{profile}** profile. "
        f"{describe_profile(runs, profile)}{notice}\n",
    )
    _write_if_changed(generated / "departures.md", departures_markdown(profile))
    _write_if_changed(generated / "claims.md", claims_markdown(check_claims(runs)))
    if runs.empty:
        listing = "No run has finished yet.\n"
    else:
        table = pd.DataFrame(
            {
                "method": runs["run"].map(method_label),
                "p_max": runs["p_max"].map(lambda v: f"{v:g}"),
                "seed": runs["seed"],
                "steps": runs["steps"],
                "linear probe (%)": (100 * runs["linear_probe_accuracy"]).round(1),
                "kNN (%)": (100 * runs["knn_accuracy"]).round(1),
                "memory entropy (nats)": runs["memory_class_entropy"].round(3),
                "training (s)": runs["training_seconds"].round(1),
            }
        ).set_index("method")
        table["memory entropy (nats)"] = table["memory entropy (nats)"].map(
            lambda v: "–" if pd.isna(v) else f"{v:.3f}"
        )
        listing = markdown_table(table)
    _write_if_changed(generated / "runs.md", listing)


def export_front_figure(root: Path, profile: str, runs_dir: str | os.PathLike) -> None:
    """Saves Figure 8a of the profile's runs as ``book/figures/<profile>-memory-
    entropy.png``, the figure the README shows; nothing when no run finished."""
    import io as bytes_io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from duel.book import load_curves, load_runs, main_runs, num_classes_of
    from duel.figures import plot_entropy_curves

    runs = main_runs(load_runs(runs_dir, profile))
    curves = load_curves(runs)
    if curves["memory_class_entropy"].notna().sum() == 0:
        return
    figure = plot_entropy_curves(curves, num_classes_of(runs))
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    target = root / "book" / "figures" / f"{profile}-memory-entropy.png"
    atomic_write_bytes(target, buffer.getvalue())


def copy_sources(source: Path, root: Path) -> None:
    """Copies the book's configuration and Markdown pages into another root."""
    if source.resolve() == root.resolve():
        return
    for name in STATIC_FILES:
        _copy_if_changed(source / name, root / name)
    for page in sorted((source / "book").glob("*.md")):
        _copy_if_changed(page, root / "book" / page.name)


def _copy_if_changed(source: Path, target: Path) -> None:
    if target.exists() and target.read_bytes() == source.read_bytes():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


# -------------------------------------------------------------------- build


def execute_analysis(
    name: str,
    parameters: dict[str, Any],
    *,
    source: Path,
    root: Path,
    runs_dir: str | os.PathLike,
) -> bool:
    """Executes ``notebooks/<name>.ipynb`` into ``<root>/book/`` unless unchanged.

    Returns:
        True when it was executed, False when its fingerprint had not changed.

    Raises:
        duel.sweep.NotebookFailed: the notebook raised.
    """
    from duel.io import atomic_write_bytes

    notebook = source / "notebooks" / f"{name}.ipynb"
    executed = root / "book" / f"{name}.ipynb"
    stamp = _fingerprint_path(executed)
    before = fingerprint(notebook, parameters, runs_dir)
    if executed.exists() and stamp.exists() and stamp.read_text().strip() == before:
        return False
    stamp.unlink(missing_ok=True)
    execute_notebook(notebook, executed, parameters)
    atomic_write_bytes(stamp, fingerprint(notebook, parameters, runs_dir).encode())
    return True


def jupyter_book_build(root: Path) -> Path:
    """Builds the book in ``root`` with warnings as errors.

    Returns:
        The path of the HTML front page.

    Raises:
        BookBuildError: Jupyter Book or Sphinx failed or warned.
    """
    command = [
        sys.executable,
        "-c",
        "from jupyter_book.cli.main import main; main()",
        "build",
        str(root),
        "--warningiserror",
        "--nitpick",
        "--keep-going",
    ]
    log.info("building the book in %s", root)
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    log.debug("%s", output)
    if completed.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-40:])
        raise BookBuildError(f"jupyter-book build failed in {root}:\n{tail}")
    return root / "_build" / "html" / "index.html"


def build_book(
    profile: str = "cpu",
    *,
    root: str | os.PathLike = ".",
    source: str | os.PathLike = ".",
    runs_dir: str | os.PathLike = "runs",
    methods: Sequence[str] = METHODS,
    p_values: Sequence[float] = P_MAX_GRID,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    device: str | None = None,
    jobs: int = 1,
    progress: bool = True,
    build: bool = True,
    build_only: bool = False,
) -> BookResult:
    """Runs the sweep, executes the analysis notebooks that changed, builds.

    Args:
        profile: the profile of every run.
        root: where the book is assembled and built (``_build/html`` below it).
        source: the repository root: ``notebooks/``, ``_config.yml``,
            ``_toc.yml`` and ``book/*.md`` (copied into ``root`` if different).
        runs_dir: where runs are written, relative to the current directory.
        methods, p_values, seeds, steps, device, jobs: the sweep's grid and
            settings (see :func:`duel.sweep.run_sweep`); the ablation notebook
            uses the same seeds and steps.
        progress: progress bars.
        build: run Jupyter Book at the end.
        build_only: train nothing and execute nothing: build the book from the
            executed notebooks and finished runs already there.

    Returns:
        What happened; ``html`` is the front page (None when not built).

    Raises:
        BookBuildError: Jupyter Book failed or warned.
    """
    from duel.sweep import NotebookFailed

    started = time.perf_counter()
    source, root = Path(source), Path(root)
    copy_sources(source, root)
    if build_only:
        result = BookResult(html=None, sweep=SweepResult(), build=True)
        write_generated_pages(root, profile, runs_dir)
        export_front_figure(root, profile, runs_dir)
        result.html = jupyter_book_build(root)
        result.seconds = time.perf_counter() - started
        return result
    sweep = run_sweep(
        profile,
        methods,
        p_values,
        seeds,
        runs_dir=runs_dir,
        notebooks_dir=root / "book" / "runs",
        steps=steps,
        device=device,
        jobs=jobs,
        source=source,
        progress=progress,
    )
    result = BookResult(html=None, sweep=sweep, build=build)
    common = {"profile": profile, "runs_dir": str(runs_dir)}
    parameters = {
        "01_environment": {"profile": profile},
        "05_ablation_negatives": {**common, "seeds": list(seeds), "steps": steps},
        "04_memory_tsne": {**common, "seed": int(seeds[0]), "steps": steps},
        "03_results": common,
        "06_cost": {"results_dir": str(source / "benchmarks" / "results")},
    }
    for name in tqdm(ANALYSIS_NOTEBOOKS, desc="notebooks", disable=not progress):
        try:
            ran = execute_analysis(
                name, parameters[name], source=source, root=root, runs_dir=runs_dir
            )
        except NotebookFailed as error:
            result.failed.append((name, str(error)))
            log.error("%s failed: %s", name, error)
            continue
        (result.executed if ran else result.skipped).append(name)

    write_generated_pages(root, profile, runs_dir)
    export_front_figure(root, profile, runs_dir)
    if build and not result.failed:
        result.html = jupyter_book_build(root)
    result.seconds = time.perf_counter() - started
    return result


# ------------------------------------------------------------ command line


def add_book_parser(commands: argparse._SubParsersAction) -> None:
    """Registers ``book`` on the command line's subcommands."""
    parser = commands.add_parser(
        "book", help="run the sweep, execute the notebooks, build the Jupyter Book"
    )
    add_grid_options(parser)
    parser.add_argument(
        "--root",
        default=".",
        help="where the book is assembled and built (default: the current folder)",
    )
    parser.add_argument(
        "--no-build", action="store_true", help="execute the notebooks only"
    )
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="train and execute nothing: build from the runs and notebooks present",
    )


def book_command(args: argparse.Namespace) -> int:
    """``python -m duel book``: 0 when every run and notebook succeeded."""
    result = build_book(
        args.profile,
        root=args.root,
        runs_dir=args.runs_dir,
        methods=args.methods,
        p_values=args.p_max,
        seeds=args.seeds,
        steps=args.steps,
        device=args.device,
        jobs=args.jobs,
        progress=not args.quiet,
        build=not args.no_build,
        build_only=args.build_only,
    )
    sys.stdout.write(result.report() + "\n")
    return 0 if result.ok else 1
