"""User errors of the command lines: one line on stderr, exit code 2, the traceback only with --debug.

A user error is a bad input the user can fix (a parameter, a file, a folder of another run); the
exceptions that carry one name the file or parameter in their message. Anything else is a bug and
keeps its traceback.

    def main(argv=None) -> int:
        parser = argparse.ArgumentParser(...)
        add_debug_flag(parser)
        args = parser.parse_args(argv)
        return run_reporting_user_errors(lambda: _run(args), debug=args.debug)

Parameter sections of params.yaml that a command reads are checked with `typed_section` (every key
known and of its default's type) before any work.
"""

from __future__ import annotations

import argparse
import json
import numbers
import sys
from collections.abc import Callable

import yaml

from .errors import UserError
from .profiles import ConfigError

EXIT_USER_ERROR = 2  # as argparse's usage errors


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that report a user's mistake."""
    # ValueError covers ConfigError, GuidanceSpecError, GuidanceError, EditError, JSON and Unicode
    # decoding errors; FileNotFoundError covers missing weights and data (MissingDataError, ...);
    # UserError the errors modules define for it (ManifestMismatchError, IncompleteOutputError).
    return (ValueError, FileNotFoundError, UserError, yaml.YAMLError)


def one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line messages, e.g. manifest differences, joined by '; ')."""
    if isinstance(err, json.JSONDecodeError) or isinstance(err, UnicodeDecodeError):
        text = f"{type(err).__name__}: {err}"
    else:
        text = str(err) or type(err).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _type_ok(value, default) -> bool:
    """Value of the default's type; a float parameter also takes an int (YAML reads `1e-4` as a string)."""
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, numbers.Integral)
    if isinstance(default, float):
        return isinstance(value, numbers.Real)
    return isinstance(value, type(default))


def typed_section(params: dict, name: str, defaults: dict) -> dict:
    """The params section `name`, each key known and of its default's type; a ConfigError naming it otherwise."""
    section = params.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"params {name}: expected a mapping of parameters, got {section!r}")
    unknown = set(section) - set(defaults)
    if unknown:
        raise ConfigError(f"params {name}: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(defaults)}")
    for key, value in section.items():
        if not _type_ok(value, defaults[key]):
            kind = type(defaults[key]).__name__
            hint = (
                " (YAML reads 1e-4 as a string: write 1.0e-4 or 0.0001)"
                if isinstance(value, str) and kind == "float"
                else ""
            )
            raise ConfigError(f"params {name}.{key}={value!r} is not allowed; allowed: a {kind}{hint}")
    return dict(section)


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
