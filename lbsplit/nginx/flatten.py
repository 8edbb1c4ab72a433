"""The site's whole nginx config as one text, with lbsplit.conf's include pointed at another file.

So the gate can run `nginx -t` on the revert config inside the real site (its own `log_format`s,
`map`s, upstreams and http-level rules) without touching the live file. Includes are followed
the way nginx follows them: a relative path is taken from the directory of nginx.conf, a glob
matches in byte order and skips dot files. Reads files only.

A copy remembers what it was made from (each file's hash, each glob's matches), so a
caller can keep it and, while `SiteCopy.current()` holds, skip crossplane's parse next time.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import LbsplitError

MAX_DEPTH = 32  # nested includes; deeper is a loop


class CannotFlatten(LbsplitError):
    """The site's config could not be read into one text (a missing include, a loop, a parse error)."""


def _stamp(path: str) -> list:
    """[path, sha256 of its bytes]: reading a config file again costs far less than parsing it."""
    with open(path, "rb") as f:
        return [path, hashlib.sha256(f.read()).hexdigest()]


@dataclass(frozen=True)
class SiteCopy:
    """The flattened text and what it was made from: [path, sha256] of every file read, and every include
    glob with the files it matched."""

    text: str
    files: tuple[tuple, ...] = ()
    globs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    source: str = ""  # source_of(conf, live, replacement): which config, with which include replaced

    def current(self, conf: Path, live: Path, replacement: Path) -> bool:
        """Made from this config with this include replaced, and every file it read is unchanged and every glob
        matches the same files: the copy is still the site."""
        if self.source != source_of(conf, live, replacement):
            return False
        try:
            return bool(self.files) and all(list(f) == _stamp(f[0]) for f in self.files) and all(
                tuple(sorted(glob.glob(pattern))) == tuple(matches) for pattern, matches in self.globs)
        except OSError:
            return False

    def dumps(self) -> str:
        return json.dumps({"text": self.text, "files": self.files, "globs": self.globs, "source": self.source})

    @classmethod
    def loads(cls, data: str) -> "SiteCopy | None":
        """A copy written by dumps(); None for anything else (a damaged file is only a lost shortcut)."""
        try:
            raw = json.loads(data)
            return cls(str(raw["text"]), tuple(tuple(f) for f in raw["files"]),
                       tuple((str(p), tuple(m)) for p, m in raw["globs"]), str(raw["source"]))
        except (ValueError, KeyError, TypeError):
            return None


def source_of(conf: Path, live: Path, replacement: Path) -> str:
    return f"{os.path.abspath(conf)}\0{os.path.realpath(live)}\0{replacement}"


def flattened(conf: Path, live: Path, replacement: Path) -> SiteCopy:
    """The config rooted at `conf` with every include inlined, except `live`'s, which includes `replacement`."""
    import crossplane  # noqa: PLC0415 - only a copy that is not remembered pays for the parser

    base = conf.parent
    target = os.path.realpath(live)
    found = []
    files, globs = [], []

    def parse(path: str, depth: int) -> list[dict]:
        if depth > MAX_DEPTH:
            raise CannotFlatten(f"includes nest deeper than {MAX_DEPTH} at {path}")
        try:
            files.append(_stamp(path))
        except OSError as e:
            raise CannotFlatten(f"cannot read {path}: {e.strerror}") from None
        try:
            payload = crossplane.parse(path, single=True, catch_errors=False, check_ctx=False, check_args=False)
        except (OSError, crossplane.errors.NgxParserBaseException) as e:
            raise CannotFlatten(f"cannot read {path}: {e}") from None
        if payload["status"] != "ok":  # crossplane reports an unreadable file here, not by raising
            first = (payload["errors"] or [{"error": "unreadable"}])[0]
            raise CannotFlatten(f"cannot read {path}: {first['error']}")
        return list(expand(payload["config"][0]["parsed"], depth))

    def expand(block: list[dict], depth: int):
        for stmt in block:
            if stmt["directive"] == "include" and len(stmt["args"]) == 1:
                pattern = stmt["args"][0]
                full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
                matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
                if glob.has_magic(full):
                    globs.append((full, tuple(matches)))
                for path in matches:
                    if os.path.realpath(path) == target:
                        found.append(path)
                        yield {"directive": "include", "args": [str(replacement)]}
                    else:
                        yield from parse(path, depth + 1)
                continue
            if "block" in stmt:
                stmt = {**stmt, "block": list(expand(stmt["block"], depth))}
            yield stmt

    text = crossplane.build(parse(str(conf), 0), indent=4, header=False) + "\n"
    if not found:
        raise CannotFlatten(f"{conf} does not include {live}")
    return SiteCopy(text, tuple(tuple(f) for f in files), tuple(globs), source_of(conf, live, replacement))
