"""Errors that are the user's to fix (bad config, bad data, bad paths).

The CLI prints them as one line and exits with code 2, with no traceback.
Anything else that escapes is a bug in pocketkd and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in what the user gave us; the message says what and what is allowed."""


class ParityError(RuntimeError):
    """An exported file does not reproduce the PyTorch student within tolerance."""
