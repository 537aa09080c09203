"""The one exception type the CLI turns into a one-line message and exit code 1."""


class UserError(Exception):
    """Something the user can fix: the message names the thing and says what to do."""
