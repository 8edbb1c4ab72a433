"""Typed errors; the CLI turns them into one message and an exit code."""


class LbsplitError(Exception):
    """Base class: an expected failure with a message that says what to do."""

    exit_code = 1


class ConfigError(LbsplitError):
    """Bad input: the config file, a field in it, or a command argument."""

    exit_code = 2


class NginxTestFailed(LbsplitError):
    """`nginx -t` rejected the config; the previous files are back in place."""

    exit_code = 3


class ReloadFailed(LbsplitError):
    """The reload failed or did not take effect in time; the previous config is back."""

    exit_code = 4


class LockBusy(LbsplitError):
    """Another lbsplit command holds the lock."""

    exit_code = 5


class EnvironmentProblem(LbsplitError):
    """Something around lbsplit is missing or forbidden: the nginx binary, a permission."""

    exit_code = 6


class UnfinishedTransaction(LbsplitError):
    """A previous command was interrupted and could not be repaired automatically."""

    exit_code = 7
