"""nginx's access log as a metric source: streaming reads, bounded per-second windows, per-variant stats.

The log format is `lbsplit`, defined in lbsplit.conf; its fields and their order
come from nginx.dialect.LOG_FIELDS.
"""

from __future__ import annotations

import bisect
import errno
import gzip
import hashlib
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..model import parse_span
from ..nginx.dialect import LOG_FIELDS, UPSTREAM_OF_VARIANT

CHUNK = 1 << 20
FIRST_READ_LIMIT = 64 << 20  # a first run starts this far from the end, not at the top of a huge log
# Request-time histogram: bin i holds times up to EDGES[i] (1 ms, growing by 10%); p95 is read off it.
EDGES = [0.001 * 1.1 ** i for i in range(150)]  # up to ~1,600 s
VARIANT_OF_UPSTREAM = {upstream: variant for variant, upstream in UPSTREAM_OF_VARIANT.items()}
_TIME, _UPSTREAM, _STATUS, _UPSTREAM_STATUS, _REQUEST_TIME, _ADDR = (
    LOG_FIELDS.index(f) for f in ("$msec", "$lbsplit_upstream", "$status", "$upstream_status", "$request_time",
                                  "$upstream_addr")
)


def variant_of_addr(v1, v2) -> dict[str, str]:
    """upstream_addr -> variant, from the configured servers (weight mode logs the pool's name)."""
    out = {server.address: "v1" for server in v1}
    out.update({server.address: "v2" for server in v2 or ()})
    return out


def parse_duration(text: str) -> float:
    """A window such as '5m', '30s', '1h' (model.parse_span's grammar), up to 24 hours."""
    value = parse_span(text)
    if value is None:
        bare = text.strip().replace(".", "", 1).isdigit()
        raise ValueError(f"{text!r} {'has no unit' if bare else 'is not a duration'}; write e.g. 30s, 5m or 1h")
    if not 0 < value <= 86400:
        raise ValueError(f"{text!r} is out of range; give up to 24h")
    return value


@dataclass
class Cursor:
    """Where the watchdog stopped reading: the file's inode and the offset after the last whole line, which
    log it was, and a fingerprint of the bytes before the offset (so a rotated copy is found by its content,
    and a file rewritten in place is not taken for the one read before)."""

    inode: int
    offset: int
    path: str = ""
    tail: str = ""


FINGERPRINT = 256  # bytes before the cursor's offset that identify the file it was read from
ROTATED_CANDIDATES = 12  # newest files in the log's folder whose names start with its name


def _fingerprint(f, offset: int) -> str:
    start = max(0, offset - FINGERPRINT)
    f.seek(start)
    return hashlib.sha256(f.read(offset - start)).hexdigest() if offset else ""


def _same_content(f, cursor: Cursor) -> bool:
    if not cursor.tail:
        return True  # a cursor from before fingerprints: trust the inode
    try:
        return _fingerprint(f, cursor.offset) == cursor.tail
    except (OSError, EOFError, gzip.BadGzipFile):
        return False


def _rest_of_old_file(path: Path, cursor: Cursor, exclude_inode: int | None):
    """The rotated copy of the file the cursor was in: any name in the log's folder that starts with the log's
    name (<log>.1, logrotate's dateext <log>-20261202, a .gz of either), found by inode or by the bytes
    before the offset. An open file (the caller closes it) and its name, or (None, "")."""
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(path.name) and e.name != path.name
                   and e.is_file(follow_symlinks=False)]
    except OSError:
        return None, ""
    entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    for entry in entries[:ROTATED_CANDIDATES]:
        try:
            if entry.name.endswith(".gz"):
                f = gzip.open(entry.path, "rb")
            else:
                f = open_log(Path(entry.path))
                ino = os.fstat(f.fileno()).st_ino
                if ino == exclude_inode:
                    f.close()
                    continue
                if ino == cursor.inode and (not cursor.tail or _same_content(f, cursor)):
                    return f, entry.name
        except OSError:
            continue
        if cursor.tail and _same_content(f, cursor):
            return f, entry.name
        f.close()
    return None, ""


