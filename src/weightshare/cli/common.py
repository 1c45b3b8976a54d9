"""What every command module shares: the command registry, the exit codes, the --resume note."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return register


RESUME_NOTE = """--resume continues the run in --out with the settings it was started with (a run stopped
before its first epoch ended starts from epoch 0); a setting given again must have its stored
value, only --data-dir may change, and compress's --from (by default the run it records)."""


def exit_codes() -> str:
    """The exit codes, for the help's epilog."""
    from weightshare.pipeline.compress import CHANCE_MARGIN, GAP_FACTOR, GAP_POINTS

    return f"""exit codes:
  0    done; compress warns, saying what usually helps, when the decoded test error is more than
       {GAP_FACTOR:g}x and more than {GAP_POINTS:g} points above the retrained one
  1    a file, run directory or data set could not be used, or training diverged
  2    a mistake in the command: a setting, a flag, a run or file of the wrong kind
  3    compress: the result collapsed (every covered weight is zero, or the decoded test error is
       within {CHANCE_MARGIN:g} points of chance); the run directory and report.json, which records
       the warning, are written all the same
  130  interrupted (Ctrl-C); the line printed is the command that continues the run"""


RAW_HELP = argparse.RawDescriptionHelpFormatter


METHOD_COMMANDS = ("compress", "tune")
"""The commands with one subcommand per method (``weightshare compress sws``)."""


def command_name(args: argparse.Namespace) -> str:
    """``weightshare compress sws``: how messages name the command."""
    return " ".join(["weightshare", args.command, *([args.method] if args.command in METHOD_COMMANDS else [])])
