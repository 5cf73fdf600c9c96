"""The `uafp` command line: one subcommand per module listed in SUBCOMMANDS.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets
`func(args) -> int` as the default. Errors the project raises on purpose (`UafpError`)
are printed as one line and give exit code 2; nothing prints a traceback to the user.
Warnings (e.g. a partial dataset) are printed as one `uafp COMMAND: warning: ...` line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from uafp_gui import __version__
from uafp_gui.errors import UafpError

SUBCOMMANDS = [
    "uafp_gui.cli.simulate",
    "uafp_gui.cli.reconstruct",
    "uafp_gui.cli.import_data",
    "uafp_gui.cli.export",
    "uafp_gui.cli.score",
    "uafp_gui.cli.acquire",
    "uafp_gui.cli.led",
    "uafp_gui.cli.gui",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uafp", description="Uncertainty-aware Fourier ptychographic microscopy."
    )
    parser.add_argument("--version", action="version", version=f"uafp_gui {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def _warning_printer(command: str):
    """`warnings.showwarning` replacement: the message on one line, no source location."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"uafp {command}: warning: {message}", file=sys.stderr)

    return show


def error_line(command: str, error: UafpError) -> str:
    """The one line the CLI prints for `error`, with what to do where the CLI can do it."""
    if not error.resumable:
        return str(error)
    again = "run the same command" if command == "acquire" else f"run `uafp acquire --out {error.path}`"
    return f"{error}; fix the problem and {again} with --resume to acquire the rest"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(args.command)
            return int(args.func(args) or 0)
    except UafpError as error:
        print(f"uafp {args.command}: error: {error_line(args.command, error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"uafp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
