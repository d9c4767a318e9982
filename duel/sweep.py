"""The sweep: every method x p_max x seed, each run a notebook executed by papermill.

Each run executes ``notebooks/02_train.ipynb`` with its parameters and keeps the
executed notebook as a page of the book, under
``<notebooks_dir>/<profile>/<method>_p_max-<v>_seed-<s>.ipynb``.

A run is skipped when its ``summary.json`` was written by the same
configuration and its executed notebook was made from that summary, the
current training notebook and the current code that draws the page
(``PAGE_MODULES``). An out-of-date page is executed again, which reads the
finished run back instead of training it. An interrupted run is simply executed
again:
training resumes from its checkpoint. A failed run does not stop the sweep; the
failures are listed at the end. Notebooks are written atomically: papermill
writes to a hidden temporary name that is renamed once the notebook is clean.

Runs execute in this process (``--executor local``, the default) or as one
submitit job each: on Slurm (``--executor slurm``) or in local subprocesses
(``--executor submitit-local``, to try that path on one machine). Either way a
run is the same papermill execution of the training notebook.

Example:
    python -m duel sweep --profile smoke --methods moco d-moco --p-max 0.1 0.75
    python -m duel sweep --profile gpu --executor slurm --partition gpu
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from duel.config import METHODS, PROFILES, RunConfig, build_config

log = logging.getLogger(__name__)

# The paper's grid of dominant-class probabilities (Table 1).
P_MAX_GRID = (0.1, 0.25, 0.5, 0.75)

TRAIN_NOTEBOOK = Path("notebooks") / "02_train.ipynb"

# Where the runs execute: in this process, on Slurm, or in local subprocesses
# through submitit (the Slurm path without a cluster).
EXECUTORS = ("local", "slurm", "submitit-local")

# Seconds between checks on submitted jobs: a local subprocess is cheap to ask,
# while each Slurm check queries the scheduler.
POLL_SECONDS = {"slurm": 30.0, "submitit-local": 1.0}

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class NotebookFailed(RuntimeError):
    """A notebook raised while papermill executed it; the message is one line."""

    def __init__(self, message: str, notebook: Path | None) -> None:
        super().__init__(message)
        self.notebook = notebook


# ---------------------------------------------------------------- notebooks


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# The modules a page's output depends on once its runs are finished: how runs
# are read, measured and drawn. Training code is not among them, since a
# finished run is read back rather than trained again.
PAGE_MODULES = ("book.py", "data.py", "figures.py", "metrics.py", "representations.py")


def package_digest(profile: str | None = None) -> str:
    """SHA-256 over the package modules that the pages' outputs depend on.

    With a ``profile``, its list of departures from the paper counts too: a
    run's page shows that list, so a reworded departure redoes the page.
    """
    digest = hashlib.sha256()
    for name in PAGE_MODULES:
        digest.update(name.encode())
        digest.update((Path(__file__).parent / name).read_bytes())
    if profile is not None:
        from duel.config import PROFILES

        digest.update(json.dumps(PROFILES[profile]["departures"]).encode())
    return digest.hexdigest()


def clean_notebook(notebook: Any, title: str | None = None) -> Any:
    """Readies an executed notebook for the book, in place.

    Widget views and the saved widget state are dropped: a static page cannot
    run them, and their state would make the page fetch the widget library
    from the network. A ``title`` replaces the first heading.

    Args:
        notebook: an ``nbformat`` notebook node.
        title: the page's new title, or None to keep it.

    Returns:
        The same notebook.
    """
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [
                output
                for output in cell.outputs
                if WIDGET_VIEW not in output.get("data", {})
            ]
        elif title and cell.cell_type == "markdown" and cell.source.startswith("# "):
            first, _, rest = cell.source.partition("\n")
            cell.source = f"# {title}\n{rest}" if rest else f"# {title}"
            title = None
    return notebook


def execute_notebook(
    source: str | os.PathLike,
    output: str | os.PathLike,
    parameters: dict[str, Any],
    *,
    cwd: str | os.PathLike | None = None,
    title: str | None = None,
    metadata: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
) -> Path:
    """Executes a notebook with papermill and writes it atomically.

    On failure the executed notebook (with the error in it) is kept beside the
    target as ``<name>.ipynb.failed``, which the book does not read.

    Args:
        source: the notebook to run.
        output: where the executed notebook goes.
        parameters: papermill parameters.
        cwd: the kernel's working directory (default: the current one).
        title: a new first heading for the executed notebook.
        metadata: entries for the notebook's ``duel`` metadata, or a function
            that returns them once the notebook has run.

    Returns:
        ``output`` as a Path.

    Raises:
        NotebookFailed: the notebook raised; the message is the error's line.
    """
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from duel.io import atomic_write_bytes

    # Papermill logs every notebook it opens; a sweep reports its own progress.
    logging.getLogger("papermill").setLevel(logging.WARNING)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial.ipynb")
    failed = output.with_name(output.name + ".failed")
    try:
        papermill.execute_notebook(
            str(source),
            str(partial),
            parameters=parameters,
            progress_bar=False,
            cwd=str(cwd) if cwd is not None else None,
        )
    except PapermillExecutionError as error:
        os.replace(partial, failed)
        message = f"{error.ename}: {error.evalue}".splitlines()[0]
        raise NotebookFailed(message, failed) from error
    except Exception as error:
        if partial.exists():
            os.replace(partial, failed)
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise NotebookFailed(message, failed if failed.exists() else None) from error

    notebook = clean_notebook(nbformat.read(str(partial), as_version=4), title)
    if callable(metadata):
        metadata = metadata()
    notebook.metadata["duel"] = dict(metadata or {})
    atomic_write_bytes(output, nbformat.writes(notebook).encode())
    partial.unlink(missing_ok=True)
    failed.unlink(missing_ok=True)
    return output


def notebook_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``duel`` metadata of an executed notebook ({} when absent or unreadable)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return document.get("metadata", {}).get("duel", {})


# -------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep and the page it becomes."""

    config: RunConfig
    notebook: Path
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
        """The page's name: ``<method>_p_max-<v>_seed-<s>``."""
        return self.notebook.stem

    @property
    def title(self) -> str:
        """The page's title: ``D-MoCo at p_max = 0.75, seed 0``."""
        from duel.book import METHOD_LABELS

        variant = self.config.run_dir().parts[-3]
        label = METHOD_LABELS.get(variant, variant)
        return f"{label} at p_max = {self.config.p_max:g}, seed {self.config.seed}"


