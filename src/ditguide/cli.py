"""User errors of the command lines: one line on stderr, exit code 2, the traceback only with --debug.

A user error is a bad input the user can fix (a parameter, a file, a folder of another run); the
exceptions that carry one name the file or parameter in their message. Anything else is a bug and
keeps its traceback.

    def main(argv=None) -> int:
        parser = argparse.ArgumentParser(...)
        add_debug_flag(parser)
        args = parser.parse_args(argv)
        return run_reporting_user_errors(lambda: _run(args), debug=args.debug)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import yaml

EXIT_USER_ERROR = 2  # as argparse's usage errors


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that report a user's mistake (imported lazily: each CLI imports only what it needs)."""
    from .generate import IncompleteOutputError, ManifestMismatchError

    # ValueError covers ConfigError, GuidanceSpecError, GuidanceError, EditError, JSON and Unicode
    # decoding errors; FileNotFoundError covers missing weights and data (MissingDataError, ...).
    return (ValueError, FileNotFoundError, ManifestMismatchError, IncompleteOutputError, yaml.YAMLError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line messages, e.g. manifest differences, joined by '; ')."""
    if isinstance(err, json.JSONDecodeError) or isinstance(err, UnicodeDecodeError):
        text = f"{type(err).__name__}: {err}"
    else:
        text = str(err) or type(err).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")


def run_reporting_user_errors(body: Callable[[], int | None], *, debug: bool, prog: str | None = None) -> int:
    """Run `body`; a user error becomes `error: <message>` on stderr and exit code 2 (unless `debug`)."""
    try:
        return body() or 0
    except user_error_types() as err:
        if debug:
            raise
        prefix = f"{prog}: error" if prog else "error"
        print(f"{prefix}: {one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
