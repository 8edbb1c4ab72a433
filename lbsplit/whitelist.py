"""Whitelist ids from the config list and the whitelist file: parsed, checked, deduplicated."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .config import SplitSettings
from .errors import ConfigError
from .validate import ID_TROUBLE_RE as _BAD, MAX_ID_BYTES, whitelist_id_problem

MAX_SHOWN = 20
_ASCII_TROUBLE = bytes(range(0x21)) + b"\x7f"


@dataclass(frozen=True)
class Whitelist:
    ids: tuple[str, ...]
    warnings: tuple[str, ...]


def _all_fine(ids: list[str]) -> bool:
    """The common case in whole-string operations: no id is empty, too long or has a bad character."""
    if not ids or "" in ids:
        return not ids
    joined = "".join(ids)
    if joined.isascii():
        # In ASCII the troublesome characters are exactly the controls, the space and DEL;
        # deleting them in C is ten times faster than the regex over a few MiB.
        raw = joined.encode("ascii")
        if len(raw.translate(None, _ASCII_TROUBLE)) != len(raw):
            return False
    elif _BAD.search(joined):
        return False
    longest = max(ids, key=len)
    if len(longest) * 4 <= MAX_ID_BYTES or joined.isascii() and len(longest) <= MAX_ID_BYTES:
        return True
    return all(whitelist_id_problem(i) is None for i in ids)


Entry = tuple[str, int, str]  # (source, position, id): "split.whitelist", 0, "a1" or "whitelist.txt", 12, "b2"


def where(source: str, position: int) -> str:
    """Where an id came from, as the user would look for it."""
    return f"{source}[{position}]" if source == "split.whitelist" else f"{source} line {position}"


def parse(entries: list[Entry]) -> Whitelist:
    """Check the ids; report every bad one at once; drop duplicates case-insensitively."""
    bad = [] if _all_fine([user_id for _, _, user_id in entries]) else [
        (source, pos, user_id, problem) for source, pos, user_id in entries if (problem := whitelist_id_problem(user_id))
    ]
    if bad:
        shown = [f"{where(source, pos)}: {user_id[:60]!r}: {problem}" for source, pos, user_id, problem in bad[:MAX_SHOWN]]
        more = f"\n  ... and {len(bad) - MAX_SHOWN} more" if len(bad) > MAX_SHOWN else ""
        raise ConfigError(
            f"whitelist: {len(bad)} invalid id(s); fix or remove these lines:\n  " + "\n  ".join(shown) + more
        )
    seen: dict[bytes, int] = {}
    ids = []
    exact_dupes = 0
    case_clashes = []
    for index, (source, pos, user_id) in enumerate(entries):
        folded = user_id.encode("utf-8").lower()  # validate.fold_case, inlined: this loop sees every id
        first = seen.setdefault(folded, index)
        if first == index:
            ids.append(user_id)
        elif entries[first][2] == user_id:
            exact_dupes += 1
        else:
            f_source, f_pos, f_id = entries[first]
            case_clashes.append(f"{where(source, pos)}: {user_id!r} matches the same users as {where(f_source, f_pos)}: {f_id!r}")
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


MAX_FILE_BYTES = 256 << 20  # 1M UUIDs take 37 MiB


def _read_capped(path: Path) -> bytes:
    """The file's bytes: a regular, world-readable file of at most MAX_FILE_BYTES, or a ConfigError."""
    field = "split.whitelist_file"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{field}: {path} does not exist; create it or remove the setting") from None
    except OSError as e:
        raise ConfigError(f"{field}: cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{field}: {path} is not a regular file; give a text file with one id per line")
        if not st.st_mode & stat.S_IROTH:
            raise ConfigError(f"{field}: {path} is not world-readable, but its ids are published in lbsplit.conf "
                              "(mode 0644); make it readable (chmod o+r) if that is intended, or use another file")
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{field}: {path} is larger than {MAX_FILE_BYTES >> 20} MiB; lbsplit reads at most that")
    return raw


def _text(path: Path, raw: bytes) -> str:
    """The file's text: UTF-8 without a byte-order mark, or a ConfigError naming the line."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark (Windows editors) is not part of the first id
    if b"\0" in raw:
        raise ConfigError(f"split.whitelist_file: {path} looks binary (it contains NUL bytes); give a text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"split.whitelist_file: {path} line {line} is not UTF-8 text; save the file as UTF-8") from None
    return text


def read_file(path: Path, raw: bytes | None = None) -> list[Entry]:
    """Entries of a whitelist file: one id per line, blank lines and # comments ignored."""
    text = _text(path, _read_capped(path) if raw is None else raw)
    name = path.name
    return [
        (name, number, stripped)
        for number, line in enumerate(text.split("\n"), start=1)
        if (stripped := line.strip(" \t\r")) and not stripped.startswith("#")
    ]


def fingerprint(split: SplitSettings) -> tuple[str, bytes | None]:
    """A hash of the whitelist inputs (the config's list and the file's bytes), and those bytes.

    Equal fingerprints mean an equal whitelist, so its validated form can be reused.
    """
    raw = _read_capped(split.whitelist_file) if split.whitelist_file is not None else None
    digest = hashlib.sha256("\0".join(split.whitelist).encode("utf-8", "surrogatepass"))
    digest.update(b"\0file\0" + (hashlib.sha256(raw).digest() if raw is not None else b"none"))
    return digest.hexdigest(), raw


def _plain(split: SplitSettings, raw: bytes | None) -> Whitelist | None:
    """The common case in whole-string operations, or None when parse() must look id by id.

    A file with no comment, whose ids are all valid (so unpadded) and distinct even ignoring
    case, is its own whitelist: no warning, nothing dropped, the order kept. Anything else (an
    error to point at by line, a duplicate to report) goes the line-by-line way, which says
    the same for these files.
    """
    ids = list(split.whitelist)
    if split.whitelist_file is not None:
        text = _text(split.whitelist_file, raw)
        if "#" in text:  # comments; padding and \r make an id invalid below, which goes line by line too
            return None
        ids += filter(None, text.split("\n"))
    if not _all_fine(ids):
        return None
    # Valid ids hold no whitespace, so one newline-joined string folds them all at once.
    folded = "\n".join(ids).encode("utf-8").lower().split(b"\n") if ids else []
    if len(set(folded)) != len(ids):
        return None
    return Whitelist(ids=tuple(ids), warnings=())


def load(split: SplitSettings, raw: bytes | None = None) -> Whitelist:
    """The effective whitelist of a config: the inline list, then the file (`raw`: its bytes, if read)."""
    if raw is None and split.whitelist_file is not None:
        raw = _read_capped(split.whitelist_file)
    plain = _plain(split, raw)
    if plain is not None:
        return plain
    entries: list[Entry] = [("split.whitelist", i, user_id) for i, user_id in enumerate(split.whitelist)]
    if split.whitelist_file is not None:
        entries += read_file(split.whitelist_file, raw)
    return parse(entries)
