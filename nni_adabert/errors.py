"""The one exception type for mistakes a user can fix.

The CLI prints its message (no traceback) and exits with code 2; library callers
can catch it like any ``ValueError``.
"""


class UserError(ValueError):
    """Bad input from the user: a file, a field, a name. The message says what,
    where, and what was expected."""

    exit_code = 2
