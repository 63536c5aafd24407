"""One exception type for user-facing errors: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (path, value, file). The message says what, where and what to do."""