def notebook_name(config: RunConfig) -> str:
    """``<method>_p_max-<v>_seed-<s>.ipynb`` (the method folder of the run)."""
    variant = config.run_dir().parts[-3]
    return f"{variant}_p_max-{config.p_max:g}_seed-{config.seed}.ipynb"


def plan_sweep(
    profile: str = "cpu",
    methods: Sequence[str] = METHODS,
    p_values: Sequence[float] = P_MAX_GRID,
    seeds: Sequence[int] = (0,),
    *,
    runs_dir: str | os.PathLike = "runs",
    notebooks_dir: str | os.PathLike = Path("book") / "runs",
    steps: int | None = None,
    device: str | None = None,
    num_threads: int | None = None,
) -> list[PlannedRun]:
    """The grid's runs, each validated by :func:`duel.config.build_config`.

    Raises:
        duel.config.ConfigError: on an unknown profile or method, or a bad value.
        ValueError: on an empty grid.
    """
    for name, values in (("methods", methods), ("p_max", p_values), ("seeds", seeds)):
        if not values:
            raise ValueError(f"{name} must list at least one value, got none")
    planned = []
    for method in methods:
        for p_max in p_values:
            for seed in seeds:
                parameters = {
                    "method": method,
                    "p_max": float(p_max),
                    "profile": profile,
                    "seed": int(seed),
                    "steps": steps,
                    "runs_dir": str(runs_dir),
                    "device": device,
                    "num_threads": num_threads,
                }
                config = build_config(
                    profile, **{k: v for k, v in parameters.items() if k != "profile"}
                )
                notebook = Path(notebooks_dir) / profile / notebook_name(config)
                planned.append(PlannedRun(config, notebook, parameters))
    return planned


