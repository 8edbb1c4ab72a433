"""The site's whole nginx config as one text, with lbsplit.conf's include pointed at another file.

So the gate can run `nginx -t` on the revert config inside the real site (its own `log_format`s,
`map`s, upstreams and http-level rules) without touching the live file. Includes are followed
the way nginx follows them: a relative path is taken from the directory of nginx.conf, a glob
matches in byte order and skips dot files. Reads files only.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import crossplane

from ..errors import LbsplitError

MAX_DEPTH = 32  # nested includes; deeper is a loop


class CannotFlatten(LbsplitError):
    """The site's config could not be read into one text (a missing include, a loop, a parse error)."""


def flattened(conf: Path, live: Path, replacement: Path) -> str:
    """The config rooted at `conf` with every include inlined, except `live`'s, which includes `replacement`."""
    base = conf.parent
    target = os.path.realpath(live)
    found = []

    def parse(path: str, depth: int) -> list[dict]:
        if depth > MAX_DEPTH:
            raise CannotFlatten(f"includes nest deeper than {MAX_DEPTH} at {path}")
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
    return text
