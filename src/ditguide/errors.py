"""The base class of errors that report a user's mistake (a bad input the user can fix).

The command lines (`ditguide.cli`) print such an error in one line with exit code 2; besides it,
ValueError (ConfigError, GuidanceSpecError, ...), FileNotFoundError and YAML errors count as user
errors. Modules that define their own error types subclass `UserError`, so that the CLI helper
needs to import none of them.
"""


class UserError(Exception):
    """A bad input the user can fix; the message names the file or parameter and what is allowed."""
