"""Whitelist ids from the config list and the whitelist file: parsed, checked, deduplicated."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import SplitSettings
from .errors import ConfigError
from .validate import fold_case, whitelist_id_problem

MAX_SHOWN = 20


@dataclass(frozen=True)
class Whitelist:
    ids: tuple[str, ...]
    warnings: tuple[str, ...]


def parse(entries: list[tuple[str, str]]) -> Whitelist:
    """Check (where, id) pairs; report every bad one at once; drop duplicates case-insensitively."""
    problems = []
    for where, user_id in entries:
        problem = whitelist_id_problem(user_id)
        if problem:
            problems.append(f"{where}: {user_id[:60]!r}: {problem}")
    if problems:
        shown = problems[:MAX_SHOWN]
        more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        raise ConfigError(
            f"whitelist: {len(problems)} invalid id(s); fix or remove these lines:\n  "
            + "\n  ".join(shown)
            + more
        )
    seen: dict[bytes, tuple[str, str]] = {}
    ids = []
    exact_dupes = 0
    case_clashes = []
    for where, user_id in entries:
        folded = fold_case(user_id)
        first = seen.get(folded)
        if first is None:
            seen[folded] = (where, user_id)
            ids.append(user_id)
        elif first[1] == user_id:
            exact_dupes += 1
        else:
            case_clashes.append(f"{where}: {user_id!r} matches the same users as {first[0]}: {first[1]!r}")
    warnings = []
    if exact_dupes:
        warnings.append(f"whitelist: dropped {exact_dupes} duplicate id(s)")
    if case_clashes:
        warnings.append(
            f"whitelist: {len(case_clashes)} id(s) differ from another only by letter case; nginx matches ids "
            "case-insensitively, so they were merged: " + "; ".join(case_clashes[:5])
            + (" ..." if len(case_clashes) > 5 else "")
        )
    return Whitelist(ids=tuple(ids), warnings=tuple(warnings))


def read_file(path: Path) -> list[tuple[str, str]]:
    """(where, id) pairs from a whitelist file: one id per line, blank lines and # comments ignored."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"split.whitelist_file: {path} does not exist; create it or remove the setting") from None
    except OSError as e:
        raise ConfigError(f"split.whitelist_file: cannot read {path}: {e.strerror}") from None
    if b"\0" in raw:
        raise ConfigError(f"split.whitelist_file: {path} looks binary (it contains NUL bytes); give a text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"split.whitelist_file: {path} line {line} is not UTF-8 text; save the file as UTF-8") from None
    entries = []
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip(" \t\r")
        if not stripped or stripped.startswith("#"):
            continue
        entries.append((f"{path.name} line {number}", stripped))
    return entries


def load(split: SplitSettings) -> Whitelist:
    """The effective whitelist of a config: the inline list, then the file."""
    entries = [(f"split.whitelist[{i}]", user_id) for i, user_id in enumerate(split.whitelist)]
    if split.whitelist_file is not None:
        entries += read_file(split.whitelist_file)
    return parse(entries)
