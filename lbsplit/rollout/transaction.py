"""The transaction: lock, validate, render, check, swap, nginx -t, reload, verify; undo on any failure.

Every mutating command (init, apply, revert, promote, the watchdog's revert, repair)
goes through `Transaction`. Named failpoints let the crash tests stop it at each step
on purpose: `LBSPLIT_FAILPOINT=after-swap:kill` makes the process SIGKILL itself right
after the swap (actions: kill, term, term-dropped (SIGTERM from a finalizer, where Python drops
what the handler raises), raise; wait=PATH holds the process there until PATH exists, for tests
that race two commands).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import time
from pathlib import Path
from typing import NoReturn

from .. import timing
from ..stamps import actor, now
from ..config import Settings
from ..errors import (
    ConfigError,
    EnvironmentProblem,
    Interrupted,
    LockBusy,
    LbsplitError,
    NginxTestFailed,
    ReloadFailed,
    StructureError,
    UnfinishedTransaction,
)
from ..model import DEFAULT_MODE, Change, Mode, Runtime, Stage
from ..nginx.dialect import (
    carry_sizing,
    check_shape,
    check_whitelist_text,
    include_of,
    is_whitelist_name,
    header_generation,
    live_stage,
    lua_stage,
    owner_of,
    reports_stage,
    restage,
    STATUS_PATH,
    status_listen_of,
    unrecorded_off_generation,
)
from ..nginx.process import LUA_MODULES, Nginx
from . import files, wlcache
from .planning import Plan, plan, share, whitelist_dir
from .state import Journal, Phase, State, StateStore

FAILPOINT_ENV = "LBSPLIT_FAILPOINT"
# The named steps, in the order a transaction passes them.
STEPS = ("after-lock", "after-include", "after-backup", "after-journal", "after-swap", "after-test", "after-reload",
         "after-verify", "after-state", "after-history")
# The lua runtime's zero-reload path: no nginx -t and no reload; the stage is set live after the swap.
LUA_STEPS = ("after-lock", "after-backup", "after-journal", "after-swap", "after-control", "after-verify",
             "after-state", "after-history")
# nginx -t's words when the lua module is not loaded
LUA_DIRECTIVES = ("lua_shared_dict", "init_by_lua_block", "init_worker_by_lua_block", "rewrite_by_lua_block",
                  "content_by_lua_block")


class _Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)


def failpoint(step: str) -> None:
    """Crash on purpose at `step` when $LBSPLIT_FAILPOINT names it (tests only; a no-op otherwise)."""
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    name, _, action = spec.partition(":")
    if name != step:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
    elif action == "term-dropped":  # SIGTERM inside a finalizer: Python drops what the handler raises there
        _Finalized()
    elif action == "raise":
        raise RuntimeError(f"failpoint {step}")
    elif action.startswith("wait="):  # a barrier for race tests: say "here" (PATH.PID), go on once PATH exists
        barrier = Path(action[len("wait="):])
        Path(f"{barrier}.{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while not barrier.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"failpoint {step}: {barrier} did not appear within 60 s")
            time.sleep(0.01)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Signals:
    """SIGTERM/SIGHUP/SIGINT become Interrupted, so every undo scope runs; after the commit point they wait.

    Once nginx serves the new generation the change has happened: a signal then must not
    claim a rollback. It is remembered, the recording finishes, and the outcome says so.
    """

    WATCHED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self):
        self.committed = False
        self.pending: str | None = None
        self.touched = False  # the live file may have been changed: an interruption undoes it
        self._previous: dict = {}

    def _handler(self, signum, _frame):
        name = signal.Signals(signum).name
        if self.committed or self.pending:
            self.pending = self.pending or name
            return
        self.pending = name  # a second signal during the undo must not interrupt the undo
        self._raise()

    def check(self) -> None:
        """Raise the interruption again when a signal came and the command is still going.

        Python drops an exception raised where nothing can take it (a finalizer, a weakref callback in
        the import machinery; it reports it to sys.unraisablehook): a signal handled there would be
        lost, and the command would carry on. Each step of the transaction before the commit point asks."""
        if self.pending and not self.committed:
            self._raise()

    def _raise(self) -> NoReturn:
        what = "the previous config was put back" if self.touched else "nothing was changed"
        raise Interrupted(f"interrupted by {self.pending}; {what}")

    def __enter__(self) -> "Signals":
        self._previous = {s: signal.signal(s, self._handler) for s in self.WATCHED}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


class Transaction:
    """One mutating command under the lock."""

    def __init__(self, settings: Settings, command: str, reason: str = "", metrics: dict | None = None):
        self.settings = settings
        self.command = command
        self.reason = reason
        self.metrics = metrics
        self.store = StateStore(settings.state_dir)
        self.nginx = Nginx(settings.nginx)
        self.live = settings.nginx.live_file
        self.forced: list[str] = []  # set by the gate's precheck when --force overrides it
        self.preempt = False  # a person's revert ends a holder of the lock instead of waiting for it
        # A revert with no room in state_dir for its journal and record: it still switches the traffic (the
        # live file is in output_dir) and says what it could not record; `repair` records it later.
        self.unrecorded = False

    def lock(self, purpose: str | None = None) -> files.Lock:
        return files.Lock(self.store.lock_path, self.settings.lock_timeout, purpose or self.command,
                          preempt=self.preempt)

    # ---- the undo building blocks
    def _put_back(self, previous: bytes | None) -> None:
        if previous is None:
            files.remove(self.live)
        else:
            files.atomic_write(self.live, previous)

    def _reload_to(self, generation: int | None) -> str:
        """Reload so nginx serves the restored file again; returns a note for the user."""
        master = self.nginx.master_pid()
        if master is None:
            return "nginx is not running"
        old = self.nginx.worker_pids(master)
        try:
            self.nginx.reload(master)
        except LbsplitError as e:
            return f"reloading the previous config failed too: {e}"
        if generation is None:
            return "reloaded the previous config"
        # Asked where the restored file's status server listens: the failed change may have moved it.
        restored = status_listen_of((files.read_bytes(self.live) or b"")[:1 << 16].decode("utf-8", errors="replace"))
        nginx = self.nginx if restored in (None, self.settings.nginx.status_listen) else \
            Nginx(dataclasses.replace(self.settings.nginx, status_listen=restored))
        timeout = self.settings.nginx.verify_timeout
        if nginx.wait_serving(generation, old, timeout) and nginx.wait_settled(generation, timeout):
            return f"nginx serves generation {generation} again"
        return f"nginx does not answer with generation {generation} yet; check `lbsplit status`"

    def _restore_live(self, text: bytes | None) -> str:
        """The lua runtime's undo: set the stage the (restored) live file holds, with no reload."""
        held = live_stage(text.decode("utf-8", errors="replace")) if text else None
        token = self.store.control_token()
        if held is None or token is None:
            return self._reload_to(held[0] if held else None)
        generation, stage = held
        try:
            self.nginx.set_live(generation, stage, token)
        except LbsplitError as e:
            return f"setting the previous stage live failed too: {e}"
        if self.nginx.wait_live(generation, self.settings.nginx.verify_timeout):
            return f"nginx serves generation {generation} again (set live, no reload)"
        return f"nginx does not report generation {generation} from every worker yet; check `lbsplit status`"

    def _undo(self, error: BaseException, previous: bytes | None, restore, what: str) -> NoReturn:
        """Before the commit point: the previous live file back, nginx back to it (`restore`), then re-raise."""
        try:
            if files.read_bytes(self.live) != previous:
                self._put_back(previous)
        except LbsplitError as undo_error:  # the live file is what it was unless both writes failed
            raise UnfinishedTransaction(f"{error}\nputting the previous {self.live} back failed too: {undo_error}; "
                                        "run `lbsplit repair` once the disk is writable") from None
        note = restore()
        self.store.finish()
        if isinstance(error, ReloadFailed):
            raise ReloadFailed(f"{error}\nPrevious {what} restored; {note}") from None
        raise error

    def _next_generation(self, previous: bytes | None) -> int:
        """One above any number used: state, journal, saved generations, and the live file's header (a revert
        that could not record itself numbered that file, and its number is never handed out again)."""
        live = header_generation(previous[:200].decode("utf-8", errors="replace")) if previous else None
        return max(self.store.last_generation(), live or 0) + 1

    def _journal(self, journal: Journal) -> None:
        if not self.unrecorded:
            self.store.begin(journal)

    def _commit(self, generation: int, stage: Stage, data: bytes, running: bool, result: str,
                layout: str | None = None) -> None:
        """Past the commit point: record the change. A failure says nginx has it; repair records it later."""
        if self.unrecorded:
            result += "; recorded later by repair (state_dir was full when it ran)"
        try:
            self._record(generation, stage, data, reloaded=running, command=self.command, note=result, layout=layout)
            self.store.finish()
        except LbsplitError as e:
            where = "nginx serves" if running else "installed"
            if self.unrecorded:
                raise EnvironmentProblem(
                    f"{where} generation {generation} (v2 {stage.describe()}), but state_dir {self.store.dir} has no "
                    f"room to record it ({e}): state.json and the history still name the stage before. Free some "
                    "space there, then run `lbsplit repair` to record this revert") from None
            raise type(e)(f"{where} generation {generation} (v2 {stage.describe()}), but recording it in "
                          f"{self.store.dir} failed: {e}. The next lbsplit command (or `lbsplit repair`) records it") from None

    def _backup(self, previous: bytes, state: State | None) -> None:
        """Keep the live bytes for undo: a hard link to the saved generation when it is the same file."""
        saved = self.store.generations_dir / f"{state.generation}.conf" if state else None
        if saved is not None and state.sha256 == sha256(previous) and files.link_or_copy(saved, self.store.backup_path):
            return
        files.atomic_write(self.store.backup_path, previous)

    # ---- repair
    def repair(self) -> str | None:
        """Finish or undo a transaction that an earlier process did not complete (call under the lock)."""
        # A kill -9 between creating a temp file and renaming it leaves the temp file behind.
        for directory in (self.live.parent, self.store.dir, self.store.generations_dir, whitelist_dir(self.settings),
                          Path(self.settings.nginx.conf).parent):  # the gate's check copy of the site's config
            files.remove_stale_temps(directory)
        journal = self.store.read_journal()
        if journal is None:
            return self._record_unrecorded_revert()
        live = files.read_bytes(self.live)
        if live is not None and sha256(live) == journal.new_sha256 and self._served(journal):
            # It got as far as nginx serving the new generation: record it as done.
            self._record(journal.to_generation, journal.stage, live, reloaded=True, command=journal.command,
                         note="completed after an interruption")
            self.store.finish()
            return (f"finished the interrupted `{journal.command}` "
                    f"(nginx already served generation {journal.to_generation})")
        swapped = live is not None and sha256(live) == journal.new_sha256
        if swapped:
            self._put_back(self._checked_backup(journal))
        if journal.live_set:
            # The stage may have been set live before the crash: nginx reads it from the restored file again.
            restored = files.read_bytes(self.live)
            note = self._restore_live(restored) if self.nginx.master_pid() is not None else "nginx is not running"
        elif not swapped and journal.phase == Phase.SWAPPING:
            note = "the live file was never replaced and nginx never reloaded"
        elif self.nginx.master_pid() is None:
            note = "nginx is not running"
        else:
            note = self._reload_to(journal.previous_generation)
        self.store.append_history(
            {"time": now(), "user": actor(), "command": f"repair ({journal.command})", "from": "?",
             "to": "previous", "generation": journal.previous_generation, "reason": "interrupted transaction",
             "result": f"rolled back: {note}"}
        )
        self.store.finish()
        return f"rolled back the interrupted `{journal.command}` (pid {journal.pid}): {note}"

    def _record_unrecorded_revert(self) -> str | None:
        """A revert that ran with no room in state_dir left a v2-off file newer than the state: record it once
        nginx serves it (its number is the file's). Anything else newer than the state is left for status."""
        live = files.read_bytes(self.live)
        text = live[:4000].decode("utf-8", errors="replace") if live else ""
        generation = unrecorded_off_generation(text)
        state = self.store.read_state_or_none()
        if generation is None or (state is not None and generation <= state.generation) or \
                owner_of(text) != self.store.owner:
            return None
        answer = self.nginx.serving() if self.nginx.master_pid() is not None else None
        if not reports_stage(answer, generation, Stage.off()):
            return None
        self._record(generation, Stage.off(), live, reloaded=True, command="revert",
                     note="applied and verified while state_dir was full; recorded by repair")
        return f"recorded the revert that ran while state_dir was full (nginx serves generation {generation}, v2 off)"

    def _served(self, journal: Journal) -> bool:
        """Does nginx serve the journal's new generation (waiting for a reload it was already asked for)?"""
        if self.nginx.master_pid() is None:
            return False
        if journal.phase == Phase.RELOADING:
            return self.nginx.wait_serving(journal.to_generation, set(), self.settings.nginx.verify_timeout)
        return self.nginx.serving_generation() == journal.to_generation

    def _checked_backup(self, journal: Journal) -> bytes | None:
        """The backup to restore, checked as strictly as apply checks what it installs."""
        if not journal.had_previous:
            return None
        where = f"inspect {self.live}, then remove {self.store.journal_path}"
        backup = files.read_bytes(self.store.backup_path)
        if backup is None:
            raise UnfinishedTransaction(
                f"`{journal.command}` was interrupted and its backup {self.store.backup_path} is gone; {where}")
        if journal.previous_sha256 is not None and sha256(backup) != journal.previous_sha256:
            raise UnfinishedTransaction(
                f"the backup {self.store.backup_path} is not the file `{journal.command}` replaced "
                f"(its checksum differs); {where}")
        text = backup.decode("utf-8", errors="replace")
        try:
            check_shape(text)
        except StructureError as e:
            raise UnfinishedTransaction(f"the backup {self.store.backup_path} is not an lbsplit.conf ({e}); {where}") from None
        return backup

    def _record(self, generation: int, stage: Stage, text: bytes, reloaded: bool, command: str, note: str,
                layout: str | None = None) -> None:
        before = self.store.read_state_or_none()
        if before is None or before.generation != generation:
            self.store.save_generation(generation, text, live=self.live)  # text is what the live file holds now
            self.store.write_state(
                State(
                    generation=generation,
                    v2_enabled=stage.v2_enabled,
                    hundredths=stage.hundredths,
                    mode=str(self.settings.split.mode if self.settings.split else DEFAULT_MODE),
                    applied_at=now(),
                    applied_by=actor(),
                    command=command,
                    sha256=sha256(text),
                    reloaded=reloaded,
                    layout_checked=layout or (before.layout_checked if before else ""),
                )
            )
        failpoint("after-state")
        if self.store.last_history_generation() != generation:  # a repair after a crash must not record twice
            entry = {"time": now(), "user": actor(), "command": command,
                     "from": "none" if before is None else (before.stage_text if before.generation != generation else "?"),
                     "to": stage.describe(), "generation": generation, "reason": self.reason, "result": note}
            if self.metrics:
                entry["metrics"] = self.metrics
            if self.forced:
                entry["forced"] = self.forced  # the gate's failing items a person overrode with --force
            self.store.append_history(entry)
        failpoint("after-history")

    # ---- the transaction
    def run(self, stage: Stage, tolerate_repair_failure: bool = False, lock_held: files.Lock | None = None,
            precheck=None, install_only: bool = False) -> Change:
        """The whole transaction.

        `lock_held`: the caller already holds the lock. `precheck(txn)` runs under the lock
        and may refuse by raising. `install_only` (init): write and check the first file,
        never reload, and do nothing when one is already installed.
        """
        messages: list[str] = []
        self.store.ensure()
        # Validate before waiting for the lock: bad input fails at once and changes nothing.
        with timing.phase("whitelist"):
            prepared = plan(self.settings, stage, remember=True)
        seen = self.store.read_state_or_none() if stage.v2_enabled else None
        with contextlib.ExitStack() as scope:
            signals = scope.enter_context(Signals())
            if lock_held is None:
                lock = scope.enter_context(self.lock())
                if lock.preempted:
                    messages.append(f"preempted {lock.preempted}: a revert does not wait")
            failpoint("after-lock")
            signals.check()
            if stage.v2_enabled:
                self._refuse_widening_past_a_revert(seen, stage)
            try:
                note = self.repair()
            except LbsplitError as e:
                if not tolerate_repair_failure:
                    raise
                note = f"could not repair the interrupted transaction ({e}); reverting anyway"
            if note:
                messages.append(note)
            if precheck is not None:
                with timing.phase("gate"):
                    messages.extend(precheck(self))
                signals.check()
            outcome = self._run_locked(prepared, messages, signals, install_only)
            if signals.pending:
                outcome.messages.append(f"{signals.pending} arrived after nginx already served generation "
                                        f"{outcome.generation}: the change was completed and recorded")
            return outcome

    def _v1_check(self, stage: Stage, messages: list[str]) -> str:
        """After a revert that nginx serves: a few requests to v1 through nginx (the plan's last rollback step).
        A warning at most, never an undo; returns the words for the history's result."""
        if stage.v2_enabled or self.command != "revert":
            return ""
        ok, text = v1_verdict(self.nginx.ask_v1(V1_CHECKS))
        messages.append(text if ok else f"WARNING: {text}; the revert stands (everyone is on v1): check v1 now")
        return f"; {text}"

    def _refuse_widening_past_a_revert(self, seen: State | None, stage: Stage) -> None:
        """A command that started before a revert must never widen after it: re-read, under the lock, what
        is live, and refuse when a revert landed while this command waited."""
        now_state = self.store.read_state_or_none()
        if now_state is None or (seen is not None and now_state.generation == seen.generation):
            return
        if not now_state.v2_enabled and now_state.command.endswith("revert"):
            raise LockBusy(f"a revert (generation {now_state.generation}, by {now_state.applied_by} at "
                           f"{now_state.applied_at}) landed while this command waited; it does not widen past it. "
                           f"Run it again to turn v2 on at {stage.describe()}")

    def _run_locked(self, prepared: Plan, messages: list[str], signals: Signals, install_only: bool) -> Change:
        stage = prepared.stage
        messages.extend(prepared.warnings)
        state = self.store.read_state_or_none()
        previous = files.read_bytes(self.live)
        if install_only and state is not None and previous is not None:
            messages.append(f"{self.live} already exists (generation {state.generation}); nothing to do")
            return Change(state.generation, stage, changed=False, reloaded=False, messages=messages)
        master = None if install_only else self.nginx.master_pid()
        if install_only:
            self._refuse_status_clash()
        if not install_only and self.settings.nginx.runtime == Runtime.LUA:
            zero_reload = self._restaged(prepared, state, previous)
            if zero_reload is not None:
                try:
                    return self._run_live(prepared, zero_reload, state, previous, master, messages, signals)
                except ReloadFailed as e:
                    if stage.v2_enabled:
                        raise
                    # A revert does not give up when the control endpoint refuses (a changed token, a proxy or
                    # rule in front of it): its undo put the file back; now the reload path, which needs none of it.
                    messages.append(f"the lua control endpoint failed ({str(e).splitlines()[0]}); "
                                    "reverting through a reload instead")
                    state, previous = self.store.read_state_or_none(), files.read_bytes(self.live)
        if state is not None and previous is not None and not install_only:
            if prepared.text(state.generation).encode() == previous and (
                master is None or self.nginx.serving_generation() == state.generation
            ):
                messages.append(f"already live: generation {state.generation} (v2 {stage.describe()}); nothing changed")
                return Change(state.generation, stage, changed=False, reloaded=False, messages=messages)
        self._check_owner(previous, stage, messages)
        # A revert is the break-glass: it never waits for a layout check to pass. The check comes before the
        # whitelist's folder is made: a wildcard include that would read that folder is refused first.
        layout = self._check_layout(state, messages) if master is not None and stage.v2_enabled else None
        prepared = self._install_whitelist(prepared)
        failpoint("after-include")
        signals.check()
        generation = self._next_generation(previous)
        with timing.phase("render"):
            data = prepared.checked_text(generation).encode("utf-8")
        if not stage.v2_enabled and previous is not None:
            data = carry_sizing(previous.decode("utf-8", errors="replace"), data.decode("utf-8")).encode("utf-8")
        previous_generation = state.generation if state else None
        reloaded = False

        def reload_step() -> None:
            nonlocal reloaded
            with timing.phase("nginx -t"):
                self._test_or_undo(previous)
            failpoint("after-test")
            if master is not None:
                old = self.nginx.worker_pids(master)
                # Recorded before signalling, so a repair after a crash waits for the reload it sent.
                self._journal(dataclasses.replace(journal, phase=Phase.RELOADING))
                reloaded = True
                with timing.phase("reload"):
                    self.nginx.reload(master)
                failpoint("after-reload")
                with timing.phase("wait"):
                    served = self.nginx.wait_serving(generation, old, self.settings.nginx.verify_timeout)
                if not served:
                    raise ReloadFailed(self._not_served_message(generation))

        def reload_back() -> str:
            return self._reload_to(previous_generation) if reloaded else "nginx was not reloaded"

        journal = self._journal_for(stage, generation, data, previous, previous_generation)
        self._install(journal, data, previous, state, signals, reload_step, reload_back, "config")
        if install_only:
            messages.append(f"wrote {self.live} (generation {generation}, everyone on v1); nothing was reloaded")
            result = "installed, not reloaded"
        elif master is None:
            messages.append(
                f"nginx is not running: installed and checked generation {generation} "
                f"(v2 {stage.describe()}), nothing was reloaded"
            )
            result = "installed; nginx not running, not reloaded"
        else:
            messages.append(f"nginx serves generation {generation}: v2 {stage.describe()} ({share(stage, prepared.inputs.mode)})")
            result = "applied and verified" + self._v1_check(stage, messages)
        self._commit(generation, stage, data, master is not None, result, layout)
        self._tidy(prepared, messages)
        return Change(generation, stage, changed=True, reloaded=master is not None, messages=messages)

    # ---- the one sequence both runtimes share
    def _journal_for(self, stage: Stage, generation: int, data: bytes, previous: bytes | None,
                     previous_generation: int | None, live_set: bool = False) -> Journal:
        return Journal(command=self.command, pid=os.getpid(), started=now(), to_generation=generation,
                       new_sha256=sha256(data), had_previous=previous is not None,
                       previous_generation=previous_generation, stage_v2=stage.v2_enabled,
                       stage_hundredths=stage.hundredths,
                       previous_sha256=sha256(previous) if previous is not None else None, live_set=live_set)

    def _install(self, journal: Journal, data: bytes, previous: bytes | None, state: State | None,
                 signals: Signals, step, restore, what: str) -> None:
        """Backup -> journal -> swap -> the runtime's `step` (nginx -t + reload + wait, or set live + wait);
        on any failure before the commit point, the previous file back and `restore()` puts nginx back to it.

        Backup first, then the journal, then the swap: a crash at any point leaves either no journal
        (nothing touched) or a journal with a backup to return to."""
        self._check_space(len(data))
        if previous is not None and not self.unrecorded:
            self._backup(previous, state)
        failpoint("after-backup")
        signals.check()
        signals.touched = True
        self._journal(journal)
        try:
            failpoint("after-journal")
            files.ensure_dir(self.live.parent)
            files.atomic_write(self.live, data)
            failpoint("after-swap")
            step()
            signals.check()  # a signal Python dropped on the way still undoes the change
            signals.committed = True  # nginx serves it (or is not running): from here on, finish
        except BaseException as e:
            self._undo(e, previous, restore, what)
        failpoint("after-verify")

    # ---- the lua runtime's zero-reload path
    def _restaged(self, prepared: Plan, state: State | None, previous: bytes | None):
        """generation -> the new file, when only the live file's stage lines change; else None (reload path).

        The live file must be the lua-runtime file lbsplit recorded, with this state_dir's token
        and its whitelist file in place. A revert needs no valid [split] or v2: it restages the
        live file. A wider change must render to the same file but for the stage lines.
        """
        if state is None or previous is None or sha256(previous) != state.sha256:
            return None
        text = previous.decode("utf-8", errors="replace")
        digest = self.store.token_digest()
        if live_stage(text) is None or owner_of(text) != self.store.owner or f'"{digest}"' not in text:
            return None
        include = include_of(text)
        if include and not Path(include).is_file():
            return None  # the reload path writes it again
        stage, mode = prepared.stage, Mode(state.mode)
        if not stage.v2_enabled:
            return lambda generation: restage(text, generation, stage, mode)
        if not prepared.lua or restage(text, state.generation, stage, mode) != prepared.text(state.generation):
            return None
        return prepared.text

    def _run_live(self, prepared: Plan, new_text, state: State, previous: bytes, master: int | None,
                  messages: list[str], signals: Signals) -> Change:
        """Write the restaged file, then set its stage live through the control endpoint: no nginx -t, no reload."""
        stage = prepared.stage
        if new_text(state.generation).encode() == previous and (
                master is None or reports_stage(self.nginx.serving(), state.generation, stage)):
            messages.append(f"already live: generation {state.generation} (v2 {stage.describe()}); nothing changed")
            return Change(state.generation, stage, changed=False, reloaded=False, messages=messages)
        token = self.store.control_token()
        generation = self._next_generation(previous)
        data = new_text(generation).encode("utf-8")

        def live_step() -> None:
            if master is not None:
                with timing.phase("set live"):
                    self.nginx.set_live(generation, lua_stage(stage), token)
                failpoint("after-control")
                with timing.phase("wait"):
                    if not self.nginx.wait_live(generation, self.settings.nginx.verify_timeout):
                        raise ReloadFailed(f"nginx did not report generation {generation} from every worker within "
                                           f"{self.settings.nginx.verify_timeout:g}s")

        def live_back() -> str:
            return self._restore_live(previous) if master is not None else "nginx is not running"

        journal = self._journal_for(stage, generation, data, previous, state.generation, live_set=True)
        self._install(journal, data, previous, state, signals, live_step, live_back, "stage")
        if master is None:
            messages.append(f"nginx is not running: wrote generation {generation} (v2 {stage.describe()}); "
                            "nginx starts at that stage")
            result = "installed; nginx not running"
        else:
            messages.append(f"nginx serves generation {generation}: v2 {stage.describe()} "
                            f"({share(stage, prepared.inputs.mode)}), set live with no reload")
            result = "set live (lua runtime, no reload)" + self._v1_check(stage, messages)
        self._commit(generation, stage, data, master is not None, result)
        return Change(generation, stage, changed=True, reloaded=False, messages=messages)

    def _install_whitelist(self, prepared: Plan) -> Plan:
        """Write the whitelist's map file unless it is there already (its name is its content)."""
        resolved = prepared.whitelist
        if resolved is None or resolved.file is None:
            return prepared
        folder = whitelist_dir(self.settings)
        if (folder / resolved.file.name).is_file():
            return prepared
        if resolved.file.text is None:  # the cache named a file that vanished since: build it again
            prepared = plan(self.settings, prepared.stage, use_cache=False, remember=True)
            resolved = prepared.whitelist
        check_whitelist_text(resolved.file.text, resolved.file.size)
        files.ensure_dir(folder)
        files.atomic_write(folder / resolved.file.name, resolved.file.text)
        return prepared

    def _tidy(self, prepared: Plan, messages: list[str]) -> None:
        """After a change: remember the validated whitelist, remove map files nothing refers to any more."""
        try:
            if prepared.whitelist is not None and not prepared.whitelist.from_cache:
                wlcache.remember(self.store.dir, prepared.whitelist)
            folder = whitelist_dir(self.settings)
            if not folder.is_dir():
                return
            keep = set()
            for path in [self.live, self.store.backup_path, *self.store.generations_dir.glob("*.conf")]:
                try:
                    with open(path, "rb") as f:
                        head = f.read(1 << 20).decode("utf-8", errors="replace")
                except OSError:
                    continue
                include = include_of(head)
                if include:
                    keep.add(Path(include).name)
            for path in folder.iterdir():
                if is_whitelist_name(path.name) and path.name not in keep:
                    files.remove(path)
        except (LbsplitError, OSError) as e:
            messages.append(f"note: tidying {whitelist_dir(self.settings)} failed ({e}); nothing depends on it")

    def layout_key(self) -> str:
        """What one `nginx -T` check vouches for: this config file, this lbsplit.conf, this status address."""
        return f"{self.settings.nginx.conf}|{self.live}|{self.settings.nginx.status_listen}" + (
            "|keepalive" if self.settings.pooling.keepalive else "")  # then also: is HTTP/1.1 to upstreams set?

    def _check_layout(self, state: State | None, messages: list[str]) -> str | None:
        """Once per layout: nginx includes lbsplit.conf, and no other server listens on status_listen."""
        key = self.layout_key()
        if state is not None and state.layout_checked == key:
            return key
        dump = self.nginx.dump()
        if dump is None:
            return None  # nginx -t below reports why the config does not load
        if not dump.includes(self.live):
            raise ConfigError(
                f"nginx.output_dir: {self.settings.nginx.conf} does not include {self.live}, so nginx would never "
                f"serve it; add `include {self.live};` inside its http {{ }} block and run `nginx -s reload` once")
        folder = whitelist_dir(self.settings)
        globbed = dump.glob_reading(folder)
        if globbed:
            raise ConfigError(
                f"nginx.output_dir: {self.settings.nginx.output_dir} is read by a wildcard include ({globbed[0]}), "
                f"which would load lbsplit's folder {folder.name}/ as a config file (nginx -t: Is a directory); "
                "give lbsplit an output_dir of its own that no wildcard include reads (e.g. /etc/nginx/lbsplit) "
                "and include its lbsplit.conf by name; nothing was changed")
        self._refuse_status_clash(dump)
        if self.settings.pooling.keepalive and not dump.http11:
            messages.append(
                f"WARNING: upstreams.keepalive = {self.settings.pooling.keepalive}, but no location of your nginx config "
                "sets `proxy_http_version 1.1;` (and `proxy_set_header Connection \"\";`): nginx then opens a new "
                "connection per request anyway; include lbsplit-proxy.conf in the location (`lbsplit snippet proxy`)")
        if self.settings.nginx.runtime == Runtime.LUA:
            for where in dump.own_lua_rewrites(self.live)[:5]:
                messages.append(
                    f"WARNING: {where} has its own rewrite_by_lua handler, which replaces lbsplit's: requests there "
                    "all go to v1 unless that handler first calls lbsplit_rewrite()")
        return key

    def _refuse_status_clash(self, dump=None) -> None:
        """No server of the site may listen on status_listen: with reuseport, lbsplit's status page would
        answer some of the site's connections. `init` checks it too (its config need not include us yet)."""
        dump = dump or self.nginx.dump()
        clashes = dump.clashes(self.settings.nginx.status_listen, self.live) if dump else []
        if clashes:
            raise ConfigError(
                f"nginx.status_listen: {self.settings.nginx.status_listen} is taken by your own server "
                f"({'; '.join(clashes[:3])}); lbsplit's status page would answer there instead of your site. "
                "Pick a free loopback port, e.g. 127.0.0.1:9181; nothing was changed")

    def _check_owner(self, previous: bytes | None, stage: Stage, messages: list[str]) -> None:
        """One output_dir, one lbsplit config: refuse to overwrite a file another state_dir manages."""
        if previous is None:
            return
        theirs = owner_of(previous[:4000].decode("utf-8", errors="replace"))
        if theirs is None or theirs == self.store.owner:
            return
        problem = (f"{self.live} is managed by another lbsplit config (owner {theirs}; this config's state_dir "
                   f"{self.store.dir} is {self.store.owner}): two configs must not share one nginx.output_dir")
        if stage.v2_enabled:
            raise ConfigError(f"nginx.output_dir: {problem}; give each config its own output_dir (if you moved "
                              "state_dir, remove the file and run `lbsplit init`)")
        messages.append(f"WARNING: {problem}; reverting it anyway (everyone on v1)")

    def _check_space(self, size: int) -> None:
        """Fail before the point of no return when state_dir cannot hold the record of the change."""
        try:
            st = os.statvfs(self.store.dir)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if self.command == "revert":
            # The break-glass needs what it writes, no margin: a backup and a saved copy of a small file, the
            # journal, state and a history line. A nearly full disk must not keep v2 on: with less than that,
            # it runs without a journal or record (the live file is in output_dir) and says so at the end.
            needed = 2 * size + (64 << 10)
            self.unrecorded = free < needed
            return
        else:
            needed = size + (1 << 20)  # backup (often a hard link) + state + history + journal, with room to spare
        if free < needed:
            raise EnvironmentProblem(f"state_dir {self.store.dir} has {free // 1024} KiB free; recording this change "
                                     f"needs about {needed // 1024} KiB. Free some space; nothing was changed")

    def _test_or_undo(self, previous: bytes | None) -> None:
        try:
            self.nginx.test()
        except NginxTestFailed as e:
            self._put_back(previous)
            if self.settings.nginx.runtime == Runtime.LUA and any(
                    f'unknown directive "{d}"' in str(e) for d in LUA_DIRECTIVES):
                raise ConfigError(
                    "nginx.runtime: \"lua\" needs nginx's lua module, and this nginx does not load it (nothing was "
                    "changed). Install it with `apt-get install libnginx-mod-http-lua` (it enables itself for the "
                    f"system nginx), or add to the main context of {self.settings.nginx.conf}: "
                    f"`load_module {LUA_MODULES}/ndk_http_module.so; load_module {LUA_MODULES}/ngx_http_lua_module.so;`"
                    ". Or set nginx.runtime = \"reload\"") from None
            sizing = next((d for d in ("map_hash_bucket_size", "map_hash_max_size")
                           if f'"{d}" directive is duplicate' in str(e)), None)
            if sizing:  # nginx's bare "is duplicate" does not say which of the two lines to drop
                raise NginxTestFailed(
                    f"your nginx config sets {sizing} at http level, and so does lbsplit.conf, sized for this "
                    f"whitelist; remove your {sizing} line (lbsplit's value is at least what the whitelist needs); "
                    f"nothing was changed. nginx said:\n{e}") from None
            if previous is None:
                raise NginxTestFailed(f"nginx -t rejected the config with lbsplit.conf in place:\n{e}") from None
            try:
                self.nginx.test()
            except NginxTestFailed:
                raise NginxTestFailed(
                    "nginx -t fails even with the previous lbsplit.conf, so the problem is elsewhere in your "
                    f"nginx config; nothing was changed. nginx said:\n{e}"
                ) from None
            raise NginxTestFailed(f"nginx -t rejected the new config (previous config still live):\n{e}") from None

    def _not_served_message(self, generation: int) -> str:
        seen = self.nginx.serving_generation()
        where = f"http://{self.settings.nginx.status_listen}{STATUS_PATH}"
        if seen is None:
            return (
                f"nginx reloaded but nothing answers at {where} within {self.settings.nginx.verify_timeout:g}s; "
                f"is `include {self.live};` in your nginx config at http level, and is that port free?"
            )
        return (
            f"nginx still serves generation {seen} after {self.settings.nginx.verify_timeout:g}s, not {generation}; "
            "the reload did not take effect (nginx's error log says why, e.g. a port in use)"
        )


