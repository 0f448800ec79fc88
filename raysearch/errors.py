"""Exceptions that carry a message meant for the user.

Every error raised on bad input or a bad setting is a :class:`RaysearchError`. The CLI prints its
message (no traceback) and exits with status 2. Messages say what is wrong, where (file, key or
setting), and how to fix it.
"""


class RaysearchError(Exception):
    """Base class of all user-facing raysearch errors."""


class InputError(RaysearchError, ValueError):
    """A recording, model file or experiment directory cannot be used as given."""


class ConfigError(RaysearchError, ValueError):
    """A setting, argument or study config is invalid."""


def check_readable(path, what: str = "file") -> None:
    """Raise :class:`InputError` (one line naming ``path``) when ``path`` cannot be opened for
    reading: no permission, a directory, a FIFO or another OS error."""
    import os
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: is not a regular file (a FIFO, socket or device), not a {what}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