@dataclass
class VariantStats:
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    time_sum: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)

    def merge(self, row: list) -> None:
        self.requests += row[0]
        self.errors += row[1]
        self.timeouts += row[2]
        self.time_sum += row[3]
        for b, n in row[4].items():
            self.hist[int(b)] = self.hist.get(int(b), 0) + n

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def timeout_rate(self) -> float | None:
        return self.timeouts / self.requests if self.requests else None

    @property
    def avg_response_time(self) -> float | None:
        return self.time_sum / self.requests if self.requests else None

    @property
    def p95_response_time(self) -> float | None:
        if not self.requests:
            return None
        wanted = 0.95 * self.requests
        seen = 0
        for b in sorted(self.hist):
            seen += self.hist[b]
            if seen >= wanted:
                return EDGES[min(b, len(EDGES) - 1)]
        return EDGES[-1]

    def as_dict(self) -> dict:
        return {"requests": self.requests, "error_rate": self.error_rate, "timeout_rate": self.timeout_rate,
                "avg_response_time": self.avg_response_time, "p95_response_time": self.p95_response_time}


class Window:
    """Per-second rows per variant: [requests, 5xx, timeouts, sum of request_time, {bin: count}].

    Memory is bounded by the window's length in seconds, whatever the log's size.
    """

    def __init__(self, rows: dict | None = None):
        # JSON keys are strings: the seconds and each row's histogram bins become ints again, or a second
        # whose lines are read over two runs would hold bin "12" and bin 12, and saving it keeps only one.
        self.rows: dict[str, dict[int, list]] = {
            v: {int(s): [*r[:4], {int(b): n for b, n in r[4].items()}] for s, r in secs.items()}
            for v, secs in (rows or {}).items()
        }

    def to_json(self) -> dict:
        return {v: {str(s): r for s, r in secs.items()} for v, secs in self.rows.items()}

    def prune(self, oldest: float, newest: float = math.inf) -> None:
        """Drop the seconds outside [oldest, newest]: older than the window, or rows from the future a saved
        window may hold from before lines stamped ahead were refused."""
        for secs in self.rows.values():
            for s in [s for s in secs if s < int(oldest) or s > newest]:
                del secs[s]

    def stats(self, oldest: float, newest: float) -> dict[str, VariantStats]:
        out = {"v1": VariantStats(), "v2": VariantStats()}
        for variant, secs in self.rows.items():
            target = out.setdefault(variant, VariantStats())
            for s, row in secs.items():
                if int(oldest) <= s <= newest:
                    target.merge(row)
        return out

    def add_text(self, text: str, variant_of_addr: dict[str, str], oldest: float,
                 newest: float = math.inf) -> tuple[int, int]:
        """Fold whole log lines into the window; returns (lines used, lines not understood). A line stamped
        after `newest` (now plus a small skew) is bad data: counted, never kept, so it cannot pile up."""
        used = bad = 0
        rows = self.rows
        edges = EDGES
        isfinite = math.isfinite
        for line in text.split("\n"):
            if not line:
                continue
            f = line.split("\t")
            try:
                ts = float(f[_TIME])
                status = int(f[_STATUS])
                rt = float(f[_REQUEST_TIME])
            except (ValueError, IndexError):
                bad += 1
                continue
            if not (isfinite(ts) and isfinite(rt)) or rt < 0 or ts < 0:
                bad += 1  # "inf", "nan", negative: not a line nginx wrote
                continue
            if ts < oldest:
                continue
            if ts > newest:
                bad += 1
                continue
            variant = VARIANT_OF_UPSTREAM.get(f[_UPSTREAM])
            if variant is None:  # weight mode: the pool; the answering server tells the variant
                addr = f[_ADDR].rsplit(", ", 1)[-1].rsplit(" : ", 1)[-1] if len(f) > _ADDR else ""
                variant = variant_of_addr.get(addr)
                if variant is None:
                    bad += 1
                    continue
            secs = rows.get(variant)
            if secs is None:
                secs = rows[variant] = {}
            second = int(ts)
            row = secs.get(second)
            if row is None:
                row = secs[second] = [0, 0, 0, 0.0, {}]
            row[0] += 1
            if status >= 500:
                row[1] += 1
                if status == 504 or "504" in f[_UPSTREAM_STATUS]:
                    row[2] += 1
            elif "504" in f[_UPSTREAM_STATUS]:
                row[2] += 1
            row[3] += rt
            b = bisect.bisect_left(edges, rt)
            hist = row[4]
            hist[b] = hist.get(b, 0) + 1
            used += 1
        return used, bad