def is_done(run: PlannedRun, source_digest: str, code_digest: str) -> bool:
    """Finished by the same configuration, and its page is up to date.

    Up to date means made from the current summary, training notebook and
    package code; a page that is out of date is executed again, which reads the
    finished run back instead of training it.
    """
    from duel.book import summary_matches

    summary_path = run.config.run_dir() / "summary.json"
    if not (summary_path.exists() and run.notebook.exists()):
        return False
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    recorded = notebook_metadata(run.notebook)
    return (
        summary_matches(summary, run.config)
        and recorded.get("summary_sha256") == file_digest(summary_path)
        and recorded.get("source_sha256") == source_digest
        and recorded.get("package_sha256") == code_digest
    )


# --------------------------------------------------------------------- run


def execute_run(
    run: PlannedRun, source: str | os.PathLike, source_digest: str, code_digest: str
) -> None:
    """Executes one run's training notebook with papermill, making its page.

    Args:
        run: the planned run.
        source: the training notebook.
        source_digest: :func:`file_digest` of ``source``.
        code_digest: :func:`package_digest` of the package and profile.

    Raises:
        NotebookFailed: the notebook raised.
    """
    # The page records the summary it shows, so a re-evaluated run is redone.
    execute_notebook(
        source,
        run.notebook,
        run.parameters,
        title=run.title,
        metadata=lambda: {
            "source_sha256": source_digest,
            "package_sha256": code_digest,
            "summary_sha256": file_digest(run.config.run_dir() / "summary.json"),
        },
    )


def submitted_run(
    run: PlannedRun, source: str | os.PathLike, source_digest: str, code_digest: str
) -> tuple[str, Path | None] | None:
    """What one submitit job runs: :func:`execute_run`, its failure as a value.

    A raised exception reaches the submitter only as a traceback's text, so the
    notebook's one-line error and the failed notebook's path are returned.

    Returns:
        None when the run finished, else its error line and failed notebook.
    """
    try:
        execute_run(run, source, source_digest, code_digest)
    except NotebookFailed as error:
        return str(error), error.notebook
    return None


