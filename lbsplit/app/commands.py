"""What the CLI calls: each command on this host or, with [fleet], on the whole fleet.

Without [fleet] the changes are app.local's. The fleet's own modules (and etcd's client) are
imported only when the config has a [fleet] section, so a single host's start-up does not pay
for them; each such import below says so.
"""

from __future__ import annotations

from ..config import Settings
from ..errors import ConfigError
from ..model import Change, Stage
from ..rollout.state import StateStore
from . import local


def _fleet(settings: Settings):
    """The fleet commands module when the config has [fleet], else None (a [fleet] with errors raises)."""
    if settings.require_fleet() is None:
        return None
    from ..fleet import commands  # noqa: PLC0415 - only fleet mode pays for etcd's client

    return commands


def _local_only(allow_unreachable: bool) -> None:
    if allow_unreachable:
        raise ConfigError("--allow-unreachable: only with [fleet] (a single host has no members to skip)")


def apply(settings: Settings, stage: Stage, reason: str, force: bool, allow_unreachable: bool = False) -> Change:
    """`lbsplit apply P`."""
    fleet = _fleet(settings)
    if fleet is None:
        _local_only(allow_unreachable)
        return local.apply(settings, stage, reason, force)
    return fleet.change(settings, stage, f"apply {stage.percent}", reason, force=force,
                        allow_unreachable=allow_unreachable)


def promote(settings: Settings, reason: str, force: bool, confirm: tuple[str, ...],
            allow_unreachable: bool = False) -> Change:
    """`lbsplit promote`: the next stage of the plan, through the strict gate."""
    fleet = _fleet(settings)
    if fleet is None:
        _local_only(allow_unreachable)
        return local.promote(settings, reason, force, confirm)
    if confirm:
        raise ConfigError("--confirm: in fleet mode each host's gate checks its own confirmations; record them with "
                          "`lbsplit --config <that host's config> promote --confirm ITEM` on a config without [fleet]")
    stage = fleet.next_stage(settings)
    if stage is None:
        return Change(0, Stage.at(settings.stages[-1]) if settings.stages else Stage.off(), changed=False,
                      messages=["v2 is at the fleet's last stage: nothing to promote"])
    return fleet.change(settings, stage, f"promote {stage.percent}", reason, force=force, strict=True,
                        allow_unreachable=allow_unreachable)


def revert(settings: Settings, reason: str, local_only: bool) -> Change:
    """The fleet's revert (one etcd write), or this host's; `local_only` is the break-glass without etcd."""
    if local_only:
        from ..fleet.agent import set_override  # noqa: PLC0415 - only the break-glass needs the agent's files

        set_override(settings, reason)  # first: the agent must not undo what follows
        change = local.revert(settings, reason)
        change.messages.append("this host is now locally overridden: its agent ignores the fleet until "
                               "`lbsplit rejoin`")
        return change
    if settings.fleet_error is not None:
        raise ConfigError(f"{settings.fleet_error}; to revert this host alone, run `lbsplit revert --local`")
    fleet = _fleet(settings)
    if fleet is None:
        return local.revert(settings, reason)
    from ..fleet.store import StoreUnavailable  # noqa: PLC0415 - fleet mode only

    try:
        return fleet.revert(settings, reason)
    except StoreUnavailable as e:
        raise StoreUnavailable(f"{e}. Break-glass without etcd: `lbsplit revert --local` on each host") from None


def check(settings: Settings, percent: Stage | None):
    """`lbsplit check [P]`: this host's checklist for P (default: its next stage); see app.local.check."""
    return local.check(settings, percent)


def forget(settings: Settings, host: str, reason: str) -> str:
    """`lbsplit forget HOST`: a member that is gone for good leaves the fleet."""
    fleet = _fleet(settings)
    if fleet is None:
        raise ConfigError("forget: the config has no [fleet] section")
    return fleet.forget(settings, host, reason)


def rejoin(settings: Settings) -> str:
    """`lbsplit rejoin`: this host's agent follows the fleet again after a `revert --local`."""
    if _fleet(settings) is None:
        raise ConfigError("rejoin: the config has no [fleet] section")
    from ..fleet.agent import clear_override  # noqa: PLC0415 - fleet mode only

    return "override cleared: the agent follows the fleet again" if clear_override(settings) \
        else "this host was not overridden"


def agent(config_path, log) -> int:
    """`lbsplit agent`: this load balancer follows the fleet, changing its stage with app.local."""
    from ..fleet.agent import Agent  # noqa: PLC0415 - fleet mode only

    return Agent(config_path, local, log=log).run()


def _or_local(call, what: str):
    """A fleet read; with etcd away, the error says how to look at this host alone."""
    from ..fleet.store import StoreUnavailable  # noqa: PLC0415 - fleet mode only

    try:
        return call()
    except StoreUnavailable as e:
        raise StoreUnavailable(f"{e}. This host alone, without etcd: `lbsplit {what} --local`") from None


def fleet_status(settings: Settings, local_only: bool) -> dict | None:
    """The fleet's status (raises NotServing after it is printed: see require_serving), or None for this host's."""
    fleet = None if local_only else _fleet(settings)
    return _or_local(lambda: fleet.status(settings), "status") if fleet else None


def require_serving(status: dict) -> None:
    """Raise NotServing when a fleet status shows a member not serving the fleet's stage."""
    from ..fleet.commands import require_serving as check  # noqa: PLC0415 - fleet mode only

    check(status)


def history(settings: Settings, local_only: bool) -> tuple[list[dict], bool]:
    """(entries, in_fleet): the fleet's changes from etcd, or this host's history."""
    fleet = None if local_only else _fleet(settings)
    if fleet is None:
        return StateStore(settings.state_dir).read_history(), False
    return _or_local(lambda: fleet.history(settings), "history"), True


def watchdog(settings: Settings, health, mode: str, echo, chatty: bool) -> int:
    """`lbsplit watchdog`: this host's, or the fleet's one elected watchdog."""
    fleet = _fleet(settings)
    if fleet is None:
        from ..watch.watchdog import Watchdog  # noqa: PLC0415 - only the watchdog command needs it

        return Watchdog(settings, health, echo=echo, chatty=chatty).run(mode)
    return fleet.lead_and_watch(settings, health, mode, echo, chatty)