MAX_LINE = 64 << 10  # nginx's lbsplit lines are ~100 bytes; anything this long without a newline is not one


def open_log(path: Path):
    """The access log opened for reading: a regular file (a FIFO or device would hang or never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise OSError(errno.EINVAL, "not a regular file")
    return f


def _read_lines_from(f, start: int, on_text) -> int:
    """Feed whole lines from `start` to the end to on_text, a chunk at a time; return the offset after the
    last newline (a half-written last line waits for the next run). A run of more than MAX_LINE bytes
    without a newline is skipped, never held in memory."""
    f.seek(start)
    consumed = start
    leftover = b""
    skipping = False
    while True:
        block = f.read(CHUNK)
        if not block:
            return consumed
        if skipping:
            cut = block.find(b"\n")
            if cut < 0:
                consumed += len(block)
                continue
            consumed += cut + 1
            block, skipping = block[cut + 1:], False
        data = leftover + block
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) > MAX_LINE:
                consumed += len(data)
                leftover, skipping = b"", True
                continue
            leftover = data
            continue
        on_text(data[: cut + 1].decode("utf-8", errors="replace"))
        consumed += cut + 1
        leftover = data[cut + 1:]


def read_appended(path: Path, cursor: Cursor | None, on_text) -> tuple[Cursor, list[str]]:
    """Stream what was appended since `cursor` to on_text (chunks of whole lines); the new cursor, and notes.

    Memory stays at one chunk whatever the log's size. Survives logrotate in its usual forms: after a
    rename (to `<log>.1`, a dated name, or compressed at once to a `.gz`) the rest of the old file is
    read from wherever it went, found by inode or by the bytes before the cursor; after copytruncate
    (even when the new file has grown past the old offset before this run) the copy's rest is read
    and the log from the top. A cursor of another log (health.access_log changed) starts afresh.
    FileNotFoundError when the log is missing.
    """
    notes: list[str] = []
    with open_log(path) as f:
        st = os.fstat(f.fileno())
        if cursor is not None and cursor.path and cursor.path != str(path):
            notes.append(f"health.access_log changed (was {cursor.path}): reading {path} afresh")
            cursor = None
        if cursor is None:
            start = max(0, st.st_size - FIRST_READ_LIMIT)
            if start:
                f.seek(start)
                f.readline()  # skip to the next whole line
                start = f.tell()
        elif cursor.inode == st.st_ino and st.st_size >= cursor.offset and _same_content(f, cursor):
            start = cursor.offset
        else:
            moved = cursor.inode != st.st_ino
            old, name = _rest_of_old_file(path, cursor, None if moved else st.st_ino)
            if old is not None:
                with old:
                    _read_lines_from(old, cursor.offset, on_text)
                notes.append(f"log {'rotated' if moved else 'truncated (copytruncate)'}: read the rest of {name}")
            else:
                notes.append("log rotated; the rest of the old file was not found" if moved else
                             "log truncated (copytruncate) and its copy not found: reading from the top")
            start = 0
        offset = _read_lines_from(f, start, on_text)
        return Cursor(inode=st.st_ino, offset=offset, path=str(path), tail=_fingerprint(f, offset)), notes


def read_window(path: Path, seconds: float, now: float, variant_of_addr: dict[str, str]) -> Window:
    """The last `seconds` of the log, read backwards from its end (for `lbsplit report`)."""
    window = Window()
    oldest = now - seconds
    with open_log(path) as f:
        end = os.fstat(f.fileno()).st_size
        tail = b""
        while end > 0:
            start = max(0, end - CHUNK)
            f.seek(start)
            data = f.read(end - start) + tail
            end = start
            cut = data.find(b"\n") if start > 0 else -1
            tail, body = (data[: cut + 1], data[cut + 1:]) if cut >= 0 else (b"", data)
            text = body.decode("utf-8", errors="replace")
            window.add_text(text, variant_of_addr, oldest, now + 5)
            first = text.split("\t", 1)[0]
            try:
                if float(first) < oldest:
                    break
            except ValueError:
                pass
    return window