V1_CHECKS = 5  # requests a revert sends to v1 through nginx


def v1_verdict(codes: list[str]) -> tuple[bool, str]:
    """(v1 healthy?, "v1 answers through nginx: 5/5 (200 x5)"): an answer below 500 counts, none or 5xx does not."""
    good = [c for c in codes if c.isdigit() and int(c) < 500]
    counted = {}
    for c in codes:
        counted[c or "no answer"] = counted.get(c or "no answer", 0) + 1
    detail = ", ".join(f"{c} x{n}" for c, n in sorted(counted.items()))
    return len(good) == len(codes), f"v1 answers through nginx: {len(good)}/{len(codes)} ({detail})"


def init(settings: Settings) -> Change:
    """`lbsplit init`: the transaction in install-only mode (v1 only, checked, never reloaded)."""
    return Transaction(settings, "init", "first install").run(Stage.off(), install_only=True)


def revert(settings: Settings, reason: str = "") -> Change:
    """`lbsplit revert`: v2 off, even when an interrupted transaction cannot be repaired."""
    live = files.read_bytes(settings.nginx.live_file)
    serving_at = status_listen_of(live.decode("utf-8", errors="replace")) if live else None
    moved = serving_at is not None and serving_at != settings.nginx.status_listen
    if moved:
        # The break-glass does not move lbsplit's status server: a new address may be one the site listens on
        # (checked only at apply), and the revert would then wait on an answer that never comes.
        settings = dataclasses.replace(settings, nginx=dataclasses.replace(settings.nginx, status_listen=serving_at))
    txn = Transaction(settings, "revert", reason)
    txn.preempt = True
    outcome = txn.run(Stage.off(), tolerate_repair_failure=True)
    if moved:
        outcome.messages.append(f"nginx.status_listen: kept the live {serving_at} for this revert; the next apply "
                                "moves it to the configured address (and checks that it is free)")
    return outcome


def repair(settings: Settings) -> str:
    """`lbsplit repair`: finish or roll back an interrupted transaction, under the lock."""
    txn = Transaction(settings, "repair")
    txn.store.ensure()
    with txn.lock():
        return txn.repair() or "nothing to repair"


