"""One exception type for user-facing errors: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (path, value, file). The message says what, where and what to do.

    Library code names its own parameters and config keys; `param` (when set) is the parameter
    the message starts with, which the command line renames to its option (`num` -> `--num`)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class BadValue(UserError, ValueError):
    """A bad argument value: a `UserError` for the command line, a `ValueError` for Python callers."""
