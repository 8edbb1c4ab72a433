"""The commands that act on this host or, with [fleet], on the whole fleet: one call each for the CLI.

Without [fleet] they are the local commands (watch.gate). The fleet's own modules (and requests)
are imported only when the config has a [fleet] section, so a single host's start-up does not
pay for them.
"""

from __future__ import annotations

from ..config import Settings
from ..errors import ConfigError
from ..model import Stage
from ..rollout.state import StateStore
from ..watch import gate


def _fleet(settings: Settings):
    """The fleet commands module when the config has [fleet], else None (a [fleet] with errors raises)."""
    if settings.require_fleet() is None:
        return None
    from . import commands  # noqa: PLC0415 - only fleet mode pays for etcd's client

    return commands


def _local_only(allow_unreachable: bool) -> None:
    if allow_unreachable:
        raise ConfigError("--allow-unreachable: only with [fleet] (a single host has no members to skip)")


def apply(settings: Settings, stage: Stage, reason: str, force: bool, allow_unreachable: bool = False) -> list[str]:
    fleet = _fleet(settings)
    if fleet is None:
        _local_only(allow_unreachable)
        return gate.apply(settings, stage, reason, force).messages
    return fleet.change(settings, stage, f"apply {stage.percent}", reason, force=force,
                        allow_unreachable=allow_unreachable)


def promote(settings: Settings, reason: str, force: bool, confirm: tuple[str, ...],
            allow_unreachable: bool = False) -> list[str]:
    fleet = _fleet(settings)
    if fleet is None:
        _local_only(allow_unreachable)
        return gate.promote(settings, reason, force, confirm).messages
    if confirm:
        raise ConfigError("--confirm: in fleet mode each host's gate checks its own confirmations; record them with "
                          "`lbsplit --config <that host's config> promote --confirm ITEM` on a config without [fleet]")
    stage = fleet.next_stage(settings)
    if stage is None:
        return ["v2 is at the fleet's last stage: nothing to promote"]
    return fleet.change(settings, stage, f"promote {stage.percent}", reason, force=force, strict=True,
                        allow_unreachable=allow_unreachable)


def revert(settings: Settings, reason: str, local: bool) -> list[str]:
    """The fleet's revert (one etcd write), or this host's; `local` is the break-glass without etcd."""
    if local:
        from .agent import set_override  # noqa: PLC0415

        set_override(settings, reason)  # first: the agent must not undo what follows
        return [*gate.revert(settings, reason).messages,
                "this host is now locally overridden: its agent ignores the fleet until `lbsplit rejoin`"]
    if settings.fleet_error is not None:
        raise ConfigError(f"{settings.fleet_error}; to revert this host alone, run `lbsplit revert --local`")
    fleet = _fleet(settings)
    if fleet is None:
        return gate.revert(settings, reason).messages
    from .store import StoreUnavailable  # noqa: PLC0415

    try:
        return fleet.revert(settings, reason)
    except StoreUnavailable as e:
        raise StoreUnavailable(f"{e}. Break-glass without etcd: `lbsplit revert --local` on each host") from None


def forget(settings: Settings, host: str, reason: str) -> str:
    fleet = _fleet(settings)
    if fleet is None:
        raise ConfigError("forget: the config has no [fleet] section")
    return fleet.forget(settings, host, reason)


def rejoin(settings: Settings) -> str:
    if _fleet(settings) is None:
        raise ConfigError("rejoin: the config has no [fleet] section")
    from .agent import clear_override  # noqa: PLC0415

    return "override cleared: the agent follows the fleet again" if clear_override(settings) \
        else "this host was not overridden"


def agent(config_path, log) -> int:
    from .agent import Agent  # noqa: PLC0415

    return Agent(config_path, log=log).run()


def _or_local(call, what: str):
    """A fleet read; with etcd away, the error says how to look at this host alone."""
    from .store import StoreUnavailable  # noqa: PLC0415

    try:
        return call()
    except StoreUnavailable as e:
        raise StoreUnavailable(f"{e}. This host alone, without etcd: `lbsplit {what} --local`") from None


def fleet_status(settings: Settings, local: bool) -> dict | None:
    """The fleet's status (raises NotServing after it is printed: see require_serving), or None for this host's."""
    fleet = None if local else _fleet(settings)
    return _or_local(lambda: fleet.status(settings), "status") if fleet else None


def require_serving(status: dict) -> None:
    from .commands import require_serving as check  # noqa: PLC0415

    check(status)


def history(settings: Settings, local: bool) -> tuple[list[dict], bool]:
    """(entries, in_fleet): the fleet's changes from etcd, or this host's history."""
    fleet = None if local else _fleet(settings)
    if fleet is None:
        return StateStore(settings.state_dir).read_history(), False
    return _or_local(lambda: fleet.history(settings), "history"), True


def watchdog(settings: Settings, health, mode: str, echo, chatty: bool) -> int:
    fleet = _fleet(settings)
    if fleet is None:
        from ..watch.watchdog import Watchdog  # noqa: PLC0415 - only the watchdog command needs it

        return Watchdog(settings, health, echo=echo, chatty=chatty).run(mode)
    return fleet.lead_and_watch(settings, health, mode, echo, chatty)
