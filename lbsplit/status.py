"""What `lbsplit status` reports: the recorded state next to what nginx really serves. Reads only."""

from __future__ import annotations

from . import files
from .config import Settings
from .errors import LbsplitError
from .nginx import Nginx
from .state import StateStore


def live_status(settings: Settings) -> dict:
    """What is applied, whether nginx serves it, and whether a transaction is unfinished."""
    store = StateStore(settings.state_dir)
    state = store.read_state()
    journal = store.read_journal()
    in_progress = False
    if journal is not None and store.lock_path.exists():
        probe = files.Lock(store.lock_path, 0, "status")
        try:
            in_progress = not probe.try_acquire()  # held: a command is working now, not interrupted
        except LbsplitError:
            in_progress = False  # cannot open the lock (another user's state_dir): report what the journal says
        probe.release()
    nginx = Nginx(settings.nginx)
    running = nginx.master_pid() is not None
    serving = nginx.serving_generation() if running else None
    return {
        "percent": (state.hundredths / 100 if state.v2_enabled else 0) if state else None,
        "v2_enabled": state.v2_enabled if state else False,
        "mode": state.mode if state else None,
        "generation": state.generation if state else None,
        "applied_at": state.applied_at if state else None,
        "applied_by": state.applied_by if state else None,
        "command": state.command if state else None,
        "nginx_running": running,
        "serving_generation": serving,
        "serving": bool(state) and running and serving == state.generation,
        "unfinished_transaction": journal.command if journal and not in_progress else None,
        "in_progress": journal.command if journal and in_progress else None,
    }
