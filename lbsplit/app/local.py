"""This host's commands that change the stage: the transaction, the gate as its precheck, then the
post_apply / post_revert hook and the notification, which never undo a change."""

from __future__ import annotations

from ..config import Settings
from ..errors import ConfigError
from ..model import Change, Level, Stage, next_stage
from ..rollout.state import StateStore
from ..rollout.transaction import Transaction, revert as revert_transaction
from ..stamps import actor, now
from ..watch.gate import Item, checklist, precheck_for


def live_next(settings: Settings) -> Stage | None:
    """The first configured stage above the one this host serves; None at the last stage."""
    state = StateStore(settings.state_dir).read_state_or_none()
    return next_stage(settings.stages, state.stage if state else None)


def apply(settings: Settings, stage: Stage, reason: str = "", force: bool = False, command: str | None = None,
          strict: bool = False) -> Change:
    """`lbsplit apply` / `promote`: the transaction with the gate as its precheck; then the post_apply hook
    and the notification."""
    txn = Transaction(settings, command or f"apply {stage.percent}", reason)
    change = txn.run(stage, precheck=precheck_for(stage, force, strict=strict))
    if change.changed:
        _after(settings, "post_apply", (command or "apply").split()[0], change, reason)
    return change


def restore(settings: Settings, stage: Stage, reason: str, command: str) -> Change:
    """Put back the stage that was live a moment ago (a failed fleet change's rollback): no gate, since
    undoing a narrowing is a widening only on paper; the post_apply hook and the notification as for apply."""
    if not stage.v2_enabled:
        return revert(settings, reason)
    change = Transaction(settings, command, reason).run(stage)
    if change.changed:
        _after(settings, "post_apply", "apply", change, reason)
    return change


def revert(settings: Settings, reason: str = "") -> Change:
    """`lbsplit revert`: the transaction first, needing nothing else; then the post_revert hook and the
    notification, neither of which can block or undo it."""
    change = revert_transaction(settings, reason)
    if change.changed:
        _after(settings, "post_revert", "revert", change, reason)
    return change


def _after(settings: Settings, hook: str, event: str, change: Change, reason: str) -> None:
    """Run the hook and announce the change; failures become messages (and a hook_failed event)."""
    from ..watch import hooks, notify  # noqa: PLC0415 - a change with no hooks or notifications pays nothing

    result = hooks.run(settings, hook, {"stage": change.stage.percent if change.stage.v2_enabled else "off",
                                        "generation": change.generation, "reason": reason})
    if result is not None and not result.ok:
        change.messages.append(f"WARNING: {result.describe()}")
        change.messages.extend(notify.send(settings, "hook_failed", Level.P2, result.describe(),
                                           {"hook": hook, "exit_code": result.code, "output": result.tail}))
    change.messages.extend(notify.announce(settings, event, change, reason))


def promote(settings: Settings, reason: str = "", force: bool = False, confirm: tuple[str, ...] = ()) -> Change:
    """`lbsplit promote`: record any confirmations, then apply the next stage of `stages` through the strict gate."""
    stage = live_next(settings)
    state = StateStore(settings.state_dir).read_state_or_none()
    if stage is None:
        return Change(state.generation if state else 0, state.stage if state else Stage.off(), changed=False,
                      messages=[last_stage_note(settings)])
    notes = [record_confirmation(settings, state, stage, item, reason) for item in confirm]
    change = apply(settings, stage, reason, force, command=f"promote {stage.percent}", strict=True)
    change.messages[:0] = notes
    return change


def last_stage_note(settings: Settings) -> str:
    return f"v2 is at the last stage ({Stage.at(settings.stages[-1]).describe()}): nothing to promote"


def record_confirmation(settings: Settings, state, target: Stage, item: str, reason: str) -> str:
    """A person's confirmation of a manual check for `target`, kept in the history."""
    known = settings.plan.checks_for(target.hundredths)
    if item not in known:
        listed = ", ".join(f'"{k}"' for k in known) or "none"
        raise ConfigError(f"--confirm: {item!r} is not a check of the {target.describe()} stage; its checks: {listed}")
    txn = Transaction(settings, "confirm")
    txn.store.ensure()
    with txn.lock():
        txn.store.append_history({"time": now(), "user": actor(), "command": "confirm", "item": item,
                                  "stage": target.percent, "from": state.stage_text if state else "none",
                                  "to": state.stage_text if state else "none",
                                  "generation": state.generation if state else None, "reason": reason,
                                  "result": f"confirmed \"{item}\" for {target.describe()}"})
    return f"confirmed \"{item}\" for {target.describe()}"


def check(settings: Settings, percent: Stage | None) -> tuple[Stage | None, list[Item]]:
    """`lbsplit check`: the checklist for `percent` (default: the next stage), under the lock, after repair.

    At the last stage with no percent given there is nothing to check: (None, [])."""
    stage = percent if percent is not None else live_next(settings)
    if stage is None:
        return None, []
    txn = Transaction(settings, "check")
    txn.store.ensure()
    with txn.lock():
        txn.repair()
        return stage, checklist(txn, stage)
