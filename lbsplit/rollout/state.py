"""state_dir: current state, history lines, saved generations, the unfinished-transaction journal.

The only code that knows state_dir's layout. A damaged file (torn, empty, not ours) is
reported as DamagedFile naming it and the fix; it never surfaces as a traceback.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UnfinishedTransaction
from ..model import Mode, Stage
from . import files

KEEP_GENERATIONS = 5  # a 1M-id whitelist makes each one ~57 MB
HISTORY_TAIL = 64 << 10  # bytes of history.jsonl read to find its newest entry


class DamagedFile(UnfinishedTransaction):
    """A file in state_dir cannot be read back; the message names it and what to do."""


@dataclass(frozen=True)
class State:
    """What lbsplit last installed."""

    generation: int
    v2_enabled: bool
    hundredths: int
    mode: str
    applied_at: str
    applied_by: str
    command: str
    sha256: str
    reloaded: bool  # False when nginx was not running at install time
    layout_checked: str = ""  # what `nginx -T` last vouched for (Transaction.layout_key): include and listens

    @property
    def stage(self) -> Stage:
        return Stage.at(self.hundredths) if self.v2_enabled else Stage.off()

    @property
    def stage_text(self) -> str:
        return self.stage.describe()


class Phase:
    """How far a transaction got, as its journal records it."""

    SWAPPING = "swapping"  # the new file may be in place; nginx was not asked to reload
    RELOADING = "reloading"  # nginx was asked to reload to the new file


@dataclass(frozen=True)
class Journal:
    """Written before the live file is touched, removed once state and history are recorded."""

    command: str
    pid: int
    started: str
    to_generation: int
    new_sha256: str
    had_previous: bool  # False: there was no live file before; undo removes it
    previous_generation: int | None
    stage_v2: bool = False  # the target stage, so repair never has to parse it out of the file
    stage_hundredths: int = 0
    previous_sha256: str | None = None  # what the backup must hash to before repair restores it
    phase: str = Phase.SWAPPING
    live_set: bool = False  # the lua runtime's path: the stage is set live, nginx is not reloaded

    @property
    def stage(self) -> Stage:
        return Stage.at(self.stage_hundredths) if self.stage_v2 else Stage.off()


def _load(cls, raw: bytes, path: Path, what_to_do: str):
    """A dataclass from a JSON file; DamagedFile when it is torn, not an object or of the wrong shape."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if not isinstance(data, dict) or not required <= data.keys():
        raise DamagedFile(f"{path} is damaged (empty, torn or not lbsplit's); {what_to_do}")
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except (TypeError, ValueError):
        raise DamagedFile(f"{path} is damaged (a field has the wrong type); {what_to_do}") from None


class StateStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)

    @property
    def owner(self) -> str:
        """This state_dir's mark in the files it renders: two configs sharing one output_dir are told apart."""
        return hashlib.sha256(str(self.dir.resolve()).encode()).hexdigest()[:12]

    # paths
    @property
    def lock_path(self) -> Path:
        return self.dir / "lock"

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def history_path(self) -> Path:
        return self.dir / "history.jsonl"

    @property
    def journal_path(self) -> Path:
        return self.dir / "journal.json"

    @property
    def backup_path(self) -> Path:
        """The live file's bytes as they were before the transaction in progress."""
        return self.dir / "lbsplit.conf.before"

    @property
    def generations_dir(self) -> Path:
        return self.dir / "generations"

    @property
    def watchdog_path(self) -> Path:
        return self.dir / "watchdog.json"

    @property
    def checks_path(self) -> Path:
        """The watchdog's checks, one JSON line each (the dashboard's chart)."""
        return self.dir / "checks.jsonl"

    @property
    def watchdog_lock_path(self) -> Path:
        return self.dir / "watchdog.lock"

    @property
    def token_path(self) -> Path:
        """The lua runtime's control token: only its hash goes into lbsplit.conf."""
        return self.dir / "control.token"

    def ensure(self) -> None:
        files.ensure_dir(self.dir, 0o755)
        files.ensure_dir(self.generations_dir, 0o755)

    def control_token(self, create: bool = False) -> str | None:
        """The control token (0600, 32 random bytes as hex); created on first use when `create`."""
        raw = files.read_bytes(self.token_path)
        token = raw.decode("ascii", errors="replace").strip() if raw else ""
        if len(token) == 64 and all(c in "0123456789abcdef" for c in token):
            return token
        if not create:
            return None
        token = os.urandom(32).hex()
        files.atomic_write(self.token_path, token + "\n", mode=0o600)
        return token

    def token_digest(self, create: bool = False) -> str:
        """base64(SHA-1(token)), as the control endpoint compares it; "-" (matches no token) without one."""
        token = self.control_token(create)
        if token is None:
            return "-"
        return base64.b64encode(hashlib.sha1(token.encode("ascii")).digest()).decode("ascii")

    # state
    def read_state(self) -> State | None:
        raw = files.read_bytes(self.state_path)
        if raw is None:
            return None
        state = _load(State, raw, self.state_path,
                      "`lbsplit revert` rewrites it; or remove it and run `lbsplit apply` again")
        try:
            Mode(state.mode)
        except ValueError:
            raise DamagedFile(f"{self.state_path} is damaged (mode {state.mode!r}); `lbsplit revert` rewrites it") from None
        return state

    def read_state_or_none(self) -> State | None:
        """The state, or None when it is missing or damaged (revert must not depend on it)."""
        try:
            return self.read_state()
        except DamagedFile:
            return None

    def write_state(self, state: State) -> None:
        files.atomic_write(self.state_path, json.dumps(asdict(state), indent=2) + "\n", mode=0o644)

    # history
    def append_history(self, entry: dict) -> None:
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise files.os_problem("append to", self.history_path, e) from None
        try:
            os.write(fd, line)
            os.fsync(fd)
        except OSError as e:
            raise files.os_problem("append to", self.history_path, e) from None
        finally:
            os.close(fd)

    def read_history(self) -> list[dict]:
        raw = files.read_bytes(self.history_path)
        if not raw:
            return []
        entries = []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-append: skip it, keep the rest
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def last_history_generation(self) -> int | None:
        """The generation of the newest history entry (repair uses it to never record a change twice).

        Every change asks, so only the file's tail is read, not the whole history.
        """
        try:
            with open(self.history_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - HISTORY_TAIL))
                tail = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise files.os_problem("read", self.history_path, e) from None
        for line in reversed(tail.decode("utf-8", errors="replace").splitlines()):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn by a crash, or cut by the tail's start
            if isinstance(entry, dict):
                return entry.get("generation")
        return None

    # journal
    def begin(self, journal: Journal) -> None:
        files.atomic_write(self.journal_path, json.dumps(asdict(journal)) + "\n", mode=0o644)

    def read_journal(self) -> Journal | None:
        raw = files.read_bytes(self.journal_path)
        if raw is None:
            return None
        return _load(Journal, raw, self.journal_path,
                     "check that nginx serves what you expect, then remove it (`lbsplit revert` proceeds anyway)")

    def finish(self) -> None:
        files.remove(self.journal_path)
        files.remove(self.backup_path)

    # generations
    def save_generation(self, generation: int, text: bytes, live: Path | None = None) -> None:
        """Keep a generation's text; a hard link to the live file when both are on one file system."""
        target = self.generations_dir / f"{generation}.conf"
        if live is None or not files.link_or_copy(live, target):
            files.atomic_write(target, text)
        kept = sorted(
            (int(p.stem) for p in self.generations_dir.glob("*.conf") if p.stem.isdigit()), reverse=True
        )
        for old in kept[KEEP_GENERATIONS:]:
            files.remove(self.generations_dir / f"{old}.conf")

    def last_generation(self) -> int:
        """The highest generation number ever used, so numbers are never reused."""
        numbers = [int(p.stem) for p in self.generations_dir.glob("*.conf") if p.stem.isdigit()]
        state = self.read_state_or_none()
        if state:
            numbers.append(state.generation)
        try:
            journal = self.read_journal()
        except UnfinishedTransaction:
            journal = None
        if journal:
            numbers.append(journal.to_generation)
        return max(numbers, default=0)
