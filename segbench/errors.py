"""Errors a user can fix (bad config value, missing or damaged data).

The CLI prints their message without a traceback; everything else is a bug.
"""


class UserError(ValueError):
    """Bad input from the user; the message names the key, file or value and what is expected."""
