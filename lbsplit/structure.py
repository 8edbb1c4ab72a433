"""Parse a rendered lbsplit.conf back with crossplane and check its shape.

Escaping already makes injection impossible by construction; this is the second,
independent check that the text has exactly the blocks lbsplit meant to write.
`nginx -t` remains the judge of validity.
"""

from __future__ import annotations

import os
import re
import tempfile

import crossplane

from .errors import LbsplitError

SAMPLE_KEYS = 200  # whitelist lines that go through crossplane as well as the line check
_MAP_OPEN = re.compile(r"^map \$[A-Za-z_][A-Za-z0-9_]* \$lbsplit_upstream \{$", re.MULTILINE)
# Lines of one quoted key each (only \\ and \" escapes inside, as render.map_key writes them).
_KEY_BLOCK = re.compile(r'(?:    "\\\\(?:[^"\\\x00-\x1f]++|\\["\\])*+" lbsplit_v2;\n)*+')
TOP_LEVEL = {"log_format", "map_hash_bucket_size", "map_hash_max_size", "upstream", "map", "split_clients", "server"}


class StructureError(LbsplitError):
    """The rendered config does not have the shape lbsplit renders; a bug, never user input."""

    exit_code = 1


def _parse(text: str) -> list[dict]:
    fd, path = tempfile.mkstemp(prefix="lbsplit-check-", suffix=".conf")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        payload = crossplane.parse(path, single=True, check_ctx=False, check_args=False, strict=False, comments=False)
    finally:
        os.unlink(path)
    if payload["errors"]:
        raise StructureError(f"rendered config does not parse: {payload['errors'][0]['error']}")
    return payload["config"][0]["parsed"]


def _split_keys(text: str, whitelist_size: int) -> tuple[str, int]:
    """Check every whitelist line with a strict regex; return the text with only a sample of them.

    crossplane is a pure-Python lexer: 40 s for a million keys. The regex check is exact
    for the one line shape render writes, and crossplane still parses everything else.
    """
    opening = list(_MAP_OPEN.finditer(text))
    if len(opening) != 1:
        raise StructureError("rendered config must define $lbsplit_upstream exactly once")
    default_end = text.index("\n", opening[0].end() + 1) + 1  # skip the "default ...;" line
    end = text.index("\n}\n", default_end - 1) + 1
    block = text[default_end:end]
    count = block.count("\n")
    if count != whitelist_size:
        raise StructureError(f"$lbsplit_upstream map has {count} whitelist lines, expected {whitelist_size}")
    if not _KEY_BLOCK.fullmatch(block):
        bad = next(line for line in block.split("\n") if not _KEY_BLOCK.fullmatch(line + "\n"))
        raise StructureError(f"a whitelist line of the rendered map is not one quoted key: {bad[:80]!r}")
    sample_end = default_end
    for _ in range(min(SAMPLE_KEYS, count)):
        sample_end = text.index("\n", sample_end) + 1
    return text[:sample_end] + text[end:], min(SAMPLE_KEYS, count)


def check(text: str, whitelist_size: int) -> None:
    """Raise StructureError unless `text` is one lbsplit.conf with `whitelist_size` whitelist keys."""
    text, whitelist_size = _split_keys(text, whitelist_size)
    parsed = _parse(text)
    names = [d["directive"] for d in parsed]
    unexpected = sorted(set(names) - TOP_LEVEL)
    if unexpected:
        raise StructureError(f"rendered config has unexpected top-level directives: {unexpected}")
    maps = {tuple(d["args"]): d for d in parsed if d["directive"] == "map"}
    upstream_maps = [d for args, d in maps.items() if args[-1] == "$lbsplit_upstream"]
    if len(upstream_maps) != 1:
        raise StructureError("rendered config must define $lbsplit_upstream exactly once")
    entries = upstream_maps[0]["block"]
    if len(entries) != whitelist_size + 1 or any(len(e["args"]) != 1 for e in entries):
        raise StructureError(
            f"$lbsplit_upstream map has {len(entries)} entries, expected {whitelist_size + 1} "
            "(default plus one per whitelisted id)"
        )
    for d in parsed:
        if d["directive"] == "upstream":
            if any(s["directive"] != "server" for s in d.get("block", [])):
                raise StructureError(f"upstream {d['args']} contains something other than server lines")
        if d["directive"] == "server":
            inner = {s["directive"] for s in d.get("block", [])}
            if not inner <= {"listen", "access_log", "location"}:
                raise StructureError(f"status server contains unexpected directives: {sorted(inner)}")
