"""The transaction: lock, validate, render, check, swap, nginx -t, reload, verify; undo on any failure."""

from __future__ import annotations

import contextlib
import difflib
import dataclasses
import functools
import datetime as dt
import getpass
import hashlib
import json
import os
import re
import signal
from dataclasses import dataclass, field

from . import files, structure, whitelist as whitelist_mod
from .config import Settings
from .errors import LbsplitError, NginxTestFailed, ReloadFailed, UnfinishedTransaction
from .model import Stage, parse_percent
from .nginx import Nginx
from .render import RenderInput, render
from .state import Journal, State, StateStore


class Interrupted(LbsplitError):
    """A signal stopped the command; the undo scope has put the previous config back."""

    exit_code = 130


@dataclass
class Outcome:
    """What a mutating command did, for the CLI to print."""

    generation: int
    stage: Stage
    changed: bool
    reloaded: bool
    messages: list[str] = field(default_factory=list)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def actor() -> str:
    """Who runs the command: the sudo caller when there is one."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def signals_raise():
    """Turn SIGTERM/SIGHUP/SIGINT into an exception so every undo scope runs."""

    def handler(signum, _frame):
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}; the previous config was put back")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


GENERATION_MARKER = "\0generation\0"


@dataclass(frozen=True)
class Plan:
    """A validated stage, ready to render for any generation number."""

    stage: Stage
    inputs: RenderInput
    warnings: tuple[str, ...]

    @functools.cached_property
    def _template(self) -> str:
        # Rendered once; the generation is filled in by a plain replace. The marker holds
        # NUL bytes, which no validated id, server or key can contain.
        return render(dataclasses.replace(self.inputs, generation=GENERATION_MARKER))

    def text(self, generation: int) -> str:
        return self._template.replace(GENERATION_MARKER, str(generation))

    def checked_text(self, generation: int) -> str:
        """The text, parsed back and checked for shape: what apply installs."""
        text = self.text(generation)
        structure.check(text, len(self.inputs.whitelist))
        return text


def plan(settings: Settings, stage: Stage) -> Plan:
    """Validate everything the stage needs. Touches nothing."""
    if stage.v2_enabled:
        v2, split = settings.require_rollout()
        wl = whitelist_mod.load(split)
        ids, warnings, mode, key, fallback = wl.ids, wl.warnings, split.mode, split.key, split.fallback_key
    else:
        # A revert needs nothing but v1: a broken [split], v2 or whitelist file must not stop it.
        v2, ids, warnings = (), (), ()
        split = settings.split
        mode = split.mode if split else "hash"
        key = split.key if split else "$http_x_user_id"
        fallback = split.fallback_key if split else "$remote_addr"
    inputs = RenderInput(
        generation=0,
        stage=stage,
        mode=mode,
        key=key,
        fallback_key=fallback,
        v1=settings.v1,
        v2=v2,
        whitelist=ids,
        status_listen=settings.nginx.status_listen,
    )
    return Plan(stage=stage, inputs=inputs, warnings=tuple(warnings))


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
            self.nginx.reload()
        except LbsplitError as e:
            return f"reloading the previous config failed too: {e}"
        if generation is None:
            return "reloaded the previous config"
        if self.nginx.wait_serving(generation, old, self.settings.nginx.verify_timeout):
            return f"nginx serves generation {generation} again"
        return f"nginx does not answer with generation {generation} yet; check `lbsplit status`"

    def _backup(self, previous: bytes, state: State | None) -> None:
        """Keep the live bytes for undo: a hard link to the saved generation when it is the same file."""
        saved = self.store.generations_dir / f"{state.generation}.conf" if state else None
        if saved is not None and state.sha256 == sha256(previous) and files.link_or_copy(saved, self.store.backup_path):
            return
        files.atomic_write(self.store.backup_path, previous)

    # ---- repair
    def repair(self) -> str | None:
        """Finish or undo a transaction that an earlier process did not complete."""
        # A kill -9 between creating a temp file and renaming it leaves the temp file behind.
        for directory in (self.live.parent, self.store.dir, self.store.generations_dir):
            files.remove_stale_temps(directory)
        journal = self.store.read_journal()
        if journal is None:
            return None
        live = files.read_bytes(self.live)
        if live is not None and sha256(live) == journal.new_sha256:
            master = self.nginx.master_pid()
            if master is not None and self.nginx.serving_generation() == journal.to_generation:
                # It got as far as nginx serving the new generation: record it as done.
                self._record(journal.to_generation, _stage_from_text(live), live, reloaded=True,
                             command=journal.command, note="completed after an interruption")
                self.store.finish()
                return f"finished the interrupted `{journal.command}` (nginx already served generation {journal.to_generation})"
            backup = files.read_bytes(self.store.backup_path) if journal.had_previous else None
            if journal.had_previous and backup is None:
                raise UnfinishedTransaction(
                    f"`{journal.command}` was interrupted and its backup {self.store.backup_path} is gone; "
                    f"inspect {self.live}, then remove {self.store.journal_path}"
                )
            self._put_back(backup)
        note = self._reload_to(journal.previous_generation) if self.nginx.master_pid() else "nginx is not running"
        self.store.append_history(
            {"time": now(), "user": actor(), "command": f"repair ({journal.command})", "from": "?",
             "to": "previous", "generation": journal.previous_generation, "reason": "interrupted transaction",
             "result": f"rolled back: {note}"}
        )
        self.store.finish()
        return f"rolled back the interrupted `{journal.command}` (pid {journal.pid}): {note}"

    def _record(self, generation: int, stage: Stage, text: bytes, reloaded: bool, command: str, note: str) -> None:
        before = self.store.read_state()
        self.store.save_generation(generation, text, live=self.live)  # text is what the live file holds now
        self.store.write_state(
            State(
                generation=generation,
                v2_enabled=stage.v2_enabled,
                hundredths=stage.hundredths,
                mode=(self.settings.split.mode if self.settings.split else "hash"),
                applied_at=now(),
                applied_by=actor(),
                command=command,
                sha256=sha256(text),
                reloaded=reloaded,
            )
        )
        entry = {"time": now(), "user": actor(), "command": command,
                 "from": before.stage_text if before else "none", "to": stage.describe(),
                 "generation": generation, "reason": self.reason, "result": note}
        if self.metrics:
            entry["metrics"] = self.metrics
        self.store.append_history(entry)

    # ---- the transaction
    def run(self, stage: Stage, tolerate_repair_failure: bool = False, lock_held: files.Lock | None = None,
            precheck=None) -> Outcome:
        """The whole transaction. `lock_held`: the caller already holds the lock; `precheck(txn)` runs under it."""
        messages: list[str] = []
        self.store.ensure()
        # Validate before waiting for the lock: bad input fails at once and changes nothing.
        prepared = plan(self.settings, stage)
        lock = lock_held or files.Lock(self.store.lock_path, self.settings.lock_timeout, self.command)
        with contextlib.ExitStack() as scope:
            if lock_held is None:
                scope.enter_context(lock)
            scope.enter_context(signals_raise())
            try:
                note = self.repair()
            except LbsplitError as e:
                if not tolerate_repair_failure:
                    raise
                note = f"could not repair the interrupted transaction ({e}); reverting anyway"
            if note:
                messages.append(note)
            if precheck is not None:
                messages.extend(precheck(self))
            return self._run_locked(prepared, messages)

    def _run_locked(self, prepared: Plan, messages: list[str]) -> Outcome:
        stage = prepared.stage
        messages.extend(prepared.warnings)
        state = self.store.read_state()
        previous = files.read_bytes(self.live)
        master = self.nginx.master_pid()
        if state is not None and previous is not None:
            if prepared.text(state.generation).encode() == previous and (
                master is None or self.nginx.serving_generation() == state.generation
            ):
                messages.append(f"already live: generation {state.generation} (v2 {stage.describe()}); nothing changed")
                return Outcome(state.generation, stage, changed=False, reloaded=False, messages=messages)
        generation = self.store.last_generation() + 1
        data = prepared.checked_text(generation).encode("utf-8")
        previous_generation = state.generation if state else None

        # Backup first, then the journal, then the swap: a crash at any point leaves
        # either no journal (nothing touched) or a journal with a backup to return to.
        if previous is not None:
            self._backup(previous, state)
        self.store.begin(
            Journal(command=self.command, pid=os.getpid(), started=now(), to_generation=generation,
                    new_sha256=sha256(data), had_previous=previous is not None,
                    previous_generation=previous_generation)
        )
        files.ensure_dir(self.live.parent)
        reloaded = False
        try:
            files.atomic_write(self.live, data)
            self._test_or_undo(previous)
            master = self.nginx.master_pid()
            if master is not None:
                old = self.nginx.worker_pids(master)
                reloaded = True
                self.nginx.reload()
                if not self.nginx.wait_serving(generation, old, self.settings.nginx.verify_timeout):
                    raise ReloadFailed(self._not_served_message(generation))
        except BaseException as e:
            self._put_back(previous)
            note = self._reload_to(previous_generation) if reloaded else "nginx was not reloaded"
            self.store.finish()
            if isinstance(e, ReloadFailed):
                raise ReloadFailed(f"{e}\nPrevious config restored; {note}") from None
            raise

        if master is None:
            messages.append(
                f"nginx is not running: installed and checked generation {generation} "
                f"(v2 {stage.describe()}), nothing was reloaded"
            )
            result = "installed; nginx not running, not reloaded"
        else:
            messages.append(f"nginx serves generation {generation}: v2 {stage.describe()}")
            result = "applied and verified"
        self._record(generation, stage, data, reloaded=master is not None, command=self.command, note=result)
        self.store.finish()
        return Outcome(generation, stage, changed=True, reloaded=master is not None, messages=messages)

    def _test_or_undo(self, previous: bytes | None) -> None:
        try:
            self.nginx.test()
        except NginxTestFailed as e:
            self._put_back(previous)
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
        where = f"http://{self.settings.nginx.status_listen}/lbsplit/status"
        if seen is None:
            return (
                f"nginx reloaded but nothing answers at {where} within {self.settings.nginx.verify_timeout:g}s; "
                f"is `include {self.live};` in your nginx config at http level, and is that port free?"
            )
        return (
            f"nginx still serves generation {seen} after {self.settings.nginx.verify_timeout:g}s, not {generation}; "
            "the reload did not take effect (nginx's error log says why, e.g. a port in use)"
        )


def _stage_from_text(text: bytes) -> Stage:
    """Recover the stage from a rendered file's status line (used only when repairing)."""
    match = re.search(rb"return 200 '(\{.*\})\\n';", text)
    if not match:
        return Stage.off()
    status = json.loads(match.group(1))
    if not status.get("v2"):
        return Stage.off()
    return Stage.at(parse_percent(str(status["percent"])))


