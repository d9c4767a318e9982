"""Command line: ``python -m duel train|eval|sweep|book``.

Every :class:`~duel.config.RunConfig` field is an option (``p_max`` is
``--p-max``). A bad value stops the command before any work with one line that
names the parameter, the value and what is accepted; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from duel.build_book import add_book_parser, book_command
from duel.config import PROFILES, RunConfig, build_config
from duel.sweep import add_sweep_parser, sweep_command

log = logging.getLogger("duel")

# Fields set by dedicated arguments or never from the command line.
_NOT_OPTIONS = {"profile", "departures"}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        default="cpu",
        help=f"named defaults: {', '.join(PROFILES)} (default: cpu)",
    )
    for field in fields(RunConfig):
        if field.name in _NOT_OPTIONS:
            continue
        option = "--" + field.name.replace("_", "-")
        parser.add_argument(
            option,
            dest=field.name,
            default=None,
            metavar=field.name.upper(),
            help=f"(default: the profile's, else {field.default!r})",
        )


def _config_from(args: argparse.Namespace) -> RunConfig:
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(RunConfig)
        if f.name not in _NOT_OPTIONS and getattr(args, f.name, None) is not None
    }
    return build_config(args.profile, **overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duel",
        description="Train and evaluate the DUEL paper's methods.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks on errors"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (or resume) one run, evaluate it")
    _add_config_options(train)

    evaluate = commands.add_parser("eval", help="evaluate a run from its checkpoint")
    evaluate.add_argument("run_dir", help="the run's directory")

    add_sweep_parser(commands)
    add_book_parser(commands)

    return parser


def _train(args: argparse.Namespace) -> int:
    from duel.train import train

    config = _config_from(args)
    summary = train(config, progress=not args.quiet)
    if summary is not None:
        _report(config.run_dir(), summary)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from duel.train import evaluate_run

    summary = evaluate_run(args.run_dir, progress=not args.quiet)
    _report(args.run_dir, summary)
    return 0


def _report(run_dir, summary: dict) -> None:
    floor = summary["random_init"]
    lines = [
        f"run: {run_dir}",
        f"kNN accuracy       {summary['knn_accuracy']:.4f}"
        f"  (random init {floor['knn_accuracy']:.4f})",
        f"linear probe       {summary['linear_probe_accuracy']:.4f}"
        f"  (random init {floor['linear_probe_accuracy']:.4f})",
    ]
    if "memory" in summary:
        lines.append(
            f"memory entropy     {summary['memory']['class_entropy']:.4f} nats"
        )
    sys.stdout.write("\n".join(lines) + "\n")


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "sweep": sweep_command,
    "book": book_command,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; rerun the same command to resume\n")
        return 130
    except Exception as error:  # one line for people, the traceback on --debug
        if args.debug:
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        sys.stderr.write(f"error: {message}\n")
        return 2
