"""What is live: the recorded state next to what nginx really serves, and where a user goes. Reads only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import whitelist as whitelist_mod
from ..config import Settings
from ..errors import ConfigError, LbsplitError
from ..model import DEFAULT_FALLBACK_KEY, Mode, Stage
from ..nginx.dialect import forcing_of, include_of, owner_of, reports_stage, unrecorded_off_generation, whitelist_ids
from ..nginx.process import Nginx
from ..nginx.route import Forcing, Route, explain, folded_keys
from . import files
from .state import DamagedFile, StateStore


def _serves_state(answer: dict | None, state, owner: str) -> bool:
    """Does the status page's answer match the state in content (and owner), not only in generation number?"""
    if not isinstance(answer, dict) or state is None:
        return False
    if answer.get("owner") not in (None, owner):
        return False  # another lbsplit config's file, sharing this output_dir
    workers = answer.get("workers")  # the lua runtime: every worker reports the generation it reads
    if workers is not None and not (isinstance(workers, list) and workers and all(w == state.generation for w in workers)):
        return False
    return answer.get("mode") == state.mode and reports_stage(answer, state.generation, state.stage)


def live_status(settings: Settings) -> dict:
    """What is applied, whether nginx serves it, and whether a transaction is unfinished."""
    store = StateStore(settings.state_dir)
    damaged = []
    try:
        state = store.read_state()
    except DamagedFile as e:
        state, damaged = None, [str(e)]
    try:
        journal = store.read_journal()
    except DamagedFile as e:
        journal = None
        damaged.append(str(e))
    in_progress = False
    if journal is not None and store.lock_path.exists():
        probe = files.Lock(store.lock_path, 0, "status")
        try:
            in_progress = not probe.try_acquire()  # held: a command is working now, not interrupted
        except LbsplitError:
            in_progress = False  # cannot open the lock (another user's state_dir): report what the journal says
        probe.release()
    nginx = Nginx(settings.nginx)
    answer = nginx.serving()
    running = nginx.master_pid() is not None or answer is not None
    # A revert that ran while state_dir had no room: its v2-off file is live and newer than the state.
    live_head = (files.read_bytes(settings.nginx.live_file) or b"")[:4000].decode("utf-8", errors="replace")
    off = unrecorded_off_generation(live_head)
    unrecorded = off if off is not None and journal is None and (state is None or off > state.generation) \
        and owner_of(live_head) == store.owner and reports_stage(answer, off, Stage.off()) else None
    return {
        "percent": (state.hundredths / 100 if state.v2_enabled else 0) if state else None,
        "v2_enabled": state.v2_enabled if state else False,
        "mode": state.mode if state else None,
        "generation": state.generation if state else None,
        "applied_at": state.applied_at if state else None,
        "applied_by": state.applied_by if state else None,
        "command": state.command if state else None,
        "runtime": str(settings.nginx.runtime),
        "nginx_running": running,
        "serving_generation": answer.get("generation") if answer else None,
        "serving_answer": answer,
        "serving": running and _serves_state(answer, state, store.owner),
        "owner": store.owner,
        "served_owner": answer.get("owner") if answer else None,
        "unfinished_transaction": journal.command if journal and not in_progress else None,
        "in_progress": journal.command if journal and in_progress else None,
        "damaged": damaged,
        "unrecorded_revert": unrecorded,
    }


def router(settings: Settings, percent: Stage | None, fallback: str | None,
           header_value: str | None = None, cookie_value: str | None = None) -> Callable[[str], Route]:
    """user id -> Route (its variant, and why): under `percent` with the config's whitelist, else as nginx
    serves now. The whitelist is read once, for any number of ids (`route -`). `header_value` and
    `cookie_value`: what the request sends in the QA override's header and cookie."""
    if percent is not None:
        _, split = settings.require_rollout()
        keys = folded_keys(whitelist_mod.load(split).ids)
        forcing = Forcing(split.force_header, split.force_cookie, header_value, cookie_value)
        return lambda user_id: explain(user_id, percent, split.mode, keys, fallback, split.fallback_key, forcing)
    state = StateStore(settings.state_dir).read_state()
    if state is None:
        raise ConfigError("route: nothing is applied yet; pass --percent P to ask about a stage")
    live = (files.read_bytes(settings.nginx.live_file) or b"").decode("utf-8", errors="replace")
    names = forcing_of(live)  # the override the live file holds; a revert's file holds none, so name the config's
    if not state.stage.v2_enabled and names == (None, None) and settings.split is not None:
        names = settings.split.force_header, settings.split.force_cookie
    forcing = Forcing(*names, header_value, cookie_value)
    include = include_of(live)
    if include:  # the whitelist lives in its map file
        live = (files.read_bytes(Path(include)) or b"").decode("utf-8", errors="replace")
    fallback_name = settings.split.fallback_key if settings.split else DEFAULT_FALLBACK_KEY
    keys = folded_keys(whitelist_ids(live))
    return lambda user_id: explain(user_id, state.stage, Mode(state.mode), keys, fallback, fallback_name, forcing)