def install_only(settings: Settings) -> Outcome:
    """`lbsplit init`: write the v1-only file and check it, without reloading."""
    txn = Transaction(settings, "init", "first install")
    txn.store.ensure()
    with files.Lock(txn.store.lock_path, settings.lock_timeout, "init"):
        txn.repair()
        previous = files.read_bytes(txn.live)
        state = txn.store.read_state()
        if previous is not None and state is not None:
            return Outcome(state.generation, Stage.off(), changed=False, reloaded=False,
                           messages=[f"{txn.live} already exists (generation {state.generation}); nothing to do"])
        generation = txn.store.last_generation() + 1
        data = plan(settings, Stage.off()).checked_text(generation).encode()
        files.ensure_dir(txn.live.parent)
        files.atomic_write(txn.live, data)
        try:
            txn.nginx.test()
        except NginxTestFailed as e:
            txn._put_back(previous)
            raise NginxTestFailed(f"nginx -t rejected the config with lbsplit.conf in place:\n{e}") from None
        txn._record(generation, Stage.off(), data, reloaded=False, command="init", note="installed, not reloaded")
        return Outcome(generation, Stage.off(), changed=True, reloaded=False,
                       messages=[f"wrote {txn.live} (generation {generation}, everyone on v1); nothing was reloaded"])


@dataclass(frozen=True)
class DryRun:
    diff: str
    warnings: tuple[str, ...]


def dry_run_diff(settings: Settings, stage: Stage) -> DryRun:
    """A unified diff of the live file against what apply would write. Touches nothing."""
    prepared = plan(settings, stage)
    live = settings.nginx.live_file
    new = prepared.checked_text(StateStore(settings.state_dir).last_generation() + 1)
    old = (files.read_bytes(live) or b"").decode("utf-8", errors="replace")
    diff = "".join(
        difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{live} (live)", f"{live} (apply {stage.describe()})")
    )
    return DryRun(diff or "no difference\n", prepared.warnings)
