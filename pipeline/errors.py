"""Errors that are the user's to fix (bad config, bad data, bad paths).

The CLI prints them as one line and exits with code 2, with no traceback.
Anything else that escapes is a bug in pocketkd and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in what the user gave us; the message says what and what is allowed."""


class ParityError(RuntimeError):
    """An exported file does not reproduce the PyTorch student within tolerance."""


class NonFiniteError(UserError):
    """NaN or infinity where a number must be finite (data, model outputs); the message says where."""


def os_error_text(exc: BaseException) -> str:
    """One line for an OS error on a user path: 'Permission denied', 'Not a directory', 'symlink loop'..."""
    import errno

    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x})"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if isinstance(exc, RuntimeError) and "symlink loop" in str(exc).lower():
        return "symlink loop (too many levels of symbolic links)"
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())


def first_line(text: object, limit: int = 300) -> str:
    """The first non-empty line of an exception's text, without traceback noise, at most ``limit`` chars."""
    for line in str(text).splitlines():
        line = " ".join(line.split())
        if line and not line.startswith(("Traceback", "File \"")):
            return line[:limit]
    return ""
