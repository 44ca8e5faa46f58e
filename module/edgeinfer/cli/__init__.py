"""The ``edgeinfer`` command line.

Exit codes: 0 success, 2 bad usage or bad configuration (the message names the
key and the bad value), or an error that says starting again cannot help (its
``exit_code``: a model refused at start), 1 anything else.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edgeinfer.cli import commands
from edgeinfer.cli.parser import build_parser
from edgeinfer.errors import ConfigError, EdgeInferError, MissingExtraError


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return commands.COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"edgeinfer: bad configuration: {exc}", file=sys.stderr)
        return 2
    except MissingExtraError as exc:
        print(f"edgeinfer: {exc}", file=sys.stderr)
        return 2
    except EdgeInferError as exc:
        print(f"edgeinfer: {exc}", file=sys.stderr)
        # A model refused at start says 2 (edgeinfer.updates.startup.ModelRefusedError),
        # read here by attribute: importing it would make --help load the runtimes.
        return int(getattr(exc, "exit_code", 1))


__all__ = ["build_parser", "main"]
