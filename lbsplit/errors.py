"""Typed errors and the exit codes they map to: the only place an exit code is given a number.

The CLI turns an LbsplitError into one message and `exit_code`. Outcomes that are not
errors but still have their own code (the watchdog's revert) are named here too. An error
that crosses a process (an agent's report in etcd) travels as data, `to_data()` and
`from_data()`: a kind, its exit code, the message and details; never a text to parse back.
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
    UNREACHABLE = 12
    INTERRUPTED = 130


class LbsplitError(Exception):
    """Base class: an expected failure with a message that says what to do.

    `details` is data that goes with the message (the gate's failing items, the hosts of a
    fleet failure); it is never parsed out of the message.
    """

    exit_code = ExitCode.INTERNAL
    kind = "internal"

    def __init__(self, message: str = "", details: dict | None = None):
        super().__init__(message)
        self.details = dict(details or {})

    def to_data(self) -> dict:
        """The error as JSON-able data: {kind, exit_code, message, details}."""
        return {"kind": self.kind, "exit_code": int(self.exit_code), "message": str(self), "details": self.details}


class ConfigError(LbsplitError):
    """Bad input: the config file, a field in it, or a command argument."""

    exit_code = ExitCode.BAD_INPUT
    kind = "bad_input"


class NginxTestFailed(LbsplitError):
    """`nginx -t` rejected the config; the previous files are back in place."""

    exit_code = ExitCode.NGINX_TEST_FAILED
    kind = "nginx_test_failed"


class ReloadFailed(LbsplitError):
    """The reload failed or did not take effect in time; the previous config is back."""

    exit_code = ExitCode.RELOAD_FAILED
    kind = "reload_failed"


class LockBusy(LbsplitError):
    """Another lbsplit command holds the lock."""

    exit_code = ExitCode.LOCK_BUSY
    kind = "lock_busy"


class EnvironmentProblem(LbsplitError):
    """Something around lbsplit is missing or forbidden: the nginx binary, a permission."""

    exit_code = ExitCode.ENVIRONMENT
    kind = "environment"


class UnfinishedTransaction(LbsplitError):
    """A previous command was interrupted and could not be repaired automatically."""

    exit_code = ExitCode.UNFINISHED
    kind = "unfinished"


class GateRefused(LbsplitError):
    """The promotion gate found v2 unhealthy (or the revert path broken) for the wider stage."""

    exit_code = ExitCode.GATE_REFUSED
    kind = "gate_refused"


class NotServing(LbsplitError):
    """`status`: nginx does not serve what lbsplit's state says is live."""

    exit_code = ExitCode.NOT_SERVING
    kind = "not_serving"


class StructureError(LbsplitError):
    """The rendered config does not have the shape lbsplit renders; a bug, never user input."""

    exit_code = ExitCode.INTERNAL
    kind = "structure"


class Interrupted(BaseException):
    """A signal stopped the command; the undo scope has put the previous config back.

    Not an LbsplitError: like KeyboardInterrupt it derives from BaseException, so code that
    handles an expected failure (`except LbsplitError`, a library's `except Exception`) cannot
    swallow a signal and carry on as if it had not come. The CLI gives it its exit code.
    """

    exit_code = ExitCode.INTERRUPTED
    kind = "interrupted"


class Unreachable(LbsplitError):
    """Fleet mode: a member's agent does not answer, so what it serves cannot be changed or vouched for."""

    exit_code = ExitCode.UNREACHABLE
    kind = "unreachable"


class NotLeader(LockBusy):
    """Fleet mode: a watchdog that no longer leads the fleet (its lease lapsed) tried to act; nothing changed."""

    kind = "not_leader"


KINDS = {cls.kind: cls for cls in (LbsplitError, ConfigError, NginxTestFailed, ReloadFailed, LockBusy,
                                   EnvironmentProblem, UnfinishedTransaction, GateRefused, NotServing,
                                   StructureError, Unreachable, NotLeader)}


def from_data(data: object) -> LbsplitError:
    """An error published as data (to_data) back as an LbsplitError; anything malformed is an internal error."""
    if not isinstance(data, dict):
        return LbsplitError(f"an error that is not data: {str(data)[:200]}")
    cls = KINDS.get(str(data.get("kind")), LbsplitError)
    details = data.get("details") if isinstance(data.get("details"), dict) else {}
    return cls(str(data.get("message", "")), details)
