"""What the fleet keeps in etcd, as data: the keys under [fleet] prefix and their JSON. Pure.

    <prefix>/desired          the stage every host must serve: id, stage, phase (proposed/committed)
    <prefix>/hosts/<host>     each agent's report (kept after it dies, so status can show it)
    <prefix>/alive/<host>     under the agent's lease: gone agent_ttl seconds after it stops
    <prefix>/counts/<host>    under the lease: the host's access-log counts per variant (nginx_log source)
    <prefix>/history/<id>     one entry per fleet change, with the per-host result
    <prefix>/watchdog         under the leading watchdog's lease: its host name
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ..model import Stage

PROPOSED = "proposed"  # every live agent validates the stage and says ready (or why not)
COMMITTED = "committed"  # every live agent applies it


def desired_key(prefix: str) -> str:
    return f"{prefix}/desired"


def host_key(prefix: str, host: str) -> str:
    return f"{prefix}/hosts/{host}"


def alive_key(prefix: str, host: str) -> str:
    return f"{prefix}/alive/{host}"


def counts_key(prefix: str, host: str) -> str:
    """Under the agent's lease: this host's per-variant access-log counts over the stage's window."""
    return f"{prefix}/counts/{host}"


def history_key(prefix: str, change: int) -> str:
    return f"{prefix}/history/{change:010d}"


def watchdog_key(prefix: str) -> str:
    return f"{prefix}/watchdog"


def stage_json(stage: Stage) -> dict:
    return {"v2": stage.v2_enabled, "hundredths": stage.hundredths}


def stage_of(data: dict) -> Stage:
    return Stage.at(int(data["hundredths"])) if data.get("v2") else Stage.off()


class _Json:
    """A dataclass kept in etcd as JSON; unknown keys (from a newer lbsplit) are ignored."""

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str):
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Desired(_Json):
    """The fleet's desired state. `id` grows by one with every change, proposals included."""

    id: int
    stage: dict
    phase: str
    previous: dict
    command: str = ""
    by: str = ""
    at: str = ""
    reason: str = ""
    force: bool = False  # each host's promotion gate is overridden (apply --force)
    strict: bool = False  # each host's gate also requires soak time and manual checks (promote)

    @property
    def target(self) -> Stage:
        return stage_of(self.stage)


@dataclass(frozen=True)
class Report(_Json):
    """One agent's word on its host: what it serves and what it made of the desired state."""

    host: str
    seen: float  # epoch seconds of this report
    applied_id: int = 0  # the desired id this host serves
    stage: dict = field(default_factory=lambda: stage_json(Stage.off()))
    generation: int | None = None  # the host's own lbsplit generation
    served: bool = False
    ready_id: int = 0  # the proposal this host validated
    error_id: int = 0  # the desired id that failed here
    error: str | None = None
    digest: str = ""  # what decides a user's variant here (split_digest)
    override: str | None = None  # `revert --local`: who and when; the agent then ignores the fleet


def split_digest(mode: str, key: str, fallback_key: str, whitelist_name: str) -> str:
    """A user's variant depends on these alone (at a given stage): every host must agree on them."""
    return hashlib.sha256(f"{mode}\0{key}\0{fallback_key}\0{whitelist_name}".encode()).hexdigest()[:16]
