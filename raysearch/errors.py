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
