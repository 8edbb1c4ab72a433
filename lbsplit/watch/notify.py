"""Notifications: one event, each webhook in the body its chat tool expects. Never blocks, never raises.

Events and their levels: revert by the watchdog, revert_failed and stuck are P1; alert
carries the worst level breached; hook_failed is P2; apply, promote, revert by a person,
recovery and release_complete are P3 (information). A webhook gets the events at least as
grave as its min_level.
"""

from __future__ import annotations

import socket

from ..config import Settings
from ..model import Format, Level
from ..rollout.transaction import now
from . import endpoint

ORDER = {Level.P1: 1, Level.P2: 2, Level.P3: 3}


def body(fmt: Format, event: str, level: Level, text: str, payload: dict) -> dict:
    """The POST body for one webhook format."""
    line = f"[lbsplit {level}] {text}"
    if fmt == Format.SLACK:
        return {"text": line}
    if fmt in (Format.WECOM, Format.DINGTALK):
        return {"msgtype": "text", "text": {"content": line}}
    if fmt == Format.FEISHU:
        return {"msg_type": "text", "content": {"text": line}}
    return {"event": event, "level": str(level), "text": text, "host": socket.gethostname(), "time": now(),
            **payload}


def send(settings: Settings, event: str, level: Level, text: str, payload: dict | None = None,
         post=endpoint.post_json) -> list[str]:
    """POST the event to every webhook that wants it; the errors, as text (a failing webhook blocks nothing)."""
    if settings.notify is None:
        return []
    errors = []
    for hook in settings.notify.webhooks:
        if ORDER[level] > ORDER[hook.min_level]:
            continue
        error = post(hook.url, body(hook.format, event, level, text, payload or {}), settings.notify.timeout)
        if error:
            errors.append(f"notify {event}: {error}")
    return errors


def announce(settings: Settings, event: str, outcome, reason: str = "", post=endpoint.post_json) -> list[str]:
    """A person's change (apply, promote, revert) as an information event; returns error notes."""
    if not outcome.changed:
        return []
    text = f"{event}: v2 {outcome.stage.describe()} (generation {outcome.generation})" + (f": {reason}" if reason else "")
    return send(settings, event, Level.P3, text, {"stage": outcome.stage.describe(), "generation": outcome.generation,
                                                  "reason": reason}, post)
