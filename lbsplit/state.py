"""state_dir: current state, history lines, saved generations, the unfinished-transaction journal."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from . import files
from .model import Stage

KEEP_GENERATIONS = 5  # a 1M-id whitelist makes each one ~57 MB


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

    @property
    def stage_text(self) -> str:
        return (Stage.at(self.hundredths) if self.v2_enabled else Stage.off()).describe()


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


class StateStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)

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

    def ensure(self) -> None:
        files.ensure_dir(self.dir, 0o755)
        files.ensure_dir(self.generations_dir, 0o755)

    # state
    def read_state(self) -> State | None:
        raw = files.read_bytes(self.state_path)
        if raw is None:
            return None
        return State(**json.loads(raw))

    def write_state(self, state: State) -> None:
        files.atomic_write(self.state_path, json.dumps(asdict(state), indent=2) + "\n", mode=0o644)

    # history
    def append_history(self, entry: dict) -> None:
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise files._os_problem("append to", self.history_path, e) from None
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_history(self) -> list[dict]:
        raw = files.read_bytes(self.history_path)
        if not raw:
            return []
        entries = []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-append: skip it, keep the rest
        return entries

    # journal
    def begin(self, journal: Journal) -> None:
        files.atomic_write(self.journal_path, json.dumps(asdict(journal)) + "\n", mode=0o644)

    def read_journal(self) -> Journal | None:
        raw = files.read_bytes(self.journal_path)
        if raw is None:
            return None
        return Journal(**json.loads(raw))

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
        state = self.read_state()
        numbers = [int(p.stem) for p in self.generations_dir.glob("*.conf") if p.stem.isdigit()]
        if state:
            numbers.append(state.generation)
        journal = self.read_journal()
        if journal:
            numbers.append(journal.to_generation)
        return max(numbers, default=0)
