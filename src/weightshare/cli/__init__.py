"""The ``weightshare`` command.

Every subcommand takes its settings from (lowest to highest priority) the
dataclass defaults, a named ``--preset``, a TOML ``--config`` file and flags.
Each setting's flag is its field name with dashes (``lr_w`` -> ``--lr-w``).
``weightshare compress METHOD`` has one subcommand per method, listing only
that method's settings and the ``[train]``, ``[data]`` and ``[finish]`` ones.

``--resume`` continues a run with the settings it was started with; a setting given
again must have the value it was started with (only ``--data-dir`` may change).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from weightshare.cli.common import COMMANDS, RAW_HELP, command_name, exit_codes
from weightshare.cli.files import _add_codec, _add_evaluate, _add_export, _add_plot
from weightshare.cli.runs import _add_compress, _add_demo, _add_pretrain, _add_refinish, _add_sensitivity
from weightshare.cli.search import _add_compare, _add_tune
from weightshare.cli.settings import foreign_setting, method_alias, resolve_method_config, resolve_settings
from weightshare.core.errors import USAGE_ERRORS, USER_ERRORS, RunInterrupted

__all__ = ["main", "build_parser", "resolve_method_config", "resolve_settings"]


# --- entry point --------------------------------------------------------------------------------

PARSER_BUILDERS = [
    _add_pretrain, _add_compress, _add_refinish, _add_tune, _add_compare, _add_codec, _add_export, _add_evaluate,
    _add_plot, _add_demo, _add_sensitivity,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightshare",
        description=__doc__.splitlines()[0],
        epilog=exit_codes(),
        formatter_class=RAW_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSER_BUILDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user's mistake is one line on stderr and an exit code (see :func:`exit_codes`)."""
    argv = method_alias(list(sys.argv[1:] if argv is None else argv))
    foreign = foreign_setting(argv)
    if foreign:  # argparse would print its usage too: one line says it
        print(f"weightshare {argv[0]} {argv[1]}: error: {foreign}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:
        print(f"{command_name(args)}: {_interrupted(args, argv, exc)}", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:  # anything else is a bug: its traceback is what finds it
        print(f"{command_name(args)}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, USAGE_ERRORS) else 1


def _interrupted(args: argparse.Namespace, argv: list[str], exc: KeyboardInterrupt) -> str:
    """The line for Ctrl-C: how far the run got and the command that continues it.

    >>> args = argparse.Namespace(command="compress")
    >>> _interrupted(args, ["compress", "sws", "--out", "my run"], RunInterrupted("my run", 3, 100))
    "interrupted after epoch 3 of 100; continue with: weightshare compress sws --out 'my run' --resume"
    """
    if args.command not in ("pretrain", "compress"):
        return "interrupted"
    if isinstance(exc, RunInterrupted):
        again = argv if "--resume" in argv else [*argv, "--resume"]
        return f"{exc}; continue with: {shlex.join(['weightshare', *again])}"
    return f"interrupted before training started; run again: {shlex.join(['weightshare', *argv])}"


if __name__ == "__main__":
    sys.exit(main())
