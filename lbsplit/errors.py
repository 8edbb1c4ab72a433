"""Typed errors and the exit codes they map to: the only place an exit code is spelled.

The CLI turns an LbsplitError into one message and `exit_code`. Outcomes that are not
errors but still have their own code (the watchdog's revert) are named here too.
"""


class ExitCode:
    """Every exit code lbsplit uses; README's table documents each (a test keeps them in sync)."""

    OK = 0
    INTERNAL = 1
    BAD_INPUT = 2
    NGINX_TEST_FAILED = 3
    RELOAD_FAILED = 4
    LOCK_BUSY = 5
    ENVIRONMENT = 6
    UNFINISHED = 7
    GATE_REFUSED = 8
    NOT_SERVING = 9
    WATCHDOG_REVERTED = 10
    WATCHDOG_ACT_NOW = 11
    INTERRUPTED = 130


class LbsplitError(Exception):
    """Base class: an expected failure with a message that says what to do."""

    exit_code = ExitCode.INTERNAL


class ConfigError(LbsplitError):
    """Bad input: the config file, a field in it, or a command argument."""

    exit_code = ExitCode.BAD_INPUT


class NginxTestFailed(LbsplitError):
    """`nginx -t` rejected the config; the previous files are back in place."""

    exit_code = ExitCode.NGINX_TEST_FAILED


class ReloadFailed(LbsplitError):
    """The reload failed or did not take effect in time; the previous config is back."""

    exit_code = ExitCode.RELOAD_FAILED


class LockBusy(LbsplitError):
    """Another lbsplit command holds the lock."""

    exit_code = ExitCode.LOCK_BUSY


class EnvironmentProblem(LbsplitError):
    """Something around lbsplit is missing or forbidden: the nginx binary, a permission."""

    exit_code = ExitCode.ENVIRONMENT


class UnfinishedTransaction(LbsplitError):
    """A previous command was interrupted and could not be repaired automatically."""

    exit_code = ExitCode.UNFINISHED


class GateRefused(LbsplitError):
    """The promotion gate found v2 unhealthy (or the revert path broken) for the wider stage."""

    exit_code = ExitCode.GATE_REFUSED


class NotServing(LbsplitError):
    """`status`: nginx does not serve what lbsplit's state says is live."""

    exit_code = ExitCode.NOT_SERVING


class StructureError(LbsplitError):
    """The rendered config does not have the shape lbsplit renders; a bug, never user input."""

    exit_code = ExitCode.INTERNAL


class Interrupted(LbsplitError):
    """A signal stopped the command; the undo scope has put the previous config back."""

    exit_code = ExitCode.INTERRUPTED
