"""The ``raysearch`` console script: one subcommand per step of the data flow.

Each subcommand lives in its own module (``data``, ``train``, ``search``, ``analyze``) that exposes
``register(subparsers)``; the command handlers are thin calls into the library. A
:class:`raysearch.errors.RaysearchError`, or an operating-system error on a named file (no
permission, a directory where a file was expected), is printed as one line (no traceback) and exits
with 2. Output cut short by the reader (``raysearch inspect FILE | head -1``) ends quietly.
Without a command, the usage goes to stderr and the exit status is 2 (as for any other usage
error).
"""

from __future__ import annotations

import argparse
import logging
import os
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


def _os_error_line(exc: OSError) -> str:
    """One line for an operating-system error on a file: what, which file."""
    what = exc.strerror or type(exc).__name__
    name = exc.filename
    if name is None:
        return f"{what} ({exc})" if str(exc) and str(exc) != what else what
    return f"cannot use {name}: {what}"


def _stdout_gone() -> int:
    """The reader of stdout has gone (a closed pipe): stop quietly.

    Further writes (also the interpreter's final flush) go to /dev/null.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, as a shell reports a process killed by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        print(
            "raysearch: error: a COMMAND is required (raysearch --help lists them)", file=sys.stderr
        )
        return 2
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        return _stdout_gone()
    except RaysearchError as exc:
        print(f"raysearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
        FileNotFoundError,
        UnicodeDecodeError,
    ) as exc:
        line = (
            _os_error_line(exc)
            if isinstance(exc, OSError)
            else f"a file is not valid UTF-8 text ({exc})"
        )
        print(f"raysearch {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"raysearch {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
