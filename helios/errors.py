"""User-facing errors.

A :class:`ConfigError` names the config key, the bad value and what is allowed.
The command-line entry points turn it into the one line
``helios: config error: <key>=<value>: <what is allowed>`` and exit status 2,
before any simulation starts.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that Helios cannot run with.

    Parameters
    ----------
    key : str
        Dotted config key, e.g. ``topology.k``.
    value : object
        The offending value, as the user gave it.
    allowed : str
        What would be accepted, e.g. ``"an even integer >= 2"``.
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}={value}: {allowed}")

    def one_line(self) -> str:
        """The single line printed to stderr by the CLI."""
        return f"helios: config error: {self}".replace("\n", " ")


class StorageError(RuntimeError):
    """Results could not be written (a full disk, a folder that became read-only, ...).

    The message is one line, ``cannot write results to <folder>: <reason><detail>``;
    the cells already written are complete and kept.
    """

    def __init__(self, folder: object, error: OSError, detail: str = "") -> None:
        super().__init__(f"cannot write results to {folder}: {error.strerror or error}{detail}")
