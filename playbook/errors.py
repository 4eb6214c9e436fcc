"""The one exception type the CLI turns into a clear message and exit code 2 (no traceback)."""


class PlaybookError(RuntimeError):
    """Something the user can fix; the message says what and how."""