@dataclass
class SweepResult:
    """What a sweep did: runs executed, skipped (already done) and failed."""

    executed: list[PlannedRun] = field(default_factory=list)
    skipped: list[PlannedRun] = field(default_factory=list)
    failed: list[tuple[PlannedRun, str, Path | None]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no run failed."""
        return not self.failed

    def report(self) -> str:
        """A few lines for people: counts, then one line per failure."""
        lines = [
            f"sweep: {len(self.executed)} executed, {len(self.skipped)} already "
            f"done, {len(self.failed)} failed"
        ]
        for run, message, notebook in self.failed:
            where = f" (notebook: {notebook})" if notebook else ""
            lines.append(f"  FAILED {run.name}: {message}{where}")
        return "\n".join(lines)


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_sweep(
    profile: str = "cpu",
    methods: Sequence[str] = METHODS,
    p_values: Sequence[float] = P_MAX_GRID,
    seeds: Sequence[int] = (0,),
    *,
    runs_dir: str | os.PathLike = "runs",
    notebooks_dir: str | os.PathLike = Path("book") / "runs",
    steps: int | None = None,
    device: str | None = None,
    jobs: int = 1,
    source: str | os.PathLike = ".",
    progress: bool = True,
    executor: str = "local",
    partition: str | None = None,
    gpus_per_run: int = 1,
    time_minutes: int = 120,
    slurm_log_dir: str | os.PathLike = Path("runs") / "slurm",
) -> SweepResult:
    """Runs the grid through papermill, skipping finished runs.

    Args:
        profile: the profile of every run.
        methods: methods to train.
        p_values: dominant-class probabilities.
        seeds: seeds.
        runs_dir: where runs are written (relative to the current directory,
            which is also the kernels' working directory).
        notebooks_dir: where executed notebooks go (``<profile>/`` below it).
        steps: override the profile's steps (None keeps them).
        device: override the device (None: the profile's ``auto``).
        jobs: runs at once in this process, each with ``cores // jobs`` torch
            threads; with ``submitit-local`` every job starts at once and only
            the thread split applies; on Slurm it is not used.
        source: the folder holding ``notebooks/02_train.ipynb``.
        progress: show a progress bar over runs.
        executor: one of :data:`EXECUTORS`.
        partition: the Slurm partition (required by ``slurm``).
        gpus_per_run: GPUs each submitit job asks for.
        time_minutes: each submitit job's time limit.
        slurm_log_dir: where submitit keeps each job's logs and results.

    Returns:
        What was executed, skipped and failed.

    Raises:
        ValueError: a bad executor option, jobs < 1, or the training notebook is
            missing.
        duel.config.ConfigError: a bad profile, method or value.
    """
    check_executor_options(executor, partition, gpus_per_run, time_minutes)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    notebook = Path(source) / TRAIN_NOTEBOOK
    if not notebook.exists():
        raise ValueError(
            f"source must hold {TRAIN_NOTEBOOK}, got {str(source)!r}; run the "
            "command from the repository's root"
        )
    # A Slurm job's cores are its own allocation's, unknown here: torch's
    # default uses them all.
    threads = None if executor == "slurm" else max(1, available_cores() // jobs)
    planned = plan_sweep(
        profile,
        methods,
        p_values,
        seeds,
        runs_dir=runs_dir,
        notebooks_dir=notebooks_dir,
        steps=steps,
        device=device,
        num_threads=threads,
    )
    source_digest = file_digest(notebook)
    code_digest = package_digest(profile)
    result = SweepResult()
    todo = []
    for run in planned:
        if is_done(run, source_digest, code_digest):
            result.skipped.append(run)
        else:
            todo.append(run)
    log.info(
        "sweep of %d runs: %d already done, %d to run (executor %s)",
        len(planned),
        len(result.skipped),
        len(todo),
        executor,
    )

    bar = tqdm(
        total=len(planned),
        initial=len(result.skipped),
        desc=f"sweep {profile}",
        unit="run",
        disable=not progress,
    )
    digests = (source_digest, code_digest)
    if executor == "local":
        finished = _execute_here(todo, notebook, digests, jobs)
    else:
        parameters = {
            "partition": partition,
            "gpus_per_run": gpus_per_run,
            "time_minutes": time_minutes,
        }
        finished = _execute_submitted(
            todo, notebook, digests, executor, parameters, Path(slurm_log_dir)
        )
    for run, failure in finished:
        if failure is None:
            result.executed.append(run)
        else:
            result.failed.append((run, *failure))
            log.error("%s failed: %s", run.name, failure[0])
        bar.set_postfix_str(run.name, refresh=False)
        bar.update(1)
    bar.close()
    order = {run.notebook: i for i, run in enumerate(planned)}
    result.executed.sort(key=lambda run: order[run.notebook])
    result.failed.sort(key=lambda entry: order[entry[0].notebook])
    return result


# What became of one run: None when it finished, else its error line and the
# failed notebook (None when the notebook never ran).
Outcome = tuple[PlannedRun, tuple[str, Path | None] | None]


def check_executor_options(
    executor: str, partition: str | None, gpus_per_run: int, time_minutes: int
) -> None:
    """Refuses a bad executor option before any work.

    Raises:
        ValueError: naming the option, the value and what is accepted.
    """
    if executor not in EXECUTORS:
        raise ValueError(
            f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}"
        )
    for option, value in (
        ("--gpus-per-run", gpus_per_run),
        ("--time-minutes", time_minutes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{option} must be an integer >= 1, got {value!r}")
    if executor == "slurm" and not partition:
        raise ValueError(
            f"--partition must name a Slurm partition with --executor slurm, "
            f"got {partition!r}"
        )


def _execute_here(
    todo: Sequence[PlannedRun],
    source: Path,
    digests: tuple[str, str],
    jobs: int,
) -> Iterator[Outcome]:
    """Runs in this process, ``jobs`` at a time, yielded as they finish."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(execute_run, run, source, *digests): run for run in todo}
        for future in as_completed(futures):
            run = futures[future]
            try:
                future.result()
            except NotebookFailed as error:
                yield run, (str(error), error.notebook)
            else:
                yield run, None


def _execute_submitted(
    todo: Sequence[PlannedRun],
    source: Path,
    digests: tuple[str, str],
    executor: str,
    parameters: dict[str, Any],
    log_dir: Path,
) -> Iterator[Outcome]:
    """One submitit job per run, on Slurm or local subprocesses, yielded as done.

    A job inherits this process's working directory, so relative run and
    notebook paths mean the same in the job as here.
    """
    if not todo:
        return
    # Imported here: submitit is only needed on this path, and the command
    # line's help should not wait for it.
    import submitit
    from submitit.helpers import as_completed as jobs_completed

    cluster = "slurm" if executor == "slurm" else "local"
    submitter = submitit.AutoExecutor(folder=log_dir / "%j", cluster=cluster)
    options: dict[str, Any] = {
        "name": "duel-sweep",
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": parameters["gpus_per_run"],
        "timeout_min": parameters["time_minutes"],
    }
    if cluster == "slurm":
        options["slurm_partition"] = parameters["partition"]
    submitter.update_parameters(**options)
    # The notebook's path is made absolute so that a job started elsewhere by
    # the scheduler still finds it.
    submitted = {
        submitter.submit(submitted_run, run, source.resolve(), *digests): run
        for run in todo
    }
    log.info("submitted %d job(s) to %s; logs in %s", len(submitted), cluster, log_dir)
    for job in jobs_completed(list(submitted), poll_frequency=POLL_SECONDS[executor]):
        run = submitted[job]
        try:
            failure = job.result()
        except Exception as error:  # killed, timed out, or raised outside papermill
            lines = [line for line in str(error).splitlines() if line.strip()]
            message = lines[-1].strip() if lines else type(error).__name__
            failure = (f"{message} (log: {job.paths.stderr})", None)
        yield run, failure


# ------------------------------------------------------------ command line


def add_grid_options(parser: argparse.ArgumentParser) -> None:
    """The options a sweep and a book build share."""
    parser.add_argument(
        "--profile",
        default="cpu",
        help=f"named defaults: {', '.join(PROFILES)} (default: cpu)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        metavar="METHOD",
        help=f"methods to train (default: all of {', '.join(METHODS)})",
    )
    parser.add_argument(
        "--p-max",
        dest="p_max",
        nargs="+",
        type=float,
        default=list(P_MAX_GRID),
        metavar="P",
        help="dominant-class probabilities (default: 0.1 0.25 0.5 0.75)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        metavar="SEED",
        help="seeds (default: 0)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default: 1)")
    parser.add_argument(
        "--runs-dir", default="runs", help="where runs are written (default: runs)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="override the profile's steps"
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu or cuda (default: the profile's)"
    )


def add_sweep_parser(commands: argparse._SubParsersAction) -> None:
    """Registers ``sweep`` on the command line's subcommands."""
    parser = commands.add_parser(
        "sweep", help="train the grid of methods x p_max x seeds via papermill"
    )
    add_grid_options(parser)
    parser.add_argument(
        "--notebooks-dir",
        default=str(Path("book") / "runs"),
        help="where executed notebooks go (default: book/runs)",
    )
    parser.add_argument(
        "--executor",
        default="local",
        help=f"where runs execute: {', '.join(EXECUTORS)} (default: local)",
    )
    parser.add_argument("--partition", default=None, help="the Slurm partition")
    parser.add_argument(
        "--gpus-per-run",
        type=int,
        default=1,
        help="GPUs per submitted job (default: 1)",
    )
    parser.add_argument(
        "--time-minutes",
        type=int,
        default=120,
        help="time limit of each submitted job (default: 120)",
    )
    parser.add_argument(
        "--slurm-log-dir",
        default=str(Path("runs") / "slurm"),
        help="where submitit keeps job logs (default: runs/slurm)",
    )


def sweep_command(args: argparse.Namespace) -> int:
    """``python -m duel sweep``: 0 when every run finished, 1 otherwise."""
    result = run_sweep(
        args.profile,
        args.methods,
        args.p_max,
        args.seeds,
        runs_dir=args.runs_dir,
        notebooks_dir=args.notebooks_dir,
        steps=args.steps,
        device=args.device,
        jobs=args.jobs,
        progress=not args.quiet,
        executor=args.executor,
        partition=args.partition,
        gpus_per_run=args.gpus_per_run,
        time_minutes=args.time_minutes,
        slurm_log_dir=args.slurm_log_dir,
    )
    sys.stdout.write(result.report() + "\n")
    return 0 if result.ok else 1
