"""The ``raysearch`` console script: one subcommand per step of the data flow.

Each subcommand lives in its own module (``data``, ``train``, ``search``, ``analyze``) that exposes
``register(subparsers)``; the command handlers are thin calls into the library. A
:class:`raysearch.errors.RaysearchError` is printed as one line (no traceback) and exits with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from raysearch import __version__
from raysearch.errors import RaysearchError

# Modules that contribute subcommands, in data-flow order.
_COMMAND_MODULES = ("data", "train", "search", "analyze")


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module

    parser = argparse.ArgumentParser(
        prog="raysearch",
        description="Distributed lambda search for compositional RBMs on whole-brain recordings.",
    )
    parser.add_argument("--version", action="version", version=f"raysearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        import_module(f"raysearch.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except RaysearchError as exc:
        print(f"raysearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raysearch {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
