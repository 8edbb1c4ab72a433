"""Hooks: the user's commands around a change (a smoke test before promoting, a cache flush after a revert).

Each hook is an argv list run without a shell, with a timeout, and with the change in its
environment (LBSPLIT_EVENT, LBSPLIT_STAGE, LBSPLIT_FROM, LBSPLIT_GENERATION, LBSPLIT_REASON).
Its exit code and last lines of output go into the history. A hook never blocks or undoes a
revert; only pre_promote can refuse (a promotion).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from ..config import Settings
from ..errors import LbsplitError
from ..rollout.state import StateStore
from ..stamps import actor, now

TAIL_LINES = 5


@dataclass(frozen=True)
class HookResult:
    name: str
    argv: tuple[str, ...]
    code: int | None  # None: it could not start, or timed out
    tail: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        what = "timed out or could not start" if self.code is None else f"exited {self.code}"
        return f"hook {self.name} ({self.argv[0]}) {what}" + (f": {self.tail}" if self.tail else "")


def run(settings: Settings, name: str, env: dict[str, str]) -> HookResult | None:
    """Run hook `name` if configured, record it in the history, and return what it did."""
    argv = getattr(settings.hooks, name)
    if not argv:
        return None
    full_env = {**os.environ, **{f"LBSPLIT_{k.upper()}": str(v) for k, v in env.items()}, "LBSPLIT_EVENT": name}
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=settings.hooks.timeout,
                              env=full_env, stdin=subprocess.DEVNULL, check=False)
        code, output = done.returncode, (done.stdout + done.stderr)
    except subprocess.TimeoutExpired as e:
        code, output = None, f"timed out after {settings.hooks.timeout:g}s " + str(e.stdout or "")
    except OSError as e:
        code, output = None, f"cannot run: {e.strerror}"
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-TAIL_LINES:] if line.strip())[:500]
    result = HookResult(name, tuple(argv), code, tail)
    try:
        StateStore(settings.state_dir).append_history(
            {"time": now(), "user": actor(), "command": f"hook {name}", "from": env.get("from", ""),
             "to": env.get("stage", ""), "generation": env.get("generation"), "reason": env.get("reason", ""),
             "result": "ok" if result.ok else result.describe(), "exit_code": code, "output": tail})
    except LbsplitError:  # the record is a courtesy; a full disk must not turn a hook into a crash
        pass
    return result
