"""What the fleet keeps in etcd, as data: the keys under [fleet] prefix and their JSON. Pure.

    <prefix>/desired          the stage every member must serve: uid, stage, phase (proposed/committed)
    <prefix>/hosts/<host>     each agent's report; a host that has one is a *member* until `lbsplit forget`
    <prefix>/alive/<host>     under the agent's lease: the member is *reachable* while etcd keeps the lease
    <prefix>/counts/<host>    under the lease: the host's access-log counts per variant (nginx_log source)
    <prefix>/proposer/<uid>   under the proposing operator's lease: the proposal is live while it exists
    <prefix>/history/<id>     one entry per fleet change, with the per-host result
    <prefix>/watchdog         under the leading watchdog's lease: its host name (its create revision fences it)

Changes are told apart by `uid`, a random id per change, never by a counter alone: an etcd that
lost its data starts its revisions and our counters again at 1. Liveness and staleness are
judged by etcd's leases, never by comparing the wall clocks of different machines.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
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


def proposer_key(prefix: str, uid: str) -> str:
    """Under the proposing operator's lease: gone when that command stopped keeping it alive."""
    return f"{prefix}/proposer/{uid}"


def host_of(key: str) -> str:
    """The host name at the end of a per-host key."""
    return key.rsplit("/", 1)[1]


def new_uid() -> str:
    return secrets.token_hex(8)


def history_key(prefix: str, change: int) -> str:
    return f"{prefix}/history/{change:010d}"


def watchdog_key(prefix: str) -> str:
    return f"{prefix}/watchdog"


def forget_key(prefix: str, change: int, host: str) -> str:
    """The history entry `lbsplit forget HOST` writes (sorted among the changes by its id)."""
    return f"{history_key(prefix, change)}-forget-{host}"


# The folders the keys above live in, for reading all of a kind at once.
def fleet_dir(prefix: str) -> str:
    return f"{prefix}/"


def hosts_dir(prefix: str) -> str:
    return host_key(prefix, "")


def alive_dir(prefix: str) -> str:
    return alive_key(prefix, "")


def counts_dir(prefix: str) -> str:
    return counts_key(prefix, "")


def history_dir(prefix: str) -> str:
    return f"{prefix}/history/"


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
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if isinstance(fields.get("skipped"), list):
            fields["skipped"] = tuple(fields["skipped"])
        return cls(**fields)


@dataclass(frozen=True)
class Desired(_Json):
    """The fleet's desired state. `id` grows by one with every change (for people); `uid` tells changes apart."""

    id: int
    stage: dict
    phase: str
    previous: dict
    uid: str = ""
    command: str = ""
    by: str = ""
    at: str = ""
    reason: str = ""
    force: bool = False  # each host's promotion gate is overridden (apply --force)
    strict: bool = False  # each host's gate also requires soak time and manual checks (promote)
    undo: bool = False  # puts back what was live a moment ago (a failed change's rollback): no gate anywhere
    skipped: tuple = ()  # members left out with --allow-unreachable

    @property
    def target(self) -> Stage:
        return stage_of(self.stage)


@dataclass(frozen=True)
class Report(_Json):
    """One agent's word on its host: what its nginx serves and what it made of the desired state."""

    host: str
    seen: float  # epoch seconds of this report (the agent's clock: for people, never for a decision)
    applied_uid: str = ""  # the desired change this host serves
    applied_id: int = 0  # that change's number, for people
    stage: dict = field(default_factory=lambda: stage_json(Stage.off()))  # what nginx says it serves
    generation: int | None = None  # the host's own lbsplit generation
    served: bool = False  # nginx answers with the generation and the stage lbsplit installed
    ready_uid: str = ""  # the proposal this host validated
    error_uid: str = ""  # the desired change that failed here
    error: dict | None = None  # that failure as data: LbsplitError.to_data()
    digest: str = ""  # what decides a user's variant here (split_digest)
    override: str | None = None  # `revert --local`: who and when; the agent then ignores the fleet
    lease: int = 0  # the agent's lease: counts under another lease are not this member's

    def serves(self, stage: Stage) -> bool:
        """This host's nginx serves `stage` (whatever change put it there)."""
        return self.served and stage_of(self.stage) == stage

    def serves_change(self, desired: "Desired") -> bool:
        """This host serves exactly the desired change: its uid, and its stage as nginx answers it."""
        return self.applied_uid == desired.uid and self.serves(desired.target)


@dataclass(frozen=True)
class Member:
    """A host that has reported: reachable while its agent's lease lives, unreachable otherwise (never gone)."""

    name: str
    reachable: bool
    report: Report | None
    lease: int = 0  # the lease its alive key is under (0: unreachable)

    def last_known(self, now: float) -> str:
        """"last seen serving 30% 4 s ago", for a member whose agent does not answer."""
        if self.report is None:
            return "never reported"
        r = self.report
        what = stage_of(r.stage).describe() if r.served else f"{stage_of(r.stage).describe()} (not verified)"
        return f"last seen serving {what} {max(0.0, now - r.seen):.0f} s ago"


def members(alive: dict[str, int], reports: dict[str, Report]) -> list[Member]:
    """Every member (a host with a report, or one just alive), sorted by name."""
    return [Member(name, name in alive, reports.get(name), alive.get(name, 0))
            for name in sorted(set(alive) | set(reports))]


def counts_problem(data: object, entry_lease: int, member: Member | None) -> str | None:
    """Why a host's published counts are no data (None: they may be summed).

    Only a reachable member's counts, under that member's own lease, with non-negative finite numbers."""
    if member is None:
        return "not a member"
    if not member.reachable or not entry_lease or entry_lease != member.lease:
        return "not under the member's live lease (stale)"
    if not isinstance(data, dict):
        return "not counts"
    for variant in ("v1", "v2"):
        row = data.get(variant)
        if not isinstance(row, list) or len(row) != 5 or not isinstance(row[4], dict):
            return f"malformed {variant} counts"
        numbers = [*row[:4], *row[4].values()]
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) and n >= 0
                   for n in numbers):
            return f"negative or non-finite {variant} counts"
        try:
            if any(not math.isfinite(float(b)) or float(b) < 0 for b in row[4]):
                return f"malformed {variant} latency buckets"
        except ValueError:
            return f"malformed {variant} latency buckets"
        if row[1] > row[0] or row[2] > row[0] or sum(row[4].values()) > row[0]:
            return f"inconsistent {variant} counts (more errors or latencies than requests)"
    return None


def split_digest(mode: str, key: str, fallback_key: str, whitelist_name: str, forcing: str = "") -> str:
    """A user's variant depends on these alone (at a given stage): every host must agree on them.
    `forcing` names the QA override's header and cookie ("" for none: digests from before it stay the same)."""
    text = f"{mode}\0{key}\0{fallback_key}\0{whitelist_name}" + (f"\0{forcing}" if forcing else "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]
